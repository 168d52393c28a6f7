//! `fleet`: one scheduler (in this process), hundreds of real worker processes of one slot
//! each: time until all are registered, the scheduler's CPU at rest (heartbeats only), one
//! large command array across all of them, the peak descriptor count, and that no process is
//! left after shutdown.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdask::{Client, LocalCluster};
use serde_json::{json, Value};

use crate::{true_command, R};

/// Workers and tasks: `RDASK_FLEET_WORKERS` / `RDASK_FLEET_TASKS` override the defaults.
fn sizes(quick: bool) -> (usize, u32) {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let workers = env("RDASK_FLEET_WORKERS").map_or(if quick { 100 } else { 500 }, |v| v as usize);
    let tasks = env("RDASK_FLEET_TASKS").map_or(if quick { 20_000 } else { 100_000 }, |v| v as u32);
    (workers, tasks)
}

/// The scheduler's seconds at rest are measured over this window.
const REST: Duration = Duration::from_secs(10);

/// utime + stime of this process, in seconds (`/proc/self/stat` fields 14 and 15).
fn cpu_seconds() -> R<f64> {
    stat_cpu_seconds("/proc/self/stat")
}

/// utime + stime of each thread of this process, in seconds, by thread name (summed).
fn cpu_by_thread() -> std::collections::BTreeMap<String, f64> {
    let mut by = std::collections::BTreeMap::new();
    for t in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim().to_string();
        if let Ok(s) = stat_cpu_seconds(&t.path().join("stat").to_string_lossy()) {
            *by.entry(name).or_insert(0.0) += s;
        }
    }
    by
}

fn stat_cpu_seconds(path: &str) -> R<f64> {
    let stat = std::fs::read_to_string(path)?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').ok_or("unreadable /proc/self/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // USER_HZ: 100 on every Linux this runs on (the kernel's ABI constant for /proc).
    Ok(ticks as f64 / 100.0)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn vm_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok()).unwrap_or(0)
}

