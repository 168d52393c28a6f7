//! `rdask-jobqueue`: start, use and stop rdask clusters.
//!
//! The binary (`src/main.rs`) only parses arguments ([`cli`]) and calls
//! [`run`]; each subcommand is a function here so tests can drive them.
//!
//! Exit codes: 0 success; 1 the command failed (tasks failed, the cluster is
//! unreachable, …); 2 the command line is wrong.

pub mod adapt;
pub mod backend;
pub mod batch;
pub mod cli;
pub mod config;
pub mod jobs;
pub mod local;
pub mod manager;
pub mod mpi;
pub mod net;
pub mod srun;
pub mod state;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rdask::cluster::{ClusterInfo, SchedulerFile, SECRET_FILE};
use rdask::protocol::{parse_array, ClusterStatus, CommandSpec, JobId};
use rdask::{Client, Secret};

use crate::backend::BatchBackend;
use crate::batch::System;
use crate::cli::{
    Cli, Cmd, DownArgs, OutputMode, SchedulerArgs, SchedulerCmd, StatusArgs, SubmitArgs, UpArgs, WaitArgs, WorkerArgs,
};
use crate::local::LocalBackend;
use crate::state::{process_alive, StateDir};

/// Runs one invocation; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    if let Cmd::Mpi(a) = cli.command {
        // Before anything else: the ranks must all reach MPI_Init.
        return mpi::run_cli(cli.home, &cli.name, a);
    }
    let state = StateDir::locate(cli.home.as_deref(), &cli.name)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match cli.command {
        Cmd::Up(a) => rt.block_on(up(&state, a)),
        Cmd::Submit(a) => rt.block_on(submit(&state, a)),
        Cmd::Wait(a) => rt.block_on(wait(&state, a)),
        Cmd::Status(a) => rt.block_on(status(&state, a)),
        Cmd::Down(a) => rt.block_on(down(&state, a)),
        Cmd::Scheduler(a) => rt.block_on(scheduler(&state, a)),
        Cmd::JobScript(a) => job_script(&state, &a),
        Cmd::Worker(a) => rt.block_on(worker(&state, a)),
        Cmd::Scale(a) => rt.block_on(scale(&state, a)),
        Cmd::Adapt(a) => rt.block_on(adapt_cmd(&state, a)),
        Cmd::Run(a) => {
            let home = state.path.parent().map(Path::to_path_buf).unwrap_or_default();
            rt.block_on(srun::run(&home, &cli.name, a))
        }
        Cmd::Config(a) => config::run(&a),
        Cmd::Mpi(_) => unreachable!("handled above"),
    }
}

async fn connect(state: &StateDir) -> Result<Client> {
    let info = ClusterInfo::from_state_dir(&state.path)?;
    Client::connect(&info).await.map_err(|e| {
        anyhow!(
            "{e}\nIf the cluster `{}` crashed, run `rdask-jobqueue down --name {}` to clean up.",
            state.name,
            state.name
        )
    })
}

