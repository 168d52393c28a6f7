//! The batch backend: worker jobs submitted to Slurm, PBS or SGE, tracked and cancelled.
//!
//! Every job id is written to the cluster's journal before anything else happens
//! to it, so that `down` can cancel it even if the scheduler was killed. The
//! states of all the cluster's jobs are polled in one batch-system call and
//! written to `batch-jobs.json` for `status`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::batch::{self, JobParams, System};
use crate::jobs::{BatchSystem, Commands, JobState, Pbs, Sge, Slurm};
use crate::state::StateDir;

/// A batch job of the cluster, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchJob {
    /// The batch system's id.
    pub id: String,
    /// Its last known state.
    pub state: JobState,
    /// The worker pool it belongs to.
    #[serde(default = "default_pool")]
    pub pool: String,
    /// Why it ended early, when it ended before any worker of it joined (its stderr's tail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The name of the pool that the main options describe.
pub const DEFAULT_POOL: &str = "default";

fn default_pool() -> String {
    DEFAULT_POOL.to_string()
}

/// A named group of identical worker jobs (its own queue, resources, script).
#[derive(Clone, Debug)]
pub struct Pool {
    /// Its name (`default` for the main options).
    pub name: String,
    /// The job script its jobs run.
    pub script: String,
}

/// What `down` needs to cancel a cluster's jobs without its scheduler: `backend.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendFile {
    /// The batch system.
    pub system: System,
    /// Its commands.
    pub commands: Commands,
}

/// The default commands of a batch system.
pub fn default_commands(system: System) -> Commands {
    match system {
        System::Slurm => Slurm::default().0,
        System::Pbs => Pbs::default().0,
        System::Sge => Sge::default().0,
    }
}

/// The implementation of `system` with `commands`.
pub fn batch_system(system: System, commands: Commands) -> Box<dyn BatchSystem> {
    match system {
        System::Slurm => Box::new(Slurm(commands)),
        System::Pbs => Box::new(Pbs(commands)),
        System::Sge => Box::new(Sge(commands)),
    }
}

/// Worker jobs on a batch system.
pub struct BatchBackend {
    system: System,
    batch: Box<dyn BatchSystem>,
    pools: Vec<Pool>,
    state: StateDir,
    jobs: Vec<BatchJob>,
}

impl BatchBackend {
    /// Prepares the jobs of each pool (`name`, parameters) running `worker_command`; renders
    /// every script now, so a bad template or parameter fails before anything is submitted.
    pub fn new(
        state: &StateDir,
        system: System,
        commands: Commands,
        pools: &[(String, JobParams)],
        worker_command: &[String],
        template: Option<&Path>,
    ) -> Result<BatchBackend> {
        let mut rendered = Vec::new();
        for (name, params) in pools {
            let script = render(system, params, worker_command, template).with_context(|| format!("pool `{name}`"))?;
            if let Some(dir) = &params.log_directory {
                // The batch system cannot start a job whose output file it cannot create.
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create the log directory {dir}"))?;
            }
            rendered.push(Pool { name: name.clone(), script });
        }
        let file = BackendFile { system, commands: commands.clone() };
        std::fs::write(state.file("backend.json"), serde_json::to_string_pretty(&file)?)?;
        Ok(BatchBackend {
            system,
            batch: batch_system(system, commands),
            pools: rendered,
            state: state.clone(),
            jobs: Vec::new(),
        })
    }

    /// The pools.
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// Submits `n` jobs of `pool` (or one array of `n`, when its script was rendered as an array).
    pub fn submit(&mut self, pool: &str, n: usize) -> Result<Vec<String>> {
        let Some(p) = self.pools.iter().find(|p| p.name == pool) else { bail!("no worker pool named `{pool}`") };
        let dir = self.state.path.join("job-scripts");
        std::fs::create_dir_all(&dir)?;
        let path: PathBuf = dir.join(format!("{}-{pool}.sh", self.system));
        std::fs::write(&path, &p.script)?;
        let mut ids = Vec::new();
        for _ in 0..n {
            let id = self.batch.submit(&path).with_context(|| format!("submitting {}", path.display()))?;
            self.state.journal("job", &format!("{} {id}", self.system))?;
            tracing::info!(job = %id, system = %self.system, pool, "submitted a worker job");
            self.jobs.push(BatchJob { id: id.clone(), state: JobState::Pending, pool: pool.to_string(), note: None });
            ids.push(id);
        }
        self.save();
        Ok(ids)
    }

