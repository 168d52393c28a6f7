//! The scheduler as a sans-IO state machine.
//!
//! [`Scheduler`] owns the cluster's state (workers, jobs, tasks) and decides
//! where every task runs. It performs no I/O and never reads the clock: the
//! driver ([`crate::server`]) feeds it [`Event`]s together with the current
//! time and carries out the [`Command`]s it emits. Tests drive it the same way
//! with a simulated clock (see `tests.rs`).
//!
//! Calling contract:
//! 1. Call [`Scheduler::handle`] for every event, in the order they happened.
//! 2. After each call, drain [`Scheduler::take_commands`] and execute them in order.
//! 3. Call `handle(now, Event::Tick)` no later than [`Scheduler::next_deadline`].
//!
//! Invariants kept here:
//! - a task is `Assigned` to exactly one live worker, whose `used` counts its CPUs;
//! - a `Finished` task's result is on `worker` unless that is `None` (released or lost);
//! - `unfinished` of a `Waiting` task counts its inputs that are not available;
//! - a result that a task still needs is never released, and a lost one is recomputed;
//! - a retiring worker gets no new task; it is told to stop only once idle and after the
//!   results that only it holds and that are still wanted have been offered to another worker;
//! - a worker with a lifetime gets only tasks expected (from the measured durations of their
//!   kind) to end before it must leave, and retires when its lifetime is up.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::protocol::{
    Assignment, ClientInfo, ClusterStatus, ControlRequest, Counts, ErrorKind, Finished, Holding, JobId, JobOutcome,
    JobSpec, JobStatus, JobTasks, KindLoad, Needs, ProvisioningStatus, Refusal, RefusalKind, Reply, Request, TaskBody,
    TaskError, TaskId, TaskRef, ToClient, ToScheduler, ToWorker, Work, WorkerId, WorkerInfo, WorkerStatus,
};

#[cfg(test)]
mod tests;

/// Identifies a connection of the driver.
pub type ConnId = u64;

/// Timing and capacity settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// How often workers send heartbeats.
    pub heartbeat_interval: Duration,
    /// A worker silent for this long is considered dead.
    pub heartbeat_timeout: Duration,
    /// The expected duration of a task of a kind that has never finished.
    pub default_duration: Duration,
    /// Whether an embedding (a provisioner) takes the [`Notice`]s and answers
    /// [`Request::Control`]; without one, those requests are refused.
    pub controlled: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(10),
            default_duration: Duration::from_millis(500),
            controlled: false,
        }
    }
}

/// Something that happened, as the driver reports it.
#[derive(Debug)]
pub enum Event {
    /// A connection passed authentication.
    Connected(ConnId),
    /// A message arrived.
    Message(ConnId, ToScheduler),
    /// A connection closed or broke; `reason` is for the logs and error messages.
    Disconnected(ConnId, String),
    /// Time passed.
    Tick,
    /// The embedding (the provisioner of the scheduler process) asks something.
    Control(Control),
}

/// What the scheduler's embedding asks of it: the provisioner of `rdask-jobqueue`'s scheduler
/// process, or the rank-0 driver of `srun … run` and `mpirun … mpi`.
#[derive(Debug)]
pub enum Control {
    /// Answer a client's [`Request::Control`] (from [`Notice::Request`]).
    Reply {
        /// The client.
        conn: ConnId,
        /// Its request.
        req: u64,
        /// The answer.
        reply: Reply,
    },
    /// Retire these workers, all or none, as [`Request::Retire`] does; answered with
    /// [`Notice::Retired`] of the same `token`.
    Retire {
        /// Chosen by the embedding to match the answer.
        token: u64,
        /// The workers.
        workers: Vec<WorkerId>,
    },
    /// Send a [`Notice::Observed`]: the cluster's state now.
    Observe,
    /// What status replies carry as [`ClusterStatus::provisioning`] from now on.
    Provisioning(ProvisioningStatus),
    /// Stop the workers and exit, as [`Request::Shutdown`] does.
    Shutdown,
}

/// What the scheduler tells its embedding ([`Command::Notify`]). Only emitted with
/// [`Config::controlled`].
#[derive(Debug, PartialEq)]
pub enum Notice {
    /// A worker registered, echoing the launch tag it was started with.
    WorkerJoined {
        /// Its id.
        worker: WorkerId,
        /// Its launch tag.
        launch: Option<String>,
    },
    /// A worker is gone (it stopped, retired, broke its connection or went silent).
    WorkerLeft {
        /// Its id.
        worker: WorkerId,
        /// Its launch tag.
        launch: Option<String>,
        /// Why, for the logs.
        reason: String,
    },
    /// A client registered.
    ClientJoined {
        /// Its connection.
        conn: ConnId,
        /// What it said about itself.
        info: ClientInfo,
    },
    /// A client's connection closed without a [`Request::Shutdown`].
    ClientLeft {
        /// Its connection.
        conn: ConnId,
        /// What it said about itself when it registered.
        info: ClientInfo,
    },
    /// A client's provisioning request, to be answered with [`Control::Reply`].
    Request {
        /// The client.
        conn: ConnId,
        /// Its request number.
        req: u64,
        /// The request.
        body: ControlRequest,
    },
    /// The answer to [`Control::Retire`].
    Retired {
        /// The token of the request.
        token: u64,
        /// Whether the workers are retiring, or why not.
        result: Result<(), Refusal>,
    },
    /// The answer to [`Control::Observe`].
    Observed(Box<ClusterStatus>),
}

/// Something the driver must do.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// Send a message to a worker.
    ToWorker(ConnId, ToWorker),
    /// Send a message to a client.
    ToClient(ConnId, ToClient),
    /// Close a connection.
    Close(ConnId),
    /// Stop serving: everything has been told to stop.
    Exit,
    /// Tell the embedding (only with [`Config::controlled`]).
    Notify(Notice),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Waiting,
    Ready,
    Assigned,
    Finished,
    Failed,
}

#[derive(Debug)]
struct Task {
    state: State,
    attempts: u8,
    keep: bool,
    cpus: u16,
    /// What else it needs: an index into `Scheduler::needs` (0: nothing).
    needs: u32,
    /// Inputs not yet available, while `Waiting`.
    unfinished: u32,
    /// While `Assigned`: where it runs. While `Finished`: where its result is.
    worker: Option<WorkerId>,
    size: u64,
    body: TaskBody,
    deps: Box<[TaskId]>,
    dependents: Vec<TaskId>,
}

#[derive(Debug)]
struct Job {
    spec_name: String,
    functions: Vec<String>,
    command: Option<crate::protocol::CommandSpec>,
    array: Option<Vec<(u32, u32)>>,
    tasks: Vec<Task>,
    counts: Counts,
    errors: Vec<(u32, TaskError)>,
    max_attempts: u8,
    owner: ConnId,
    release_on_disconnect: bool,
    release_when_done: bool,
    waiters: Vec<(ConnId, u64)>,
    /// Other jobs whose tasks depend on this one's.
    referenced_by: Vec<JobId>,
    /// Jobs this one depends on.
    references: Vec<JobId>,
    /// The kind (index into `Scheduler::kinds`) of each function the job names, and of its command.
    func_kinds: Vec<u32>,
    command_kind: u32,
    /// The needs of all its tasks, when they all need the same (an array's always do).
    uniform_needs: Option<u32>,
}

impl Job {
    fn done(&self) -> bool {
        self.counts.finished + self.counts.failed == self.counts.total
    }

    /// The array index of task `index`, for command arrays.
    fn array_id(&self, index: u32) -> u32 {
        let mut i = index;
        for &(a, b) in self.array.as_deref().unwrap_or(&[]) {
            let n = b - a + 1;
            if i < n {
                return a + i;
            }
            i -= n;
        }
        index
    }
}

