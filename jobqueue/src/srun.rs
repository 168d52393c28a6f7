//! `srun rdask-jobqueue run -- <client command>`: a whole cluster inside one Slurm job step.
//!
//! Every task of the step runs this; `SLURM_PROCID` picks the role: task 0 is the
//! scheduler, task 1 runs the client command, every other task is a worker. They meet
//! through a state directory on the shared filesystem (`<home>/<name>-<job>.<step>`),
//! where task 0 writes the secret and its addresses. When the client command ends,
//! task 1 shuts the cluster down, so every task ends, and the step's exit code is the
//! client's (srun reports the largest of its tasks' codes; the others exit 0).

use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use rdask::cluster::{ClusterInfo, SchedulerFile, SECRET_FILE};
use rdask::protocol::{ClientInfo, Refusal, RefusalKind, Reply};
use rdask::scheduler::{Control, Notice};
use rdask::{Client, Secret};
use rdask_transport::{Address, Scheme};

use crate::error::{Error, Result};
use crate::net;
use crate::state::StateDir;

/// Options of `run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Task slots of each worker [default: the CPUs Slurm gives each task].
    #[arg(long)]
    pub slots: Option<u16>,
    /// Network interface the scheduler listens on (its address is the one workers use).
    #[arg(long)]
    pub interface: Option<String>,
    /// Seconds the client and the workers wait for the scheduler to appear.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// The client command, after `--`; it sees the cluster through RDASK_CLUSTER/RDASK_HOME
    /// (for `rdask-jobqueue submit`) and RDASK_SCHEDULER/RDASK_SECRET_FILE (for Rust clients).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

fn env_u32(var: &str) -> Result<u32> {
    let v = std::env::var(var).map_err(|_| {
        Error::Usage(format!(
            "{var} is not set: `run` works inside a Slurm job step, e.g. `srun -n 4 rdask-jobqueue run -- ./client`"
        ))
    })?;
    v.parse().map_err(|_| Error::Usage(format!("{var}={v} is not a number")))
}

/// Runs this task's role; returns the exit code.
pub async fn run(home: &std::path::Path, name: &str, a: RunArgs) -> Result<i32> {
    let rank = env_u32("SLURM_PROCID")?;
    let ntasks = env_u32("SLURM_NTASKS")?;
    if ntasks < 3 {
        return Err(Error::Usage(format!(
            "`run` needs at least 3 tasks (scheduler, client, one worker); this step has {ntasks}: use srun -n 3 or more"
        )));
    }
    let job = std::env::var("SLURM_JOB_ID").unwrap_or_else(|_| "0".into());
    let step = std::env::var("SLURM_STEP_ID").unwrap_or_else(|_| "0".into());
    let cluster = format!("{name}-{job}.{step}");
    let state = StateDir::locate(Some(home), &cluster)?;
    match rank {
        0 => scheduler(&state, &a).await,
        1 => client(&state, &a, ntasks - 2).await,
        _ => worker(&state, &a).await,
    }
}

async fn scheduler(state: &StateDir, a: &RunArgs) -> Result<i32> {
    rdask::init_logging();
    state.create()?;
    let started = start_scheduler(Scheme::Tcp, a.interface.as_deref()).await?;
    started.secret().save(&state.file(SECRET_FILE))?;
    let file = SchedulerFile {
        addresses: started.addresses.clone(),
        pid: std::process::id(),
        host: rdask::worker::hostname(),
    };
    file.write(&state.path)
        .map_err(Error::io(format!("cannot write the scheduler file in {}", state.path.display())))?;
    tracing::info!(dir = %state.path.display(), "srun scheduler ready");
    let Started { server, mut owner, .. } = started;
    let mut stopped = std::pin::pin!(server.wait());
    let code = tokio::select! {
        _ = &mut stopped => 0,
        // Task 1 shuts the cluster down when its command ends; if task 1 itself dies, nobody
        // would, and the step would hang until its time limit.
        why = owner.gone(Duration::from_secs(a.timeout), "task 1") => {
            tracing::error!("{why}; ending the cluster");
            owner.end_cluster();
            // Let the scheduler tell the workers to stop before this process ends.
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut stopped).await;
            1
        }
    };
    // Nothing of this step is needed any more.
    let _ = std::fs::remove_dir_all(&state.path);
    Ok(code)
}

