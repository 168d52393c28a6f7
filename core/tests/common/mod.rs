//! What the local-cluster tests over TCP (`cluster.rs`) and over UCX (`ucx_cluster.rs`) share.
#![allow(dead_code)] // each test binary uses its own subset

use std::time::Duration;

use rdask::{Graph, LocalCluster, Registry};
use rdask_transport::Scheme;

/// The functions both test binaries register (each adds its own).
pub fn base_registry() -> Registry {
    let mut r = Registry::new();
    r.register("inc", |x: u64| x + 1);
    r.register_with_inputs("sum", |_: (), xs: Vec<u64>| xs.iter().sum::<u64>());
    r.register_with_inputs("slow_sum", |ms: u64, xs: Vec<u64>| {
        std::thread::sleep(Duration::from_millis(ms));
        xs.iter().sum::<u64>()
    });
    r
}

/// SIGKILL one of two workers while a graph runs over `scheme`: its connections fail (no
/// hang), and the graph still completes correctly.
pub async fn killed_worker_mid_graph(scheme: Scheme) {
    let mut cluster = LocalCluster::start_on(scheme, 2, 1).await.unwrap();
    let client = cluster.client(2).await.unwrap();
    let mut g = Graph::new();
    let mut leaves = Vec::new();
    for i in 0..40u64 {
        let leaf = g.call("inc", &i);
        leaves.push(g.call_with("slow_sum", &20u64, &[leaf]));
    }
    let total = g.call_with("sum", &(), &leaves);
    let job = client.submit(g).await.unwrap();
    // Let both workers hold results and run tasks, then kill one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let victim = cluster.worker_pids()[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    cluster.add_worker(1).unwrap();
    let out: Vec<u64> = tokio::time::timeout(Duration::from_secs(120), client.gather(&job, &[total]))
        .await
        .expect("the graph finishes despite the killed worker")
        .unwrap();
    assert_eq!(out, vec![(1..=40u64).sum::<u64>()]);
    drop(client);
    tokio::time::timeout(Duration::from_secs(60), cluster.shutdown()).await.expect("the cluster shuts down");
}
