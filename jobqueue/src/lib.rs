//! `rdask-jobqueue`: start, use and stop rdask clusters.
//!
//! The binary (`src/main.rs`) only parses arguments ([`cli`]) and calls
//! [`run`]; each subcommand is a function: `up`, `down`, `worker`, `job-script` here,
//! the background `scheduler` in `serve`, `submit`/`wait`/`status` in `tasks`, `scale` and
//! `adapt` in `scaling`. [`spec`] gives the options their meaning once, as a `ClusterSpec`;
//! `pools` says what a spec means for batch jobs; [`provision`] starts, polls and ends the
//! workers' allocations inside the scheduler process.
//!
//! Exit codes: 0 success; 1 the command failed (tasks failed, the cluster is
//! unreachable, …); 2 the command line is wrong.
// Allowed: the CLI, launchers and drivers use the clock and spawn. The sans-IO modules deny it (see clippy.toml).
#![allow(clippy::disallowed_methods)]

pub mod adapt;
pub mod backend;
pub mod batch;
pub mod cli;
pub mod config;
#[cfg(any(test, feature = "fake-batch"))]
pub mod fake;
pub mod jobs;
pub mod mpi;
pub mod net;
mod pools;
pub mod provision;
pub(crate) mod scaling;
mod serve;
pub mod spec;
pub mod srun;
pub mod state;
pub mod systems;
mod tasks;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rdask::cluster::{ClusterInfo, SchedulerFile, SECRET_FILE};
use rdask::protocol::{parse_array, ClusterStatus, CommandSpec, JobId};
use rdask::{Client, Secret};

