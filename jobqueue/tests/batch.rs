//! `rdask-jobqueue` on real batch systems: Slurm, SGE, and PBS through Slurm's PBS-style wrappers.
//!
//! `ci/test.sh` installs and starts them (`ci/setup-*.sh`). Where a batch system is missing
//! these tests say so and pass, except under CI (`CI=true`), where a missing one is a failure.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::browser::Browser;
use common::{
    active_in, available, batch_ids, dashboard_url, finished_tasks, no_process_left, ok, rdask, running_jobs,
    runs_per_task, scheduler_pid, sigkill, status, wait_active, wait_for, worker_pids, Follower,
};
use serde_json::Value;

/// `up --nodes 4` → 4 jobs running with a worker each; a 1,000-task array; `down` → no job left.
fn four_nodes_array_down(system: &str, extra: &[&str]) {
    let home = common::Home::new();
    let h = home.path();
    let mut args = vec!["up", "--backend", system, "--nodes", "4", "--cores", "1", "--walltime", "10", "--wait"];
    args.extend_from_slice(extra);
    let up = ok(h, &args);
    assert!(up.contains("4 workers") && up.contains("4 batch job(s)"), "{up}");
    let s = wait_for(h, "4 running jobs", |s| running_jobs(s) == 4);
    let ids = batch_ids(&s);
    // Each worker is matched to the batch job it runs in, and each job holds one worker.
    let mut worker_jobs: Vec<String> =
        s["workers"].as_array().unwrap().iter().map(|w| w["batch_job"].as_str().unwrap().to_string()).collect();
    worker_jobs.sort();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(worker_jobs, sorted);
    assert_eq!(active_in(system, &ids).len(), 4, "the batch system shows the 4 jobs");

    let out = h.join("out");
    let stdout = format!("{}/%{{TASK_ID}}", out.display());
    ok(
        h,
        &[
            "submit",
            "--array",
            "1-1000",
            "--stdout",
            &stdout,
            "--stderr",
            "none",
            "--",
            "sh",
            "-c",
            "echo $RDASK_TASK_ID",
        ],
    );
    let waited = ok(h, &["wait"]);
    assert!(waited.contains("1000 of 1000 tasks finished, 0 failed"), "{waited}");
    assert_eq!(std::fs::read_to_string(out.join("777")).unwrap(), "777\n");

    ok(h, &["down"]);
    assert!(active_in(system, &ids).is_empty(), "jobs left after down: {:?}", active_in(system, &ids));
    no_process_left(h);
}

#[test]
fn slurm_four_nodes_run_an_array_and_leave_nothing() {
    if available("/usr/bin/sbatch", "ci/setup-slurm.sh") {
        four_nodes_array_down("slurm", &["--memory", "200MB"]);
    }
}

#[test]
fn sge_four_nodes_run_an_array_and_leave_nothing() {
    if available("/usr/bin/qconf", "ci/setup-sge.sh") {
        four_nodes_array_down("sge", &[]);
    }
}

