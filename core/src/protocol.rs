//! The messages exchanged by scheduler, workers and clients.
//!
//! This module is the only place that defines wire types. Each message is
//! encoded with postcard into a frame header; bulk data (task results) travel
//! as the frame's raw payload, never inside the header.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use rdask_transport::Frame;

/// A job: one submission of tasks (a graph, or a command array).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub u32);

/// A task: a job and the task's index inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId {
    /// The job.
    pub job: JobId,
    /// The task's index in the job, from 0.
    pub index: u32,
}

/// A worker, numbered by the scheduler from 1 in the order they register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkerId(pub u32);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.job.0, self.index)
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}", self.0)
    }
}

/// A program to run, as CLI users submit it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// Program and arguments; `%{TASK_ID}` and `%{JOB_ID}` are substituted.
    pub argv: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Working directory (substituted too); the worker's own when `None`.
    pub cwd: Option<String>,
    /// File for standard output (substituted); discarded when `None`.
    pub stdout: Option<String>,
    /// File for standard error (substituted); discarded when `None`.
    pub stderr: Option<String>,
    /// A directory (substituted) where each worker appends the standard output and error of
    /// all the job's tasks it runs to one file of its own, framed by task (see
    /// [`crate::stream`]), instead of `stdout` and `stderr`, which are then ignored.
    pub stream: Option<String>,
}

/// What a task does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskBody {
    /// Call a function registered in the worker's program.
    Function {
        /// Index into the job's function-name table.
        func: u32,
        /// Arguments, postcard-encoded by the client.
        args: Bytes,
    },
    /// Run the job's command with this task's id.
    Command,
}

/// A reference to a task a new task depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskRef {
    /// A task of the same submission, by index.
    Local(u32),
    /// A task of an earlier job.
    Global(TaskId),
}

/// One task of a graph submission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// What to run.
    pub body: TaskBody,
    /// Tasks whose results this one takes as inputs, in order.
    pub deps: Vec<TaskRef>,
    /// Keep the result for the client even after its dependents have used it.
    pub keep: bool,
    /// CPUs (worker slots) the task occupies.
    pub cpus: u16,
    /// What else it needs: GPUs, memory, named resources.
    pub needs: Needs,
}

/// What a task needs besides CPUs; the default needs nothing more. The scheduler places a task
/// only on a worker whose [`Offer`] has all of it free, holds it for the task while the task is
/// assigned, and never gives it to two tasks at once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Needs {
    /// GPUs; the worker binds that many of its devices to the task (`CUDA_VISIBLE_DEVICES`).
    pub gpus: u16,
    /// Memory in bytes; only workers that declared their memory take a task that asks for it.
    pub memory: u64,
    /// Named resources (`license=1`), sorted by name, each name once.
    pub named: Vec<(String, u32)>,
    /// Only workers of this pool (see [`Offer::pool`]).
    pub pool: Option<String>,
}

impl Needs {
    /// Whether it asks for nothing besides CPUs.
    pub fn is_empty(&self) -> bool {
        self.gpus == 0 && self.memory == 0 && self.named.is_empty() && self.pool.is_none()
    }
}

impl fmt::Display for Needs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.gpus > 0 {
            parts.push(format!("{} GPU{}", self.gpus, if self.gpus == 1 { "" } else { "s" }));
        }
        if self.memory > 0 {
            parts.push(format!("{} MB of memory", self.memory.div_ceil(1_000_000)));
        }
        for (name, n) in &self.named {
            parts.push(format!("{name}={n}"));
        }
        if let Some(pool) = &self.pool {
            parts.push(format!("a worker of pool `{pool}`"));
        }
        if parts.is_empty() {
            parts.push("nothing besides CPUs".into());
        }
        f.write_str(&parts.join(", "))
    }
}

/// What a worker offers besides its slots, said at registration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// Its GPUs, as `CUDA_VISIBLE_DEVICES` names them (indices or UUIDs).
    pub gpus: Vec<String>,
    /// Memory for tasks in bytes; 0 when not declared.
    pub memory: u64,
    /// Named resources and how many of each, sorted by name.
    pub named: Vec<(String, u32)>,
    /// The pool it belongs to, for tasks that name one (from whoever started it).
    pub pool: Option<String>,
}

impl Offer {
    /// Whether `needs` could ever fit on a worker offering this (all of it free).
    pub fn could_hold(&self, needs: &Needs) -> Result<(), String> {
        if let Some(pool) = &needs.pool {
            if self.pool.as_ref() != Some(pool) {
                return Err(format!("not pool `{pool}`"));
            }
        }
        if usize::from(needs.gpus) > self.gpus.len() {
            return Err(format!("{} GPUs asked, {} offered", needs.gpus, self.gpus.len()));
        }
        if needs.memory > 0 && needs.memory > self.memory {
            return Err(format!(
                "{} MB of memory asked, {} MB offered",
                needs.memory.div_ceil(1_000_000),
                self.memory / 1_000_000
            ));
        }
        for (name, n) in &needs.named {
            let have = self.named.iter().find(|(k, _)| k == name).map_or(0, |(_, v)| *v);
            if *n > have {
                return Err(format!("{name}={n} asked, {have} offered"));
            }
        }
        Ok(())
    }
}

