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
use tokio::sync::mpsc;

use crate::cluster::ClusterInfo;
use crate::protocol::{
    self, Assignment, CommandSpec, DataReply, DataRequest, ErrorKind, Finished, JobId, TaskError, TaskId, ToScheduler,
    ToWorker, Work, WorkerId, WorkerInfo,
};
use crate::registry::Registry;

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
}

impl WorkerConfig {
    /// Defaults for a cluster: one slot per CPU, a 60 s death timeout.
    pub fn new(cluster: ClusterInfo) -> WorkerConfig {
        let slots = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(u16::MAX as usize) as u16;
        WorkerConfig { cluster, slots, death_timeout: Duration::from_secs(60), listen_host: "0.0.0.0".into() }
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

type Store = Arc<Mutex<HashMap<TaskId, Bytes>>>;

enum Done {
    /// A task ended; a command task leaves no result to keep.
    Task { id: TaskId, cpus: u16, result: Result<Bytes, TaskError>, duration: Duration, keep: bool },
    /// The inputs of a task arrived (or could not be had).
    Fetched { assignment: Assignment, result: Result<Vec<(TaskId, Bytes)>, TaskId> },
}

struct Job {
    assignment: Assignment,
    inputs: Vec<Bytes>,
}

/// Runs a worker until the scheduler stops it (`Ok`) or is gone for the death timeout.
pub async fn run(config: WorkerConfig, registry: Arc<Registry>) -> Result<(), WorkerError> {
    let store: Store = Arc::default();
    let data_listener = rdask_transport::listen(&Address {
        scheme: rdask_transport::Scheme::Tcp,
        host_port: format!("{}:0", config.listen_host),
    })
    .await
    .map_err(|source| WorkerError::Listen { host: config.listen_host.clone(), source })?;
    let data_port = data_listener.local_addr().host_port.rsplit_once(':').map(|(_, p)| p.to_string());
    let data_port = data_port.expect("a listener's address has a port");
    tokio::spawn(serve_data(data_listener, config.cluster.secret.clone(), store.clone()));

    let mut lost_since = Instant::now();
    let mut last_error;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        match connect(&config, &data_port).await {
            Ok((conn, id, hb)) => {
                tracing::info!(worker = %id, "connected to the scheduler");
                let mut w = Worker::new(&config, registry.clone(), store.clone(), hb);
                match w.serve(conn, sigterm.as_mut()).await {
                    Ended::Stopped => return Ok(()),
                    Ended::Lost(e) => {
                        tracing::warn!("lost the scheduler: {e}; reconnecting until the death timeout");
                        w.kill_commands();
                        store.lock().expect("store lock").clear();
                        last_error = e;
                        lost_since = Instant::now();
                    }
                }
            }
            Err(e) => last_error = e,
        }
        if lost_since.elapsed() >= config.death_timeout {
            let addresses = config.cluster.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ");
            return Err(WorkerError::DeathTimeout {
                addresses,
                secs: config.death_timeout.as_secs(),
                last: last_error,
            });
        }
        let left = config.death_timeout.saturating_sub(lost_since.elapsed());
        tokio::time::sleep(left.min(Duration::from_millis(500))).await;
    }
}

async fn connect(config: &WorkerConfig, data_port: &str) -> Result<(Connection, WorkerId, Duration), String> {
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
                batch_job: batch_job_id(),
                data_address: format!("tcp://{ip}:{data_port}"),
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

/// The batch job this process runs in, if any.
pub fn batch_job_id() -> Option<String> {
    ["SLURM_JOB_ID", "PBS_JOBID", "JOB_ID"].iter().find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
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
    slots: u32,
    free: u32,
    runnable: VecDeque<Job>,
    commands: HashMap<JobId, Arc<CommandSpec>>,
    peers: HashMap<WorkerId, String>,
    secret: Secret,
    pool: FetchPool,
    threads: std::sync::mpsc::Sender<(Job, Arc<crate::registry::TaskFn>)>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    children: Arc<Mutex<Vec<i32>>>,
    finished: Vec<Finished>,
    retiring: bool,
    in_flight: usize,
}

impl Worker {
    fn new(config: &WorkerConfig, registry: Arc<Registry>, store: Store, heartbeat: Duration) -> Worker {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (threads, jobs) = std::sync::mpsc::channel::<(Job, Arc<crate::registry::TaskFn>)>();
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..config.slots.max(1) {
            let jobs = jobs.clone();
            let done = done_tx.clone();
            std::thread::Builder::new()
                .name(format!("rdask-task-{i}"))
                .spawn(move || function_thread(&jobs, &done))
                .expect("spawning a task thread");
        }
        Worker {
            registry,
            store,
            heartbeat,
            death_timeout: config.death_timeout,
            slots: u32::from(config.slots.max(1)),
            free: u32::from(config.slots.max(1)),
            runnable: VecDeque::new(),
            commands: HashMap::new(),
            peers: HashMap::new(),
            secret: config.cluster.secret.clone(),
            pool: FetchPool::default(),
            threads,
            done_tx,
            done_rx,
            children: Arc::default(),
            finished: Vec::new(),
            retiring: false,
            in_flight: 0,
        }
    }

    async fn serve(&mut self, conn: Connection, mut sigterm: Option<&mut tokio::signal::unix::Signal>) -> Ended {
        let Connection { tx, mut rx, .. } = conn;
        let (out, out_rx) = mpsc::unbounded_channel::<Frame>();
        let writer = tokio::spawn(rdask_transport::pump(tx, out_rx));
        let mut heartbeat = tokio::time::interval(self.heartbeat);
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
                    let _ = out.send(protocol::frame(&ToScheduler::Heartbeat));
                }
                _ = async { sigterm.as_mut().expect("guarded").recv().await }, if sigterm.is_some() && !self.retiring => {
                    tracing::info!("SIGTERM: retiring; finishing the tasks already assigned");
                    self.retiring = true;
                    let _ = out.send(protocol::frame(&ToScheduler::Retire));
                }
            }
            self.dispatch();
            if !self.finished.is_empty() {
                let list = std::mem::take(&mut self.finished);
                let _ = out.send(protocol::frame(&ToScheduler::Finished(list)));
            }
            if self.retiring && self.in_flight == 0 && self.runnable.is_empty() {
                break Ended::Stopped;
            }
        };
        self.kill_commands();
        drop(out);
        // Let the writer push out what is queued (final results, a goodbye) before leaving.
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
        ended
    }

    fn on_message(&mut self, msg: ToWorker) {
        match msg {
            ToWorker::Welcome { .. } | ToWorker::Ack | ToWorker::Stop => {}
            ToWorker::Peers(list) => self.peers.extend(list),
            ToWorker::Command(job, spec) => {
                self.commands.insert(job, Arc::new(spec));
            }
            ToWorker::Compute(list) => {
                for a in list {
                    self.in_flight += 1;
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
            self.runnable.push_back(Job { assignment: a, inputs });
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
            Done::Task { id, cpus, result, duration, keep } => {
                self.free = (self.free + u32::from(cpus)).min(self.slots);
                self.in_flight -= 1;
                match result {
                    Ok(bytes) => {
                        let size = bytes.len() as u64;
                        if keep {
                            self.store.lock().expect("store lock").insert(id, bytes);
                        }
                        let duration_us = duration.as_micros().min(u128::from(u32::MAX)) as u32;
                        self.finished.push(Finished { id, size, duration_us });
                    }
                    Err(e) => {
                        // Keep the order: results finished before this failure go first.
                        if !self.finished.is_empty() {
                            let list = std::mem::take(&mut self.finished);
                            let _ = out.send(protocol::frame(&ToScheduler::Finished(list)));
                        }
                        let _ = out.send(protocol::frame(&ToScheduler::Failed(id, e)));
                    }
                }
            }
            Done::Fetched { assignment, result } => match result {
                Ok(fetched) => {
                    let mut inputs = Vec::with_capacity(assignment.inputs.len());
                    let store = self.store.lock().expect("store lock");
                    for (id, holder) in &assignment.inputs {
                        let b = fetched.iter().find(|(f, _)| f == id).map(|(_, b)| b.clone());
                        inputs.push(b.or_else(|| store.get(id).cloned()).unwrap_or_else(|| {
                            debug_assert_eq!(holder.0, 0);
                            Bytes::new()
                        }));
                    }
                    drop(store);
                    self.runnable.push_back(Job { assignment, inputs });
                }
                Err(missing) => {
                    self.in_flight -= 1;
                    let _ = out.send(protocol::frame(&ToScheduler::InputMissing(assignment.id, missing)));
                }
            },
        }
    }

    /// Starts runnable tasks while slots are free.
    fn dispatch(&mut self) {
        while let Some(job) = self.runnable.front() {
            let cpus = u32::from(job.assignment.cpus).min(u32::from(u16::MAX));
            // A task wider than the worker runs alone rather than never.
            if cpus > self.free && self.free < self.slots {
                break;
            }
            let job = self.runnable.pop_front().expect("peeked");
            self.free = self.free.saturating_sub(cpus);
            let id = job.assignment.id;
            let cpus = job.assignment.cpus;
            match &job.assignment.work {
                Work::Function { name, .. } => match self.registry.get(name) {
                    Some(f) => {
                        let _ = self.threads.send((job, f));
                    }
                    None => {
                        let e = TaskError {
                            kind: ErrorKind::UnknownFunction,
                            message: format!(
                                "`{name}` is not registered in this worker's program ({}); start workers from the program that registers it",
                                std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_default()
                            ),
                        };
                        let done = Done::Task { id, cpus, result: Err(e), duration: Duration::ZERO, keep: true };
                        let _ = self.done_tx.send(done);
                    }
                },
                Work::Command { array_id } => {
                    let spec = self.commands.get(&id.job).cloned();
                    let done = self.done_tx.clone();
                    let children = self.children.clone();
                    let array_id = *array_id;
                    tokio::spawn(async move {
                        let start = Instant::now();
                        let result = match spec {
                            Some(spec) => run_command(&spec, id, array_id, &children).await,
                            None => {
                                Err(TaskError { kind: ErrorKind::Spawn, message: "no command for this job".into() })
                            }
                        };
                        let _ = done.send(Done::Task { id, cpus, result, duration: start.elapsed(), keep: false });
                    });
                }
            }
        }
    }

    /// Kills the process groups of running command tasks.
    fn kill_commands(&mut self) {
        let pids = std::mem::take(&mut *self.children.lock().expect("children lock"));
        kill_groups(&pids);
    }
}

fn kill_groups(pids: &[i32]) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    for &pid in pids {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
    }
    if !pids.is_empty() {
        std::thread::sleep(Duration::from_millis(200));
        for &pid in pids {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

fn function_thread(
    jobs: &Mutex<std::sync::mpsc::Receiver<(Job, Arc<crate::registry::TaskFn>)>>,
    done: &mpsc::UnboundedSender<Done>,
) {
    loop {
        let next = jobs.lock().expect("job queue lock").recv();
        let Ok((job, f)) = next else { return };
        let start = Instant::now();
        let Work::Function { args, .. } = &job.assignment.work else { continue };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(args, &job.inputs)));
        let result = match outcome {
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
        };
        let id = job.assignment.id;
        let cpus = job.assignment.cpus;
        if done.send(Done::Task { id, cpus, result, duration: start.elapsed(), keep: true }).is_err() {
            return;
        }
    }
}

/// Replaces `%{TASK_ID}` and `%{JOB_ID}`.
pub fn substitute(s: &str, job: JobId, array_id: u32) -> String {
    s.replace("%{TASK_ID}", &array_id.to_string()).replace("%{JOB_ID}", &job.0.to_string())
}

async fn run_command(
    spec: &CommandSpec,
    id: TaskId,
    array_id: u32,
    children: &Mutex<Vec<i32>>,
) -> Result<Bytes, TaskError> {
    use std::process::Stdio;
    let sub = |s: &str| substitute(s, id.job, array_id);
    let spawn_err = |message: String| TaskError { kind: ErrorKind::Spawn, message };
    let Some(program) = spec.argv.first() else { return Err(spawn_err("empty command".into())) };
    let mut cmd = tokio::process::Command::new(sub(program));
    cmd.args(spec.argv[1..].iter().map(|a| sub(a)));
    cmd.env("RDASK_TASK_ID", array_id.to_string()).env("RDASK_JOB_ID", id.job.0.to_string());
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(sub(cwd));
    }
    let open = |path: &Option<String>| -> Result<(Stdio, Option<String>), TaskError> {
        match path {
            None => Ok((Stdio::null(), None)),
            Some(p) => {
                let p = sub(p);
                if let Some(parent) = std::path::Path::new(&p).parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                let f = std::fs::File::create(&p).map_err(|e| spawn_err(format!("cannot create {p}: {e}")))?;
                Ok((Stdio::from(f), Some(p)))
            }
        }
    };
    let (stdout, _) = open(&spec.stdout)?;
    let (stderr, stderr_path) = match &spec.stderr {
        Some(_) => open(&spec.stderr)?,
        // Keep the tail of an otherwise discarded stderr for error messages.
        None => (Stdio::piped(), None),
    };
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr).process_group(0).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| spawn_err(format!("cannot start `{}`: {e}", sub(program))))?;
    let pid = child.id().map(|p| p as i32);
    if let Some(pid) = pid {
        children.lock().expect("children lock").push(pid);
    }
    let tail_task = child.stderr.take().map(|mut s| {
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut tail = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 8192 {
                    tail.drain(..tail.len() - 4096);
                }
            }
            tail
        })
    });
    let status = child.wait().await;
    if let Some(pid) = pid {
        children.lock().expect("children lock").retain(|p| *p != pid);
    }
    let status = status.map_err(|e| spawn_err(format!("waiting for the command failed: {e}")))?;
    if status.success() {
        return Ok(Bytes::new());
    }
    let tail = match (tail_task, stderr_path) {
        (Some(t), _) => t.await.unwrap_or_default(),
        (None, Some(p)) => read_tail(&p),
        (None, None) => Vec::new(),
    };
    let mut message = String::from_utf8_lossy(&tail[tail.len().saturating_sub(2048)..]).trim().to_string();
    if message.is_empty() {
        message = "(no stderr)".into();
    }
    use std::os::unix::process::ExitStatusExt;
    let kind = match (status.code(), status.signal()) {
        (Some(c), _) => ErrorKind::ExitCode(c),
        (None, Some(s)) => ErrorKind::Signal(s),
        _ => ErrorKind::ExitCode(-1),
    };
    Err(TaskError { kind, message })
}

