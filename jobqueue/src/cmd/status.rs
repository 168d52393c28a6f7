//! `status`: the cluster's workers, jobs and provisioning, as text or JSON.

use rdask::protocol::ClusterStatus;

use crate::cli::{OutputMode, StatusArgs};
use crate::connect;
use crate::error::{Error, Result};
use crate::state::StateDir;

/// `status`: workers and jobs.
pub(crate) async fn status(state: &StateDir, a: StatusArgs) -> Result<i32> {
    let client = connect(state).await?;
    if a.watch {
        return watch(state, &client).await;
    }
    let s = client.status().await.map_err(Error::client(&state.name))?;
    match a.output {
        OutputMode::Json => {
            let mut v = status_json(&s);
            v["dashboard"] = serde_json::json!(dashboard_url(state, &s));
            println!("{}", serde_json::to_string_pretty(&v).expect("serialisable"))
        }
        OutputMode::Text => print!("{}", render_status(state, &s)),
    }
    Ok(0)
}

/// The dashboard's URL with its token, when the cluster serves one.
pub(crate) fn dashboard_url(state: &StateDir, s: &ClusterStatus) -> Option<String> {
    let address = s.dashboard.as_deref()?;
    let secret = rdask::Secret::load(&state.file(rdask::cluster::SECRET_FILE)).ok()?;
    Some(crate::dashboard::url(address, &secret))
}

