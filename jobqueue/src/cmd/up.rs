//! `up`: starts a cluster in the background (or, with `--dry-run`, says what it would do).

use std::path::Path;
use std::time::{Duration, Instant};

use rdask::cluster::{SchedulerFile, SECRET_FILE};
use rdask::{Client, Secret};

use crate::backend;
use crate::batch::System;
use crate::cli::UpArgs;
use crate::error::{Error, Result};
use crate::jobs;
use crate::pools::{batch_system_of, commands_of, job_params, worker_argv};
use crate::spec::{ClusterSpec, SPEC_FILE};
use crate::state::{process_alive, Journalled, StateDir};
use crate::{batch_allocations, cleanup, connect, logs_tail, tail};

/// `up`: starts the scheduler in the background and waits for its workers.
pub(crate) async fn up(state: &StateDir, a: UpArgs) -> Result<i32> {
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
                .map_err(|source| Error::Render { pool: Some(p.name.clone()), source })?;
        }
        // A missing batch command is named now, with the option that points at it, before
        // anything is started.
        jobs::check_commands(&commands_of(&spec, system), system.package())?;
    }
    if let Ok(f) = SchedulerFile::read(&state.path) {
        if process_alive(f.pid, "rdask") {
            return Err(Error::AlreadyUp {
                cluster: state.name.clone(),
                pid: f.pid,
                addresses: f.addresses.join(", "),
            });
        }
    }
    // A scheduler that died (SIGKILL, a reboot) left its file and its journal: carry on from
    // them, unless asked to start over.
    let previous = SchedulerFile::read(&state.path)
        .ok()
        .filter(|_| !a.fresh && state.file(crate::state::SCHEDULER_JOURNAL).exists() && state.file(SPEC_FILE).exists());
    if let Some(prev) = &previous {
        spec = ClusterSpec::load(&state.file(SPEC_FILE))?;
        // The same address: the workers that are still running look for it there.
        if let Some(port) = prev.addresses.first().and_then(|a| a.rsplit_once(':')).and_then(|(_, p)| p.parse().ok()) {
            spec.scheduler.port = port;
        }
        eprintln!(
            "the scheduler of cluster `{}` (pid {}) is gone: restoring it from its journal \
             (`up --fresh` starts over instead)",
            state.name, prev.pid
        );
    } else {
        let leftovers = cleanup(state);
        if leftovers > 0 {
            eprintln!("cleaned up {leftovers} process(es) left by an earlier run of cluster `{}`", state.name);
        }
        let _ = std::fs::remove_file(state.file(crate::state::SCHEDULER_JOURNAL));
    }
    let batch = batch_system_of(&spec);
    if let Some(p) = &spec.workers.program {
        if !p.exists() {
            return Err(Error::Usage(format!(
                "worker program {} does not exist (give the path of your program, built)",
                p.display()
            )));
        }
    }
    // What `up` creates it removes again if the cluster does not start: a failed `up`
    // leaves no state directory behind (or, in one that was there, no cluster files). Not
    // while its journal still lists something: `down` needs it to end that.
    let created = !state.path.exists();
    state.create()?;
    let undo = |state: &StateDir| {
        if !state.journal_entries().is_empty() {
            return;
        }
        if created {
            let _ = std::fs::remove_dir_all(&state.path);
        } else {
            for f in [SECRET_FILE, SPEC_FILE, rdask::cluster::SCHEDULER_FILE] {
                let _ = std::fs::remove_file(state.file(f));
            }
        }
    };
    let _ = std::fs::remove_file(state.file(rdask::cluster::SCHEDULER_FILE));
    if previous.is_none() {
        Secret::generate().save(&state.file(SECRET_FILE))?;
    }
    let (exe, leading) = crate::embed::self_command()?;
    let log_path = state.file("scheduler.log");
    let log = std::fs::File::create(&log_path).map_err(Error::io(format!("cannot create {}", log_path.display())))?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(&leading).arg("--name").arg(&state.name);
    if let Some(h) = state.path.parent() {
        cmd.arg("--home").arg(h);
    }
    // The background scheduler runs in another directory: paths are made absolute.
    if let Some(p) = &spec.workers.program {
        spec.workers.program =
            Some(std::fs::canonicalize(p).map_err(Error::io(format!("worker program {}", p.display())))?);
    }
    if let Some(p) = &spec.template {
        spec.template = Some(std::fs::canonicalize(p).map_err(Error::io(format!("template {}", p.display())))?);
    }
    let spec_file = state.file(SPEC_FILE);
    spec.save(&spec_file)?;
    cmd.arg("scheduler").arg("--spec-file").arg(&spec_file);
    if previous.is_some() {
        cmd.arg("--restore");
    }
    if spec.scheduler.in_job {
        let Some(system) = batch else {
            return Err(Error::Usage(format!(
                "--scheduler-in-job needs a batch backend (--backend {})",
                System::list("|")
            )));
        };
        return scheduler_in_job(state, &a, &spec, system, &exe).await;
    }
    use std::os::unix::process::CommandExt;
    // Its own process group: a Ctrl-C in this terminal must not take the cluster down.
    let log2 = log.try_clone().map_err(Error::io(format!("cannot open {}", log_path.display())))?;
    cmd.process_group(0).stdin(std::process::Stdio::null()).stdout(log2).stderr(log);
    let mut child = cmd.spawn().map_err(Error::io(format!("cannot start the scheduler {}", exe.display())))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(f) = SchedulerFile::read(&state.path) {
            if f.pid == child.id() {
                break;
            }
        }
        if let Some(status) = child.try_wait().map_err(Error::io("cannot wait for the scheduler"))? {
            let log = tail(&log_path);
            undo(state);
            return Err(Error::SchedulerExited { status, log });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let what = format!("the scheduler was not ready within 15 s:\n{}", tail(&log_path));
            undo(state);
            return Err(Error::NotReady { what });
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
    let mut s = client.status().await.map_err(Error::client(&state.name))?;
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
            return Err(Error::NotReady {
                what: format!(
                    "every batch job ended before its worker joined ({}); the cluster was stopped. Job output:\n{}",
                    states.join(", "),
                    logs_tail(state)
                ),
            });
        }
        if Instant::now() > deadline {
            stop_cluster(state, &client).await;
            return Err(Error::NotReady {
                what: format!(
                    "only {} of {want} workers registered within {} s; the cluster was stopped. Worker log:\n{}",
                    s.workers.len(),
                    a.timeout,
                    tail(&state.file(if batch.is_some() { "scheduler.log" } else { "workers.log" }))
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        s = client.status().await.map_err(Error::client(&state.name))?;
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
    if let Some(url) = super::status::dashboard_url(state, &s) {
        println!("dashboard: {url}");
    }
    println!("next: rdask-jobqueue submit --array 1-10 -- echo %{{TASK_ID}}; rdask-jobqueue wait; rdask-jobqueue down");
    Ok(0)
}

/// `up --dry-run`: the plan, the script, nothing done.
pub(crate) fn dry_run(state: &StateDir, spec: &ClusterSpec) -> Result<i32> {
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

/// Asks the cluster to stop and waits (a while) until its scheduler has exited, which it
/// does only after ending its workers and batch jobs.
pub(crate) async fn stop_cluster(state: &StateDir, client: &Client) {
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
    let (exe, leading) = match &spec.workers.command {
        Some(p) => (p.clone(), Vec::new()),
        None => (exe.to_path_buf(), crate::embed::self_command()?.1),
    };
    let mut argv = vec![exe.display().to_string()];
    argv.extend(leading);
    argv.extend(["--name".into(), state.name.clone()]);
    if let Some(h) = state.path.parent() {
        argv.extend(["--home".into(), h.display().to_string()]);
    }
    argv.extend(["scheduler".into(), "--spec-file".into(), state.file(SPEC_FILE).display().to_string()]);
    let script = backend::render(system, &params, &argv, spec.template.as_deref())?;
    if let Some(dir) = &params.log_directory {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("cannot create the log directory {dir}")))?;
    }
    let path = state.file("scheduler-job.sh");
    std::fs::write(&path, script).map_err(Error::io(format!("cannot write {}", path.display())))?;
    let batch = backend::batch_system(system, commands_of(spec, system));
    let id = batch.submit(&path).map_err(|source| Error::Submission {
        system: system.to_string(),
        script: path.clone(),
        source,
    })?;
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
            return Err(Error::NotReady {
                what: format!("the scheduler's job {id} ended before the scheduler was ready:\n{}", logs_tail(state)),
            });
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
