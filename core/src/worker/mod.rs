//! The worker: runs tasks, keeps their results, serves them to peers and clients.
//!
//! One tokio task owns the worker's state and talks to the scheduler. Function
//! tasks run on `slots` dedicated threads; command tasks run as child processes,
//! each in its own process group so that a stop kills its whole tree. Results
//! stay in the worker's store until the scheduler releases them; a small data
//! server hands them out (to peers fetching inputs, to clients gathering).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdask_transport::auth::{self, Secret};
use rdask_transport::{Address, Connection, Frame};
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;

use crate::cluster::ClusterInfo;
use crate::protocol::{
    self, Assignment, CommandSpec, DataReply, DataRequest, ErrorKind, Finished, JobId, Offer, Resume, TaskError,
    TaskId, ToScheduler, ToWorker, Work, WorkerId, WorkerInfo, WorkerLoad,
};
use crate::registry::Registry;

mod exec;
mod guard;

pub use exec::{substitute, GPU_VARS};
use exec::{Job, Runner, Slots, TaskDone};

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The cluster to join.
    pub cluster: ClusterInfo,
    /// Task slots (CPUs).
    pub slots: u16,
    /// Exit when the scheduler has been unreachable this long.
    pub death_timeout: Duration,
    /// Host to bind the data server to (`0.0.0.0` by default).
    pub listen_host: String,
    /// When the worker must be gone (its batch job's walltime less a grace period): the
    /// scheduler gives it only tasks expected to end by then, and retires it then.
    pub ends_at: Option<Instant>,
    /// The launch tag to echo at registration (see [`crate::protocol::WorkerInfo::launch`]);
    /// [`WorkerConfig::new`] takes it from `RDASK_LAUNCH_TAG`, which whoever starts the worker sets.
    pub launch: Option<String>,
    /// GPUs, memory and named resources it offers to tasks (nothing by default).
    pub offer: Offer,
}

/// The environment variable that carries a worker's launch tag.
pub const LAUNCH_TAG_VAR: &str = "RDASK_LAUNCH_TAG";

impl WorkerConfig {
    /// Defaults for a cluster: one slot per CPU, a 60 s death timeout.
    pub fn new(cluster: ClusterInfo) -> WorkerConfig {
        let slots = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(u16::MAX as usize) as u16;
        WorkerConfig {
            cluster,
            slots,
            death_timeout: Duration::from_secs(60),
            listen_host: "0.0.0.0".into(),
            ends_at: None,
            launch: std::env::var(LAUNCH_TAG_VAR).ok().filter(|t| !t.is_empty()),
            offer: Offer::default(),
        }
    }
}

