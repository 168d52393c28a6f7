//! `events`: the cluster's event log, as text or JSON lines, once or `--follow`ing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdask::protocol::{ClusterEvent, EventKind};

use crate::cli::{EventsArgs, OutputMode};
use crate::connect;
use crate::error::{Error, Result};
use crate::state::StateDir;

/// How often `--follow` asks for new events.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

pub(crate) async fn events(state: &StateDir, a: EventsArgs) -> Result<i32> {
    let client = connect(state).await?;
    let mut after = 0;
    loop {
        let page = match client.events(after).await {
            Ok(p) => p,
            Err(rdask::ClientError::Disconnected) if a.follow && after > 0 => return Ok(0),
            Err(e) => return Err(Error::client(&state.name)(e)),
        };
        if page.missed > 0 {
            eprintln!("({} older event(s) are no longer kept by the scheduler)", page.missed);
        }
        // The scheduler dates events on its own clock; now_ms is that clock now.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        for e in &page.events {
            let at = now - (page.now_ms.saturating_sub(e.at_ms)) as f64 / 1000.0;
            match a.output {
                OutputMode::Json => println!("{}", json_line(e, at)),
                OutputMode::Text => println!("{:>6}  {:>9.3}s  {}", e.seq, e.at_ms as f64 / 1000.0, text(&e.what)),
            }
            after = e.seq;
        }
        if !a.follow {
            return Ok(0);
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

/// `{"seq": 3, "at": 1765000000.123, "event": "worker_joined", "worker": 1, ...}`.
fn json_line(e: &ClusterEvent, at: f64) -> String {
    let mut out = serde_json::json!({ "seq": e.seq, "at": (at * 1000.0).round() / 1000.0, "at_ms": e.at_ms });
    // The event is externally tagged (`{"worker_joined": {...}}`): its tag becomes `event`.
    if let serde_json::Value::Object(m) = serde_json::to_value(&e.what).expect("serialisable") {
        for (tag, fields) in m {
            out["event"] = tag.into();
            if let serde_json::Value::Object(f) = fields {
                for (k, v) in f {
                    out[k] = v;
                }
            }
        }
    }
    out.to_string()
}

fn text(k: &EventKind) -> String {
    match k {
        EventKind::JobSubmitted { job, name, tasks } => format!("job {job} `{name}` submitted ({tasks} tasks)"),
        EventKind::JobFinished { job, name, finished, failed } => {
            format!("job {job} `{name}` finished: {finished} finished, {failed} failed")
        }
        EventKind::TaskFailed { job, task, worker, error } => {
            let on = worker.map(|w| format!(" on worker {w}")).unwrap_or_default();
            format!("job {job} task {task} failed{on}: {error}")
        }
        EventKind::WorkerJoined { worker, host, slots, launch } => {
            let tag = launch.as_deref().map(|l| format!(", launch {l}")).unwrap_or_default();
            format!("worker {worker} joined from {host} ({slots} slots{tag})")
        }
        EventKind::WorkerRetiring { worker, reason } => format!("worker {worker} retiring: {reason}"),
        EventKind::WorkerLeft { worker, reason } => format!("worker {worker} left: {reason}"),
        EventKind::Allocation { pool, id, state, note } => {
            let why = note.as_deref().map(|n| format!(": {n}")).unwrap_or_default();
            format!("pool `{pool}`: job {id} {state}{why}")
        }
        EventKind::Adapt { pool, target, reason } => format!("pool `{pool}`: adaptive target {target}: {reason}"),
        EventKind::BatchError { pool, message } => format!("pool `{pool}`: {message}"),
    }
}
