//! The scheduler dies and comes back (#15): `up` restores it from its journal, the workers
//! that were running carry on, what finished is not run again, and a `wait` in progress
//! returns as if nothing happened (and one started while no scheduler runs waits for it).

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    finished_tasks, ok, rdask, rdask_command, runs_per_task, scheduler_pid, sigkill, status, text, wait_for,
    worker_pids,
};

#[test]
fn a_scheduler_killed_mid_array_is_restored_and_the_same_workers_finish_it_without_reruns() {
    const N: u32 = 5000;
    let home = common::Home::new();
    let h = home.path();
    ok(h, &["up", "--workers", "2", "--slots", "25"]);
    let runs = h.join("runs");
    std::fs::create_dir(&runs).unwrap();
    let script = format!("sleep 0.5; echo ran >> {}/%{{TASK_ID}}", runs.display());
    ok(h, &["submit", "--array", &format!("1-{N}"), "--", "sh", "-c", &script]);
    // A `wait` started before the crash.
    let waiter = rdask_command(h, &["wait"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let before = wait_for(h, "half the array finished", |s| finished_tasks(s) >= u64::from(N / 2));
    let workers = worker_pids(&before);
    assert_eq!(workers.len(), 2);
    let scheduler = scheduler_pid(h);
    sigkill(scheduler);
    let deadline = Instant::now() + Duration::from_secs(5);
    while rdask_jobqueue::state::process_alive(scheduler, "") {
        assert!(Instant::now() < deadline, "the scheduler survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A `wait` started while no scheduler runs waits for it to come back.
    let late = rdask_command(h, &["wait"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Tasks go on while no scheduler runs; then `up` carries on from the journal.
    std::thread::sleep(Duration::from_secs(2));
    let up = rdask(h, &["up"]);
    assert!(up.status.success(), "{}", text(&up));
    assert!(text(&up).contains("restoring it from its journal"), "{}", text(&up));
    let after = status(h);
    assert_eq!(worker_pids(&after), workers, "the same worker processes carry on");
    assert_ne!(scheduler_pid(h), scheduler);
    let out = waiter.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "the wait started before the crash: {said}");
    assert!(said.contains(&format!("{N} of {N} tasks finished, 0 failed")), "{said}");
    assert!(said.contains("reconnected"), "{said}");
    let out = late.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "the wait started during the crash: {said}");
    assert!(said.contains("cannot reach the scheduler") && said.contains("0 failed"), "{said}");
    assert_eq!(runs_per_task(&runs, N), vec![], "tasks that did not run exactly once (task, runs)");
    assert_eq!(worker_pids(&status(h)), workers);
    ok(h, &["down"]);
    common::no_process_left(h);
}

#[test]
fn up_fresh_after_a_crash_starts_over_and_ends_what_was_left() {
    let home = common::Home::new();
    let h = home.path();
    ok(h, &["up", "--workers", "1", "--slots", "1"]);
    let workers = worker_pids(&status(h));
    let scheduler = scheduler_pid(h);
    sigkill(scheduler);
    std::thread::sleep(Duration::from_millis(300));
    let up = rdask(h, &["up", "--fresh", "--workers", "1", "--slots", "1"]);
    assert!(up.status.success(), "{}", text(&up));
    assert!(!text(&up).contains("restoring"), "{}", text(&up));
    assert!(!rdask_jobqueue::state::process_alive(workers[0] as u32, ""), "the old worker was ended");
    assert_ne!(worker_pids(&status(h)), workers);
    ok(h, &["down"]);
}

#[test]
fn workers_whose_scheduler_does_not_come_back_exit_after_their_death_timeout_and_end_their_tasks() {
    let home = common::Home::new();
    let h = home.path();
    ok(h, &["up", "--workers", "1", "--slots", "2", "--death-timeout", "3"]);
    let pids = h.join("pids");
    std::fs::create_dir(&pids).unwrap();
    let record = format!(
        "echo $$ > {0}/%{{TASK_ID}}.tmp && mv {0}/%{{TASK_ID}}.tmp {0}/%{{TASK_ID}}; exec sleep 1000",
        pids.display()
    );
    ok(h, &["submit", "--array", "1-2", "--", "sh", "-c", &record]);
    let sleeps = common::recorded_pids(&pids, 2);
    let worker = worker_pids(&status(h))[0] as u32;
    let scheduler = scheduler_pid(h);
    sigkill(scheduler);
    let killed = Instant::now();
    let alive = |p: u32| rdask_jobqueue::state::process_alive(p, "");
    while alive(worker) {
        assert!(killed.elapsed() < Duration::from_secs(30), "the worker outlived its death timeout");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(killed.elapsed() >= Duration::from_secs(3), "the worker left before its death timeout");
    // Its tasks went on while it waited for the scheduler, and end with it.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!sleeps.iter().any(|p| alive(*p)), "tasks outlived their worker: {sleeps:?}");
    ok(h, &["down"]);
}