#[derive(Debug)]
struct Worker {
    conn: ConnId,
    info: WorkerInfo,
    /// CPUs of assigned tasks (running or queued on the worker).
    used: u32,
    assigned: u32,
    holding: u32,
    last_seen: Instant,
    retiring: bool,
    /// Jobs whose command this worker has been sent.
    commands: Vec<JobId>,
    /// When it must be gone (from its lifetime).
    ends_at: Option<Instant>,
    /// Since when it has had no task (`None` while it has one).
    idle_since: Option<Instant>,
    /// While retiring: the worker taking over its results, until it says it has them.
    handover: Option<WorkerId>,
    /// While retiring: its results have been offered to another worker (once is enough).
    handed_over: bool,
    /// It has been told to stop.
    stop_sent: bool,
    /// What its assigned tasks hold of its offer.
    held: Held,
}

/// What a worker's assigned tasks hold of its [`crate::protocol::Offer`].
#[derive(Debug, Default)]
struct Held {
    /// Per GPU of the offer, whether a task holds it.
    gpus: Vec<bool>,
    memory: u64,
    /// Per named resource of the offer, in its order.
    named: Vec<u32>,
}

impl Worker {
    fn slots(&self) -> u32 {
        u32::from(self.info.slots).max(1)
    }

    /// The CPUs a task occupies on this worker: one wider than the worker takes all of it.
    fn charge(&self, cpus: u32) -> u32 {
        cpus.min(self.slots())
    }

    /// Whether `needs` is free on this worker now.
    fn has_free(&self, needs: &Needs) -> bool {
        let offer = &self.info.offer;
        let free_gpus = self.held.gpus.iter().filter(|h| !**h).count();
        usize::from(needs.gpus) <= free_gpus
            && needs.pool.as_ref().is_none_or(|p| offer.pool.as_ref() == Some(p))
            && (needs.memory == 0 || self.held.memory + needs.memory <= offer.memory)
            && needs.named.iter().all(|(name, n)| {
                offer
                    .named
                    .iter()
                    .position(|(k, _)| k == name)
                    .is_some_and(|i| self.held.named[i] + n <= offer.named[i].1)
            })
    }

    /// Takes `needs` (free, see [`Worker::has_free`]); returns the GPUs bound, as indices of its offer.
    fn take(&mut self, needs: &Needs) -> Vec<u16> {
        let mut bound = Vec::with_capacity(usize::from(needs.gpus));
        for (i, held) in self.held.gpus.iter_mut().enumerate() {
            if bound.len() == usize::from(needs.gpus) {
                break;
            }
            if !*held {
                *held = true;
                bound.push(i as u16);
            }
        }
        self.held.memory += needs.memory;
        for (name, n) in &needs.named {
            if let Some(i) = self.info.offer.named.iter().position(|(k, _)| k == name) {
                self.held.named[i] += n;
            }
        }
        bound
    }