/// Why a worker stopped other than by the scheduler's order.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The scheduler could not be reached for the whole death timeout.
    #[error(
        "scheduler unreachable at {addresses} for {secs} s (death timeout); last error: {last}. Is the cluster up?"
    )]
    DeathTimeout {
        /// The addresses tried.
        addresses: String,
        /// The death timeout.
        secs: u64,
        /// The last error seen.
        last: String,
    },
    /// The data server could not start.
    #[error("cannot listen for data on {host}: {source}")]
    Listen {
        /// The host.
        host: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

// Task ids are the scheduler's own small integers and only authenticated peers name them: Fx
// hashing costs a fraction of SipHash per result stored, served or released.
type Store = Arc<Mutex<FxHashMap<TaskId, Bytes>>>;

enum Done {
    /// Tasks ended.
    Tasks(Vec<TaskDone>),
    /// The inputs of a task arrived (or could not be had).
    Fetched { assignment: Assignment, result: Result<Vec<(TaskId, Bytes)>, TaskId> },
    /// Results copied from a retiring worker (none if the copy failed).
    Replicated { from: WorkerId, ids: Vec<TaskId> },
}

/// Runs a worker until the scheduler stops it (`Ok`) or is gone for the death timeout.
pub async fn run(config: WorkerConfig, registry: Arc<Registry>) -> Result<(), WorkerError> {
    let store: Store = Arc::default();
    let data_listener = rdask_transport::listen(&Address {
        scheme: data_scheme(&config),
        host_port: format!("{}:0", config.listen_host),
    })
    .await
    .map_err(|source| WorkerError::Listen { host: config.listen_host.clone(), source })?;
    let data_port = data_listener.local_addr().host_port.rsplit_once(':').map(|(_, p)| p.to_string());
    let data_port = data_port.expect("a listener's address has a port");
    // The data server and its connections end when this function returns, however it does.
    let data_stop = tokio_util::sync::CancellationToken::new();
    let _data_stop = data_stop.clone().drop_guard();
    let serving = serve_data(data_listener, config.cluster.secret.clone(), store.clone(), data_stop.clone());
    tokio::spawn(data_stop.clone().run_until_cancelled_owned(serving));

    let mut lost_since = Instant::now();
    let mut last_error;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut term = async || match sigterm.as_mut() {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    };
    // One worker across connections: when the scheduler is lost, its tasks go on running and
    // its results stay, and it tells the scheduler it reaches next (a restarted one) what it has.
    let mut worker: Option<Worker> = None;
    loop {
        let resume = worker.as_ref().and_then(Worker::resume);
        // Without a scheduler there is nothing to finish gracefully: SIGTERM ends the worker.
        let attempt = tokio::select! {
            r = connect(&config, &data_port, resume) => r,
            _ = term() => {
                tracing::info!("SIGTERM while not connected to a scheduler: exiting");
                if let Some(w) = &mut worker {
                    w.kill_commands();
                }
                return Ok(());
            }
        };
        match attempt {
            Ok((conn, id, hb)) => {
                tracing::info!(worker = %id, "connected to the scheduler");
                let w = worker.get_or_insert_with(|| Worker::new(&config, registry.clone(), store.clone(), hb));
                (w.id, w.heartbeat) = (Some(id), kept_interval(hb, config.death_timeout));
                match w.serve(conn, &mut term).await {
                    Ended::Stopped => return Ok(()),
                    Ended::Lost(e) => {
                        tracing::warn!(
                            "lost the scheduler: {e}; its tasks go on; reconnecting until the death timeout"
                        );
                        last_error = e;
                        lost_since = Instant::now();
                    }
                }
            }
            Err(e) => last_error = e,
        }
        if lost_since.elapsed() >= config.death_timeout {
            if let Some(w) = &mut worker {
                w.kill_commands();
            }
            let addresses = config.cluster.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ");
            return Err(WorkerError::DeathTimeout {
                addresses,
                secs: config.death_timeout.as_secs(),
                last: last_error,
            });
        }
        let left = config.death_timeout.saturating_sub(lost_since.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(left.min(Duration::from_millis(500))) => {}
            _ = term() => {
                tracing::info!("SIGTERM while not connected to a scheduler: exiting");
                if let Some(w) = &mut worker {
                    w.kill_commands();
                }
                return Ok(());
            }
        }
    }
}

/// The data server speaks the scheduler's transport (tcp or ucx).
fn data_scheme(config: &WorkerConfig) -> rdask_transport::Scheme {
    config.cluster.addresses.first().map_or(rdask_transport::Scheme::Tcp, |a| a.scheme)
}

async fn connect(
    config: &WorkerConfig,
    data_port: &str,
    resume: Option<Box<Resume>>,
) -> Result<(Connection, WorkerId, Duration), String> {
    let mut last = String::new();
    for addr in &config.cluster.addresses {
        let attempt = async {
            let mut conn = rdask_transport::connect(addr).await.map_err(|e| format!("{addr}: {e}"))?;
            auth::connect(&mut conn, &config.cluster.secret).await.map_err(|e| e.to_string())?;
            // Peers reach our data server on the interface that reaches the scheduler.
            let ip = conn.local.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or_default();
            let info = WorkerInfo {
                slots: config.slots,
                host: hostname(),
                pid: std::process::id(),
                launch: config.launch.clone(),
                data_address: Address { scheme: data_scheme(config), host_port: format!("{ip}:{data_port}") }
                    .to_string(),
                lifetime_ms: config
                    .ends_at
                    .map(|e| e.saturating_duration_since(Instant::now()).as_millis().min(u128::from(u64::MAX)) as u64),
                offer: config.offer.clone(),
                resume: resume.clone(),
            };
            conn.send_now(protocol::frame(&ToScheduler::RegisterWorker(info))).await.map_err(|e| e.to_string())?;
            let f = conn.recv_some().await.map_err(|e| e.to_string())?;
            match protocol::decode::<ToWorker>(&f.header) {
                Ok(ToWorker::Welcome { id, heartbeat_ms }) => Ok((conn, id, Duration::from_millis(heartbeat_ms))),
                other => Err(format!("unexpected first message from the scheduler: {other:?}")),
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("{addr}: no answer within 10 s"),
        }
    }
    Err(last)
}

/// The host name of this machine.
pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown".into())
}

enum Ended {
    Stopped,
    Lost(String),
}

struct Worker {
    registry: Arc<Registry>,
    store: Store,
    heartbeat: Duration,
    death_timeout: Duration,
    slots: Slots,
    commands: HashMap<JobId, Arc<CommandSpec>>,
    peers: HashMap<WorkerId, String>,
    secret: Secret,
    pool: FetchPool,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    finished: Vec<Finished>,
    retiring: bool,
    /// The id the scheduler gave it last.
    id: Option<WorkerId>,
    /// Tasks given and not ended, and whether each is a command.
    given: FxHashMap<TaskId, bool>,
    /// Outcomes of command tasks reported in the last [`RESEND`], oldest first: a scheduler
    /// killed before it journalled them hears them again in the [`Resume`].
    recent: VecDeque<(Instant, Outcome)>,
}

/// How long a command task's outcome is kept to be reported again (see [`Worker::recent`]).
const RESEND: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
enum Outcome {
    Finished(Finished),
    Failed(TaskId, TaskError),
}

impl Worker {
    fn new(config: &WorkerConfig, registry: Arc<Registry>, store: Store, heartbeat: Duration) -> Worker {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (batches, mut batch_rx) = mpsc::unbounded_channel::<Vec<TaskDone>>();
        let forward = done_tx.clone();
        tokio::spawn(async move {
            while let Some(b) = batch_rx.recv().await {
                if forward.send(Done::Tasks(b)).is_err() {
                    return;
                }
            }
        });
        Worker {
            registry,
            store,
            heartbeat: kept_interval(heartbeat, config.death_timeout),
            death_timeout: config.death_timeout,
            slots: Slots::start(config.slots, batches),
            commands: HashMap::new(),
            peers: HashMap::new(),
            secret: config.cluster.secret.clone(),
            pool: FetchPool::default(),
            done_tx,
            done_rx,
            finished: Vec::new(),
            retiring: false,
            id: None,
            given: FxHashMap::default(),
            recent: VecDeque::new(),
        }
    }

    /// What it tells a scheduler it comes back to (nothing the first time).
    fn resume(&self) -> Option<Box<Resume>> {
        let worker = self.id?;
        let running = self.given.keys().copied().collect();
        let held = self.store.lock().expect("store lock").iter().map(|(id, b)| (*id, b.len() as u64)).collect();
        let (mut finished, mut failed) = (Vec::new(), Vec::new());
        for (_, o) in &self.recent {
            match o {
                Outcome::Finished(f) => finished.push(*f),
                Outcome::Failed(id, e) => failed.push((*id, e.clone())),
            }
        }
        Some(Box::new(Resume { worker, running, held, finished, failed }))
    }

    fn remember(&mut self, id: TaskId, outcome: impl FnOnce() -> Outcome) {
        if self.given.remove(&id) == Some(true) {
            let now = Instant::now();
            while self.recent.front().is_some_and(|(t, _)| now.duration_since(*t) > RESEND) {
                self.recent.pop_front();
            }
            self.recent.push_back((now, outcome()));
        }
    }

    /// Serves one scheduler connection. The first SIGTERM (`term`) retires the worker: it takes
    /// no new task and leaves when its tasks are done; a second one, or losing the scheduler
    /// while retiring, ends it at once.
    async fn serve(&mut self, conn: Connection, term: &mut impl AsyncFnMut()) -> Ended {
        let Connection { tx, mut rx, .. } = conn;
        let (out, out_rx) = mpsc::unbounded_channel::<Frame>();
        let writer = tokio::spawn(rdask_transport::pump(tx, out_rx));
        let mut heartbeat = beats(self.heartbeat, false);
        let mut last_heard = Instant::now();
        let ended = loop {
            tokio::select! {
                frame = rx.recv() => {
                    let frame = match frame {
                        Ok(Some(f)) => f,
                        Ok(None) => break Ended::Lost("the scheduler closed the connection".into()),
                        Err(e) => break Ended::Lost(format!("connection error: {e}")),
                    };
                    last_heard = Instant::now();
                    match protocol::decode::<ToWorker>(&frame.header) {
                        Ok(ToWorker::Stop) => break Ended::Stopped,
                        // Told in answer to a heartbeat just sent: the next one after the new interval.
                        Ok(ToWorker::Pace { heartbeat_ms }) => {
                            self.heartbeat = kept_interval(Duration::from_millis(heartbeat_ms), self.death_timeout);
                            if heartbeat.period() != self.heartbeat {
                                heartbeat = beats(self.heartbeat, true);
                            }
                        }
                        Ok(msg) => self.on_message(msg),
                        Err(e) => break Ended::Lost(format!("bad message from the scheduler: {e}")),
                    }
                }
                Some(done) = self.done_rx.recv() => {
                    self.on_done(done, &out);
                    while let Ok(more) = self.done_rx.try_recv() {
                        self.on_done(more, &out);
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > self.death_timeout {
                        break Ended::Lost(format!("no word from the scheduler for {} s", self.death_timeout.as_secs()));
                    }
                    let load = WorkerLoad { fetched_bytes: self.pool.fetched_bytes(), ..process_load() };
                    let ack = wants_ack(last_heard.elapsed(), self.heartbeat, self.death_timeout);
                    let interval_ms = self.heartbeat.as_millis() as u64;
                    let _ = out.send(protocol::frame(&ToScheduler::Heartbeat { load, ack, interval_ms }));
                }
                _ = term() => {
                    if self.retiring {
                        tracing::info!("second SIGTERM: stopping now");
                        break Ended::Stopped;
                    }
                    tracing::info!("SIGTERM: retiring; finishing the tasks already assigned and handing results over");
                    self.retiring = true;
                    let _ = out.send(protocol::frame(&ToScheduler::Retire));
                }
            }
            if !self.finished.is_empty() {
                let list = std::mem::take(&mut self.finished);
                let _ = out.send(protocol::frame(&ToScheduler::Finished(list)));
            }
        };
        // A retiring worker that loses its scheduler has nothing left to hand over.
        let ended = match ended {
            Ended::Lost(_) if self.retiring => Ended::Stopped,
            other => other,
        };
        if matches!(ended, Ended::Stopped) {
            self.kill_commands();
        }
        drop(out);
        // Let the writer push out what is queued (final results, a goodbye) before leaving.
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
        ended
    }

    fn on_message(&mut self, msg: ToWorker) {
        match msg {
            ToWorker::Welcome { .. } | ToWorker::Ack | ToWorker::Pace { .. } | ToWorker::Stop => {}
            // Sent before the first task with an input the peer holds; a newer address replaces.
            ToWorker::Peers(list) => self.peers.extend(list),
            ToWorker::Command(job, spec) => {
                self.commands.insert(job, Arc::new(spec));
            }
            ToWorker::Compute(list) => {
                for a in list {
                    self.given.insert(a.id, matches!(a.work, Work::Command { .. }));
                    self.prepare(a);
                }
            }
            ToWorker::Release(ids) => {
                let mut store = self.store.lock().expect("store lock");
                for id in ids {
                    store.remove(&id);
                }
            }
            ToWorker::ReleaseJob(job) => {
                self.store.lock().expect("store lock").retain(|id, _| id.job != job);
                self.commands.remove(&job);
            }
            ToWorker::Replicate { from, address, ids } => {
                let (pool, secret, done, store) =
                    (self.pool.clone(), self.secret.clone(), self.done_tx.clone(), self.store.clone());
                tokio::spawn(async move {
                    let ids = match pool.fetch(&secret, &address, &ids).await {
                        Ok(got) => {
                            let mut store = store.lock().expect("store lock");
                            let mut ids = Vec::with_capacity(got.len());
                            for (id, bytes) in got {
                                store.insert(id, bytes);
                                ids.push(id);
                            }
                            ids
                        }
                        Err(e) => {
                            tracing::warn!("copying results from retiring worker {from} failed: {e}");
                            Vec::new()
                        }
                    };
                    let _ = done.send(Done::Replicated { from, ids });
                });
            }
        }
    }

    /// Gathers a task's inputs: local ones now, remote ones by a fetch in the background.
    fn prepare(&mut self, a: Assignment) {
        let mut inputs = Vec::with_capacity(a.inputs.len());
        let mut remote: Vec<(TaskId, String)> = Vec::new();
        {
            let store = self.store.lock().expect("store lock");
            for (id, holder) in &a.inputs {
                if holder.0 == 0 {
                    inputs.push(Bytes::new());
                } else if let Some(b) = store.get(id) {
                    inputs.push(b.clone());
                } else {
                    match self.peers.get(holder) {
                        Some(addr) => remote.push((*id, addr.clone())),
                        None => remote.push((*id, String::new())),
                    }
                    inputs.push(Bytes::new());
                }
            }
        }
        if remote.is_empty() {
            self.start(a, inputs);
            return;
        }
        let pool = self.pool.clone();
        let secret = self.secret.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let result = fetch_all(&pool, &secret, &remote).await;
            let _ = done.send(Done::Fetched { assignment: a, result });
        });
    }

    fn on_done(&mut self, done: Done, out: &mpsc::UnboundedSender<Frame>) {
        match done {
            Done::Tasks(list) => {
                for t in list {
                    match t.result {
                        Ok(bytes) => {
                            let size = bytes.len() as u64;
                            if t.keep {
                                self.store.lock().expect("store lock").insert(t.id, bytes);
                            }
                            let duration_us = t.duration.as_micros().min(u128::from(u32::MAX)) as u32;
                            let f = Finished { id: t.id, size, duration_us };
                            self.remember(t.id, || Outcome::Finished(f));
                            self.finished.push(f);
                        }
                        Err(e) => {
                            // Keep the order: results finished before this failure go first.
                            if !self.finished.is_empty() {
                                let list = std::mem::take(&mut self.finished);
                                let _ = out.send(protocol::frame(&ToScheduler::Finished(list)));
                            }
                            self.remember(t.id, || Outcome::Failed(t.id, e.clone()));
                            let _ = out.send(protocol::frame(&ToScheduler::Failed(t.id, e)));
                        }
                    }
                }
            }
            Done::Replicated { from, ids } => {
                let _ = out.send(protocol::frame(&ToScheduler::Replicated { from, ids }));
            }
            Done::Fetched { assignment, result } => match result {
                Ok(fetched) => {
                    let mut inputs = Vec::with_capacity(assignment.inputs.len());
                    let store = self.store.lock().expect("store lock");
                    for (id, _) in &assignment.inputs {
                        let b = fetched.iter().find(|(f, _)| f == id).map(|(_, b)| b.clone());
                        // Not fetched: local, or a command task's empty result.
                        inputs.push(b.or_else(|| store.get(id).cloned()).unwrap_or_default());
                    }
                    drop(store);
                    self.start(assignment, inputs);
                }
                Err(missing) => {
                    self.given.remove(&assignment.id);
                    let _ = out.send(protocol::frame(&ToScheduler::InputMissing(assignment.id, missing)));
                }
            },
        }
    }

    /// Hands a task whose inputs are all here to the slots.
    fn start(&mut self, assignment: Assignment, inputs: Vec<Bytes>) {
        let id = assignment.id;
        let run = match &assignment.work {
            Work::Function { name, .. } => match self.registry.get(name) {
                Some(f) => Ok(Runner::Function(f)),
                None => Err(TaskError {
                    kind: ErrorKind::UnknownFunction,
                    message: format!(
                        "`{name}` is not registered in this worker's program ({}); start workers from the program that registers it",
                        std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_default()
                    ),
                }),
            },
            Work::Command { .. } => match self.commands.get(&id.job) {
                Some(spec) => Ok(Runner::Command(spec.clone())),
                None => Err(TaskError { kind: ErrorKind::Spawn, message: "no command for this job".into() }),
            },
        };
        match run {
            Ok(run) => self.slots.push([Job { assignment, inputs, run }]),
            Err(e) => {
                let t = TaskDone { id, result: Err(e), duration: Duration::ZERO, keep: false };
                let _ = self.done_tx.send(Done::Tasks(vec![t]));
            }
        }
    }

    /// Kills the process groups of running command tasks.
    fn kill_commands(&mut self) {
        self.slots.close();
        self.slots.children.end_all();
    }
}

