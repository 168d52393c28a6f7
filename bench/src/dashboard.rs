//! `dashboard`: trivial-task throughput while the dashboard is open in a headless Chromium and
//! `/metrics` is scraped every second, against the same cluster with no dashboard, in
//! alternating rounds (so that drift of the machine falls on both sides alike).
//!
//! `RDASK_BENCH_DASHBOARD=nobrowser` (no browser) or `=blank` (the browser on an empty page)
//! tell the server's share of the cost from the page's.
//!
//! The dashboard is the one the scheduler process of `rdask-jobqueue` serves
//! (`rdask_jobqueue::dashboard::start`), here pointed at the bench's local cluster.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdask::process::{terminate, Target, GRACE};
use rdask::{Client, ClusterInfo, LocalCluster};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::{inc_round, median, R};

const CHROMIUM: &str = "/usr/bin/chromium";

/// A dashboard, a browser showing it, and a scraper of its `/metrics`, until `stop`.
struct Watching {
    cancel: CancellationToken,
    browser: Child,
    scraper: tokio::task::JoinHandle<(u32, u32)>,
    _profile: tempfile::TempDir,
}

impl Watching {
    async fn start(info: &ClusterInfo) -> R<Watching> {
        let cancel = CancellationToken::new();
        let addr = rdask_jobqueue::dashboard::start("127.0.0.1:0", info.clone(), cancel.clone()).await?;
        let url = rdask_jobqueue::dashboard::url(&format!("http://{addr}/"), &info.secret);
        let profile = tempfile::Builder::new().prefix("rdask-bench-chromium-").tempdir()?;
        // RDASK_BENCH_DASHBOARD=nobrowser measures the server side alone (a diagnosis).
        let program =
            if std::env::var("RDASK_BENCH_DASHBOARD").as_deref() == Ok("nobrowser") { "true" } else { CHROMIUM };
        let browser = Command::new(program)
            .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
            .args(["--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic"])
            .arg("--remote-debugging-port=0") // keeps a headless browser open on its page
            .arg(format!("--user-data-dir={}", profile.path().display()))
            // RDASK_BENCH_DASHBOARD=blank: the browser without the page (a diagnosis).
            .arg(if std::env::var("RDASK_BENCH_DASHBOARD").as_deref() == Ok("blank") { "about:blank" } else { &url })
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let token = url.split_once("?token=").map(|(_, t)| t.to_string()).unwrap_or_default();
        let stop = cancel.clone();
        let scraper = tokio::spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            // Until the collector's first poll, /metrics answers 503: not a failure to count.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            while !stop.is_cancelled() {
                match scrape(&addr.to_string(), &token).await {
                    Ok(true) => ok += 1,
                    _ => failed += 1,
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            (ok, failed)
        });
        Ok(Watching { cancel, browser, scraper, _profile: profile })
    }

    /// Ends all three; the scrapes that succeeded and failed, and whether the browser was still up.
    async fn stop(mut self) -> (u32, u32, bool) {
        let browsing = self.browser.try_wait().ok().flatten().is_none();
        self.cancel.cancel();
        let (ok, failed) = (&mut self.scraper).await.unwrap_or((0, 0));
        terminate(Target::Group(self.browser.id()), GRACE);
        let _ = self.browser.wait();
        (ok, failed, browsing)
    }
}

/// One `GET /metrics`; whether it answered 200 with rdask's counters.
async fn scrape(addr: &str, token: &str) -> R<bool> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req =
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out);
    Ok(text.starts_with("HTTP/1.1 200") && text.contains("rdask_tasks_ended"))
}

/// Tasks per second over rounds of `n` tasks run back to back for at least `window`: long
/// enough to take in several of the dashboard's pushes (one a second), so that a sample does
/// not fall by chance between two of them.
async fn rate(client: &Client, n: usize, window: Duration) -> R<f64> {
    let (mut tasks, mut secs) = (0usize, 0.0);
    while secs < window.as_secs_f64() {
        let [build, submit, gather] = inc_round(client, n).await?;
        (tasks, secs) = (tasks + n, secs + build + submit + gather);
    }
    Ok(tasks as f64 / secs)
}

/// CPU seconds used so far by the live processes of process group `pgid` (Linux `/proc`).
fn group_cpu_secs(pgid: u32) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    let mut ticks = 0u64;
    for e in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // After the command's closing parenthesis: state ppid pgrp ... utime(14) stime(15).
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) {
            ticks += f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    ticks as f64 / 100.0 // USER_HZ is 100 on Linux
}

pub async fn bench(quick: bool) -> R<Value> {
    if !Path::new(CHROMIUM).exists() {
        return Ok(json!({ "skipped": "no /usr/bin/chromium (ci/setup-chromium.sh installs it)" }));
    }
    let (n, pairs, window) =
        if quick { (50_000, 3, Duration::from_secs(3)) } else { (100_000, 5, Duration::from_secs(5)) };
    let cluster = LocalCluster::start(2, 1).await?;
    let res: R<Value> = async {
        let client = cluster.client(2).await?;
        inc_round(&client, 1_000).await?;
        let (mut off, mut on) = (Vec::new(), Vec::new());
        let (mut scrapes, mut failed_scrapes, mut browsing) = (0, 0, true);
        let (mut browser_cpu, mut on_secs) = (0.0, 0.0);
        let started = Instant::now();
        for _ in 0..pairs {
            off.push(rate(&client, n, window).await?);
            let w = Watching::start(cluster.info()).await?;
            // The browser started, loaded the page and opened its stream: its start-up is not measured.
            tokio::time::sleep(Duration::from_secs(8)).await;
            let (cpu0, t0) = (group_cpu_secs(w.browser.id()), Instant::now());
            on.push(rate(&client, n, window).await?);
            (browser_cpu, on_secs) =
                (browser_cpu + group_cpu_secs(w.browser.id()) - cpu0, on_secs + t0.elapsed().as_secs_f64());
            let (ok, failed, up) = w.stop().await;
            (scrapes, failed_scrapes, browsing) = (scrapes + ok, failed_scrapes + failed, browsing && up);
        }
        let (off_m, on_m) = (median(&mut off.clone()), median(&mut on.clone()));
        eprintln!(
            "   {n} tasks: {off_m:.0}/s without, {on_m:.0}/s with the dashboard open and scraped ({:+.1}%)",
            (on_m / off_m - 1.0) * 100.0
        );
        eprintln!("   the browser used {:.1}% of one core while the work ran", 100.0 * browser_cpu / on_secs.max(1e-9));
        Ok(json!({
            "tasks": n, "pairs": pairs, "workers": 2, "slots_per_worker": 1,
            "off_tasks_per_s": off, "on_tasks_per_s": on,
            "off_median": off_m, "on_median": on_m, "ratio": on_m / off_m,
            "scrapes_ok": scrapes, "scrapes_failed": failed_scrapes, "browser_stayed_up": browsing,
            "seconds": started.elapsed().as_secs_f64(),
            "window_s": window.as_secs_f64(),
            "browser_cpu_share_of_one_core": browser_cpu / on_secs.max(1e-9),
            "method": "alternating samples, each rounds of the trivial benchmark run back to back for window_s; 'on' = dashboard served (collector polling once a second), a headless Chromium showing it (SSE) for 8 s before the sample, /metrics scraped every second",
        }))
    }
    .await;
    cluster.shutdown().await;
    res
}