use crate::backend::BatchBackend;
use crate::batch::System;
use crate::cli::{Cli, Cmd, DownArgs, OutputMode, SchedulerCmd, StatusArgs, SubmitArgs, UpArgs, WaitArgs, WorkerArgs};
use crate::pools::*;
use crate::scaling::{adapt_cmd, scale};
use crate::serve::scheduler;
use crate::spec::{ClusterSpec, SPEC_FILE};
use crate::state::{process_alive, Journalled, StateDir};
use crate::tasks::{status, submit, wait};

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
        Cmd::JobScript(a) => job_script(&state, &ClusterSpec::resolve(&a, &state)?),
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
    let mut spec = ClusterSpec::resolve(&a.scheduler, state)?;
    let batch = batch_system_of(&spec);
    if a.dry_run {
        return dry_run(state, &spec);
    }
    if let Some(system) = batch {
        // Fail on a bad parameter, pool or template now, not in the background scheduler.
        for p in &spec.pools {
            let argv = worker_argv(&spec, state, &[])?;
            backend::render(system, &p.params, &argv, spec.template.as_deref())
                .with_context(|| format!("pool `{}`", p.name))?;
        }
        // A missing batch command is named now, with the option that points at it, before
        // anything is started.
        jobs::check_commands(&commands_of(&spec, system), system.package())?;
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
    if let Some(p) = &spec.workers.program {
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
    // The background scheduler runs in another directory: paths are made absolute.
    if let Some(p) = &spec.workers.program {
        spec.workers.program = Some(std::fs::canonicalize(p)?);
    }
    if let Some(p) = &spec.template {
        spec.template = Some(std::fs::canonicalize(p).with_context(|| format!("template {}", p.display()))?);
    }
    let spec_file = state.file(SPEC_FILE);
    spec.save(&spec_file)?;
    cmd.arg("scheduler").arg("--spec-file").arg(&spec_file);
    if spec.scheduler.in_job {
        let Some(system) = batch else {
            bail!("--scheduler-in-job needs a batch backend (--backend {})", System::list("|"));
        };
        return scheduler_in_job(state, &a, &spec, system, &exe).await;
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
        None => spec.initial_local_workers(),
        Some(_) if !a.wait => 0,
        Some(_) => spec
            .pools
            .iter()
            .map(|p| match spec.adapt {
                Some(ad) if p.name == backend::DEFAULT_POOL => ad.min as usize * p.shape().workers as usize,
                _ => p.workers(),
            })
            .sum(),
    };
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let mut s = client.status().await?;
    while s.workers.len() < want {
        let jobs = batch_allocations(&s);
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
    let jobs = batch_allocations(&s).len();
    let jobs = if batch.is_some() { format!(", {jobs} batch job(s)") } else { String::new() };
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

/// The batch jobs of every pool that have an id, as the provisioner sees them.
fn batch_allocations(s: &ClusterStatus) -> Vec<rdask::protocol::AllocationStatus> {
    let pools = s.provisioning.iter().flat_map(|p| &p.pools).filter(|p| p.unit == "job");
    pools.flat_map(|p| p.jobs.iter().filter(|j| !j.id.is_empty()).cloned()).collect()
}

/// Cancels every batch job and ends every process in the journal that is still alive;
/// returns how many processes there were.
fn cleanup(state: &StateDir) -> usize {
    let mut n = 0;
    let procs: Vec<(u32, Option<u64>)> = state
        .journal_entries()
        .into_iter()
        .filter_map(|e| match e {
            Journalled::Process { pid, start } => Some((pid, Some(start))),
            _ => None,
        })
        .collect();
    match backend::cancel_journalled(state, backend::batch_system) {
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

/// `worker`: runs a worker (command tasks only) in the foreground.
async fn worker(state: &StateDir, a: WorkerArgs) -> Result<i32> {
    rdask::init_logging();
    // Where the secret was read from, for a worker program to read it too.
    let mut secret_file = None;
    let info = match &a.scheduler {
        Some(addr) => {
            let addresses = addr.split(',').map(|s| s.trim().parse()).collect::<Result<Vec<rdask::Address>, _>>()?;
            let file = a.secret_file.clone().unwrap_or_else(|| state.file(SECRET_FILE));
            let secret =
                Secret::load(&file).map_err(|e| anyhow!("{e}\n(give the cluster's secret with --secret-file)"))?;
            secret_file = Some(file);
            ClusterInfo { addresses, secret }
        }
        None => match std::env::var("RDASK_SCHEDULER") {
            Ok(_) => ClusterInfo::from_env()?,
            Err(_) => ClusterInfo::from_state_dir(
                &std::env::var_os("RDASK_STATE_DIR").map(PathBuf::from).unwrap_or(state.path.clone()),
            )?,
        },
    };
    // Its launch tag comes from RDASK_LAUNCH_TAG, which the job script sets.
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
    if let Some(program) = &a.program {
        return Err(exec_worker_program(program, &config, secret_file.as_deref()));
    }
    rdask::worker::run(config, std::sync::Arc::new(rdask::Registry::new())).await?;
    Ok(0)
}

/// Replaces this process by `program`, a worker configured through its environment as
/// [`rdask::worker_main`] reads it (same pid: the batch system's signals reach it); returns
/// only on failure.
fn exec_worker_program(
    program: &Path,
    config: &rdask::worker::WorkerConfig,
    secret_file: Option<&Path>,
) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let addresses: Vec<String> = config.cluster.addresses.iter().map(|a| a.to_string()).collect();
    let mut cmd = std::process::Command::new(program);
    cmd.env(rdask::local::ROLE_VAR, "worker")
        .env("RDASK_SCHEDULER", addresses.join(","))
        .env("RDASK_SLOTS", config.slots.to_string())
        .env("RDASK_DEATH_TIMEOUT", config.death_timeout.as_secs().to_string())
        .env("RDASK_LISTEN_HOST", &config.listen_host);
    match secret_file {
        Some(f) => cmd.env("RDASK_SECRET_FILE", f).env_remove("RDASK_SECRET"),
        None => cmd.env("RDASK_SECRET", config.cluster.secret.to_hex()),
    };
    if let Some(at) = config.ends_at {
        cmd.env("RDASK_LIFETIME_MS", at.saturating_duration_since(Instant::now()).as_millis().to_string());
    }
    let e = cmd.exec();
    anyhow!("cannot start the worker program {}: {e}", program.display())
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
    let journalled: Vec<Journalled> = state.journal_entries();
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
    if journalled.iter().any(|e| matches!(e, Journalled::Job { .. })) {
        // Written back for `cancel_journalled`, which reads them from the journal.
        for e in &journalled {
            state.record(e)?;
        }
        let cancelled = backend::cancel_journalled(state, backend::batch_system);
        state.clear_journal();
        cancelled?;
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

/// `job-script`: the script `up` would submit.
fn job_script(state: &StateDir, spec: &ClusterSpec) -> Result<i32> {
    let Some(system) = batch_system_of(spec) else {
        bail!("the local backend submits no job script; choose a batch system with --backend {}", System::list("|"));
    };
    let addresses = SchedulerFile::read(&state.path).map(|f| f.addresses).unwrap_or_default();
    print!(
        "{}",
        backend::render(system, &job_params(spec), &worker_argv(spec, state, &addresses)?, spec.template.as_deref())?
    );
    Ok(0)
}

/// `up --dry-run`: the plan, the script, nothing done.
fn dry_run(state: &StateDir, spec: &ClusterSpec) -> Result<i32> {
    println!("cluster `{}`, state directory {}", state.name, state.path.display());
    let s = &spec.scheduler;
    println!(
        "scheduler: listens on {}:{} (in the background; log in scheduler.log)",
        s.interface.as_deref().unwrap_or(&s.host),
        s.port
    );
    match batch_system_of(spec) {
        None => println!(
            "local backend: {} worker process(es) with {} slot(s) each",
            spec.workers.local_workers, spec.workers.slots
        ),
        Some(system) => {
            let c = commands_of(spec, system);
            let jobs = if spec.job_array { 1 } else { spec.main_pool().jobs() };
            println!(
                "{system}: {jobs} submission(s) of the script below with `{}`; states polled with `{}` every {} s; cancelled with `{}`",
                c.submit.display(),
                c.status.display(),
                s.poll_interval,
                c.cancel.display()
            );
            for p in &spec.pools {
                println!("--- pool `{}`: {} job(s)", p.name, if spec.job_array { 1 } else { p.jobs() });
                print!(
                    "{}",
                    backend::render(system, &p.params, &worker_argv(spec, state, &[])?, spec.template.as_deref())?
                );
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

/// `up --scheduler-in-job`: the scheduler itself runs in a batch job (which then submits the
/// worker jobs); clients find it through the state directory, as usual.
async fn scheduler_in_job(state: &StateDir, a: &UpArgs, spec: &ClusterSpec, system: System, exe: &Path) -> Result<i32> {
    let mut params = job_params(spec);
    params.job_name = Some(format!("{}-scheduler", params.job_name.as_deref().unwrap_or("rdask")));
    params.processes = None;
    params.nodes = None;
    params.array = None;
    params.gpus = None;
    params.local_directory = None;
    params.worker_extra_args.clear();
    params.interface = None;
    let exe = spec.workers.command.clone().unwrap_or_else(|| exe.to_path_buf());
    let mut argv = vec![exe.display().to_string(), "--name".into(), state.name.clone()];
    if let Some(h) = state.path.parent() {
        argv.extend(["--home".into(), h.display().to_string()]);
    }
    argv.extend(["scheduler".into(), "--spec-file".into(), state.file(SPEC_FILE).display().to_string()]);
    let script = backend::render(system, &params, &argv, spec.template.as_deref())?;
    if let Some(dir) = &params.log_directory {
        std::fs::create_dir_all(dir)?;
    }
    let path = state.file("scheduler-job.sh");
    std::fs::write(&path, script)?;
    let batch = backend::batch_system(system, commands_of(spec, system));
    let id = batch.submit(&path)?;
    state.record(&Journalled::Job { system, id: id.clone(), pool: "scheduler".into(), launch: String::new() })?;
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