/// The environment variable that carries a worker's [`Offer`] in its text form
/// ([`Offer::to_text`]), set by whoever starts the worker.
pub const OFFER_VAR: &str = "RDASK_OFFER";

impl Offer {
    /// The text form: comma-separated `gpus=ID:ID…`, `memory=BYTES` and `NAME=COUNT` items
    /// (`gpus=0:1,memory=8000000000,license=2`), and `pool=NAME`; empty for an empty offer.
    pub fn to_text(&self) -> String {
        let mut items = Vec::new();
        if !self.gpus.is_empty() {
            items.push(format!("gpus={}", self.gpus.join(":")));
        }
        if self.memory > 0 {
            items.push(format!("memory={}", self.memory));
        }
        items.extend(self.named.iter().map(|(k, v)| format!("{k}={v}")));
        if let Some(pool) = &self.pool {
            items.push(format!("pool={pool}"));
        }
        items.join(",")
    }

    /// Reads [`Offer::to_text`]'s form back; the error says which item is wrong.
    pub fn from_text(text: &str) -> Result<Offer, String> {
        let mut offer = Offer::default();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item.split_once('=').ok_or_else(|| format!("`{item}` is not NAME=VALUE"))?;
            let bad = || format!("`{item}`: `{value}` is not a whole number");
            match key {
                "gpus" => offer.gpus = value.split(':').filter(|g| !g.is_empty()).map(str::to_string).collect(),
                "memory" => offer.memory = value.parse().map_err(|_| bad())?,
                "pool" if is_resource_name(value) => offer.pool = Some(value.to_string()),
                "pool" => return Err(format!("`{item}`: `{value}` is not a pool name")),
                _ if !is_resource_name(key) => {
                    return Err(format!("`{key}` is not a resource name (letters, digits, `_`, `-`, `.`)"))
                }
                _ => offer.named.push((key.to_string(), value.parse().map_err(|_| bad())?)),
            }
        }
        offer.named.sort();
        if let Some(w) = offer.named.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(format!("`{}` is given twice", w[0].0));
        }
        Ok(offer)
    }
}

/// Whether `name` can name a resource: a letter, then letters, digits, `_`, `-` or `.`.
pub fn is_resource_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

impl fmt::Display for Offer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = vec![format!("{} GPUs", self.gpus.len())];
        if self.memory > 0 {
            parts.push(format!("{} MB of memory", self.memory / 1_000_000));
        }
        for (name, n) in &self.named {
            parts.push(format!("{name}={n}"));
        }
        f.write_str(&parts.join(", "))
    }
}

/// A submission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// A name for humans.
    pub name: String,
    /// Names of the functions that the job's function tasks call.
    pub functions: Vec<String>,
    /// The command of command tasks.
    pub command: Option<CommandSpec>,
    /// The tasks.
    pub tasks: JobTasks,
    /// Attempts a task gets when the worker running it dies.
    pub max_attempts: u8,
    /// Release the job's results when the submitting client disconnects.
    pub release_on_disconnect: bool,
}

/// The tasks of a submission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobTasks {
    /// Independent command tasks, one per array index (`RDASK_TASK_ID`).
    Array {
        /// Inclusive ranges of array indices.
        ranges: Vec<(u32, u32)>,
        /// CPUs each task occupies.
        cpus: u16,
        /// What else each task needs.
        needs: Needs,
    },
    /// A task graph.
    Graph(Vec<TaskSpec>),
}

/// Why a task did not produce a result.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The function panicked.
    Panic,
    /// The function returned an error.
    Error,
    /// The command exited with a non-zero code.
    ExitCode(i32),
    /// The command was killed by a signal.
    Signal(i32),
    /// The command could not be started.
    Spawn,
    /// The function is not registered in the worker's program.
    UnknownFunction,
    /// Workers running the task died too often.
    WorkerLost,
    /// A task it depends on failed.
    DependencyFailed(TaskId),
    /// An input could not be decoded or fetched.
    Input,
    /// A client cancelled it before it started ([`Request::Cancel`]).
    Cancelled,
}

/// A task's failure, with the worker's own words.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskError {
    /// The category.
    pub kind: ErrorKind,
    /// Panic text, error message or stderr tail.
    pub message: String,
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Panic => write!(f, "panicked: {}", self.message),
            ErrorKind::Error => write!(f, "failed: {}", self.message),
            ErrorKind::ExitCode(c) => write!(f, "exited with code {c}: {}", self.message),
            ErrorKind::Signal(s) => write!(f, "killed by signal {s}: {}", self.message),
            ErrorKind::Spawn => write!(f, "could not start: {}", self.message),
            ErrorKind::UnknownFunction => write!(f, "unknown function: {}", self.message),
            ErrorKind::WorkerLost => write!(f, "worker lost: {}", self.message),
            ErrorKind::DependencyFailed(t) => write!(f, "dependency {t} failed: {}", self.message),
            ErrorKind::Input => write!(f, "input error: {}", self.message),
            ErrorKind::Cancelled => write!(f, "{}", self.message),
        }
    }
}