fn read_tail(path: &str) -> Vec<u8> {
    let data = std::fs::read(path).unwrap_or_default();
    data[data.len().saturating_sub(2048)..].to_vec()
}

/// Serves results to peers and clients.
async fn serve_data(mut listener: Box<dyn rdask_transport::Listener>, secret: Secret, store: Store) {
    loop {
        let Ok(mut conn) = listener.accept().await else { continue };
        let secret = secret.clone();
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(e) = auth::accept(&mut conn, &secret).await {
                tracing::warn!("refused a data connection: {e}");
                return;
            }
            while let Ok(Some(frame)) = conn.rx.recv().await {
                let Ok(DataRequest::Fetch(ids)) = protocol::decode(&frame.header) else {
                    tracing::warn!(peer = %conn.peer, "malformed data request; closing the connection");
                    return;
                };
                for id in ids {
                    let data = store.lock().expect("store lock").get(&id).cloned();
                    let f = match data {
                        Some(b) => Frame::with_payload(protocol::encode(&DataReply::Data(id)), b),
                        None => protocol::frame(&DataReply::Missing(id)),
                    };
                    if conn.tx.send(f).await.is_err() {
                        return;
                    }
                }
                if conn.tx.flush().await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Authenticated data connections to other workers, reused between fetches.
#[derive(Clone, Default)]
pub struct FetchPool {
    idle: Arc<Mutex<HashMap<String, Vec<Connection>>>>,
}

impl FetchPool {
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
        for _ in ids {
            let f = conn.recv_some().await.map_err(|e| e.to_string())?;
            match protocol::decode::<DataReply>(&f.header).map_err(|e| e.to_string())? {
                DataReply::Data(id) => out.push((id, f.payload)),
                DataReply::Missing(id) => return Err(format!("{address} does not hold {id}")),
            }
        }
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

    #[test]
    fn substitutes_ids() {
        assert_eq!(substitute("out/%{JOB_ID}-%{TASK_ID}.txt", JobId(3), 17), "out/3-17.txt");
    }
}
