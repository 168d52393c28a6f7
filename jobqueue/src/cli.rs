//! Command-line arguments (clap).
//!
//! The doc comments here are clap's `--help` text, written for a terminal, not for rustdoc.
#![allow(rustdoc::invalid_html_tags)]

use std::path::PathBuf;

use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::jobs::Role;
use crate::systems::System;

/// The values of `--backend`: `local`, then every batch system of [`crate::systems::SYSTEMS`]
/// (which are also the configuration's backend tables).
pub fn backend_values() -> PossibleValuesParser {
    let local = PossibleValue::new("local").help("processes on this machine");
    PossibleValuesParser::new(
        std::iter::once(local).chain(System::ALL.iter().map(|s| PossibleValue::new(s.name()).help(s.description()))),
    )
}

/// `--help` of a batch command option: what it is, and each system's default.
fn default_commands_help(role: Role) -> String {
    let what = match role {
        Role::Submit => "submits jobs",
        Role::Status => "reports job states",
        Role::Cancel => "cancels jobs",
    };
    // Each command once, with the systems it is the default of: `qsub (pbs, sge)`.
    let mut defaults: Vec<(String, Vec<&str>)> = Vec::new();
    for s in System::ALL {
        let command = s.default_commands().get(role).display().to_string();
        match defaults.iter_mut().find(|(c, _)| *c == command) {
            Some((_, systems)) => systems.push(s.name()),
            None => defaults.push((command, vec![s.name()])),
        }
    }
    let defaults: Vec<String> = defaults.iter().map(|(c, systems)| format!("{c} ({})", systems.join(", "))).collect();
    format!("The command that {what}, a path or a name on PATH [default: {}]", defaults.join(", "))
}

/// The exit codes, shown by `--help` (the same table is in `crate::error` and the README).
const EXIT_CODES: &str = "Exit codes:
  0  success
  1  tasks failed (wait, submit --wait)
  2  bad command line, option value or configuration
  3  the cluster is not running, or its scheduler cannot be reached
  4  refused: by the scheduler (a scale/adapt request, a cluster already up) or by the
     batch system (sbatch, qsub or bsub refused the job script)
  5  any other failure (a batch-system status or cancel command, a file, a timeout)
`run` and `mpi` exit with their client command's code.";

