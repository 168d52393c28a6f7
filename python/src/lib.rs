//! `rdask._rdask`, the extension module under the Python package `rdask` (`pysrc/rdask`):
//!
//! - the `rdask-jobqueue` CLI in this process (`main`, `run_cli`, `job_script`), with the
//!   command that starts this program again set to `sys.executable -m rdask`, so that the
//!   scheduler and the workers a cluster starts run in the client's interpreter and environment;
//! - the worker's `"python"` function, which hands a task's bytes to `rdask._worker.run_task`
//!   under the GIL;
//! - `Connection`, a client of a running cluster: jobs of Python tasks and of commands, their
//!   outcomes and results as bytes. Pickling, futures and the Dask-like API are Python's
//!   (`pysrc/rdask/`); nothing here knows what the bytes mean.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyByteArray, PyBytes};
use rdask::protocol::{CommandSpec, JobId, JobOutcome, JobSpec, JobTasks, Needs, TaskBody, TaskId, TaskRef, TaskSpec};
use rdask::{ClusterInfo, Registry};

create_exception!(
    _rdask,
    RdaskError,
    PyException,
    "An rdask command or request failed; `exit_code` is the CLI's exit code for the same failure."
);

/// The name under which Python tasks are registered in the workers.
const PYTHON_FN: &str = "python";

/// An `RdaskError(message)` whose `exit_code` is `code`, the CLI's exit code for the same failure.
fn error(message: impl ToString, code: i32) -> PyErr {
    let e = RdaskError::new_err(message.to_string());
    Python::with_gil(|py| {
        // Setting an attribute on a fresh exception object cannot fail but for memory.
        let _ = e.value(py).setattr("exit_code", code);
    });
    e
}

fn cli_error(e: rdask_jobqueue::Error) -> PyErr {
    error(&e, e.exit_code())
}

fn client_error(e: rdask::ClientError) -> PyErr {
    let e = rdask_jobqueue::Error::client("")(e);
    cli_error(e)
}

/// The functions of workers started from Python: one, [`PYTHON_FN`].
fn python_registry() -> Registry {
    let mut r = Registry::new();
    r.register_raw(PYTHON_FN, |args, inputs| {
        Python::with_gil(|py| -> PyResult<Bytes> {
            let run = py.import("rdask._worker")?.getattr("run_task")?;
            // A small input is copied into `bytes`; a large one is lent as it is (`Pinned`,
            // which `run_task` views read-only), so that a moved array is not copied again.
            let inputs = inputs
                .iter()
                .map(|b| {
                    if b.len() < PIN_AT {
                        Ok(PyBytes::new(py, b).into_any())
                    } else {
                        Ok(Bound::new(py, Pinned { bytes: b.clone() })?.into_any())
                    }
                })
                .collect::<PyResult<Vec<_>>>()?;
            let out = run.call1((PyBytes::new(py, args), inputs))?;
            // The result's bytes are Python's: kept and served by the worker without a copy.
            let out: PyBackedBytes = out.extract()?;
            Ok(Bytes::from_owner(out))
        })
        .map_err(|e| format!("the Python worker failed: {e}"))
    });
    r
}

/// Inputs of at least this many bytes reach Python as [`Pinned`] instead of a copy.
const PIN_AT: usize = 64 * 1024;

/// Bytes of a task's input lent to Python without a copy. `rdask._worker` views them through
/// a ctypes array over [`Pinned::address`] that keeps this object alive, and so the bytes, as
/// long as any view of them (a NumPy array unpickled over them, say) lives. The buffer protocol
/// itself is not in the stable ABI before Python 3.11; this is how abi3-py39 lends memory.
#[pyclass(frozen)]
struct Pinned {
    bytes: Bytes,
}

#[pymethods]
impl Pinned {
    /// Where the bytes are; valid while this object lives (`Bytes` never moves its data).
    #[getter]
    fn address(&self) -> usize {
        self.bytes.as_ptr() as usize
    }

    fn __len__(&self) -> usize {
        self.bytes.len()
    }
}

/// Makes this process start itself as `sys.executable -m rdask` and its workers run Python
/// tasks (once; later calls change nothing).
fn install(py: Python<'_>) -> PyResult<()> {
    let exe: Option<PathBuf> = py.import("sys")?.getattr("executable")?.extract()?;
    if let Some(exe) = exe.filter(|e| !e.as_os_str().is_empty()) {
        rdask_jobqueue::embed::set_self_command(exe, vec!["-m".into(), "rdask".into()]);
    }
    rdask_jobqueue::embed::set_worker_registry(python_registry());
    Ok(())
}

/// `python -m rdask ARGS`: the CLI, its errors printed; returns the exit code.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.allow_threads(|| rdask_jobqueue::embed::main_with_args(argv))
}

