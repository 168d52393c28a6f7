//! The MPI bootstrap under a real `mpirun`: `rdask-jobqueue mpi` and
//! `rdask_jobqueue::mpi::initialize` (this test binary doubles as the MPI program of the
//! latter, see [`mpi_program`]).
//!
//! The MPI is the one these tests were built against (OpenMPI by default; MPICH with
//! `CARGO_TARGET_DIR=target/mpich MPICC=mpicc.mpich`, as `ci/test.sh` does too); its own
//! `mpirun` starts the jobs. Four ranks on CI's two cores: oversubscribed.
// Allowed: tests wait with real deadlines. The sans-IO modules deny it (see clippy.toml).
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::text;

const BIN: &str = env!("CARGO_BIN_EXE_rdask-jobqueue");

/// The MPI these tests were linked with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mpi {
    OpenMpi,
    Mpich,
}

fn linked_mpi() -> Mpi {
    let ldd = Command::new("ldd").arg(BIN).output().expect("ldd runs");
    let libs = String::from_utf8_lossy(&ldd.stdout);
    if libs.contains("libmpich") {
        Mpi::Mpich
    } else {
        assert!(libs.contains("libmpi.so"), "rdask-jobqueue is linked with no MPI library I know:\n{libs}");
        Mpi::OpenMpi
    }
}

impl Mpi {
    fn mpirun(self) -> &'static str {
        match self {
            Mpi::OpenMpi => "mpirun.openmpi",
            Mpi::Mpich => "mpirun.mpich",
        }
    }
}

/// `mpirun -n N` of the linked MPI, allowed to run as root and with more ranks than cores.
fn mpirun(n: usize) -> Command {
    let mpi = linked_mpi();
    let mut c = Command::new(mpi.mpirun());
    if mpi == Mpi::OpenMpi {
        c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1").arg("--oversubscribe");
    }
    c.env("RDASK_LOG", "warn").env("RDASK_CONFIG", "/dev/null").env_remove("RDASK_CLUSTER");
    c.args(["-n", &n.to_string()]);
    c
}

/// `mpirun -n N rdask-jobqueue --home HOME mpi ARGS`.
fn rdask_mpi(n: usize, home: &Path, args: &[&str]) -> Output {
    let mut c = mpirun(n);
    c.arg(BIN).arg("--home").arg(home).arg("mpi").args(args);
    c.output().expect("mpirun runs")
}

