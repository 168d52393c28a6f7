//! A cluster on this machine: an in-process scheduler and worker processes.
//!
//! Workers are copies of the current program started with `RDASK_ROLE=worker`,
//! so the functions the program registers exist in them too. The program must
//! call [`worker_main_if_requested`] first thing in `main`.

use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use rdask_transport::auth::Secret;
use rdask_transport::Address;

use crate::cluster::ClusterInfo;
use crate::limits;
use crate::registry::Registry;
use crate::scheduler::Config;
use crate::server::{self, ServerHandle};
use crate::worker::{self, WorkerConfig};
use crate::{Client, ClientError};

/// The environment variable that turns a program into a worker.
pub const ROLE_VAR: &str = "RDASK_ROLE";

/// If this process was started as a worker (`RDASK_ROLE=worker`), runs the worker
/// with `registry` and exits; otherwise returns and the program goes on.
///
/// The worker reads `RDASK_SCHEDULER` and `RDASK_SECRET` (or `RDASK_SECRET_FILE`, or
/// `RDASK_STATE_DIR`), `RDASK_SLOTS`, `RDASK_DEATH_TIMEOUT` (seconds), and, where a batch
/// job starts it (`rdask-jobqueue worker --program`), `RDASK_LIFETIME_MS` (it retires when
/// that time is up), `RDASK_LISTEN_HOST` (its data server's address) and `RDASK_OFFER` (the GPUs,
/// memory and named resources it offers, see [`crate::protocol::Offer::to_text`]).
pub fn worker_main_if_requested(registry: &Registry) {
    if std::env::var(ROLE_VAR).as_deref() != Ok("worker") {
        return;
    }
    std::process::exit(worker_main(registry.clone()));
}

/// Runs a worker configured from the environment; returns the process exit code.
pub fn worker_main(registry: Registry) -> i32 {
    crate::init_logging();
    let cluster = match ClusterInfo::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rdask worker: {e}");
            return 2;
        }
    };
    let mut config = WorkerConfig::new(cluster);
    if let Some(n) = env_number("RDASK_SLOTS") {
        config.slots = n.clamp(1, u64::from(u16::MAX)) as u16;
    }
    if let Some(s) = env_number("RDASK_DEATH_TIMEOUT") {
        config.death_timeout = Duration::from_secs(s);
    }
    if let Some(ms) = env_number("RDASK_LIFETIME_MS") {
        config.ends_at = Some(std::time::Instant::now() + Duration::from_millis(ms));
    }
    if let Ok(host) = std::env::var("RDASK_LISTEN_HOST") {
        config.listen_host = host;
    }
    if let Ok(text) = std::env::var(crate::protocol::OFFER_VAR) {
        match crate::protocol::Offer::from_text(&text) {
            Ok(offer) => config.offer = offer,
            Err(e) => {
                eprintln!("rdask worker: {}: {e}", crate::protocol::OFFER_VAR);
                return 2;
            }
        }
    }
    // A thread of its own, so this also works when called inside the program's
    // runtime (`#[tokio::main]`), where starting another runtime would panic.
    let worker = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
        let rt = rt.expect("cannot start the tokio runtime");
        rt.block_on(worker::run(config, Arc::new(registry)))
    });
    match worker.join() {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("rdask worker: {e}");
            1
        }
        Err(_) => 101,
    }
}

fn env_number(var: &str) -> Option<u64> {
    let v = std::env::var(var).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => {
            eprintln!("rdask worker: ignoring {var}={v:?}: not a whole number");
            None
        }
    }
}

/// Raises this process's open-file limit and checks that the in-process scheduler can hold
/// `workers` workers' connections (and a few clients'); the error ([`limits::LimitError`] inside
/// the `io::Error`) names the limit and how to raise it.
fn fits(workers: usize) -> std::io::Result<()> {
    let needed = limits::needed_for(workers as u64);
    limits::ensure(needed, format!("a local cluster of {workers} workers")).map(drop).map_err(std::io::Error::other)
}

/// The death timeout of a local cluster's workers: short, so that they soon leave a program that
/// died without ending them. It bounds their heartbeat interval too
/// ([`crate::worker::kept_interval`]).
pub const WORKER_DEATH_TIMEOUT: Duration = Duration::from_secs(10);

/// A scheduler in this process and worker processes of this program.
#[derive(Debug)]
pub struct LocalCluster {
    info: ClusterInfo,
    server: Option<ServerHandle>,
    workers: Vec<Child>,
}

impl LocalCluster {
    /// Starts a scheduler on 127.0.0.1 and `workers` worker processes with `slots` each.
    ///
    /// It first raises this process's open-file limit to the hard limit, and fails (naming the
    /// limit and how to raise it) if even that cannot hold `workers` connections.
    pub async fn start(workers: usize, slots: u16) -> std::io::Result<LocalCluster> {
        LocalCluster::start_on(rdask_transport::Scheme::Tcp, workers, slots).await
    }