    /// Gives back what a task took.
    fn give(&mut self, needs: &Needs, gpus: &[u16]) {
        for g in gpus {
            if let Some(h) = self.held.gpus.get_mut(usize::from(*g)) {
                *h = false;
            }
        }
        self.held.memory = self.held.memory.saturating_sub(needs.memory);
        for (name, n) in &needs.named {
            if let Some(i) = self.info.offer.named.iter().position(|(k, _)| k == name) {
                self.held.named[i] = self.held.named[i].saturating_sub(*n);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Peer {
    Unknown,
    Worker(WorkerId),
    Client(ClientInfo),
}

/// The scheduler's state. See the module documentation for how to drive it.
#[derive(Debug)]
pub struct Scheduler {
    config: Config,
    conns: HashMap<ConnId, Peer>,
    workers: HashMap<WorkerId, Worker>,
    jobs: HashMap<JobId, Job>,
    ready: VecDeque<TaskId>,
    next_worker: u32,
    next_job: u32,
    /// Mean task duration, exponentially weighted, in microseconds.
    mean_duration_us: f64,
    commands: Vec<Command>,
    /// Results to release, sent in one message per worker at the end of `handle`.
    releases: HashMap<WorkerId, Vec<TaskId>>,
    shutting_down: bool,
    /// The time of the event being handled.
    now: Option<Instant>,
    /// Measured durations per kind of task (a function, or a command job's name).
    kinds: Vec<KindStats>,
    kind_index: HashMap<String, u32>,
    /// Retiring workers not yet told to stop.
    retiring: usize,
    /// What the provisioner last reported.
    provisioning: Option<ProvisioningStatus>,
    /// The distinct [`Needs`] of tasks, interned; index 0 needs nothing.
    needs: Vec<Needs>,
    needs_index: HashMap<Needs, u32>,
    /// The GPUs (indices of its worker's offer) held by each assigned task that needs any.
    bound: HashMap<TaskId, Vec<u16>>,
}

#[derive(Debug)]
struct KindStats {
    name: String,
    /// Mean duration in microseconds, exponentially weighted; `None` until one finished.
    mean_us: Option<f64>,
}

/// No kind (a job without a command).
const NO_KIND: u32 = u32::MAX;

/// Per-worker queue depth (in CPUs per slot) for short tasks and for the rest.
const DEPTH_SHORT: u32 = 512;
const DEPTH_LONG: u32 = 2;
/// Tasks shorter than this on average are "short": queueing many of them hides round trips.
const SHORT_TASK_US: f64 = 2_000.0;

impl Scheduler {
    /// An empty cluster.
    pub fn new(config: Config) -> Scheduler {
        Scheduler {
            config,
            conns: HashMap::new(),
            workers: HashMap::new(),
            jobs: HashMap::new(),
            ready: VecDeque::new(),
            next_worker: 1,
            next_job: 1,
            mean_duration_us: SHORT_TASK_US * 10.0,
            commands: Vec::new(),
            releases: HashMap::new(),
            shutting_down: false,
            now: None,
            kinds: Vec::new(),
            kind_index: HashMap::new(),
            retiring: 0,
            provisioning: None,
            needs: vec![Needs::default()],
            needs_index: HashMap::from([(Needs::default(), 0)]),
            bound: HashMap::new(),
        }
    }

    /// The commands emitted so far, in order; the driver must execute them.
    #[must_use]
    pub fn take_commands(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.commands)
    }

    /// When the driver must deliver the next [`Event::Tick`] at the latest.
    pub fn next_deadline(&self) -> Option<Instant> {
        let heartbeats = self.workers.values().map(|w| w.last_seen + self.config.heartbeat_timeout);
        let lifetimes = self.workers.values().filter(|w| !w.retiring).filter_map(|w| w.ends_at);
        heartbeats.chain(lifetimes).min()
    }

    /// Number of connected workers.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Approximate number of tasks the scheduler holds, over all jobs.
    pub fn task_count(&self) -> usize {
        self.jobs.values().map(|j| j.tasks.len()).sum()
    }

    /// Processes one event.
    pub fn handle(&mut self, now: Instant, event: Event) {
        self.now = Some(now);
        match event {
            Event::Connected(c) => {
                self.conns.insert(c, Peer::Unknown);
            }
            Event::Message(c, msg) => self.on_message(now, c, msg),
            Event::Disconnected(c, reason) => self.on_disconnect(c, &reason),
            Event::Tick => self.on_tick(now),
            Event::Control(c) => self.on_control(c),
        }
        self.schedule();
        if self.retiring > 0 {
            self.progress_retirements();
        }
        let mut releases: Vec<_> = self.releases.drain().collect();
        releases.sort_by_key(|(w, _)| *w);
        for (w, ids) in releases {
            if let Some(worker) = self.workers.get(&w) {
                self.commands.push(Command::ToWorker(worker.conn, ToWorker::Release(ids)));
            }
        }
    }

    fn on_control(&mut self, c: Control) {
        match c {
            Control::Reply { conn, req, reply } => {
                if matches!(self.conns.get(&conn), Some(Peer::Client(_))) {
                    self.commands.push(Command::ToClient(conn, ToClient::Reply { req, body: reply }));
                }
            }
            Control::Retire { token, workers } => {
                let result = self.check_retire(&workers);
                if result.is_ok() {
                    for w in workers {
                        self.retire(w, "the cluster is scaling down");
                    }
                }
                self.notify(Notice::Retired { token, result });
            }
            Control::Observe => {
                let status = self.status();
                self.notify(Notice::Observed(Box::new(status)));
            }
            Control::Provisioning(p) => self.provisioning = Some(p),
            Control::Shutdown => self.shutdown(None),
        }
    }

    fn notify(&mut self, n: Notice) {
        if self.config.controlled {
            self.commands.push(Command::Notify(n));
        }
    }

    /// Stops every worker, answers the client that asked (if one did), and exits.
    fn shutdown(&mut self, asked_by: Option<(ConnId, u64)>) {
        self.shutting_down = true;
        for w in self.workers.values() {
            self.commands.push(Command::ToWorker(w.conn, ToWorker::Stop));
        }
        if let Some((conn, req)) = asked_by {
            self.commands.push(Command::ToClient(conn, ToClient::Reply { req, body: Reply::Ok }));
        }
        self.commands.push(Command::Exit);
    }

    fn on_message(&mut self, now: Instant, conn: ConnId, msg: ToScheduler) {
        let peer = self.conns.get(&conn).cloned();
        if let Some(Peer::Worker(w)) = peer {
            if let Some(worker) = self.workers.get_mut(&w) {
                worker.last_seen = now;
            }
        }
        match (peer, msg) {
            (None, _) => {}
            (Some(Peer::Unknown), ToScheduler::RegisterWorker(info)) => self.on_register_worker(now, conn, info),
            (Some(Peer::Unknown), ToScheduler::RegisterClient(info)) => {
                self.conns.insert(conn, Peer::Client(info.clone()));
                self.commands.push(Command::ToClient(conn, ToClient::Welcome));
                self.notify(Notice::ClientJoined { conn, info });
            }
            (Some(Peer::Worker(w)), ToScheduler::Heartbeat) => {
                if let Some(worker) = self.workers.get(&w) {
                    self.commands.push(Command::ToWorker(worker.conn, ToWorker::Ack));
                }
            }
            (Some(Peer::Worker(w)), ToScheduler::Finished(list)) => self.on_finished(w, list),
            (Some(Peer::Worker(w)), ToScheduler::Failed(id, err)) => self.on_failed(w, id, err),
            (Some(Peer::Worker(w)), ToScheduler::InputMissing(task, input)) => self.on_input_missing(w, task, input),
            (Some(Peer::Worker(w)), ToScheduler::Retire) => self.retire(w, "it asked to"),
            (Some(Peer::Worker(w)), ToScheduler::Replicated { from, ids }) => self.on_replicated(w, from, &ids),
            (Some(Peer::Client(_)), ToScheduler::Request { req, body }) => self.on_request(conn, req, body),
            (Some(p), other) => {
                let what = discriminant_name(&other);
                tracing::warn!(conn, ?p, "unexpected message {what}; closing the connection");
                self.commands.push(Command::Close(conn));
                // The driver reports no disconnection for a connection it was told to close.
                self.on_disconnect(conn, &format!("sent an unexpected {what} message"));
            }
        }
    }

    fn on_register_worker(&mut self, now: Instant, conn: ConnId, info: WorkerInfo) {
        let id = WorkerId(self.next_worker);
        self.next_worker += 1;
        tracing::info!(worker = %id, host = %info.host, pid = info.pid, launch = ?info.launch, slots = info.slots, "worker registered");
        self.notify(Notice::WorkerJoined { worker: id, launch: info.launch.clone() });
        let peers: Vec<_> = self.workers.iter().map(|(id, w)| (*id, w.info.data_address.clone())).collect();
        for w in self.workers.values() {
            self.commands.push(Command::ToWorker(w.conn, ToWorker::Peers(vec![(id, info.data_address.clone())])));
        }
        self.conns.insert(conn, Peer::Worker(id));
        let ends_at = info.lifetime_ms.map(|ms| now + Duration::from_millis(ms));
        let held = Held { gpus: vec![false; info.offer.gpus.len()], memory: 0, named: vec![0; info.offer.named.len()] };
        let heartbeat_ms = self.config.heartbeat_interval.as_millis() as u64;
        self.commands.push(Command::ToWorker(conn, ToWorker::Welcome { id, heartbeat_ms }));
        if !peers.is_empty() {
            self.commands.push(Command::ToWorker(conn, ToWorker::Peers(peers)));
        }
        self.workers.insert(
            id,
            Worker {
                conn,
                info,
                used: 0,
                assigned: 0,
                holding: 0,
                last_seen: now,
                retiring: false,
                commands: Vec::new(),
                ends_at,
                idle_since: Some(now),
                handover: None,
                handed_over: false,
                stop_sent: false,
                held,
            },
        );
    }

    fn on_finished(&mut self, w: WorkerId, list: Vec<Finished>) {
        let mut stale = Vec::new();
        let mut done_jobs = Vec::new();
        for f in list {
            let Some(task) = self.task_mut(f.id) else {
                stale.push(f.id);
                continue;
            };
            if task.state != State::Assigned || task.worker != Some(w) {
                stale.push(f.id);
                continue;
            }
            let cpus = u32::from(task.cpus);
            task.size = f.size;
            // A command task leaves no result behind: nothing to hold.
            let holds = !matches!(task.body, TaskBody::Command);
            if !holds {
                task.worker = None;
            }
            self.mean_duration_us = 0.99 * self.mean_duration_us + 0.01 * f64::from(f.duration_us);
            let kind = self.kind_of(f.id);
            if let Some(k) = self.kinds.get_mut(kind as usize) {
                let d = f64::from(f.duration_us);
                k.mean_us = Some(k.mean_us.map_or(d, |m| 0.9 * m + 0.1 * d));
            }
            self.set_state(f.id, State::Finished);
            self.unbind(f.id, w);
            let now = self.now;
            if let Some(worker) = self.workers.get_mut(&w) {
                worker.used -= worker.charge(cpus);
                worker.assigned -= 1;
                worker.holding += u32::from(holds);
                if worker.assigned == 0 {
                    worker.idle_since = now;
                }
            }
            self.after_finish(f.id);
            if self.jobs[&f.id.job].done() {
                done_jobs.push(f.id.job);
            }
        }
        if !stale.is_empty() {
            if let Some(worker) = self.workers.get(&w) {
                self.commands.push(Command::ToWorker(worker.conn, ToWorker::Release(stale)));
            }
        }
        done_jobs.dedup();
        for j in done_jobs {
            self.on_job_done(j);
        }
    }

    /// A task just finished: wake its dependents, release inputs nobody needs any more.
    fn after_finish(&mut self, id: TaskId) {
        let (dependents, deps) = {
            let t = self.task(id).expect("finished task exists");
            (t.dependents.clone(), t.deps.clone())
        };
        for d in dependents {
            if let Some(dt) = self.task_mut(d) {
                if dt.state == State::Waiting {
                    dt.unfinished -= 1;
                    if dt.unfinished == 0 {
                        self.set_state(d, State::Ready);
                        self.ready.push_front(d);
                    }
                }
            }
        }
        for dep in deps.iter() {
            self.maybe_release(*dep);
        }
        self.maybe_release(id);
    }

    /// Releases a finished task's result when no one needs it.
    fn maybe_release(&mut self, id: TaskId) {
        let Some(t) = self.task(id) else { return };
        if t.state != State::Finished || t.keep || t.worker.is_none() {
            return;
        }
        if self.needed_by_dependents(t) {
            return;
        }
        let holder = t.worker;
        self.task_mut(id).expect("exists").worker = None;
        if let Some(h) = holder {
            if let Some(worker) = self.workers.get_mut(&h) {
                worker.holding -= 1;
                self.releases.entry(h).or_default().push(id);
            }
        }
    }

    fn on_failed(&mut self, w: WorkerId, id: TaskId, err: TaskError) {
        let Some(task) = self.task(id) else { return };
        if task.state != State::Assigned || task.worker != Some(w) {
            return;
        }
        tracing::debug!(task = %id, worker = %w, error = %err, "task failed");
        self.fail(id, err);
    }

    /// Fails a task and, transitively, every task that depends on it.
    fn fail(&mut self, id: TaskId, err: TaskError) {
        let mut stack = vec![(id, err)];
        let mut done_jobs = Vec::new();
        while let Some((t, err)) = stack.pop() {
            let Some(task) = self.task(t) else { continue };
            if matches!(task.state, State::Failed | State::Finished) {
                continue;
            }
            if task.state == State::Assigned {
                // The task's worker is told nothing: it reported the failure, or it is gone.
                let (holder, cpus) = (task.worker, u32::from(task.cpus));
                if let Some(w) = holder {
                    self.unbind(t, w);
                }
                let now = self.now;
                if let Some(w) = holder.and_then(|w| self.workers.get_mut(&w)) {
                    w.used -= w.charge(cpus);
                    w.assigned -= 1;
                    if w.assigned == 0 {
                        w.idle_since = now;
                    }
                }
            }
            let task = self.task_mut(t).expect("exists");
            task.worker = None;
            let dependents = task.dependents.clone();
            let deps = task.deps.clone();
            self.set_state(t, State::Failed);
            // Its inputs may be needed by nobody now.
            for dep in deps.iter() {
                self.maybe_release(*dep);
            }
            let job = self.jobs.get_mut(&t.job).expect("task's job exists");
            job.errors.push((t.index, err.clone()));
            if job.done() {
                done_jobs.push(t.job);
            }
            for d in dependents {
                let message = err.message.clone();
                stack.push((d, TaskError { kind: ErrorKind::DependencyFailed(t), message }));
            }
        }
        done_jobs.sort();
        done_jobs.dedup();
        for j in done_jobs {
            self.on_job_done(j);
        }
    }

    fn on_input_missing(&mut self, w: WorkerId, id: TaskId, input: TaskId) {
        let Some(task) = self.task(id) else { return };
        if task.state != State::Assigned || task.worker != Some(w) {
            return;
        }
        tracing::info!(task = %id, input = %input, worker = %w, "input missing; recomputing it");
        let cpus = u32::from(task.cpus);
        self.unbind(id, w);
        let now = self.now;
        if let Some(worker) = self.workers.get_mut(&w) {
            worker.used -= worker.charge(cpus);
            worker.assigned -= 1;
            if worker.assigned == 0 {
                worker.idle_since = now;
            }
        }
        self.task_mut(id).expect("exists").worker = None;
        self.set_state(id, State::Waiting);
        self.lose_results(&[input]);
        self.refresh(id);
    }

    fn on_disconnect(&mut self, conn: ConnId, reason: &str) {
        match self.conns.remove(&conn) {
            Some(Peer::Worker(w)) => self.worker_lost(w, reason),
            Some(Peer::Client(info)) => {
                if !self.shutting_down {
                    self.notify(Notice::ClientLeft { conn, info });
                }
                let owned: Vec<JobId> = self
                    .jobs
                    .iter()
                    .filter(|(_, j)| j.owner == conn && j.release_on_disconnect)
                    .map(|(id, _)| *id)
                    .collect();
                for j in owned {
                    self.request_release(j);
                }
            }
            _ => {}
        }
    }

    fn on_tick(&mut self, now: Instant) {
        let timeout = self.config.heartbeat_timeout;
        let dead: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| now.duration_since(w.last_seen) >= timeout)
            .map(|(id, _)| *id)
            .collect();
        for w in dead {
            let conn = self.workers[&w].conn;
            self.conns.remove(&conn);
            self.commands.push(Command::Close(conn));
            self.worker_lost(w, &format!("no heartbeat for {} s", timeout.as_secs_f64()));
        }
        let mut expired: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| !w.retiring && w.ends_at.is_some_and(|e| e <= now))
            .map(|(id, _)| *id)
            .collect();
        expired.sort();
        for w in expired {
            self.retire(w, "its lifetime (its batch job's walltime) is up");
        }
    }

    /// A worker is gone: re-run what it was running, recompute what only it held.
    fn worker_lost(&mut self, w: WorkerId, reason: &str) {
        let Some(worker) = self.workers.remove(&w) else { return };
        self.notify(Notice::WorkerLeft { worker: w, launch: worker.info.launch.clone(), reason: reason.to_string() });
        if worker.retiring && !worker.stop_sent {
            self.retiring -= 1;
        }
        // Retiring workers handing their results to this one must find another.
        for other in self.workers.values_mut() {
            if other.handover == Some(w) {
                other.handover = None;
            }
        }
        let who = format!("{w} (pid {} on {}) {reason}", worker.info.pid, worker.info.host);
        if self.shutting_down {
            tracing::info!("worker {who}");
        } else {
            tracing::warn!("worker {who}");
        }
        let mut rerun = Vec::new();
        let mut lost = Vec::new();
        for (jid, job) in &self.jobs {
            for (i, t) in job.tasks.iter().enumerate() {
                if t.worker != Some(w) {
                    continue;
                }
                let id = TaskId { job: *jid, index: i as u32 };
                match t.state {
                    State::Assigned => rerun.push(id),
                    State::Finished => lost.push(id),
                    _ => {}
                }
            }
        }
        for id in rerun {
            // What it held went with the worker.
            self.bound.remove(&id);
            let max = self.jobs[&id.job].max_attempts;
            let t = self.task_mut(id).expect("exists");
            t.attempts = t.attempts.saturating_add(1);
            t.worker = None;
            if t.attempts >= max {
                let n = t.attempts;
                self.set_state(id, State::Waiting);
                let message = format!("the worker running it died {n} times; last: {who}");
                self.fail(id, TaskError { kind: ErrorKind::WorkerLost, message });
            } else {
                self.set_state(id, State::Waiting);
                self.refresh(id);
            }
        }
        // Failures above may have ended and released jobs: their tasks are gone, and so is the need.
        lost.retain(|id| self.task(*id).is_some());
        for id in &lost {
            self.task_mut(*id).expect("kept above").worker = None;
        }
        self.lose_results(&lost);
    }

    /// Results that are gone (their holder died or lost them): recompute those still needed.
    fn lose_results(&mut self, ids: &[TaskId]) {
        let mut needed = Vec::new();
        for &id in ids {
            let Some(t) = self.task_mut(id) else { continue };
            if t.state != State::Finished {
                continue;
            }
            if let Some(h) = t.worker.take() {
                if let Some(w) = self.workers.get_mut(&h) {
                    w.holding -= 1;
                }
            }
            if self.wanted(id) {
                needed.push(id);
            }
        }
        for id in needed {
            self.recompute(id);
        }
    }

    /// Brings a finished task whose result is gone back to `Waiting`, with what it needs.
    fn recompute(&mut self, id: TaskId) {
        if self.available(id) || self.task(id).is_none_or(|t| t.state != State::Finished) {
            return;
        }
        self.set_state(id, State::Waiting);
        let (deps, dependents) = {
            let t = self.task(id).expect("exists");
            (t.deps.clone(), t.dependents.clone())
        };
        for dep in deps.iter() {
            // An input released earlier must be computed again too.
            self.recompute(*dep);
        }
        self.refresh(id);
        for d in dependents {
            if matches!(self.task(d).map(|t| t.state), Some(State::Waiting | State::Ready)) {
                self.refresh(d);
            }
        }
    }

    /// Recounts a waiting or ready task's missing inputs and queues it when none are.
    fn refresh(&mut self, id: TaskId) {
        let deps = self.task(id).expect("exists").deps.clone();
        let missing = deps.iter().filter(|d| !self.available(**d)).count() as u32;
        let t = self.task_mut(id).expect("exists");
        t.unfinished = missing;
        match (t.state, missing) {
            (State::Waiting, 0) => {
                self.set_state(id, State::Ready);
                self.ready.push_back(id);
            }
            (State::Ready, m) if m > 0 => self.set_state(id, State::Waiting),
            _ => {}
        }
    }

    /// Whether a finished task's result is still wanted: kept for a client, or an input of a task to run.
    fn wanted(&self, id: TaskId) -> bool {
        let Some(t) = self.task(id) else { return false };
        t.keep && !self.jobs[&id.job].release_when_done || self.needed_by_dependents(t)
    }

    /// Starts retiring worker `w`: it gets no new task and is stopped once idle and its results
    /// are handed over (see `progress_retirements`).
    fn retire(&mut self, w: WorkerId, why: &str) {
        let Some(worker) = self.workers.get_mut(&w) else { return };
        if worker.retiring {
            return;
        }
        tracing::info!(worker = %w, "retiring: {why}");
        worker.retiring = true;
        self.retiring += 1;
    }

    /// Moves idle retiring workers on: hands their wanted results to another worker, then stops them.
    fn progress_retirements(&mut self) {
        let mut idle: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| w.retiring && !w.stop_sent && w.assigned == 0 && w.handover.is_none())
            .map(|(id, _)| *id)
            .collect();
        idle.sort();
        for w in idle {
            let ids = if self.workers[&w].handed_over { Vec::new() } else { self.wanted_on(w) };
            let target = self
                .workers
                .iter()
                .filter(|(id, o)| **id != w && !o.retiring)
                .min_by_key(|(id, o)| (o.holding, **id))
                .map(|(id, o)| (*id, o.conn));
            match (ids.is_empty(), target) {
                (false, Some((t, conn))) => {
                    tracing::info!(worker = %w, to = %t, results = ids.len(), "handing results over before retiring");
                    let address = self.workers[&w].info.data_address.clone();
                    self.commands.push(Command::ToWorker(conn, ToWorker::Replicate { from: w, address, ids }));
                    let worker = self.workers.get_mut(&w).expect("listed above");
                    worker.handover = Some(t);
                }
                (empty, _) => {
                    if !empty {
                        tracing::warn!(
                            worker = %w,
                            results = ids.len(),
                            "no other worker to take the results of a retiring worker: they will be recomputed if needed"
                        );
                    }
                    let worker = self.workers.get_mut(&w).expect("listed above");
                    worker.stop_sent = true;
                    self.retiring -= 1;
                    self.commands.push(Command::ToWorker(worker.conn, ToWorker::Stop));
                }
            }
        }
    }

