//! Adaptive scaling on the real Slurm that `ci/setup-slurm.sh` starts: the cluster follows the
//! work job by job, never kills a busy worker, replaces jobs before their walltime, and backs
//! off from a batch system that refuses its jobs.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{active_in, available, batch_ids, no_process_left, ok, rdask, status, text};
use rdask_jobqueue::adapt::AdaptSpec;
use serde_json::Value;

/// The cluster's batch jobs that are pending or running.
fn active_jobs(s: &Value) -> Vec<String> {
    s["batch_jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["state"] == "pending" || j["state"] == "running")
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

/// Samples `status` every 200 ms in the background until the returned flag is set.
fn sample(home: &Path) -> (Arc<AtomicBool>, std::thread::JoinHandle<Vec<(Duration, Value)>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (h, flag) = (home.to_path_buf(), stop.clone());
    let t = std::thread::spawn(move || {
        let start = Instant::now();
        let mut seen = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            let o = rdask(&h, &["status", "--output", "json"]);
            if let Ok(v) = serde_json::from_slice::<Value>(&o.stdout) {
                seen.push((start.elapsed(), v));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        seen
    });
    (stop, t)
}

/// Waits (up to `secs`) until the cluster has no active job and no worker.
fn wait_back_to_zero(home: &Path, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = status(home);
        if active_jobs(&s).is_empty() && s["workers"].as_array().unwrap().is_empty() {
            return s;
        }
        assert!(Instant::now() < deadline, "not back to 0 jobs within {secs} s:\n{s:#}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits (up to a minute) until `status` says adapting paused; returns what it says.
fn wait_paused(home: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = ok(home, &["status"]);
        if text.contains("PAUSED") {
            return text;
        }
        assert!(Instant::now() < deadline, "adapting never paused:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn up_adaptive(home: &Path, extra: &[&str]) {
    let mut args = vec![
        "up",
        "--backend",
        "slurm",
        "--cores",
        "1",
        "--memory",
        "100MB",
        "--adapt-max",
        "4",
        "--poll-interval",
        "0.5",
    ];
    args.extend_from_slice(extra);
    let up = ok(home, &args);
    assert!(up.contains("0 workers"), "an adaptive cluster with --adapt-min 0 starts empty: {up}");
}

#[test]
fn adapt_follows_a_burst_of_work_and_gives_every_job_back() {
    if !available("/usr/bin/sbatch", "ci/setup-slurm.sh") {
        return;
    }
    let home = common::Home::new();
    let h = home.path();
    up_adaptive(h, &["--walltime", "10"]);
    let said = ok(h, &["adapt", "--min", "0", "--max", "4", "--interval", "0.5"]);
    assert!(said.contains("between 0 and 4 job(s) of 1 worker(s) × 1 slot(s)"), "{said}");
    let (stop, sampler) = sample(h);
    let out = h.join("out");
    let stdout = format!("{}/%{{TASK_ID}}", out.display());
    let cmd = ["submit", "--array", "1-2000", "--stdout", &stdout, "--stderr", "none", "--"];
    ok(h, &[&cmd[..], &["sh", "-c", "sleep 0.02; echo $((RDASK_TASK_ID * 3))"]].concat());
    let waited = ok(h, &["wait"]);
    assert!(waited.contains("2000 of 2000 tasks finished, 0 failed"), "{waited}");
    for i in [1, 777, 2000] {
        assert_eq!(std::fs::read_to_string(out.join(i.to_string())).unwrap(), format!("{}\n", i * 3));
    }
    let end = wait_back_to_zero(h, 90);
    stop.store(true, Ordering::Relaxed);
    let seen = sampler.join().unwrap();
    let most = seen.iter().map(|(_, s)| active_jobs(s).len()).max().unwrap_or(0);
    assert!(most >= 2, "the cluster grew with the work (at most {most} job(s) seen)");
    assert!(most <= 4, "never above --max 4: {most} jobs seen");
    let ids = batch_ids(&end);
    assert!(ids.len() >= 2, "{end:#}");
    assert!(active_in("slurm", &ids).is_empty(), "Slurm still shows {:?}", active_in("slurm", &ids));
    let text = ok(h, &["status"]);
    assert!(text.contains("adaptive: 0..4 batch jobs, target 0 (0 active, 0 pending)"), "{text}");
    assert!(text.contains("why: no unfinished tasks"), "{text}");
    ok(h, &["down"]);
    no_process_left(h);
}

#[test]
fn scale_down_never_kills_a_busy_worker() {
    if !available("/usr/bin/sbatch", "ci/setup-slurm.sh") {
        return;
    }
    let home = common::Home::new();
    let h = home.path();
    up_adaptive(h, &["--walltime", "10"]);
    ok(h, &["adapt", "--max", "2", "--interval", "0.5"]);
    let log = h.join("long.log");
    let long = format!("echo start >> {0}; sleep 25; echo end >> {0}", log.display());
    // One long task and forty short ones: enough work for two jobs at first, then one busy job.
    ok(h, &["submit", "--job-name", "long", "--", "sh", "-c", &long]);
    let (stop, sampler) = sample(h);
    ok(h, &["submit", "--job-name", "short", "--array", "1-40", "--stderr", "none", "--", "sleep", "0.3"]);
    let waited = ok(h, &["wait"]);
    assert!(waited.contains("40 of 40 tasks finished, 0 failed"), "{waited}");
    let waited = ok(h, &["wait", "1"]);
    assert!(waited.contains("1 of 1 tasks finished, 0 failed"), "{waited}");
    wait_back_to_zero(h, 90);
    stop.store(true, Ordering::Relaxed);
    let seen = sampler.join().unwrap();
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "start\nend\n", "the long task ran once, to its end");
    // While the long task ran, the idle job was retired and the busy one kept.
    let running_long =
        |s: &Value| s["jobs"].as_array().unwrap().iter().any(|j| j["name"] == "long" && j["counts"]["running"] == 1);
    let most = seen.iter().map(|(_, s)| active_jobs(s).len()).max().unwrap_or(0);
    assert_eq!(most, 2, "two jobs at the peak");
    let shrunk = seen
        .iter()
        .any(|(_, s)| running_long(s) && active_jobs(s).len() == 1 && s["workers"].as_array().unwrap().len() == 1);
    assert!(shrunk, "the idle job was given back while the long task ran");
    ok(h, &["down"]);
    no_process_left(h);
}

#[test]
fn jobs_near_their_walltime_are_replaced_and_no_task_fails() {
    if !available("/usr/bin/sbatch", "ci/setup-slurm.sh") {
        return;
    }
    let home = common::Home::new();
    let h = home.path();
    // Two-minute jobs: workers leave after 102–108 s; replacements come 40 s before that.
    up_adaptive(h, &["--walltime", "00:02:00"]);
    ok(h, &["adapt", "--max", "2", "--interval", "0.5", "--replace-ahead", "40"]);
    let (stop, sampler) = sample(h);
    let out = h.join("out");
    std::fs::create_dir(&out).unwrap();
    let runs = h.join("runs");
    let script = format!("echo $RDASK_TASK_ID >> {}; sleep 2; echo $((RDASK_TASK_ID * 7))", runs.display());
    let stdout = format!("{}/%{{TASK_ID}}", out.display());
    // 200 tasks of 2 s on two one-slot workers: about 200 s, longer than a job's walltime.
    ok(h, &["submit", "--array", "1-200", "--stdout", &stdout, "--stderr", "none", "--", "sh", "-c", &script]);
    let waited = rdask(h, &["wait"]);
    stop.store(true, Ordering::Relaxed);
    let seen = sampler.join().unwrap();
    assert!(waited.status.success(), "{}", text(&waited));
    let waited = String::from_utf8_lossy(&waited.stdout);
    assert!(waited.contains("200 of 200 tasks finished, 0 failed"), "{waited}");
    for i in 1..=200 {
        assert_eq!(std::fs::read_to_string(out.join(i.to_string())).unwrap(), format!("{}\n", i * 7), "task {i}");
    }
    // No task was cut off by a job's end and run again.
    let ran: Vec<String> = std::fs::read_to_string(&runs).unwrap().lines().map(str::to_string).collect();
    let unique: BTreeSet<&String> = ran.iter().collect();
    assert_eq!((ran.len(), unique.len()), (200, 200), "each task ran once");
    // Jobs came and went, and from the first worker on there was always one taking work.
    let jobs_with_workers: BTreeSet<String> = seen
        .iter()
        .flat_map(|(_, s)| {
            s["workers"].as_array().unwrap().iter().map(|w| w["batch_job"].as_str().unwrap().to_string())
        })
        .collect();
    assert!(jobs_with_workers.len() >= 3, "replacement jobs joined: {jobs_with_workers:?}");
    let first = seen.iter().position(|(_, s)| !s["workers"].as_array().unwrap().is_empty()).expect("a worker joined");
    for (t, s) in &seen[first..] {
        let unfinished = s["jobs"].as_array().unwrap().iter().any(|j| j["counts"]["finished"] != j["counts"]["total"]);
        let taking = s["workers"].as_array().unwrap().iter().filter(|w| w["retiring"] == false).count();
        assert!(!unfinished || taking >= 1, "no worker taking work at {t:?} while work remained:\n{s:#}");
    }
    ok(h, &["down"]);
    no_process_left(h);
}

#[test]
fn a_rejected_submission_backs_off_then_pauses_adapting_with_the_reason() {
    if !available("/usr/bin/sbatch", "ci/setup-slurm.sh") {
        return;
    }
    let home = common::Home::new();
    let h = home.path();
    // A partition that does not exist: sbatch refuses every job.
    up_adaptive(h, &["--walltime", "10", "--queue", "no-such-partition"]);
    ok(h, &["adapt", "--max", "2", "--interval", "0.2", "--max-failures", "3"]);
    ok(h, &["submit", "--array", "1-10", "--", "true"]);
    let text = wait_paused(h);
    assert!(text.contains("PAUSED after 3 failed submissions"), "{text}");
    assert!(text.contains("invalid partition"), "the batch system's own words are quoted: {text}");
    assert!(text.contains("run `rdask-jobqueue adapt` again"), "the fix is named: {text}");
    // Three attempts, spread out, and none after the pause.
    let attempts = || {
        let log = std::fs::read_to_string(h.join("default/scheduler.log")).unwrap();
        log.lines().filter(|l| l.contains("adaptive submission failed")).count()
    };
    assert_eq!(attempts(), 3);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(attempts(), 3, "no submission while paused");
    let s = status(h);
    assert!(active_jobs(&s).is_empty(), "no job was ever accepted: {s:#}");
    ok(h, &["down"]);
    no_process_left(h);
}

#[test]
fn jobs_that_fail_before_their_worker_joins_count_as_failures() {
    if !available("/usr/bin/sbatch", "ci/setup-slurm.sh") {
        return;
    }
    let home = common::Home::new();
    let h = home.path();
    // Accepted by Slurm, but every job dies in its prologue: adapting must not resubmit forever.
    up_adaptive(h, &["--walltime", "10", "--job-script-prologue", "echo no such module >&2; exit 7"]);
    ok(h, &["adapt", "--max", "1", "--interval", "0.2", "--max-failures", "2"]);
    ok(h, &["submit", "--array", "1-5", "--", "true"]);
    let text = wait_paused(h);
    assert!(text.contains("PAUSED after 2 failed submissions (last: batch job"), "{text}");
    assert!(text.contains("ended before its worker joined"), "{text}");
    assert!(text.contains("no such module"), "the job's stderr is shown: {text}");
    let s = status(h);
    assert_eq!(batch_ids(&s).len(), 2, "two jobs, then no more: {s:#}");
    ok(h, &["down"]);
    no_process_left(h);
}

#[test]
fn local_workers_adapt_to_the_work_too() {
    let home = common::Home::new();
    let h = home.path();
    let o = rdask(h, &["adapt", "--max", "2"]);
    assert_eq!(o.status.code(), Some(3), "no cluster, no adapting: {}", text(&o));
    let up = ok(h, &["up", "--adapt-max", "3", "--poll-interval", "0.2"]);
    assert!(up.contains("0 workers"), "{up}");
    let o = rdask(h, &["adapt", "--min", "3", "--max", "1"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("above the maximum"), "{}", text(&o));
    let said = ok(h, &["adapt", "--max", "3", "--interval", "0.2"]);
    assert!(said.contains("between 0 and 3 local workers of 1 slot(s)"), "{said}");
    // The same from Rust.
    let spec = AdaptSpec { interval: 0.2, ..AdaptSpec::new(0, 3) };
    let missing = rdask_jobqueue::provision::adapt_cluster(Some(h), "nope", Some(&spec)).unwrap_err();
    assert!(missing.to_string().contains("cluster `nope` is not up"), "{missing}");
    rdask_jobqueue::provision::adapt_cluster(Some(h), "default", Some(&spec)).unwrap();
    let (stop, sampler) = sample(h);
    ok(h, &["submit", "--array", "1-300", "--stderr", "none", "--", "sleep", "0.05"]);
    let waited = ok(h, &["wait"]);
    assert!(waited.contains("300 of 300 tasks finished, 0 failed"), "{waited}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !status(h)["workers"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "local workers did not go away:\n{:#}", status(h));
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let most = sampler.join().unwrap().iter().map(|(_, s)| s["workers"].as_array().unwrap().len()).max().unwrap_or(0);
    assert!((2..=3).contains(&most), "workers rose with the work, to at most 3: {most}");
    let text = ok(h, &["status"]);
    assert!(text.contains("adaptive: 0..3 local workers, target 0"), "{text}");
    ok(h, &["down"]);
    no_process_left(h);
}
