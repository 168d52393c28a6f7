//! `rdask-jobqueue`: start, use and stop rdask clusters.
//!
//! The binary (`src/main.rs`) only parses arguments ([`cli`]) and calls [`run`]; each
//! subcommand is a function in its own file under `cmd/`: `up` (and its dry run), `down`,
//! `submit`, `wait`, `status`, `scale`, `adapt`, `worker`, `job-script`, and the background
//! `scheduler`; `run` is in [`srun`], `mpi` in [`mpi`], `config` in [`config`]. [`spec`] gives
//! the options their meaning once, as a `ClusterSpec`; `pools` says what a spec means for
//! batch jobs; [`provision`] starts, polls and ends the workers' allocations inside the
//! scheduler process. Every function returns this crate's typed [`Error`], whose
//! [`Error::exit_code`] is the command's exit code (the table is in [`error`]).

pub mod adapt;
pub mod backend;
pub mod batch;
pub mod cli;
mod cmd;
pub mod config;
pub mod dashboard;
pub mod embed;
pub mod error;
#[cfg(any(test, feature = "fake-batch"))]
pub mod fake;
pub mod jobs;
pub mod mpi;
pub mod net;
mod pools;
pub mod provision;
pub mod resources;
pub mod spec;
pub mod srun;
pub mod state;
pub mod systems;

use std::path::Path;

use rdask::cluster::ClusterInfo;
use rdask::protocol::ClusterStatus;
use rdask::Client;

pub use crate::error::{Error, Result};

use crate::cli::{Cli, Cmd};
use crate::spec::ClusterSpec;
use crate::state::{process_alive, Journalled, StateDir};

/// Runs one invocation; returns the process exit code (0, or the client command's for `run`
/// and `mpi`); an error's is [`Error::exit_code`].
pub fn run(cli: Cli) -> Result<i32> {
    if let Cmd::Mpi(a) = cli.command {
        // Before anything else: the ranks must all reach MPI_Init.
        return mpi::run_cli(cli.home, &cli.name, a);
    }
    let state = StateDir::locate(cli.home.as_deref(), &cli.name)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Error::io("cannot start the async runtime"))?;
    match cli.command {
        Cmd::Up(a) => rt.block_on(cmd::up::up(&state, a)),
        Cmd::Submit(a) => rt.block_on(cmd::submit::submit(&state, a)),
        Cmd::Wait(a) => rt.block_on(cmd::wait::wait(&state, a)),
        Cmd::Cancel(a) => rt.block_on(cmd::cancel::cancel(&state, a)),
        Cmd::Status(a) => rt.block_on(cmd::status::status(&state, a)),
        Cmd::Events(a) => rt.block_on(cmd::events::events(&state, a)),
        Cmd::Output(a) => cmd::output::output(&state, &a),
        Cmd::Down(a) => rt.block_on(cmd::down::down(&state, a)),
        Cmd::Scheduler(a) => rt.block_on(cmd::scheduler::scheduler(&state, a)),
        Cmd::JobScript(a) => cmd::job_script::job_script(&state, &ClusterSpec::resolve(&a, &state)?),
        Cmd::Worker(a) => rt.block_on(cmd::worker::worker(&state, a)),
        Cmd::Scale(a) => rt.block_on(cmd::scale::scale(&state, a)),
        Cmd::Adapt(a) => rt.block_on(cmd::adapt::adapt(&state, a)),
        Cmd::Run(a) => {
            let home = state.path.parent().map(Path::to_path_buf).unwrap_or_default();
            rt.block_on(srun::run(&home, &cli.name, a))
        }
        Cmd::Config(a) => config::run(&a),
        Cmd::Mpi(_) => unreachable!("handled above"),
    }
}

/// A client of the cluster in `state`; unreachable: [`Error::Unreachable`], with the hint
/// to clean up after a crash.
pub(crate) async fn connect(state: &StateDir) -> Result<Client> {
    let info = ClusterInfo::from_state_dir(&state.path)?;
    Client::connect(&info).await.map_err(Error::client(&state.name))
}

/// The batch jobs of every pool that have an id, as the provisioner sees them.
pub(crate) fn batch_allocations(s: &ClusterStatus) -> Vec<rdask::protocol::AllocationStatus> {
    let pools = s.provisioning.iter().flat_map(|p| &p.pools).filter(|p| p.unit == "job");
    pools.flat_map(|p| p.jobs.iter().filter(|j| !j.id.is_empty()).cloned()).collect()
}

/// Cancels every batch job and ends every process in the journal that is still alive;
/// returns how many processes there were.
pub(crate) fn cleanup(state: &StateDir) -> usize {
    let mut n = 0;
    let procs: Vec<(u32, Option<u64>)> = state
        .journal_entries()
        .into_iter()
        .filter_map(|e| match e {
            Journalled::Process { pid, start, .. } => Some((pid, Some(start))),
            _ => None,
        })
        .collect();
    match backend::cancel_journalled(state, backend::batch_system) {
        Ok(0) => {}
        Ok(jobs) => {
            println!("cancelled the cluster's {jobs} batch job(s); the batch system shows none of them running")
        }
        Err(e) => eprintln!("warning: cancelling the cluster's batch jobs failed: {e}"),
    }
    for (pid, start) in procs {
        // A pid the system has recycled for another program is left alone.
        let same = start.is_none_or(|s| state::process_start_time(pid) == Some(s));
        if same && process_alive(pid, "") {
            n += 1;
            rdask::process::terminate(rdask::process::Target::Process(pid), rdask::process::GRACE);
        }
    }
    let _ = std::fs::remove_file(state.file(rdask::cluster::SCHEDULER_FILE));
    state.clear_journal();
    n
}

pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(15);
    let t = lines[start..].join("\n");
    if t.is_empty() {
        format!("({} is empty)", path.display())
    } else {
        t
    }
}

/// The end of the newest files in the cluster's batch log directory.
pub(crate) fn logs_tail(state: &StateDir) -> String {
    let mut files: Vec<_> = std::fs::read_dir(state.path.join("logs"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    let mut out = String::new();
    for f in files.iter().rev().take(2) {
        out.push_str(&format!("==> {} <==\n{}\n", f.display(), tail(f)));
    }
    if out.is_empty() {
        out = format!("(no job output in {}; see scheduler.log)", state.path.join("logs").display());
    }
    out
}
