//! The MPI bootstrap: `mpirun -n N rdask-jobqueue mpi -- <client command>`, and [`initialize`]
//! for Rust programs (one line at the top of `main`, like dask-mpi's `initialize()`).
//!
//! Rank 0 runs the scheduler, rank 1 the client (the command, or the rest of the program),
//! ranks 2.. are workers. The scheduler's addresses and the cluster's secret travel by
//! `MPI_Bcast`: no scheduler file, no shared filesystem. Roles are those of `srun.rs`, whose
//! pieces this shares.
//!
//! How a job ends:
//! - cleanly: the client finishes and shuts the cluster down, the scheduler stops the
//!   workers, every rank meets in a final barrier and calls `MPI_Finalize`; rank 1 exits with
//!   the client's code, every other rank with 0 (MPICH ORs the ranks' codes, OpenMPI
//!   reports the first non-zero one: either way the job's code is the client's).
//! - on any failure, by `MPI_Abort`, so that no rank is left waiting for the walltime: a
//!   panic anywhere (a panic hook; a panic inside a task function is that task's failure
//!   instead and is reported to the client), a fatal error on any rank, a worker rank that
//!   disconnects before the end (killed by a signal, say: rank 0 notices), the client rank
//!   going away without shutting the cluster down, workers missing after `--timeout`, or a
//!   rank missing from the final barrier after `--timeout`. The message names the rank and
//!   the cause.
//!
//! Built only with the `mpi` feature; without it `rdask-jobqueue mpi` says how to get it.

use std::time::Duration;

pub use crate::cli::Protocol;

/// Options of `rdask-jobqueue mpi`.
#[derive(Clone, Debug, clap::Args)]
pub struct MpiArgs {
    /// Task slots of each worker rank [default: the CPUs the rank may run on].
    #[arg(long)]
    pub slots: Option<u16>,
    /// Transport between scheduler, workers and client: tcp, or ucx (needs rdask built with the
    /// `ucx` feature; UCX_* variables pass through to UCX).
    #[arg(long, value_enum, default_value_t = Protocol::Tcp)]
    pub protocol: Protocol,
    /// Network interface the scheduler listens on [default: all of them; the other ranks try
    /// its addresses in order].
    #[arg(long)]
    pub interface: Option<String>,
    /// Seconds the workers may take to register, and every rank to reach the end once the
    /// client is done; past either, the job is aborted.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Print (rank 1, on stderr) when MPI was up, the scheduler known and all workers there.
    #[arg(long)]
    pub timing: bool,
    /// The client command, after `--`; it sees the cluster through RDASK_CLUSTER/RDASK_HOME
    /// (for `rdask-jobqueue submit`) and RDASK_SCHEDULER/RDASK_SECRET_FILE (for Rust clients).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Options of [`initialize_with`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Task slots of each worker rank (`None`: the CPUs the rank may run on).
    pub slots: Option<u16>,
    /// The transport.
    pub protocol: Protocol,
    /// Network interface the scheduler listens on (`None`: all).
    pub interface: Option<String>,
    /// How long the workers may take to register, and every rank to reach the end.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options { slots: None, protocol: Protocol::Tcp, interface: None, timeout: Duration::from_secs(60) }
    }
}

/// Environment variables by which MPI launchers (OpenMPI's mpirun, MPICH's Hydra, Slurm's
/// PMI-2 and PMIx plugins) tell a process it is one of several ranks.
const LAUNCHER_VARS: &[&str] = &["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"];

/// Whether this process was started by an MPI launcher (`mpirun`, `mpiexec`, `srun --mpi=…`)
/// as one of its ranks (not as a worker of another cluster, which rdask starts with RDASK_ROLE).
pub fn launched_by_mpi() -> bool {
    LAUNCHER_VARS.iter().any(|v| std::env::var_os(v).is_some()) && std::env::var_os(rdask::local::ROLE_VAR).is_none()
}

