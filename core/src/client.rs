//! The client: submit task graphs and command arrays, wait, gather results.
//!
//! ```no_run
//! # async fn demo(client: rdask::Client) -> Result<(), rdask::ClientError> {
//! let mut g = rdask::Graph::new();
//! let a = g.call("inc", &1u64);
//! let b = g.call("inc", &2u64);
//! let total = g.call_with("sum", &(), &[a, b]);
//! let job = client.submit(g).await?;
//! let [sum]: [u64; 1] = client.gather(&job, &[total]).await?.try_into().unwrap();
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rdask_transport::auth::{self, Secret};
use rdask_transport::Frame;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::cluster::ClusterInfo;
use crate::protocol::{
    self, Cancelled, ClientInfo, ClusterStatus, CommandSpec, Counts, EndedPage, EventPage, JobId, JobOutcome, JobSpec,
    JobTasks, Metrics, Needs, Refusal, Reply, Request, TaskBody, TaskError, TaskId, TaskRef, TaskSpec, ToClient,
    ToScheduler, WorkerId,
};
use crate::worker::FetchPool;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No scheduler answered.
    #[error("cannot reach the scheduler at {addresses}: {last}")]
    Unreachable {
        /// Addresses tried.
        addresses: String,
        /// The last error.
        last: String,
    },
    /// The connection to the scheduler broke.
    #[error("the connection to the scheduler was lost")]
    Disconnected,
    /// The scheduler refused a submission.
    #[error("the scheduler refused the job: {0}")]
    Refused(Refusal),
    /// The job does not exist (any more).
    #[error("no job {0} on this cluster")]
    NoSuchJob(JobId),
    /// A task failed.
    #[error("task {task} {error}")]
    TaskFailed {
        /// The task.
        task: TaskId,
        /// Why.
        error: TaskError,
    },
    /// A result could not be fetched or decoded.
    #[error("result of task {task}: {detail}")]
    Result {
        /// The task.
        task: TaskId,
        /// What went wrong.
        detail: String,
    },
    /// No worker holds the result: it was not kept.
    #[error(
        "result of task {task}: no worker holds it (was it kept? results of tasks that others depend on need \
         `Graph::keep`)"
    )]
    NotKept {
        /// The task.
        task: TaskId,
    },
    /// The scheduler answered something unexpected.
    #[error("unexpected reply from the scheduler: {0}")]
    Protocol(String),
    /// Something did not happen in time.
    #[error("{0}")]
    Timeout(String),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;

/// A connection to a cluster's scheduler.
#[derive(Debug, Clone)]
pub struct Client {
    out: mpsc::UnboundedSender<Frame>,
    pending: Pending,
    next: Arc<AtomicU64>,
    secret: Secret,
    pool: FetchPool,
}

impl std::fmt::Debug for FetchPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FetchPool")
    }
}

/// A task added to a [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskHandle(pub u32);