    /// Like [`LocalCluster::start`], over the transport `scheme` (the workers' data servers use
    /// it too). `Scheme::Ucx` needs the `ucx` feature; UCX reads its `UCX_*` variables.
    pub async fn start_on(
        scheme: rdask_transport::Scheme,
        workers: usize,
        slots: u16,
    ) -> std::io::Result<LocalCluster> {
        fits(workers)?;
        let secret = Secret::generate();
        let addr = Address { scheme, host_port: "127.0.0.1:0".into() };
        let server = server::bind(&addr, secret.clone(), Config::default()).await?;
        let info = ClusterInfo { addresses: vec![server.address.clone()], secret };
        let mut cluster = LocalCluster { info, server: Some(server), workers: Vec::new() };
        for _ in 0..workers {
            cluster.add_worker(slots)?;
        }
        Ok(cluster)
    }

    /// Like [`LocalCluster::start`], with the scheduler journalling to `journal` (see
    /// [`crate::server::spawn_journalled`]; a journal already there is restored from).
    pub async fn start_journalled(
        workers: usize,
        slots: u16,
        journal: &std::path::Path,
    ) -> std::io::Result<LocalCluster> {
        fits(workers)?;
        let secret = Secret::generate();
        let listener =
            rdask_transport::listen(&Address { scheme: rdask_transport::Scheme::Tcp, host_port: "127.0.0.1:0".into() })
                .await?;
        let (file, restored) = crate::journal::JournalFile::open(journal)?;
        let journal = server::Journal { file, restored, window: Duration::from_secs(10) };
        // Nobody provisions: the notices go unread, and no control comes.
        let (server, _controller) = server::spawn_journalled(listener, secret.clone(), Config::default(), journal);
        let info = ClusterInfo { addresses: vec![server.address.clone()], secret };
        let mut cluster = LocalCluster { info, server: Some(server), workers: Vec::new() };
        for _ in 0..workers {
            cluster.add_worker(slots)?;
        }
        Ok(cluster)
    }

    /// Starts one more worker process.
    ///
    /// Fails with an error naming `RLIMIT_NOFILE` if this process (which holds the scheduler's
    /// end of every worker's connection) could not hold one more.
    pub fn add_worker(&mut self, slots: u16) -> std::io::Result<u32> {
        fits(self.workers.len() + 1)?;
        let exe = std::env::current_exe()?;
        let child = Command::new(exe)
            .env(ROLE_VAR, "worker")
            .env("RDASK_SCHEDULER", self.info.addresses[0].to_string())
            .env("RDASK_SECRET", self.info.secret.to_hex())
            .env("RDASK_SLOTS", slots.to_string())
            .env("RDASK_DEATH_TIMEOUT", WORKER_DEATH_TIMEOUT.as_secs().to_string())
            // Workers of an in-program cluster speak up only about problems, unless asked.
            .env("RDASK_LOG", std::env::var("RDASK_LOG").unwrap_or_else(|_| "warn".into()))
            .spawn()?;
        let pid = child.id();
        self.workers.push(child);
        Ok(pid)
    }

    /// Process ids of the workers started so far.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.iter().map(|c| c.id()).collect()
    }

    /// Waits up to `timeout` for worker process `pid` to exit; its exit status, or `None`.
    pub fn wait_worker(&mut self, pid: u32, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.workers.iter_mut().find(|c| c.id() == pid)?;
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// How to reach this cluster.
    pub fn info(&self) -> &ClusterInfo {
        &self.info
    }

    /// Connects a client and waits until `n` workers have registered.
    pub async fn client(&self, n: usize) -> Result<Client, ClientError> {
        let client = Client::connect(&self.info).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while client.status().await?.workers.len() < n {
            if tokio::time::Instant::now() > deadline {
                let msg = format!("fewer than {n} workers registered within 30 s; their stderr is this program's");
                return Err(ClientError::Timeout(msg));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(client)
    }

    /// Stops the workers and the scheduler.
    pub async fn shutdown(mut self) {
        if let Ok(c) = Client::connect(&self.info).await {
            let _ = c.shutdown().await;
        }
        if let Some(s) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), s.wait()).await;
        }
        self.reap(Duration::from_secs(5));
    }

    fn reap(&mut self, grace: Duration) {
        // They were told to stop; whoever is left after `grace` is ended.
        let deadline = std::time::Instant::now() + grace;
        for child in &mut self.workers {
            let wait = deadline.saturating_duration_since(std::time::Instant::now());
            crate::process::end(crate::process::Target::Process(child.id()), wait, crate::process::GRACE);
            let _ = child.kill();
            let _ = child.wait();
        }
        self.workers.clear();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // Never leave workers behind, even when the program bails out early.
        if let Some(s) = &self.server {
            s.abort();
        }
        for child in &mut self.workers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
