//! Many real worker processes on one scheduler, and what a scheduler does at its open-file
//! limit: it says which limit and how to raise it, and an `accept` out of descriptors backs off
//! and logs once instead of spinning.
//!
//! Own harness (`harness = false`): the workers are this binary again (`RDASK_ROLE=worker`),
//! and the limit tests run this binary as a child under `ulimit -n` (`--child …`).

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdask::protocol::CommandSpec;
use rdask::{Client, ClusterInfo, LocalCluster, Registry};

/// How many worker processes the fleet test starts. 200 on CI's 2 cores registers in seconds;
/// `RDASK_FLEET_TEST_WORKERS` sets another count.
fn fleet_size() -> usize {
    std::env::var("RDASK_FLEET_TEST_WORKERS").ok().and_then(|v| v.parse().ok()).unwrap_or(200)
}

type TestFn = fn();

fn main() {
    rdask::worker_main_if_requested(&Registry::new());
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--child-local-cluster") => child_local_cluster(args[1].parse().unwrap()),
        Some("--child-scheduler") => child_scheduler(),
        _ => {}
    }
    let filter: Option<String> = args.first().filter(|a| !a.starts_with('-')).cloned();
    let tests: Vec<(&str, TestFn)> = vec![
        ("many_worker_processes_register_and_share_an_array", many_workers_share_an_array),
        ("a_local_cluster_beyond_the_open_file_limit_says_which_limit", local_cluster_beyond_the_limit),
        ("a_scheduler_out_of_descriptors_logs_once_and_recovers", scheduler_out_of_descriptors),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, f) in tests {
        if filter.as_deref().is_some_and(|p| !name.contains(p)) {
            continue;
        }
        let start = Instant::now();
        match std::panic::catch_unwind(f) {
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

fn sleep_command(seconds: &str) -> CommandSpec {
    CommandSpec {
        argv: vec!["sleep".into(), seconds.into()],
        env: vec![],
        cwd: None,
        stdout: None,
        stderr: None,
        stream: None,
    }
}

/// `fleet_size()` worker processes of one slot register with one scheduler; an array of two
/// short commands per worker runs to completion on all of them; after shutdown no worker
/// process is left.
fn many_workers_share_an_array() {
    let n = fleet_size();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pids = rt.block_on(async {
        let mut cluster = LocalCluster::start(0, 1).await.unwrap();
        for _ in 0..n {
            cluster.add_worker(1).unwrap();
        }
        let pids = cluster.worker_pids();
        let client = cluster.client(n).await.expect("every worker registers");
        let tasks = 2 * n as u32;
        let job = client.submit_array("fleet", sleep_command("0.3"), vec![(1, tasks)], 1).await.unwrap();
        let out = client.wait(job).await.unwrap();
        assert_eq!((out.finished, out.failed.len()), (tasks, 0), "{:?}", out.failed.first());
        let status = client.status().await.unwrap();
        assert_eq!(status.workers.len(), n, "a worker left during the array");
        assert_eq!(status.workers.iter().map(|w| w.finished).sum::<u64>(), u64::from(tasks));
        let idle = status.workers.iter().filter(|w| w.finished == 0).count();
        assert_eq!(idle, 0, "{idle} of {n} workers ran none of {tasks} tasks");
        cluster.shutdown().await;
        pids
    });
    drop(rt);
    let left: Vec<u32> = pids.into_iter().filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists()).collect();
    assert!(left.is_empty(), "worker processes left after shutdown: {left:?}");
}

/// This test binary again, under `sh -c 'ulimit -n LIMIT; exec …'`: soft and hard limit both.
fn under_limit(limit: u32, args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\"")).arg(std::env::current_exe().unwrap());
    c.args(args);
    c
}

/// Child: a local cluster of `workers` workers; prints the error and exits 3 if it is refused.
fn child_local_cluster(workers: usize) -> ! {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let code = rt.block_on(async {
        match LocalCluster::start(workers, 1).await {
            Ok(c) => {
                c.shutdown().await;
                0
            }
            Err(e) => {
                eprintln!("{e}");
                let typed = e.get_ref().and_then(|e| e.downcast_ref::<rdask::limits::LimitError>());
                if matches!(typed, Some(rdask::limits::LimitError::TooLow { .. })) {
                    3
                } else {
                    4
                }
            }
        }
    });
    std::process::exit(code)
}

/// Asked for more workers than its hard open-file limit can hold, a local cluster refuses
/// to start, with an error that names RLIMIT_NOFILE and says how to raise it, and starts
/// no worker.
fn local_cluster_beyond_the_limit() {
    let out = under_limit(100, &["--child-local-cluster", "200"]).stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "not refused with the limit error: {err}");
    for part in ["RLIMIT_NOFILE", "hard limit 100", "200 workers", "ulimit -Hn", "limits.conf"] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    // Within the limit, the same child starts its cluster (the check is not a blanket refusal).
    let ok = under_limit(100, &["--child-local-cluster", "2"]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
}

/// Child: a scheduler on 127.0.0.1; prints its address and secret, runs until stdin closes.
fn child_scheduler() -> ! {
    rdask::init_logging();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let addr: rdask::Address = "tcp://127.0.0.1:0".parse().unwrap();
        let secret = rdask::Secret::generate();
        let server = rdask::server::bind(&addr, secret.clone(), Default::default()).await.unwrap();
        println!("{} {}", server.address, secret.to_hex());
        let _ = tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await;
        server.abort();
        server.wait().await;
    });
    std::process::exit(0)
}

/// A scheduler whose descriptors run out (more connections than `ulimit -n 40`) logs the
/// limit once per run of failures, not once per failed accept, keeps running, and accepts
/// again once connections close.
fn scheduler_out_of_descriptors() {
    let mut child = under_limit(40, &["--child-scheduler"])
        .env("RDASK_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let (addr, secret) = line.trim().split_once(' ').expect("address and secret");
    let info = ClusterInfo { addresses: vec![addr.parse().unwrap()], secret: rdask::Secret::from_hex(secret).unwrap() };
    let host_port = addr.strip_prefix("tcp://").unwrap().to_string();
    // 60 idle connections (no handshake) outnumber the 40 descriptors: accept fails with EMFILE
    // for about a second of backoff rounds.
    let idle: Vec<std::net::TcpStream> = (0..60).map(|_| std::net::TcpStream::connect(&host_port).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(1500));
    drop(idle);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let workers = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout(Duration::from_secs(5), Client::connect(&info)).await {
                Ok(Ok(c)) => break c.status().await.unwrap().workers.len(),
                _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                other => panic!("the scheduler accepts no client after its descriptors came back: {other:?}"),
            }
        }
    });
    assert_eq!(workers, 0);
    drop(child.stdin.take()); // the child's scheduler stops
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {err}");
    // Once per run of failures (the backlog of closed connections can fill the table again
    // once), each run ended by a recovery; the old loop logged every failed accept, 20 a second.
    let exhausted = err.lines().filter(|l| l.contains("out of file descriptors")).count();
    let recovered = err.lines().filter(|l| l.contains("accepting connections again")).count();
    assert!((1..=3).contains(&exhausted), "{exhausted} times:\n{err}");
    assert_eq!(exhausted, recovered, "a run of failures not logged once, or not ended:\n{err}");
    assert!(err.contains("RLIMIT_NOFILE 40 (hard limit 40)"), "{err}");
}