/// The CLI with `argv` (program name first): its exit code, or `RdaskError(message, code)`.
#[pyfunction]
fn run_cli(py: Python<'_>, argv: Vec<String>) -> PyResult<i32> {
    py.allow_threads(|| rdask_jobqueue::embed::run_args(argv)).map_err(cli_error)
}

/// What `job-script ARGS` prints (`argv`: program name, `job-script`, options).
#[pyfunction]
fn job_script(py: Python<'_>, argv: Vec<String>) -> PyResult<String> {
    py.allow_threads(|| rdask_jobqueue::embed::job_script(argv)).map_err(cli_error)
}

/// The state directory of cluster `name` (under `home`, `$RDASK_HOME` or `~/.rdask`).
#[pyfunction]
#[pyo3(signature = (name, home=None))]
fn state_dir(name: &str, home: Option<PathBuf>) -> PyResult<PathBuf> {
    // As the CLI's `--home`, whose fallback is RDASK_HOME.
    let home = home.or_else(|| std::env::var_os("RDASK_HOME").filter(|h| !h.is_empty()).map(PathBuf::from));
    Ok(rdask_jobqueue::state::StateDir::locate(home.as_deref(), name).map_err(cli_error)?.path)
}

/// Outcomes of the jobs waited for, by job; each job's waiter fills its entry once.
#[derive(Default)]
struct Outcomes {
    done: Mutex<HashMap<u32, Result<JobOutcome, String>>>,
    changed: Condvar,
}

/// A job's outcome for Python: tasks, finished, and the failed ones as `(index, kind, message)`.
type Outcome = (u32, u32, Vec<(u32, String, String)>);

/// A connection to a running cluster's scheduler.
#[pyclass(frozen)]
struct Connection {
    rt: tokio::runtime::Runtime,
    client: Mutex<Option<rdask::Client>>,
    outcomes: Arc<Outcomes>,
    state: PathBuf,
}

impl Connection {
    fn client(&self) -> PyResult<rdask::Client> {
        let c = self.client.lock().map_err(|_| error("the connection's lock is poisoned", 5))?;
        c.clone().ok_or_else(|| error("this client is closed", 3))
    }

    /// Submits `spec` and starts waiting for its end in the background.
    fn submit(&self, py: Python<'_>, spec: JobSpec) -> PyResult<u32> {
        let client = self.client()?;
        let id = py.allow_threads(|| self.rt.block_on(client.submit_spec(spec))).map_err(client_error)?;
        let outcomes = self.outcomes.clone();
        self.rt.spawn(async move {
            let r = client.wait(id).await.map_err(|e| e.to_string());
            outcomes.done.lock().expect("outcomes lock").insert(id.0, r);
            outcomes.changed.notify_all();
        });
        Ok(id.0)
    }
}

#[pymethods]
impl Connection {
    /// Connects to the cluster whose state directory is `state`.
    #[staticmethod]
    fn connect(py: Python<'_>, state: PathBuf) -> PyResult<Connection> {
        let info = ClusterInfo::from_state_dir(&state).map_err(|e| error(e, 3))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("rdask-client")
            .enable_all()
            .build()
            .map_err(|e| error(format!("cannot start the async runtime: {e}"), 5))?;
        let client = py.allow_threads(|| rt.block_on(rdask::Client::connect(&info))).map_err(client_error)?;
        Ok(Connection { rt, client: Mutex::new(Some(client)), outcomes: Arc::default(), state })
    }

    /// The cluster's state directory.
    #[getter]
    fn state(&self) -> PathBuf {
        self.state.clone()
    }

    /// Submits one job of Python tasks, each `(args, deps)`: the bytes `rdask._worker.run_task`
    /// reads, and the `(job, index)` of the tasks whose results are its inputs. Returns the job's id.
    #[pyo3(signature = (tasks, name="python", max_attempts=3))]
    fn submit_python(
        &self,
        py: Python<'_>,
        tasks: Vec<(PyBackedBytes, Vec<(u32, u32)>)>,
        name: &str,
        max_attempts: u8,
    ) -> PyResult<u32> {
        let tasks = tasks
            .into_iter()
            .map(|(args, deps)| TaskSpec {
                body: TaskBody::Function { func: 0, args: Bytes::from_owner(args) },
                deps: deps.into_iter().map(|(job, index)| TaskRef::Global(TaskId { job: JobId(job), index })).collect(),
                // Every task has a future in Python, which may ask for its result.
                keep: true,
                cpus: 1,
                needs: Needs::default(),
            })
            .collect();
        let spec = JobSpec {
            name: name.to_string(),
            functions: vec![PYTHON_FN.to_string()],
            command: None,
            tasks: JobTasks::Graph(tasks),
            max_attempts,
            release_on_disconnect: true,
        };
        self.submit(py, spec)
    }