/// A task graph under construction: function calls and their dependencies.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    functions: Vec<String>,
    index: HashMap<String, u32>,
    tasks: Vec<TaskSpec>,
    has_dependents: Vec<bool>,
    max_attempts: Option<u8>,
    keep_after_disconnect: bool,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    /// Adds a call of the registered function `name` with `args` and no inputs.
    pub fn call<A: Serialize + ?Sized>(&mut self, name: &str, args: &A) -> TaskHandle {
        self.call_with(name, args, &[])
    }

    /// Adds a call of `name` whose inputs are the results of `inputs`, in that order.
    pub fn call_with<A: Serialize + ?Sized>(&mut self, name: &str, args: &A, inputs: &[TaskHandle]) -> TaskHandle {
        let args = postcard::to_stdvec(args).expect("task arguments must be serialisable");
        self.call_raw(name, Bytes::from(args), inputs)
    }

    /// Adds a call with arguments already encoded.
    pub fn call_raw(&mut self, name: &str, args: Bytes, inputs: &[TaskHandle]) -> TaskHandle {
        let func = match self.index.get(name) {
            Some(&f) => f,
            None => {
                let f = self.functions.len() as u32;
                self.functions.push(name.to_string());
                self.index.insert(name.to_string(), f);
                f
            }
        };
        for h in inputs {
            self.has_dependents[h.0 as usize] = true;
        }
        let deps = inputs.iter().map(|h| TaskRef::Local(h.0)).collect();
        self.tasks.push(TaskSpec {
            body: TaskBody::Function { func, args },
            deps,
            keep: false,
            cpus: 1,
            needs: Needs::default(),
        });
        self.has_dependents.push(false);
        TaskHandle(self.tasks.len() as u32 - 1)
    }

    /// Asks for CPUs, GPUs, memory or named resources for a task: it runs only on a worker that
    /// has them free, and holds them while it runs. A need that no worker and no pool could
    /// ever meet makes [`Client::submit`] fail with the reason.
    pub fn needs(&mut self, h: TaskHandle, cpus: u16, needs: Needs) {
        let t = &mut self.tasks[h.0 as usize];
        t.cpus = cpus.max(1);
        t.needs = needs;
    }

    /// Keeps a task's result for the client even though other tasks use it.
    /// (Results of tasks that nothing depends on are always kept.)
    pub fn keep(&mut self, h: TaskHandle) {
        self.tasks[h.0 as usize].keep = true;
    }

    /// Sets how many times a task may be started when workers running it die (default 3).
    pub fn max_attempts(&mut self, n: u8) {
        self.max_attempts = Some(n);
    }

    /// Keeps the job when the submitting client disconnects (by default it is released then):
    /// a client started again, or another one, can wait for it and gather it by its id
    /// (`Job { id }`), and must release it ([`Client::release`]). A scheduler restored from
    /// its journal keeps such a job too, however long its client takes to come back.
    pub fn keep_after_disconnect(&mut self) {
        self.keep_after_disconnect = true;
    }

    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether the graph is empty.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    fn into_spec(mut self, name: &str) -> JobSpec {
        for (t, dependents) in self.tasks.iter_mut().zip(&self.has_dependents) {
            t.keep |= !dependents;
        }
        JobSpec {
            name: name.to_string(),
            functions: self.functions,
            command: None,
            tasks: JobTasks::Graph(self.tasks),
            max_attempts: self.max_attempts.unwrap_or(3),
            release_on_disconnect: !self.keep_after_disconnect,
        }
    }
}

/// The most results one fetch from a worker asks for (gather and `ended_raw` split in chunks).
const FETCH_CHUNK: usize = 65_536;

/// Where each task asked for by a gather goes: its first place in the request, by task index.
///
/// A job's task indices run from 0 to its size, so a vector indexed by them costs one lookup in
/// memory laid out in task order, the order results come back in; a hash map of a million
/// entries would cost a cache miss per lookup (the gather's cost per task grew with the job).
struct Wanted(Vec<u32>);

impl Wanted {
    const NONE: u32 = u32::MAX;

    /// The places of `tasks` in a job of `size` tasks (a handle outside the job is never found).
    fn new(tasks: &[TaskHandle], size: u32) -> Wanted {
        let mut first = vec![Wanted::NONE; size as usize];
        for (i, h) in tasks.iter().enumerate() {
            if let Some(slot) = first.get_mut(h.0 as usize).filter(|s| **s == Wanted::NONE) {
                *slot = i as u32;
            }
        }
        Wanted(first)
    }

    /// The first place of task `index` in the request, if it was asked for.
    fn position(&self, index: u32) -> Option<usize> {
        self.0.get(index as usize).filter(|&&p| p != Wanted::NONE).map(|&p| p as usize)
    }
}

/// A submitted job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// Its id.
    pub id: JobId,
}

impl Client {
    /// Connects to the cluster, trying each scheduler address in turn.
    pub async fn connect(info: &ClusterInfo) -> Result<Client, ClientError> {
        Client::connect_as(info, &ClientInfo::default()).await
    }