/// The scheduler of a cluster made of one parallel launch (`srun`, `mpirun`), running.
pub(crate) struct Started {
    /// The running scheduler.
    pub server: rdask::server::ServerHandle,
    /// Watches the client that owns the cluster.
    pub owner: OwnerWatch,
    /// How this process reaches it.
    pub info: ClusterInfo,
    /// The addresses the other tasks try, best first.
    pub addresses: Vec<String>,
}

impl Started {
    pub fn secret(&self) -> &Secret {
        &self.info.secret
    }
}

/// Starts a scheduler with a new secret, listening with `scheme` on `interface`'s address
/// (every interface when `None`).
pub(crate) async fn start_scheduler(scheme: Scheme, interface: Option<&str>) -> Result<Started> {
    let secret = Secret::generate();
    let host = match interface {
        Some(i) => net::interface_ipv4(i)?.to_string(),
        None => "0.0.0.0".to_string(),
    };
    let listen = Address { scheme, host_port: format!("{}:0", net::bracket(&host)) };
    let listener = rdask_transport::listen(&listen).await.map_err(Error::io(format!("cannot listen on {listen}")))?;
    let port = listener.local_addr().host_port.rsplit_once(':').map(|(_, p)| p.to_string()).unwrap_or_default();
    let addresses = net::candidate_addresses_on(scheme, &host, &port);
    let (server, controller) =
        rdask::server::spawn_controlled(listener, secret.clone(), rdask::scheduler::Config::default());
    let info = ClusterInfo { addresses: vec![server.address.clone()], secret };
    let owner = OwnerWatch { controller, joined: false, left_at: None, start: Instant::now(), grace: OWNER_GRACE };
    Ok(Started { server, owner, info, addresses })
}

/// How long a scheduler whose owner disconnected waits for the shutdown that a clean end
/// brings right after, before it takes the disconnection for the owner's death.
const OWNER_GRACE: Duration = Duration::from_secs(10);

/// Watches, through the scheduler's own notices, the client that owns a cluster of one
/// parallel launch: the one that connected with [`ClientInfo::ends_cluster`] (task 1, rank 1).
/// Other clients (`status`, the command's own) come and go without effect.
pub(crate) struct OwnerWatch {
    controller: rdask::server::Controller,
    joined: bool,
    left_at: Option<Instant>,
    start: Instant,
    grace: Duration,
}

impl OwnerWatch {
    /// Returns why the owner is gone: it never connected within `timeout`, or it disconnected
    /// without shutting the cluster down. Pends forever once the scheduler has stopped.
    /// Provisioning requests are refused meanwhile: such a cluster has the size it was
    /// launched with. Cancel-safe: its state is kept between calls.
    pub async fn gone(&mut self, timeout: Duration, who: &str) -> String {
        loop {
            let deadline = match (self.joined, self.left_at) {
                (_, Some(at)) => Some(at + self.grace),
                (false, None) => Some(self.start + timeout),
                (true, None) => None,
            };
            let wait = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let notice = tokio::select! {
                n = self.controller.notices.recv() => n,
                _ = wait => {
                    return if self.left_at.is_some() {
                        format!("the client ({who}) disconnected without shutting the cluster down")
                    } else {
                        format!("the client ({who}) did not connect within {} s", timeout.as_secs())
                    };
                }
            };
            match notice {
                // The scheduler has stopped.
                None => std::future::pending::<()>().await,
                Some(Notice::ClientJoined { info, .. }) if info.ends_cluster => self.joined = true,
                Some(Notice::ClientLeft { info, .. }) if info.ends_cluster => self.left_at = Some(Instant::now()),
                Some(Notice::Request { conn, req, .. }) => {
                    let refusal = Refusal::new(
                        RefusalKind::Unsupported,
                        "a cluster started by srun or mpirun keeps the size it was launched with",
                    );
                    let reply = Control::Reply { conn, req, reply: Reply::Refused(refusal) };
                    let _ = self.controller.control.send(reply);
                }
                Some(_) => {}
            }
        }
    }