/// Run a Dask-style task cluster on this machine or on an HPC batch system.
///
/// A cluster is a scheduler and its workers. `up` starts one (on this machine by
/// default), `submit` gives it commands to run, `wait` follows them, `status`
/// shows workers and jobs, and `down` stops everything the cluster started.
///
/// Quick start:
///
///   rdask-jobqueue up --workers 2
///   rdask-jobqueue submit --array 1-100 -- sh -c 'echo hello from task $RDASK_TASK_ID'
///   rdask-jobqueue wait
///   rdask-jobqueue down
///
/// The options of `up`, `scheduler` and `job-script` can also be set in TOML files
/// (~/.config/rdask/jobqueue.toml, ./rdask.toml) and RDASK_<OPTION> variables:
/// see `rdask-jobqueue config --help`.
#[derive(Debug, Parser)]
#[command(name = "rdask-jobqueue", version, verbatim_doc_comment, after_help = EXIT_CODES)]
pub struct Cli {
    /// The cluster's name; each cluster has its own state directory.
    #[arg(long, global = true, env = "RDASK_CLUSTER", default_value = "default")]
    pub name: String,
    /// Where state directories live [default: ~/.rdask].
    #[arg(long, global = true, env = "RDASK_HOME")]
    pub home: Option<PathBuf>,
    /// Read the options of `up`, `scheduler` and `job-script` from this TOML file instead of the
    /// user's (~/.config/rdask/jobqueue.toml) and the project's (./rdask.toml or above).
    #[arg(long, global = true, env = "RDASK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Start a cluster in the background: local workers, or worker jobs on a batch system
    /// (Slurm, PBS, SGE, LSF).
    Up(UpArgs),
    /// Submit a command, or an array of commands (`--array 1-1000`), to the cluster.
    Submit(SubmitArgs),
    /// Wait for a job to finish, with a progress bar; exits 1 if any task failed.
    Wait(WaitArgs),
    /// Cancel a job's tasks that have not started (all, or `--task N`); running ones finish.
    ///
    /// Cancelled tasks, and tasks that depend on them, count as failed: `wait` exits 1.
    ///
    ///   rdask-jobqueue cancel 3
    ///   rdask-jobqueue cancel 3 --task 10 --task 11
    Cancel(CancelArgs),
    /// Show the cluster's workers and jobs, and the dashboard's URL.
    Status(StatusArgs),
    /// Print the cluster's events (jobs submitted and finished, tasks failed, workers joined
    /// and left, batch jobs queued, started and ended, adaptive decisions).
    ///
    ///   rdask-jobqueue events --follow --output json | jq .
    Events(EventsArgs),
    /// Print the output of a job's tasks (per-task files or streamed), e.g. of one task:
    ///
    ///   rdask-jobqueue output 3 --task 77777 [--stderr]
    Output(OutputArgs),
    /// Stop the cluster: workers, scheduler, and anything left by a crash.
    Down(DownArgs),
    /// Print the job script that `up` would submit, and submit nothing.
    JobScript(SchedulerArgs),
    /// Run the scheduler in the foreground (what `up` starts in the background).
    Scheduler(SchedulerCmd),
    /// Run a worker in the foreground (for command tasks; function tasks need your own program).
    Worker(WorkerArgs),
    /// Change the number of workers (local backend) or nodes (batch backends); surplus workers
    /// are retired only once idle. Turns adaptive scaling off.
    Scale(ScaleArgs),
    /// Let the number of batch jobs (or local workers) follow the work: grow with queued tasks,
    /// shrink when idle.
    ///
    /// Bounds are in jobs (--min/--max; one job is --nodes-per-job nodes of --processes
    /// workers each) or in workers (--min-workers/--max-workers, rounded to whole jobs); on
    /// the local backend a job is one worker.
    ///
    /// Every --interval the cluster estimates the unfinished work from the measured duration
    /// of each kind of task, and wants enough jobs to finish it within --target-duration.
    /// Jobs pending in the queue count as capacity on the way; scale-up is immediate,
    /// scale-down waits --scale-down-after intervals and removes only jobs whose workers are all
    /// idle: they hand their results to other workers and exit. Workers know their job's
    /// walltime: they take no task they cannot finish and leave before it ends, and while work
    /// remains a replacement job is submitted --replace-ahead seconds before. Failed
    /// submissions back off (2 s, 4 s, 8 s...) and pause adapting after --max-failures in a row;
    /// `status` says why. Run `adapt` again to change the settings or resume; `scale N` or
    /// `adapt --off` stops adapting.
    ///
    ///   rdask-jobqueue up --backend slurm --cores 4 --memory 8GB --walltime 01:00:00 --adapt-max 10
    ///   rdask-jobqueue adapt --min 0 --max 20
    ///   rdask-jobqueue adapt --max-workers 64 --target-duration 30
    #[command(verbatim_doc_comment)]
    Adapt(AdaptArgs),
    /// Inside a Slurm allocation, `srun rdask-jobqueue run -- CMD`: task 0 becomes the scheduler,
    /// task 1 runs CMD as the client, the other tasks are workers; all end when CMD ends.
    Run(crate::srun::RunArgs),
    /// Under MPI, `mpirun -n N rdask-jobqueue mpi -- CMD`: rank 0 becomes the scheduler, rank 1
    /// runs CMD as the client, ranks 2.. are workers; all end when CMD ends, with its exit
    /// code, and a failure on any rank aborts the whole job. Needs the `mpi` feature.
    Mpi(crate::mpi::MpiArgs),
    /// Show the configuration: the options `up` would use and where each comes from.
    ///
    /// Options of `up`, `scheduler` and `job-script` come from, highest precedence first: the
    /// command line, environment variables RDASK_<OPTION> (RDASK_CORES, RDASK_JOB_EXTRA_DIRECTIVES,
    /// ...), the project file `rdask.toml` (in the current directory or the nearest one above),
    /// the user file `$XDG_CONFIG_HOME/rdask/jobqueue.toml` (default ~/.config/rdask/jobqueue.toml),
    /// and the built-in defaults. `--config FILE` (or RDASK_CONFIG) replaces both files.
    #[command(verbatim_doc_comment)]
    Config(ConfigCmd),
}