    /// The finished results held by `w` that are still wanted.
    fn wanted_on(&self, w: WorkerId) -> Vec<TaskId> {
        let mut ids = Vec::new();
        for (jid, job) in &self.jobs {
            for (i, t) in job.tasks.iter().enumerate() {
                let id = TaskId { job: *jid, index: i as u32 };
                if t.state == State::Finished && t.worker == Some(w) && self.wanted(id) {
                    ids.push(id);
                }
            }
        }
        ids.sort();
        ids
    }

    /// Worker `to` copied results of retiring worker `from`: they are held by `to` from now on.
    fn on_replicated(&mut self, to: WorkerId, from: WorkerId, ids: &[TaskId]) {
        if self.workers.get(&from).is_none_or(|w| w.handover != Some(to)) {
            // A late answer (the retiring worker is gone): `to` holds copies nobody tracks.
            if let Some(worker) = self.workers.get(&to) {
                self.commands.push(Command::ToWorker(worker.conn, ToWorker::Release(ids.to_vec())));
            }
            return;
        }
        let mut moved = 0u32;
        for &id in ids {
            let Some(t) = self.task_mut(id) else { continue };
            if t.state == State::Finished && t.worker == Some(from) {
                t.worker = Some(to);
                moved += 1;
            }
        }
        let f = self.workers.get_mut(&from).expect("checked above");
        f.holding -= moved;
        f.handover = None;
        f.handed_over = true;
        self.workers.get_mut(&to).expect("a worker's message").holding += moved;
        tracing::info!(worker = %from, to = %to, results = moved, "results handed over");
    }

