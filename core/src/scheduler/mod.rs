//! The scheduler as a sans-IO state machine.
//!
//! [`Scheduler`] owns the cluster's state (workers, jobs, tasks) and decides
//! where every task runs. It performs no I/O and never reads the clock: the
//! driver ([`crate::server`]) feeds it [`Event`]s together with the current
//! time and carries out the [`Command`]s it emits. Tests drive it the same way
//! with a simulated clock (see `tests.rs`). `clippy.toml` forbids reading the clock,
//! sleeping and spawning here (the `deny` below).
//!
//! Calling contract:
//! 1. Call [`Scheduler::handle`] for every event, in the order they happened.
//! 2. After each call, drain [`Scheduler::take_commands`] and execute them in order.
//! 3. Call `handle(now, Event::Tick)` no later than [`Scheduler::next_deadline`].
//!
//! This file holds the public types, the [`Scheduler`] struct and the dispatch of events;
//! the rest is split by concern:
//! - `graph.rs`: jobs, tasks and their states, dependencies, results (release, loss, recompute);
//! - `workers.rs`: workers, their per-worker indexes, registration, heartbeats, loss;
//! - `placement.rs`: which ready task goes to which worker, and the measured durations per kind;
//! - `retire.rs`: retiring workers and handing their results over;
//! - `requests.rs`: clients' requests (submit, wait, status, load, release, retire).
//!
//! Invariants kept here (checked after every event of the `Sim` suite by `check.rs`):
//! - a task is `Assigned` to exactly one live worker, whose `running` lists it and whose `used`
//!   counts its CPUs;
//! - a `Finished` task's result is on its `holder`, a live worker whose `holds` lists it, unless that
//!   is `None` (released or lost, or a command task's, which leaves none);
//! - so losing a worker costs the tasks on it, not a scan of all tasks;
//! - every worker with room for a task is in `open`, so placing costs the workers looked at,
//!   not a scan of all workers;
//! - `missing` of a `Waiting` task counts its inputs that are not available;
//! - a result that a task still needs is never released, and a lost one is recomputed;
//! - a retiring worker gets no new task; it is told to stop only once idle and after the
//!   results that only it holds and that are still wanted have been offered to another worker;
//! - a worker with a lifetime gets only tasks expected (from the measured durations of their
//!   kind) to end before it must leave, and retires when its lifetime is up.

#![deny(clippy::disallowed_methods)]

use std::collections::{BTreeSet, HashMap, VecDeque};

// The ids hashed here are the scheduler's own small integers: Fx hashing (rustc-hash) costs a
// fraction of SipHash on the per-task paths, and needs no protection from chosen keys.
use rustc_hash::FxHashMap;
use std::time::{Duration, Instant};

use crate::protocol::{
    ClientInfo, ClusterStatus, ControlRequest, EventKind, JobId, Needs, ProvisioningStatus, Refusal, Reply, TaskId,
    ToClient, ToScheduler, ToWorker, WorkerId,
};

mod graph;
mod journal;
mod observe;
mod pace;
mod placement;
mod requests;
mod retire;
mod workers;

#[cfg(test)]
mod check;
#[cfg(test)]
mod tests;

use graph::Job;
pub use journal::{EncodedSpec, Record, Restored, RestoredJob};
use observe::Observed;
pub use observe::{EVENTS_KEPT, TASKS_KEPT};
pub use pace::{heartbeat_interval, MAX_STRETCH, PACED_FROM};
use placement::{KindStats, SHORT_TASK_US};
use workers::Worker;

/// Identifies a connection of the driver.
pub type ConnId = u64;