#[test]
fn slurm_job_array_and_multi_node_job_give_one_worker_per_node() {
    if !available("/usr/bin/sbatch", "ci/setup-slurm.sh") {
        return;
    }
    let home = common::Home::new();
    let h = home.path();
    ok(h, &["up", "--backend", "slurm", "--nodes", "3", "--job-array", "--cores", "1", "--memory", "100MB", "--wait"]);
    let s = status(h);
    let ids = batch_ids(&s);
    assert_eq!(ids.len(), 1, "one array job");
    let workers = s["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 3);
    assert!(workers.iter().all(|w| w["batch_job"] == ids[0].as_str()), "{s:#}");
    ok(h, &["down"]);
    assert!(active_in("slurm", &ids).is_empty());

    let home = common::Home::new();
    let h = home.path();
    let up = ["up", "--backend", "slurm", "--nodes", "2", "--nodes-per-job", "2", "--cores", "1", "--memory", "100MB"];
    ok(h, &[&up[..], &["--wait"]].concat());
    let s = status(h);
    let ids = batch_ids(&s);
    assert_eq!(ids.len(), 1, "one two-node job");
    let workers = s["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    assert!(workers.iter().all(|w| w["batch_job"] == ids[0].as_str()), "{s:#}");
    ok(h, &["down"]);
}

#[test]
fn pbs_wrappers_start_workers() {
    if !available("/opt/slurm-torque/bin/qsub", "ci/setup-pbs.sh") {
        return;
    }
    let home = common::Home::new();
    let h = home.path();
    ok(
        h,
        &[
            "up",
            "--backend",
            "pbs",
            "--submit-command",
            "/opt/slurm-torque/bin/qsub",
            "--status-command",
            "/opt/slurm-torque/bin/qstat",
            "--cancel-command",
            "/opt/slurm-torque/bin/qdel",
            "--nodes",
            "2",
            "--cores",
            "1",
            "--memory",
            "100MB",
            "--wait",
        ],
    );
    let s = wait_for(h, "2 running PBS jobs", |s| running_jobs(s) == 2);
    assert_eq!(s["workers"].as_array().unwrap().len(), 2);
    let ids = batch_ids(&s);
    ok(h, &["down"]);
    assert!(active_in("slurm", &ids).is_empty());
    no_process_left(h);
}

#[test]
fn killed_scheduler_then_down_cancels_every_job() {
    if !available("/usr/bin/sbatch", "ci/setup-slurm.sh") {
        return;
    }
    let home = common::Home::new();
    let h = home.path();
    ok(h, &["up", "--backend", "slurm", "--nodes", "2", "--cores", "1", "--memory", "100MB", "--wait"]);
    let s = wait_for(h, "2 running jobs", |s| running_jobs(s) == 2);
    let ids = batch_ids(&s);
    sigkill(scheduler_pid(h));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(active_in("slurm", &ids).len(), 2, "the jobs outlive the killed scheduler");
    let down = ok(h, &["down"]);
    assert!(down.contains("cancelled the cluster's 2 batch job(s)"), "{down}");
    assert!(active_in("slurm", &ids).is_empty(), "left: {:?}", active_in("slurm", &ids));
    // The workers, cut off from their scheduler, end with their jobs.
    no_process_left(h);
}

#[test]
fn a_rejected_submission_is_a_clear_error_and_leaves_nothing() {
    if !available("/usr/bin/sbatch", "ci/setup-slurm.sh") {
        return;
    }
    let home = common::Home::new();
    let h = home.path();
    // More memory than any node has: sbatch refuses the job.
    let o = rdask(h, &["up", "--backend", "slurm", "--nodes", "1", "--cores", "1", "--memory", "64GB"]);
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(4), "refused by the batch system: {text}");
    assert!(text.contains("sbatch") && text.contains("Memory specification"), "{text}");
    assert!(!h.join("default/scheduler.json").exists());
    // A bad walltime is refused before anything runs.
    let o = rdask(h, &["up", "--backend", "slurm", "--walltime", "soon"]);
    let text = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "a bad option value: {text}");
    assert!(text.contains("soon"), "{text}");
    let o = rdask(h, &["up", "--backend", "slurm", "--submit-command", "/no/such/sbatch"]);
    let text = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(text.contains("/no/such/sbatch") && text.contains("slurm-client"), "{text}");
}

#[test]
fn a_job_that_fails_before_its_worker_joins_is_reported_with_its_stderr() {
    if !available("/usr/bin/sbatch", "ci/setup-slurm.sh") {
        return;
    }
    let home = common::Home::new();
    let h = home.path();
    let prologue = "echo module python/3.99 not found >&2; exit 7";
    let o = rdask(
        h,
        &["up", "--backend", "slurm", "--cores", "1", "--memory", "100MB", "--job-script-prologue", prologue, "--wait"],
    );
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(5), "{text}");
    assert!(text.contains("ended before its worker joined") && text.contains("python/3.99 not found"), "{text}");
    assert!(!h.join("default/scheduler.json").exists(), "the cluster was stopped");
}