    /// Connects saying `role` about itself: with [`ClientInfo::ends_cluster`], the cluster
    /// (`srun … run`, `mpirun … mpi`) ends when this client disconnects.
    pub async fn connect_as(info: &ClusterInfo, role: &ClientInfo) -> Result<Client, ClientError> {
        let mut last = String::from("no address");
        for addr in &info.addresses {
            let attempt = async {
                let mut conn = rdask_transport::connect(addr).await.map_err(|e| format!("{addr}: {e}"))?;
                auth::connect(&mut conn, &info.secret).await.map_err(|e| e.to_string())?;
                conn.send_now(protocol::frame(&ToScheduler::RegisterClient(role.clone())))
                    .await
                    .map_err(|e| e.to_string())?;
                let f = conn.recv_some().await.map_err(|e| e.to_string())?;
                match protocol::decode::<ToClient>(&f.header) {
                    Ok(ToClient::Welcome) => Ok(conn),
                    other => Err(format!("unexpected answer {other:?}")),
                }
            };
            match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                Ok(Ok(conn)) => return Ok(Client::start(conn, info.secret.clone())),
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("{addr}: no answer within 10 s"),
            }
        }
        let addresses = info.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ");
        Err(ClientError::Unreachable { addresses, last })
    }

    fn start(conn: rdask_transport::Connection, secret: Secret) -> Client {
        let rdask_transport::Connection { tx, mut rx, .. } = conn;
        let (out, out_rx) = mpsc::unbounded_channel();
        tokio::spawn(rdask_transport::pump(tx, out_rx));
        let pending: Pending = Arc::default();
        let p = pending.clone();
        tokio::spawn(async move {
            while let Ok(Some(f)) = rx.recv().await {
                match protocol::decode(&f.header) {
                    Ok(ToClient::Reply { req, body }) => {
                        if let Some(tx) = p.lock().expect("pending lock").remove(&req) {
                            let _ = tx.send(body);
                        }
                    }
                    Ok(_) => {}
                    // A reply that cannot be read would leave its request waiting forever.
                    Err(e) => {
                        tracing::error!("cannot read the scheduler's message ({e}); dropping the connection");
                        break;
                    }
                }
            }
            // Dropping the senders wakes every waiting request with `Disconnected`.
            p.lock().expect("pending lock").clear();
        });
        Client { out, pending, next: Arc::new(AtomicU64::new(1)), secret, pool: FetchPool::default() }
    }

    /// Sends a request and waits for its reply.
    pub async fn request(&self, body: Request) -> Result<Reply, ClientError> {
        let req = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(req, tx);
        self.out.send(protocol::frame(&ToScheduler::Request { req, body })).map_err(|_| ClientError::Disconnected)?;
        rx.await.map_err(|_| ClientError::Disconnected)
    }

    /// Submits a graph of function tasks.
    pub async fn submit(&self, graph: Graph) -> Result<Job, ClientError> {
        let id = self.submit_spec(graph.into_spec("graph")).await?;
        Ok(Job { id })
    }

    /// Submits a job described directly.
    pub async fn submit_spec(&self, spec: JobSpec) -> Result<JobId, ClientError> {
        match self.request(Request::Submit(Box::new(spec))).await? {
            Reply::Submitted(id) => Ok(id),
            Reply::Refused(why) => Err(ClientError::Refused(why)),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Submits an array of command tasks.
    pub async fn submit_array(
        &self,
        name: &str,
        command: CommandSpec,
        ranges: Vec<(u32, u32)>,
        cpus: u16,
    ) -> Result<JobId, ClientError> {
        self.submit_array_needing(name, command, ranges, cpus, Needs::default()).await
    }

    /// [`Client::submit_array`], each task also needing `needs` (GPUs, memory, named resources).
    pub async fn submit_array_needing(
        &self,
        name: &str,
        command: CommandSpec,
        ranges: Vec<(u32, u32)>,
        cpus: u16,
        needs: Needs,
    ) -> Result<JobId, ClientError> {
        let spec = JobSpec {
            name: name.to_string(),
            functions: Vec::new(),
            command: Some(command),
            tasks: JobTasks::Array { ranges, cpus, needs },
            max_attempts: 3,
            release_on_disconnect: false,
        };
        self.submit_spec(spec).await
    }

    /// Waits until every task of the job has finished or failed.
    pub async fn wait(&self, job: JobId) -> Result<JobOutcome, ClientError> {
        match self.request(Request::Wait(job)).await? {
            Reply::JobDone(o) => Ok(o),
            Reply::NoSuchJob(j) => Err(ClientError::NoSuchJob(j)),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// A job's task counts now.
    pub async fn progress(&self, job: JobId) -> Result<Counts, ClientError> {
        match self.request(Request::Progress(job)).await? {
            Reply::Progress(c) => Ok(c),
            Reply::NoSuchJob(j) => Err(ClientError::NoSuchJob(j)),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// The cluster's workers and jobs.
    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        match self.request(Request::Status).await? {
            Reply::Status(s) => Ok(s),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// The cluster's events numbered above `after` (0: all it still keeps).
    pub async fn events(&self, after: u64) -> Result<EventPage, ClientError> {
        match self.request(Request::Events { after }).await? {
            Reply::Events(p) => Ok(p),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// The scheduler's counters, and the task stream after `tasks_after`.
    pub async fn metrics(&self, tasks_after: u64) -> Result<Metrics, ClientError> {
        match self.request(Request::Metrics { tasks_after }).await? {
            Reply::Metrics(m) => Ok(*m),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Drops the job's results on the workers once it is done.
    pub async fn release(&self, job: JobId) -> Result<(), ClientError> {
        match self.request(Request::Release(job)).await? {
            Reply::Ok => Ok(()),
            Reply::NoSuchJob(j) => Err(ClientError::NoSuchJob(j)),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Cancels the tasks of `job` that have not started: every one (`tasks: None`) or those
    /// indexes. They fail as [`ErrorKind::Cancelled`](crate::protocol::ErrorKind::Cancelled),
    /// with the tasks that depend on them; tasks already running finish.
    pub async fn cancel(&self, job: JobId, tasks: Option<Vec<u32>>) -> Result<Cancelled, ClientError> {
        match self.request(Request::Cancel { job, tasks }).await? {
            Reply::Cancelled(c) => Ok(c),
            Reply::NoSuchJob(j) => Err(ClientError::NoSuchJob(j)),
            Reply::Refused(why) => Err(ClientError::Refused(why)),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Retires workers gracefully, all or none: `Ok(Err(why))` (and nothing changes) unless every
    /// one is idle and the results only they hold can go to another worker. Retired workers take
    /// no new task, hand their results over and exit.
    pub async fn retire(&self, workers: Vec<WorkerId>) -> Result<Result<(), Refusal>, ClientError> {
        match self.request(Request::Retire(workers)).await? {
            Reply::Ok => Ok(Ok(())),
            Reply::Refused(why) => Ok(Err(why)),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Asks the cluster's provisioner to scale or adapt: its answer in words, or why not
    /// ([`RefusalKind::Unsupported`](crate::protocol::RefusalKind) where the cluster has no
    /// provisioner, as under `mpirun`).
    pub async fn control(&self, body: crate::protocol::ControlRequest) -> Result<Result<String, Refusal>, ClientError> {
        match self.request(Request::Control(body)).await? {
            Reply::Control(text) => Ok(Ok(text)),
            Reply::Refused(why) => Ok(Err(why)),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Stops the cluster: workers, then the scheduler.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        match self.request(Request::Shutdown).await {
            Ok(Reply::Ok) | Err(ClientError::Disconnected) => Ok(()),
            Ok(other) => Err(ClientError::Protocol(format!("{other:?}"))),
            Err(e) => Err(e),
        }
    }

    /// Waits for the job and returns the encoded results of `tasks`, in order.
    ///
    /// A result whose worker vanished between the job's end and the fetch is recomputed by
    /// the scheduler; the gather then waits for it and tries again (a few times).
    pub async fn gather_raw(&self, job: &Job, tasks: &[TaskHandle]) -> Result<Vec<Bytes>, ClientError> {
        let mut attempt = 0u64;
        loop {
            match self.gather_once(job, tasks).await {
                Err(ClientError::Result { task, detail }) if attempt < 5 => {
                    attempt += 1;
                    tracing::debug!(%task, "fetch failed ({detail}); waiting for the result to be recomputed");
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn gather_once(&self, job: &Job, tasks: &[TaskHandle]) -> Result<Vec<Bytes>, ClientError> {
        let outcome = self.wait(job.id).await?;
        let wanted = Wanted::new(tasks, outcome.tasks);
        if let Some((i, e)) = outcome.failed.iter().find(|(i, _)| wanted.position(*i).is_some()) {
            return Err(ClientError::TaskFailed { task: TaskId { job: job.id, index: *i }, error: e.clone() });
        }
        let mut out = vec![None; tasks.len()];
        for h in &outcome.holdings {
            let ids: Vec<TaskId> = h
                .tasks
                .iter()
                .filter(|i| wanted.position(**i).is_some())
                .map(|&index| TaskId { job: job.id, index })
                .collect();
            for chunk in ids.chunks(FETCH_CHUNK) {
                let got = self
                    .pool
                    .fetch(&self.secret, &h.address, chunk)
                    .await
                    .map_err(|detail| ClientError::Result { task: chunk[0], detail })?;
                for (id, b) in got {
                    if let Some(p) = wanted.position(id.index) {
                        out[p] = Some(b);
                    }
                }
            }
        }
        // A task asked for twice is fetched once; its later places get the same bytes.
        for (i, h) in tasks.iter().enumerate() {
            if let Some(first) = wanted.position(h.0).filter(|&p| p != i) {
                out[i] = out[first].clone();
            }
        }
        out.into_iter()
            .zip(tasks)
            .map(|(b, h)| b.ok_or(ClientError::NotKept { task: TaskId { job: job.id, index: h.0 } }))
            .collect()
    }

    /// The tasks of `job` that ended from the `after`-th on (see [`Request::Ended`]), and with
    /// `fetch` the results of those kept, fetched from their workers. A result whose worker
    /// cannot be reached is left out: the job's own end (`gather`) brings it.
    pub async fn ended_raw(
        &self,
        job: JobId,
        after: u32,
        fetch: bool,
    ) -> Result<(EndedPage, Vec<(u32, Bytes)>), ClientError> {
        let page = match self.request(Request::Ended { job, after }).await? {
            Reply::Ended(page) => page,
            Reply::NoSuchJob(j) => return Err(ClientError::NoSuchJob(j)),
            other => return Err(ClientError::Protocol(format!("{other:?}"))),
        };
        let mut results = Vec::new();
        for h in page.holdings.iter().filter(|_| fetch) {
            let ids: Vec<TaskId> = h.tasks.iter().map(|&index| TaskId { job, index }).collect();
            for chunk in ids.chunks(FETCH_CHUNK) {
                match self.pool.fetch(&self.secret, &h.address, chunk).await {
                    Ok(got) => results.extend(got.into_iter().map(|(id, b)| (id.index, b))),
                    Err(detail) => tracing::debug!(worker = %h.worker, "cannot fetch ended results yet: {detail}"),
                }
            }
        }
        Ok((page, results))
    }

    /// Waits for the job and returns the decoded results of `tasks`, in order.
    pub async fn gather<R: DeserializeOwned>(&self, job: &Job, tasks: &[TaskHandle]) -> Result<Vec<R>, ClientError> {
        let raw = self.gather_raw(job, tasks).await?;
        raw.iter()
            .zip(tasks)
            .map(|(b, h)| {
                postcard::from_bytes(b).map_err(|e| ClientError::Result {
                    task: TaskId { job: job.id, index: h.0 },
                    detail: format!("cannot decode as {}: {e}", std::any::type_name::<R>()),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_finds_each_task_at_its_first_place_and_nothing_outside_the_job() {
        let w = Wanted::new(&[TaskHandle(3), TaskHandle(0), TaskHandle(3), TaskHandle(9)], 5);
        assert_eq!(w.position(3), Some(0), "a task asked twice goes first where it was asked first");
        assert_eq!(w.position(0), Some(1));
        assert_eq!(w.position(1), None, "a task not asked for is not wanted");
        assert_eq!(w.position(9), None, "a handle beyond the job's size is no task of it");
        assert_eq!(w.position(u32::MAX), None);
    }
}