/// Serves results to peers and clients.
async fn serve_data(
    mut listener: Box<dyn rdask_transport::Listener>,
    secret: Secret,
    store: Store,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let Ok(mut conn) = listener.accept().await else { continue };
        let secret = secret.clone();
        let store = store.clone();
        tokio::spawn(stop.clone().run_until_cancelled_owned(async move {
            if let Err(e) = auth::accept(&mut conn, &secret).await {
                tracing::warn!("refused a data connection: {e}");
                return;
            }
            while let Ok(Some(frame)) = conn.rx.recv().await {
                let Ok(DataRequest::Fetch(ids)) = protocol::decode(&frame.header) else {
                    tracing::warn!(peer = %conn.peer, "malformed data request; closing the connection");
                    return;
                };
                let found: Vec<(TaskId, Option<Bytes>)> = {
                    let store = store.lock().expect("store lock");
                    ids.into_iter().map(|id| (id, store.get(&id).cloned())).collect()
                };
                for f in reply_frames(found) {
                    if conn.tx.send(f).await.is_err() {
                        return;
                    }
                }
                if conn.tx.flush().await.is_err() {
                    return;
                }
            }
        }));
    }
}

/// Results up to this size travel together in [`DataReply::Batch`] frames of up to `BATCH_BYTES`;
/// larger ones go alone, straight from the store (no copy).
const SMALL: usize = 64 * 1024;
const BATCH_BYTES: usize = 1 << 20;