/// Transports the scheduler can listen on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP sockets.
    #[default]
    Tcp,
    /// UCX (rdask built with the `ucx` feature).
    Ucx,
}

impl Protocol {
    /// The address scheme.
    pub fn scheme(self) -> rdask_transport::Scheme {
        match self {
            Protocol::Tcp => rdask_transport::Scheme::Tcp,
            Protocol::Ucx => rdask_transport::Scheme::Ucx,
        }
    }
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputMode {
    /// For people.
    Text,
    /// For scripts.
    Json,
}

/// Options of `up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub scheduler: SchedulerArgs,
    /// Wait until every worker has joined (always done for the local backend).
    #[arg(long)]
    pub wait: bool,
    /// Seconds to wait for the workers to join before giving up.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Show what `up` would do (the job script, the commands) and do nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// After a crash of the cluster's scheduler, start over: cancel what it left (batch jobs,
    /// worker processes) and forget its jobs. Without it, `up` restores the cluster from its
    /// journal: the same jobs, workers and batch jobs carry on, and finished tasks are not run
    /// again.
    #[arg(long)]
    pub fresh: bool,
}

/// Options of `scheduler`.
#[derive(Debug, Args)]
pub struct SchedulerCmd {
    #[command(flatten)]
    pub args: SchedulerArgs,
    /// Run the cluster this spec file describes (JSON, written by `up`), ignoring every other
    /// option and the configuration.
    #[arg(long, hide = true)]
    pub spec_file: Option<PathBuf>,
    /// Carry on from the journal of a scheduler of this cluster that died (as `up` does after
    /// a crash): its jobs, its workers when they come back, its batch jobs and worker processes.
    #[arg(long)]
    pub restore: bool,
}

