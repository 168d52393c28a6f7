//! A function-task DAG end to end over UCX: a real scheduler, real worker processes, UCX for
//! every connection (client, scheduler, workers' data servers), once with UCX's tcp transport
//! and once with shared memory; and a worker killed mid-graph (its UCX connections die).
//!
//! UCX reads `UCX_TLS` once per process, so `main` runs each transport in a child process of
//! its own (this binary again, with `UCX_TLS` set); the workers are this binary too
//! (`RDASK_ROLE=worker`) and inherit it.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use rdask::{Graph, LocalCluster, Registry};
use rdask_transport::Bytes;
use rdask_transport::Scheme;

fn registry() -> Registry {
    let mut r = common::base_registry();
    // A raw result of `n` bytes (a pattern derived from `seed`), moved without encoding.
    r.register_raw("blob", |args, _| {
        let (n, seed): (u64, u64) = postcard::from_bytes(args).map_err(|e| e.to_string())?;
        Ok(blob(n as usize, seed))
    });
    // Checks its raw inputs byte for byte against the pattern; returns their total size.
    r.register_raw("check", |args, inputs| {
        let seeds: Vec<u64> = postcard::from_bytes(args).map_err(|e| e.to_string())?;
        let mut total = 0u64;
        for (b, seed) in inputs.iter().zip(seeds) {
            if *b != blob(b.len(), seed) {
                return Err(format!("input of {} bytes (seed {seed}) is corrupt", b.len()));
            }
            total += b.len() as u64;
        }
        Ok(Bytes::from(postcard::to_stdvec(&total).expect("encodes")))
    });
    r
}

fn blob(n: usize, seed: u64) -> Bytes {
    let mut v = Vec::with_capacity(n + 8);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v.into()
}

/// UCX_TLS and RDASK_UCX_ERROR_MODE of each run. A listener needs UCX's tcp connection
/// manager, so the shared-memory run keeps `tcp` for connection setup; data between processes
/// then goes through shared memory (posix/sysv) and CMA, which UCX 1.13 gives client-server
/// endpoints only without peer-failure handling (with it, that run would be tcp again).
const RUNS: [(&str, &str, &str); 2] = [("ucx_tcp", "tcp", "peer"), ("ucx_shared_memory", "sm,self,tcp", "none")];
const CHILD: &str = "RDASK_UCX_CLUSTER_TEST";

fn main() {
    let registry = registry();
    rdask::worker_main_if_requested(&registry);
    if std::env::var(CHILD).is_ok() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(dag_over_ucx());
        rt.block_on(common::killed_worker_mid_graph(Scheme::Ucx));
        return;
    }
    let filter: Option<String> = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let (mut passed, mut failed) = (0, 0);
    for (name, tls, mode) in RUNS {
        let name = format!("function_dag_and_a_killed_worker_over_{name}");
        if filter.as_deref().is_some_and(|p| !name.contains(p)) {
            continue;
        }
        let start = Instant::now();
        let status = Command::new(std::env::current_exe().unwrap())
            .env(CHILD, "1")
            .env("UCX_TLS", tls)
            .env("RDASK_UCX_ERROR_MODE", mode)
            .status()
            .unwrap();
        if status.success() {
            passed += 1;
            println!("test {name} ... ok ({:.1} s)", start.elapsed().as_secs_f64());
        } else {
            failed += 1;
            println!("test {name} ... FAILED ({status})");
        }
    }
    println!("{passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

/// A tree of small tasks, and large raw results that move worker to worker into a task on
/// another worker, checked byte for byte there and gathered by the client.
async fn dag_over_ucx() {
    let cluster = LocalCluster::start_on(Scheme::Ucx, 2, 1).await.unwrap();
    assert!(cluster.info().addresses[0].to_string().starts_with("ucx://"));
    let client = cluster.client(2).await.unwrap();

    let mut g = Graph::new();
    let leaves: Vec<_> = (0..1000u64).map(|i| g.call("inc", &i)).collect();
    let mut level = leaves;
    while level.len() > 1 {
        level = level.chunks(10).map(|c| g.call_with("sum", &(), c)).collect();
    }
    // Blobs of several size classes; with two one-slot workers, inputs of `check` come from both.
    let sizes: [u64; 6] = [0, 1, 8191, 8193, 1 << 20, 64 << 20];
    let blobs: Vec<_> = sizes.iter().enumerate().map(|(i, &n)| g.call("blob", &(n, i as u64 + 1))).collect();
    let seeds: Vec<u64> = (1..=sizes.len() as u64).collect();
    let checked = g.call_with("check", &seeds, &blobs);
    let big = blobs[5];
    g.keep(big);
    let job = client.submit(g).await.unwrap();

    let sum: Vec<u64> = client.gather(&job, &level).await.unwrap();
    assert_eq!(sum, vec![(1..=1000u64).sum::<u64>()]);
    let total: Vec<u64> = client.gather(&job, &[checked]).await.unwrap();
    assert_eq!(total, vec![sizes.iter().sum::<u64>()]);
    let raw = client.gather_raw(&job, &[big]).await.unwrap();
    assert!(raw[0] == blob(64 << 20, 6), "the gathered 64 MiB result differs");
    drop(client);
    tokio::time::timeout(Duration::from_secs(60), cluster.shutdown()).await.expect("the cluster shuts down");
}
