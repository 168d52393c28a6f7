//! The README's main job, run as a user runs it: the example binary on a local cluster.

use std::process::Command;

#[test]
fn deconvolution_on_a_local_cluster_is_verified() {
    let out = Command::new(env!("CARGO_BIN_EXE_deconvolution"))
        .args(["--size", "40", "--chunk", "20", "--iterations", "5", "--workers", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("8 chunks"), "{stdout}");
    assert!(stdout.contains("verified: the cluster's result equals the single-process result"), "{stdout}");
}

#[test]
fn bad_option_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_deconvolution")).args(["--size", "big"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--size needs a positive whole number"), "{stderr}");
}

#[test]
fn readme_quickstart_prints_the_sum_of_squares() {
    let out = Command::new(env!("CARGO_BIN_EXE_quickstart")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), (0..100u64).map(|i| i * i).sum::<u64>().to_string());
}