/// The frames answering a fetch: small results batched (one copy of a few bytes each, instead
/// of a frame each), large ones alone, missing ones named.
fn reply_frames(found: Vec<(TaskId, Option<Bytes>)>) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut ids: Vec<(TaskId, u32)> = Vec::new();
    let mut bytes = bytes::BytesMut::new();
    let flush = |ids: &mut Vec<(TaskId, u32)>, bytes: &mut bytes::BytesMut, frames: &mut Vec<Frame>| {
        if !ids.is_empty() {
            let header = protocol::encode(&DataReply::Batch(std::mem::take(ids)));
            frames.push(Frame::with_payload(header, std::mem::take(bytes).freeze()));
        }
    };
    for (id, data) in found {
        match data {
            Some(b) if b.len() <= SMALL => {
                ids.push((id, b.len() as u32));
                bytes.extend_from_slice(&b);
                if bytes.len() >= BATCH_BYTES {
                    flush(&mut ids, &mut bytes, &mut frames);
                }
            }
            Some(b) => {
                flush(&mut ids, &mut bytes, &mut frames);
                frames.push(Frame::with_payload(protocol::encode(&DataReply::Data(id)), b));
            }
            None => {
                flush(&mut ids, &mut bytes, &mut frames);
                frames.push(protocol::frame(&DataReply::Missing(id)));
            }
        }
    }
    flush(&mut ids, &mut bytes, &mut frames);
    frames
}