    /// Polls the states of every job not known to have ended, in one call. A job that ended
    /// without `had_worker(id)` failed to start: it gets a note with its stderr's tail, and is
    /// returned.
    pub fn poll_and_explain(
        &mut self,
        had_worker: impl Fn(&str) -> bool,
        log_directory: Option<&str>,
    ) -> Result<Vec<String>> {
        let mut failed = Vec::new();
        for id in self.poll()? {
            // A cancelled job was ended by us, not by a failure.
            let cancelled = self.jobs.iter().any(|j| j.id == id && j.state == JobState::Cancelled);
            if !had_worker(&id) && !cancelled {
                self.ended_without_worker(&id, log_directory);
                failed.push(id);
            }
        }
        self.save();
        Ok(failed)
    }

    /// Cancels jobs of the cluster (they end on their own time; `poll` sees them go).
    pub fn cancel(&mut self, ids: &[String]) -> Result<()> {
        self.batch.cancel(ids)?;
        for j in &mut self.jobs {
            if ids.contains(&j.id) && j.state.is_active() {
                j.state = JobState::Cancelled;
            }
        }
        self.save();
        Ok(())
    }

    /// Polls the states of every job not known to have ended, in one call; returns the
    /// jobs that ended since the last poll.
    pub fn poll(&mut self) -> Result<Vec<String>> {
        let ids: Vec<String> = self.jobs.iter().filter(|j| j.state.is_active()).map(|j| j.id.clone()).collect();
        let states = self.batch.status(&ids)?;
        let mut ended = Vec::new();
        for j in &mut self.jobs {
            if let Some(s) = states.get(&j.id) {
                if *s != j.state {
                    tracing::info!(job = %j.id, from = %j.state, to = %s, "batch job state changed");
                    if !s.is_active() {
                        ended.push(j.id.clone());
                    }
                }
                j.state = *s;
            }
        }
        Ok(ended)
    }

    /// Records that job `id` ended before any of its workers joined, with its stderr's tail.
    pub fn ended_without_worker(&mut self, id: &str, log_directory: Option<&str>) {
        let tail = log_directory.and_then(|d| stderr_tail(Path::new(d), id));
        let note = match &tail {
            Some(t) => format!("ended before its worker joined; its stderr ends with:\n{t}"),
            None => "ended before its worker joined (no stderr file found)".to_string(),
        };
        tracing::warn!(job = %id, "batch job {note}");
        if let Some(j) = self.jobs.iter_mut().find(|j| j.id == id) {
            j.note = Some(note);
        }
    }

    /// Brings the number of active jobs to `target`: submits the missing ones, or cancels the
    /// surplus, pending jobs first, then running jobs whose workers are all `idle`, newest first.
    /// A busy job is never cancelled: it is looked at again at the next call.
    pub fn scale_to(&mut self, pool: &str, target: usize, idle: impl Fn(&str) -> bool) -> Result<()> {
        let active = self.jobs.iter().filter(|j| j.pool == pool && j.state.is_active()).count();
        if active < target {
            tracing::info!(pool, from = active, to = target, "scaling up");
            self.submit(pool, target - active)?;
            return Ok(());
        }
        let mut surplus = active - target;
        if surplus == 0 {
            return Ok(());
        }
        let mine = self.jobs.iter().rev().filter(|j| j.pool == pool);
        let pending = mine.clone().filter(|j| j.state == JobState::Pending);
        let running_idle = mine.filter(|j| j.state == JobState::Running && idle(&j.id));
        let mut victims = Vec::new();
        for j in pending.chain(running_idle) {
            if surplus == 0 {
                break;
            }
            victims.push(j.id.clone());
            surplus -= 1;
        }
        if victims.is_empty() {
            return Ok(());
        }
        tracing::info!(jobs = ?victims, "scaling down");
        self.cancel(&victims)
    }

    /// The jobs and their last known states.
    pub fn jobs(&self) -> &[BatchJob] {
        &self.jobs
    }