    /// Submits an array of command tasks, as `rdask-jobqueue submit` does: output in
    /// `jobs/<job>/<task>.out` and `.err` of the state directory (streamed into one file per
    /// worker for more than 1,000 tasks) unless `stdout`/`stderr` say otherwise (`"none"`
    /// discards it). Returns the job's id.
    #[pyo3(signature = (argv, array=None, cpus=1, env=Vec::new(), cwd=None, stdout=None, stderr=None, name=None))]
    #[allow(clippy::too_many_arguments)]
    fn submit_command(
        &self,
        py: Python<'_>,
        argv: Vec<String>,
        array: Option<&str>,
        cpus: u16,
        env: Vec<(String, String)>,
        cwd: Option<String>,
        stdout: Option<String>,
        stderr: Option<String>,
        name: Option<String>,
    ) -> PyResult<u32> {
        if argv.is_empty() {
            return Err(error("no command given", 2));
        }
        let ranges = match array {
            Some(a) => rdask::protocol::parse_array(a).map_err(|e| error(format!("bad array: {e}"), 2))?,
            None => vec![(0, 0)],
        };
        let n: u64 = ranges.iter().map(|&(x, y)| u64::from(y - x) + 1).sum();
        let jobs_dir = self.state.join("jobs").join("%{JOB_ID}");
        // The CLI's rule (`submit`): more than 1,000 tasks stream, unless told where output goes.
        let streamed = stdout.is_none() && stderr.is_none() && n > 1000;
        let file = |opt: Option<String>, ext: &str| match opt.as_deref() {
            Some("none") => None,
            Some(p) => Some(p.to_string()),
            None => Some(jobs_dir.join(format!("%{{TASK_ID}}.{ext}")).display().to_string()),
        };
        let cwd = match cwd {
            Some(c) => c,
            None => std::env::current_dir()
                .map_err(|e| error(format!("cannot read the current directory: {e}"), 5))?
                .display()
                .to_string(),
        };
        let command = CommandSpec {
            argv: argv.clone(),
            env,
            cwd: Some(cwd),
            stdout: if streamed { None } else { file(stdout, "out") },
            stderr: if streamed { None } else { file(stderr, "err") },
            stream: streamed.then(|| jobs_dir.display().to_string()),
        };
        let spec = JobSpec {
            name: name.unwrap_or_else(|| argv[0].clone()),
            functions: Vec::new(),
            command: Some(command),
            tasks: JobTasks::Array { ranges, cpus: cpus.max(1), needs: Needs::default() },
            max_attempts: 3,
            release_on_disconnect: false,
        };
        self.submit(py, spec)
    }

