//! Resources and GPUs through the CLI: workers offer them, tasks ask for them, and the
//! scheduler binds concrete GPUs and never gives one to two running tasks.

mod common;

use common::{no_process_left, ok, rdask, text};

/// 40 command tasks of `--gpus 1` on a worker with 8 slots and `--resource gpu=4`: each takes
/// a lock named after its CUDA_VISIBLE_DEVICES for its whole run (`mkdir` fails if another
/// running task holds the same GPU) and records what it saw.
#[test]
fn gpu_tasks_each_see_exactly_one_gpu_that_no_other_running_task_holds() {
    let home = common::Home::new();
    let h = home.path();
    ok(h, &["up", "--workers", "1", "--slots", "8", "--resource", "gpu=4", "--wait"]);
    let s = common::status(h);
    assert_eq!(s["workers"][0]["info"]["offer"]["gpus"], serde_json::json!(["0", "1", "2", "3"]), "{s:#}");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    std::fs::create_dir(dir.path().join("locks")).unwrap();
    let script = format!(
        r#"g="${{CUDA_VISIBLE_DEVICES-unset}}"
echo "$g $ROCR_VISIBLE_DEVICES $ZE_AFFINITY_MASK" > {d}/seen-$RDASK_TASK_ID
mkdir {d}/locks/"$g" 2>/dev/null || echo "$RDASK_TASK_ID" >> {d}/clashes
ls {d}/locks | wc -l >> {d}/concurrent
sleep 0.2
rmdir {d}/locks/"$g""#
    );
    let out = ok(h, &["submit", "--array", "1-40", "--gpus", "1", "--wait", "--", "sh", "-c", &script]);
    assert!(out.contains("submitted job"), "{out}");
    assert!(
        !dir.path().join("clashes").exists(),
        "a GPU held by two running tasks: tasks {}",
        std::fs::read_to_string(dir.path().join("clashes")).unwrap()
    );
    for i in 1..=40 {
        let seen = std::fs::read_to_string(dir.path().join(format!("seen-{i}"))).unwrap();
        let vars: Vec<&str> = seen.split_whitespace().collect();
        assert_eq!(vars.len(), 3, "task {i} saw {seen:?}");
        assert!(["0", "1", "2", "3"].contains(&vars[0]), "task {i}: CUDA_VISIBLE_DEVICES={}", vars[0]);
        assert!(
            vars.iter().all(|v| *v == vars[0]),
            "task {i}: the ROCm and oneAPI variables name the same GPU: {seen:?}"
        );
    }
    let concurrent: Vec<usize> = std::fs::read_to_string(dir.path().join("concurrent"))
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(concurrent.len(), 40);
    assert!(concurrent.iter().all(|n| *n <= 4), "more than 4 GPU tasks at once: {concurrent:?}");
    ok(h, &["down"]);
    no_process_left(h);
}