/// The pure parts, tested without MPI.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
mod parts {
    /// The number of processes the launcher says it started, and the variable that says so.
    pub(super) fn launcher_size() -> Option<(&'static str, u32)> {
        ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"]
            .into_iter()
            .find_map(|v| std::env::var(v).ok().and_then(|n| n.parse().ok()).map(|n| (v, n)))
    }

    /// Why the world cannot hold a cluster, or `None` when it can.
    pub(super) fn world_size_problem(size: u32, launcher: Option<(&str, u32)>) -> Option<String> {
        match launcher {
            Some((var, n)) if size == 1 && n > 1 => Some(format!(
                "MPI sees 1 rank but {var}={n}: the launcher belongs to another MPI than the one this program was \
                 built with (e.g. MPICH's mpirun for an OpenMPI build, or srun without --mpi=pmix/pmi2); start it \
                 with the mpirun of the MPI it was built with"
            )),
            _ if size < 3 => Some(format!(
                "`mpi` needs at least 3 MPI ranks (rank 0 the scheduler, rank 1 the client, ranks 2.. the \
                 workers); this job has {size}: use mpirun -n 3 or more"
            )),
            _ => None,
        }
    }

    /// What rank `rank` does.
    pub(super) fn role(rank: i32) -> &'static str {
        match rank {
            0 => "scheduler",
            1 => "client",
            _ => "worker",
        }
    }

    /// What rank 0 broadcasts: where the scheduler is and the cluster's secret.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub(super) struct Rendezvous {
        /// The scheduler's addresses, best first.
        pub addresses: Vec<String>,
        /// The secret, in hex.
        pub secret: String,
        /// The scheduler's pid and host.
        pub pid: u32,
        pub host: String,
    }

    impl Rendezvous {
        pub fn encode(&self) -> Vec<u8> {
            format!("{}\n{}\n{}\n{}", self.addresses.join(","), self.secret, self.pid, self.host).into_bytes()
        }

        pub fn decode(bytes: &[u8]) -> Result<Rendezvous, String> {
            let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
            let mut lines = text.splitn(4, '\n');
            let mut next = |what: &str| lines.next().ok_or(format!("no {what}"));
            let addresses = next("addresses")?.split(',').map(str::to_string).collect();
            let secret = next("secret")?.to_string();
            let pid = next("pid")?.parse().map_err(|e| format!("pid: {e}"))?;
            let host = next("host")?.to_string();
            Ok(Rendezvous { addresses, secret, pid, host })
        }

        pub fn cluster(&self) -> Result<rdask::ClusterInfo, String> {
            let addresses =
                self.addresses.iter().map(|a| a.parse().map_err(|e| format!("{e}"))).collect::<Result<Vec<_>, _>>()?;
            let secret = rdask::Secret::from_hex(&self.secret).ok_or("malformed secret")?;
            Ok(rdask::ClusterInfo { addresses, secret })
        }
    }

    /// The rank's identity as rank 0 matches it against the workers that register.
    pub(super) const RECORD: usize = 68;

    pub(super) fn record(pid: u32, host: &str) -> [u8; RECORD] {
        let mut r = [0u8; RECORD];
        r[..4].copy_from_slice(&pid.to_le_bytes());
        let host = host.as_bytes();
        let n = host.len().min(RECORD - 4);
        r[4..4 + n].copy_from_slice(&host[..n]);
        r
    }

    pub(super) fn parse_record(r: &[u8]) -> (u32, String) {
        let pid = u32::from_le_bytes([r[0], r[1], r[2], r[3]]);
        let host = r[4..].split(|b| *b == 0).next().unwrap_or_default();
        (pid, String::from_utf8_lossy(host).into_owned())
    }

    /// Whether a registered worker is the process of `record` (host names are cut to fit a record).
    pub(super) fn is_rank(w: &rdask::protocol::WorkerInfo, (pid, host): &(u32, String)) -> bool {
        w.pid == *pid && w.host.as_bytes().starts_with(host.as_bytes())
    }

    /// Whether a variable is one by which the MPI launcher told this process its place in the
    /// job (a process this one starts must not inherit those: an MPI program would take itself
    /// for this rank, and MPICH's hangs). Users' settings (OMPI_MCA_btl, OMPI_ALLOW_RUN_AS_ROOT,
    /// …) stay.
    pub(crate) fn launcher_var(name: &str) -> bool {
        const OMPI_RUNTIME_MCA: &[&str] = &["ess", "orte_", "pmix", "initial_wdir", "shmem_RUNTIME_QUERY_hint"];
        if let Some(mca) = name.strip_prefix("OMPI_MCA_") {
            return OMPI_RUNTIME_MCA.iter().any(|p| mca.starts_with(p));
        }
        if let Some(rest) = name.strip_prefix("OMPI_") {
            return !rest.starts_with("ALLOW_RUN_AS_ROOT");
        }
        ["PMI_", "PMIX_", "HYDI_", "MPI_LOCALNRANKS", "MPI_LOCALRANKID"].iter().any(|p| name.starts_with(p))
    }

    /// Where rank 1 keeps the state directory its client command finds the cluster in: named by
    /// its host and pid, so that a later run on the same host can tell an aborted run's.
    pub(super) fn client_state_name(name: &str) -> String {
        format!("{name}-mpi-{}-{}", rdask::worker::hostname(), std::process::id())
    }

    /// Removes what aborted runs of cluster `name` on this host left in `home` (an aborted job's
    /// rank 1 is killed before it can remove its state directory): the directories named by
    /// [`client_state_name`] whose process is gone. Returns how many.
    pub(super) fn sweep_dead_client_states(home: &std::path::Path, name: &str) -> usize {
        let prefix = format!("{name}-mpi-{}-", rdask::worker::hostname());
        let Ok(entries) = std::fs::read_dir(home) else { return 0 };
        let mut removed = 0;
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = file.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
            if pid != std::process::id()
                && !crate::state::process_alive(pid, "")
                && std::fs::remove_dir_all(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
        removed
    }
}

