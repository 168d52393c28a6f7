//! `scale`: a running cluster's size set by hand. `scale` and `adapt` are typed requests to
//! the cluster's provisioner ([`crate::provision`]), answered from its live state; both remove
//! capacity the same way, never stopping a busy worker.

use std::time::{Duration, Instant};

use rdask::protocol::{ControlRequest, PoolStatus, ScaleTarget};
use rdask::Client;

use crate::cli::ScaleArgs;
use crate::connect;
use crate::error::{Error, Result};
use crate::state::StateDir;

/// Sends a control request; the provisioner's refusal is [`Error::Refused`].
pub(crate) async fn control(state: &StateDir, client: &Client, body: ControlRequest) -> Result<String> {
    client.control(body).await.map_err(Error::client(&state.name))?.map_err(Error::Refused)
}

/// The pool called `name` in the cluster's live provisioning state.
pub(crate) async fn pool_status(state: &StateDir, client: &Client, name: &str) -> Result<Option<PoolStatus>> {
    let s = client.status().await.map_err(Error::client(&state.name))?;
    Ok(s.provisioning.and_then(|p| p.pools.into_iter().find(|p| p.name == name)))
}

/// `scale N`: N workers (local backend) or N nodes' worth of jobs (batch backends).
pub(crate) async fn scale(state: &StateDir, a: ScaleArgs) -> Result<i32> {
    let client = connect(state).await?;
    let local = pool_status(state, &client, &a.pool).await?.is_some_and(|p| p.unit == "worker");
    let target = if local { ScaleTarget::Workers(a.n) } else { ScaleTarget::Nodes(a.n) };
    let text = control(state, &client, ControlRequest::Scale { pool: Some(a.pool.clone()), target }).await?;
    println!("cluster `{}`: {text}", state.name);
    if !a.wait {
        return Ok(0);
    }
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    loop {
        let p = pool_status(state, &client, &a.pool).await?.unwrap_or_default();
        let active: Vec<_> = p.jobs.iter().filter(|j| j.state.is_active()).collect();
        let workers: usize = active.iter().map(|j| j.workers.len()).sum();
        let want_jobs = p.target.unwrap_or(0) as usize;
        // An allocation seen ended (its process or job gone) may still have a worker the
        // scheduler has not yet seen leave: done only once the scheduler has.
        let leaving = p.jobs.iter().any(|j| !j.state.is_active() && !j.workers.is_empty());
        if active.len() == want_jobs && workers == want_jobs * p.workers_per_job as usize && !leaving {
            let total = client.status().await.map_err(Error::client(&state.name))?.workers.len();
            println!("{total} workers ({workers} in pool `{}`)", a.pool);
            return Ok(0);
        }
        if Instant::now() > deadline {
            return Err(Error::NotReady {
                what: format!(
                    "{workers} workers after {} s, not {}; busy workers are retired only once idle (see `status`)",
                    a.timeout,
                    want_jobs * p.workers_per_job as usize
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
