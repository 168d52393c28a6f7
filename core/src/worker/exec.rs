//! The worker's task slots: `slots` threads that run function and command tasks.
//!
//! Tasks wait in one queue; a thread takes the first one when enough CPUs are
//! free (a task wider than the worker takes all of them), runs it, and reports
//! what it finished in batches: when the queue has nothing it may start, after
//! a couple of milliseconds, or every 256 tasks. Short tasks thus cost no
//! wake-up of the worker's event loop each, and long ones are reported at once.
//! Command tasks run as child processes in their own process groups, spawned
//! and awaited from the slot thread, like a plain `fork`+`exec` loop; a guardian ends those
//! groups if the worker is killed (`guard.rs`).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::guard::Children;
use crate::protocol::{Assignment, CommandSpec, ErrorKind, JobId, TaskError, TaskId, Work};
use crate::registry::TaskFn;

/// A task ready to run: its assignment and its inputs.
pub(super) struct Job {
    pub assignment: Assignment,
    pub inputs: Vec<Bytes>,
    pub run: Runner,
}

/// How to run a job.
pub(super) enum Runner {
    Function(Arc<TaskFn>),
    Command(Arc<CommandSpec>),
}

/// The end of one task.
pub(super) struct TaskDone {
    pub id: TaskId,
    pub result: Result<Bytes, TaskError>,
    pub duration: Duration,
    /// Whether the result is to be kept (command tasks leave none).
    pub keep: bool,
}

struct State {
    queue: VecDeque<Job>,
    free: u32,
    closed: bool,
}

/// The slot threads and their queue.
pub(super) struct Slots {
    state: Arc<(Mutex<State>, Condvar)>,
    /// Process groups of running command tasks.
    pub children: Arc<Children>,
}

const BATCH: usize = 256;
const BATCH_DELAY: Duration = Duration::from_millis(2);

impl Slots {
    /// Starts `slots` threads reporting to `done`.
    pub fn start(slots: u16, done: mpsc::UnboundedSender<Vec<TaskDone>>) -> Slots {
        let slots = u32::from(slots.max(1));
        let state =
            Arc::new((Mutex::new(State { queue: VecDeque::new(), free: slots, closed: false }), Condvar::new()));
        let children = Arc::new(Children::new(slots as usize));
        for i in 0..slots {
            let (state, done, children) = (state.clone(), done.clone(), children.clone());
            std::thread::Builder::new()
                .name(format!("rdask-slot-{i}"))
                .spawn(move || slot_thread(&state, slots, &done, &children))
                .expect("spawning a slot thread");
        }
        Slots { state, children }
    }

    /// Queues jobs.
    pub fn push(&self, jobs: impl IntoIterator<Item = Job>) {
        let (lock, cv) = &*self.state;
        lock.lock().expect("slot lock").queue.extend(jobs);
        cv.notify_all();
    }

    /// Drops queued jobs and ends the threads once their current task is done.
    pub fn close(&self) {
        let (lock, cv) = &*self.state;
        let mut st = lock.lock().expect("slot lock");
        st.closed = true;
        st.queue.clear();
        cv.notify_all();
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        self.close();
    }
}

fn slot_thread(
    state: &(Mutex<State>, Condvar),
    slots: u32,
    done: &mpsc::UnboundedSender<Vec<TaskDone>>,
    children: &Children,
) {
    let (lock, cv) = state;
    let mut results: Vec<TaskDone> = Vec::new();
    let mut first_result = Instant::now();
    loop {
        let job = {
            let mut st = lock.lock().expect("slot lock");
            loop {
                if st.closed {
                    return;
                }
                let need = st.queue.front().map(|j| u32::from(j.assignment.cpus).clamp(1, slots));
                if let Some(need) = need.filter(|n| *n <= st.free) {
                    st.free -= need;
                    break st.queue.pop_front().map(|j| (j, need));
                }
                if !results.is_empty() {
                    break None;
                }
                st = cv.wait(st).expect("slot lock");
            }
        };
        let Some((job, need)) = job else {
            // Nothing this thread may start now: report what it has.
            if done.send(std::mem::take(&mut results)).is_err() {
                return;
            }
            continue;
        };
        let r = run(job, children);
        {
            let mut st = lock.lock().expect("slot lock");
            st.free += need;
            cv.notify_all();
        }
        if results.is_empty() {
            first_result = Instant::now();
        }
        results.push(r);
        let due = results.len() >= BATCH || first_result.elapsed() >= BATCH_DELAY;
        if due && done.send(std::mem::take(&mut results)).is_err() {
            return;
        }
    }
}