/// Options of the scheduler (shared by `up`, `scheduler` and `job-script`). What they mean is
/// [`crate::spec::ClusterSpec::resolve`]'s to say.
#[derive(Clone, Debug, Args)]
pub struct SchedulerArgs {
    /// Where workers run: `local` (processes on this machine), or worker jobs on a batch system.
    #[arg(long, default_value = "local", value_parser = backend_values())]
    pub backend: String,
    /// Number of local workers to start (local backend).
    #[arg(long, short = 'w', default_value_t = 2)]
    pub workers: usize,
    /// Submit the jobs as one job array instead of one job each.
    #[arg(long)]
    pub job_array: bool,
    /// A job script template replacing the default one (see templates/README.md).
    #[arg(long)]
    pub template: Option<PathBuf>,
    /// The command that submits jobs.
    #[arg(long, long_help = default_commands_help(Role::Submit))]
    pub submit_command: Option<PathBuf>,
    /// The command that reports job states.
    #[arg(long, long_help = default_commands_help(Role::Status))]
    pub status_command: Option<PathBuf>,
    /// The command that cancels jobs.
    #[arg(long, long_help = default_commands_help(Role::Cancel))]
    pub cancel_command: Option<PathBuf>,
    /// An extra worker pool (batch backends; repeatable): a name, then KEY=VALUE words, e.g.
    /// --pool 'gpu nodes=2 queue=gpu gpus=1 cores=4 memory=16GB account=12345 walltime=90'.
    ///
    /// A KEY is the long name of one of the options `--nodes` (default 1 for a pool), `--nodes-per-job`
    /// and the batch job options (`cores`, `queue`, `job-extra-directives`, ...): KEY=VALUE means
    /// `--KEY VALUE` and is checked as that option is. The pool has the main pool's options except
    /// the keys it gives, which replace them (a list key replaces the whole list; repeat it for
    /// several items: job-extra-directives=--a job-extra-directives=--b). Quote a value with spaces
    /// inside the item, as in a shell: --pool "gpu job-extra-directives='--constraint=a100 --exclusive'".
    #[arg(long, value_name = "NAME KEY=VALUE...")]
    pub pool: Vec<String>,
    /// Run the scheduler itself in a batch job rather than here (batch backends); clients
    /// find it through the state directory.
    #[arg(long)]
    pub scheduler_in_job: bool,
    /// Seconds between polls of the batch system.
    #[arg(long, default_value_t = 2.0)]
    pub poll_interval: f64,
    /// Adapt between --adapt-min and this many jobs (local backend: workers) from the start, every
    /// pool from the work its workers could run (GPU tasks grow only pools with GPUs),
    /// instead of --nodes (--workers); see `rdask-jobqueue adapt --help`.
    #[arg(long)]
    pub adapt_max: Option<u32>,
    /// Fewest jobs (local backend: workers) when adapting; needs --adapt-max.
    #[arg(long, default_value_t = 0)]
    pub adapt_min: u32,
    /// Seconds in which the queued work should finish when adapting.
    #[arg(long, default_value_t = 5.0)]
    pub target_duration: f64,
    /// The main pool's nodes and job parameters (also what each `--pool` item is parsed as).
    #[command(flatten)]
    pub main_pool: PoolArgs,
    /// Task slots (CPUs) per worker.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub slots: u16,
    /// A resource each worker offers to tasks, NAME=COUNT (repeatable): `gpu=4` offers GPUs
    /// 0-3 (set as each GPU task's CUDA_VISIBLE_DEVICES), `license=2` two licences. Batch
    /// workers also find the GPUs their job was given.
    #[arg(long = "resource", value_name = "NAME=COUNT")]
    pub resources: Vec<String>,
    /// One worker per GPU (local workers and batch jobs), each pinned to its GPU, as
    /// dask-cuda's LocalCUDACluster does.
    #[arg(long)]
    pub worker_per_gpu: bool,
    /// Address to listen on; 0.0.0.0 listens everywhere and gives workers every local address to try.
    #[arg(long, default_value = "0.0.0.0", conflicts_with = "interface")]
    pub host: String,
    /// Network interface to listen on (e.g. ib0): its address is the one workers use.
    #[arg(long)]
    pub interface: Option<String>,
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Transport between scheduler, workers and clients: tcp, or ucx (InfiniBand, NVLink,
    /// shared memory; needs rdask built with `--features ucx`; UCX_* variables such as
    /// UCX_TLS and UCX_NET_DEVICES pass through to UCX).
    #[arg(long, value_enum, default_value_t = Protocol::Tcp)]
    pub protocol: Protocol,
    /// Program the workers run: your program, for function tasks (it calls
    /// `rdask::worker_main_if_requested`); batch jobs start it by its absolute path, so it must
    /// be on a filesystem the compute nodes share [default: rdask-jobqueue].
    #[arg(long)]
    pub worker_program: Option<PathBuf>,
    /// The rdask-jobqueue path that batch jobs run, where compute nodes see it elsewhere
    /// [default: this program's absolute path].
    #[arg(long)]
    pub worker_command: Option<PathBuf>,
    /// Workers exit when the scheduler has been unreachable this many seconds.
    #[arg(long, default_value_t = 60)]
    pub death_timeout: u64,
    /// Heartbeat interval in milliseconds; a worker silent for 10 intervals is lost.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    pub heartbeat_ms: u64,
    /// Where the web dashboard listens (the next free port if this one is taken); `up` and
    /// `status` print its URL, which carries the cluster's dashboard token.
    #[arg(long, default_value = "0.0.0.0:8787", value_name = "HOST:PORT")]
    pub dashboard_address: String,
    /// Serve no dashboard (and no `/metrics`).
    #[arg(long)]
    pub no_dashboard: bool,
}

/// Options of one worker pool: its nodes and its jobs' parameters. The main pool's are options of
/// `up`; an extra pool's are the KEY=VALUE words of a `--pool` item, parsed by this same
/// definition ([`crate::spec`]).
#[derive(Clone, Debug, Default, PartialEq, Args)]
pub struct PoolArgs {
    /// Number of nodes to get workers on (batch backends): one job per node, or per
    /// `--nodes-per-job` nodes.
    #[arg(long, short = 'n', default_value_t = 1)]
    pub nodes: u32,
    #[command(flatten)]
    pub job: crate::batch::JobParams,
}

/// `config` and its subcommands.
#[derive(Debug, Args)]
pub struct ConfigCmd {
    #[command(subcommand)]
    pub action: ConfigAction,
    /// The files, the environment and the merged options, filled in by
    /// [`crate::config::parse_cli`] (the command line alone cannot tell where a value came from).
    #[arg(skip)]
    pub resolved: Option<crate::config::Resolved>,
}

/// The subcommands of `config`.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print every option `up` would use that has a value, the value, and where it came from.
    Show(Box<ConfigShowArgs>),
    /// Print which configuration files are read, whether they exist, and the RDASK_ variables set.
    Path,
}

