//! The web dashboard and `/metrics`, served by the scheduler process (axum, on its runtime).
//!
//! The dashboard is a client of the scheduler like any other: a collector task asks it, once a
//! second, for its status, its new events and its counters (typed requests; it can change
//! nothing), folds them into one view, and pushes that view to every open page as a
//! server-sent event. Every route needs the cluster's dashboard token
//! ([`rdask::Secret::derive_token`] of [`TOKEN_PURPOSE`]), in the URL (`?token=`) or as
//! `Authorization: Bearer`; without it, or with another cluster's: 403. The page and its script
//! are embedded in the binary (no build step).

mod metrics;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rdask::cluster::ClusterInfo;
use rdask::protocol::{ClusterEvent, ClusterStatus, EventKind, JobId, Metrics, TaskRecord, WorkerId};
use rdask::{Client, Secret};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// What the dashboard's token is derived for.
pub const TOKEN_PURPOSE: &str = "dashboard";
/// Ports tried after the asked one when it is taken.
const PORT_TRIES: u16 = 50;
/// How often the collector asks the scheduler.
const POLL: Duration = Duration::from_secs(1);
const EVENTS_SHOWN: usize = 300;
const FAILURES_SHOWN: usize = 200;
const TASKS_SHOWN: usize = 1000;
const DONE_JOBS_SHOWN: usize = 200;

/// The URL of the dashboard at `address` (`http://host:port/`) for the cluster of `secret`.
pub fn url(address: &str, secret: &Secret) -> String {
    format!("{address}?token={}", secret.derive_token(TOKEN_PURPOSE))
}

/// Binds `bind` (`HOST:PORT`; the next free port if taken) and serves the dashboard of the
/// cluster `info` until `cancel`. Returns the address bound.
pub async fn start(bind: &str, info: ClusterInfo, cancel: CancellationToken) -> Result<SocketAddr> {
    let (host, port) = bind.rsplit_once(':').ok_or_else(|| {
        Error::Usage(format!("--dashboard-address `{bind}` is not HOST:PORT (for example 0.0.0.0:8787)"))
    })?;
    let port: u16 = port
        .parse()
        .map_err(|_| Error::Usage(format!("--dashboard-address `{bind}`: `{port}` is not a port number")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut last = None;
    let mut listener = None;
    for p in (0..if port == 0 { 1 } else { PORT_TRIES }).filter_map(|i| port.checked_add(i)) {
        match tokio::net::TcpListener::bind((host, p)).await {
            Ok(l) => {
                listener = Some(l);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let listener = listener.ok_or_else(|| Error::Io {
        what: format!(
            "cannot listen for the dashboard on {host}:{port} or the {PORT_TRIES} ports after it \
             (choose another with --dashboard-address, or turn it off with --no-dashboard)"
        ),
        source: last.unwrap_or_else(|| std::io::Error::other("no port to try")),
    })?;
    let local = listener.local_addr().map_err(Error::io("cannot read the dashboard's address"))?;
    let (view_tx, view_rx) = watch::channel(Arc::new(String::from("{}")));
    let shared = Shared { secret: info.secret.clone(), view: view_rx, latest: Arc::default() };
    tokio::spawn(cancel.clone().run_until_cancelled_owned(collect(info, view_tx, shared.latest.clone())));
    let app = Router::new()
        .route("/", get(index))
        .route("/api/state", get(state))
        .route("/api/stream", get(stream))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(shared.clone(), authorize))
        .with_state(shared);
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned());
        if let Err(e) = served.await {
            tracing::warn!("the dashboard stopped: {e}");
        }
    });
    Ok(local)
}

#[derive(Clone)]
struct Shared {
    secret: Secret,
    view: watch::Receiver<Arc<String>>,
    latest: Arc<Mutex<Option<Latest>>>,
}

/// What `/metrics` is rendered from.
#[derive(Clone)]
struct Latest {
    status: ClusterStatus,
    metrics: Metrics,
    latency: Duration,
}

async fn authorize(
    State(s): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
    next: Next,
) -> Response {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let given = q.get("token").cloned().or(bearer);
    match given {
        Some(t) if s.secret.check_token(TOKEN_PURPOSE, &t) => next.run(req).await,
        _ => (
            StatusCode::FORBIDDEN,
            "403: this dashboard needs its token: open the URL that `rdask-jobqueue status` prints\n",
        )
            .into_response(),
    }
}

/// The page with its script inline: one request, made with the token, loads everything.
fn page() -> &'static str {
    static PAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PAGE.get_or_init(|| {
        include_str!("index.html")
            .replace("<script src=\"app.js\"></script>", &format!("<script>\n{}</script>", include_str!("app.js")))
    })
}

async fn index() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page())
}