/// `status --watch`: the status and each job's progress bar, redrawn every second.
async fn watch(state: &StateDir, client: &rdask::Client) -> Result<i32> {
    use std::io::Write;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(Error::io("cannot handle signals"))?;
    loop {
        let s = match client.status().await {
            Ok(s) => s,
            Err(rdask::ClientError::Disconnected) => {
                println!("the cluster has ended");
                return Ok(0);
            }
            Err(e) => return Err(Error::client(&state.name)(e)),
        };
        let mut out = String::from("\x1b[H\x1b[2J");
        out += &render_status(state, &s);
        if !s.jobs.is_empty() {
            out += "\nPROGRESS\n";
            for j in &s.jobs {
                out += &format!("{:<6} {:<16} {}\n", j.id.to_string(), j.name, bar(&j.counts, 40));
            }
        }
        out += "\n(Ctrl-C to stop watching; the cluster goes on)\n";
        print!("{out}");
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = int.recv() => return Ok(0),
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

/// `[#####.....]  50%  5/10 (1 failed)`.
fn bar(c: &rdask::protocol::Counts, width: usize) -> String {
    let done = c.finished + c.failed;
    let frac = if c.total == 0 { 1.0 } else { f64::from(done) / f64::from(c.total) };
    let full = (frac * width as f64).round() as usize;
    let failed = if c.failed > 0 { format!(" ({} failed)", c.failed) } else { String::new() };
    format!(
        "[{}{}] {:>3.0}%  {done}/{}{failed}",
        "#".repeat(full),
        ".".repeat(width - full.min(width)),
        frac * 100.0,
        c.total
    )
}

/// The allocation (batch job or local worker process) each worker runs in, by its launch tag.
fn allocation_of(s: &ClusterStatus) -> std::collections::HashMap<&str, (&str, &str)> {
    let mut out = std::collections::HashMap::new();
    for p in s.provisioning.iter().flat_map(|p| &p.pools) {
        for j in &p.jobs {
            out.insert(j.launch.as_str(), (j.id.as_str(), p.name.as_str()));
        }
    }
    out
}

/// `status --output json`: the scheduler's status, each worker with its `batch_job`, the
/// allocations of every pool as `batch_jobs`, and the main pool's adaptive state as `adaptive`.
pub(crate) fn status_json(s: &ClusterStatus) -> serde_json::Value {
    let by_launch = allocation_of(s);
    let workers: Vec<serde_json::Value> = s
        .workers
        .iter()
        .map(|w| {
            let mut v = serde_json::to_value(w).expect("serialisable");
            let job = w.info.launch.as_deref().and_then(|l| by_launch.get(l)).map(|(id, _)| *id);
            v["batch_job"] = serde_json::json!(job);
            v
        })
        .collect();
    let pools = s.provisioning.as_ref().map(|p| p.pools.as_slice()).unwrap_or_default();
    let batch_jobs: Vec<serde_json::Value> = pools
        .iter()
        .filter(|p| p.unit == "job")
        .flat_map(|p| {
            p.jobs.iter().filter(|j| !j.id.is_empty()).map(move |j| {
                serde_json::json!({
                    "id": j.id, "pool": p.name, "state": j.state, "launch": j.launch,
                    "workers": j.workers, "age_ms": j.age_ms, "note": j.note,
                })
            })
        })
        .collect();
    let adaptive = pools.first().and_then(|p| {
        let a = p.adapt.as_ref()?;
        let active = p.jobs.iter().filter(|j| j.state.is_active()).count();
        let pending = p.jobs.iter().filter(|j| j.state == rdask::protocol::AllocationState::Pending).count();
        Some(serde_json::json!({
            "spec": a.spec, "unit": p.unit, "target": a.target, "reason": a.reason, "paused": a.paused,
            "jobs": active, "pending": pending,
        }))
    });
    serde_json::json!({
        "workers": workers, "jobs": s.jobs, "batch_jobs": batch_jobs, "load": s.load, "adaptive": adaptive,
        "provisioning": s.provisioning,
    })
}

pub(crate) fn render_status(state: &StateDir, s: &ClusterStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "cluster `{}`: {} worker(s), {} job(s)", state.name, s.workers.len(), s.jobs.len());
    if let Some(url) = dashboard_url(state, s) {
        let _ = writeln!(out, "dashboard: {url}");
    }
    let pools = s.provisioning.as_ref().map(|p| p.pools.as_slice()).unwrap_or_default();
    for p in pools {
        let unit = if p.unit == "job" { "batch jobs" } else { "local workers" };
        let active = p.jobs.iter().filter(|j| j.state.is_active()).count();
        let pending = p.jobs.iter().filter(|j| j.state == rdask::protocol::AllocationState::Pending).count();
        let name = if pools.len() > 1 { format!(" (pool `{}`)", p.name) } else { String::new() };
        if let Some(a) = &p.adapt {
            let _ = writeln!(
                out,
                "adaptive{name}: {}..{} {unit}, target {} ({active} active, {pending} pending){}\n  why: {}",
                a.spec.min_jobs,
                a.spec.max_jobs,
                a.target,
                if a.paused { ", PAUSED" } else { "" },
                a.reason
            );
        }
        if let Some(e) = &p.error {
            let _ = writeln!(out, "error{name}: {e}");
        }
    }
    let by_launch = allocation_of(s);
    if !s.workers.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<6} {:<20} {:>8} {:>6} {:>9} {:>8}  batch job",
            "WORKER", "HOST", "PID", "SLOTS", "ASSIGNED", "HOLDING"
        );
        for w in &s.workers {
            let job = w.info.launch.as_deref().and_then(|l| by_launch.get(l)).map_or("-", |(id, _)| *id);
            let _ = writeln!(
                out,
                "{:<6} {:<20} {:>8} {:>6} {:>9} {:>8}  {}{}",
                w.id.to_string(),
                w.info.host,
                w.info.pid,
                w.info.slots,
                w.assigned,
                w.holding,
                job,
                if w.retiring { " (retiring)" } else { "" }
            );
        }
    }
    let batch: Vec<_> =
        pools.iter().filter(|p| p.unit == "job").flat_map(|p| p.jobs.iter().map(move |j| (p, j))).collect();
    if !batch.is_empty() {
        let _ = writeln!(out, "\n{:<12} {:<10} {:<10} WORKERS", "BATCH JOB", "POOL", "STATE");
        for (p, j) in batch {
            let workers: Vec<String> = j.workers.iter().map(|w| w.to_string()).collect();
            let id = if j.id.is_empty() { "(submitting)" } else { j.id.as_str() };
            let _ = writeln!(out, "{:<12} {:<10} {:<10} {}", id, p.name, j.state.to_string(), workers.join(" "));
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
        for j in s.jobs.iter().filter(|j| j.waiting_for.is_some()) {
            let _ = writeln!(out, "  job {} waits for {}", j.id, j.waiting_for.as_deref().unwrap_or_default());
        }
    }
    out
}