/// `up`: starts the scheduler in the background and waits for its workers.
async fn up(state: &StateDir, a: UpArgs) -> Result<i32> {
    let batch = batch_system_of(&a.scheduler)?;
    match (a.scheduler.adapt_min, a.scheduler.adapt_max) {
        (min, None) if min > 0 => bail!("--adapt-min {min} needs --adapt-max (the most jobs to adapt up to)"),
        (min, Some(max)) if min > max => bail!("--adapt-min {min} is above --adapt-max {max}; lower one of them"),
        (_, Some(0)) => bail!("--adapt-max must be at least 1"),
        _ => {}
    }
    if a.dry_run {
        return dry_run(state, &a.scheduler, batch);
    }
    if let Some(system) = batch {
        // Fail on a bad parameter, pool or template now, not in the background scheduler.
        for p in pools_of(&a.scheduler, state)? {
            let argv = worker_argv(&a.scheduler, state, &[])?;
            backend::render(system, &p.params, &argv, a.scheduler.template.as_deref())
                .with_context(|| format!("pool `{}`", p.name))?;
        }
    }
    if let Ok(f) = SchedulerFile::read(&state.path) {
        if process_alive(f.pid, "rdask") {
            bail!(
                "cluster `{}` is already up (scheduler pid {} at {}); use it, or stop it with `rdask-jobqueue down --name {}`",
                state.name,
                f.pid,
                f.addresses.join(", "),
                state.name
            );
        }
    }
    let leftovers = cleanup(state);
    if leftovers > 0 {
        eprintln!("cleaned up {leftovers} process(es) left by an earlier run of cluster `{}`", state.name);
    }
    if let Some(p) = &a.scheduler.worker_program {
        if !p.exists() {
            bail!("worker program {} does not exist (give the path of your program, built)", p.display());
        }
    }
    state.create()?;
    let _ = std::fs::remove_file(state.file(rdask::cluster::SCHEDULER_FILE));
    Secret::generate().save(&state.file(SECRET_FILE))?;
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let log = std::fs::File::create(state.file("scheduler.log"))?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("--name").arg(&state.name);
    if let Some(h) = state.path.parent() {
        cmd.arg("--home").arg(h);
    }
    let args_file = state.file("up.json");
    let mut sched_args = a.scheduler.clone();
    sched_args.scheduler_in_job = false;
    if let Some(p) = &sched_args.worker_program {
        sched_args.worker_program = Some(std::fs::canonicalize(p)?);
    }
    if let Some(p) = &sched_args.template {
        sched_args.template = Some(std::fs::canonicalize(p).with_context(|| format!("template {}", p.display()))?);
    }
    std::fs::write(&args_file, serde_json::to_string_pretty(&sched_args)?)?;
    cmd.arg("scheduler").arg("--args-file").arg(&args_file);
    if a.scheduler.scheduler_in_job {
        let Some(system) = batch else {
            bail!("--scheduler-in-job needs a batch backend (--backend slurm|pbs|sge)");
        };
        return scheduler_in_job(state, &a, system, &exe).await;
    }
    use std::os::unix::process::CommandExt;
    // Its own process group: a Ctrl-C in this terminal must not take the cluster down.
    cmd.process_group(0).stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
    let mut child = cmd.spawn().context("cannot start the scheduler")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(f) = SchedulerFile::read(&state.path) {
            if f.pid == child.id() {
                break;
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("the scheduler exited ({status}) before it was ready:\n{}", tail(&state.file("scheduler.log")));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the scheduler was not ready within 15 s:\n{}", tail(&state.file("scheduler.log")));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let client = connect(state).await?;
    let want = match batch {
        None => a.scheduler.adapt_max.map_or(a.scheduler.workers, |_| a.scheduler.adapt_min as usize),
        Some(_) if !a.wait => 0,
        Some(_) => pools_of(&a.scheduler, state)?
            .iter()
            .map(|p| match a.scheduler.adapt_max {
                Some(_) if p.name == backend::DEFAULT_POOL => {
                    a.scheduler.adapt_min as usize * p.shape().workers as usize
                }
                _ => p.workers(),
            })
            .sum(),
    };
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let mut s = client.status().await?;
    while s.workers.len() < want {
        let jobs = backend::read_jobs(state);
        let all_ended = !jobs.is_empty() && jobs.iter().all(|j| !j.state.is_active());
        if all_ended {
            stop_cluster(state, &client).await;
            let states: Vec<String> = jobs
                .iter()
                .map(|j| {
                    format!("{} {}{}", j.id, j.state, j.note.as_deref().map(|n| format!(": {n}")).unwrap_or_default())
                })
                .collect();
            bail!(
                "every batch job ended before its worker joined ({}); the cluster was stopped. Job output:\n{}",
                states.join(", "),
                logs_tail(state)
            );
        }
        if Instant::now() > deadline {
            stop_cluster(state, &client).await;
            bail!(
                "only {} of {want} workers registered within {} s; the cluster was stopped. Worker log:\n{}",
                s.workers.len(),
                a.timeout,
                tail(&state.file(if batch.is_some() { "scheduler.log" } else { "workers.log" }))
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        s = client.status().await?;
    }
    let f = SchedulerFile::read(&state.path)?;
    let slots: u32 = s.workers.iter().map(|w| u32::from(w.info.slots)).sum();
    let jobs = backend::read_jobs(state);
    let jobs = if batch.is_some() { format!(", {} batch job(s)", jobs.len()) } else { String::new() };
    println!(
        "cluster `{}` is up: scheduler {} (pid {}), {} workers, {slots} slots{jobs}; state in {}",
        state.name,
        f.addresses.first().map(String::as_str).unwrap_or("?"),
        f.pid,
        s.workers.len(),
        state.path.display()
    );
    println!("next: rdask-jobqueue submit --array 1-10 -- echo %{{TASK_ID}}; rdask-jobqueue wait; rdask-jobqueue down");
    Ok(0)
}

/// Cancels every batch job and ends every process in the journal that is still alive;
/// returns how many there were.
fn cleanup(state: &StateDir) -> usize {
    let mut n = 0;
    let mut procs: Vec<(u32, Option<u64>)> = Vec::new();
    for (kind, value) in state.journal_entries() {
        if kind == "pid" {
            if let Some((pid, start)) = value.split_once(':') {
                if let (Ok(pid), Ok(start)) = (pid.parse(), start.parse()) {
                    procs.push((pid, Some(start)));
                }
            }
        }
    }
    match backend::cancel_journalled(state) {
        Ok(0) => {}
        Ok(jobs) => {
            println!("cancelled the cluster's {jobs} batch job(s); the batch system shows none of them running")
        }
        Err(e) => eprintln!("warning: cancelling the cluster's batch jobs failed: {e:#}"),
    }
    for (pid, start) in procs {
        // A pid the system has recycled for another program is left alone.
        let same = start.is_none_or(|s| state::process_start_time(pid) == Some(s));
        if same && process_alive(pid, "") {
            n += 1;
            terminate(pid);
        }
    }
    for f in [rdask::cluster::SCHEDULER_FILE, "batch-jobs.json", "backend.json"] {
        let _ = std::fs::remove_file(state.file(f));
    }
    state.clear_journal();
    n
}

/// SIGTERM, a grace period, then SIGKILL.
fn terminate(pid: u32) {
    use nix::sys::signal::{kill, Signal};
    let p = nix::unistd::Pid::from_raw(pid as i32);
    let _ = kill(p, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && process_alive(pid, "") {
        std::thread::sleep(Duration::from_millis(20));
    }
    if process_alive(pid, "") {
        let _ = kill(p, Signal::SIGKILL);
    }
}

fn tail(path: &Path) -> String {
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

/// `scheduler`: runs the scheduler and its local workers in the foreground.
async fn scheduler(state: &StateDir, cmd: SchedulerCmd) -> Result<i32> {
    rdask::init_logging();
    let a: SchedulerArgs = match &cmd.args_file {
        Some(p) => serde_json::from_str(&std::fs::read_to_string(p)?).context("corrupt scheduler arguments file")?,
        None => cmd.args,
    };
    let batch = batch_system_of(&a)?;
    state.create()?;
    let me = std::process::id();
    state.journal("pid", &format!("{me}:{}", state::process_start_time(me).unwrap_or(0)))?;
    let secret_path = state.file(SECRET_FILE);
    let secret = match Secret::load(&secret_path) {
        Ok(s) => s,
        Err(_) if !secret_path.exists() => {
            let s = Secret::generate();
            s.save(&secret_path)?;
            s
        }
        Err(e) => return Err(e.into()),
    };
    let bind_host = match &a.interface {
        Some(iface) => net::interface_ipv4(iface)?.to_string(),
        None => a.host.clone(),
    };
    let addr =
        rdask::Address { scheme: a.protocol.scheme(), host_port: format!("{}:{}", net::bracket(&bind_host), a.port) };
    let listener = rdask_transport::listen(&addr).await.with_context(|| match a.protocol {
        cli::Protocol::Tcp => format!("cannot listen on {addr} (is the port in use? choose another with --port)"),
        cli::Protocol::Ucx => format!("cannot listen on {addr}"),
    })?;
    let port = listener.local_addr().host_port.rsplit_once(':').map(|(_, p)| p.to_string()).unwrap_or_default();
    let addresses = net::candidate_addresses_on(addr.scheme, &bind_host, &port);
    let config = rdask::scheduler::Config {
        heartbeat_interval: Duration::from_millis(a.heartbeat_ms),
        heartbeat_timeout: Duration::from_millis(a.heartbeat_ms * 10),
        ..Default::default()
    };
    let server = rdask::server::spawn(listener, secret.clone(), config);
    let server_address = server.address.clone();
    tracing::info!("scheduler listening; workers and clients use {}", addresses.join(", "));
    let mut local = None;
    let mut batch_backend = None;
    match batch {
        None => {
            let (program, args) = match &a.worker_program {
                Some(p) => (p.clone(), Vec::new()),
                None => {
                    (std::env::current_exe()?, vec!["--name".to_string(), state.name.clone(), "worker".to_string()])
                }
            };
            let mut b = LocalBackend::new(program, args, a.slots, a.death_timeout);
            // An adaptive cluster starts with its minimum; the policy does the rest.
            b.start(state, &addresses, a.adapt_max.map_or(a.workers, |_| a.adapt_min as usize))?;
            local = Some(std::sync::Arc::new(std::sync::Mutex::new(b)));
        }
        Some(system) => {
            let pools = pools_of(&a, state)?;
            let specs: Vec<(String, batch::JobParams)> =
                pools.iter().map(|p| (p.name.clone(), p.params.clone())).collect();
            let mut b = BatchBackend::new(
                state,
                system,
                commands_of(&a, system),
                &specs,
                &worker_argv(&a, state, &addresses)?,
                a.template.as_deref(),
            )?;
            // An adaptive cluster's main pool starts with what the policy asks for.
            let adaptive = a.adapt_max.is_some();
            let submitted: Result<()> =
                pools.iter().filter(|p| !(adaptive && p.name == backend::DEFAULT_POOL)).try_for_each(|p| {
                    b.submit(&p.name, if a.job_array { 1 } else { p.jobs() })?;
                    Ok(())
                });
            if let Err(e) = submitted {
                tracing::error!("{e:#}");
                let _ = b.cancel_all(Duration::from_secs(60));
                server.abort();
                let _ = std::fs::remove_file(state.file(rdask::cluster::SCHEDULER_FILE));
                return Err(e);
            }
            batch_backend = Some(std::sync::Arc::new(std::sync::Mutex::new(b)));
        }
    }
    // Ready: `up` waits for this file, so a failed submission above is reported by `up` itself.
    SchedulerFile { addresses: addresses.clone(), pid: std::process::id(), host: rdask::worker::hostname() }
        .write(&state.path)?;
    let log_directory = job_params(&a, state).log_directory;
    for entry in std::fs::read_dir(&state.path)?.flatten() {
        // Targets of an earlier run of this cluster do not apply to this one.
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(TARGET_FILE) || name == manager::ADAPT_FILE || name == manager::ADAPT_STATUS_FILE {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(max) = a.adapt_max {
        let spec = adapt::AdaptSpec { target_duration: a.target_duration, ..adapt::AdaptSpec::new(a.adapt_min, max) };
        manager::set_adaptive(state, Some(&spec))?;
    }
    let manager = {
        let every = Duration::from_secs_f64(a.poll_interval.max(0.1));
        let info = ClusterInfo { addresses: vec![server_address.clone()], secret: secret.clone() };
        let (batch_backend, local, state, addresses) =
            (batch_backend.clone(), local.clone(), state.clone(), addresses.clone());
        let pools = if batch.is_some() { pools_of(&a, &state)? } else { Vec::new() };
        // What adaptive scaling adds and removes: a job of the main pool, or one local worker.
        let shape = pools.first().map_or(adapt::JobShape { workers: 1, slots: u32::from(a.slots) }, PoolPlan::shape);
        tokio::spawn(async move {
            // Jobs that have had a worker: one that ends without ever having had one failed to start.
            let mut had_worker: std::collections::HashSet<String> = Default::default();
            let client = Client::connect(&info).await.ok();
            let mut adaptive: Option<manager::Adaptive> = None;
            loop {
                let pause = adaptive.as_ref().map_or(every, |a| Duration::from_secs_f64(a.spec().interval.max(0.1)));
                tokio::time::sleep(pause).await;
                // Read now, so that a change made during the pause applies at once.
                let spec = manager::read_spec(&state);
                match (&spec, &adaptive) {
                    (None, _) => adaptive = None,
                    (Some(s), Some(ad)) if ad.spec() == s => {}
                    // New settings (or `adapt` run again, which also resumes a paused one).
                    (Some(s), _) => adaptive = Some(manager::Adaptive::new(s.clone(), shape, backend::DEFAULT_POOL)),
                }
                let status = match &client {
                    Some(c) => c.status().await.ok(),
                    None => None,
                };
                let workers = status.as_ref().map(|s| s.workers.clone()).unwrap_or_default();
                had_worker.extend(workers.iter().filter_map(|w| w.info.batch_job.clone()));
                let busy: Vec<(u32, Option<String>)> =
                    workers.iter().filter(|w| w.assigned > 0).map(|w| (w.info.pid, w.info.batch_job.clone())).collect();
                let target = read_target(&state, backend::DEFAULT_POOL);
                if let Some(b) = batch_backend.clone() {
                    let (seen, logs, busy) = (had_worker.clone(), log_directory.clone(), busy.clone());
                    let targets: Vec<(String, usize)> = pools
                        .iter()
                        .filter(|p| !(adaptive.is_some() && p.name == backend::DEFAULT_POOL))
                        .filter_map(|p| read_target(&state, &p.name).map(|n| (p.name.clone(), p.jobs_for_nodes(n))))
                        .collect();
                    let b2 = b.clone();
                    let r = tokio::task::spawn_blocking(move || {
                        let had = |id: &str| seen.iter().any(|w| backend::same_job(id, w));
                        let mut b = b2.lock().expect("backend lock");
                        let failed = b.poll_and_explain(had, logs.as_deref())?;
                        let idle = |id: &str| {
                            !busy.iter().any(|(_, j)| j.as_deref().is_some_and(|j| backend::same_job(id, j)))
                        };
                        for (pool, jobs) in &targets {
                            b.scale_to(pool, *jobs, idle)?;
                        }
                        anyhow::Ok(failed)
                    })
                    .await;
                    let failed = match r {
                        Ok(Ok(failed)) => failed,
                        Ok(Err(e)) => {
                            tracing::warn!("managing batch jobs failed: {e:#}");
                            Vec::new()
                        }
                        Err(e) => {
                            tracing::warn!("managing batch jobs panicked: {e}");
                            Vec::new()
                        }
                    };
                    if let (Some(ad), Some(c), Some(s)) = (adaptive.as_mut(), &client, &status) {
                        ad.step(&state, &b, c, s, &had_worker, &failed).await;
                    }
                }
                if let (Some(l), Some(ad), Some(c), Some(s)) = (&local, adaptive.as_mut(), &client, &status) {
                    ad.step(&state, l, c, s, &had_worker, &[]).await;
                } else if let (Some(l), Some(n)) = (&local, target) {
                    let idle = |pid: u32| !busy.iter().any(|(p, _)| *p == pid);
                    if let Err(e) = l.lock().expect("local lock").scale_to(&state, &addresses, n as usize, idle) {
                        tracing::warn!("scaling local workers failed: {e:#}");
                    }
                }
            }
        })
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let info = ClusterInfo { addresses: vec![server_address], secret };
    let mut server = std::pin::pin!(server.wait());
    tokio::select! {
        _ = &mut server => {}
        _ = term.recv() => shutdown_self(&info, &mut server).await,
        _ = int.recv() => shutdown_self(&info, &mut server).await,
    }
    manager.abort();
    if let Some(b) = local {
        b.lock().expect("local lock").stop(Duration::from_secs(5));
    }
    if let Some(b) = batch_backend {
        let r =
            tokio::task::spawn_blocking(move || b.lock().expect("backend lock").cancel_all(Duration::from_secs(60)))
                .await;
        match r {
            Ok(Ok(())) => tracing::info!("every batch job of the cluster has ended"),
            Ok(Err(e)) => {
                tracing::error!("{e:#}");
                return Ok(1);
            }
            Err(e) => tracing::error!("cancelling batch jobs panicked: {e}"),
        }
    }
    let _ = std::fs::remove_file(state.file(rdask::cluster::SCHEDULER_FILE));
    state.clear_journal();
    tracing::info!("cluster `{}` is down", state.name);
    Ok(0)
}

async fn shutdown_self(info: &ClusterInfo, server: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>) {
    tracing::info!("signal received: stopping the workers and the scheduler");
    // Going through the protocol tells every worker to stop, like `down` does.
    if let Ok(c) = Client::connect(info).await {
        let _ = c.shutdown().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), server.as_mut()).await;
}

/// `worker`: runs a worker (command tasks only) in the foreground.
async fn worker(state: &StateDir, a: WorkerArgs) -> Result<i32> {
    rdask::init_logging();
    let info = match &a.scheduler {
        Some(addr) => {
            let addresses = addr.split(',').map(|s| s.trim().parse()).collect::<Result<Vec<rdask::Address>, _>>()?;
            let secret = match &a.secret_file {
                Some(p) => Secret::load(p)?,
                None => Secret::load(&state.file(SECRET_FILE))
                    .map_err(|e| anyhow!("{e}\n(give the cluster's secret with --secret-file)"))?,
            };
            ClusterInfo { addresses, secret }
        }
        None => match std::env::var("RDASK_SCHEDULER") {
            Ok(_) => ClusterInfo::from_env()?,
            Err(_) => ClusterInfo::from_state_dir(
                &std::env::var_os("RDASK_STATE_DIR").map(PathBuf::from).unwrap_or(state.path.clone()),
            )?,
        },
    };
    let mut config = rdask::worker::WorkerConfig::new(info);
    if let Some(dir) = &a.local_directory {
        let dir = expand_vars(dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create local directory {dir}"))?;
        std::env::set_current_dir(&dir).with_context(|| format!("cannot enter local directory {dir}"))?;
    }
    if let Some(iface) = &a.interface {
        config.listen_host = net::interface_ipv4(iface)?.to_string();
    }
    if let Some(s) = a.slots.or_else(|| std::env::var("RDASK_SLOTS").ok().and_then(|v| v.parse().ok())) {
        config.slots = s;
    }
    config.death_timeout = Duration::from_secs(
        a.death_timeout
            .or_else(|| std::env::var("RDASK_DEATH_TIMEOUT").ok().and_then(|v| v.parse().ok()))
            .unwrap_or(60),
    );
    if let Some(life) = a.lifetime {
        config.ends_at = Some(Instant::now() + Duration::from_secs(life) - stagger(a.lifetime_stagger.min(life)));
    }
    rdask::worker::run(config, std::sync::Arc::new(rdask::Registry::new())).await?;
    Ok(0)
}

/// A pseudo-random duration up to `max_secs`, different for each process.
fn stagger(max_secs: u64) -> Duration {
    if max_secs == 0 {
        return Duration::ZERO;
    }
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let mixed = (u64::from(std::process::id()) << 32 | u64::from(nanos)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    Duration::from_millis((mixed >> 11) % (max_secs * 1000))
}

/// `submit`: submits a command (or an array of them).
async fn submit(state: &StateDir, a: SubmitArgs) -> Result<i32> {
    let ranges = match &a.array {
        Some(s) => parse_array(s).map_err(|e| anyhow!("bad --array: {e}"))?,
        None => vec![(0, 0)],
    };
    if a.command.is_empty() {
        bail!("no command given: write it after `--`, e.g. rdask-jobqueue submit -- ./simulate --step 1");
    }
    let mut env = Vec::new();
    for kv in &a.env {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => env.push((k.to_string(), v.to_string())),
            _ => bail!("bad --env `{kv}`: write it as NAME=VALUE"),
        }
    }
    let jobs_dir = state.path.join("jobs").join("%{JOB_ID}");
    let stream = |opt: &Option<String>, ext: &str| match opt.as_deref() {
        Some("none") => None,
        Some(p) => Some(p.to_string()),
        None => Some(jobs_dir.join(format!("%{{TASK_ID}}.{ext}")).display().to_string()),
    };
    let cwd = match &a.cwd {
        Some(c) => c.display().to_string(),
        None => std::env::current_dir()?.display().to_string(),
    };
    let spec = CommandSpec {
        argv: a.command.clone(),
        env,
        cwd: Some(cwd),
        stdout: stream(&a.stdout, "out"),
        stderr: stream(&a.stderr, "err"),
    };
    let client = connect(state).await?;
    let name = a.job_name.clone().unwrap_or_else(|| a.command[0].clone());
    let n: u64 = ranges.iter().map(|&(x, y)| u64::from(y - x) + 1).sum();
    let job = client.submit_array(&name, spec, ranges, a.cpus).await?;
    std::fs::write(state.file("last-job"), job.0.to_string())?;
    println!("submitted job {job} ({n} task{})", if n == 1 { "" } else { "s" });
    if a.wait {
        return wait_job(state, &client, job, OutputMode::Text).await;
    }
    Ok(0)
}

/// `wait`: waits for a job, with a progress bar.
async fn wait(state: &StateDir, a: WaitArgs) -> Result<i32> {
    let job = match a.job {
        Some(j) => JobId(j),
        None => {
            let text = std::fs::read_to_string(state.file("last-job"))
                .map_err(|_| anyhow!("no job given and none submitted yet on cluster `{}`", state.name))?;
            JobId(text.trim().parse().context("corrupt last-job file")?)
        }
    };
    let client = connect(state).await?;
    wait_job(state, &client, job, a.output).await
}

async fn wait_job(state: &StateDir, client: &Client, job: JobId, output: OutputMode) -> Result<i32> {
    let counts = client.progress(job).await?;
    let bar = if std::io::stderr().is_terminal() && output == OutputMode::Text {
        let b = indicatif::ProgressBar::new(u64::from(counts.total));
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} job {msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b.set_message(job.to_string());
        Some(b)
    } else {
        None
    };
    let waiter = client.wait(job);
    tokio::pin!(waiter);
    let outcome = loop {
        tokio::select! {
            o = &mut waiter => break o?,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if let (Some(b), Ok(c)) = (&bar, client.progress(job).await) {
                    b.set_position(u64::from(c.finished + c.failed));
                }
            }
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if output == OutputMode::Json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        println!(
            "job {job}: {} of {} tasks finished, {} failed (output in {})",
            outcome.finished,
            outcome.tasks,
            outcome.failed.len(),
            state.path.join("jobs").join(job.to_string()).display()
        );
        for (i, e) in outcome.failed.iter().take(10) {
            println!("  task {i} {e}");
        }
        if outcome.failed.len() > 10 {
            println!("  … and {} more (see --output json)", outcome.failed.len() - 10);
        }
    }
    Ok(if outcome.failed.is_empty() { 0 } else { 1 })
}

/// `status`: workers and jobs.
async fn status(state: &StateDir, a: StatusArgs) -> Result<i32> {
    let client = connect(state).await?;
    let s = client.status().await?;
    let jobs = backend::read_jobs(state);
    match a.output {
        OutputMode::Json => {
            let adaptive = manager::read_status(state);
            let v = serde_json::json!({
                "workers": s.workers, "jobs": s.jobs, "batch_jobs": jobs, "load": s.load, "adaptive": adaptive,
            });
            println!("{}", serde_json::to_string_pretty(&v)?)
        }
        OutputMode::Text => print!("{}", render_status(state, &s, &jobs)),
    }
    Ok(0)
}

fn render_status(state: &StateDir, s: &ClusterStatus, batch_jobs: &[backend::BatchJob]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "cluster `{}`: {} worker(s), {} job(s)", state.name, s.workers.len(), s.jobs.len());
    if let (None, Some(spec)) = (manager::read_status(state), manager::read_spec(state)) {
        let _ =
            writeln!(out, "adaptive: {}..{}, first decision within {} s", spec.min_jobs, spec.max_jobs, spec.interval);
    }
    if let Some(a) = manager::read_status(state) {
        let _ = writeln!(
            out,
            "adaptive: {}..{} {}, target {} ({} active, {} pending){}\n  why: {}",
            a.spec.min_jobs,
            a.spec.max_jobs,
            a.unit,
            a.target,
            a.jobs,
            a.pending,
            if a.paused { ", PAUSED" } else { "" },
            a.reason
        );
    }
    if !s.workers.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<6} {:<20} {:>8} {:>6} {:>9} {:>8}  batch job",
            "WORKER", "HOST", "PID", "SLOTS", "ASSIGNED", "HOLDING"
        );
        for w in &s.workers {
            let _ = writeln!(
                out,
                "{:<6} {:<20} {:>8} {:>6} {:>9} {:>8}  {}{}",
                w.id.to_string(),
                w.info.host,
                w.info.pid,
                w.info.slots,
                w.assigned,
                w.holding,
                w.info.batch_job.as_deref().unwrap_or("-"),
                if w.retiring { " (retiring)" } else { "" }
            );
        }
    }
    if !batch_jobs.is_empty() {
        let _ = writeln!(out, "\n{:<12} {:<10} {:<10} WORKERS", "BATCH JOB", "POOL", "STATE");
        for j in batch_jobs {
            let workers: Vec<String> = s
                .workers
                .iter()
                .filter(|w| w.info.batch_job.as_deref().is_some_and(|b| backend::same_job(&j.id, b)))
                .map(|w| w.id.to_string())
                .collect();
            let _ = writeln!(out, "{:<12} {:<10} {:<10} {}", j.id, j.pool, j.state.to_string(), workers.join(" "));
            if let Some(note) = &j.note {
                for line in note.lines() {
                    let _ = writeln!(out, "             {line}");
                }
            }
        }
    }
    if !s.jobs.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<6} {:<24} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "JOB", "NAME", "TOTAL", "WAITING", "RUNNING", "FINISHED", "FAILED"
        );
        for j in &s.jobs {
            let c = j.counts;
            let _ = writeln!(
                out,
                "{:<6} {:<24} {:>9} {:>9} {:>9} {:>9} {:>9}",
                j.id.to_string(),
                j.name.chars().take(24).collect::<String>(),
                c.total,
                c.waiting,
                c.running,
                c.finished,
                c.failed
            );
        }
    }
    out
}

/// `down`: stops the cluster and everything it started.
async fn down(state: &StateDir, a: DownArgs) -> Result<i32> {
    let file = SchedulerFile::read(&state.path).ok();
    let journal = state.journal_entries();
    if file.is_none() && journal.is_empty() {
        println!("cluster `{}` is not running (nothing in {})", state.name, state.path.display());
        return Ok(0);
    }
    // The scheduler clears the journal when it exits; what it listed must be gone too (the
    // scheduler's own batch job, with --scheduler-in-job, ends only after it).
    let journalled = backend::journalled_jobs(state);
    if let Some(f) = &file {
        // The scheduler may run on another host (--scheduler-in-job): its pid only means
        // something here when it runs here.
        let here = f.host == rdask::worker::hostname();
        if !here || process_alive(f.pid, "") {
            match connect(state).await {
                Ok(c) => {
                    let _ = c.shutdown().await;
                    // It removes its scheduler file once its workers and jobs have ended.
                    let deadline = Instant::now() + Duration::from_secs(a.timeout);
                    while state.file(rdask::cluster::SCHEDULER_FILE).exists()
                        && (!here || process_alive(f.pid, ""))
                        && Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                Err(e) => eprintln!("scheduler unreachable ({e}); ending what it started"),
            }
        }
    }
    // Whatever is still alive (a crashed scheduler's workers, a stuck process) is ended now.
    let left = cleanup(state);
    if !journalled.is_empty() {
        backend::cancel_jobs(state, journalled)?;
    }
    if left > 0 {
        println!("ended {left} leftover process(es)");
    }
    println!("cluster `{}` is down", state.name);
    Ok(0)
}

/// `$VAR` and `${VAR}` replaced by their values (unset: empty), as a shell would.
fn expand_vars(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(end) => (&inner[..end], &inner[end + 1..]),
                None => ("", after),
            }
        } else {
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if name.is_empty() {
            out.push('$');
            rest = after;
        } else {
            out.push_str(&std::env::var(name).unwrap_or_default());
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// The batch system a scheduler's options name, or `None` for the local backend.
fn batch_system_of(a: &SchedulerArgs) -> Result<Option<System>> {
    Ok(match a.backend.as_str() {
        "local" => None,
        other => Some(other.parse()?),
    })
}

fn commands_of(a: &SchedulerArgs, system: System) -> crate::jobs::Commands {
    let d = backend::default_commands(system);
    crate::jobs::Commands {
        submit: a.submit_command.clone().unwrap_or(d.submit),
        status: a.status_command.clone().unwrap_or(d.status),
        cancel: a.cancel_command.clone().unwrap_or(d.cancel),
    }
}

/// Jobs to submit for `--nodes`: one per `--nodes-per-job` nodes.
fn jobs_for(a: &SchedulerArgs) -> usize {
    let per = a.job.nodes.unwrap_or(1).max(1);
    a.nodes.div_ceil(per) as usize
}

/// The job parameters with what the scheduler's own options imply.
fn job_params(a: &SchedulerArgs, state: &StateDir) -> batch::JobParams {
    let mut p = a.job.clone();
    p.death_timeout = Some(a.death_timeout);
    p.interface.clone_from(&a.interface);
    if a.job_array {
        p.array = Some(jobs_for(a) as u32);
    }
    if p.cores.is_none() {
        p.cores = Some(u32::from(a.slots));
    }
    if p.log_directory.is_none() {
        p.log_directory = Some(state.path.join("logs").display().to_string());
    }
    p
}

/// The worker command of a job: this program (or `--worker-command`) joining the cluster.
fn worker_argv(a: &SchedulerArgs, state: &StateDir, addresses: &[String]) -> Result<Vec<String>> {
    let exe = match &a.worker_command {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("cannot find this program's path")?,
    };
    let addresses = if addresses.is_empty() { "<scheduler-address>".to_string() } else { addresses.join(",") };
    let mut v = vec![exe.display().to_string(), "--name".into(), state.name.clone()];
    if let Some(h) = state.path.parent() {
        v.extend(["--home".into(), h.display().to_string()]);
    }
    v.extend([
        "worker".into(),
        "--scheduler".into(),
        addresses,
        "--secret-file".into(),
        state.file(SECRET_FILE).display().to_string(),
    ]);
    Ok(v)
}

/// `job-script`: the script `up` would submit.
fn job_script(state: &StateDir, a: &SchedulerArgs) -> Result<i32> {
    let Some(system) = batch_system_of(a)? else {
        bail!("the local backend submits no job script; choose a batch system with --backend slurm|pbs|sge");
    };
    let addresses = SchedulerFile::read(&state.path).map(|f| f.addresses).unwrap_or_default();
    print!(
        "{}",
        backend::render(system, &job_params(a, state), &worker_argv(a, state, &addresses)?, a.template.as_deref())?
    );
    Ok(0)
}

/// `up --dry-run`: the plan, the script, nothing done.
fn dry_run(state: &StateDir, a: &SchedulerArgs, batch: Option<System>) -> Result<i32> {
    println!("cluster `{}`, state directory {}", state.name, state.path.display());
    println!(
        "scheduler: listens on {}:{} (in the background; log in scheduler.log)",
        a.interface.as_deref().unwrap_or(&a.host),
        a.port
    );
    match batch {
        None => println!("local backend: {} worker process(es) with {} slot(s) each", a.workers, a.slots),
        Some(system) => {
            let c = commands_of(a, system);
            let jobs = if a.job_array { 1 } else { jobs_for(a) };
            println!(
                "{system}: {jobs} submission(s) of the script below with `{}`; states polled with `{}` every {} s; cancelled with `{}`",
                c.submit.display(),
                c.status.display(),
                a.poll_interval,
                c.cancel.display()
            );
            for p in pools_of(a, state)? {
                println!("--- pool `{}`: {} job(s)", p.name, if a.job_array { 1 } else { p.jobs() });
                print!("{}", backend::render(system, &p.params, &worker_argv(a, state, &[])?, a.template.as_deref())?);
            }
        }
    }
    Ok(0)
}

/// The end of the newest files in the cluster's batch log directory.
fn logs_tail(state: &StateDir) -> String {
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

/// Asks the cluster to stop and waits (a while) until its scheduler has exited, which it
/// does only after ending its workers and batch jobs.
async fn stop_cluster(state: &StateDir, client: &Client) {
    let pid = SchedulerFile::read(&state.path).map(|f| f.pid).ok();
    let _ = client.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while pid.is_some_and(|p| process_alive(p, "")) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where `scale` writes the number of workers (local) or nodes (batch) the cluster should have.
const TARGET_FILE: &str = "target";

fn target_file(pool: &str) -> String {
    if pool == backend::DEFAULT_POOL {
        TARGET_FILE.to_string()
    } else {
        format!("{TARGET_FILE}-{pool}")
    }
}

fn read_target(state: &StateDir, pool: &str) -> Option<u32> {
    std::fs::read_to_string(state.file(&target_file(pool))).ok()?.trim().parse().ok()
}

/// A worker pool as the scheduler runs it: its job parameters and its number of nodes.
#[derive(Clone, Debug)]
struct PoolPlan {
    name: String,
    params: batch::JobParams,
    nodes: u32,
}

impl PoolPlan {
    fn per_job(&self) -> u32 {
        self.params.nodes.unwrap_or(1).max(1)
    }

    /// Jobs for `nodes` nodes: one per `nodes-per-job`.
    fn jobs_for_nodes(&self, nodes: u32) -> usize {
        nodes.div_ceil(self.per_job()) as usize
    }

    fn jobs(&self) -> usize {
        self.jobs_for_nodes(self.nodes)
    }

    /// The workers of one job and the slots of each.
    fn shape(&self) -> adapt::JobShape {
        let processes = self.params.processes.unwrap_or(1).max(1);
        let slots = (self.params.cores.unwrap_or(1) / processes).max(1);
        adapt::JobShape { workers: self.per_job() * processes, slots }
    }

    /// Workers its jobs hold when they all run.
    fn workers(&self) -> usize {
        self.jobs() * (self.per_job() * self.params.processes.unwrap_or(1)) as usize
    }
}

/// The default pool (the main options) and every `--pool`.
fn pools_of(a: &SchedulerArgs, state: &StateDir) -> Result<Vec<PoolPlan>> {
    let base = job_params(a, state);
    let mut pools = vec![PoolPlan { name: backend::DEFAULT_POOL.into(), params: base.clone(), nodes: a.nodes }];
    for spec in &a.pool {
        let mut words = spec.split_whitespace();
        let name = words.next().unwrap_or_default().to_string();
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            bail!("--pool `{spec}` must start with a name (letters, digits, - and _), e.g. --pool 'gpu nodes=2 queue=gpu'");
        }
        if pools.iter().any(|p| p.name == name) {
            bail!("two pools are named `{name}`; give each --pool its own name");
        }
        let mut params = serde_json::to_value(&base)?;
        params["job-name"] = serde_json::Value::String(format!("rdask-{name}"));
        let mut nodes = 1;
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                bail!("`{word}` in pool `{name}` is not KEY=VALUE (e.g. queue=gpu)");
            };
            if key == "nodes" {
                nodes = value.parse().map_err(|_| anyhow!("nodes={value} in pool `{name}` is not a whole number"))?;
                continue;
            }
            let key = if key == "nodes-per-job" { "nodes" } else { key };
            let obj = params.as_object_mut().expect("job parameters are an object");
            let Some(slot) = obj.get_mut(key) else {
                let mut keys: Vec<&str> = obj.keys().map(String::as_str).filter(|k| *k != "nodes").collect();
                keys.sort();
                bail!("unknown key `{key}` in pool `{name}`; valid keys: nodes, nodes-per-job, {}", keys.join(", "));
            };
            match slot {
                serde_json::Value::Array(items) => items.push(serde_json::Value::String(value.to_string())),
                _ => {
                    *slot = match value.parse::<u64>() {
                        Ok(n) => serde_json::Value::from(n),
                        Err(_) => serde_json::Value::String(value.to_string()),
                    }
                }
            }
        }
        let params: batch::JobParams =
            serde_json::from_value(params).map_err(|e| anyhow!("bad value in pool `{name}`: {e}"))?;
        let mut plan = PoolPlan { name, params, nodes };
        if a.job_array {
            plan.params.array = Some(plan.jobs() as u32);
        }
        pools.push(plan);
    }
    Ok(pools)
}

/// `adapt`: turns adaptive scaling on (or off) for a running batch cluster.
async fn adapt_cmd(state: &StateDir, a: cli::AdaptArgs) -> Result<i32> {
    let _client = connect(state).await?;
    let up = up_args(state)?;
    if up.job_array {
        bail!("a cluster started with --job-array cannot adapt; start it without --job-array");
    }
    if a.off {
        manager::set_adaptive(state, None)?;
        println!("cluster `{}` no longer adapts; it keeps the jobs it has (change them with `scale`)", state.name);
        return Ok(0);
    }
    let shape = match up.backend.as_str() {
        "local" => adapt::JobShape { workers: 1, slots: u32::from(up.slots) },
        _ => pools_of(&up, state)?[0].shape(),
    };
    let (min, max) = adapt_bounds(&a, shape)?;
    let spec = adapt::AdaptSpec {
        target_duration: a.target_duration,
        interval: a.interval,
        max_pending: a.max_pending,
        scale_down_after: a.scale_down_after,
        max_failures: a.max_failures,
        replace_ahead: a.replace_ahead,
        ..adapt::AdaptSpec::new(min, max)
    };
    spec.check().map_err(|e| anyhow!("{e}"))?;
    let _ = std::fs::remove_file(state.file(TARGET_FILE));
    manager::set_adaptive(state, Some(&spec))?;
    let what = match up.backend.as_str() {
        "local" => format!("local workers of {} slot(s)", shape.slots),
        _ => format!("job(s) of {} worker(s) × {} slot(s)", shape.workers, shape.slots),
    };
    println!(
        "cluster `{}` adapts between {min} and {max} {what}, aiming to finish queued work within {} s; see `rdask-jobqueue status`",
        state.name, spec.target_duration
    );
    Ok(0)
}

/// The bounds of `adapt` in jobs: given in jobs, or in workers (rounded to whole jobs).
fn adapt_bounds(a: &cli::AdaptArgs, shape: adapt::JobShape) -> Result<(u32, u32)> {
    let min = match (a.min, a.min_workers) {
        (Some(j), _) => j,
        (None, Some(w)) => w.div_ceil(shape.workers),
        (None, None) => 0,
    };
    let max = match (a.max, a.max_workers) {
        (Some(j), _) => j,
        (None, Some(w)) => (w / shape.workers).max(1),
        (None, None) => bail!(
            "give the most jobs with --max N (or the most workers with --max-workers N); each job here holds {} worker(s)",
            shape.workers
        ),
    };
    if min > max {
        bail!("the minimum ({min} jobs) is above the maximum ({max} jobs); lower --min or raise --max");
    }
    Ok((min, max))
}

/// The options the cluster was started with (`up.json`).
fn up_args(state: &StateDir) -> Result<SchedulerArgs> {
    serde_json::from_str(&std::fs::read_to_string(state.file("up.json")).unwrap_or_default())
        .map_err(|_| anyhow!("cluster `{}` was not started by `rdask-jobqueue up`; it cannot be scaled", state.name))
}

/// `scale N`: N workers (local backend) or N nodes' worth of jobs (batch backends).
async fn scale(state: &StateDir, a: cli::ScaleArgs) -> Result<i32> {
    let client = connect(state).await?;
    let up = up_args(state)?;
    if up.job_array {
        bail!("a cluster started with --job-array cannot be scaled; start it without --job-array to scale it");
    }
    let pools = if up.backend == "local" { Vec::new() } else { pools_of(&up, state)? };
    let pool = pools.iter().find(|p| p.name == a.pool);
    if up.backend != "local" && pool.is_none() {
        let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        bail!("no worker pool named `{}`; this cluster has: {}", a.pool, names.join(", "));
    }
    if manager::read_spec(state).is_some() {
        manager::set_adaptive(state, None)?;
        println!("adaptive scaling is off now");
    }
    let tmp = state.file(".target.tmp");
    std::fs::write(&tmp, a.n.to_string())?;
    std::fs::rename(tmp, state.file(&target_file(&a.pool)))?;
    // Workers of the other pools stay as they are.
    let others: usize = match pool {
        None => 0,
        Some(_) => {
            let jobs = backend::read_jobs(state);
            let s = client.status().await?;
            s.workers
                .iter()
                .filter(|w| {
                    let job = w.info.batch_job.as_deref().unwrap_or("");
                    jobs.iter().any(|j| j.pool != a.pool && backend::same_job(&j.id, job))
                })
                .count()
        }
    };
    let want = match pool {
        None => a.n as usize,
        Some(p) => others + PoolPlan { nodes: a.n, ..p.clone() }.workers(),
    };
    match pool {
        None => println!("scaling cluster `{}` to {} workers", state.name, a.n),
        Some(p) => println!("scaling pool `{}` of cluster `{}` to {} nodes", p.name, state.name, a.n),
    }
    if !a.wait {
        return Ok(0);
    }
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    loop {
        let n = client.status().await?.workers.len();
        if n == want {
            println!("{n} workers");
            return Ok(0);
        }
        if Instant::now() > deadline {
            bail!(
                "{n} workers after {} s, not {want}; busy workers are retired only once idle (see `status`)",
                a.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `up --scheduler-in-job`: the scheduler itself runs in a batch job (which then submits the
/// worker jobs); clients find it through the state directory, as usual.
async fn scheduler_in_job(state: &StateDir, a: &UpArgs, system: System, exe: &Path) -> Result<i32> {
    let s = &a.scheduler;
    let mut params = job_params(s, state);
    params.job_name = Some(format!("{}-scheduler", params.job_name.as_deref().unwrap_or("rdask")));
    params.processes = None;
    params.nodes = None;
    params.array = None;
    params.gpus = None;
    params.local_directory = None;
    params.worker_extra_args.clear();
    params.interface = None;
    let exe = s.worker_command.clone().unwrap_or_else(|| exe.to_path_buf());
    let mut argv = vec![exe.display().to_string(), "--name".into(), state.name.clone()];
    if let Some(h) = state.path.parent() {
        argv.extend(["--home".into(), h.display().to_string()]);
    }
    argv.extend(["scheduler".into(), "--args-file".into(), state.file("up.json").display().to_string()]);
    let script = backend::render(system, &params, &argv, s.template.as_deref())?;
    if let Some(dir) = &params.log_directory {
        std::fs::create_dir_all(dir)?;
    }
    let path = state.file("scheduler-job.sh");
    std::fs::write(&path, script)?;
    let batch = backend::batch_system(system, commands_of(s, system));
    let id = batch.submit(&path)?;
    state.journal("job", &format!("{system} {id}"))?;
    println!("submitted the scheduler as {system} job {id}");
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    loop {
        if SchedulerFile::read(&state.path).is_ok() {
            break;
        }
        let st = batch.status(std::slice::from_ref(&id))?;
        if st.get(&id).is_some_and(|s| !s.is_active()) {
            let _ = cleanup(state);
            bail!("the scheduler's job {id} ended before the scheduler was ready:\n{}", logs_tail(state));
        }
        if Instant::now() > deadline {
            println!("the scheduler's job {id} has not started within {} s; it stays queued (`status` shows when it is up, `down` cancels it)", a.timeout);
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let f = SchedulerFile::read(&state.path)?;
    println!(
        "cluster `{}` is up: scheduler {} in job {id} on {}; state in {}",
        state.name,
        f.addresses[0],
        f.host,
        state.path.display()
    );
    Ok(0)
}
