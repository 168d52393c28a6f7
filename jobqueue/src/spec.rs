//! The cluster spec: everything a cluster is, typed, versioned and resolved once.
//!
//! A [`ClusterSpec`] is what `up` starts, what `job-script` and `up --dry-run` show, what the
//! background `scheduler` runs (`spec.json` in the state directory, `scheduler --spec-file`) and
//! what `scale` and `adapt` read back. It is made in this order, each step the only one of its
//! kind:
//!
//! 1. the command line's flags, then `RDASK_<OPTION>` variables, then the project and user
//!    files ([`crate::config`]) are merged into one command line, which clap parses into
//!    [`SchedulerArgs`] — so every value, wherever it came from, went through the flag's parser;
//! 2. each `--pool` item (from any of those sources: a file's `pool = ["gpu nodes=2"]` is
//!    injected as `--pool` too) is split into words as a shell would (quotes keep spaces in a
//!    value), its `KEY=VALUE` words become `--KEY=VALUE` arguments, and clap parses them with
//!    the same [`PoolArgs`] definition that gives the main pool its flags; the keys an item
//!    gives replace the main pool's ([`parse_pool_item`]);
//! 3. [`ClusterSpec::resolve`] turns the arguments into the spec: the backend, the scheduler's
//!    and the workers' settings, and each pool's final job parameters (what the scheduler's
//!    own options imply for a job: `cores` from `--slots`, the log directory, the death
//!    timeout, the job array size).
//!
//! A spec written by a program that is not this one (the Python API, later) skips steps 1 and 2
//! and must be as resolved as step 3 leaves it: [`ClusterSpec::from_json`] refuses a `version`
//! other than [`ClusterSpec::VERSION`] and unknown fields.

use std::path::{Path, PathBuf};

use clap::{Args, Command, FromArgMatches};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::adapt::JobShape;
use crate::backend::{self, DEFAULT_POOL};
use crate::batch::{self, System, UnknownSystem};
use crate::cli::{PoolArgs, Protocol, SchedulerArgs};
use crate::state::StateDir;

/// The file in the state directory that `up` writes the spec to.
pub const SPEC_FILE: &str = "spec.json";

/// Why options do not make a spec, or a file is not one. Messages say what to change.
#[derive(Debug, Error)]
pub enum SpecError {
    #[error(transparent)]
    Backend(#[from] UnknownSystem),
    #[error("--adapt-min {min} needs --adapt-max (the most jobs to adapt up to)")]
    AdaptMinWithoutMax { min: u32 },
    #[error("--adapt-min {min} is above --adapt-max {max}; lower one of them")]
    AdaptMinAboveMax { min: u32, max: u32 },
    #[error("--adapt-max must be at least 1")]
    AdaptMaxZero,
    #[error("{0}")]
    Resource(String),
    #[error("--pool `{item}` must start with a name (letters, digits, - and _), e.g. --pool 'gpu nodes=2 queue=gpu'")]
    PoolName { item: String },
    #[error("two pools are named `{name}`; give each --pool its own name (`default` is the main pool's)")]
    DuplicatePool { name: String },
    #[error("--pool `{item}` has an unclosed quote; quote a value with spaces whole, e.g. job-extra-directives='--constraint=a100 --exclusive'")]
    PoolQuote { item: String },
    #[error("--pool {pool}: `{word}` is not KEY=VALUE (e.g. queue=gpu)")]
    PoolNotKeyValue { pool: String, word: String },
    #[error("--pool {pool}: unknown key \"{key}\"; did you mean \"{suggestion}\"? Valid keys: {valid}")]
    PoolUnknownKey { pool: String, key: String, suggestion: String, valid: String },
    #[error("--pool {pool}: invalid value \"{value}\" for \"{key}\": {reason}")]
    PoolInvalidValue { pool: String, key: String, value: String, reason: String },
    #[error(
        "--pool {pool}: \"{key}\" is given twice; give it once (only list keys, such as job-extra-directives, repeat)"
    )]
    PoolRepeatedKey { pool: String, key: String },
    #[error("--pool {pool}: {reason}")]
    Pool { pool: String, reason: String },
    #[error("cannot read the cluster spec {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write the cluster spec {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("not a cluster spec: {0}")]
    Corrupt(#[source] serde_json::Error),
    #[error("{} is not a cluster spec: {source}", path.display())]
    CorruptFile { path: PathBuf, source: serde_json::Error },
    #[error("cluster spec version {found} is not supported: this rdask-jobqueue reads version {}; start the cluster again with this program's `up`", ClusterSpec::VERSION)]
    UnsupportedVersion { found: u64 },
    #[error("the cluster spec has no `version`; it was not written by `rdask-jobqueue up`")]
    NoVersion,
}