/// The interval a worker keeps when the scheduler tells it `told`: at most a quarter of its death
/// timeout, so that at least three heartbeats ask for an answer before it would give up on a
/// silent scheduler (`wants_ack`) however far the scheduler stretches the interval (every
/// heartbeat says the interval it keeps, so the scheduler's deadline follows). Never zero (a
/// timer's period).
pub fn kept_interval(told: Duration, death_timeout: Duration) -> Duration {
    told.min(death_timeout / 4).max(Duration::from_millis(1))
}

/// The heartbeat timer: the first tick at once (`later`: one period from now, the heartbeat
/// that brought a new interval having just gone). A tick missed (a busy runtime) is not made up
/// in a burst: one heartbeat says as much as several.
fn beats(period: Duration, later: bool) -> tokio::time::Interval {
    let start = tokio::time::Instant::now() + if later { period } else { Duration::ZERO };
    let mut timer = tokio::time::interval_at(start, period);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer
}

/// Whether a heartbeat asks the scheduler for an answer ([`ToWorker::Ack`]): once the worker
/// has heard nothing for about half its death timeout (`silent` and one more heartbeat
/// `interval` reach it). A scheduler that sends work or anything else needs no ack, and at rest
/// a worker with the default 60 s death timeout asks about every 30 s instead of every
/// heartbeat; with its interval at most a quarter of the death timeout
/// ([`kept_interval`]), at least three asks, and their answers, fit in before it would give
/// up. With a death timeout under two intervals, every heartbeat asks.
fn wants_ack(silent: Duration, interval: Duration, death_timeout: Duration) -> bool {
    silent + interval >= death_timeout / 2
}

