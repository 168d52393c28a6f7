//! The `rdask-jobqueue` command as users run it: real processes, a real local cluster.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ok, rdask, text};
use rdask_jobqueue::state::process_alive;

/// The scheduler's and the workers' pids, from `status --output json` and the scheduler file.
fn cluster_pids(home: &Path) -> Vec<u32> {
    let status: serde_json::Value = serde_json::from_str(&ok(home, &["status", "--output", "json"])).unwrap();
    let mut pids: Vec<u32> =
        status["workers"].as_array().unwrap().iter().map(|w| w["info"]["pid"].as_u64().unwrap() as u32).collect();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("default/scheduler.json")).unwrap()).unwrap();
    pids.push(file["pid"].as_u64().unwrap() as u32);
    pids
}

fn wait_gone(pids: &[u32], within: Duration) {
    let deadline = Instant::now() + within;
    while pids.iter().any(|p| process_alive(*p, "")) {
        assert!(Instant::now() < deadline, "processes still running: {pids:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn up_submit_wait_status_down_leaves_nothing_running() {
    let home = common::Home::new();
    let h = home.path();
    let out = ok(h, &["up", "--workers", "2"]);
    assert!(out.contains("is up") && out.contains("2 workers"), "{out}");
    let pids = cluster_pids(h);
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|p| process_alive(*p, "")));
    let outdir = h.join("out");
    let stdout = format!("{}/%{{TASK_ID}}.txt", outdir.display());
    let sub =
        ok(h, &["submit", "--array", "1-50", "--stdout", &stdout, "--", "sh", "-c", "echo $((RDASK_TASK_ID * 2))"]);
    assert!(sub.contains("submitted job 1 (50 tasks)"), "{sub}");
    let waited = ok(h, &["wait"]);
    assert!(waited.contains("50 of 50 tasks finished, 0 failed"), "{waited}");
    for i in 1..=50 {
        assert_eq!(std::fs::read_to_string(outdir.join(format!("{i}.txt"))).unwrap(), format!("{}\n", i * 2));
    }
    let status = ok(h, &["status"]);
    assert!(status.contains("2 worker(s), 1 job(s)"), "{status}");
    let down = ok(h, &["down"]);
    assert!(down.contains("is down"), "{down}");
    wait_gone(&pids, Duration::from_secs(5));
    assert!(!h.join("default/scheduler.json").exists());
    let again = ok(h, &["down"]);
    assert!(again.contains("not running"), "{again}");
}