fn run(job: Job, children: &Children) -> TaskDone {
    let start = Instant::now();
    let id = job.assignment.id;
    let (result, keep) = match (&job.run, &job.assignment.work) {
        (Runner::Function(f), Work::Function { args, .. }) => (call(f.as_ref(), args, &job.inputs), true),
        (Runner::Command(spec), Work::Command { array_id }) => {
            (run_command(spec, id, *array_id, &job.assignment.gpus, children), false)
        }
        _ => (Err(TaskError { kind: ErrorKind::Spawn, message: "task and runner disagree".into() }), false),
    };
    TaskDone { id, result, duration: start.elapsed(), keep }
}

fn call(f: &TaskFn, args: &[u8], inputs: &[Bytes]) -> Result<Bytes, TaskError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(args, inputs))) {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(message)) => Err(TaskError { kind: ErrorKind::Error, message }),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic with a non-string payload".into());
            Err(TaskError { kind: ErrorKind::Panic, message })
        }
    }
}

/// Replaces `%{TASK_ID}` and `%{JOB_ID}`.
pub fn substitute(s: &str, job: JobId, array_id: u32) -> String {
    s.replace("%{TASK_ID}", &array_id.to_string()).replace("%{JOB_ID}", &job.0.to_string())
}

/// The variables that name the GPUs a process may use: CUDA, ROCm, oneAPI Level Zero.
pub const GPU_VARS: [&str; 3] = ["CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK"];

fn run_command(
    spec: &CommandSpec,
    id: TaskId,
    array_id: u32,
    gpus: &[String],
    children: &Children,
) -> Result<Bytes, TaskError> {
    use std::io::Read;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let sub = |s: &str| substitute(s, id.job, array_id);
    let spawn_err = |message: String| TaskError { kind: ErrorKind::Spawn, message };
    let Some(program) = spec.argv.first() else { return Err(spawn_err("empty command".into())) };
    let mut cmd = std::process::Command::new(sub(program));
    cmd.args(spec.argv[1..].iter().map(|a| sub(a)));
    cmd.env("RDASK_TASK_ID", array_id.to_string()).env("RDASK_JOB_ID", id.job.0.to_string());
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    // Exactly the GPUs bound to it, whatever the worker's environment or the command's says.
    if !gpus.is_empty() {
        let list = gpus.join(",");
        for v in GPU_VARS {
            cmd.env(v, &list);
        }
    }
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(sub(cwd));
    }
    // Streamed: both outputs go to this thread's scratch files, appended to the worker's
    // stream file once the command ended.
    let streamed = spec.stream.as_deref().map(sub);
    let scratch = match &streamed {
        Some(_) => {
            Some(Scratch::take().map_err(|e| spawn_err(format!("cannot make scratch files for the output: {e}")))?)
        }
        None => None,
    };
    let open = |path: &str| -> Result<(Stdio, String), TaskError> {
        let p = sub(path);
        if let Some(parent) = std::path::Path::new(&p).parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let f = std::fs::File::create(&p).map_err(|e| spawn_err(format!("cannot create {p}: {e}")))?;
        Ok((Stdio::from(f), p))
    };
    let (stdout, stderr, stderr_path) = if let Some(sc) = &scratch {
        let (out, err) = sc.stdio().map_err(|e| spawn_err(format!("cannot reuse the scratch files: {e}")))?;
        (out, err, None)
    } else {
        let stdout = match &spec.stdout {
            Some(p) => open(p)?.0,
            None => Stdio::null(),
        };
        // A discarded stderr still goes through a pipe: its tail explains a failure.
        let (stderr, stderr_path) = match &spec.stderr {
            Some(p) => open(p).map(|(s, p)| (s, Some(p)))?,
            None => (Stdio::piped(), None),
        };
        (stdout, stderr, stderr_path)
    };
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr).process_group(0);
    let mut child = cmd.spawn().map_err(|e| spawn_err(format!("cannot start `{}`: {e}", sub(program))))?;
    let pid = child.id() as i32;
    children.add(pid);
    let mut tail = Vec::new();
    if let Some(mut pipe) = child.stderr.take() {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 8192 {
                tail.drain(..tail.len() - 4096);
            }
        }
    }
    let status = child.wait();
    children.remove(pid);
    let status = status.map_err(|e| spawn_err(format!("waiting for the command failed: {e}")))?;
    if let (Some(dir), Some(sc)) = (&streamed, scratch) {
        let appended = sc.append_to(Path::new(dir), array_id);
        tail = sc.err_tail(2048);
        Scratch::give_back(sc);
        if let Err(e) = appended {
            // Output that cannot be kept fails its task: nothing is lost silently.
            return Err(spawn_err(format!("cannot append the task's output to {dir}: {e}")));
        }
    }
    if status.success() {
        return Ok(Bytes::new());
    }
    if let Some(p) = stderr_path {
        let data = std::fs::read(p).unwrap_or_default();
        tail = data[data.len().saturating_sub(2048)..].to_vec();
    }
    let mut message = String::from_utf8_lossy(&tail[tail.len().saturating_sub(2048)..]).trim().to_string();
    if message.is_empty() {
        message = "(no stderr)".into();
    }
    let kind = match (status.code(), status.signal()) {
        (Some(c), _) => ErrorKind::ExitCode(c),
        (None, Some(s)) => ErrorKind::Signal(s),
        _ => ErrorKind::ExitCode(-1),
    };
    Err(TaskError { kind, message })
}