/// This process's resident memory and CPU time (Linux: `/proc/self/stat`; elsewhere zeros).
fn process_load() -> WorkerLoad {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return WorkerLoad::default() };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return WorkerLoad::default() };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat (11 and 12 here), rss field 24 (21 here).
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100).max(1) as u64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096).max(1) as u64;
    WorkerLoad { rss_bytes: num(21) * page, cpu_ms: (num(11) + num(12)) * 1000 / ticks, fetched_bytes: 0 }
}

/// Authenticated data connections to other workers, reused between fetches.
#[derive(Clone, Default)]
pub struct FetchPool {
    idle: Arc<Mutex<HashMap<String, Vec<Connection>>>>,
    /// Payload bytes fetched so far.
    fetched: Arc<std::sync::atomic::AtomicU64>,
}

impl FetchPool {
    /// Payload bytes this pool has fetched so far.
    pub fn fetched_bytes(&self) -> u64 {
        self.fetched.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Fetches `ids` from the worker at `address`; `Err` names the first missing one or the failure.
    pub async fn fetch(&self, secret: &Secret, address: &str, ids: &[TaskId]) -> Result<Vec<(TaskId, Bytes)>, String> {
        let pooled = self.idle.lock().expect("pool lock").get_mut(address).and_then(|v| v.pop());
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                let addr: Address = address.parse().map_err(|e| format!("{e}"))?;
                let mut c = rdask_transport::connect(&addr).await.map_err(|e| format!("{address}: {e}"))?;
                auth::connect(&mut c, secret).await.map_err(|e| e.to_string())?;
                c
            }
        };
        conn.send_now(protocol::frame(&DataRequest::Fetch(ids.to_vec()))).await.map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(ids.len());
        while out.len() < ids.len() {
            let f = conn.recv_some().await.map_err(|e| e.to_string())?;
            match protocol::decode::<DataReply>(&f.header).map_err(|e| e.to_string())? {
                DataReply::Data(id) => out.push((id, f.payload)),
                DataReply::Batch(list) => {
                    let mut at = 0usize;
                    for (id, len) in list {
                        let end = at + len as usize;
                        if end > f.payload.len() {
                            return Err(format!("{address} sent a batch shorter than it announced"));
                        }
                        // Slices share the frame's buffer: no copy.
                        out.push((id, f.payload.slice(at..end)));
                        at = end;
                    }
                }
                DataReply::Missing(id) => return Err(format!("{address} does not hold {id}")),
            }
        }
        if out.len() != ids.len() || out.iter().zip(ids).any(|((got, _), want)| got != want) {
            return Err(format!("{address} answered other tasks than asked"));
        }
        let bytes: u64 = out.iter().map(|(_, b)| b.len() as u64).sum();
        self.fetched.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        self.idle.lock().expect("pool lock").entry(address.to_string()).or_default().push(conn);
        Ok(out)
    }
}

