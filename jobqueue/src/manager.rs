//! Adaptive scaling as the scheduler's manager loop carries it out: observe, let the policy
//! ([`crate::adapt`]) decide, submit, cancel or retire, and write what it did for `status`.
//!
//! `adapt` (or `up --adapt-max`) writes the settings to the cluster's `adapt.json`; the loop
//! reads it every interval, so `adapt` changes a running cluster and `scale` (which removes the
//! file) turns adaptivity off. Retiring a job is graceful: its workers are retired through the
//! scheduler (idle ones only, all of the job's or none), hand their results over and exit;
//! once none of them is left the job is cancelled, in case its script is still running.
//! On the local backend the same loop adds and removes single worker processes ([`Units`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use rdask::protocol::{ClusterStatus, WorkerStatus};
use rdask::Client;
use serde::{Deserialize, Serialize};

use crate::adapt::{AdaptSpec, Decision, JobShape, JobView, Observation, Policy, WorkerView};
use crate::backend::{self, BatchBackend};
use crate::jobs::JobState;
use crate::local::LocalBackend;
use crate::state::StateDir;

/// What adaptive scaling adds and removes: batch jobs, or local worker processes.
pub trait Units: Send + 'static {
    /// What one unit is called, in the plural, for `status`.
    const NAME: &'static str;
    /// The active units of `pool`, oldest first: their ids, and whether each is still queued.
    fn active(&mut self, pool: &str) -> Vec<(String, bool)>;
    /// Starts one more unit of `pool`.
    fn add(&mut self, pool: &str) -> Result<()>;
    /// Ends these units (queued ones, or ones whose workers have left).
    fn end(&mut self, ids: &[String]) -> Result<()>;
    /// Whether `worker` runs in unit `id`.
    fn holds(id: &str, worker: &WorkerStatus) -> bool;
}

impl Units for BatchBackend {
    const NAME: &'static str = "batch jobs";
    fn active(&mut self, pool: &str) -> Vec<(String, bool)> {
        self.jobs()
            .iter()
            .filter(|j| j.pool == pool && j.state.is_active())
            .map(|j| (j.id.clone(), j.state == JobState::Pending))
            .collect()
    }

    fn add(&mut self, pool: &str) -> Result<()> {
        self.submit(pool, 1).map(|_| ())
    }

    fn end(&mut self, ids: &[String]) -> Result<()> {
        self.cancel(ids)
    }

    fn holds(id: &str, worker: &WorkerStatus) -> bool {
        worker.info.launch.as_deref().is_some_and(|b| backend::same_job(id, b))
    }
}

/// Local workers are units of one worker, named by their pid.
impl Units for LocalBackend {
    const NAME: &'static str = "local workers";
    fn active(&mut self, _pool: &str) -> Vec<(String, bool)> {
        self.live().into_iter().map(|pid| (pid.to_string(), false)).collect()
    }

    fn add(&mut self, _pool: &str) -> Result<()> {
        self.add_one()
    }

    fn end(&mut self, ids: &[String]) -> Result<()> {
        let pids: Vec<u32> = ids.iter().filter_map(|id| id.parse().ok()).collect();
        self.terminate(&pids);
        Ok(())
    }

    fn holds(id: &str, worker: &WorkerStatus) -> bool {
        worker.info.launch.is_none() && worker.info.pid.to_string() == id
    }
}

/// The adaptive settings of a cluster, written by `adapt`.
pub const ADAPT_FILE: &str = "adapt.json";
/// The last decision, for `status`.
pub const ADAPT_STATUS_FILE: &str = "adapt-status.json";

/// Turns adaptive scaling on with `spec`, or off with `None`, for the cluster in `state`:
/// the Rust form of `rdask-jobqueue adapt`. Its scheduler picks the change up at its next interval.
pub fn set_adaptive(state: &StateDir, spec: Option<&AdaptSpec>) -> Result<()> {
    let path = state.file(ADAPT_FILE);
    match spec {
        Some(s) => {
            s.check().map_err(anyhow::Error::msg)?;
            let tmp = state.file(".adapt.json.tmp");
            std::fs::write(&tmp, serde_json::to_string_pretty(s)?)?;
            std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(state.file(ADAPT_STATUS_FILE));
        }
    }
    Ok(())
}