/// Where workers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Backend {
    /// Processes on this machine.
    Local,
    /// Worker jobs on a batch system.
    Batch(System),
}

impl Backend {
    /// The batch system, if any.
    pub fn batch(self) -> Option<System> {
        match self {
            Backend::Local => None,
            Backend::Batch(s) => Some(s),
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = UnknownSystem;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "local" => Ok(Backend::Local),
            other => other.parse().map(Backend::Batch),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Local => f.write_str("local"),
            Backend::Batch(s) => s.fmt(f),
        }
    }
}

impl From<Backend> for String {
    fn from(b: Backend) -> String {
        b.to_string()
    }
}

impl TryFrom<String> for Backend {
    type Error = UnknownSystem;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// The scheduler process: where it listens and how often it looks at things.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SchedulerSpec {
    pub protocol: Protocol,
    /// Address to listen on (ignored when `interface` is set).
    pub host: String,
    /// Network interface whose address to listen on.
    pub interface: Option<String>,
    /// 0: any free port.
    pub port: u16,
    /// Heartbeat interval; a worker silent for 10 intervals is lost.
    pub heartbeat_ms: u64,
    /// Seconds between polls of the batch system.
    pub poll_interval: f64,
    /// Whether `up` runs the scheduler in a batch job of its own.
    pub in_job: bool,
    /// Where the dashboard listens (`HOST:PORT`); `None`: no dashboard.
    #[serde(default)]
    pub dashboard: Option<String>,
}

/// The workers: what they run and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WorkerSpec {
    /// Local backend: worker processes to start (unless adapting).
    pub local_workers: usize,
    /// Task slots per local worker (batch jobs: `cores / processes`).
    pub slots: u16,
    /// Seconds without the scheduler after which a worker exits.
    pub death_timeout: u64,
    /// Local backend: the worker program [default: this one].
    pub program: Option<PathBuf>,
    /// Batch jobs: the rdask-jobqueue path they run [default: this program's].
    pub command: Option<PathBuf>,
    /// Named resources each worker offers (`gpu` counts GPUs), sorted by name.
    #[serde(default)]
    pub resources: Vec<(String, u32)>,
    /// One worker process per GPU, each pinned to it.
    #[serde(default)]
    pub per_gpu: bool,
}

/// Adaptive scaling from the start: between `min` and `max` jobs (local: workers).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdaptSettings {
    pub min: u32,
    pub max: u32,
    /// Seconds in which the queued work should finish.
    pub target_duration: f64,
}

/// The commands that submit, query and cancel batch jobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchCommands {
    pub submit: PathBuf,
    pub status: PathBuf,
    pub cancel: PathBuf,
}

impl From<BatchCommands> for crate::jobs::Commands {
    fn from(c: BatchCommands) -> Self {
        crate::jobs::Commands { submit: c.submit, status: c.status, cancel: c.cancel }
    }
}

/// A worker pool: its name, its nodes and the final parameters of its jobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    pub name: String,
    /// Nodes to get workers on: one job per `params.nodes` (nodes per job) of them.
    pub nodes: u32,
    pub params: batch::JobParams,
}

