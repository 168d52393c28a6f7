//! `submit`, `wait` and `status`: what users do with a running cluster.

use super::*;

/// `submit`: submits a command (or an array of them).
pub(crate) async fn submit(state: &StateDir, a: SubmitArgs) -> Result<i32> {
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
pub(crate) async fn wait(state: &StateDir, a: WaitArgs) -> Result<i32> {
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

pub(crate) async fn wait_job(state: &StateDir, client: &Client, job: JobId, output: OutputMode) -> Result<i32> {
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
pub(crate) async fn status(state: &StateDir, a: StatusArgs) -> Result<i32> {
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

pub(crate) fn render_status(state: &StateDir, s: &ClusterStatus, batch_jobs: &[backend::BatchJob]) -> String {
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
                w.info.launch.as_deref().unwrap_or("-"),
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
                .filter(|w| w.info.launch.as_deref().is_some_and(|b| backend::same_job(&j.id, b)))
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
