//! The web dashboard, `/metrics` and the event log, on real local clusters: the page rendered
//! by a real headless Chromium, the token checked over raw HTTP, the metrics read by a real
//! Prometheus text parser. The same page on Slurm is in `batch.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::browser::{http, split_url, Browser};
use common::{dashboard_url, ok, rdask, status, text, Home};
use serde_json::{json, Value};

fn token_of(url: &str) -> String {
    url.split_once("?token=").unwrap_or_else(|| panic!("no token in {url}")).1.to_string()
}

/// What the page shows, read from its DOM.
const PAGE: &str = r#"return {
  marker: window.rdaskTestMarker || null,
  workers: [...document.querySelectorAll('tr.worker')].map(e => Number(e.dataset.worker)).sort((a, b) => a - b),
  pct: [...document.querySelectorAll('tr.job .pct')].map(e => e.textContent),
  failures: [...document.querySelectorAll('tr.failure pre.stderr')].map(e => e.textContent),
  stream: Number((document.querySelector('#stream canvas') || {dataset: {}}).dataset.tasks || 0),
};"#;

fn worker_ids(s: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = s["workers"].as_array().unwrap().iter().map(|w| w["id"].as_u64().unwrap()).collect();
    ids.sort();
    ids
}

#[test]
fn chromium_shows_every_worker_the_job_at_100_percent_its_failures_and_the_task_stream() {
    let Some(browser) = Browser::start() else { return };
    let home = Home::new();
    let h = home.path();
    let url = dashboard_url(&ok(h, &["up", "--workers", "3"]));
    let workers = worker_ids(&status(h));
    assert_eq!(workers.len(), 3);
    browser.open(&url);
    // The page stays open from here on: what it shows next was pushed to it, not reloaded
    // (a reload would lose this marker).
    browser.eval("window.rdaskTestMarker = 'opened before the job'; return null;");
    ok(
        h,
        &[
            "submit",
            "--array",
            "1-2000",
            "--stdout",
            "none",
            "--",
            "sh",
            "-c",
            "if [ $((RDASK_TASK_ID % 400)) -eq 0 ]; then echo \"boom in task $RDASK_TASK_ID\" >&2; exit 3; fi",
        ],
    );
    let waited = rdask(h, &["wait"]);
    assert_eq!(waited.status.code(), Some(1), "{}", text(&waited));
    let seen = browser.wait_for("the job at 100 % with its 5 failures", Duration::from_secs(60), PAGE, |v| {
        v["pct"] == json!(["100%"])
            && v["failures"].as_array().is_some_and(|f| f.len() == 5)
            && v["workers"] == json!(workers)
            && v["stream"].as_u64() > Some(0)
    });
    assert_eq!(seen["marker"], "opened before the job", "the page was reloaded: {seen:#}");
    for task in [400, 800, 1200, 1600, 2000] {
        let line = format!("boom in task {task}");
        assert!(
            seen["failures"].as_array().unwrap().iter().any(|f| f.as_str().unwrap().contains(&line)),
            "no failure shows `{line}`: {seen:#}"
        );
    }
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    browser.screenshot(&shot);
    eprintln!("screenshot: {}", shot.display());
    ok(h, &["down"]);
}

/// Takes the named cluster down when dropped (`Home` takes down only `default`).
struct Named<'a>(&'a Path, &'a str);

impl Drop for Named<'_> {
    fn drop(&mut self) {
        let _ = rdask(self.0, &["--name", self.1, "down"]);
    }
}

#[test]
fn the_dashboard_refuses_no_token_a_wrong_one_and_another_clusters() {
    let home = Home::new();
    let h = home.path();
    let ours = dashboard_url(&ok(h, &["up", "--workers", "1"]));
    let _other = Named(h, "other");
    let theirs = dashboard_url(&ok(h, &["--name", "other", "up", "--workers", "1"]));
    let (addr, _) = split_url(&ours);
    assert_ne!(addr, split_url(&theirs).0, "two clusters, one dashboard port");
    let (token, other_token) = (token_of(&ours), token_of(&theirs));
    assert_ne!(token, other_token);
    // The same length and alphabet as the right one, one character changed.
    let mut wrong = token.clone().into_bytes();
    wrong[7] = if wrong[7] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    for path in ["/", "/api/state", "/api/stream", "/metrics", "/no/such/page"] {
        let get =
            |query: &str, headers: &[(&str, &str)]| http(&addr, "GET", &format!("{path}{query}"), headers, None).0;
        assert_eq!(get("", &[]), 403, "{path} without a token");
        assert_eq!(get("?token=", &[]), 403, "{path} with an empty token");
        assert_eq!(get(&format!("?token={wrong}"), &[]), 403, "{path} with a wrong token");
        assert_eq!(get(&format!("?token={other_token}"), &[]), 403, "{path} with the other cluster's token");
        let bearer = format!("Bearer {other_token}");
        assert_eq!(get("", &[("Authorization", &bearer)]), 403, "{path} with the other cluster's bearer token");
    }
    let (code, page) = http(&addr, "GET", &format!("/?token={token}"), &[], None);
    assert_eq!(code, 200);
    assert!(page.contains("<title>rdask dashboard</title>"), "{page}");
    let bearer = format!("Bearer {token}");
    let (code, state) = http(&addr, "GET", "/api/state", &[("Authorization", &bearer)], None);
    assert_eq!(code, 200, "{state}");
    serde_json::from_str::<Value>(&state).expect("the view is JSON");
    // And the other cluster's dashboard takes its own token.
    let (other_addr, other_path) = split_url(&theirs);
    assert_eq!(http(&other_addr, "GET", &other_path, &[], None).0, 200);
    assert_eq!(http(&other_addr, "GET", &format!("/?token={token}"), &[], None).0, 403);
    ok(h, &["--name", "other", "down"]);
    ok(h, &["down"]);
}