pub(crate) use parts::launcher_var;
#[cfg_attr(not(feature = "mpi"), allow(unused_imports))]
use parts::*;

#[cfg(not(feature = "mpi"))]
pub(crate) fn run_cli(_home: Option<std::path::PathBuf>, _name: &str, _a: MpiArgs) -> crate::error::Result<i32> {
    Err(crate::error::Error::Usage(
        "this rdask-jobqueue was built without MPI support: rebuild it with `--features mpi` \
         (e.g. `cargo install --path jobqueue --features mpi`; needs OpenMPI or MPICH and their mpicc)"
            .into(),
    ))
}

#[cfg(feature = "mpi")]
pub(crate) use imp::run_cli;
#[cfg(feature = "mpi")]
pub use imp::{initialize, initialize_with, MpiCluster};

#[cfg(feature = "mpi")]
mod imp {
    use std::future::Future;
    use std::io::Write;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use anyhow::{anyhow, Context, Result};
    use mpi::collective::{CommunicatorCollectives, Root};
    use mpi::environment::Universe;
    use mpi::topology::{Communicator, SimpleCommunicator};
    use mpi::Threading;
    use rdask::cluster::{ClusterInfo, SchedulerFile, SECRET_FILE};
    use rdask::{Client, Registry};

    use super::*;
    use crate::srun;
    use crate::state::StateDir;

    /// This process's part of the MPI job.
    struct World {
        universe: Universe,
        comm: SimpleCommunicator,
        rank: i32,
        size: i32,
        started: Instant,
    }

    /// Initialises MPI, installs the panic hook and checks the world's size (all ranks do the
    /// same check, so on a refusal they all finalise and exit 2, and rank 0 says why).
    fn init() -> World {
        let started = Instant::now();
        let Some((universe, _threading)) = mpi::initialize_with_threading(Threading::Multiple) else {
            eprintln!(
                "error: rdask mpi: MPI was initialised already: call rdask_jobqueue::mpi::initialize once, \
                 first thing in main, before anything else initialises MPI"
            );
            SimpleCommunicator::world().abort(2)
        };
        let comm = universe.world();
        let (rank, size) = (comm.rank(), comm.size());
        install_panic_hook(rank);
        close_on_exec();
        if let Some(why) = world_size_problem(size as u32, launcher_size()) {
            if rank == 0 {
                eprintln!("error: {why}");
            }
            drop(universe);
            std::process::exit(2);
        }
        World { universe, comm, rank, size, started }
    }