    /// Cancels every job of the cluster and waits until the batch system shows none active.
    pub fn cancel_all(&mut self, timeout: Duration) -> Result<()> {
        let ids: Vec<String> = self.jobs.iter().map(|j| j.id.clone()).collect();
        cancel_and_wait(self.batch.as_ref(), &ids, timeout)?;
        for j in &mut self.jobs {
            if j.state.is_active() {
                j.state = JobState::Cancelled;
            }
        }
        self.save();
        Ok(())
    }

    fn save(&self) {
        let text = serde_json::to_string_pretty(&self.jobs).expect("serialisable");
        let tmp = self.state.file(".batch-jobs.json.tmp");
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(tmp, self.state.file("batch-jobs.json"));
        }
    }
}

/// Renders the job script, with a template file if one is given.
pub fn render(
    system: System,
    params: &JobParams,
    worker_command: &[String],
    template: Option<&Path>,
) -> Result<String> {
    Ok(match template {
        Some(p) => batch::render_file(system, params, worker_command, p)?,
        None => batch::render(system, params, worker_command, None)?,
    })
}

/// Cancels `ids` and waits until none of them is pending or running.
pub fn cancel_and_wait(batch: &dyn BatchSystem, ids: &[String], timeout: Duration) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    loop {
        let states = batch.status(ids)?;
        let active: Vec<String> =
            ids.iter().filter(|id| states.get(*id).is_some_and(|s| s.is_active())).cloned().collect();
        if active.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} job(s) still active after {} s: {}; cancel them by hand ({} …)",
                active.len(),
                timeout.as_secs(),
                active.join(" "),
                batch.name()
            );
        }
        batch.cancel(&active)?;
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The batch jobs recorded in a state directory's journal, by system.
pub fn journalled_jobs(state: &StateDir) -> HashMap<System, Vec<String>> {
    let mut out: HashMap<System, Vec<String>> = HashMap::new();
    for (kind, value) in state.journal_entries() {
        if kind != "job" {
            continue;
        }
        if let Some((system, id)) = value.split_once(' ') {
            if let Ok(system) = system.parse::<System>() {
                out.entry(system).or_default().push(id.to_string());
            }
        }
    }
    out
}

/// Cancels every journalled batch job of a cluster (after a crash); returns how many were journalled.
pub fn cancel_journalled(state: &StateDir) -> Result<usize> {
    cancel_jobs(state, journalled_jobs(state))
}

/// Cancels `jobs` (by system) and waits until the batch system shows none of them active.
pub fn cancel_jobs(state: &StateDir, jobs: HashMap<System, Vec<String>>) -> Result<usize> {
    let file: Option<BackendFile> =
        std::fs::read_to_string(state.file("backend.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
    let mut n = 0;
    for (system, ids) in jobs {
        let commands = match &file {
            Some(f) if f.system == system => f.commands.clone(),
            _ => default_commands(system),
        };
        let batch = batch_system(system, commands);
        cancel_and_wait(batch.as_ref(), &ids, Duration::from_secs(60))?;
        n += ids.len();
    }
    Ok(n)
}

/// The batch jobs `status` shows: `batch-jobs.json`, written by the scheduler.
pub fn read_jobs(state: &StateDir) -> Vec<BatchJob> {
    std::fs::read_to_string(state.file("batch-jobs.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Whether a worker's batch job (`ID`, `ID_INDEX`, `ID[INDEX].server`, `ID.server`) is job `id`.
pub fn same_job(id: &str, worker_job: &str) -> bool {
    worker_job.strip_prefix(id).is_some_and(|rest| rest.is_empty() || rest.starts_with(['_', '.', '[']))
}

/// The last lines of a job's stderr file in `dir` (Slurm `NAME-ID.err`, SGE and PBS `NAME.eID`).
fn stderr_tail(dir: &Path, id: &str) -> Option<String> {
    let entries = std::fs::read_dir(dir).ok()?;
    let file = entries.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        name.ends_with(&format!("-{id}.err")) || name.ends_with(&format!(".e{id}"))
    })?;
    let text = std::fs::read_to_string(file).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    Some(lines[lines.len().saturating_sub(10)..].join("\n"))
}
