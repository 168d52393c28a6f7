//! Running `rdask-jobqueue` as a user would, for the integration tests.
#![allow(dead_code)] // each test crate uses its own subset

use std::path::Path;
use std::process::{Command, Output};

/// Runs `rdask-jobqueue ARGS` with its state under `home`, untouched by the caller's own
/// cluster name or configuration files.
pub fn rdask(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rdask-jobqueue"))
        .env("RDASK_HOME", home)
        .env("RDASK_CONFIG", "/dev/null")
        .env_remove("RDASK_CLUSTER")
        .args(args)
        .output()
        .expect("rdask-jobqueue runs")
}

/// Exit status, stdout and stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs it and asserts success; returns stdout.
pub fn ok(home: &Path, args: &[&str]) -> String {
    let o = rdask(home, args);
    assert!(o.status.success(), "{args:?} failed: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}