impl PoolSpec {
    /// Nodes per job.
    pub fn per_job(&self) -> u32 {
        self.params.nodes.unwrap_or(1).max(1)
    }

    /// Jobs for `nodes` nodes: one per `nodes-per-job`.
    pub fn jobs_for_nodes(&self, nodes: u32) -> usize {
        nodes.div_ceil(self.per_job()) as usize
    }

    /// Jobs for the pool's nodes.
    pub fn jobs(&self) -> usize {
        self.jobs_for_nodes(self.nodes)
    }

    /// The workers of one job and the slots of each.
    pub fn shape(&self) -> JobShape {
        let processes = self.params.processes.unwrap_or(1).max(1);
        let slots = (self.params.cores.unwrap_or(1) / processes).max(1);
        JobShape { workers: self.per_job() * processes, slots }
    }

    /// Workers its jobs hold when they all run.
    pub fn workers(&self) -> usize {
        self.jobs() * (self.per_job() * self.params.processes.unwrap_or(1)) as usize
    }
}

/// One cluster, resolved: see the [module documentation](self) for how one is made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterSpec {
    /// [`ClusterSpec::VERSION`].
    pub version: u32,
    /// The cluster's name (its state directory's).
    pub name: String,
    pub backend: Backend,
    pub scheduler: SchedulerSpec,
    pub workers: WorkerSpec,
    /// The main pool (named [`DEFAULT_POOL`]) first, then the `--pool`s (batch backends).
    pub pools: Vec<PoolSpec>,
    /// `None`: the pools keep their nodes (local: `local-workers`) until `scale` or `adapt`.
    pub adapt: Option<AdaptSettings>,
    /// Each pool is submitted as one job array.
    pub job_array: bool,
    /// A job script template replacing the default one.
    pub template: Option<PathBuf>,
    /// Batch backends only.
    pub commands: Option<BatchCommands>,
}

impl ClusterSpec {
    /// The version this program writes and reads.
    pub const VERSION: u32 = 1;

    /// The spec that `args` describe for the cluster of `state`. The only place options are
    /// given a meaning.
    pub fn resolve(args: &SchedulerArgs, state: &StateDir) -> Result<ClusterSpec, SpecError> {
        let backend: Backend = args.backend.parse()?;
        let adapt = match (args.adapt_min, args.adapt_max) {
            (min, None) if min > 0 => return Err(SpecError::AdaptMinWithoutMax { min }),
            (_, Some(0)) => return Err(SpecError::AdaptMaxZero),
            (min, Some(max)) if min > max => return Err(SpecError::AdaptMinAboveMax { min, max }),
            (min, Some(max)) => Some(AdaptSettings { min, max, target_duration: args.target_duration }),
            (_, None) => None,
        };
        let pool = |name: &str, p: &PoolArgs| {
            let mut params = p.job.clone();
            params.death_timeout = Some(args.death_timeout);
            params.interface.clone_from(&args.interface);
            if params.cores.is_none() {
                params.cores = Some(u32::from(args.slots));
            }
            if params.log_directory.is_none() {
                params.log_directory = Some(state.path.join("logs").display().to_string());
            }
            let mut spec = PoolSpec { name: name.to_string(), nodes: p.nodes, params };
            if args.job_array {
                spec.params.array = Some(spec.jobs() as u32);
            }
            spec
        };
        let mut pools = vec![pool(DEFAULT_POOL, &args.main_pool)];
        for item in &args.pool {
            let (name, p) = parse_pool_item(item, &args.main_pool)?;
            if pools.iter().any(|q| q.name == name) {
                return Err(SpecError::DuplicatePool { name });
            }
            pools.push(pool(&name, &p));
        }
        let commands = backend.batch().map(|system| {
            let d = backend::default_commands(system);
            BatchCommands {
                submit: args.submit_command.clone().unwrap_or(d.submit),
                status: args.status_command.clone().unwrap_or(d.status),
                cancel: args.cancel_command.clone().unwrap_or(d.cancel),
            }
        });
        Ok(ClusterSpec {
            version: Self::VERSION,
            name: state.name.clone(),
            backend,
            scheduler: SchedulerSpec {
                protocol: args.protocol,
                host: args.host.clone(),
                interface: args.interface.clone(),
                port: args.port,
                heartbeat_ms: args.heartbeat_ms,
                poll_interval: args.poll_interval,
                in_job: args.scheduler_in_job,
                dashboard: (!args.no_dashboard).then(|| args.dashboard_address.clone()),
            },
            workers: WorkerSpec {
                local_workers: args.workers,
                slots: args.slots,
                death_timeout: args.death_timeout,
                program: args.worker_program.clone(),
                command: args.worker_command.clone(),
                resources: crate::resources::parse_named_list(&args.resources).map_err(SpecError::Resource)?,
                per_gpu: args.worker_per_gpu,
            },
            pools,
            adapt,
            job_array: args.job_array,
            template: args.template.clone(),
            commands,
        })
    }