/// Waits (a while) until no process mentions `marker` on its command line.
fn no_process_left(marker: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = Command::new("pgrep").args(["-af", &marker.display().to_string()]).output().unwrap();
        let left = String::from_utf8_lossy(&out.stdout).into_owned();
        if left.trim().is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes of the MPI job left running:\n{left}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_job_ends_with_the_clients_exit_code_and_every_rank_ends() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // The client reaches its cluster through the variables `mpi` sets: two workers, tasks run.
    let client = "\"$0\" submit --array 1-20 --stdout none --wait -- true && \"$0\" status | grep -c '^w[0-9]'; exit 3";
    let o = rdask_mpi(4, h, &["--timing", "--", "sh", "-c", client, BIN]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert!(out.contains("20 of 20 tasks finished"), "{out}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().last(), Some("2"), "two workers: {out}");
    assert!(out.contains("2 workers registered"), "the --timing line: {out}");
    no_process_left(h);
    // Rank 1's state directory for the client is gone with the job.
    assert_eq!(std::fs::read_dir(h).unwrap().count(), 0, "{:?}", std::fs::read_dir(h).unwrap().collect::<Vec<_>>());

    // A client that succeeds: the job succeeds.
    let o = rdask_mpi(3, h, &["--", "true"]);
    assert!(o.status.success(), "{}", text(&o));
    no_process_left(h);
    // A client command that cannot start fails like a shell's would.
    let o = rdask_mpi(3, h, &["--", "/no/such/client"]);
    assert_eq!(o.status.code(), Some(127), "{}", text(&o));
    assert!(text(&o).contains("cannot start the client command `/no/such/client`"), "{}", text(&o));
    no_process_left(h);
}

#[cfg(feature = "ucx")]
#[test]
fn the_cluster_can_speak_ucx() {
    let home = tempfile::tempdir().unwrap();
    let client = "echo \"at $RDASK_SCHEDULER\" && \"$0\" submit --array 1-20 --stdout none --wait -- true";
    let o = rdask_mpi(4, home.path(), &["--protocol", "ucx", "--", "sh", "-c", client, BIN]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("at ucx://") && out.contains("20 of 20 tasks finished"), "{out}");
    no_process_left(home.path());
}

#[test]
fn two_ranks_are_refused_with_the_fix() {
    let home = tempfile::tempdir().unwrap();
    let o = rdask_mpi(2, home.path(), &["--", "true"]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("at least 3 MPI ranks") && out.contains("mpirun -n 3"), "{out}");
    no_process_left(home.path());
}

#[test]
fn a_fatal_error_on_a_rank_aborts_the_job_naming_the_rank_and_the_cause() {
    let home = tempfile::tempdir().unwrap();
    let o = rdask_mpi(3, home.path(), &["--interface", "no-such-if0", "--", "sleep", "300"]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains(
            "rank 0 (scheduler) failed: cannot start the scheduler: no IPv4 address on interface `no-such-if0`"
        ),
        "{out}"
    );
    no_process_left(home.path());
}

#[test]
fn a_client_command_that_is_an_mpi_program_is_a_world_of_its_own() {
    // Were it to inherit rank 1's launcher variables, it would take itself for rank 1 (under
    // MPICH, it would hang). Instead it is an MPI job of one rank, which `mpi` refuses.
    let home = tempfile::tempdir().unwrap();
    let h = home.path().display().to_string();
    let o = rdask_mpi(3, home.path(), &["--", BIN, "--home", &h, "mpi", "--", "true"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("this job has 1: use mpirun -n 3 or more"), "{out}");
    no_process_left(home.path());
}

#[test]
fn the_other_mpis_mpirun_is_refused_with_the_fix() {
    // Each rank would be a world of its own (a "singleton"), all of them rank 0.
    let other = match linked_mpi() {
        Mpi::OpenMpi => Mpi::Mpich,
        Mpi::Mpich => Mpi::OpenMpi,
    };
    let home = tempfile::tempdir().unwrap();
    let mut c = Command::new(other.mpirun());
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1").env("RDASK_LOG", "warn");
    if other == Mpi::OpenMpi {
        c.arg("--oversubscribe");
    }
    let o = c.args(["-n", "3", BIN, "--home"]).arg(home.path()).args(["mpi", "--", "true"]).output().unwrap();
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("MPI sees 1 rank but") && out.contains("start it with the mpirun of the MPI"), "{out}");
    no_process_left(home.path());
}

#[test]
fn a_worker_rank_killed_by_a_signal_ends_the_job() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // Two long tasks run (named after the home directory, see below); then a task kills its
    // worker (the task's parent) with SIGKILL. The client would wait 300 s.
    let client = "\"$0\" submit --array 1-2 --stdout none -- sh -c 'sleep 300' \"$1/task\" && sleep 1 && \
                  \"$0\" submit -- sh -c 'kill -9 $PPID' && sleep 300";
    let home_arg = h.display().to_string();
    let start = Instant::now();
    let o = rdask_mpi(4, h, &["--", "sh", "-c", client, BIN, &home_arg]);
    let took = start.elapsed();
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    // Not left to the client's 300 s, nor held up by the tasks still running (which must not
    // keep MPICH's launcher waiting): mpirun or rank 0 (which names the rank) ends the job.
    assert!(took < Duration::from_secs(60), "the job lingered {took:?}: {out}");
    eprintln!("a worker rank killed by SIGKILL: the job ended after {took:?} in all");
    // Known limit: command tasks of a worker killed outright outlive it (and MPICH kills every
    // rank at once); end this test's own.
    let left = Command::new("pgrep").args(["-f", &format!("{}/task", h.display())]).output().unwrap();
    for pid in String::from_utf8_lossy(&left.stdout).split_whitespace() {
        // Each task is the leader of its process group.
        eprintln!("ending task process group {pid}, left by the killed job");
        let _ = Command::new("kill").args(["-9", "--", &format!("-{pid}")]).status();
    }
    no_process_left(h);
}

#[test]
fn a_frozen_worker_rank_is_named_and_the_job_aborted() {
    // mpirun sees nothing wrong with a stopped process; rank 0 sees its heartbeats stop.
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let client = "\"$0\" submit -- sh -c 'kill -STOP $PPID' && sleep 300";
    let start = Instant::now();
    let o = rdask_mpi(4, h, &["--", "sh", "-c", client, BIN]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("rank 0 (scheduler) failed: worker rank") && out.contains("left the cluster"), "{out}");
    assert!(start.elapsed() < Duration::from_secs(60), "the job lingered {:?}: {out}", start.elapsed());
    no_process_left(h);
}

#[test]
fn the_client_rank_killed_by_a_signal_ends_the_job() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let start = Instant::now();
    // The client's own processes (named after the home directory, for the check below) go too.
    let name = h.join("client").display().to_string();
    let o = rdask_mpi(3, h, &["--", "sh", "-c", "kill -9 $PPID; sleep 300", &name]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(start.elapsed() < Duration::from_secs(60), "the job lingered {:?}: {}", start.elapsed(), text(&o));
    no_process_left(h);
}

#[test]
fn mpirun_inside_an_sbatch_job_completes() {
    if !Path::new("/usr/bin/sbatch").exists() {
        assert!(std::env::var("CI").is_err(), "sbatch is missing under CI: ci/setup-slurm.sh should have installed it");
        eprintln!("skipped: sbatch not found (run `ci/setup-slurm.sh` as root to get it)");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let out = h.join("job.out");
    // Two nodes, so that ranks meet over the network; the client checks its two workers.
    let script = format!(
        r#"#!/bin/bash
#SBATCH -N 2
#SBATCH --ntasks-per-node=2
#SBATCH -J rdask-mpi-test-{pid}
#SBATCH -t 5
#SBATCH --mem-per-cpu=200
#SBATCH -o {out}
# These test "nodes" share one host: OpenMPI must not take that for shared memory.
export OMPI_MCA_btl=self,tcp OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 RDASK_LOG=warn
echo "nodes $SLURM_JOB_NODELIST"
{mpirun} -n "$SLURM_NTASKS" '{bin}' --home '{home}' mpi -- \
    sh -c '"$0" submit --array 1-8 --stdout none --wait -- true && "$0" status | grep -c "^w[0-9]"; exit 5' '{bin}'
"#,
        pid = std::process::id(),
        out = out.display(),
        mpirun = linked_mpi().mpirun(),
        bin = BIN,
        home = h.display(),
    );
    std::fs::write(h.join("job.sh"), script).unwrap();
    let o =
        Command::new("sbatch").arg("--wait").arg(h.join("job.sh")).env("RDASK_CONFIG", "/dev/null").output().unwrap();
    let log = std::fs::read_to_string(&out).unwrap_or_default();
    // sbatch --wait exits with the job's code, which is the client's.
    assert_eq!(o.status.code(), Some(5), "{}\njob output:\n{log}", text(&o));
    assert!(log.contains("nodes n") && log.contains("8 of 8 tasks finished"), "{log}");
    assert!(log.lines().any(|l| l == "2"), "two workers: {log}");
    no_process_left(h);
}

/// Runs this test binary on `n` ranks as the MPI program [`mpi_program`] playing `scenario`;
/// returns its output, and how long the job went on after the first line containing
/// `watch_for` appeared on stderr.
fn run_program(n: usize, scenario: &str, watch_for: &str) -> (Output, Option<Duration>) {
    let marker = tempfile::tempdir().unwrap();
    let mut c = mpirun(n);
    // `--skip MARKER` skips nothing; it only marks the ranks' command lines for the check below.
    c.arg(std::env::current_exe().unwrap()).args(["--exact", "mpi_program", "--nocapture", "--skip"]);
    c.arg(marker.path()).env("RDASK_MPI_TEST_PROGRAM", scenario);
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let watch_for = watch_for.to_string();
    let reader = std::thread::spawn(move || {
        let mut seen = None;
        let mut all = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            if seen.is_none() && line.contains(&watch_for) {
                seen = Some(Instant::now());
            }
            all.push_str(&line);
            all.push('\n');
        }
        (seen, all)
    });
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let status = child.wait().unwrap();
    let ended = Instant::now();
    let (seen, stderr) = reader.join().unwrap();
    no_process_left(marker.path());
    let o = Output { status, stdout: stdout.into_bytes(), stderr: stderr.into_bytes() };
    (o, seen.map(|t| ended.duration_since(t)))
}

#[test]
fn the_library_call_makes_a_cluster_of_the_program_and_ends_cleanly() {
    let (o, _) = run_program(4, "graph", "never");
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("squares: [0, 1, 4, 9, 16, 25, 36, 49]"), "{out}");
    // A panic inside a task function is the task's failure, not the rank's.
    assert!(out.contains("task failed as expected:") && out.contains("a task that panics"), "{out}");
}