    /// Ends the cluster: stops every worker and the scheduler.
    pub fn end_cluster(&self) {
        let _ = self.controller.control.send(Control::Shutdown);
    }
}

/// Waits for task 0's scheduler file.
async fn rendezvous(state: &StateDir, timeout: u64) -> Result<ClusterInfo> {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        if let Ok(info) = ClusterInfo::from_state_dir(&state.path) {
            return Ok(info);
        }
        if Instant::now() > deadline {
            return Err(Error::NotReady {
                what: format!(
                    "no scheduler appeared in {} within {timeout} s (task 0 writes it there; is {} on a filesystem all nodes share?)",
                    state.path.display(),
                    state.path.parent().map(|p| p.display().to_string()).unwrap_or_default()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn client(state: &StateDir, a: &RunArgs, workers: u32) -> Result<i32> {
    let info = rendezvous(state, a.timeout).await?;
    let client = connect_when_workers(&info, workers, a.timeout).await?;
    // (Connected as the cluster's owner: were this process to die, task 0 ends the step.)
    // The command is not a task of the step: an MPI program must not take itself for task 1.
    run_command(&client, &info, state, &a.command, crate::mpi::launcher_var).await
}

/// Connects to the cluster as its owner (the cluster ends when this connection closes) and
/// waits (up to `timeout` seconds) until `workers` workers are there, so that the client's
/// first tasks don't wait.
pub(crate) async fn connect_when_workers(info: &ClusterInfo, workers: u32, timeout: u64) -> Result<Client> {
    let client = Client::connect_as(info, &ClientInfo { ends_cluster: true }).await?;
    let deadline = Instant::now() + Duration::from_secs(timeout);
    while client.status().await?.workers.len() < workers as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(client)
}

/// Runs the client command with the cluster in its environment (less the variables `hide`
/// picks), then shuts the cluster down through `client` (whatever happened to the command);
/// returns the command's exit code.
///
/// The command runs in the process group of a watchdog that ends the group when this process
/// ends, however it ends: otherwise, were this process killed, the command's processes would
/// outlive the job (and, holding the launcher's output pipes open, keep MPICH's mpirun
/// waiting for them).
pub(crate) async fn run_command(
    client: &Client,
    info: &ClusterInfo,
    state: &StateDir,
    command: &[String],
    hide: impl Fn(&str) -> bool,
) -> Result<i32> {
    let addrs: Vec<String> = info.addresses.iter().map(|a| a.to_string()).collect();
    let mut cmd = tokio::process::Command::new(&command[0]);
    for (var, _) in std::env::vars_os() {
        if var.to_str().is_some_and(&hide) {
            cmd.env_remove(var);
        }
    }
    cmd.args(&command[1..])
        .env("RDASK_CLUSTER", &state.name)
        .env("RDASK_HOME", state.path.parent().unwrap_or(&state.path))
        .env("RDASK_SCHEDULER", addrs.join(","))
        .env("RDASK_SECRET_FILE", state.file(SECRET_FILE));
    let watchdog = match group_watchdog() {
        Ok((pgid, pipe)) => {
            cmd.process_group(pgid as i32);
            Some(pipe)
        }
        Err(e) => {
            tracing::warn!("cannot start the watchdog of the client command's processes: {e}");
            None
        }
    };
    let status = cmd.status().await;
    // Anything the command left running ends now.
    drop(watchdog);
    // Whatever happened to the client, the cluster ends with it.
    let _ = client.shutdown().await;
    let status = status.map_err(Error::io(format!("cannot start the client command `{}`", command[0])))?;
    Ok(status.code().unwrap_or(1))
}

/// Starts a watchdog, leader of a new process group; once the returned pipe closes (when it
/// is dropped, or this process dies), it ends its group: SIGTERM, then SIGKILL
/// [`rdask::process::GRACE`] later (which ends the watchdog too). It is a shell, not
/// [`rdask::process::terminate`], because it must act after this process has died. The pipe
/// is close-on-exec: nothing else this process starts keeps it open. Returns the group's id and the pipe.
fn group_watchdog() -> std::io::Result<(u32, std::process::ChildStdin)> {
    let grace = rdask::process::GRACE.as_secs().max(1);
    let script =
        format!(r#"trap '' TERM; cat >/dev/null; kill -s TERM -- "-$$"; sleep {grace}; kill -s KILL -- "-$$""#);
    let mut dog = std::process::Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()?;
    let pipe = dog.stdin.take().expect("piped stdin");
    let pgid = dog.id();
    // Reap it when it ends, so that it leaves no zombie behind while this process lives.
    std::thread::spawn(move || dog.wait());
    Ok((pgid, pipe))
}

async fn worker(state: &StateDir, a: &RunArgs) -> Result<i32> {
    rdask::init_logging();
    let info = rendezvous(state, a.timeout).await?;
    let cpus = std::env::var("SLURM_CPUS_PER_TASK").ok().and_then(|v| v.parse().ok());
    run_worker(info, a.slots.or(cpus), a.timeout, rdask::Registry::new()).await?;
    Ok(0)
}

/// Runs a worker until the scheduler stops it; it gives up when the scheduler has been
/// unreachable for `timeout` seconds.
pub(crate) async fn run_worker(
    info: ClusterInfo,
    slots: Option<u16>,
    timeout: u64,
    registry: rdask::Registry,
) -> Result<()> {
    let mut config = rdask::worker::WorkerConfig::new(info);
    if let Some(s) = slots {
        config.slots = s;
    }
    config.death_timeout = Duration::from_secs(timeout);
    rdask::worker::run(config, std::sync::Arc::new(registry)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdask::protocol::{ControlRequest, ScaleTarget};

    /// `status` and other clients come and go (before the owner joined, and after) without
    /// ending the cluster; the owner's disconnection without a shutdown does end it.
    #[tokio::test]
    async fn only_the_owner_leaving_ends_the_cluster() {
        let Started { server, mut owner, info, .. } = start_scheduler(Scheme::Tcp, None).await.unwrap();
        owner.grace = Duration::from_millis(300);
        let quiet = Duration::from_millis(800);
        let timeout = Duration::from_secs(60);
        let passer_by = || async {
            let c = Client::connect(&info).await.unwrap();
            c.status().await.unwrap();
        };
        passer_by().await;
        assert!(tokio::time::timeout(quiet, owner.gone(timeout, "task 1")).await.is_err(), "a status call ended it");

        let me = Client::connect_as(&info, &ClientInfo { ends_cluster: true }).await.unwrap();
        passer_by().await;
        // Scaling is refused (answered while watching), and nothing ends.
        let scale = ControlRequest::Scale { pool: None, target: ScaleTarget::Workers(3) };
        let refused = tokio::select! {
            r = me.control(scale) => r.unwrap().unwrap_err(),
            why = owner.gone(timeout, "task 1") => panic!("{why}"),
        };
        assert_eq!(refused.kind, RefusalKind::Unsupported, "{refused}");
        assert!(tokio::time::timeout(quiet, owner.gone(timeout, "task 1")).await.is_err(), "a status call ended it");

        drop(me);
        let why = tokio::time::timeout(Duration::from_secs(10), owner.gone(timeout, "task 1")).await.unwrap();
        assert!(why.contains("the client (task 1) disconnected without shutting the cluster down"), "{why}");
        owner.end_cluster();
        tokio::time::timeout(Duration::from_secs(10), server.wait()).await.unwrap();
    }

    #[tokio::test]
    async fn an_owner_that_never_connects_ends_the_cluster_after_the_timeout() {
        let Started { server: _running, mut owner, info, .. } = start_scheduler(Scheme::Tcp, None).await.unwrap();
        let c = Client::connect(&info).await.unwrap();
        c.status().await.unwrap();
        let why = owner.gone(Duration::from_millis(500), "rank 1").await;
        assert!(why.contains("the client (rank 1) did not connect within"), "{why}");
    }
}
