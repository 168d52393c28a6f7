//! `rdask-jobqueue`: start, use and stop rdask clusters.
//!
//! The binary (`src/main.rs`) only parses arguments ([`cli`]) and calls
//! [`run`]; each subcommand is a function here so tests can drive them.
//!
//! Exit codes: 0 success; 1 the command failed (tasks failed, the cluster is
//! unreachable, …); 2 the command line is wrong.

pub mod cli;
pub mod local;
pub mod net;
pub mod state;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rdask::cluster::{ClusterInfo, SchedulerFile, SECRET_FILE};
use rdask::protocol::{parse_array, ClusterStatus, CommandSpec, JobId};
use rdask::{Client, Secret};

use crate::cli::{Cli, Cmd, DownArgs, OutputMode, SchedulerArgs, StatusArgs, SubmitArgs, UpArgs, WaitArgs, WorkerArgs};
use crate::local::LocalBackend;
use crate::state::{process_alive, StateDir};

/// Runs one invocation; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    let state = StateDir::locate(cli.home.as_deref(), &cli.name)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match cli.command {
        Cmd::Up(a) => rt.block_on(up(&state, a)),
        Cmd::Submit(a) => rt.block_on(submit(&state, a)),
        Cmd::Wait(a) => rt.block_on(wait(&state, a)),
        Cmd::Status(a) => rt.block_on(status(&state, a)),
        Cmd::Down(a) => rt.block_on(down(&state, a)),
        Cmd::Scheduler(a) => rt.block_on(scheduler(&state, a)),
        Cmd::Worker(a) => rt.block_on(worker(&state, a)),
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
    cmd.arg("scheduler").args(a.scheduler.to_args());
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
    let want = a.scheduler.workers;
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let mut s = client.status().await?;
    while s.workers.len() < want {
        if Instant::now() > deadline {
            let _ = client.shutdown().await;
            bail!(
                "only {} of {want} workers registered within {} s; the cluster was stopped. Worker log:\n{}",
                s.workers.len(),
                a.timeout,
                tail(&state.file("workers.log"))
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        s = client.status().await?;
    }
    let f = SchedulerFile::read(&state.path)?;
    let slots: u32 = s.workers.iter().map(|w| u32::from(w.info.slots)).sum();
    println!(
        "cluster `{}` is up: scheduler {} (pid {}), {} workers, {slots} slots; state in {}",
        state.name,
        f.addresses.first().map(String::as_str).unwrap_or("?"),
        f.pid,
        s.workers.len(),
        state.path.display()
    );
    println!("next: rdask-jobqueue submit --array 1-10 -- echo %{{TASK_ID}}; rdask-jobqueue wait; rdask-jobqueue down");
    Ok(0)
}

/// Ends every process in the journal that is still alive; returns how many there were.
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
    for (pid, start) in procs {
        // A pid the system has recycled for another program is left alone.
        let same = start.is_none_or(|s| state::process_start_time(pid) == Some(s));
        if same && process_alive(pid, "") {
            n += 1;
            terminate(pid);
        }
    }
    let _ = std::fs::remove_file(state.file(rdask::cluster::SCHEDULER_FILE));
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
async fn scheduler(state: &StateDir, a: SchedulerArgs) -> Result<i32> {
    rdask::init_logging();
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
    let addr: rdask::Address = format!("tcp://{}:{}", net::bracket(&bind_host), a.port).parse()?;
    let listener = rdask_transport::listen(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (is the port in use? choose another with --port)"))?;
    let port = listener.local_addr().host_port.rsplit_once(':').map(|(_, p)| p.to_string()).unwrap_or_default();
    let addresses = net::candidate_addresses(&bind_host, &port);
    let config = rdask::scheduler::Config {
        heartbeat_interval: Duration::from_millis(a.heartbeat_ms),
        heartbeat_timeout: Duration::from_millis(a.heartbeat_ms * 10),
    };
    let server = rdask::server::spawn(listener, secret.clone(), config);
    SchedulerFile { addresses: addresses.clone(), pid: std::process::id(), host: rdask::worker::hostname() }
        .write(&state.path)?;
    tracing::info!("scheduler listening; workers and clients use {}", addresses.join(", "));
    let (program, args) = match &a.worker_program {
        Some(p) => (p.clone(), Vec::new()),
        None => (std::env::current_exe()?, vec!["--name".to_string(), state.name.clone(), "worker".to_string()]),
    };
    let mut backend = LocalBackend::new(program, args, a.slots, a.death_timeout);
    backend.start(state, a.workers)?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let info = ClusterInfo { addresses: vec![server.address.clone()], secret };
    let mut server = std::pin::pin!(server.wait());
    tokio::select! {
        _ = &mut server => {}
        _ = term.recv() => shutdown_self(&info, &mut server).await,
        _ = int.recv() => shutdown_self(&info, &mut server).await,
    }
    backend.stop(Duration::from_secs(5));
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
    if let Some(s) = a.slots.or_else(|| std::env::var("RDASK_SLOTS").ok().and_then(|v| v.parse().ok())) {
        config.slots = s;
    }
    config.death_timeout = Duration::from_secs(
        a.death_timeout
            .or_else(|| std::env::var("RDASK_DEATH_TIMEOUT").ok().and_then(|v| v.parse().ok()))
            .unwrap_or(60),
    );
    rdask::worker::run(config, std::sync::Arc::new(rdask::Registry::new())).await?;
    Ok(0)
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
    match a.output {
        OutputMode::Json => println!("{}", serde_json::to_string_pretty(&s)?),
        OutputMode::Text => print!("{}", render_status(state, &s)),
    }
    Ok(0)
}

fn render_status(state: &StateDir, s: &ClusterStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "cluster `{}`: {} worker(s), {} job(s)", state.name, s.workers.len(), s.jobs.len());
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
    if let Some(f) = &file {
        if process_alive(f.pid, "") {
            match connect(state).await {
                Ok(c) => {
                    let _ = c.shutdown().await;
                }
                Err(e) => eprintln!("scheduler unreachable ({e}); ending its processes"),
            }
            let deadline = Instant::now() + Duration::from_secs(a.timeout);
            while process_alive(f.pid, "") && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // Whatever is still alive (a crashed scheduler's workers, a stuck process) is ended now.
    let left = cleanup(state);
    if left > 0 {
        println!("ended {left} leftover process(es)");
    }
    println!("cluster `{}` is down", state.name);
    Ok(0)
}