/// What a worker says about itself when it registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Task slots (CPUs).
    pub slots: u16,
    /// Host name.
    pub host: String,
    /// Process id on that host.
    pub pid: u32,
    /// The launch tag given by whoever started the worker (`RDASK_LAUNCH_TAG`: for
    /// `rdask-jobqueue`, the pool and the submission it belongs to), echoed unchanged. Opaque to
    /// the scheduler, which only hands it to its embedding (see [`crate::scheduler::Notice`]).
    pub launch: Option<String>,
    /// Where peers and clients fetch results from this worker.
    pub data_address: String,
    /// Milliseconds left, at registration, before the worker must be gone (its batch job's
    /// walltime less a grace period); `None` when it has no end.
    pub lifetime_ms: Option<u64>,
    /// GPUs, memory and named resources it offers.
    pub offer: Offer,
    /// Set when the worker comes back to a scheduler after losing one (a restarted scheduler,
    /// or the same after a broken connection): what it still runs and holds.
    pub resume: Option<Box<Resume>>,
}

/// What a worker that lost its scheduler still has, told to the scheduler it reconnects to:
/// the tasks it was given and has not ended (running or queued on it), and the results it
/// holds, and the command outcomes it reported lately (the scheduler may have died before it
/// journalled them). A restarted scheduler adopts them instead of running them again. Tasks
/// that end while no scheduler listens are reported as running, and then as usual.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The id it had.
    pub worker: WorkerId,
    /// Tasks given to it and not ended.
    pub running: Vec<TaskId>,
    /// Results it holds, with their sizes.
    pub held: Vec<(TaskId, u64)>,
    /// Command tasks it reported finished lately.
    pub finished: Vec<Finished>,
    /// Command tasks it reported failed lately.
    pub failed: Vec<(TaskId, TaskError)>,
}

/// A task handed to a worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The task.
    pub id: TaskId,
    /// What to run; a function name is resolved by the scheduler.
    pub work: Work,
    /// The task's inputs, in order, with the worker holding each.
    pub inputs: Vec<(TaskId, WorkerId)>,
    /// CPUs it occupies.
    pub cpus: u16,
    /// The worker's GPUs bound to it (from its [`Offer`]); set as `CUDA_VISIBLE_DEVICES` and
    /// the ROCm and oneAPI equivalents for a command.
    pub gpus: Vec<String>,
}

/// A task's work as the worker sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Work {
    /// Call `name` with `args`.
    Function {
        /// The registered name.
        name: String,
        /// Encoded arguments.
        args: Bytes,
    },
    /// Run the job's command (sent once per job in [`ToWorker::Command`]) with this array index.
    Command {
        /// The array index (`RDASK_TASK_ID`, `%{TASK_ID}`).
        array_id: u32,
    },
}

/// A finished task as reported by its worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    /// The task.
    pub id: TaskId,
    /// Size of the result kept on the worker, in bytes.
    pub size: u64,
    /// How long the task ran, in microseconds.
    pub duration_us: u32,
}

/// Messages to the scheduler, from workers and clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToScheduler {
    /// A worker joins.
    RegisterWorker(WorkerInfo),
    /// A client joins.
    RegisterClient(ClientInfo),
    /// A worker is alive, and what its process uses. `ack`: it wants a [`ToWorker::Ack`], having
    /// heard nothing from the scheduler for a while (its death timeout needs word); otherwise
    /// the scheduler sends nothing back.
    Heartbeat {
        /// What its process uses.
        load: WorkerLoad,
        /// Whether to answer with [`ToWorker::Ack`].
        ack: bool,
        /// The interval its heartbeats keep now, in milliseconds: the scheduler's deadline for
        /// the next one allows for it while a change of interval is on its way.
        interval_ms: u64,
    },
    /// Tasks a worker finished; results stay on the worker.
    Finished(Vec<Finished>),
    /// A task failed on the worker.
    Failed(TaskId, TaskError),
    /// A worker could not fetch an input (second id) of a task (first id): its holder lost it or is gone.
    InputMissing(TaskId, TaskId),
    /// A worker asks to leave: no new tasks; once its running ones end and the results only
    /// it holds are handed over, the scheduler sends [`ToWorker::Stop`].
    Retire,
    /// Results a worker copied from a retiring one at the scheduler's request ([`ToWorker::Replicate`]);
    /// only those it got are listed.
    Replicated {
        /// The retiring worker they came from.
        from: WorkerId,
        /// The results copied.
        ids: Vec<TaskId>,
    },
    /// A client request, answered with [`ToClient::Reply`] of the same `req`.
    Request {
        /// Chosen by the client to match the reply.
        req: u64,
        /// The request.
        body: Request,
    },
}

/// What a client says about itself when it registers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The cluster ends when this client disconnects (`srun … run` and `mpirun … mpi` clusters,
    /// whose lifetime is their client's): its embedding is told, and ends the cluster, when the
    /// connection closes without a [`Request::Shutdown`].
    pub ends_cluster: bool,
}