/// Samples this process's descriptor count every 20 ms until dropped; keeps the peak. Paused
/// (`pause`) while the scheduler's CPU at rest is measured: reading /proc costs CPU too.
struct FdPeak {
    peak: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FdPeak {
    fn start() -> FdPeak {
        let (peak, stop) = (Arc::new(AtomicUsize::new(open_fds())), Arc::new(AtomicBool::new(false)));
        let paused = Arc::new(AtomicBool::new(false));
        let (p, s, z) = (peak.clone(), stop.clone(), paused.clone());
        let thread = std::thread::Builder::new()
            .name("fd-sampler".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    if !z.load(Ordering::Relaxed) {
                        p.fetch_max(open_fds(), Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
            .expect("a thread");
        FdPeak { peak, stop, paused, thread: Some(thread) }
    }

    fn pause(&self, paused: bool) {
        if !paused {
            self.peak.fetch_max(open_fds(), Ordering::Relaxed);
        }
        self.paused.store(paused, Ordering::Relaxed);
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for FdPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn wait_registered(client: &Client, n: usize, limit: Duration) -> R<()> {
    let deadline = Instant::now() + limit;
    loop {
        let have = client.status().await?.workers.len();
        if have >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{have} of {n} workers registered within {} s", limit.as_secs()).into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) async fn bench(quick: bool) -> R<Value> {
    let (n, tasks) = sizes(quick);
    let limit = rdask::limits::raise()?;
    let fds_before = open_fds();
    let fds = FdPeak::start();
    let mut cluster = LocalCluster::start(0, 1).await?;
    let fds = &fds;
    let res: R<Value> = async {
        let client = Client::connect(cluster.info()).await?;
        let t = Instant::now();
        for _ in 0..n {
            cluster.add_worker(1)?;
        }
        let spawn_s = t.elapsed().as_secs_f64();
        wait_registered(&client, n, Duration::from_secs(600)).await?;
        let register_s = t.elapsed().as_secs_f64();
        eprintln!("   {n} workers: spawned in {spawn_s:.2} s, all registered after {register_s:.2} s");
        // Rest: nothing but heartbeats and the acks and paces they ask for, at the interval the
        // scheduler sets for n workers (bounded by the workers' death timeout). Let the last registrations' bursts pass first, and
        // the first workers' next heartbeats, which bring them the interval of all n.
        let told = rdask::scheduler::heartbeat_interval(rdask::scheduler::Config::default().heartbeat_interval, n);
        let interval = rdask::worker::kept_interval(told, rdask::local::WORKER_DEATH_TIMEOUT);
        tokio::time::sleep(Duration::from_secs(2).max(interval + Duration::from_secs(1))).await;
        fds.pause(true);
        let (t0, c0, w0) = (cpu_by_thread(), cpu_seconds()?, Instant::now());
        tokio::time::sleep(REST).await;
        let (cpu, wall) = (cpu_seconds()? - c0, w0.elapsed().as_secs_f64());
        let by_thread: serde_json::Map<String, Value> = cpu_by_thread()
            .into_iter()
            .map(|(k, v)| {
                let d = v - t0.get(&k).copied().unwrap_or(0.0);
                (k, json!(d))
            })
            .filter(|(_, v)| v.as_f64().is_some_and(|d| d > 0.0))
            .collect();
        fds.pause(false);
        let rest_pct = cpu / wall * 100.0;
        let heartbeats = n as f64 * wall / interval.as_secs_f64(); // one per worker per interval
        eprintln!(
            "   at rest: {rest_pct:.2}% of a core over {wall:.1} s ({:.1} us per heartbeat); by thread: {by_thread:?}",
            cpu * 1e6 / heartbeats
        );
        let scheduler_rss_kib = vm_rss_kib(std::process::id());
        let workers_rss_kib: u64 = cluster.worker_pids().iter().map(|&p| vm_rss_kib(p)).sum();
        let t = Instant::now();
        let job = client.submit_array("fleet", true_command(), vec![(1, tasks)], 1).await?;
        let out = client.wait(job).await?;
        let array_s = t.elapsed().as_secs_f64();
        if out.finished != tasks || !out.failed.is_empty() {
            return Err(format!("array of {tasks}: {} finished, {} failed", out.finished, out.failed.len()).into());
        }
        let status = client.status().await?;
        let used = status.workers.iter().filter(|w| w.finished > 0).count();
        let rate = f64::from(tasks) / array_s;
        eprintln!("   {tasks} /bin/true across {n} workers: {array_s:.2} s, {rate:.0}/s, {used} workers ran some");
        client.release(job).await?;
        Ok(json!({
            "workers": n, "slots_per_worker": 1, "tasks": tasks,
            "spawn_s": spawn_s, "register_all_s": register_s,
            "rest_window_s": wall, "rest_cpu_s": cpu, "rest_cpu_percent_of_core": rest_pct, "target_rest_cpu_percent": 2.0,
            "rest_us_per_heartbeat": cpu * 1e6 / heartbeats, "heartbeat_interval_s": interval.as_secs_f64(), "rest_cpu_s_by_thread": by_thread,
            "array_s": array_s, "array_tasks_per_s": rate, "workers_that_ran_tasks": used,
            "scheduler_rss_kib": scheduler_rss_kib, "workers_rss_kib_total": workers_rss_kib,
            "workers_rss_kib_each": workers_rss_kib as f64 / n as f64,
            "nofile_soft": limit.soft, "nofile_hard": limit.hard, "fds_before": fds_before,
        }))
    }
    .await;
    let pids = cluster.worker_pids();
    cluster.shutdown().await; // ends every worker by pid (SIGTERM, grace, SIGKILL) and reaps it
    let left = pids.iter().filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists()).count();
    let peak = fds.peak();
    let mut v = res?;
    v["peak_fds"] = json!(peak);
    v["processes_left_after_shutdown"] = json!(left);
    v["method"] = json!("LocalCluster (scheduler in this process) + N add_worker (fork+exec of this binary, RDASK_SLOTS=1); register_all_s: first spawn until status() lists N; rest: utime+stime of this process (/proc/self/stat, 10 ms ticks) over 10 s with only heartbeats flowing (one per worker per heartbeat_interval_s: the interval the scheduler tells n workers, at most a quarter of the local workers' death timeout), max(2 s, interval + 1 s) after the last registration; array: submit_array(/bin/true, no output) to wait(); peak_fds: /proc/self/fd sampled every 20 ms from before the scheduler starts to after shutdown; processes_left: worker pids with a /proc entry after shutdown");
    if left > 0 {
        return Err(format!("{left} worker processes left after shutdown").into());
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("fleet.json"), serde_json::to_string_pretty(&v)?)?;
    Ok(v)
}