fn number(v: &prometheus_parse::Value) -> f64 {
    use prometheus_parse::Value::*;
    match v {
        Counter(x) | Gauge(x) | Untyped(x) => *x,
        // A histogram's count: its +Inf bucket.
        Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
        other => panic!("not a number: {other:?}"),
    }
}

/// The sum of the samples of `name` whose labels include `with`.
fn total(scrape: &prometheus_parse::Scrape, name: &str, with: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && with.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| number(&s.value))
        .sum()
}

#[test]
fn metrics_parse_as_prometheus_text_and_count_what_status_counts() {
    let home = Home::new();
    let h = home.path();
    let url = dashboard_url(&ok(h, &["up", "--workers", "2"]));
    let (addr, _) = split_url(&url);
    let bearer = format!("Bearer {}", token_of(&url));
    ok(
        h,
        &[
            "submit",
            "--array",
            "1-300",
            "--stdout",
            "none",
            "--",
            "sh",
            "-c",
            "test $((RDASK_TASK_ID % 50)) -ne 0 || exit 9",
        ],
    );
    assert_eq!(rdask(h, &["wait"]).status.code(), Some(1));
    let s = status(h);
    let count =
        |what: &str| s["jobs"].as_array().unwrap().iter().map(|j| j["counts"][what].as_u64().unwrap()).sum::<u64>();
    let (finished, failed) = (count("finished"), count("failed"));
    assert_eq!((finished, failed), (294, 6), "{s:#}");
    // The dashboard's collector asks the scheduler twice a second: wait for it to catch up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let scrape = loop {
        let (code, body) = http(&addr, "GET", "/metrics", &[("Authorization", &bearer)], None);
        assert!(code == 200 || code == 503, "{code}: {body}");
        let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
            .unwrap_or_else(|e| panic!("/metrics is not Prometheus text: {e}\n{body}"));
        let ended = |outcome| total(&scrape, "rdask_tasks_ended_total", &[("outcome", outcome)]);
        if code == 200 && ended("finished") == finished as f64 && ended("failed") == failed as f64 {
            break scrape;
        }
        assert!(Instant::now() < deadline, "/metrics never counted {finished} finished and {failed} failed:\n{body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(total(&scrape, "rdask_workers", &[]), 2.0);
    assert_eq!(total(&scrape, "rdask_slots", &[("state", "total")]), 2.0);
    assert_eq!(total(&scrape, "rdask_batch_jobs", &[("pool", "default"), ("state", "running")]), 2.0);
    // Every finished task is in its kind's duration histogram, whose last bucket is +Inf.
    let histogram = scrape.samples.iter().find(|s| s.metric == "rdask_task_duration_seconds").expect("a histogram");
    let prometheus_parse::Value::Histogram(buckets) = &histogram.value else { panic!("{histogram:?}") };
    assert_eq!(buckets.last().map(|b| b.less_than), Some(f64::INFINITY), "{buckets:?}");
    assert_eq!(total(&scrape, "rdask_task_duration_seconds", &[("kind", "command:sh")]), finished as f64);
    ok(h, &["down"]);
}

#[test]
fn events_follow_shows_workers_joining_tasks_failing_and_a_worker_process_ending_in_order() {
    let home = Home::new();
    let h = home.path();
    ok(h, &["up", "--workers", "2"]);
    let mut events = common::Follower::start(h);
    ok(h, &["submit", "--array", "1-20", "--stdout", "none", "--", "sh", "-c", "test $RDASK_TASK_ID -ne 13 || exit 4"]);
    let failed = events.until("task 13 failing", |e| e["event"] == "task_failed");
    assert_eq!(events.seen[failed]["task"], 13, "{:#?}", events.seen);
    let done = events.until("the job finishing", |e| e["event"] == "job_finished");
    assert_eq!((events.seen[done]["finished"].as_u64(), events.seen[done]["failed"].as_u64()), (Some(19), Some(1)));
    // One of the two local worker processes (the local backend's allocations) ends.
    ok(h, &["scale", "1", "--wait"]);
    let ended = events.until("an allocation ending", |e| {
        e["event"] == "allocation" && e["state"] != "running" && e["state"] != "pending"
    });
    let joined = events.first("worker_joined");
    assert_eq!(events.seen.iter().filter(|e| e["event"] == "worker_joined").count(), 2, "{:#?}", events.seen);
    assert!(joined < events.first("job_submitted") && events.first("job_submitted") < failed);
    assert!(failed < done && done < ended, "{:#?}", events.seen);
    let seqs: Vec<u64> = events.seen.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "not in order: {seqs:?}");
    ok(h, &["down"]);
}