/// Requests of a client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Submit a job; answered with [`Reply::Submitted`].
    Submit(Box<JobSpec>),
    /// Answer when the job has ended ([`Reply::JobDone`]).
    Wait(JobId),
    /// Counts of a job's tasks now ([`Reply::Progress`]).
    Progress(JobId),
    /// The cluster's state ([`Reply::Status`]).
    Status,
    /// Drop a job's kept results and forget it ([`Reply::Ok`]).
    Release(JobId),
    /// Stop the workers and the scheduler ([`Reply::Ok`]).
    Shutdown,
    /// Retire these workers, all or none: each must be idle, and the results only they hold
    /// must have another worker to go to. Answered with [`Reply::Ok`] or [`Reply::Refused`].
    Retire(Vec<WorkerId>),
    /// A provisioning request (scale, adapt), answered by the cluster's provisioner with
    /// [`Reply::Control`] or [`Reply::Refused`]; refused where the scheduler has none.
    Control(ControlRequest),
    /// The cluster's events numbered above `after` ([`Reply::Events`]): as many as the scheduler
    /// still keeps, oldest first.
    Events {
        /// The last sequence number the client has seen (0: none).
        after: u64,
    },
    /// Counters, duration histograms and the task stream after `tasks_after` ([`Reply::Metrics`]).
    Metrics {
        /// The last task-stream sequence number the client has seen (0: none).
        tasks_after: u64,
    },
    /// The tasks of `job` that ended, in the order they ended, from the `after`-th on
    /// ([`Reply::Ended`]): what a client follows to use results before the whole job ended
    /// (`as_completed`).
    Ended {
        /// The job.
        job: JobId,
        /// How many ended tasks the client has seen: [`EndedPage::next`] of its last page (0 first).
        after: u32,
    },
    /// Cancel tasks of `job` that have not started: all of them (`tasks: None`) or those
    /// indexes. They fail as [`ErrorKind::Cancelled`], and so do the tasks that depend on them;
    /// tasks already running finish. Answered with [`Reply::Cancelled`].
    Cancel {
        /// The job.
        job: JobId,
        /// Which of its tasks (`None`: every one), named as [`JobOutcome::failed`] names them:
        /// by array index for arrays, else by task index.
        tasks: Option<Vec<u32>>,
    },
}

/// The most tasks an [`EndedPage`] lists; the client asks again from [`EndedPage::next`].
pub const ENDED_PAGE: u32 = 65_536;

/// Tasks of a job that ended, the answer to [`Request::Ended`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedPage {
    /// The `after` of the next request.
    pub next: u32,
    /// Tasks of this page that produced a result, by task index.
    pub finished: Vec<u32>,
    /// Where the kept results among them are.
    pub holdings: Vec<Holding>,
    /// Tasks of this page that failed for good, with why.
    pub failed: Vec<(u32, TaskError)>,
    /// Whether the job has ended and this page is its last: every task was in some page.
    pub done: bool,
}

/// What a worker's process uses, sent with every heartbeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerLoad {
    /// Resident memory in bytes.
    pub rss_bytes: u64,
    /// CPU time (user and system) used so far, in milliseconds.
    pub cpu_ms: u64,
    /// Bytes of task inputs fetched from other workers so far.
    pub fetched_bytes: u64,
}

/// Something that happened in the cluster, numbered; what `rdask-jobqueue events` prints and the
/// dashboard shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterEvent {
    /// Its sequence number, from 1, without gaps.
    pub seq: u64,
    /// Milliseconds since the scheduler started.
    pub at_ms: u64,
    /// What happened.
    pub what: EventKind,
}

/// The kinds of [`ClusterEvent`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A job was accepted.
    JobSubmitted {
        /// The job.
        job: JobId,
        /// Its name.
        name: String,
        /// Its number of tasks.
        tasks: u32,
    },
    /// Every task of a job ended.
    JobFinished {
        /// The job.
        job: JobId,
        /// Its name.
        name: String,
        /// Tasks with a result.
        finished: u32,
        /// Tasks that failed.
        failed: u32,
    },
    /// A task failed (a dependent failing with it is not reported again).
    TaskFailed {
        /// The job.
        job: JobId,
        /// The array index of a command task, else the task's index in its job.
        task: u32,
        /// Where it ran.
        worker: Option<WorkerId>,
        /// Why, with the worker's words (a command's exit code and stderr tail).
        error: TaskError,
    },
    /// A worker registered.
    WorkerJoined {
        /// Its id.
        worker: WorkerId,
        /// Its host.
        host: String,
        /// Its slots.
        slots: u16,
        /// Its launch tag.
        launch: Option<String>,
    },
    /// A worker started retiring.
    WorkerRetiring {
        /// Its id.
        worker: WorkerId,
        /// Why.
        reason: String,
    },
    /// A worker left or was lost.
    WorkerLeft {
        /// Its id.
        worker: WorkerId,
        /// Why.
        reason: String,
    },
    /// A batch job (or local worker process) changed state: submitted (pending), started,
    /// ended (with why, when it ended early).
    Allocation {
        /// Its pool.
        pool: String,
        /// The batch system's job id (local: the pid).
        id: String,
        /// Its new state.
        state: AllocationState,
        /// Why it ended, when known.
        note: Option<String>,
    },
    /// The adaptive policy changed a pool's target.
    Adapt {
        /// The pool.
        pool: String,
        /// Jobs wanted now.
        target: u32,
        /// The policy's own words.
        reason: String,
    },
    /// The batch system refused a submission or a poll failed.
    BatchError {
        /// The pool.
        pool: String,
        /// The batch system's words.
        message: String,
    },
}