/// Options of `config show`: those of `up` (to see their effect), and the output format.
#[derive(Debug, Args)]
pub struct ConfigShowArgs {
    #[command(flatten)]
    pub scheduler: SchedulerArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputMode::Text)]
    pub output: OutputMode,
}

/// Options of `worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Scheduler address(es), comma-separated [default: from the cluster's state directory].
    #[arg(long)]
    pub scheduler: Option<String>,
    /// File holding the cluster's secret [default: the state directory's].
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Task slots (CPUs) [default: all CPUs].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub slots: Option<u16>,
    /// Exit when the scheduler has been unreachable this many seconds [default: 60].
    #[arg(long)]
    pub death_timeout: Option<u64>,
    /// Directory the worker runs in (scratch space; created if missing; `$VARS` are expanded).
    #[arg(long)]
    pub local_directory: Option<String>,
    /// Network interface for the worker's data server (peers fetch results there).
    #[arg(long)]
    pub interface: Option<String>,
    /// Seconds the worker may live (its job's walltime less a grace period): it takes no task
    /// expected to end later, and retires, handing its results over, when the time is up.
    #[arg(long)]
    pub lifetime: Option<u64>,
    /// Up to this many seconds are taken off --lifetime at random, so that workers started
    /// together do not all leave at once.
    #[arg(long, default_value_t = 0, requires = "lifetime")]
    pub lifetime_stagger: u64,
    /// Run this program as the worker, with the options above in its environment: a program
    /// of yours that calls `rdask::worker_main_if_requested`, for function tasks (`up
    /// --worker-program` puts it in the job scripts).
    #[arg(long)]
    pub program: Option<PathBuf>,
    /// The GPUs, memory and named resources it offers to tasks.
    #[command(flatten)]
    pub offer: crate::resources::OfferArgs,
    /// Start one worker process per GPU, each pinned to its GPU (CUDA_VISIBLE_DEVICES) with an
    /// equal share of the slots, memory and resources, as dask-cuda's LocalCUDACluster does.
    #[arg(long)]
    pub worker_per_gpu: bool,
}

/// Options of `submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Run one task per index: ranges and single indices, e.g. 1-1000 or 1,3,10-20.
    /// Each task sees its index as RDASK_TASK_ID, and %{TASK_ID} in the command,
    /// --stdout, --stderr and --cwd is replaced by it.
    #[arg(long)]
    pub array: Option<String>,
    /// CPUs (worker slots) each task occupies.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub cpus: u16,
    /// GPUs, memory and named resources each task needs.
    #[command(flatten)]
    pub needs: crate::resources::NeedArgs,
    /// File for each task's standard output, or `none` [default: <state>/jobs/%{JOB_ID}/%{TASK_ID}.out,
    /// or streamed: see --stream].
    #[arg(long)]
    pub stdout: Option<String>,
    /// File for each task's standard error, or `none` [default: <state>/jobs/%{JOB_ID}/%{TASK_ID}.err,
    /// or streamed: see --stream].
    #[arg(long)]
    pub stderr: Option<String>,
    /// Stream the tasks' output: each worker appends the standard output and error of all the
    /// tasks it runs to one file in <state>/jobs/%{JOB_ID}/, framed by task, instead of two
    /// files per task (which parallel file systems bear badly); read it back with `output`.
    /// The default for arrays of more than 1000 tasks with neither --stdout nor --stderr.
    #[arg(long, conflicts_with_all = ["stdout", "stderr", "no_stream"])]
    pub stream: bool,
    /// Two files per task, however large the array.
    #[arg(long)]
    pub no_stream: bool,
    /// Working directory of the tasks [default: the current directory].
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// An environment variable for the tasks, NAME=VALUE (repeatable).
    #[arg(long)]
    pub env: Vec<String>,
    /// A name for the job [default: the program's name].
    #[arg(long)]
    pub job_name: Option<String>,
    /// Wait for the job to finish (like `wait`).
    #[arg(long)]
    pub wait: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Options of `scale`.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Workers (local) or nodes (batch) to have.
    pub n: u32,
    /// The worker pool to scale (batch backends) [default: the main one].
    #[arg(long, default_value = "default")]
    pub pool: String,
    /// Wait until the cluster has that many workers.
    #[arg(long)]
    pub wait: bool,
    /// Seconds to wait with --wait.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

