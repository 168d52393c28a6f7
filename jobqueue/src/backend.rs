//! The batch backend: worker jobs submitted to a batch system ([`crate::systems`]), polled and cancelled,
//! for the provisioner's [`BatchLauncher`](crate::provision::launch::BatchLauncher).
//!
//! Every job id is written to the cluster's journal before anything else happens
//! to it, so that `down` can cancel it even if the scheduler was killed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

use crate::batch::{self, JobParams, System};
use crate::jobs::{BatchSystem, Commands, JobState};
use crate::state::{Journalled, StateDir};

/// The name of the pool that the main options describe.
pub const DEFAULT_POOL: &str = "default";

/// The default commands of a batch system.
pub fn default_commands(system: System) -> Commands {
    system.default_commands()
}

/// The implementation of `system` with `commands`.
pub fn batch_system(system: System, commands: Commands) -> Box<dyn BatchSystem> {
    system.connect(commands)
}

struct Pool {
    name: String,
    params: JobParams,
}

/// Worker jobs on a batch system, which it is given (the real one, or a fake in tests).
pub struct BatchBackend {
    system: System,
    batch: Box<dyn BatchSystem>,
    pools: Vec<Pool>,
    worker_command: Vec<String>,
    template: Option<PathBuf>,
    state: StateDir,
}

impl BatchBackend {
    /// Prepares the jobs of each pool (`name`, parameters) running `worker_command` on `batch`
    /// (`system` with `commands`, journalled for `down`). Renders every script now, so a bad
    /// template or parameter fails before anything is submitted.
    pub fn new(
        state: &StateDir,
        system: System,
        commands: Commands,
        batch: Box<dyn BatchSystem>,
        pools: &[(String, JobParams)],
        worker_command: &[String],
        template: Option<&Path>,
    ) -> Result<BatchBackend> {
        let mut b = BatchBackend {
            system,
            batch,
            pools: Vec::new(),
            worker_command: worker_command.to_vec(),
            template: template.map(Path::to_path_buf),
            state: state.clone(),
        };
        for (name, params) in pools {
            if let Some(dir) = &params.log_directory {
                // The batch system cannot start a job whose output file it cannot create.
                std::fs::create_dir_all(dir).map_err(Error::io(format!("cannot create the log directory {dir}")))?;
            }
            b.pools.push(Pool { name: name.clone(), params: params.clone() });
            b.script(name, &format!("{name}/0")).map_err(|e| match e {
                Error::Render { source, .. } => Error::Render { pool: Some(name.clone()), source },
                other => other,
            })?;
        }
        state.record(&Journalled::BatchSystem { system, commands })?;
        Ok(b)
    }

    /// The job script of one allocation of `pool`, whose workers carry `launch`.
    pub fn script(&self, pool: &str, launch: &str) -> Result<String> {
        let Some(p) = self.pools.iter().find(|p| p.name == pool) else {
            return Err(Error::Usage(format!("no worker pool named `{pool}`")));
        };
        let command = with_launch_tag(&self.worker_command, launch);
        Ok(render(self.system, &p.params, &command, self.template.as_deref())?)
    }

    /// Submits one job (or one array, when the scripts are rendered as arrays) of `pool`
    /// whose workers carry `launch`; journals its id before returning it.
    pub fn submit(&mut self, pool: &str, launch: &str) -> Result<String> {
        let script = self.script(pool, launch)?;
        let dir = self.state.path.join("job-scripts");
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("cannot create {}", dir.display())))?;
        let path: PathBuf = dir.join(format!("{}-{}.sh", self.system, launch.replace('/', "-")));
        std::fs::write(&path, script).map_err(Error::io(format!("cannot write {}", path.display())))?;
        let id = self.batch.submit(&path).map_err(|source| Error::Submission {
            system: self.system.to_string(),
            script: path.clone(),
            source,
        })?;
        self.state.record(&Journalled::Job {
            system: self.system,
            id: id.clone(),
            pool: pool.to_string(),
            launch: launch.to_string(),
        })?;
        tracing::info!(job = %id, system = %self.system, pool, launch, "submitted a worker job");
        Ok(id)
    }

    /// The states of `ids`, in one call.
    pub fn status(&self, ids: &[String]) -> Result<HashMap<String, JobState>> {
        Ok(self.batch.status(ids)?)
    }

    /// Cancels jobs of the cluster (they end in their own time).
    pub fn cancel(&self, ids: &[String]) -> Result<()> {
        tracing::info!(jobs = ?ids, "cancelling batch jobs");
        Ok(self.batch.cancel(ids)?)
    }

    /// Cancels `ids` and waits until the batch system shows none of them active.
    pub fn cancel_and_wait(&self, ids: &[String], timeout: Duration) -> Result<()> {
        cancel_and_wait(self.batch.as_ref(), ids, timeout)
    }

    /// The last lines of job `id`'s stderr, from the log directory of any pool.
    pub fn stderr_tail(&self, id: &str) -> Option<String> {
        let dirs = self.pools.iter().filter_map(|p| p.params.log_directory.as_deref());
        dirs.map(Path::new).find_map(|d| stderr_tail(self.system, d, id))
    }
}

