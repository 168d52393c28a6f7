//! The README's tour of function tasks, kept compiling and running by `examples/tests`.

use rdask::{Graph, LocalCluster, Registry};

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register("square", |x: u64| x * x);
    r.register_with_inputs("sum", |_: (), xs: Vec<u64>| xs.iter().sum::<u64>());
    r
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let registry = registry();
    rdask::worker_main_if_requested(&registry); // a worker process stops here

    let cluster = LocalCluster::start(2, 1).await?; // 2 worker processes of this program
    let client = cluster.client(2).await?;
    let mut g = Graph::new();
    let squares: Vec<_> = (0..100u64).map(|i| g.call("square", &i)).collect();
    let total = g.call_with("sum", &(), &squares);
    let job = client.submit(g).await?;
    let sum: Vec<u64> = client.gather(&job, &[total]).await?;
    println!("{}", sum[0]);
    cluster.shutdown().await;
    Ok(())
}