async fn state(State(s): State<Shared>) -> impl IntoResponse {
    let body = s.view.borrow().to_string();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

async fn stream(
    State(s): State<Shared>,
) -> Sse<impl futures_util::Stream<Item = std::result::Result<Event, Infallible>>> {
    let mut rx = s.view.clone();
    rx.mark_changed();
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let data = rx.borrow_and_update().to_string();
        Some((Ok(Event::default().event("view").data(data)), rx))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

async fn metrics(State(s): State<Shared>) -> Response {
    let latest = s.latest.lock().expect("metrics lock").clone();
    match latest {
        None => {
            (StatusCode::SERVICE_UNAVAILABLE, "the dashboard has not heard from the scheduler yet\n").into_response()
        }
        Some(l) => match metrics::render(&l.status, &l.metrics, l.latency) {
            Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the metrics: {e}\n")).into_response(),
        },
    }
}

/// The page's model, pushed whole (it is small: bounded lists).
#[derive(Serialize, Default)]
struct View {
    status: Option<ClusterStatus>,
    now_ms: u64,
    /// Newest last.
    events: VecDeque<ClusterEvent>,
    missed_events: u64,
    failures: VecDeque<Failure>,
    /// Jobs as the events tell them (they outlive their release by the scheduler).
    jobs: BTreeMap<JobId, JobSummary>,
    tasks: VecDeque<TaskRecord>,
    /// Per kind: finished and failed so far.
    kinds: Vec<(String, u64, u64)>,
    /// Bytes per second moved between workers, over the last poll.
    bytes_per_s: f64,
    fetched_bytes: u64,
    /// Per worker: CPU use of its process over the last poll, in percent of one core.
    cpu: HashMap<WorkerId, f64>,
    /// The scheduler's answer time to the last status request, in microseconds.
    latency_us: u64,
}

#[derive(Serialize)]
struct Failure {
    job: JobId,
    task: u32,
    worker: Option<WorkerId>,
    error: String,
    at_ms: u64,
}

#[derive(Serialize, Default)]
struct JobSummary {
    name: String,
    tasks: u32,
    finished: u32,
    failed: u32,
    done: bool,
}

async fn collect(info: ClusterInfo, out: watch::Sender<Arc<String>>, latest: Arc<Mutex<Option<Latest>>>) {
    let client = loop {
        match Client::connect(&info).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::debug!("the dashboard cannot reach the scheduler yet: {e}");
                tokio::time::sleep(POLL).await;
            }
        }
    };
    let mut view = View::default();
    let (mut after, mut tasks_after) = (0u64, 0u64);
    let mut last: Option<(Instant, u64, HashMap<WorkerId, u64>)> = None;
    loop {
        let asked = Instant::now();
        let status = match client.status().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("the dashboard lost the scheduler: {e}");
                return;
            }
        };
        let latency = asked.elapsed();
        let (Ok(page), Ok(m)) = (client.events(after).await, client.metrics(tasks_after).await) else { return };
        view.now_ms = m.now_ms;
        view.missed_events += page.missed;
        for e in page.events {
            after = e.seq;
            fold_event(&mut view, &e);
            view.events.push_back(e);
        }
        trim(&mut view.events, EVENTS_SHOWN);
        if let Some(t) = m.tasks.last() {
            tasks_after = t.seq;
        }
        view.tasks.extend(m.tasks.iter().cloned());
        trim(&mut view.tasks, TASKS_SHOWN);
        view.kinds = m.kinds.iter().map(|k| (k.kind.clone(), k.finished, k.failed)).collect();
        for j in &status.jobs {
            let s = view.jobs.entry(j.id).or_default();
            (s.name, s.tasks, s.finished, s.failed) =
                (j.name.clone(), j.counts.total, j.counts.finished, j.counts.failed);
        }
        let now = Instant::now();
        let cpu_now: HashMap<WorkerId, u64> = status.workers.iter().map(|w| (w.id, w.load.cpu_ms)).collect();
        if let Some((then, bytes, cpu_then)) = &last {
            let secs = now.duration_since(*then).as_secs_f64().max(1e-3);
            view.bytes_per_s = m.fetched_bytes.saturating_sub(*bytes) as f64 / secs;
            view.cpu = cpu_now
                .iter()
                .filter_map(|(w, c)| cpu_then.get(w).map(|b| (*w, c.saturating_sub(*b) as f64 / 10.0 / secs)))
                .collect();
        }
        last = Some((now, m.fetched_bytes, cpu_now));
        view.fetched_bytes = m.fetched_bytes;
        view.latency_us = latency.as_micros() as u64;
        view.status = Some(status.clone());
        match serde_json::to_string(&view) {
            Ok(json) => {
                out.send_replace(Arc::new(json));
            }
            Err(e) => tracing::warn!("cannot encode the dashboard's view: {e}"),
        }
        *latest.lock().expect("metrics lock") =
            Some(Latest { status, metrics: Metrics { tasks: Vec::new(), ..m }, latency });
        tokio::time::sleep(POLL).await;
    }
}

fn fold_event(view: &mut View, e: &ClusterEvent) {
    match &e.what {
        EventKind::JobSubmitted { job, name, tasks } => {
            let s = view.jobs.entry(*job).or_default();
            (s.name, s.tasks) = (name.clone(), *tasks);
            while view.jobs.len() > DONE_JOBS_SHOWN {
                let Some(oldest) = view.jobs.iter().find(|(_, j)| j.done).map(|(id, _)| *id) else { break };
                view.jobs.remove(&oldest);
            }
        }
        EventKind::JobFinished { job, name, finished, failed } => {
            let s = view.jobs.entry(*job).or_default();
            s.name = name.clone();
            (s.finished, s.failed, s.done) = (*finished, *failed, true);
            s.tasks = s.tasks.max(finished + failed);
        }
        EventKind::TaskFailed { job, task, worker, error } => {
            view.failures.push_back(Failure {
                job: *job,
                task: *task,
                worker: *worker,
                error: error.to_string(),
                at_ms: e.at_ms,
            });
            trim(&mut view.failures, FAILURES_SHOWN);
        }
        _ => {}
    }
}

fn trim<T>(v: &mut VecDeque<T>, keep: usize) {
    while v.len() > keep {
        v.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::page;

    #[test]
    fn the_page_carries_its_script_so_no_request_goes_without_the_token() {
        assert!(!page().contains("src=\"app.js\""), "the page still loads its script by URL");
        assert!(page().contains("new EventSource(\"api/stream?token=\""));
    }
}