    /// Marks every file descriptor but stdin, stdout and stderr close-on-exec: the launcher's
    /// and MPI's own sockets and pipes (MPICH's PMI_FD, say) are not for the processes a rank
    /// starts (client command, command tasks), and the launcher waits for them to close: a
    /// task left running by a rank killed with SIGKILL would hold up the end of the job.
    fn close_on_exec() {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        let Ok(fds) = std::fs::read_dir("/proc/self/fd") else { return };
        for fd in fds.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).filter(|fd| *fd > 2) {
            if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFD) {
                let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::from_bits_truncate(flags) | FdFlag::FD_CLOEXEC));
            }
        }
    }

    /// A panic on any rank ends the job with `MPI_Abort`; otherwise unwinding reaches
    /// `MPI_Finalize`, which waits for ranks that wait for this one.
    fn install_panic_hook(rank: i32) {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            // A panic in a task function is that task's failure: the worker catches it in the
            // slot thread and reports it to the client.
            if std::thread::current().name().is_some_and(|n| n.starts_with("rdask-slot-")) {
                return;
            }
            if mpi::environment::is_initialized() && !mpi::environment::is_finalized() {
                let payload = info.payload();
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                abort(rank, &format!("panicked: {what}"), 70);
            }
        }));
    }

    /// Ends the whole job: every rank, now.
    fn abort(rank: i32, why: &str, code: i32) -> ! {
        let _ = std::io::stdout().flush();
        eprintln!("error: rdask mpi: rank {rank} ({}) {why}; aborting the MPI job", role(rank));
        let _ = std::io::stderr().flush();
        // Give the launcher a moment to forward that message: MPICH's can lose a rank's last
        // output when the abort kills everything.
        std::thread::sleep(Duration::from_millis(250));
        SimpleCommunicator::world().abort(code)
    }

    fn fatal(rank: i32, e: &anyhow::Error) -> ! {
        abort(rank, &format!("failed: {e:#}"), 1)
    }

    /// Runs `f` to completion on a runtime of its own, in a thread of its own (so that this
    /// also works when the caller is inside a tokio runtime, and the main thread stays free).
    fn block_on<M, F>(make: M) -> F::Output
    where
        M: FnOnce() -> F + Send,
        F: Future,
        F::Output: Send,
    {
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
                rt.expect("cannot start the tokio runtime").block_on(make())
            })
            .join()
            .unwrap_or_else(|_| std::process::abort()) // the panic hook has aborted already
        })
    }

    impl World {
        /// Rank 0 learns every rank's pid and host, to name a worker rank that goes away.
        fn gather_identities(&self) -> Vec<(u32, String)> {
            let mine = record(std::process::id(), &rdask::worker::hostname());
            let root = self.comm.process_at_rank(0);
            if self.rank == 0 {
                let mut all = vec![0u8; RECORD * self.size as usize];
                root.gather_into_root(&mine[..], &mut all[..]);
                all.chunks(RECORD).map(parse_record).collect()
            } else {
                root.gather_into(&mine[..]);
                Vec::new()
            }
        }

        /// Rank 0 sends `payload`; the others receive it.
        fn broadcast(&self, payload: Option<Vec<u8>>) -> Vec<u8> {
            let root = self.comm.process_at_rank(0);
            let mut len = payload.as_ref().map_or(0, |p| p.len() as u64);
            root.broadcast_into(&mut len);
            let mut bytes = payload.unwrap_or_else(|| vec![0; len as usize]);
            root.broadcast_into(&mut bytes[..]);
            bytes
        }

        fn rendezvous(&self) -> (Rendezvous, ClusterInfo) {
            let bytes = self.broadcast(None);
            let r = Rendezvous::decode(&bytes);
            match r.and_then(|r| r.cluster().map(|c| (r, c))) {
                Ok(both) => both,
                Err(e) => abort(self.rank, &format!("got a malformed rendezvous from rank 0: {e}"), 1),
            }
        }

        /// The clean end: every rank meets in a barrier, then MPI is finalised. A rank that
        /// does not arrive within `timeout` makes the job abort instead of hang. (A
        /// non-blocking barrier, polled: MPICH's blocking one spins on a CPU.)
        fn end(self, timeout: Duration) {
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            let deadline = Instant::now() + timeout;
            let mut barrier = self.comm.immediate_barrier();
            loop {
                match barrier.test() {
                    Ok(_) => break,
                    Err(pending) => barrier = pending,
                }
                if Instant::now() > deadline {
                    let why = format!("waited {} s for the other ranks to end", timeout.as_secs());
                    abort(self.rank, &why, 1);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            drop(self.universe);
        }

        fn finish(self, code: i32, timeout: Duration) -> ! {
            self.end(timeout);
            std::process::exit(code)
        }

        /// Rank 0: starts the scheduler, tells everyone where it is, and watches the job until
        /// the client shuts the cluster down. Never returns.
        fn scheduler(self, o: &Options) -> ! {
            rdask::init_logging();
            let ranks = self.gather_identities();
            let (tx, rx) = std::sync::mpsc::channel();
            let rank = self.rank;
            let watched = std::thread::scope(|s| {
                let server = s.spawn(move || {
                    block_on(|| async {
                        let started = srun::start_scheduler(o.protocol.scheme(), o.interface.as_deref()).await?;
                        let r = Rendezvous {
                            addresses: started.addresses.clone(),
                            secret: started.secret().to_hex(),
                            pid: std::process::id(),
                            host: rdask::worker::hostname(),
                        };
                        let _ = tx.send(r.encode());
                        watch(started, &ranks, o.timeout).await
                    })
                });
                match rx.recv() {
                    Ok(payload) => {
                        self.broadcast(Some(payload));
                    }
                    Err(_) => match server.join() {
                        Ok(Err(e)) => fatal(rank, &e.context("cannot start the scheduler")),
                        _ => abort(rank, "could not start the scheduler", 1),
                    },
                }
                server.join().unwrap_or_else(|_| std::process::abort())
            });
            match watched {
                Ok(()) => self.finish(0, o.timeout),
                Err(e) => fatal(rank, &e),
            }
        }

        /// Ranks 2..: a worker until the scheduler stops it. Never returns.
        fn worker(self, o: &Options, registry: Registry) -> ! {
            rdask::init_logging();
            self.gather_identities();
            let (_, info) = self.rendezvous();
            let timeout = o.timeout.as_secs().max(1);
            match block_on(|| srun::run_worker(info, o.slots, timeout, registry)) {
                Ok(()) => self.finish(0, o.timeout),
                Err(e) => fatal(self.rank, &e.into()),
            }
        }
    }

    /// Rank 0's watch: returns `Ok` when the scheduler has stopped (the client shut the
    /// cluster down), an error when the job must be aborted. Before that, it stops the workers
    /// still there, so that they end their command tasks before the abort kills them.
    async fn watch(started: srun::Started, ranks: &[(u32, String)], timeout: Duration) -> Result<()> {
        let me = Client::connect(&started.info).await.context("cannot reach its own scheduler")?;
        let srun::Started { server, mut owner, .. } = started;
        let mut stopped = std::pin::pin!(server.wait());
        let trouble = watch_for_trouble(&me, &mut owner, stopped.as_mut(), ranks, timeout).await;
        let Some(why) = trouble else { return Ok(()) };
        owner.end_cluster();
        let _ = tokio::time::timeout(Duration::from_secs(2), stopped).await;
        Err(anyhow!(why))
    }

    /// Watches the job until the scheduler stops (`None`), or something that must abort it.
    async fn watch_for_trouble(
        me: &Client,
        owner: &mut srun::OwnerWatch,
        mut stopped: std::pin::Pin<&mut impl Future<Output = ()>>,
        ranks: &[(u32, String)],
        timeout: Duration,
    ) -> Option<String> {
        let start = Instant::now();
        let workers: Vec<usize> = (2..ranks.len()).collect();
        let mut seen = vec![false; ranks.len()];
        loop {
            tokio::select! {
                _ = &mut stopped => return None,
                why = owner.gone(timeout, "rank 1") => return Some(why),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            let status = tokio::select! {
                _ = &mut stopped => return None,
                s = me.status() => s,
            };
            let s = match status {
                Ok(s) => s,
                Err(e) => {
                    // The scheduler closes every connection right after a shutdown request.
                    if tokio::time::timeout(Duration::from_secs(5), &mut stopped).await.is_ok() {
                        return None;
                    }
                    return Some(format!("the scheduler stopped answering ({e})"));
                }
            };
            for &r in &workers {
                let here = s.workers.iter().any(|w| is_rank(&w.info, &ranks[r]));
                if seen[r] && !here {
                    let (pid, host) = &ranks[r];
                    return Some(format!(
                        "worker rank {r} (pid {pid} on {host}) left the cluster before the client was done: \
                         it died, froze or lost its connection (the scheduler's warning above says which)"
                    ));
                }
                seen[r] |= here;
            }
            if start.elapsed() > timeout {
                let missing: Vec<String> = workers.iter().filter(|&&r| !seen[r]).map(|r| r.to_string()).collect();
                if !missing.is_empty() {
                    return Some(format!(
                        "worker rank(s) {} did not register within {} s (see their messages above; \
                         --timeout sets the wait)",
                        missing.join(", "),
                        timeout.as_secs()
                    ));
                }
            }
        }
    }

    /// `rdask-jobqueue mpi -- CMD` on every rank; rank 1 returns the command's exit code (the
    /// others never return).
    pub(crate) fn run_cli(home: Option<PathBuf>, name: &str, a: MpiArgs) -> crate::error::Result<i32> {
        // First thing: under MPICH, a rank that ends before MPI_Init leaves the others hanging.
        let world = init();
        let o = Options {
            slots: a.slots,
            protocol: a.protocol,
            interface: a.interface.clone(),
            timeout: Duration::from_secs(a.timeout.max(1)),
        };
        match world.rank {
            0 => world.scheduler(&o),
            1 => {}
            _ => world.worker(&o, Registry::new()),
        }
        world.gather_identities();
        let mpi_up = world.started.elapsed();
        let (rendezvous, info) = world.rendezvous();
        let known = world.started.elapsed();
        let workers = (world.size - 2) as u32;
        let rank = world.rank;
        let result = block_on(|| async {
            let client = srun::connect_when_workers(&info, workers, a.timeout).await?;
            if a.timing {
                eprintln!(
                    "rdask mpi timing (rank 1, since it started): MPI up {:.3} s, scheduler known {:.3} s, \
                     {workers} workers registered {:.3} s",
                    mpi_up.as_secs_f64(),
                    known.as_secs_f64(),
                    world.started.elapsed().as_secs_f64()
                );
            }
            // A state directory on this node only, for `rdask-jobqueue submit` and friends.
            let state = StateDir::locate(home.as_deref(), &client_state_name(name))?;
            state.create()?;
            if let Some(parent) = state.path.parent() {
                sweep_dead_client_states(parent, name);
            }
            info.secret.save(&state.file(SECRET_FILE))?;
            let Rendezvous { addresses, pid, host, .. } = rendezvous;
            SchedulerFile { addresses, pid, host }.write(&state.path)?;
            // Not a rank itself: an MPI program it starts must not take itself for rank 1.
            let code = srun::run_command(&client, &info, &state, &a.command, launcher_var).await;
            let _ = std::fs::remove_dir_all(&state.path);
            // The command could not start: the client failed, as a shell's would (127), and
            // the cluster, shut down already, ends cleanly.
            Ok(code.unwrap_or_else(|e| {
                eprintln!("error: {e:#}");
                127
            }))
        });
        match result {
            Ok(code) => world.finish(code, o.timeout),
            Err(e) => fatal(rank, &e),
        }
    }

    /// Under `mpirun`, makes this program an rdask cluster; call it first thing in `main`:
    ///
    /// ```no_run
    /// let registry = rdask::Registry::new(); // with the program's task functions
    /// let cluster = rdask_jobqueue::mpi::initialize(&registry);
    /// ```
    ///
    /// Rank 0 becomes the scheduler and ranks 2.. workers running `registry`'s functions: for
    /// them this never returns (they exit 0 when the cluster ends). Rank 1 gets
    /// `Some(cluster)`, once every worker has registered, and goes on as the client: connect
    /// with [`rdask::Client::connect`]`(cluster.info())`. Dropping the cluster (at the end of
    /// `main`) or [`MpiCluster::finish`] ends the job cleanly; a panic on any rank aborts it.
    ///
    /// Not started by an MPI launcher: returns `None` and initialises nothing.
    pub fn initialize(registry: &Registry) -> Option<MpiCluster> {
        initialize_with(registry, Options::default())
    }

    /// [`initialize`] with options.
    pub fn initialize_with(registry: &Registry, o: Options) -> Option<MpiCluster> {
        if !launched_by_mpi() {
            return None;
        }
        let world = init();
        match world.rank {
            0 => world.scheduler(&o),
            1 => {}
            _ => world.worker(&o, registry.clone()),
        }
        world.gather_identities();
        let (_, info) = world.rendezvous();
        let workers = (world.size - 2) as usize;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let keeper = {
            let info = info.clone();
            let timeout = o.timeout.as_secs();
            // Rank 1's own connection, from now until it shuts the cluster down (rank 0 takes
            // its closing early for the client's end).
            std::thread::spawn(move || {
                block_on(move || async move {
                    let client = match srun::connect_when_workers(&info, workers as u32, timeout).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                            return Ok(());
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let _ = stop_rx.await;
                    client.shutdown().await.context("cannot shut the cluster down")
                })
            })
        };
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => fatal(world.rank, &e),
            Err(_) => abort(world.rank, "lost its connection keeper", 1),
        }
        Some(MpiCluster {
            info,
            workers,
            world: Some(world),
            stop: Some(stop_tx),
            keeper: Some(keeper),
            timeout: o.timeout,
        })
    }

    /// The cluster an MPI job makes, as rank 1 (the client) sees it.
    #[derive(Debug)]
    pub struct MpiCluster {
        info: ClusterInfo,
        workers: usize,
        world: Option<World>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        keeper: Option<std::thread::JoinHandle<Result<()>>>,
        timeout: Duration,
    }

    impl std::fmt::Debug for World {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("World").field("rank", &self.rank).field("size", &self.size).finish()
        }
    }

    impl MpiCluster {
        /// How to reach the cluster (for [`rdask::Client::connect`]).
        pub fn info(&self) -> &ClusterInfo {
            &self.info
        }

        /// The number of workers (ranks 2..), all registered.
        pub fn workers(&self) -> usize {
            self.workers
        }

        /// Ends the job cleanly and exits with `code`, which becomes the job's exit code.
        pub fn finish(mut self, code: i32) -> ! {
            self.shut_down();
            std::process::exit(code)
        }

        fn shut_down(&mut self) {
            let Some(world) = self.world.take() else { return };
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            if let Some(keeper) = self.keeper.take() {
                match keeper.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => fatal(world.rank, &e),
                    Err(_) => std::process::abort(),
                }
            }
            world.end(self.timeout);
        }
    }

    impl Drop for MpiCluster {
        /// Shuts the cluster down and finalises MPI, after every rank is done.
        fn drop(&mut self) {
            self.shut_down();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rendezvous_broadcast_round_trips() {
        let secret = rdask::Secret::generate();
        let addrs = vec!["tcp://10.0.0.1:4000".to_string(), "tcp://127.0.0.1:4000".to_string()];
        let r = Rendezvous { addresses: addrs.clone(), secret: secret.to_hex(), pid: 77, host: "n1".into() };
        let back = Rendezvous::decode(&r.encode()).unwrap();
        assert_eq!(back, r);
        let info = back.cluster().unwrap();
        assert_eq!(info.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(), addrs);
        assert_eq!(info.secret.to_hex(), secret.to_hex());
        assert!(Rendezvous::decode(b"tcp://x:1").is_err());
        let bad = Rendezvous { addresses: vec!["nonsense".into()], secret: "abc".into(), pid: 1, host: "h".into() };
        assert!(Rendezvous::decode(&bad.encode()).unwrap().cluster().is_err());
    }

    #[test]
    fn records_carry_pid_and_host() {
        let r = record(4242, "node17.cluster");
        assert_eq!(parse_record(&r), (4242, "node17.cluster".to_string()));
        let long = "h".repeat(100);
        let (pid, host) = parse_record(&record(7, &long));
        assert_eq!((pid, host.len()), (7, RECORD - 4));
        let w = rdask::protocol::WorkerInfo {
            slots: 1,
            host: long,
            pid: 7,
            launch: None,
            data_address: String::new(),
            lifetime_ms: None,
            offer: Default::default(),
            resume: None,
        };
        assert!(is_rank(&w, &(7, host.clone())));
        assert!(!is_rank(&w, &(8, host)));
    }

    #[test]
    fn too_small_worlds_are_refused_with_the_fix() {
        assert!(world_size_problem(3, None).is_none());
        assert!(world_size_problem(8, Some(("OMPI_COMM_WORLD_SIZE", 8))).is_none());
        let two = world_size_problem(2, Some(("OMPI_COMM_WORLD_SIZE", 2))).unwrap();
        assert!(two.contains("at least 3") && two.contains("mpirun -n 3"), "{two}");
        let wrong = world_size_problem(1, Some(("PMI_SIZE", 4))).unwrap();
        assert!(wrong.contains("PMI_SIZE=4") && wrong.contains("another MPI"), "{wrong}");
        assert!(world_size_problem(1, None).unwrap().contains("has 1"));
    }

    #[test]
    fn launcher_variables_are_told_from_users_settings() {
        for v in [
            "OMPI_COMM_WORLD_SIZE",
            "OMPI_MCA_ess_base_jobid",
            "OMPI_MCA_orte_hnp_uri",
            "OMPI_MCA_pmix",
            "OMPI_FILE_LOCATION",
            "PMIX_RANK",
            "PMIX_SERVER_URI4",
            "PMI_FD",
            "PMI_SIZE",
            "HYDI_CONTROL_FD",
            "MPI_LOCALRANKID",
        ] {
            assert!(launcher_var(v), "{v}");
        }
        for v in [
            "OMPI_MCA_btl",
            "OMPI_ALLOW_RUN_AS_ROOT",
            "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM",
            "SLURM_JOB_ID",
            "PATH",
            "RDASK_SCHEDULER",
        ] {
            assert!(!launcher_var(v), "{v}");
        }
    }

    #[test]
    fn roles_by_rank() {
        assert_eq!((role(0), role(1), role(2), role(9)), ("scheduler", "client", "worker", "worker"));
        assert!(client_state_name("default").starts_with("default-mpi-"));
    }

    #[test]
    fn only_the_state_of_dead_runs_on_this_host_is_swept() {
        let home = tempfile::tempdir().unwrap();
        let host = rdask::worker::hostname();
        let dirs = [
            format!("default-mpi-{host}-999999999"),              // dead (no such pid)
            format!("default-mpi-{host}-{}", std::process::id()), // this very run
            format!("default-mpi-{host}-1"),                      // alive (init)
            "default-mpi-othernode-999999999".to_string(),        // another host: not ours to judge
            format!("other-mpi-{host}-999999999"),                // another cluster
        ];
        for d in &dirs {
            std::fs::create_dir(home.path().join(d)).unwrap();
            std::fs::write(home.path().join(d).join("secret"), "x").unwrap();
        }
        assert_eq!(sweep_dead_client_states(home.path(), "default"), 1);
        let left: Vec<bool> = dirs.iter().map(|d| home.path().join(d).exists()).collect();
        assert_eq!(left, [false, true, true, true, true]);
    }
}
