//! The deconvolution example under a real `mpirun` (the MPI it was built against: OpenMPI by
//! default, MPICH with `CARGO_TARGET_DIR=target/mpich MPICC=mpicc.mpich`): four ranks, so two
//! workers, oversubscribed on CI's two cores.
// Allowed: tests wait with real deadlines. The sans-IO modules deny it (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_deconvolution");

/// `mpirun -n N` of the MPI the example is linked with.
fn mpirun(n: usize) -> Command {
    let ldd = Command::new("ldd").arg(BIN).output().expect("ldd runs");
    let libs = String::from_utf8_lossy(&ldd.stdout);
    let mut c;
    if libs.contains("libmpich") {
        c = Command::new("mpirun.mpich");
    } else {
        assert!(libs.contains("libmpi.so"), "the example is linked with no MPI library I know:\n{libs}");
        c = Command::new("mpirun.openmpi");
        c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1").arg("--oversubscribe");
    }
    c.env("RDASK_LOG", "warn").env_remove("RDASK_SCHEDULER").args(["-n", &n.to_string()]);
    c
}

#[test]
fn deconvolution_under_mpirun_gives_the_verified_result() {
    let start = Instant::now();
    let o = mpirun(4)
        .arg(BIN)
        .args(["--size", "32", "--chunk", "16", "--depth", "4", "--iterations", "5"])
        .output()
        .unwrap();
    let out = format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{out}");
    // Rank 1 alone runs the client part, on the MPI job's two workers.
    assert_eq!(out.matches("cluster of 2 workers up").count(), 1, "{out}");
    assert!(out.contains("verified: the cluster's result equals the single-process result"), "{out}");
    eprintln!("mpirun -n 4 deconvolution: {:?}", start.elapsed());
    // Every rank ended with the job (no other test runs this binary, from this target directory).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = Command::new("pgrep").args(["-f", &format!("^{BIN}")]).output().unwrap();
        if left.stdout.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "ranks left running: {}", String::from_utf8_lossy(&left.stdout));
        std::thread::sleep(Duration::from_millis(100));
    }
}