#[test]
fn a_request_no_pool_can_meet_is_refused_at_submit_naming_the_pool_and_its_limit() {
    let home = common::Home::new();
    let h = home.path();
    ok(h, &["up", "--workers", "1", "--resource", "gpu=2", "--wait"]);
    let o = rdask(h, &["submit", "--gpus", "3", "--", "true"]);
    assert_eq!(o.status.code(), Some(4), "refused by the scheduler: {}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("pool `default`: 3 GPUs asked, 2 offered"), "{}", text(&o));
    let o = rdask(h, &["submit", "--resource", "license", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "bad input: {}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("NAME=COUNT"), "{}", text(&o));
    ok(h, &["down"]);
    no_process_left(h);
}

/// On the real Slurm with GPU GRES (`ci/setup-slurm.sh` gives each node 2 fake GPUs): a burst
/// of `--gpus 1` tasks grows only the GPU pool; each task sees one of the GPUs Slurm gave its
/// job; afterwards no job is left.
#[test]
fn slurm_gpu_tasks_grow_only_the_gpu_pool_and_see_the_gpus_slurm_gave() {
    if !common::available("/usr/bin/sbatch", "ci/setup-slurm.sh") {
        return;
    }
    let gres = std::process::Command::new("sinfo").args(["-h", "-o", "%G"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&gres.stdout).contains("gpu:"),
        "Slurm has no GPU GRES: run ci/setup-slurm.sh (it configures 2 fake GPUs per node)"
    );
    let home = common::Home::new();
    let h = home.path();
    let up = [
        "up",
        "--backend",
        "slurm",
        "--cores",
        "1",
        "--memory",
        "100MB",
        "--pool",
        "gpu gpus=2 cores=2 memory=200MB",
        "--adapt-max",
        "2",
        "--poll-interval",
        "0.5",
    ];
    ok(h, &up);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let script =
        format!(r#"echo "$CUDA_VISIBLE_DEVICES $SLURM_JOB_ID $SLURM_JOB_GPUS" > {d}/$RDASK_TASK_ID; sleep 0.5"#);
    ok(h, &["submit", "--array", "1-12", "--gpus", "1", "--", "sh", "-c", &script]);
    // Sample the pools while the work runs.
    let mut pools_seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let s = common::status(h);
        for j in s["batch_jobs"].as_array().unwrap() {
            pools_seen.insert(j["pool"].as_str().unwrap().to_string());
        }
        let done = s["jobs"].as_array().unwrap().iter().all(|j| j["counts"]["finished"] == 12);
        if done {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the GPU tasks did not finish:\n{s:#}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert_eq!(pools_seen.into_iter().collect::<Vec<_>>(), ["gpu"], "only the GPU pool had batch jobs");
    for i in 1..=12 {
        let seen = std::fs::read_to_string(dir.path().join(i.to_string())).unwrap();
        let f: Vec<&str> = seen.split_whitespace().collect();
        assert_eq!(f.len(), 3, "task {i}: {seen:?}");
        let given: Vec<&str> = f[2].split(',').collect();
        assert!(
            given.contains(&f[0]) && !f[0].contains(','),
            "task {i} saw CUDA_VISIBLE_DEVICES={} in a job given GPUs {}",
            f[0],
            f[2]
        );
    }
    let ids = common::batch_ids(&common::status(h));
    ok(h, &["down"]);
    assert!(common::active_in("slurm", &ids).is_empty(), "jobs left after down");
    no_process_left(h);
}

/// `--worker-per-gpu`: one worker per GPU, each pinned to its own, as dask-cuda does.
#[test]
fn worker_per_gpu_starts_one_pinned_worker_per_gpu() {
    let home = common::Home::new();
    let h = home.path();
    ok(h, &["up", "--workers", "1", "--slots", "4", "--resource", "gpu=2", "--worker-per-gpu"]);
    let s = common::wait_for(h, "two workers", |s| s["workers"].as_array().unwrap().len() == 2);
    let mut offers: Vec<String> =
        s["workers"].as_array().unwrap().iter().map(|w| w["info"]["offer"]["gpus"].to_string()).collect();
    offers.sort();
    assert_eq!(offers, [r#"["0"]"#, r#"["1"]"#], "each worker offers its own GPU: {s:#}");
    assert!(s["workers"].as_array().unwrap().iter().all(|w| w["info"]["slots"] == 2), "slots shared: {s:#}");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    // Tasks that ask for no GPU still run in the worker's pinned environment.
    let script = format!(r#"echo "$CUDA_VISIBLE_DEVICES" > {d}/$RDASK_TASK_ID"#);
    ok(h, &["submit", "--array", "1-8", "--wait", "--", "sh", "-c", &script]);
    let mut seen: Vec<String> =
        (1..=8).map(|i| std::fs::read_to_string(dir.path().join(i.to_string())).unwrap().trim().to_string()).collect();
    seen.sort();
    seen.dedup();
    assert!(
        seen.iter().all(|g| g == "0" || g == "1"),
        "a task saw CUDA_VISIBLE_DEVICES other than its worker's: {seen:?}"
    );
    ok(h, &["down"]);
    no_process_left(h);
}