    /// Waits until all (`all=True`) or at least one of `jobs` ended, or `timeout` seconds
    /// passed; returns those that ended. Python's signals (Ctrl-C) interrupt it.
    #[pyo3(signature = (jobs, timeout=None, all=true))]
    fn wait(&self, py: Python<'_>, jobs: Vec<u32>, timeout: Option<f64>, all: bool) -> PyResult<Vec<u32>> {
        let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
        loop {
            let (ended, enough) = py.allow_threads(|| {
                let mut done = self.outcomes.done.lock().expect("outcomes lock");
                let slice = Instant::now() + Duration::from_millis(100);
                let until = deadline.map_or(slice, |d| d.min(slice));
                loop {
                    let ended: Vec<u32> = jobs.iter().copied().filter(|j| done.contains_key(j)).collect();
                    let enough = if all { ended.len() == jobs.len() } else { !ended.is_empty() || jobs.is_empty() };
                    let now = Instant::now();
                    if enough || now >= until {
                        return (ended, enough);
                    }
                    done = self.outcomes.changed.wait_timeout(done, until - now).expect("outcomes lock").0;
                }
            });
            if enough || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(ended);
            }
            py.check_signals()?;
        }
    }

    /// Whether job `job` ended.
    fn done(&self, job: u32) -> bool {
        self.outcomes.done.lock().expect("outcomes lock").contains_key(&job)
    }

    /// An ended job's outcome: `(tasks, finished, failed)`, `failed` a list of
    /// `(index, kind, message)`. Raises `RdaskError` if the job has not ended or the
    /// connection broke while waiting.
    fn outcome(&self, job: u32) -> PyResult<Outcome> {
        let done = self.outcomes.done.lock().expect("outcomes lock");
        match done.get(&job) {
            None => Err(error(format!("job {job} has not ended"), 5)),
            Some(Err(e)) => Err(error(e, 3)),
            Some(Ok(o)) => Ok((
                o.tasks,
                o.finished,
                o.failed.iter().map(|(i, e)| (*i, format!("{:?}", e.kind), e.to_string())).collect(),
            )),
        }
    }

    /// The results of tasks `indices` of an ended job, as `bytearray`s, fetched from the workers
    /// that hold them.
    fn fetch<'py>(&self, py: Python<'py>, job: u32, indices: Vec<u32>) -> PyResult<Vec<Bound<'py, PyByteArray>>> {
        let client = self.client()?;
        let handles: Vec<rdask::TaskHandle> = indices.iter().map(|&i| rdask::TaskHandle(i)).collect();
        let job = rdask::Job { id: JobId(job) };
        let raw = py.allow_threads(|| self.rt.block_on(client.gather_raw(&job, &handles))).map_err(client_error)?;
        // One copy, into memory Python owns and may write (NumPy arrays over it are writable).
        Ok(raw.iter().map(|b| PyByteArray::new(py, b)).collect())
    }

    /// The tasks of job `job` that ended from the `after`-th on, in the order they ended:
    /// `(next, finished, results, failed, done)`: the `after` of the next call, the indices of
    /// those that finished, with `fetch` their results as `(index, bytearray)` (one that could
    /// not be fetched yet is left out: the job's end brings it), those that failed as
    /// `(index, kind, message)`, and whether the job ended with this page.
    #[allow(clippy::type_complexity)]
    #[pyo3(signature = (job, after, fetch=true))]
    fn ended<'py>(
        &self,
        py: Python<'py>,
        job: u32,
        after: u32,
        fetch: bool,
    ) -> PyResult<(u32, Vec<u32>, Vec<(u32, Bound<'py, PyByteArray>)>, Vec<(u32, String, String)>, bool)> {
        let client = self.client()?;
        let (page, results) =
            py.allow_threads(|| self.rt.block_on(client.ended_raw(JobId(job), after, fetch))).map_err(client_error)?;
        let results = results.iter().map(|(i, b)| (*i, PyByteArray::new(py, b))).collect();
        let failed = page.failed.iter().map(|(i, e)| (*i, format!("{:?}", e.kind), e.to_string())).collect();
        Ok((page.next, page.finished, results, failed, page.done))
    }

    /// Cancels a job's tasks that have not started (all, or those of `tasks`): they fail as
    /// cancelled; running ones finish. Returns `(cancelled, running)`.
    #[pyo3(signature = (job, tasks=None))]
    fn cancel(&self, py: Python<'_>, job: u32, tasks: Option<Vec<u32>>) -> PyResult<(u32, u32)> {
        let client = self.client()?;
        let c = py.allow_threads(|| self.rt.block_on(client.cancel(JobId(job), tasks))).map_err(client_error)?;
        Ok((c.cancelled, c.running))
    }

    /// Drops a job's results on the workers and forgets it (in the background). A job not
    /// known to have ended is cancelled first: nobody can see its results any more, so its
    /// tasks that have not started never run (as Dask forgets the tasks of futures nobody holds).
    fn release(&self, job: u32) -> PyResult<()> {
        let client = self.client()?;
        let ended = self.outcomes.done.lock().expect("outcomes lock").remove(&job).is_some();
        self.rt.spawn(async move {
            if !ended {
                let _ = client.cancel(JobId(job), None).await;
            }
            let _ = client.release(JobId(job)).await;
        });
        Ok(())
    }

    /// A job's task counts now, as JSON (`total`, `waiting`, `running`, `finished`, `failed`).
    fn progress(&self, py: Python<'_>, job: u32) -> PyResult<String> {
        let client = self.client()?;
        let c = py.allow_threads(|| self.rt.block_on(client.progress(JobId(job)))).map_err(client_error)?;
        serde_json::to_string(&c).map_err(|e| error(e, 5))
    }

    /// The cluster's status as the scheduler sees it, as JSON.
    fn status(&self, py: Python<'_>) -> PyResult<String> {
        let client = self.client()?;
        let s = py.allow_threads(|| self.rt.block_on(client.status())).map_err(client_error)?;
        serde_json::to_string(&s).map_err(|e| error(e, 5))
    }

    /// Closes the connection; jobs still running are released by the scheduler.
    fn close(&self) {
        if let Ok(mut c) = self.client.lock() {
            c.take();
        }
    }
}

/// The module.
#[pymodule]
fn _rdask(m: &Bound<'_, PyModule>) -> PyResult<()> {
    install(m.py())?;
    m.add("RdaskError", m.py().get_type::<RdaskError>())?;
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add_function(wrap_pyfunction!(run_cli, m)?)?;
    m.add_function(wrap_pyfunction!(job_script, m)?)?;
    m.add_function(wrap_pyfunction!(state_dir, m)?)?;
    m.add_class::<Connection>()?;
    m.add_class::<Pinned>()?;
    Ok(())
}