    /// The kind of a task: its function's, or its job's command's.
    fn kind_of(&self, id: TaskId) -> u32 {
        let Some(job) = self.jobs.get(&id.job) else { return NO_KIND };
        match &job.tasks[id.index as usize].body {
            TaskBody::Function { func, .. } => job.func_kinds.get(*func as usize).copied().unwrap_or(NO_KIND),
            TaskBody::Command => job.command_kind,
        }
    }

    fn kind_named(&mut self, name: String) -> u32 {
        if let Some(k) = self.kind_index.get(&name) {
            return *k;
        }
        let k = self.kinds.len() as u32;
        self.kind_index.insert(name.clone(), k);
        self.kinds.push(KindStats { name, mean_us: None });
        k
    }

    /// The expected duration of task `id`, in microseconds: its kind's mean, or the default.
    fn expected_us(&self, id: TaskId) -> f64 {
        let default = self.config.default_duration.as_micros() as f64;
        self.kinds.get(self.kind_of(id) as usize).and_then(|k| k.mean_us).unwrap_or(default)
    }

    /// Whether a dependent still has to run (finished and failed ones need nothing more).
    fn needed_by_dependents(&self, t: &Task) -> bool {
        t.dependents
            .iter()
            .any(|d| self.task(*d).is_some_and(|dt| !matches!(dt.state, State::Finished | State::Failed)))
    }

    /// Whether a task's result can be had now (a command task's empty result always can).
    fn available(&self, id: TaskId) -> bool {
        self.task(id)
            .is_some_and(|t| t.state == State::Finished && (t.worker.is_some() || matches!(t.body, TaskBody::Command)))
    }

    fn on_request(&mut self, conn: ConnId, req: u64, body: Request) {
        let reply = match body {
            Request::Submit(spec) => match self.submit(conn, *spec) {
                Ok(id) => Reply::Submitted(id),
                Err(e) => Reply::Refused(e),
            },
            Request::Wait(job) => match self.jobs.get_mut(&job) {
                None => Reply::NoSuchJob(job),
                Some(j) if !j.done() => {
                    j.waiters.push((conn, req));
                    return;
                }
                Some(_) => Reply::JobDone(self.outcome(job)),
            },
            Request::Progress(job) => match self.jobs.get(&job) {
                None => Reply::NoSuchJob(job),
                Some(j) => Reply::Progress(j.counts),
            },
            Request::Status => Reply::Status(self.status()),
            Request::Release(job) => {
                if !self.jobs.contains_key(&job) {
                    Reply::NoSuchJob(job)
                } else {
                    self.request_release(job);
                    Reply::Ok
                }
            }
            Request::Retire(ws) => match self.check_retire(&ws) {
                Ok(()) => {
                    for w in ws {
                        self.retire(w, "the cluster is scaling down");
                    }
                    Reply::Ok
                }
                Err(e) => Reply::Refused(e),
            },
            Request::Shutdown => {
                self.shutdown(Some((conn, req)));
                return;
            }
            Request::Control(body) if self.config.controlled => {
                self.notify(Notice::Request { conn, req, body });
                return;
            }
            Request::Control(_) => Reply::Refused(Refusal::new(
                RefusalKind::Unsupported,
                "this cluster has no provisioner: its workers are started by whoever runs it \
                 (srun, mpirun, or a program's own LocalCluster)",
            )),
        };
        self.commands.push(Command::ToClient(conn, ToClient::Reply { req, body: reply }));
    }