/// `command` with its workers' launch tag set: `env RDASK_LAUNCH_TAG=<launch> command…`.
pub fn with_launch_tag(command: &[String], launch: &str) -> Vec<String> {
    let tag = format!("{}={launch}", rdask::worker::LAUNCH_TAG_VAR);
    match command.split_first() {
        Some((env, rest)) if env == "env" => {
            std::iter::once(env.clone()).chain(std::iter::once(tag)).chain(rest.iter().cloned()).collect()
        }
        _ => ["env".to_string(), tag].into_iter().chain(command.iter().cloned()).collect(),
    }
}

/// Renders the job script, with a template file if one is given.
pub fn render(
    system: System,
    params: &JobParams,
    worker_command: &[String],
    template: Option<&Path>,
) -> std::result::Result<String, batch::RenderError> {
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
    batch.cancel(ids)?;
    loop {
        let states = batch.status(ids)?;
        let active: Vec<String> =
            ids.iter().filter(|id| states.get(*id).is_some_and(|s| s.is_active())).cloned().collect();
        if active.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::StillActive { system: batch.name(), jobs: active, secs: timeout.as_secs() });
        }
        batch.cancel(&active)?;
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The batch jobs recorded in a state directory's journal.
#[derive(Debug, Default)]
pub struct JournalledJobs {
    /// The batch system the cluster used, with the commands it was reached by.
    pub system: Option<(System, Commands)>,
    /// Every job submitted, by batch system (a scheduler inside a job adds its own).
    pub jobs: HashMap<System, Vec<String>>,
}

/// The batch system and jobs recorded in a state directory's journal.
pub fn journalled_jobs(state: &StateDir) -> JournalledJobs {
    let mut j = JournalledJobs::default();
    for entry in state.journal_entries() {
        match entry {
            Journalled::BatchSystem { system, commands } => j.system = Some((system, commands)),
            Journalled::Job { system, id, .. } => j.jobs.entry(system).or_default().push(id),
            Journalled::Process { .. } | Journalled::Setting { .. } => {}
        }
    }
    j
}

/// Cancels every journalled batch job of a cluster (after a crash) through the batch system
/// that `connect` gives for a system and its journalled commands, and waits until none is
/// active; returns how many were journalled.
pub fn cancel_journalled(
    state: &StateDir,
    connect: impl Fn(System, Commands) -> Box<dyn BatchSystem>,
) -> Result<usize> {
    let JournalledJobs { system: journalled, jobs } = journalled_jobs(state);
    let mut n = 0;
    for (system, ids) in jobs {
        let commands = match &journalled {
            Some((s, c)) if *s == system => c.clone(),
            _ => default_commands(system),
        };
        let batch = connect(system, commands);
        cancel_and_wait(batch.as_ref(), &ids, Duration::from_secs(60))?;
        n += ids.len();
    }
    Ok(n)
}

/// The last lines of the stderr file of `system`'s job `id` in `dir` (Slurm `NAME-ID.err`, SGE
/// and PBS `NAME.eID`, …: [`crate::systems::SystemDef::is_stderr_file`]).
fn stderr_tail(system: System, dir: &Path, id: &str) -> Option<String> {
    let entries = std::fs::read_dir(dir).ok()?;
    let file = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|name| system.is_stderr_file(name, id)))?;
    let text = std::fs::read_to_string(file).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    Some(lines[lines.len().saturating_sub(10)..].join("\n"))
}
