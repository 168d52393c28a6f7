//! rdask: a Dask-style distributed task runtime for HPC clusters.
//!
//! - [`protocol`]: the messages on the wire.
//! - [`scheduler`]: the sans-IO scheduler state machine; [`server`] drives it with tokio.
//! - [`worker`]: runs tasks and keeps their results.
//! - [`client`]: submits graphs and command arrays, gathers results.
//! - [`local`]: a whole cluster on this machine, for programs and tests.
//!
//! A program that uses function tasks registers its functions in a [`Registry`]
//! and calls [`worker_main_if_requested`] first thing in `main`: the same
//! binary then serves as the client and as every worker.

pub mod client;
pub mod cluster;
pub mod journal;
pub mod limits;
pub mod local;
pub mod process;
pub mod protocol;
pub mod registry;
pub mod scheduler;
pub mod server;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod stream;
pub mod worker;

pub use client::{Client, ClientError, Graph, Job, TaskHandle};
pub use cluster::ClusterInfo;
pub use local::{worker_main_if_requested, LocalCluster};
pub use rdask_transport::auth::Secret;
pub use rdask_transport::Address;
pub use registry::Registry;

/// Sends `tracing` output to stderr, filtered by `RDASK_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RDASK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