    /// Whether workers `ws` can retire together now: all idle, and their wanted results have
    /// another worker to go to.
    fn check_retire(&self, ws: &[WorkerId]) -> Result<(), Refusal> {
        for w in ws {
            match self.workers.get(w) {
                None => return Err(Refusal::new(RefusalKind::NotFound, format!("no worker {w}"))),
                Some(worker) if worker.retiring => {
                    return Err(Refusal::new(RefusalKind::Busy, format!("worker {w} is already retiring")))
                }
                Some(worker) if worker.assigned > 0 => {
                    return Err(Refusal::new(
                        RefusalKind::Busy,
                        format!("worker {w} is busy ({} tasks)", worker.assigned),
                    ))
                }
                Some(_) => {}
            }
        }
        let others = self.workers.iter().any(|(id, o)| !o.retiring && !ws.contains(id));
        if !others {
            let held: usize = ws.iter().map(|w| self.wanted_on(*w).len()).sum();
            if held > 0 {
                return Err(Refusal::new(
                    RefusalKind::Busy,
                    format!("they hold {held} results still wanted, and no other worker could take them"),
                ));
            }
        }
        Ok(())
    }

    fn submit(&mut self, owner: ConnId, spec: JobSpec) -> Result<JobId, Refusal> {
        if self.shutting_down {
            return Err(Refusal::new(RefusalKind::ShuttingDown, "the cluster is shutting down"));
        }
        self.submit_checked(owner, spec).map_err(|e| Refusal::new(RefusalKind::Invalid, e))
    }

    fn submit_checked(&mut self, owner: ConnId, spec: JobSpec) -> Result<JobId, String> {
        let id = JobId(self.next_job);
        let mut references = Vec::new();
        let (tasks, array) = match spec.tasks {
            JobTasks::Array { ranges, cpus, needs } => {
                if spec.command.is_none() {
                    return Err("an array job needs a command".into());
                }
                let needs = self.intern(needs)?;
                let n: u64 = ranges.iter().map(|&(a, b)| u64::from(b.saturating_sub(a)) + 1).sum();
                if ranges.is_empty() || ranges.iter().any(|&(a, b)| a > b) || n > u64::from(u32::MAX) {
                    return Err("the array's index ranges are empty or invalid".into());
                }
                let tasks =
                    (0..n).map(|_| new_task(TaskBody::Command, Box::new([]), false, cpus.max(1), needs)).collect();
                (tasks, Some(ranges))
            }
            JobTasks::Graph(specs) => {
                let mut tasks: Vec<Task> = Vec::with_capacity(specs.len());
                for (i, s) in specs.into_iter().enumerate() {
                    match &s.body {
                        TaskBody::Function { func, .. } if *func as usize >= spec.functions.len() => {
                            return Err(format!("task {i} names function #{func}, which the job does not list"));
                        }
                        TaskBody::Command if spec.command.is_none() => {
                            return Err(format!("task {i} is a command task but the job has no command"));
                        }
                        _ => {}
                    }
                    let mut deps = Vec::with_capacity(s.deps.len());
                    for d in s.deps {
                        match d {
                            TaskRef::Local(j) if (j as usize) < i => deps.push(TaskId { job: id, index: j }),
                            TaskRef::Local(j) => {
                                return Err(format!(
                                    "task {i} depends on task {j}, which is not added before it; add tasks in dependency order"
                                ))
                            }
                            TaskRef::Global(t) => {
                                match self.task(t) {
                                    Some(dt) if dt.keep && !self.jobs[&t.job].release_when_done => {}
                                    Some(_) => {
                                        return Err(format!(
                                            "task {i} depends on task {t}, whose result is not kept; mark it `keep` or submit both together"
                                        ))
                                    }
                                    None => return Err(format!("task {i} depends on task {t}, which does not exist")),
                                }
                                if !references.contains(&t.job) {
                                    references.push(t.job);
                                }
                                deps.push(t);
                            }
                        }
                    }
                    let needs = self.intern(s.needs).map_err(|e| format!("task {i}: {e}"))?;
                    tasks.push(new_task(s.body, deps.into_boxed_slice(), s.keep, s.cpus.max(1), needs));
                }
                (tasks, None)
            }
        };
        if tasks.is_empty() {
            return Err("the job has no tasks".into());
        }
        self.next_job += 1;
        let total = tasks.len() as u32;
        let first = tasks[0].needs;
        let uniform_needs = tasks.iter().all(|t| t.needs == first).then_some(first);
        let func_kinds = spec.functions.iter().map(|f| self.kind_named(f.clone())).collect();
        let command_kind =
            if spec.command.is_some() { self.kind_named(format!("command:{}", spec.name)) } else { NO_KIND };
        let job = Job {
            spec_name: spec.name,
            functions: spec.functions,
            command: spec.command,
            array,
            tasks,
            counts: Counts { total, waiting: total, ..Counts::default() },
            errors: Vec::new(),
            max_attempts: spec.max_attempts.max(1),
            owner,
            release_on_disconnect: spec.release_on_disconnect,
            release_when_done: false,
            waiters: Vec::new(),
            referenced_by: Vec::new(),
            references: references.clone(),
            func_kinds,
            command_kind,
            uniform_needs,
        };
        self.jobs.insert(id, job);
        for r in references {
            self.jobs.get_mut(&r).expect("checked above").referenced_by.push(id);
        }
        // Wire dependents and find the tasks that can start now.
        let mut failed_inputs = Vec::new();
        for i in 0..total {
            let tid = TaskId { job: id, index: i };
            let deps = self.task(tid).expect("just added").deps.clone();
            for d in deps.iter() {
                self.task_mut(*d).expect("validated").dependents.push(tid);
                if let Some(dt) = self.task(*d) {
                    if dt.state == State::Failed {
                        failed_inputs.push((tid, *d));
                    } else if dt.state == State::Finished && dt.worker.is_none() {
                        self.recompute(*d);
                    }
                }
            }
            if !deps.is_empty() {
                self.refresh(tid);
            }
        }
        // Tasks without inputs, in submission order, behind what is already queued.
        for i in 0..total {
            let tid = TaskId { job: id, index: i };
            let t = self.task_mut(tid).expect("just added");
            if t.deps.is_empty() && t.state == State::Waiting {
                t.state = State::Ready;
                self.ready.push_back(tid);
            }
        }
        for (t, d) in failed_inputs {
            self.fail(t, TaskError { kind: ErrorKind::DependencyFailed(d), message: "failed earlier".into() });
        }
        tracing::info!(job = %id, tasks = total, "job submitted");
        Ok(id)
    }