/// [`set_adaptive`] for the cluster called `name` (under `home`, `$RDASK_HOME` or `~/.rdask`),
/// which must be up:
///
/// ```no_run
/// use rdask_jobqueue::adapt::AdaptSpec;
/// // Between 0 and 10 jobs, finishing queued work within 30 s.
/// let spec = AdaptSpec { target_duration: 30.0, ..AdaptSpec::new(0, 10) };
/// rdask_jobqueue::manager::adapt_cluster(None, "default", Some(&spec)).unwrap();
/// ```
pub fn adapt_cluster(home: Option<&std::path::Path>, name: &str, spec: Option<&AdaptSpec>) -> Result<()> {
    let home = home.map(std::path::Path::to_path_buf).or_else(|| std::env::var_os("RDASK_HOME").map(Into::into));
    let state = StateDir::locate(home.as_deref(), name)?;
    if rdask::cluster::SchedulerFile::read(&state.path).is_err() {
        anyhow::bail!(
            "cluster `{name}` is not up (no scheduler in {}); start it with `rdask-jobqueue up`",
            state.path.display()
        );
    }
    set_adaptive(&state, spec)
}

/// The cluster's adaptive settings, if it adapts.
pub fn read_spec(state: &StateDir) -> Option<AdaptSpec> {
    serde_json::from_str(&std::fs::read_to_string(state.file(ADAPT_FILE)).ok()?).ok()
}

/// What `status` shows of adaptive scaling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaptStatus {
    /// The settings.
    pub spec: AdaptSpec,
    /// What is scaled: `batch jobs` or `local workers`.
    pub unit: String,
    /// The number of jobs wanted.
    pub target: u32,
    /// Why.
    pub reason: String,
    /// Active jobs (pending and running).
    pub jobs: u32,
    /// Of which pending.
    pub pending: u32,
    /// Submission paused after repeated failures.
    pub paused: bool,
    /// When this was decided (seconds since the Unix epoch).
    pub updated: u64,
}

/// Reads the last adaptive decision, if the cluster adapts.
pub fn read_status(state: &StateDir) -> Option<AdaptStatus> {
    read_spec(state)?;
    serde_json::from_str(&std::fs::read_to_string(state.file(ADAPT_STATUS_FILE)).ok()?).ok()
}

/// The adaptive loop's state.
pub struct Adaptive {
    policy: Policy,
    pool: String,
    /// Jobs whose workers were told to retire, and when.
    retiring: HashMap<String, Instant>,
    /// Jobs known to have had a worker, at the last step.
    started: usize,
    last_reason: String,
}

impl Adaptive {
    /// Adaptive scaling of `pool`, whose jobs have `shape`.
    pub fn new(spec: AdaptSpec, shape: JobShape, pool: &str) -> Adaptive {
        tracing::info!(min = spec.min_jobs, max = spec.max_jobs, "adaptive scaling on");
        Adaptive {
            policy: Policy::new(spec, shape),
            pool: pool.to_string(),
            retiring: HashMap::new(),
            started: 0,
            last_reason: String::new(),
        }
    }

    /// The settings.
    pub fn spec(&self) -> &AdaptSpec {
        &self.policy.spec
    }

    /// One interval: `failed_starts` are jobs that ended before their worker joined (found by
    /// the poll that just ran), `had_worker` the jobs that have ever had one.
    pub async fn step<U: Units>(
        &mut self,
        state: &StateDir,
        backend: &Arc<Mutex<U>>,
        client: &Client,
        status: &ClusterStatus,
        had_worker: &HashSet<String>,
        failed_starts: &[String],
    ) {
        let now = Instant::now();
        for id in failed_starts {
            self.policy.failed(now, &format!("batch job {id} ended before its worker joined"));
        }
        if had_worker.len() > self.started {
            self.policy.succeeded();
        }
        self.started = had_worker.len();

        let jobs = backend.lock().expect("backend lock").active(&self.pool);
        let obs = observe::<U>(&jobs, status);
        let decision = self.policy.decide(now, &obs);
        if decision.reason != self.last_reason {
            tracing::info!(target = decision.target, "adaptive: {}", decision.reason);
            self.last_reason.clone_from(&decision.reason);
        }
        self.carry_out(now, backend, client, status, &decision).await;
        let mut reason = decision.reason.clone();
        if self.policy.paused() && !reason.contains("PAUSED") {
            // Paused by this very step's failure.
            reason += &self.policy.pause_note();
        }
        // The jobs as they are now, after this step's submissions and cancellations.
        let after = backend.lock().expect("backend lock").active(&self.pool);
        let pending = after.iter().filter(|(_, pending)| *pending).count() as u32;
        let updated = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let s = AdaptStatus {
            spec: self.policy.spec.clone(),
            unit: U::NAME.to_string(),
            target: decision.target,
            reason,
            jobs: after.len() as u32,
            pending,
            paused: self.policy.paused(),
            updated,
        };
        let tmp = state.file(".adapt-status.json.tmp");
        if std::fs::write(&tmp, serde_json::to_string_pretty(&s).expect("serialisable")).is_ok() {
            let _ = std::fs::rename(tmp, state.file(ADAPT_STATUS_FILE));
        }
    }