    /// The main pool.
    pub fn main_pool(&self) -> &PoolSpec {
        // `resolve` puts it first, and `from_json` refuses a spec without pools.
        &self.pools[0]
    }

    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&PoolSpec> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The batch commands for `system`: the spec's, else the system's defaults.
    pub fn commands_for(&self, system: System) -> crate::jobs::Commands {
        match &self.commands {
            Some(c) => c.clone().into(),
            None => backend::default_commands(system),
        }
    }

    /// The most workers this spec asks for at once (before any `scale` request): the fixed
    /// ones (`local-workers`, or every pool's jobs' workers), or adapting, `--adapt-max` jobs
    /// of the largest job shape (local: workers). What the scheduler must hold connections for.
    pub fn planned_workers(&self) -> usize {
        let local = matches!(self.backend, Backend::Local);
        let fixed = if local { self.workers.local_workers } else { self.pools.iter().map(PoolSpec::workers).sum() };
        let per_job = if local { 1 } else { self.pools.iter().map(|p| p.shape().workers as usize).max().unwrap_or(1) };
        let adaptive = self.adapt.map_or(0, |a| a.max as usize * per_job);
        fixed.max(adaptive)
    }

    /// Local workers to start with: the adaptive minimum, or `local-workers`.
    pub fn initial_local_workers(&self) -> usize {
        self.adapt.map_or(self.workers.local_workers, |a| a.min as usize)
    }

    /// Reads a spec from JSON, refusing other versions.
    pub fn from_json(text: &str) -> Result<ClusterSpec, SpecError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(SpecError::Corrupt)?;
        match value.get("version").map(serde_json::Value::as_u64) {
            None => return Err(SpecError::NoVersion),
            Some(Some(v)) if v == u64::from(Self::VERSION) => {}
            Some(Some(found)) => return Err(SpecError::UnsupportedVersion { found }),
            Some(None) => return Err(SpecError::UnsupportedVersion { found: 0 }),
        }
        let spec: ClusterSpec = serde_json::from_value(value).map_err(SpecError::Corrupt)?;
        if spec.pools.is_empty() {
            return Err(SpecError::Corrupt(serde::de::Error::custom("`pools` is empty; the main pool comes first")));
        }
        Ok(spec)
    }

    /// The spec as (pretty) JSON.
    pub fn to_json(&self) -> String {
        // Every field is a plain value with string keys: serializing cannot fail.
        serde_json::to_string_pretty(self).expect("a cluster spec serializes")
    }

    /// Reads `path`.
    pub fn load(path: &Path) -> Result<ClusterSpec, SpecError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| SpecError::Read { path: path.to_path_buf(), source })?;
        Self::from_json(&text).map_err(|e| match e {
            SpecError::Corrupt(source) => SpecError::CorruptFile { path: path.to_path_buf(), source },
            e => e,
        })
    }

    /// Writes to `path` atomically (a temporary file beside it, renamed).
    pub fn save(&self, path: &Path) -> Result<(), SpecError> {
        let tmp = path.with_extension("json.tmp");
        let write = |p: &Path, r: std::io::Result<()>| r.map_err(|source| SpecError::Write { path: p.into(), source });
        write(&tmp, std::fs::write(&tmp, self.to_json()))?;
        write(path, std::fs::rename(&tmp, path))
    }
}