    fn request_release(&mut self, job: JobId) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        j.release_when_done = true;
        if j.done() && j.referenced_by.is_empty() {
            self.release_job(job);
        }
    }

    /// Forgets a finished job and tells its workers to drop its results.
    fn release_job(&mut self, job: JobId) {
        let Some(j) = self.jobs.remove(&job) else { return };
        let mut holders: Vec<WorkerId> = j.tasks.iter().filter_map(|t| t.worker).collect();
        holders.sort();
        holders.dedup();
        for h in holders {
            if let Some(w) = self.workers.get(&h) {
                self.commands.push(Command::ToWorker(w.conn, ToWorker::ReleaseJob(job)));
            }
        }
        for t in &j.tasks {
            if let Some(w) = t.worker.and_then(|h| self.workers.get_mut(&h)) {
                w.holding -= 1;
            }
        }
        for r in j.references {
            if let Some(rj) = self.jobs.get_mut(&r) {
                rj.referenced_by.retain(|x| *x != job);
                if rj.release_when_done && rj.done() && rj.referenced_by.is_empty() {
                    self.release_job(r);
                }
            }
        }
        tracing::debug!(job = %job, "job released");
    }

    fn on_job_done(&mut self, job: JobId) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        if !j.done() {
            return;
        }
        tracing::info!(job = %job, finished = j.counts.finished, failed = j.counts.failed, "job done");
        let waiters = std::mem::take(&mut j.waiters);
        if !waiters.is_empty() {
            let outcome = self.outcome(job);
            for (conn, req) in waiters {
                let body = Reply::JobDone(outcome.clone());
                self.commands.push(Command::ToClient(conn, ToClient::Reply { req, body }));
            }
        }
        // The jobs it references stay until it is released itself: if one of its kept
        // results is lost, recomputing it may need theirs.
        if let Some(j) = self.jobs.get(&job) {
            if j.release_when_done && j.referenced_by.is_empty() {
                self.release_job(job);
            }
        }
    }

    fn outcome(&self, job: JobId) -> JobOutcome {
        let j = &self.jobs[&job];
        let mut by_worker: HashMap<WorkerId, Vec<u32>> = HashMap::new();
        for (i, t) in j.tasks.iter().enumerate() {
            if let (State::Finished, true, Some(w)) = (t.state, t.keep, t.worker) {
                by_worker.entry(w).or_default().push(i as u32);
            }
        }
        let mut holdings: Vec<Holding> = by_worker
            .into_iter()
            .filter_map(|(w, tasks)| {
                let address = self.workers.get(&w)?.info.data_address.clone();
                Some(Holding { worker: w, address, tasks })
            })
            .collect();
        holdings.sort_by_key(|h| h.worker);
        // Arrays report their own indices (RDASK_TASK_ID); graphs report task indices.
        let mut failed: Vec<_> = j.errors.iter().map(|(i, e)| (j.array_id(*i), e.clone())).collect();
        failed.sort_by_key(|(i, _)| *i);
        JobOutcome { job, tasks: j.counts.total, finished: j.counts.finished, failed, holdings }
    }

    fn status(&self) -> ClusterStatus {
        let now = self.now.expect("set by handle");
        let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        let mut workers: Vec<WorkerStatus> = self
            .workers
            .iter()
            .map(|(id, w)| WorkerStatus {
                id: *id,
                info: w.info.clone(),
                assigned: w.assigned,
                holding: w.holding,
                retiring: w.retiring,
                ends_in_ms: w.ends_at.map(|e| ms(e.saturating_duration_since(now))),
                idle_ms: w.idle_since.map_or(0, |i| ms(now.saturating_duration_since(i))),
            })
            .collect();
        workers.sort_by_key(|w| w.id);
        let mut jobs: Vec<JobStatus> = self
            .jobs
            .iter()
            .map(|(id, j)| JobStatus {
                id: *id,
                name: j.spec_name.clone(),
                counts: j.counts,
                waiting_for: self.waiting_for(j),
            })
            .collect();
        jobs.sort_by_key(|j| j.id);
        let clients = self.conns.values().filter(|p| matches!(p, Peer::Client(_))).count() as u32;
        ClusterStatus { workers, jobs, clients, load: self.load(), provisioning: self.provisioning.clone() }
    }

    /// Queued and running tasks per kind. A job with one kind counts from its counts; only jobs
    /// mixing functions are looked at task by task.
    fn load(&self) -> Vec<KindLoad> {
        // By (kind, needs).
        let mut by_kind: HashMap<(u32, u32), (u64, u64)> = HashMap::new();
        for (jid, j) in &self.jobs {
            let kinds = j.func_kinds.len() + usize::from(j.command_kind != NO_KIND);
            if j.counts.waiting + j.counts.running == 0 {
                continue;
            }
            if let (true, Some(needs)) = (kinds <= 1, j.uniform_needs) {
                let k = j.func_kinds.first().copied().unwrap_or(j.command_kind);
                let e = by_kind.entry((k, needs)).or_default();
                e.0 += u64::from(j.counts.waiting);
                e.1 += u64::from(j.counts.running);
                continue;
            }
            for (i, t) in j.tasks.iter().enumerate() {
                let queued = matches!(t.state, State::Waiting | State::Ready);
                if queued || t.state == State::Assigned {
                    let e = by_kind.entry((self.kind_of(TaskId { job: *jid, index: i as u32 }), t.needs)).or_default();
                    if queued {
                        e.0 += 1;
                    } else {
                        e.1 += 1;
                    }
                }
            }
        }
        let mut load: Vec<KindLoad> = by_kind
            .into_iter()
            .filter_map(|((k, n), (queued, running))| {
                let stats = self.kinds.get(k as usize)?;
                Some(KindLoad {
                    kind: stats.name.clone(),
                    queued,
                    running,
                    mean_us: stats.mean_us.map(|m| m as u64),
                    needs: self.needs[n as usize].clone(),
                })
            })
            .collect();
        load.sort_by(|a, b| a.kind.cmp(&b.kind).then_with(|| a.needs.cmp(&b.needs)));
        load
    }

    /// Hands ready tasks to workers with room, preferring the worker that holds the most input bytes.
    fn schedule(&mut self) {
        if self.ready.is_empty() || self.workers.is_empty() {
            return;
        }
        let depth = if self.mean_duration_us < SHORT_TASK_US { DEPTH_SHORT } else { DEPTH_LONG };
        // (worker, room left in CPUs, slots)
        let now = self.now.expect("set by handle");
        let mut room: Vec<(WorkerId, u32, u32)> = self
            .workers
            .iter()
            .filter(|(_, w)| !w.retiring && w.ends_at.is_none_or(|e| e > now))
            .map(|(id, w)| (*id, (w.slots() * depth).saturating_sub(w.used), w.slots()))
            .filter(|(_, r, _)| *r > 0)
            .collect();
        room.sort();
        let mortal = self.workers.values().any(|w| w.ends_at.is_some());
        let mut batches: HashMap<WorkerId, Vec<Assignment>> = HashMap::new();
        let mut next = 0usize;
        let mut skipped = VecDeque::new();
        while !room.is_empty() {
            let Some(id) = self.ready.pop_front() else { break };
            let Some(t) = self.task(id) else { continue };
            if t.state != State::Ready {
                continue;
            }
            if !t.deps.iter().all(|d| self.available(*d)) {
                self.refresh(id);
                continue;
            }
            let cpus = u32::from(t.cpus);
            let needs = &self.needs[t.needs as usize];
            let has = |w: &WorkerId| t.needs == 0 || self.workers[w].has_free(needs);
            // A worker that must leave before the task is expected to end does not get it.
            // Tasks queued on it are assumed to be like this one.
            let lives = |w: &WorkerId| {
                !mortal || {
                    let worker = &self.workers[w];
                    let ahead = f64::from(1 + worker.assigned / worker.slots());
                    let expected = Duration::from_micros((self.expected_us(id) * ahead) as u64);
                    worker.ends_at.is_none_or(|e| now + expected <= e)
                }
            };
            let mut best: Option<usize> = None;
            if !t.deps.is_empty() {
                let mut best_bytes = 0u64;
                for (k, (w, r, slots)) in room.iter().enumerate() {
                    if *r < cpus.min(*slots) || !lives(w) || !has(w) {
                        continue;
                    }
                    let bytes: u64 = t
                        .deps
                        .iter()
                        .filter_map(|d| self.task(*d))
                        .filter(|dt| dt.worker == Some(*w))
                        .map(|dt| dt.size.max(1))
                        .sum();
                    if best.is_none() || bytes > best_bytes {
                        best = Some(k);
                        best_bytes = bytes;
                    }
                }
            }
            let fits = |k: usize| room[k].1 >= cpus.min(room[k].2) && lives(&room[k].0) && has(&room[k].0);
            let slot = best.or_else(|| (0..room.len()).map(|k| (next + k) % room.len()).find(|&k| fits(k)));
            let Some(k) = slot else {
                // No worker has room for this many CPUs now; keep it for later.
                skipped.push_back(id);
                if skipped.len() > 64 {
                    break;
                }
                continue;
            };
            next = k + 1;
            let w = room[k].0;
            room[k].1 -= cpus.min(room[k].2);
            if room[k].1 == 0 {
                room.swap_remove(k);
            }
            let assignment = self.assign(id, w);
            batches.entry(w).or_default().push(assignment);
        }
        while let Some(id) = skipped.pop_back() {
            self.ready.push_front(id);
        }
        let mut batches: Vec<_> = batches.into_iter().collect();
        batches.sort_by_key(|(w, _)| *w);
        for (w, list) in batches {
            let worker = self.workers.get_mut(&w).expect("worker with room exists");
            let conn = worker.conn;
            let mut jobs: Vec<JobId> = list
                .iter()
                .filter(|a| matches!(a.work, Work::Command { .. }))
                .map(|a| a.id.job)
                .filter(|j| !worker.commands.contains(j))
                .collect();
            jobs.sort();
            jobs.dedup();
            for j in jobs {
                worker.commands.push(j);
                let spec = self.jobs[&j].command.clone().expect("command tasks have a command");
                self.commands.push(Command::ToWorker(conn, ToWorker::Command(j, spec)));
            }
            self.commands.push(Command::ToWorker(conn, ToWorker::Compute(list)));
        }
    }

    fn assign(&mut self, id: TaskId, w: WorkerId) -> Assignment {
        let job = &self.jobs[&id.job];
        let t = &job.tasks[id.index as usize];
        let work = match &t.body {
            TaskBody::Function { func, args } => {
                Work::Function { name: job.functions[*func as usize].clone(), args: args.clone() }
            }
            TaskBody::Command => Work::Command { array_id: job.array_id(id.index) },
        };
        let inputs = t
            .deps
            .iter()
            // Checked by `schedule`; a command task's empty result is "held" by worker 0.
            .map(|d| (*d, self.task(*d).and_then(|dt| dt.worker).unwrap_or(WorkerId(0))))
            .collect();
        let cpus = t.cpus;
        let needs = t.needs;
        let worker = self.workers.get_mut(&w).expect("exists");
        let mut gpus = Vec::new();
        if needs != 0 {
            let bound = worker.take(&self.needs[needs as usize]);
            gpus = bound.iter().map(|g| worker.info.offer.gpus[usize::from(*g)].clone()).collect();
            if !bound.is_empty() {
                self.bound.insert(id, bound);
            }
        }
        worker.used += worker.charge(u32::from(cpus));
        worker.assigned += 1;
        worker.idle_since = None;
        self.task_mut(id).expect("exists").worker = Some(w);
        self.set_state(id, State::Assigned);
        Assignment { id, work, inputs, cpus, gpus }
    }

    /// Why a job's waiting tasks wait, when they need what no worker has free (the needs of
    /// its first waiting task stand for all: an array's tasks all need the same).
    fn waiting_for(&self, j: &Job) -> Option<String> {
        if j.counts.waiting == 0 {
            return None;
        }
        let t = j.tasks.iter().find(|t| matches!(t.state, State::Ready | State::Waiting) && t.needs != 0)?;
        let needs = &self.needs[t.needs as usize];
        if self.workers.values().any(|w| w.has_free(needs)) {
            return None;
        }
        let offered = self.workers.values().any(|w| w.info.offer.could_hold(needs).is_ok());
        let pools: Vec<&str> = self
            .provisioning
            .iter()
            .flat_map(|p| &p.pools)
            .filter(|p| p.offer.could_hold(needs).is_ok())
            .map(|p| p.name.as_str())
            .collect();
        Some(match (offered, pools.is_empty()) {
            (true, _) => format!("{needs}: busy on every worker that offers it"),
            (false, false) => format!("{needs}: no worker offers it yet; pool `{}` does", pools.join("`, `")),
            (false, true) => format!("{needs}: no worker offers it yet"),
        })
    }

    /// Gives back what assigned task `id` held on worker `w`.
    fn unbind(&mut self, id: TaskId, w: WorkerId) {
        let Some(needs) = self.task(id).map(|t| t.needs).filter(|n| *n != 0) else { return };
        let gpus = self.bound.remove(&id).unwrap_or_default();
        if let Some(worker) = self.workers.get_mut(&w) {
            worker.give(&self.needs[needs as usize], &gpus);
        }
    }

    /// The index of `needs` in `self.needs`, after checking that some worker or pool could ever
    /// hold it. Refused: the reason, naming each pool and what it offers.
    fn intern(&mut self, mut needs: Needs) -> Result<u32, String> {
        needs.named.sort();
        if needs.named.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err("a named resource is asked for twice".into());
        }
        needs.named.retain(|(_, n)| *n > 0);
        if let Some(i) = self.needs_index.get(&needs) {
            return Ok(*i);
        }
        self.could_run(&needs)?;
        let i = self.needs.len() as u32;
        self.needs.push(needs.clone());
        self.needs_index.insert(needs, i);
        Ok(i)
    }

    /// Whether a task needing `needs` could ever run: on a worker now, or on one a pool would
    /// start. With no pools declared (no provisioner) it may wait for workers to come.
    fn could_run(&self, needs: &Needs) -> Result<(), String> {
        if needs.is_empty() || self.workers.values().any(|w| w.info.offer.could_hold(needs).is_ok()) {
            return Ok(());
        }
        let Some(p) = self.provisioning.as_ref().filter(|p| !p.pools.is_empty()) else { return Ok(()) };
        let mut why = Vec::new();
        for pool in &p.pools {
            match pool.offer.could_hold(needs) {
                Ok(()) => return Ok(()),
                Err(e) => why.push(format!("pool `{}`: {e}", pool.name)),
            }
        }
        Err(format!(
            "no worker and no pool could ever run a task that needs {needs} ({}); ask for less, or add a pool that offers it (--pool)",
            why.join("; ")
        ))
    }

    fn set_state(&mut self, id: TaskId, to: State) {
        let job = self.jobs.get_mut(&id.job).expect("task's job exists");
        let t = &mut job.tasks[id.index as usize];
        let from = std::mem::replace(&mut t.state, to);
        *count_of(&mut job.counts, from) -= 1;
        *count_of(&mut job.counts, to) += 1;
    }

    fn task(&self, id: TaskId) -> Option<&Task> {
        self.jobs.get(&id.job)?.tasks.get(id.index as usize)
    }

    fn task_mut(&mut self, id: TaskId) -> Option<&mut Task> {
        self.jobs.get_mut(&id.job)?.tasks.get_mut(id.index as usize)
    }
}

fn count_of(c: &mut Counts, state: State) -> &mut u32 {
    match state {
        State::Waiting | State::Ready => &mut c.waiting,
        State::Assigned => &mut c.running,
        State::Finished => &mut c.finished,
        State::Failed => &mut c.failed,
    }
}

fn new_task(body: TaskBody, deps: Box<[TaskId]>, keep: bool, cpus: u16, needs: u32) -> Task {
    Task {
        state: State::Waiting,
        attempts: 0,
        keep,
        cpus,
        needs,
        unfinished: 0,
        worker: None,
        size: 0,
        body,
        deps,
        dependents: Vec::new(),
    }
}

fn discriminant_name(msg: &ToScheduler) -> &'static str {
    match msg {
        ToScheduler::RegisterWorker(_) => "RegisterWorker",
        ToScheduler::RegisterClient(_) => "RegisterClient",
        ToScheduler::Heartbeat => "Heartbeat",
        ToScheduler::Finished(_) => "Finished",
        ToScheduler::Failed(..) => "Failed",
        ToScheduler::InputMissing(..) => "InputMissing",
        ToScheduler::Retire => "Retire",
        ToScheduler::Replicated { .. } => "Replicated",
        ToScheduler::Request { .. } => "Request",
    }
}