/// A page of events, in [`Reply::Events`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventPage {
    /// The scheduler's clock now, in milliseconds since it started (to date the events).
    pub now_ms: u64,
    /// Events after the asked sequence number, oldest first.
    pub events: Vec<ClusterEvent>,
    /// Events after the asked number that the scheduler no longer keeps (its memory for them
    /// is bounded); 0 when none was missed.
    pub missed: u64,
}

/// One task that ended, in the task stream of [`Metrics`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Its sequence number in the stream.
    pub seq: u64,
    /// The worker it ran on.
    pub worker: WorkerId,
    /// Its kind (a function, or `command:<job name>`).
    pub kind: String,
    /// When it started and ended, in milliseconds since the scheduler started.
    pub start_ms: u64,
    /// When it ended.
    pub end_ms: u64,
    /// Whether it produced a result.
    pub ok: bool,
}

/// The upper bounds, in microseconds, of the buckets of [`KindMetrics::duration_buckets`]
/// (the last bucket has no bound).
pub const DURATION_BUCKETS_US: [u64; 12] = [
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    60_000_000,
    600_000_000,
    3_600_000_000,
    36_000_000_000,
    360_000_000_000,
    u64::MAX,
];

/// Counters of one kind of task, in [`Metrics`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindMetrics {
    /// The kind.
    pub kind: String,
    /// Tasks that finished with a result.
    pub finished: u64,
    /// Tasks that failed.
    pub failed: u64,
    /// Finished tasks by duration: how many in each bucket of [`DURATION_BUCKETS_US`] (not cumulative).
    pub duration_buckets: Vec<u64>,
    /// The sum of their durations, in microseconds.
    pub duration_sum_us: u64,
}

/// The scheduler's counters, in [`Reply::Metrics`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The scheduler's clock now, in milliseconds since it started.
    pub now_ms: u64,
    /// Per kind of task.
    pub kinds: Vec<KindMetrics>,
    /// Bytes of task inputs moved between workers, over all workers that ever joined.
    pub fetched_bytes: u64,
    /// Workers that ever joined, and that left.
    pub workers_joined: u64,
    /// Workers that left.
    pub workers_left: u64,
    /// Tasks that ended after the asked stream number (the newest the scheduler keeps).
    pub tasks: Vec<TaskRecord>,
}

/// Requests for the cluster's provisioner: the part of the scheduler process that starts and
/// ends workers (local processes or batch jobs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Set the size of a pool (`None`: the main pool). Stops its adaptive scaling. Removing
    /// capacity retires idle workers through the scheduler; a busy worker is never stopped.
    Scale {
        /// The pool.
        pool: Option<String>,
        /// The size.
        target: ScaleTarget,
    },
    /// Make a pool follow the work between bounds (`Some`), or stop doing so (`None`).
    Adapt {
        /// The pool.
        pool: Option<String>,
        /// The settings.
        spec: Option<AdaptSpec>,
    },
}

/// How a [`ControlRequest::Scale`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScaleTarget {
    /// Batch jobs (local backend: workers).
    Jobs(u32),
    /// Nodes (rounded up to whole jobs).
    Nodes(u32),
    /// Workers (rounded up to whole jobs).
    Workers(u32),
}

/// Adaptive scaling's settings (`adapt`, `up --adapt-max`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaptSpec {
    /// Fewest jobs.
    pub min_jobs: u32,
    /// Most jobs doing work (pending or running); jobs near their walltime, being replaced,
    /// are not counted.
    pub max_jobs: u32,
    /// Aim to finish the queued work in this many seconds.
    pub target_duration: f64,
    /// Seconds between decisions.
    pub interval: f64,
    /// Most jobs pending in the queue at once.
    pub max_pending: u32,
    /// Consecutive intervals of surplus before a job is removed.
    pub scale_down_after: u32,
    /// Failed submissions in a row before adaptive submission pauses.
    pub max_failures: u32,
    /// Seconds before its workers must leave (walltime) that a job stops counting as capacity.
    pub replace_ahead: f64,
    /// Expected seconds of a task whose kind has never finished.
    pub default_task_duration: f64,
}

impl AdaptSpec {
    /// The defaults, between `min_jobs` and `max_jobs`.
    pub fn new(min_jobs: u32, max_jobs: u32) -> AdaptSpec {
        AdaptSpec {
            min_jobs,
            max_jobs,
            target_duration: 5.0,
            interval: 1.0,
            max_pending: 4,
            scale_down_after: 3,
            max_failures: 5,
            replace_ahead: 60.0,
            default_task_duration: 0.5,
        }
    }