/// The keys of a `--pool` item: the long names of [`PoolArgs`]' options.
pub fn pool_keys() -> Vec<String> {
    pool_command().get_arguments().filter_map(|a| a.get_long()).map(str::to_string).collect()
}

fn pool_command() -> Command {
    PoolArgs::augment_args(Command::new("--pool").no_binary_name(true).disable_help_flag(true))
}

/// A `--pool` item's name and options: the `main` pool's with the item's keys replacing them.
///
/// The item is split as a shell splits words; each `KEY=VALUE` word is parsed by clap as the
/// option `--KEY=VALUE` of [`PoolArgs`], the definition the main pool's flags come from. A pool
/// is named `rdask-NAME` in the batch system unless it gives `job-name`, and has 1 node unless
/// it gives `nodes`.
pub fn parse_pool_item(item: &str, main: &PoolArgs) -> Result<(String, PoolArgs), SpecError> {
    let words = shlex::split(item).ok_or_else(|| SpecError::PoolQuote { item: item.into() })?;
    let mut words = words.into_iter();
    let name = words.next().unwrap_or_default();
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(SpecError::PoolName { item: item.into() });
    }
    let cmd = pool_command();
    let keys = pool_keys();
    let mut given: Vec<String> = Vec::new();
    let mut args = Vec::new();
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(SpecError::PoolNotKeyValue { pool: name, word });
        };
        let Some(arg) = cmd.get_arguments().find(|a| a.get_long() == Some(key)) else {
            let suggestion = crate::config::closest(key, keys.iter().map(String::as_str)).unwrap_or_default();
            return Err(SpecError::PoolUnknownKey {
                pool: name.clone(),
                key: key.into(),
                suggestion: suggestion.into(),
                valid: keys.join(", "),
            });
        };
        if given.iter().any(|g| g == key) && !matches!(arg.get_action(), clap::ArgAction::Append) {
            return Err(SpecError::PoolRepeatedKey { pool: name, key: key.into() });
        }
        let arg = format!("--{key}={value}");
        // Alone first, so that an error names its key and value.
        if let Err(e) = cmd.clone().try_get_matches_from([&arg]) {
            return Err(SpecError::PoolInvalidValue {
                pool: name,
                key: key.into(),
                value: value.into(),
                reason: clap_reason(&e),
            });
        }
        given.push(key.to_string());
        args.push(arg);
    }
    // Each word was parsed alone above: what fails now is their combination.
    let invalid = |e: clap::Error| SpecError::Pool { pool: name.clone(), reason: clap_reason(&e) };
    let matches = cmd.clone().try_get_matches_from(&args).map_err(invalid)?;
    let mut pool = PoolArgs {
        job: batch::JobParams { job_name: Some(format!("rdask-{name}")), ..main.job.clone() },
        ..main.clone()
    };
    // Only the options the item gives (and `nodes`, which has a default) are replaced.
    pool.update_from_arg_matches(&matches).map_err(invalid)?;
    Ok((name, pool))
}

/// What is wrong with a value, in clap's words, without clap's `error:` and usage lines.
fn clap_reason(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    match (std::error::Error::source(e), e.get(ContextKind::ValidValue)) {
        (Some(source), _) => source.to_string(),
        (None, Some(ContextValue::Strings(valid))) => format!("expected one of {}", valid.join(", ")),
        _ => e.to_string().lines().next().unwrap_or_default().trim_start_matches("error: ").to_string(),
    }
}

#[cfg(test)]
mod tests;
