//! End-to-end tests of a local cluster: a real scheduler, real worker processes, TCP.
//!
//! The workers are this test binary started again with `RDASK_ROLE=worker`, so the
//! harness is our own (`harness = false`): `main` must turn into a worker first.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use rdask::protocol::{CommandSpec, ErrorKind};
use rdask::{Client, ClusterInfo, Graph, LocalCluster, Registry};

fn registry() -> Registry {
    let mut r = common::base_registry();
    r.register("sleep_ms", |ms: u64| {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    });
    r.register("boom", |msg: String| -> u64 { panic!("{msg}") });
    r.register("pid", |_: u64| std::process::id());
    r
}

type TestFn = fn() -> Pin<Box<dyn Future<Output = ()>>>;

fn main() {
    let registry = registry();
    rdask::worker_main_if_requested(&registry);
    let filter: Option<String> = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let tests: Vec<(&str, TestFn)> = vec![
        ("graph_of_10k_tasks_gives_the_right_sum", || Box::pin(graph_of_10k_tasks())),
        ("killed_worker_mid_graph_still_completes", || Box::pin(killed_worker_mid_graph())),
        ("sigterm_lets_a_busy_worker_finish_then_exit", || Box::pin(sigterm_graceful())),
        ("retired_worker_hands_its_results_over_and_exits", || Box::pin(retired_worker_hands_over())),
        ("panic_reaches_the_client_with_its_text", || Box::pin(panic_reaches_client())),
        ("command_array_of_1000_exit_codes_and_outputs", || Box::pin(command_array_1000())),
        ("missing_executable_is_a_clear_task_error", || Box::pin(missing_executable())),
        ("client_without_the_secret_is_refused", || Box::pin(wrong_secret_refused())),
        ("garbage_frames_do_not_harm_the_scheduler", || Box::pin(garbage_frames())),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, f) in tests {
        if filter.as_deref().is_some_and(|p| !name.contains(p)) {
            continue;
        }
        let start = Instant::now();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(f())));
        drop(rt);
        match r {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({:.1} s)", start.elapsed().as_secs_f64());
            }
            Err(_) => {
                failed += 1;
                println!("test {name} ... FAILED");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

/// A graph of 10,000 `inc` tasks reduced by a tree of `sum` tasks.
async fn graph_of_10k_tasks() {
    let cluster = LocalCluster::start(2, 2).await.unwrap();
    let client = cluster.client(2).await.unwrap();
    let mut g = Graph::new();
    let leaves: Vec<_> = (0..10_000u64).map(|i| g.call("inc", &i)).collect();
    let mut level = leaves;
    while level.len() > 1 {
        level = level.chunks(10).map(|c| g.call_with("sum", &(), c)).collect();
    }
    assert!(g.len() > 11_000);
    let job = client.submit(g).await.unwrap();
    let out: Vec<u64> = client.gather(&job, &level).await.unwrap();
    assert_eq!(out, vec![(1..=10_000u64).sum::<u64>()]);
    cluster.shutdown().await;
}

/// SIGKILL one of two workers while a graph runs over TCP: the graph still completes correctly.
async fn killed_worker_mid_graph() {
    common::killed_worker_mid_graph(rdask_transport::Scheme::Tcp).await;
}

async fn panic_reaches_client() {
    let cluster = LocalCluster::start(1, 1).await.unwrap();
    let client = cluster.client(1).await.unwrap();
    let mut g = Graph::new();
    let bad = g.call("boom", "the sky fell");
    let after = g.call_with("sum", &(), &[bad]);
    let job = client.submit(g).await.unwrap();
    let err = client.gather::<u64>(&job, &[after]).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("the sky fell"), "{text}");
    match err {
        rdask::ClientError::TaskFailed { error, .. } => assert!(matches!(error.kind, ErrorKind::DependencyFailed(_))),
        other => panic!("unexpected {other:?}"),
    }
    cluster.shutdown().await;
}

async fn command_array_1000() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(2, 2).await.unwrap();
    let client = cluster.client(2).await.unwrap();
    let out = dir.path().join("out");
    let spec = CommandSpec {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo task-%{TASK_ID} $RDASK_TASK_ID; exit $((RDASK_TASK_ID % 7 == 0 ? 3 : 0))".into(),
        ],
        env: vec![],
        cwd: None,
        stdout: Some(format!("{}/%{{TASK_ID}}.out", out.display())),
        stderr: None,
        stream: None,
    };
    let job = client.submit_array("array", spec, vec![(1, 1000)], 1).await.unwrap();
    let outcome = client.wait(job).await.unwrap();
    assert_eq!(outcome.tasks, 1000);
    let failed: Vec<u32> = outcome.failed.iter().map(|(i, _)| *i).collect();
    let expected: Vec<u32> = (1..=1000).filter(|i| i % 7 == 0).collect();
    assert_eq!(failed, expected);
    assert!(outcome.failed.iter().all(|(_, e)| e.kind == ErrorKind::ExitCode(3)));
    assert_eq!(outcome.finished as usize, 1000 - expected.len());
    for i in 1..=1000 {
        let text = std::fs::read_to_string(out.join(format!("{i}.out"))).unwrap();
        assert_eq!(text, format!("task-{i} {i}\n"));
    }
    cluster.shutdown().await;
}

