//! Richardson–Lucy deconvolution of a synthetic 3-D image, as a task graph on a local cluster
//! (or on a cluster it is given: under `mpirun`, or through RDASK_SCHEDULER).
//!
//! After the Dask blog post "Image Analysis Redux" (2020): a blurred 3-D image
//! is split into overlapping chunks; one task deconvolves each chunk, one more
//! task stitches the chunks back together (fetching them from the workers that
//! computed them), and the client checks the result against the same
//! computation done in this single process.
//!
//!   cargo run --release -p rdask-examples --bin deconvolution -- --help
//!
//! Built with `--features mpi` and started by `mpirun -n N`, rank 0 is the scheduler, ranks
//! 2.. are the workers, and rank 1 runs the rest of `main`.
// Allowed: an example program times itself. The sans-IO modules deny it (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::time::Instant;

use anyhow::{bail, Result};
use ndarray::Array3;
use rdask::{Client, ClusterInfo, Graph, LocalCluster, Registry};
use rdask_examples::deconv::{self, Chunk};

const HELP: &str = "\
Richardson-Lucy deconvolution of a synthetic 3-D image on a local rdask cluster, or on the
cluster in RDASK_SCHEDULER and RDASK_SECRET / RDASK_SECRET_FILE (whose workers must run this
program), or under mpirun when built with `--features mpi` (`mpirun -n 4 deconvolution`).

Options (all optional):
  --workers N      worker processes of the local cluster (default 2)
  --size N         the image is N x N x N voxels (default 96)
  --chunk N        chunk edge in voxels (default 32)
  --depth N        overlap between chunks in voxels (default 8)
  --iterations N   Richardson-Lucy iterations (default 20)";

struct Options {
    workers: usize,
    size: usize,
    chunk: usize,
    depth: usize,
    iterations: usize,
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register("deconvolve_chunk", |(chunk, psf, iterations): (Chunk, Array3<f64>, usize)| {
        deconv::deconvolve_chunk(&chunk, &psf, iterations)
    });
    r.register_with_inputs("stitch", |shape: [usize; 3], chunks: Vec<Chunk>| deconv::stitch(shape, &chunks));
    r
}

fn main() -> Result<()> {
    let registry = registry();
    // Under mpirun, ranks 0 and 2.. become the scheduler and the workers here, for good; rank 1
    // goes on with the cluster, which ends when `mpi` is dropped at the end of `main`.
    #[cfg(feature = "mpi")]
    let mpi = rdask_jobqueue::mpi::initialize(&registry);
    #[cfg(feature = "mpi")]
    let given = mpi.as_ref().map(|c| c.info().clone());
    #[cfg(not(feature = "mpi"))]
    let given = None;
    // The workers are this same program: it turns into one here when started as such.
    rdask::worker_main_if_requested(&registry);
    let o = parse_args()?;
    // A cluster started elsewhere (`rdask-jobqueue up --worker-program deconvolution`, say).
    let given = match given {
        Some(info) => Some(info),
        None if std::env::var_os("RDASK_SCHEDULER").is_some() => Some(ClusterInfo::from_env()?),
        None => None,
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(o, given))
}

fn parse_args() -> Result<Options> {
    let mut o = Options { workers: 2, size: 96, chunk: 32, depth: 8, iterations: 20 };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("{HELP}");
            std::process::exit(0);
        }
        let value = args.next().and_then(|v| v.parse::<usize>().ok());
        let Some(v) = value.filter(|v| *v > 0) else { bail!("{flag} needs a positive whole number\n\n{HELP}") };
        match flag.as_str() {
            "--workers" => o.workers = v,
            "--size" => o.size = v,
            "--chunk" => o.chunk = v,
            "--depth" => o.depth = v,
            "--iterations" => o.iterations = v,
            _ => bail!("unknown option {flag}\n\n{HELP}"),
        }
    }
    if o.chunk < 8 {
        bail!("--chunk must be at least 8 voxels (the point spread function is 7 voxels wide)");
    }
    Ok(o)
}

async fn run(o: Options, given: Option<ClusterInfo>) -> Result<()> {
    let shape = [o.size; 3];
    let truth = deconv::synthetic_image(shape, 42);
    let psf = deconv::gaussian_psf([7, 7, 7], 1.2);
    let blurred = deconv::blur(&truth, &psf);
    let chunks = deconv::split(&blurred, [o.chunk; 3], o.depth);
    println!(
        "image {0}x{0}x{0}, {1} chunks of {2}^3 with {3} voxels of overlap, {4} iterations",
        o.size,
        chunks.len(),
        o.chunk,
        o.depth,
        o.iterations,
    );

    let start = Instant::now();
    let (cluster, client) = match given {
        Some(info) => (None, connect(&info).await?),
        None => {
            let cluster = LocalCluster::start(o.workers, 1).await?;
            let client = cluster.client(o.workers).await?;
            (Some(cluster), client)
        }
    };
    let workers = client.status().await?.workers.len();
    println!("cluster of {workers} workers up in {:.0} ms", start.elapsed().as_secs_f64() * 1e3);

    let t = Instant::now();
    let mut g = Graph::new();
    let parts: Vec<_> = chunks.iter().map(|c| g.call("deconvolve_chunk", &(c, &psf, o.iterations))).collect();
    let image = g.call_with("stitch", &shape, &parts);
    let job = client.submit(g).await?;
    let result: Vec<Array3<f64>> = client.gather(&job, &[image]).await?;
    let distributed = result.into_iter().next().expect("one result per requested task");
    let t_cluster = t.elapsed();
    // A cluster it was given is its owner's to end.
    if let Some(cluster) = cluster {
        cluster.shutdown().await;
    }

    let t = Instant::now();
    let reference = deconv::chunked_deconvolution(&blurred, &psf, [o.chunk; 3], o.depth, o.iterations);
    let t_single = t.elapsed();

    let diff = deconv::max_abs_diff(&distributed, &reference);
    let before = deconv::rms_error(&blurred, &truth);
    let after = deconv::rms_error(&distributed, &truth);
    println!(
        "task graph: {:.2} s on the cluster, {:.2} s in one process",
        t_cluster.as_secs_f64(),
        t_single.as_secs_f64()
    );
    println!("RMS error against the true image: blurred {before:.5}, deconvolved {after:.5}");
    if diff > 1e-12 || after >= before {
        bail!("verification FAILED: max |cluster - single process| = {diff:e}, RMS {before} -> {after}");
    }
    println!("verified: the cluster's result equals the single-process result (max |diff| = {diff:e})");
    Ok(())
}

/// Connects to a given cluster and waits (up to a minute) for a worker.
async fn connect(info: &ClusterInfo) -> Result<Client> {
    let client = Client::connect(info).await?;
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while client.status().await?.workers.is_empty() {
        if Instant::now() > deadline {
            bail!("the cluster at {} has had no worker for a minute", info.addresses[0]);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(client)
}