    async fn carry_out<U: Units>(
        &mut self,
        now: Instant,
        backend: &Arc<Mutex<U>>,
        client: &Client,
        status: &ClusterStatus,
        d: &Decision,
    ) {
        // Submissions and cancellations call the batch system: off the async threads.
        let (b, pool, n, cancel) = (backend.clone(), self.pool.clone(), d.submit, d.cancel.clone());
        let errors = tokio::task::spawn_blocking(move || {
            let mut b = b.lock().expect("backend lock");
            let mut errors = Vec::new();
            for _ in 0..n {
                if let Err(e) = b.add(&pool) {
                    errors.push(format!("{e:#}"));
                    break;
                }
            }
            if !cancel.is_empty() {
                tracing::info!(jobs = ?cancel, "adaptive: cancelling surplus pending jobs");
                if let Err(e) = b.end(&cancel) {
                    tracing::warn!("cancelling surplus jobs failed: {e:#}");
                }
            }
            errors
        })
        .await
        .unwrap_or_else(|e| vec![format!("submission panicked: {e}")]);
        for e in errors {
            tracing::warn!("adaptive submission failed: {e}");
            self.policy.failed(now, &e);
        }
        for job in &d.retire {
            let workers: Vec<_> = workers_of::<U>(status, job).map(|w| w.id).collect();
            match client.retire(workers).await {
                Ok(Ok(())) => {
                    tracing::info!(job, "adaptive: retiring the workers of an idle job");
                    self.retiring.insert(job.clone(), now);
                }
                Ok(Err(why)) => tracing::debug!(job, "not retired: {why}"),
                Err(e) => tracing::warn!(job, "retiring failed: {e}"),
            }
        }
        // A retired job whose workers have all left is over: make sure its script is too.
        let gone: Vec<String> =
            self.retiring.keys().filter(|job| workers_of::<U>(status, job).next().is_none()).cloned().collect();
        if !gone.is_empty() {
            let (b, pool) = (backend.clone(), self.pool.clone());
            let ids = gone.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let mut b = b.lock().expect("backend lock");
                let active: Vec<String> =
                    b.active(&pool).into_iter().map(|(id, _)| id).filter(|id| ids.contains(id)).collect();
                if !active.is_empty() {
                    if let Err(e) = b.end(&active) {
                        tracing::warn!("ending retired jobs failed: {e:#}");
                    }
                }
            })
            .await;
            for j in gone {
                self.retiring.remove(&j);
            }
        }
        // Jobs retired long ago whose workers never left are looked at again next time.
        self.retiring.retain(|_, since| now.duration_since(*since) < Duration::from_secs(600));
    }
}

fn workers_of<'a, U: Units>(status: &'a ClusterStatus, job: &'a str) -> impl Iterator<Item = &'a WorkerStatus> {
    status.workers.iter().filter(move |w| U::holds(job, w))
}

/// The policy's view of the cluster: its active units, oldest first, with their workers.
fn observe<U: Units>(jobs: &[(String, bool)], status: &ClusterStatus) -> Observation {
    let jobs = jobs
        .iter()
        .map(|(id, pending)| JobView {
            id: id.clone(),
            pending: *pending,
            workers: workers_of::<U>(status, id)
                .map(|w| WorkerView {
                    id: w.id,
                    busy: w.assigned > 0,
                    retiring: w.retiring,
                    ends_in: w.ends_in_ms.map(Duration::from_millis),
                })
                .collect(),
        })
        .collect();
    Observation { load: status.load.clone(), jobs }
}