#[test]
fn failed_tasks_make_wait_exit_1_with_their_codes() {
    let home = common::Home::new();
    let h = home.path();
    ok(h, &["up", "--workers", "1"]);
    ok(h, &["submit", "--array", "1-6", "--", "sh", "-c", "echo oops >&2; exit $RDASK_TASK_ID"]);
    let o = rdask(h, &["wait"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("0 of 6 tasks finished, 6 failed"), "{out}");
    assert!(out.contains("task 3 exited with code 3: oops"), "{out}");
    let missing = rdask(h, &["submit", "--wait", "--", "/no/such/program"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing).contains("cannot start `/no/such/program`"), "{}", text(&missing));
    ok(h, &["down"]);
}

#[test]
fn scheduler_killed_then_down_ends_its_workers() {
    let home = common::Home::new();
    let h = home.path();
    ok(h, &["up", "--workers", "2", "--death-timeout", "600"]);
    let pids = cluster_pids(h);
    let scheduler = *pids.last().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(scheduler as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_gone(&[scheduler], Duration::from_secs(5));
    // The workers outlive it (their death timeout is long); `down` must end them.
    assert!(pids[..2].iter().all(|p| process_alive(*p, "")));
    let down = ok(h, &["down"]);
    assert!(down.contains("ended 2 leftover process(es)"), "{down}");
    wait_gone(&pids, Duration::from_secs(5));
}

/// A worker killed with SIGKILL cannot end its command tasks itself; its guardian does, down to
/// the grandchildren (here `sleep`, started by `sh`, which waits for it).
#[test]
fn a_worker_killed_with_sigkill_leaves_no_command_running() {
    let home = common::Home::new();
    let h = home.path();
    ok(h, &["up", "--workers", "1", "--slots", "3"]);
    let pids = h.join("pids");
    std::fs::create_dir(&pids).unwrap();
    let record = format!(
        "sleep 1000 & echo $! > {}/%{{TASK_ID}}.tmp && mv {0}/%{{TASK_ID}}.tmp {0}/%{{TASK_ID}}; wait",
        pids.display()
    );
    ok(h, &["submit", "--array", "1-3", "--", "sh", "-c", &record]);
    let sleeps = common::recorded_pids(&pids, 3);
    assert!(sleeps.iter().all(|p| process_alive(*p, "")));
    let worker = cluster_pids(h)[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_gone(&[worker], Duration::from_secs(5));
    wait_gone(&sleeps, Duration::from_secs(2));
    ok(h, &["down"]);
}

/// `--stream`: a 100,000-task array leaves a file per worker, not two per task, and `output`
/// reads any task's output back; a failed task's stderr still reaches `wait`.
#[test]
fn a_streamed_array_leaves_few_files_and_output_reads_any_task_back() {
    let home = common::Home::new();
    let h = home.path();
    ok(h, &["up", "--workers", "2", "--slots", "2"]);
    let script = "echo out $RDASK_TASK_ID; echo err $RDASK_TASK_ID >&2; test $RDASK_TASK_ID -ne 4242 || exit 3";
    let sub = ok(h, &["submit", "--stream", "--array", "1-100000", "--", "sh", "-c", script]);
    let job = sub.split_whitespace().nth(2).unwrap().to_string();
    let o = rdask(h, &["wait"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let waited = String::from_utf8_lossy(&o.stdout);
    assert!(waited.contains("99999 of 100000 tasks finished, 1 failed"), "{waited}");
    assert!(waited.contains("task 4242 exited with code 3: err 4242"), "{waited}");
    let dir = h.join("default/jobs").join(&job);
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(files.len() < 10, "{} files in {}: {files:?}", files.len(), dir.display());
    assert_eq!(ok(h, &["output", &job, "--task", "77777"]), "out 77777\n");
    assert_eq!(ok(h, &["output", &job, "--task", "77777", "--stderr"]), "err 77777\n");
    assert_eq!(ok(h, &["output", &job, "--task", "4242", "--stderr"]), "err 4242\n");
    let all = ok(h, &["output", &job]);
    assert_eq!(all.lines().count(), 100_000);
    assert!(all.starts_with("out 1\nout 2\n") && all.ends_with("out 100000\n"), "in task order");
    // Arrays of more than 1000 tasks stream unless told otherwise; smaller ones do not.
    let big = ok(h, &["submit", "--wait", "--array", "1-1001", "--", "echo", "%{TASK_ID}"]);
    let big = big.split_whitespace().nth(2).unwrap();
    assert_eq!(std::fs::read_dir(h.join("default/jobs").join(big)).unwrap().count(), 2, "one stream file per worker");
    assert_eq!(ok(h, &["output", big, "--task", "1001"]), "1001\n");
    let small = ok(h, &["submit", "--wait", "--array", "1-3", "--", "echo", "%{TASK_ID}"]);
    let small = small.split_whitespace().nth(2).unwrap();
    assert_eq!(std::fs::read_to_string(h.join("default/jobs").join(small).join("2.out")).unwrap(), "2\n");
    assert_eq!(ok(h, &["output", small, "--task", "2"]), "2\n");
    let o = rdask(h, &["output", "99"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("job 99 of cluster `default` has no output directory"), "{}", text(&o));
    ok(h, &["down"]);
}

#[test]
fn up_twice_is_refused_and_names_the_fix() {
    let home = common::Home::new();
    let h = home.path();
    ok(h, &["up", "--workers", "1"]);
    let o = rdask(h, &["up"]);
    assert_eq!(o.status.code(), Some(4), "refused: {}", text(&o));
    assert!(text(&o).contains("already up") && text(&o).contains("rdask-jobqueue down"), "{}", text(&o));
    ok(h, &["down"]);
}

#[test]
fn bad_input_is_a_clear_error() {
    let home = common::Home::new();
    let h = home.path();
    let o = rdask(h, &["submit", "--frobnicate", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("unexpected argument '--frobnicate'"), "{}", text(&o));
    let o = rdask(h, &["submit", "--array", "10-1", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("bad --array") && text(&o).contains("backwards"), "{}", text(&o));
    let o = rdask(h, &["submit", "--array", "1-x", "--", "true"]);
    assert!(text(&o).contains("not a non-negative integer"), "{}", text(&o));
    let o = rdask(h, &["status"]);
    assert_eq!(o.status.code(), Some(3), "not running: {}", text(&o));
    assert!(text(&o).contains("is the cluster up?"), "{}", text(&o));
    let o = rdask(h, &["submit", "--", "true"]);
    assert!(text(&o).contains("rdask-jobqueue up"), "{}", text(&o));
    let o = rdask(h, &["up", "--slots", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // Nothing was started or left behind by any of these.
    assert!(!h.join("default/scheduler.json").exists());
}

#[test]
fn worker_exits_after_its_death_timeout_when_the_scheduler_is_unreachable() {
    let home = common::Home::new();
    let secret = home.path().join("secret");
    rdask::Secret::generate().save(&secret).unwrap();
    // Reserve a port, then free it: nobody listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let start = Instant::now();
    let o = rdask(
        home.path(),
        &[
            "worker",
            "--scheduler",
            &format!("tcp://127.0.0.1:{port}"),
            "--secret-file",
            secret.to_str().unwrap(),
            "--death-timeout",
            "2",
        ],
    );
    let took = start.elapsed();
    assert_eq!(o.status.code(), Some(3), "unreachable: {}", text(&o));
    assert!(text(&o).contains("unreachable") && text(&o).contains("death timeout"), "{}", text(&o));
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(20), "{took:?}");
}

#[test]
fn sigterm_ends_a_worker_that_has_no_scheduler_at_once() {
    let home = common::Home::new();
    let secret = home.path().join("secret");
    rdask::Secret::generate().save(&secret).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rdask-jobqueue"))
        .args(["worker", "--scheduler", &format!("tcp://127.0.0.1:{port}"), "--secret-file"])
        .arg(&secret)
        .args(["--death-timeout", "600"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "the worker ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn scale_adds_workers_and_retires_only_idle_ones() {
    let home = common::Home::new();
    let h = home.path();
    ok(h, &["up", "--workers", "2", "--poll-interval", "0.2"]);
    ok(h, &["submit", "--", "sleep", "3"]);
    // Let the task start on one of the two workers.
    let busy = loop {
        let s: serde_json::Value = serde_json::from_str(&ok(h, &["status", "--output", "json"])).unwrap();
        if let Some(w) = s["workers"].as_array().unwrap().iter().find(|w| w["assigned"].as_u64() == Some(1)) {
            break w["info"]["pid"].as_u64().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let three = ok(h, &["scale", "3", "--wait"]);
    assert!(three.contains("3 workers"), "{three}\n{}", ok(h, &["status", "--output", "json"]));
    let one = ok(h, &["scale", "1", "--wait"]);
    assert!(one.contains("1 workers"), "{one}\n{}", ok(h, &["status", "--output", "json"]));
    let s: serde_json::Value = serde_json::from_str(&ok(h, &["status", "--output", "json"])).unwrap();
    assert_eq!(s["workers"][0]["info"]["pid"].as_u64(), Some(busy), "the busy worker is the one kept");
    assert!(ok(h, &["wait"]).contains("1 of 1 tasks finished, 0 failed"));
    ok(h, &["down"]);
}

/// `rdask-jobqueue ARGS` with `PATH` set to `path` only (no batch system's commands on it).
fn rdask_with_path(home: &Path, path: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rdask-jobqueue"))
        .env("RDASK_HOME", home)
        .env("RDASK_CONFIG", "/dev/null")
        .env_remove("RDASK_CLUSTER")
        .env("PATH", path)
        .args(args)
        .output()
        .expect("rdask-jobqueue runs")
}

#[test]
fn up_names_a_missing_batch_command_and_its_option_before_starting_anything() {
    let home = common::Home::new();
    let h = home.path();
    // Whatever this machine has, the command finds no batch system on this PATH.
    let bin = tempfile::tempdir().unwrap();
    let o = rdask_with_path(h, bin.path(), &["up", "--backend", "slurm", "--cores", "1"]);
    assert_eq!(o.status.code(), Some(2), "a missing command is a configuration error: {}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("`sbatch` not found: install the Slurm client"), "{}", text(&o));
    assert!(stderr.contains("--submit-command"), "{}", text(&o));
    let o = rdask_with_path(h, bin.path(), &["up", "--backend", "sge", "--submit-command", "/bin/true"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("`qstat` not found") && stderr.contains("--status-command"), "{}", text(&o));
    // Nothing was started, submitted or written.
    for file in ["scheduler.json", "spec.json", "journal"] {
        assert!(!h.join("default").join(file).exists(), "{file} left behind");
    }
    common::no_process_left(h);
}

#[test]
fn lsf_job_scripts_print_and_up_without_lsf_names_the_missing_command_and_leaves_nothing() {
    let home = common::Home::new();
    let h = home.path();
    let script = ok(h, &["job-script", "--backend", "lsf", "--cores", "8", "--memory", "28GB"]);
    let head =
        ["#BSUB -J rdask-worker", "#BSUB -n 8", "#BSUB -R \"span[hosts=1]\"", "#BSUB -M 28000000", "#BSUB -W 00:30"];
    let directives: Vec<&str> = script
        .lines()
        .filter(|l| l.starts_with("#BSUB") && !l.starts_with("#BSUB -e") && !l.starts_with("#BSUB -o"))
        .collect();
    assert_eq!(directives, head, "{script}");
    assert!(script.contains(&format!("#BSUB -e {}/default/logs/rdask-worker-%J.err", h.display())), "{script}");
    assert!(ok(h, &["up", "--help"]).contains("lsf"), "--backend lists LSF");
    let o = rdask(h, &["job-script", "--backend", "lsf", "--nodes-per-job", "2"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("nodes > 1 is not supported on lsf") && text(&o).contains("blaunch"), "{}", text(&o));

    // Whatever this machine has, the command finds no LSF on this PATH.
    let bin = tempfile::tempdir().unwrap();
    let o = rdask_with_path(h, bin.path(), &["up", "--backend", "lsf", "--cores", "1"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("`bsub` not found") && stderr.contains("--submit-command"), "{}", text(&o));
    // A bsub found, but no bjobs: that one is named, with its own option.
    let bsub = bin.path().join("bsub");
    std::fs::write(&bsub, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&bsub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let o = rdask_with_path(h, bin.path(), &["up", "--backend", "lsf", "--cores", "1"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("`bjobs` not found") && stderr.contains("--status-command"), "{}", text(&o));
    // Nothing was started, submitted or written.
    for file in ["scheduler.json", "spec.json", "journal"] {
        assert!(!h.join("default").join(file).exists(), "{file} left behind");
    }
    common::no_process_left(h);
}

/// The exit codes scripts rely on (README, `rdask-jobqueue --help`): 1 tasks failed, 2 bad
/// command line, 3 cluster not running or unreachable, 4 refused.
#[test]
fn exit_codes_tell_failed_tasks_from_bad_input_from_a_dead_cluster_from_a_refusal() {
    let home = common::Home::new();
    let h = home.path();
    let o = rdask(h, &["status", "--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2), "bad flag: {}", text(&o));
    let o = rdask(h, &["status"]);
    assert_eq!(o.status.code(), Some(3), "no cluster: {}", text(&o));
    ok(h, &["up", "--workers", "1"]);
    ok(h, &["submit", "--", "false"]);
    let o = rdask(h, &["wait"]);
    assert_eq!(o.status.code(), Some(1), "failed task: {}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("0 of 1 tasks finished, 1 failed"), "{}", text(&o));
    // The scheduler's provisioner refuses to scale a pool the cluster does not have.
    let o = rdask(h, &["scale", "--pool", "nosuchpool", "2"]);
    assert_eq!(o.status.code(), Some(4), "refused: {}", text(&o));
    assert!(text(&o).contains("no worker pool named `nosuchpool`"), "{}", text(&o));
    let pids = cluster_pids(h);
    let scheduler = *pids.last().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(scheduler as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_gone(&[scheduler], Duration::from_secs(5));
    let o = rdask(h, &["status"]);
    assert_eq!(o.status.code(), Some(3), "dead scheduler: {}", text(&o));
    assert!(text(&o).contains("rdask-jobqueue down --name default"), "{}", text(&o));
    ok(h, &["down"]);
    wait_gone(&pids, Duration::from_secs(10));
}

/// `sbatch` refusing the job script (here: a partition Slurm does not have) makes `up` exit
/// with 4, quoting sbatch, and leaves nothing behind: no state directory, no process, no job.
#[test]
fn a_job_script_refused_by_sbatch_exits_4_with_its_words_and_leaves_nothing() {
    if !common::available("/usr/bin/sbatch", "ci/setup-slurm.sh") {
        return;
    }
    let home = common::Home::new();
    let h = home.path();
    let name = format!("refused{}", std::process::id());
    let up = [
        "--name",
        &name,
        "up",
        "--backend",
        "slurm",
        "--queue",
        "nosuchpartition",
        "--job-name",
        &name,
        "--cores",
        "1",
    ];
    let o = rdask(h, &up);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("sbatch") && text(&o).contains("invalid partition"), "{}", text(&o));
    assert!(!h.join(&name).exists(), "the state directory was left behind");
    common::no_process_left(h);
    let squeue = Command::new("squeue").args(["--noheader", "--format", "%i %j", "--name", &name]).output().unwrap();
    let jobs = String::from_utf8_lossy(&squeue.stdout).to_string();
    assert!(jobs.trim().is_empty(), "jobs of the refused cluster: {jobs}");
}

/// `cancel`: the queued tasks of a job never run, the running one finishes, `wait` exits 1
/// saying they were cancelled, and a task the job does not have is a usage error.
#[test]
fn cancel_stops_the_queued_tasks_of_an_array_and_wait_reports_them() {
    let home = common::Home::new();
    let h = home.path();
    ok(h, &["up", "--workers", "1", "--slots", "1"]);
    let ran = h.join("ran");
    std::fs::create_dir(&ran).unwrap();
    let script = format!("touch {}/$RDASK_TASK_ID; sleep 0.5", ran.display());
    let sub = ok(h, &["submit", "--array", "1-40", "--", "sh", "-c", &script]);
    let job = sub.split_whitespace().nth(2).unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ran.join("1").exists() {
        assert!(Instant::now() < deadline, "task 1 never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let bad = rdask(h, &["cancel", &job, "--task", "41"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(text(&bad).contains("has no task 41: its array is 1-40"), "{}", text(&bad));
    let one = ok(h, &["cancel", &job, "--task", "40"]);
    assert!(one.contains("1 tasks cancelled"), "{one}");
    let out = ok(h, &["cancel"]);
    assert!(out.contains("tasks cancelled") && out.contains("already running will finish"), "{out}");
    let waited = rdask(h, &["wait", &job]);
    assert_eq!(waited.status.code(), Some(1), "{}", text(&waited));
    assert!(text(&waited).contains("cancelled by a client"), "{}", text(&waited));
    let started = std::fs::read_dir(&ran).unwrap().count();
    assert!((1..=3).contains(&started), "{started} of 40 tasks ran after the cancel");
    // The worker takes new work at once.
    let sub = ok(h, &["submit", "--", "true"]);
    let next = sub.split_whitespace().nth(2).unwrap().to_string();
    ok(h, &["wait", &next]);
    ok(h, &["down"]);
}