#[test]
fn the_library_calls_finish_gives_the_jobs_exit_code() {
    let (o, _) = run_program(4, "finish-4", "never");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(4), "{out}");
    assert!(out.contains("square of 12: 144"), "{out}");
}

#[test]
fn a_worker_rank_that_panics_aborts_the_job_within_seconds() {
    let (o, after) = run_program(4, "worker-panic", "rdask mpi: rank");
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("(worker) panicked: a worker thread panics on purpose"), "{out}");
    let after = after.expect("the rank's message was seen");
    // The client would have waited for its task forever.
    assert!(after < Duration::from_secs(10), "the job went on {after:?} after the panic: {out}");
    eprintln!("a worker rank panicked: the job ended {after:?} later");
}

/// The MPI program of the tests above (not a test by itself: without RDASK_MPI_TEST_PROGRAM it
/// does nothing). Ranks 0 and 2.. never come back from `initialize`.
#[test]
fn mpi_program() {
    let Ok(scenario) = std::env::var("RDASK_MPI_TEST_PROGRAM") else { return };
    let mut registry = rdask::Registry::new();
    registry.register("square", |x: u64| x * x);
    registry.register("panic", |_: u64| -> u64 { panic!("a task that panics") });
    registry.register("panic_in_a_thread", |_: u64| -> u64 {
        // A panic outside any task function: the worker rank itself is broken.
        let _ = std::thread::spawn(|| panic!("a worker thread panics on purpose")).join();
        std::thread::sleep(Duration::from_secs(300));
        0
    });
    let cluster = rdask_jobqueue::mpi::initialize(&registry).expect("started by mpirun");
    assert_eq!(cluster.workers(), 2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = rdask::Client::connect(cluster.info()).await.unwrap();
        match scenario.as_str() {
            "graph" => {
                let mut g = rdask::Graph::new();
                let tasks: Vec<_> = (0..8u64).map(|i| g.call("square", &i)).collect();
                let job = client.submit(g).await.unwrap();
                let squares: Vec<u64> = client.gather(&job, &tasks).await.unwrap();
                println!("squares: {squares:?}");
                let mut g = rdask::Graph::new();
                let t = g.call("panic", &0u64);
                let job = client.submit(g).await.unwrap();
                let err = client.gather::<u64>(&job, &[t]).await.unwrap_err();
                println!("task failed as expected: {err}");
            }
            "worker-panic" => {
                let mut g = rdask::Graph::new();
                let t = g.call("panic_in_a_thread", &0u64);
                let job = client.submit(g).await.unwrap();
                let r = client.gather::<u64>(&job, &[t]).await;
                panic!("the job should have been aborted, but the client got {r:?}");
            }
            "finish-4" => {
                let mut g = rdask::Graph::new();
                let t = g.call("square", &12u64);
                let job = client.submit(g).await.unwrap();
                let r: Vec<u64> = client.gather(&job, &[t]).await.unwrap();
                println!("square of 12: {}", r[0]);
            }
            other => panic!("unknown scenario {other}"),
        }
    });
    drop(rt);
    if scenario == "finish-4" {
        cluster.finish(4);
    }
    drop(cluster);
}