    /// Checks the numbers; the message says which one is wrong and how.
    pub fn check(&self) -> Result<(), String> {
        if self.min_jobs > self.max_jobs {
            return Err(format!("--min ({}) is larger than --max ({})", self.min_jobs, self.max_jobs));
        }
        if self.max_jobs == 0 {
            return Err("--max must be at least 1".into());
        }
        for (name, v) in [
            ("--target-duration", self.target_duration),
            ("--interval", self.interval),
            ("--replace-ahead", self.replace_ahead),
        ] {
            if !v.is_finite() || v <= 0.0 {
                return Err(format!("{name} must be a positive number of seconds, not {v}"));
            }
        }
        if self.max_pending == 0 || self.max_failures == 0 || self.scale_down_after == 0 {
            return Err("--max-pending, --max-failures and --scale-down-after must be at least 1".into());
        }
        Ok(())
    }
}

/// Where an allocation (a batch job, or a local worker process) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllocationState {
    /// Waiting in the queue.
    Pending,
    /// Running.
    Running,
    /// Ended on its own.
    Finished,
    /// Ended in error (failed, timed out, out of memory, node failure…).
    Failed,
    /// Cancelled.
    Cancelled,
    /// The batch system no longer knows it (it ended some time ago).
    Gone,
}

impl AllocationState {
    /// Whether it can still hold or start a worker.
    pub fn is_active(self) -> bool {
        matches!(self, AllocationState::Pending | AllocationState::Running)
    }
}

impl fmt::Display for AllocationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AllocationState::Pending => "pending",
            AllocationState::Running => "running",
            AllocationState::Finished => "finished",
            AllocationState::Failed => "failed",
            AllocationState::Cancelled => "cancelled",
            AllocationState::Gone => "gone",
        })
    }
}

/// What the provisioner reports, live, in [`ClusterStatus::provisioning`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProvisioningStatus {
    /// `local`, or the batch system's name.
    pub backend: String,
    /// Its pools, the main one (`default`) first.
    pub pools: Vec<PoolStatus>,
}

/// One pool in [`ProvisioningStatus`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Its name.
    pub name: String,
    /// What one unit is: `job` (batch) or `worker` (local).
    pub unit: String,
    /// Workers per job, and slots per worker.
    pub workers_per_job: u32,
    /// Slots of each worker.
    pub slots: u32,
    /// What each of its workers offers besides slots.
    pub offer: Offer,
    /// The size asked for by `scale` (in jobs), when not adapting.
    pub target: Option<u32>,
    /// Adaptive scaling, when on.
    pub adapt: Option<AdaptState>,
    /// Its allocations that are active or ended recently.
    pub jobs: Vec<AllocationStatus>,
    /// The last error of the batch system for this pool (a refused submission, a failed poll).
    pub error: Option<String>,
}

/// Adaptive scaling of a pool, in [`PoolStatus`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaptState {
    /// The settings.
    pub spec: AdaptSpec,
    /// Jobs wanted now.
    pub target: u32,
    /// Why (the policy's own words).
    pub reason: String,
    /// Submission paused after repeated failures.
    pub paused: bool,
}

/// An allocation in [`PoolStatus`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationStatus {
    /// The batch system's job id (local backend: the worker's pid).
    pub id: String,
    /// Its launch tag, as its workers echo it.
    pub launch: String,
    /// Its last known state.
    pub state: AllocationState,
    /// Its workers connected now.
    pub workers: Vec<WorkerId>,
    /// Milliseconds since it was submitted.
    pub age_ms: u64,
    /// Why it ended early, when it ended before any worker of it joined (its stderr's tail).
    pub note: Option<String>,
}

/// Where a job's kept results are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    /// The worker.
    pub worker: WorkerId,
    /// Its data address.
    pub address: String,
    /// Indices of the tasks whose results it holds.
    pub tasks: Vec<u32>,
}

/// The outcome of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOutcome {
    /// The job.
    pub job: JobId,
    /// Number of tasks.
    pub tasks: u32,
    /// Tasks that produced a result.
    pub finished: u32,
    /// Tasks that failed, with why (exit codes included): by array index for arrays, else by task index.
    pub failed: Vec<(u32, TaskError)>,
    /// Where kept results are.
    pub holdings: Vec<Holding>,
}

/// A job's task counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// All tasks.
    pub total: u32,
    /// Waiting for inputs or a worker.
    pub waiting: u32,
    /// Assigned to a worker.
    pub running: u32,
    /// Done with a result.
    pub finished: u32,
    /// Failed.
    pub failed: u32,
}

/// One worker in [`ClusterStatus`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Its id.
    pub id: WorkerId,
    /// What it said when it registered.
    pub info: WorkerInfo,
    /// Tasks assigned to it now.
    pub assigned: u32,
    /// Results it holds.
    pub holding: u32,
    /// Whether it is retiring.
    pub retiring: bool,
    /// Milliseconds until it must be gone (its lifetime), if it has an end.
    pub ends_in_ms: Option<u64>,
    /// Milliseconds since it last had a task (0 while it has one).
    pub idle_ms: u64,
    /// Tasks it has finished (successfully) since it joined.
    pub finished: u64,
    /// Bytes of the results it holds.
    pub held_bytes: u64,
    /// What its process used at its last heartbeat.
    pub load: WorkerLoad,
}