async fn fetch_all(
    pool: &FetchPool,
    secret: &Secret,
    remote: &[(TaskId, String)],
) -> Result<Vec<(TaskId, Bytes)>, TaskId> {
    let mut by_addr: HashMap<&str, Vec<TaskId>> = HashMap::new();
    for (id, addr) in remote {
        if addr.is_empty() {
            return Err(*id);
        }
        by_addr.entry(addr.as_str()).or_default().push(*id);
    }
    let mut out = Vec::new();
    for (addr, ids) in by_addr {
        match pool.fetch(secret, addr, &ids).await {
            Ok(got) => out.extend(got),
            Err(e) => {
                tracing::warn!("fetching inputs from {addr} failed: {e}");
                return Err(ids[0]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::JobId;

    #[test]
    fn heartbeats_ask_for_an_answer_well_before_the_death_timeout() {
        let (s, hb, death) = (Duration::from_secs, Duration::from_secs(1), Duration::from_secs(60));
        assert!(!wants_ack(s(0), hb, death), "just heard from the scheduler: no answer needed");
        assert!(!wants_ack(s(28), hb, death));
        assert!(wants_ack(s(29), hb, death), "half the death timeout is near");
        assert!(wants_ack(s(40), hb, death));
        // Asking starts early enough that many asks precede the death timeout.
        let first = (0..60).find(|t| wants_ack(s(*t), hb, death)).unwrap();
        assert!(60 - first >= 30, "first ask after {first} s of silence");
        // A short death timeout: every heartbeat asks.
        assert!(wants_ack(Duration::ZERO, hb, s(2)));
    }

    #[test]
    fn however_far_the_scheduler_stretches_the_interval_several_heartbeats_ask_before_the_death_timeout() {
        let death = Duration::from_secs(60);
        for told_s in [1, 5, 10, 30, 600] {
            let hb = kept_interval(Duration::from_secs(told_s), death);
            assert!(hb <= Duration::from_secs(told_s), "never slower than told");
            // Heartbeats of a worker hearing nothing: how many ask before it gives up.
            let asks = (1..).map(|k| hb * k).take_while(|t| *t < death).filter(|t| wants_ack(*t, hb, death)).count();
            assert!(asks >= 3, "told {told_s} s: keeps {hb:?}, only {asks} heartbeats ask before {death:?}");
        }
        assert_eq!(kept_interval(Duration::from_secs(5), death), Duration::from_secs(5), "as told when it fits");
        assert!(!kept_interval(Duration::ZERO, death).is_zero(), "a timer needs a period");
    }

    #[test]
    fn reply_frames_batch_small_results_and_keep_order() {
        let id = |i| TaskId { job: JobId(1), index: i };
        let big = Bytes::from(vec![7u8; SMALL + 1]);
        let found = vec![
            (id(0), Some(Bytes::from_static(b"a"))),
            (id(1), Some(Bytes::from_static(b"bc"))),
            (id(2), Some(big.clone())),
            (id(3), Some(Bytes::new())),
            (id(4), None),
        ];
        let frames = reply_frames(found);
        let decoded: Vec<DataReply> = frames.iter().map(|f| protocol::decode(&f.header).unwrap()).collect();
        assert_eq!(
            decoded,
            vec![
                DataReply::Batch(vec![(id(0), 1), (id(1), 2)]),
                DataReply::Data(id(2)),
                DataReply::Batch(vec![(id(3), 0)]),
                DataReply::Missing(id(4)),
            ]
        );
        assert_eq!(frames[0].payload.as_ref(), b"abc");
        assert_eq!(frames[1].payload, big);
    }
}