/// Options of `adapt`.
#[derive(Debug, Args)]
pub struct AdaptArgs {
    /// Fewest batch jobs.
    #[arg(long, conflicts_with_all = ["min_workers", "off"])]
    pub min: Option<u32>,
    /// Most batch jobs doing work (jobs near their walltime, being replaced, are not counted).
    #[arg(long, conflicts_with_all = ["max_workers", "off"])]
    pub max: Option<u32>,
    /// Fewest workers (rounded up to whole jobs).
    #[arg(long, conflicts_with = "off")]
    pub min_workers: Option<u32>,
    /// Most workers (rounded down to whole jobs, at least one).
    #[arg(long, conflicts_with = "off")]
    pub max_workers: Option<u32>,
    /// Seconds in which the queued work should finish: more work per slot than this adds jobs.
    #[arg(long, default_value_t = 5.0)]
    pub target_duration: f64,
    /// Seconds between decisions.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Most jobs waiting in the batch queue at once.
    #[arg(long, default_value_t = 4)]
    pub max_pending: u32,
    /// Intervals of surplus in a row before a job is removed.
    #[arg(long, default_value_t = 3)]
    pub scale_down_after: u32,
    /// Failed submissions in a row before adapting pauses.
    #[arg(long, default_value_t = 5)]
    pub max_failures: u32,
    /// Seconds before a job's walltime ends that its replacement is submitted (while work remains).
    #[arg(long, default_value_t = 60.0)]
    pub replace_ahead: f64,
    /// Stop adapting; the cluster keeps the jobs it has.
    #[arg(long)]
    pub off: bool,
}

/// Options of `wait`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// The job [default: the last one submitted].
    pub job: Option<u32>,
    /// Output format of the result.
    #[arg(long, value_enum, default_value_t = OutputMode::Text)]
    pub output: OutputMode,
}

/// Options of `cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The job [default: the last one submitted].
    pub job: Option<u32>,
    /// Cancel only this task (its array index, as in `%{TASK_ID}`; repeatable) [default: every task].
    #[arg(long, value_name = "N")]
    pub task: Vec<u32>,
}

/// Options of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputMode::Text)]
    pub output: OutputMode,
    /// Redraw a live view (workers, jobs with progress bars, batch jobs) every second until
    /// Ctrl-C, for a terminal without a browser.
    #[arg(long, conflicts_with = "output")]
    pub watch: bool,
}

/// Options of `events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep printing new events as they happen, until Ctrl-C or the cluster ends.
    #[arg(long, short)]
    pub follow: bool,
    /// `text`: one line per event; `json`: one JSON object per line (`seq`, `at` in seconds
    /// since the epoch, `event`, and the event's fields).
    #[arg(long, value_enum, default_value_t = OutputMode::Text)]
    pub output: OutputMode,
}

/// Options of `output`.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// The job (as `submit` printed it).
    pub job: u64,
    /// Only this task (its array index) [default: every task, in order].
    #[arg(long)]
    pub task: Option<u32>,
    /// Standard error instead of standard output.
    #[arg(long)]
    pub stderr: bool,
}

/// Options of `down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    /// Seconds to wait for a clean stop before ending processes by signal.
    #[arg(long, default_value_t = 15)]
    pub timeout: u64,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
