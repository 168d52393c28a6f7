//! `rdask-jobqueue up --protocol ucx`: scheduler, workers and the CLI's client over UCX.
#![cfg(feature = "ucx")]

use std::path::Path;
use std::process::{Command, Output};

fn rdask(home: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rdask-jobqueue"))
        .env("RDASK_HOME", home)
        .env("RDASK_CONFIG", "/dev/null")
        .env_remove("RDASK_CLUSTER")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("rdask-jobqueue runs")
}

fn ok(home: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let o = rdask(home, env, args);
    assert!(
        o.status.success(),
        "{args:?} failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn up_submit_down(env: &[(&str, &str)], up: &[&str]) {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let out = ok(h, env, up);
    assert!(out.contains("is up"), "{out}");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(h.join("default/scheduler.json")).unwrap()).unwrap();
    let addresses = file["addresses"].as_array().unwrap();
    assert!(addresses.iter().all(|a| a.as_str().unwrap().starts_with("ucx://")), "{addresses:?}");
    ok(h, env, &["submit", "--array", "1-20", "--", "sh", "-c", "exit 0"]);
    let waited = ok(h, env, &["wait"]);
    assert!(waited.contains("20 of 20 tasks finished, 0 failed"), "{waited}");
    let status: serde_json::Value = serde_json::from_str(&ok(h, env, &["status", "--output", "json"])).unwrap();
    let workers = status["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{status}");
    for w in workers {
        let data = w["info"]["data_address"].as_str().unwrap();
        assert!(data.starts_with("ucx://"), "the data server follows the scheduler's protocol: {data}");
    }
    ok(h, env, &["down"]);
}

#[test]
fn up_with_protocol_ucx_runs_tasks_over_ucx_tcp() {
    up_submit_down(&[("UCX_TLS", "tcp")], &["up", "--workers", "2", "--protocol", "ucx"]);
}

#[test]
fn protocol_from_the_environment_over_shared_memory() {
    // RDASK_PROTOCOL is the `protocol` configuration key; UCX_TLS passes through to UCX.
    up_submit_down(&[("UCX_TLS", "sm,self,tcp"), ("RDASK_PROTOCOL", "ucx")], &["up", "--workers", "2"]);
}

#[test]
fn a_ucx_setting_ucx_refuses_stops_up_with_ucx_words() {
    let home = tempfile::tempdir().unwrap();
    for env in [
        [("UCX_TLS", "no_such_transport"), ("UCX_NET_DEVICES", "all")],
        [("UCX_TLS", "tcp"), ("UCX_NET_DEVICES", "mlx5_9:1")],
    ] {
        let o = rdask(home.path(), &env, &["up", "--workers", "1", "--protocol", "ucx"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{err}");
        // UCX's own log line and its status message, after what rdask was doing.
        assert!(err.contains("no usable transports/devices"), "{err}");
        assert!(err.contains("UCX cannot start") && err.contains("No such device"), "{err}");
        assert!(!err.contains("port in use"), "{err}");
    }
}