async fn missing_executable() {
    let cluster = LocalCluster::start(1, 1).await.unwrap();
    let client = cluster.client(1).await.unwrap();
    let spec = CommandSpec {
        argv: vec!["/no/such/program".into()],
        env: vec![],
        cwd: None,
        stdout: None,
        stderr: None,
        stream: None,
    };
    let job = client.submit_array("missing", spec, vec![(0, 0)], 1).await.unwrap();
    let outcome = client.wait(job).await.unwrap();
    assert_eq!(outcome.failed.len(), 1);
    let e = &outcome.failed[0].1;
    assert_eq!(e.kind, ErrorKind::Spawn);
    assert!(e.message.contains("/no/such/program"), "{}", e.message);
    cluster.shutdown().await;
}

async fn wrong_secret_refused() {
    let cluster = LocalCluster::start(1, 1).await.unwrap();
    let client = cluster.client(1).await.unwrap();
    let intruder = ClusterInfo { addresses: cluster.info().addresses.clone(), secret: rdask::Secret::generate() };
    let err = Client::connect(&intruder).await.unwrap_err();
    assert!(err.to_string().contains("secret"), "{err}");
    // The cluster still works, and still has exactly its one worker.
    let mut g = Graph::new();
    let t = g.call("inc", &41u64);
    let job = client.submit(g).await.unwrap();
    assert_eq!(client.gather::<u64>(&job, &[t]).await.unwrap(), vec![42]);
    assert_eq!(client.status().await.unwrap().workers.len(), 1);
    cluster.shutdown().await;
}

async fn garbage_frames() {
    use tokio::io::AsyncWriteExt;
    let cluster = LocalCluster::start(1, 1).await.unwrap();
    let client = cluster.client(1).await.unwrap();
    let addr = cluster.info().addresses[0].host_port.clone();
    // Not even a handshake: random bytes, a huge length prefix, a truncated frame.
    for junk in [
        vec![0xffu8; 64],
        vec![0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0],
        vec![5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    ] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let _ = s.write_all(&junk).await;
        drop(s);
    }
    // An authenticated peer that then sends undecodable messages is dropped.
    let mut conn = rdask_transport::connect(&cluster.info().addresses[0]).await.unwrap();
    rdask_transport::auth::connect(&mut conn, &cluster.info().secret).await.unwrap();
    conn.send_now(rdask_transport::Frame::new(vec![0xff; 32])).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.rx.recv()).await.unwrap();
    assert!(matches!(closed, Ok(None) | Err(_)), "the scheduler should drop the connection");
    let mut g = Graph::new();
    let t = g.call("inc", &1u64);
    let job = client.submit(g).await.unwrap();
    assert_eq!(client.gather::<u64>(&job, &[t]).await.unwrap(), vec![2]);
    assert_eq!(client.status().await.unwrap().workers.len(), 1);
    cluster.shutdown().await;
}

/// SIGTERM to a busy worker: it finishes its task, takes no new one, and exits cleanly.
async fn sigterm_graceful() {
    let mut cluster = LocalCluster::start(2, 1).await.unwrap();
    let client = cluster.client(2).await.unwrap();
    let mut g = Graph::new();
    let t = g.call("sleep_ms", &800u64);
    let job = client.submit(g).await.unwrap();
    let busy = loop {
        let s = client.status().await.unwrap();
        if let Some(w) = s.workers.iter().find(|w| w.assigned > 0) {
            break w.info.pid;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(busy as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let out: Vec<u64> = client.gather(&job, &[t]).await.unwrap();
    assert_eq!(out, vec![800]);
    let status = cluster.wait_worker(busy, Duration::from_secs(10)).expect("the worker exits");
    assert!(status.success(), "a retiring worker exits with 0, got {status:?}");
    cluster.shutdown().await;
}

/// A retired worker copies the results only it holds to another worker before it exits: the
/// client still gets them, computed by the retired worker (so not recomputed).
async fn retired_worker_hands_over() {
    let mut cluster = LocalCluster::start(2, 1).await.unwrap();
    let client = cluster.client(2).await.unwrap();
    let mut g = Graph::new();
    let tasks: Vec<_> = (0..6u64).map(|i| g.call("pid", &i)).collect();
    let job = client.submit(g).await.unwrap();
    client.wait(job.id).await.unwrap();
    let s = client.status().await.unwrap();
    let holder = s.workers.iter().find(|w| w.holding > 0).expect("a worker holds results").clone();
    assert_eq!(client.retire(vec![holder.id]).await.unwrap(), Ok(()));
    let status = cluster.wait_worker(holder.info.pid, Duration::from_secs(10)).expect("the retired worker exits");
    assert!(status.success(), "{status:?}");
    let s = client.status().await.unwrap();
    assert_eq!(s.workers.len(), 1);
    assert_eq!(s.workers[0].holding, 6, "every result is on the remaining worker");
    let pids: Vec<u32> = client.gather(&job, &tasks).await.unwrap();
    assert!(pids.contains(&holder.info.pid), "results computed by the retired worker survive it: {pids:?}");
    // The last worker holds wanted results: it is not retired.
    let refused = client.retire(vec![s.workers[0].id]).await.unwrap();
    assert!(refused.is_err_and(|e| e.kind == rdask::protocol::RefusalKind::Busy && e.message.contains("still wanted")));
    cluster.shutdown().await;
}