#[test]
fn srun_runner_makes_a_cluster_of_a_job_step_and_ends_with_the_client() {
    if !available("/usr/bin/srun", "ci/setup-slurm.sh") {
        return;
    }
    let home = common::Home::new();
    let h = home.path();
    let bin = env!("CARGO_BIN_EXE_rdask-jobqueue");
    let srun = |client: &str, tasks: &str| {
        Command::new("srun")
            .args(["-n", tasks, "--mem-per-cpu=100", "-t", "5", bin, "--home"])
            .arg(h)
            .args(["run", "--", "sh", "-c", client])
            .output()
            .unwrap()
    };
    // The client submits to the step's own cluster, which has its 2 workers.
    let marker = h.join("marker");
    let client = format!(
        "'{bin}' submit --array 1-50 --stdout none --wait -- true && '{bin}' status | grep -c '^w[0-9]' > '{}'",
        marker.display()
    );
    let o = srun(&client, "4");
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{text}");
    assert!(text.contains("50 of 50 tasks finished"), "{text}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "2", "two workers");
    // The step's exit code is the client's, and every task is gone when it ends.
    let o = srun("exit 3", "3");
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    no_process_left(h);
    // The client task dying hard ends the step too, instead of leaving it to its time limit.
    let start = Instant::now();
    let o = srun("kill -9 $PPID; sleep 2", "3");
    assert!(!o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(start.elapsed() < Duration::from_secs(30), "the step lingered {:?}", start.elapsed());
    no_process_left(h);
    // Two tasks leave no room for a worker.
    let o = srun("true", "2");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("at least 3 tasks"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn slurm_scale_submits_and_cancels_jobs() {
    if !available("/usr/bin/sbatch", "ci/setup-slurm.sh") {
        return;
    }
    let home = common::Home::new();
    let h = home.path();
    ok(
        h,
        &[
            "up",
            "--backend",
            "slurm",
            "--nodes",
            "1",
            "--cores",
            "1",
            "--memory",
            "100MB",
            "--poll-interval",
            "0.5",
            "--wait",
        ],
    );
    assert!(ok(h, &["scale", "3", "--wait"]).contains("3 workers"));
    let ids = batch_ids(&status(h));
    assert_eq!(ids.len(), 3);
    assert_eq!(active_in("slurm", &ids).len(), 3);
    assert!(ok(h, &["scale", "1", "--wait"]).contains("1 workers"));
    wait_active("slurm", &ids, 1);
    ok(h, &["down"]);
    assert!(active_in("slurm", &ids).is_empty());
    no_process_left(h);
}

#[test]
fn scheduler_in_a_slurm_job_serves_clients_and_down_ends_every_job() {
    if !available("/usr/bin/sbatch", "ci/setup-slurm.sh") {
        return;
    }
    let up = ["up", "--backend", "slurm", "--scheduler-in-job", "--nodes", "2", "--cores", "1", "--memory", "100MB"];
    for crash in [false, true] {
        let home = common::Home::new();
        let h = home.path();
        let out = ok(h, &up);
        let sched_job = out.split("slurm job ").nth(1).and_then(|t| t.split_whitespace().next()).unwrap().to_string();
        let s = wait_for(h, "2 workers", |s| s["workers"].as_array().is_some_and(|w| w.len() == 2));
        let mut ids = batch_ids(&s);
        ids.push(sched_job.clone());
        assert_eq!(active_in("slurm", &ids).len(), 3, "the scheduler's job and 2 worker jobs");
        let waited = ok(h, &["submit", "--array", "1-20", "--stdout", "none", "--wait", "--", "true"]);
        assert!(waited.contains("20 of 20 tasks finished"), "{waited}");
        if crash {
            // The scheduler's job dies hard; its worker jobs live on until `down`.
            let o = Command::new("scancel").args(["--signal=KILL", "--full", &sched_job]).output().unwrap();
            assert!(o.status.success());
            wait_active("slurm", std::slice::from_ref(&sched_job), 0);
        }
        ok(h, &["down"]);
        assert!(active_in("slurm", &ids).is_empty(), "left: {:?}", active_in("slurm", &ids));
        no_process_left(h);
    }
}

#[test]
fn slurm_pools_have_their_own_resources_and_scale_alone() {
    if !available("/usr/bin/sbatch", "ci/setup-slurm.sh") {
        return;
    }
    let home = common::Home::new();
    let h = home.path();
    let pool = "big nodes=2 cores=2 memory=200MB job-extra-directives=--comment=bigpool";
    let up = ["up", "--backend", "slurm", "--nodes", "1", "--cores", "1", "--memory", "100MB", "--pool", pool];
    ok(h, &[&up[..], &["--poll-interval", "0.5", "--wait"]].concat());
    let s = status(h);
    let jobs = s["batch_jobs"].as_array().unwrap();
    let of = |p: &str| {
        jobs.iter().filter(|j| j["pool"] == p).map(|j| j["id"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    let (default, big) = (of("default"), of("big"));
    assert_eq!((default.len(), big.len()), (1, 2), "{s:#}");
    // The batch system got each pool's own request.
    let out = Command::new("squeue").args(["-h", "-o", "%i %j %C %k", "-j", &big.join(",")]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(text.lines().filter(|l| l.contains("rdask-big 2 bigpool")).count(), 2, "{text}");
    // Workers report their slots: 1 in the default pool, 2 in the big one.
    let mut slots: Vec<u64> =
        s["workers"].as_array().unwrap().iter().map(|w| w["info"]["slots"].as_u64().unwrap()).collect();
    slots.sort();
    assert_eq!(slots, vec![1, 2, 2]);
    assert!(ok(h, &["scale", "--pool", "big", "1", "--wait"]).contains("2 workers"));
    wait_active("slurm", &big, 1);
    assert_eq!(active_in("slurm", &default).len(), 1, "the other pool is untouched");
    let o = rdask(h, &["scale", "--pool", "nope", "1"]);
    assert_eq!(o.status.code(), Some(4), "refused by the provisioner");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no worker pool named `nope`; this cluster has: default, big"));
    ok(h, &["down"]);
    no_process_left(h);
    // A bad pool is refused before anything starts.
    let o = rdask(h, &["up", "--backend", "slurm", "--pool", "x flavour=vanilla"]);
    assert_eq!(o.status.code(), Some(2), "a bad --pool is a bad command line");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--pool x: unknown key \"flavour\""));
    assert!(!h.join("default/scheduler.json").exists());
}

/// The deconvolution example's binary, built beside this one by `cargo test --workspace`.
fn example_program() -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_BIN_EXE_rdask-jobqueue")).parent().unwrap().to_path_buf();
    let program = dir.join("deconvolution");
    if program.exists() {
        return Some(program);
    }
    assert!(std::env::var("CI").is_err(), "{} is missing: run the tests with --workspace", program.display());
    eprintln!("skipped: {} not built (cargo test --workspace builds it)", program.display());
    None
}

/// `up --backend slurm --worker-program P`: the job scripts start the user's program as the
/// worker, so function tasks run on a batch cluster; the client is the same program.
#[test]
fn slurm_jobs_run_the_users_program_for_function_tasks() {
    if !available("/usr/bin/sbatch", "ci/setup-slurm.sh") {
        return;
    }
    let Some(program) = example_program() else { return };
    let home = common::Home::new();
    let h = home.path();
    let program_arg = program.display().to_string();
    let up = ["up", "--backend", "slurm", "--nodes", "2", "--cores", "1", "--memory", "200MB"];
    ok(h, &[&up[..], &["--worker-program", &program_arg, "--wait"]].concat());
    let s = status(h);
    let ids = batch_ids(&s);
    assert_eq!(ids.len(), 2, "{s:#}");
    let script = std::fs::read_dir(h.join("default/job-scripts")).unwrap().next().unwrap().unwrap().path();
    let script = std::fs::read_to_string(script).unwrap();
    assert!(script.contains(&format!("--program {program_arg}")), "the job script starts the program:\n{script}");

    let dir = h.join("default");
    let file: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("scheduler.json")).unwrap()).unwrap();
    let addresses: Vec<&str> = file["addresses"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let out = Command::new(&program)
        .args(["--size", "40", "--chunk", "20", "--iterations", "5"])
        .env("RDASK_SCHEDULER", addresses.join(","))
        .env("RDASK_SECRET_FILE", dir.join("secret"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("verified: the cluster's result equals the single-process result"), "{stdout}");
    // Every chunk (and the stitch) ran in the batch jobs: the cluster has no other worker.
    let s = status(h);
    let workers = s["workers"].as_array().unwrap();
    assert!(workers.iter().all(|w| ids.contains(&w["batch_job"].as_str().unwrap_or("none").to_string())), "{s:#}");
    let done: u64 = workers.iter().map(|w| w["finished"].as_u64().unwrap()).sum();
    assert_eq!(done, 8 + 1, "8 chunks of 20^3 in a 40^3 image and the stitch, all on batch workers: {s:#}");
    ok(h, &["down"]);
    assert!(active_in("slurm", &ids).is_empty(), "jobs left after down");
    no_process_left(h);
}

/// The batch jobs' rows of the dashboard: (job id, state).
const BATCH_JOBS: &str =
    "return [...document.querySelectorAll('tr.batch-job')].map(e => [e.children[0].textContent, e.dataset.state]);";

fn rows_in(v: &Value, state: &str) -> Vec<String> {
    let mut ids: Vec<String> =
        v.as_array().unwrap().iter().filter(|r| r[1] == state).map(|r| r[0].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

/// The dashboard of a Slurm cluster, in Chromium, shows its batch jobs with their states; and
/// `events --follow` shows a worker joining, a task failing and a batch job ending, in order.
#[test]
fn slurm_dashboard_shows_the_batch_jobs_and_events_follow_one_ending() {
    if !available("/usr/bin/sbatch", "ci/setup-slurm.sh") {
        return;
    }
    let Some(browser) = Browser::start() else { return };
    let home = common::Home::new();
    let h = home.path();
    let up = ["up", "--backend", "slurm", "--nodes", "2", "--cores", "1", "--memory", "100MB"];
    let url = dashboard_url(&ok(h, &[&up[..], &["--poll-interval", "0.5", "--wait"]].concat()));
    let mut events = Follower::start(h);
    let mut ids = batch_ids(&status(h));
    ids.sort();
    assert_eq!(ids.len(), 2);
    browser.open(&url);
    browser.wait_for("both batch jobs running", Duration::from_secs(60), BATCH_JOBS, |v| rows_in(v, "running") == ids);
    let shot = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-slurm.png");
    browser.screenshot(&shot);
    eprintln!("screenshot: {}", shot.display());

    ok(h, &["submit", "--array", "1-30", "--stdout", "none", "--", "sh", "-c", "test $RDASK_TASK_ID -ne 7 || exit 5"]);
    assert_eq!(rdask(h, &["wait"]).status.code(), Some(1));
    let failed = events.until("task 7 failing", |e| e["event"] == "task_failed");
    assert_eq!(events.seen[failed]["task"], 7);
    ok(h, &["scale", "1", "--wait"]);
    let ended = events.until("a batch job ending", |e| {
        e["event"] == "allocation"
            && ids.iter().any(|id| e["id"] == id.as_str())
            && !matches!(e["state"].as_str(), Some("running" | "pending"))
    });
    assert!(events.first("worker_joined") < failed && failed < ended, "{:#?}", events.seen);
    let gone = events.seen[ended]["id"].as_str().unwrap().to_string();
    let left: Vec<String> = ids.iter().filter(|id| **id != gone).cloned().collect();
    browser.wait_for("one batch job running", Duration::from_secs(60), BATCH_JOBS, |v| rows_in(v, "running") == left);
    ok(h, &["down"]);
    assert!(active_in("slurm", &ids).is_empty(), "jobs left after down");
    no_process_left(h);
}

/// The scheduler of a Slurm cluster is killed half-way through a 5,000-task array; `up`
/// restores it: the same batch jobs and worker processes carry on, no task runs twice, and a
/// `wait` started before the crash returns 0.
#[test]
fn slurm_scheduler_killed_mid_array_is_restored_and_its_batch_jobs_carry_on() {
    if !available("/usr/bin/sbatch", "ci/setup-slurm.sh") {
        return;
    }
    const N: u32 = 5000;
    let home = common::Home::new();
    let h = home.path();
    // Two of the four test nodes: the other batch tests run beside this one.
    ok(h, &["up", "--backend", "slurm", "--nodes", "2", "--cores", "8", "--memory", "100MB", "--wait"]);
    let before = wait_for(h, "2 running jobs", |s| running_jobs(s) == 2);
    let mut ids = batch_ids(&before);
    ids.sort();
    let workers = worker_pids(&before);
    let runs = h.join("runs");
    std::fs::create_dir(&runs).unwrap();
    let script = format!("sleep 0.5; echo ran by $PPID at $(date +%s.%N) >> {}/%{{TASK_ID}}", runs.display());
    ok(h, &["submit", "--array", &format!("1-{N}"), "--stdout", "none", "--", "sh", "-c", &script]);
    let waiter = common::rdask_command(h, &["wait"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(h, "half the array finished", |s| finished_tasks(s) >= u64::from(N / 2));
    sigkill(scheduler_pid(h));
    std::thread::sleep(Duration::from_secs(2));
    let up = rdask(h, &["up"]);
    assert!(up.status.success(), "{}", common::text(&up));
    assert!(common::text(&up).contains("restoring it from its journal"), "{}", common::text(&up));
    let out = waiter.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "the wait started before the crash: {said}");
    assert!(said.contains(&format!("{N} of {N} tasks finished, 0 failed")), "{said}");
    let after = status(h);
    let mut after_ids = batch_ids(&after);
    after_ids.sort();
    assert_eq!(after_ids, ids, "the same batch jobs carry on");
    assert_eq!(worker_pids(&after), workers, "the same worker processes carry on");
    let twice = runs_per_task(&runs, N);
    if !twice.is_empty() {
        let runs: Vec<String> =
            twice.iter().map(|(t, _)| std::fs::read_to_string(runs.join(t.to_string())).unwrap_or_default()).collect();
        let log = std::fs::read_to_string(h.join("default/scheduler.log")).unwrap_or_default();
        panic!("tasks that did not run exactly once (task, runs): {twice:?}\n{runs:?}\nscheduler log:\n{log}");
    }
    ok(h, &["down"]);
    assert!(active_in("slurm", &ids).is_empty(), "jobs left after down");
    no_process_left(h);
}

/// Without a scheduler to come back to, a batch job's worker exits after its death timeout,
/// and the batch job ends with it.
#[test]
fn slurm_workers_whose_scheduler_does_not_come_back_end_their_batch_jobs() {
    if !available("/usr/bin/sbatch", "ci/setup-slurm.sh") {
        return;
    }
    let home = common::Home::new();
    let h = home.path();
    ok(
        h,
        &[
            "up",
            "--backend",
            "slurm",
            "--nodes",
            "1",
            "--cores",
            "1",
            "--memory",
            "100MB",
            "--death-timeout",
            "3",
            "--wait",
        ],
    );
    let ids = batch_ids(&wait_for(h, "1 running job", |s| running_jobs(s) == 1));
    sigkill(scheduler_pid(h));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !active_in("slurm", &ids).is_empty() {
        assert!(Instant::now() < deadline, "the batch job outlived its worker's death timeout");
        std::thread::sleep(Duration::from_millis(250));
    }
    ok(h, &["down"]);
    no_process_left(h);
}