/// The work of one kind (a function, or a command job's name) in [`ClusterStatus`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindLoad {
    /// The function's name, or `command:<job name>`.
    pub kind: String,
    /// Tasks waiting for inputs or for a worker.
    pub queued: u64,
    /// Tasks assigned to workers.
    pub running: u64,
    /// Measured mean duration in microseconds; `None` until one has finished.
    pub mean_us: Option<u64>,
    /// What these tasks need besides CPUs (the load of a kind is split by need), so that only
    /// pools whose workers could run them grow for them.
    pub needs: Needs,
}

/// One job in [`ClusterStatus`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// Its id.
    pub id: JobId,
    /// Its name.
    pub name: String,
    /// Its task counts.
    pub counts: Counts,
    /// While tasks wait for resources no worker has free: what they need and who could give it.
    pub waiting_for: Option<String>,
}

/// The cluster as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Connected workers.
    pub workers: Vec<WorkerStatus>,
    /// Known jobs.
    pub jobs: Vec<JobStatus>,
    /// Connected clients (the one asking included).
    pub clients: u32,
    /// Unfinished work by kind (only kinds with queued or running tasks).
    pub load: Vec<KindLoad>,
    /// Pools and their allocations, from the provisioner (`None` where there is none).
    pub provisioning: Option<ProvisioningStatus>,
    /// The dashboard's address (`http://host:port/`, without its token), when one is served.
    pub dashboard: Option<String>,
}

/// Replies to client requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// The job was accepted.
    Submitted(JobId),
    /// The request was refused (an unknown dependency, an empty array, a busy worker…).
    Refused(Refusal),
    /// The job ended.
    JobDone(JobOutcome),
    /// A job's counts.
    Progress(Counts),
    /// The cluster's state.
    Status(ClusterStatus),
    /// Done.
    Ok,
    /// No such job.
    NoSuchJob(JobId),
    /// A provisioning request was carried out: what was done, in words.
    Control(String),
    /// The events asked for.
    Events(EventPage),
    /// The counters asked for.
    Metrics(Box<Metrics>),
    /// The ended tasks asked for.
    Ended(EndedPage),
    /// What a [`Request::Cancel`] did.
    Cancelled(Cancelled),
}

/// What a [`Request::Cancel`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelled {
    /// Tasks that had not started and now never will (their dependents not counted).
    pub cancelled: u32,
    /// Tasks asked for that are running and will finish.
    pub running: u32,
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// What kind of refusal.
    pub kind: RefusalKind,
    /// The scheduler's (or provisioner's) own words: what is wrong and what to do.
    pub message: String,
}

impl Refusal {
    /// A refusal of `kind` saying `message`.
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Refusal {
        Refusal { kind, message: message.into() }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The kinds of [`Refusal`], so that callers branch on a kind, never on words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalKind {
    /// The request itself is wrong (an unknown dependency, an empty array, bad bounds…).
    Invalid,
    /// It names something that does not exist (a worker, a pool).
    NotFound,
    /// Not now: a worker is busy or already retiring, results have nowhere to go.
    Busy,
    /// The cluster is shutting down.
    ShuttingDown,
    /// This cluster cannot do it (no provisioner; an option the backend cannot honour).
    Unsupported,
}

/// Messages to a worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Registration accepted.
    Welcome {
        /// The worker's id.
        id: WorkerId,
        /// How often to send heartbeats, in milliseconds.
        heartbeat_ms: u64,
    },
    /// Data addresses of other workers: sent, once per peer and connection, just before the
    /// first [`ToWorker::Compute`] with an input that peer holds (a worker learns only the peers
    /// it fetches from; a later entry for the same id replaces the earlier).
    Peers(Vec<(WorkerId, String)>),
    /// The command that the tasks of a job run.
    Command(JobId, CommandSpec),
    /// Tasks to run.
    Compute(Vec<Assignment>),
    /// Results no longer needed.
    Release(Vec<TaskId>),
    /// Every result of a job is no longer needed.
    ReleaseJob(JobId),
    /// Reply to a heartbeat that asked for one.
    Ack,
    /// Send heartbeats this often from now on: the scheduler stretches the interval as workers
    /// join (see `scheduler::heartbeat_interval`) and tells a worker, in answer to a heartbeat,
    /// when the interval it keeps is notably off. Counts as word from the scheduler, as an
    /// [`ToWorker::Ack`] does.
    Pace {
        /// How often to send heartbeats, in milliseconds.
        heartbeat_ms: u64,
    },
    /// Stop now: kill running tasks and exit.
    Stop,
    /// Copy these results from a retiring worker (at `address`), keep them, and answer with
    /// [`ToScheduler::Replicated`].
    Replicate {
        /// The retiring worker.
        from: WorkerId,
        /// Its data address.
        address: String,
        /// The results to copy.
        ids: Vec<TaskId>,
    },
}

/// Messages to a client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToClient {
    /// Registration accepted.
    Welcome,
    /// A reply to a request.
    Reply {
        /// The request's `req`.
        req: u64,
        /// The answer.
        body: Reply,
    },
}

/// Requests on a worker's data connection (from peers and clients).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataRequest {
    /// Send these results; each comes back as one [`DataReply`] frame with the bytes as payload.
    Fetch(Vec<TaskId>),
}