/// A slot thread's two scratch files (unlinked: nothing is left behind) for the outputs of
/// its streamed command tasks, emptied before each task and kept for the next.
struct Scratch {
    out: File,
    err: File,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Option<Scratch>> = const { std::cell::RefCell::new(None) };
}

fn unlinked_file() -> std::io::Result<File> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("rdask-scratch-{}-{n}", std::process::id()));
    let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

impl Scratch {
    /// This thread's scratch files (made on first use).
    fn take() -> std::io::Result<Scratch> {
        match SCRATCH.with(|s| s.borrow_mut().take()) {
            Some(s) => Ok(s),
            None => Ok(Scratch { out: unlinked_file()?, err: unlinked_file()? }),
        }
    }

    fn give_back(s: Scratch) {
        SCRATCH.with(|c| *c.borrow_mut() = Some(s));
    }

    /// Empties both and hands the command its ends (sharing their offsets, now 0).
    fn stdio(&self) -> std::io::Result<(Stdio, Stdio)> {
        for mut f in [&self.out, &self.err] {
            f.set_len(0)?;
            f.seek(SeekFrom::Start(0))?;
        }
        Ok((Stdio::from(self.out.try_clone()?), Stdio::from(self.err.try_clone()?)))
    }

    /// The last `n` bytes of standard error.
    fn err_tail(&self, n: u64) -> Vec<u8> {
        let len = self.err.metadata().map(|m| m.len()).unwrap_or(0);
        let take = len.min(n);
        let mut buf = vec![0; take as usize];
        let _ = self.err.read_exact_at(&mut buf, len - take);
        buf
    }

    /// Appends a frame for each non-empty output to this worker's stream file in `dir`.
    fn append_to(&self, dir: &Path, task: u32) -> std::io::Result<()> {
        use crate::stream::{header, Which};
        let outputs = [(Which::Out, &self.out), (Which::Err, &self.err)];
        let lens: Vec<u64> = outputs.iter().map(|(_, f)| f.metadata().map(|m| m.len())).collect::<Result<_, _>>()?;
        if lens.iter().all(|l| *l == 0) {
            return Ok(());
        }
        let mut files = STREAM_FILES.lock().expect("stream files lock");
        if files.len() >= STREAM_FILES_OPEN && !files.contains_key(dir) {
            files.clear(); // they are reopened, for appending, when needed again
        }
        let file = match files.entry(dir.to_path_buf()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                std::fs::create_dir_all(dir)?;
                let name = format!("{}-{}.{}", crate::worker::hostname(), std::process::id(), crate::stream::EXT);
                e.insert(std::fs::OpenOptions::new().create(true).append(true).open(dir.join(name))?)
            }
        };
        // Only this process writes this file, and only under the lock: frames never interleave.
        // Large outputs are copied in pieces, never held whole in memory.
        let mut w = std::io::BufWriter::with_capacity(64 << 10, &*file);
        for ((which, mut f), len) in outputs.into_iter().zip(lens) {
            if len == 0 {
                continue;
            }
            w.write_all(header(task, which, len).as_bytes())?;
            f.seek(SeekFrom::Start(0))?;
            let copied = std::io::copy(&mut std::io::Read::take(&mut f, len), &mut w)?;
            if copied != len {
                return Err(std::io::Error::other(format!("the task's output shrank from {len} to {copied} bytes")));
            }
            w.write_all(b"\n")?;
        }
        w.flush()
    }
}

/// This worker's open stream files, by directory (one per job).
static STREAM_FILES: std::sync::LazyLock<Mutex<HashMap<PathBuf, File>>> = std::sync::LazyLock::new(Mutex::default);
const STREAM_FILES_OPEN: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_ids() {
        assert_eq!(substitute("out/%{JOB_ID}-%{TASK_ID}.txt", JobId(3), 17), "out/3-17.txt");
    }
}