/// Timing and capacity settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// How often workers send heartbeats, up to [`PACED_FROM`] workers; more stretch it (see
    /// [`heartbeat_interval`]).
    pub heartbeat_interval: Duration,
    /// A worker silent for this long is considered dead, at the base interval; stretched as
    /// the worker's interval is.
    pub heartbeat_timeout: Duration,
    /// The expected duration of a task of a kind that has never finished.
    pub default_duration: Duration,
    /// Whether an embedding (a provisioner) takes the [`Notice`]s and answers
    /// [`Request::Control`](crate::protocol::Request::Control); without one, those requests are refused.
    pub controlled: bool,
    /// Whether to emit [`Command::Journal`] records (see [`Record`]) for a restart to restore from.
    pub journal: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(10),
            default_duration: Duration::from_millis(500),
            controlled: false,
            journal: false,
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
    /// Answer a client's [`Request::Control`](crate::protocol::Request::Control) (from [`Notice::Request`]).
    Reply {
        /// The client.
        conn: ConnId,
        /// Its request.
        req: u64,
        /// The answer.
        reply: Reply,
    },
    /// Retire these workers, all or none, as [`Request::Retire`](crate::protocol::Request::Retire) does; answered with
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
    /// Record an event of the embedding's (a batch job's state, an adaptive decision).
    Event(EventKind),
    /// Where the dashboard is served, for [`ClusterStatus::dashboard`].
    Dashboard(String),
    /// Stop the workers and exit, as [`Request::Shutdown`](crate::protocol::Request::Shutdown) does.
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
    /// A client's connection closed without a [`Request::Shutdown`](crate::protocol::Request::Shutdown).
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
    /// Append to the journal before carrying out the commands after it (only with
    /// [`Config::journal`]).
    Journal(Record),
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
    conns: FxHashMap<ConnId, Peer>,
    workers: FxHashMap<WorkerId, Worker>,
    jobs: FxHashMap<JobId, Job>,
    ready: VecDeque<TaskId>,
    /// Every worker that may have room for a task (a superset, in id order: `schedule` drops the
    /// full, retiring and expired ones it meets), so that placing costs those, not all workers.
    /// A worker enters when it registers and whenever a task leaves it (`set_state`).
    open: BTreeSet<WorkerId>,
    /// The queue depth `open` was kept for; when the depth changes, every worker is open again.
    open_depth: u32,
    next_worker: u32,
    next_job: u32,
    /// Mean task duration, exponentially weighted, in microseconds.
    mean_duration_us: f64,
    commands: Vec<Command>,
    /// Results to release, sent in one message per worker at the end of `handle`.
    releases: FxHashMap<WorkerId, Vec<TaskId>>,
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
    bound: FxHashMap<TaskId, Vec<u16>>,
    /// Events, the task stream and the counters (`observe.rs`).
    observed: Observed,
    /// Rebuilding from the journal: nothing is journalled again.
    restoring: bool,
    /// A restored scheduler's adoption window, while open.
    adopting: Option<journal::Adopting>,
    /// Until when restored jobs wait for a client to claim them (see `journal.rs`).
    unclaimed_until: Option<Instant>,
    /// Journalled tasks that finished during this event, not journalled yet.
    finished_unjournalled: Vec<TaskId>,
    /// Journalled tasks that failed for good during this event, not journalled yet.
    failed_unjournalled: Vec<(TaskId, crate::protocol::TaskError)>,
    /// No later than the first heartbeat timeout or lifetime end of a worker: a scan's result,
    /// lowered by each worker that joins and by each heartbeat that brings its worker's timeout
    /// forward (a shorter interval kept, `pace.rs`), and scanned again at each tick. Other
    /// heartbeats only move timeouts later, so it is never late; early, a tick finds nothing
    /// due. It spares the driver a scan of every worker per event.
    wake_at: Option<Instant>,
}

impl Scheduler {
    /// An empty cluster.
    pub fn new(config: Config) -> Scheduler {
        Scheduler {
            config,
            conns: FxHashMap::default(),
            workers: FxHashMap::default(),
            jobs: FxHashMap::default(),
            ready: VecDeque::new(),
            open: BTreeSet::new(),
            open_depth: 0,
            next_worker: 1,
            next_job: 1,
            mean_duration_us: SHORT_TASK_US * 10.0,
            commands: Vec::new(),
            releases: FxHashMap::default(),
            shutting_down: false,
            now: None,
            kinds: Vec::new(),
            kind_index: HashMap::new(),
            retiring: 0,
            provisioning: None,
            needs: vec![Needs::default()],
            needs_index: HashMap::from([(Needs::default(), 0)]),
            bound: FxHashMap::default(),
            observed: Observed::default(),
            restoring: false,
            adopting: None,
            unclaimed_until: None,
            finished_unjournalled: Vec::new(),
            failed_unjournalled: Vec::new(),
            wake_at: None,
        }
    }

    /// The commands emitted so far, in order; the driver must execute them.
    #[must_use]
    pub fn take_commands(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.commands)
    }

    /// When the driver must deliver the next [`Event::Tick`] at the latest.
    pub fn next_deadline(&self) -> Option<Instant> {
        let adoption = self.adopting.as_ref().map(|a| a.until);
        self.wake_at.into_iter().chain(adoption).chain(self.unclaimed_until).min()
    }

    /// The first heartbeat timeout or lifetime end of a live, not retiring worker: a scan.
    fn scan_wake_at(&self) -> Option<Instant> {
        let heartbeats = self.workers.values().map(|w| w.last_seen + pace::silence_allowed(&self.config, &w.pace));
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
        if self.adopting.is_some() {
            self.close_adoption_if_due(now);
        }
        if self.unclaimed_until.is_some() {
            self.release_unclaimed_if_due(now);
        }
        self.schedule();
        if self.retiring > 0 {
            self.progress_retirements();
        }
        if !self.finished_unjournalled.is_empty() || !self.failed_unjournalled.is_empty() {
            self.flush_ended();
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
            Control::Event(e) => self.event(e),
            Control::Dashboard(address) => self.set_dashboard(address),
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
            (Some(Peer::Worker(w)), ToScheduler::Heartbeat { load, ack, interval_ms }) => {
                self.on_heartbeat(w, load, ack, interval_ms);
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

    fn on_disconnect(&mut self, conn: ConnId, reason: &str) {
        match self.conns.remove(&conn) {
            Some(Peer::Worker(w)) => self.worker_lost(w, reason),
            Some(Peer::Client(info)) => self.client_left(conn, info),
            _ => {}
        }
    }
}

fn discriminant_name(msg: &ToScheduler) -> &'static str {
    match msg {
        ToScheduler::RegisterWorker(_) => "RegisterWorker",
        ToScheduler::RegisterClient(_) => "RegisterClient",
        ToScheduler::Heartbeat { .. } => "Heartbeat",
        ToScheduler::Finished(_) => "Finished",
        ToScheduler::Failed(..) => "Failed",
        ToScheduler::InputMissing(..) => "InputMissing",
        ToScheduler::Retire => "Retire",
        ToScheduler::Replicated { .. } => "Replicated",
        ToScheduler::Request { .. } => "Request",
    }
}