/// Replies on a data connection: frames that together answer every requested task, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataReply {
    /// The result is the frame's payload.
    Data(TaskId),
    /// Several small results, whose bytes follow one another in the frame's payload.
    Batch(Vec<(TaskId, u32)>),
    /// This worker does not hold it.
    Missing(TaskId),
}

/// A message that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("undecodable message: {0}")]
pub struct DecodeError(#[from] postcard::Error);

/// Encodes a message into a frame header.
pub fn encode<T: Serialize>(msg: &T) -> Bytes {
    postcard::to_stdvec(msg).expect("protocol messages always encode").into()
}

/// Decodes a frame header.
pub fn decode<'a, T: Deserialize<'a>>(header: &'a [u8]) -> Result<T, DecodeError> {
    Ok(postcard::from_bytes(header)?)
}

/// Encodes a message as a frame with no payload.
pub fn frame<T: Serialize>(msg: &T) -> Frame {
    Frame::new(encode(msg))
}

/// Parses the index syntax of `--array`: inclusive ranges and single indices, comma-separated (`1-1000`, `1,5,7-9`).
pub fn parse_array(s: &str) -> Result<Vec<(u32, u32)>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("empty item in array range `{s}` (write e.g. 1-100 or 1,3,5-9)"));
        }
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let parse = |x: &str| {
            x.trim().parse::<u32>().map_err(|_| {
                format!("`{x}` in array range `{s}` is not a non-negative integer (write e.g. 1-100 or 1,3,5-9)")
            })
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a > b {
            return Err(format!("array range `{part}` runs backwards (write {b}-{a})"));
        }
        out.push((a, b));
    }
    let total: u64 = out.iter().map(|&(a, b)| u64::from(b - a) + 1).sum();
    if total > u64::from(u32::MAX) {
        return Err(format!("array `{s}` has {total} tasks, more than a job can hold ({})", u32::MAX));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn offers_round_trip_through_their_text(
            gpus in proptest::collection::vec("[0-9a-zA-Z-]{1,12}", 0..8),
            memory in proptest::option::of(1u64..u64::MAX),
            named in proptest::collection::btree_map("[a-z][a-z0-9_.-]{0,10}", 0u32..u32::MAX, 0..5),
        ) {
            let named: Vec<(String, u32)> =
                named.into_iter().filter(|(k, _)| k != "gpus" && k != "memory" && k != "pool").collect();
            let offer = Offer { gpus, memory: memory.unwrap_or(0), named, pool: Some("gpu-a100".into()) };
            proptest::prop_assert_eq!(Offer::from_text(&offer.to_text()).unwrap(), offer);
        }

        #[test]
        fn offer_text_never_panics(s in ".*") {
            let _ = Offer::from_text(&s);
        }
    }

    #[test]
    fn bad_offer_text_says_which_item() {
        assert!(Offer::from_text("license").unwrap_err().contains("`license`"));
        assert!(Offer::from_text("license=x").unwrap_err().contains("not a whole number"));
        assert!(Offer::from_text("a=1,a=2").unwrap_err().contains("twice"));
        assert!(Offer::from_text("9x=1").unwrap_err().contains("resource name"));
        assert_eq!(Offer::from_text("").unwrap(), Offer::default());
    }

    #[test]
    fn messages_round_trip() {
        let msg = ToScheduler::Request {
            req: 7,
            body: Request::Submit(Box::new(JobSpec {
                name: "j".into(),
                functions: vec!["inc".into()],
                command: None,
                tasks: JobTasks::Graph(vec![TaskSpec {
                    body: TaskBody::Function { func: 0, args: Bytes::from_static(&[1, 2, 3]) },
                    deps: vec![TaskRef::Local(0), TaskRef::Global(TaskId { job: JobId(3), index: 9 })],
                    keep: true,
                    cpus: 1,
                    needs: Needs {
                        gpus: 2,
                        memory: 4_000_000_000,
                        named: vec![("license".into(), 1)],
                        pool: Some("gpu".into()),
                    },
                }]),
                max_attempts: 3,
                release_on_disconnect: true,
            })),
        };
        let back: ToScheduler = decode(&encode(&msg)).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn array_ranges() {
        assert_eq!(parse_array("1-1000").unwrap(), vec![(1, 1000)]);
        assert_eq!(parse_array("1,3,5-9").unwrap(), vec![(1, 1), (3, 3), (5, 9)]);
        assert!(parse_array("9-1").unwrap_err().contains("backwards"));
        assert!(parse_array("a-3").unwrap_err().contains("not a non-negative integer"));
        assert!(parse_array("1,,2").unwrap_err().contains("empty item"));
        assert!(parse_array("-1").is_err());
        assert!(parse_array("0-4294967295,0-1").unwrap_err().contains("more than a job"));
    }

    proptest::proptest! {
        #[test]
        fn array_parser_never_panics(s in ".*") {
            let _ = parse_array(&s);
        }

        #[test]
        fn array_parser_accepts_what_it_prints(a in 0u32..100_000, n in 0u32..1000) {
            proptest::prop_assert_eq!(parse_array(&format!("{a}-{}", a + n)).unwrap(), vec![(a, a + n)]);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode::<ToScheduler>(&bytes);
            let _ = decode::<ToWorker>(&bytes);
        }
    }
}
