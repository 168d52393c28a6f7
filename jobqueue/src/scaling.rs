//! `scale` and `adapt`: changing a running cluster's size, by hand or by policy. Both are
//! typed requests to the cluster's provisioner ([`crate::provision`]), answered from its live
//! state; both remove capacity the same way, never stopping a busy worker.

use anyhow::{bail, Result};
use rdask::protocol::{AdaptSpec, ControlRequest, PoolStatus, ScaleTarget};
use rdask::Client;

use super::connect;
use crate::adapt::JobShape;
use crate::cli;
use crate::state::StateDir;

/// A request the provisioner refused, in its own words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub rdask::protocol::Refusal);

async fn control(client: &Client, body: ControlRequest) -> Result<String> {
    match client.control(body).await? {
        Ok(text) => Ok(text),
        Err(why) => Err(Refused(why).into()),
    }
}

/// The pool called `name` in the cluster's live provisioning state.
async fn pool_status(client: &Client, name: &str) -> Result<Option<PoolStatus>> {
    let s = client.status().await?;
    Ok(s.provisioning.and_then(|p| p.pools.into_iter().find(|p| p.name == name)))
}

/// `adapt`: turns adaptive scaling on (or off) for a running cluster.
pub(crate) async fn adapt_cmd(state: &StateDir, a: cli::AdaptArgs) -> Result<i32> {
    let client = connect(state).await?;
    if a.off {
        let text = control(&client, ControlRequest::Adapt { pool: None, spec: None }).await?;
        println!("cluster `{}` {text}", state.name);
        return Ok(0);
    }
    let shape = match pool_status(&client, crate::backend::DEFAULT_POOL).await? {
        Some(p) => JobShape { workers: p.workers_per_job.max(1), slots: p.slots },
        None => JobShape { workers: 1, slots: 1 },
    };
    let (min, max) = adapt_bounds(&a, shape)?;
    let spec = AdaptSpec {
        target_duration: a.target_duration,
        interval: a.interval,
        max_pending: a.max_pending,
        scale_down_after: a.scale_down_after,
        max_failures: a.max_failures,
        replace_ahead: a.replace_ahead,
        ..AdaptSpec::new(min, max)
    };
    let text = control(&client, ControlRequest::Adapt { pool: None, spec: Some(spec) }).await?;
    println!("cluster `{}` {text}; see `rdask-jobqueue status`", state.name);
    Ok(0)
}

/// The bounds of `adapt` in jobs: given in jobs, or in workers (rounded to whole jobs).
pub(crate) fn adapt_bounds(a: &cli::AdaptArgs, shape: JobShape) -> Result<(u32, u32)> {
    let min = match (a.min, a.min_workers) {
        (Some(j), _) => j,
        (None, Some(w)) => w.div_ceil(shape.workers),
        (None, None) => 0,
    };
    let max = match (a.max, a.max_workers) {
        (Some(j), _) => j,
        (None, Some(w)) => (w / shape.workers).max(1),
        (None, None) => bail!(
            "give the most jobs with --max N (or the most workers with --max-workers N); each job here holds {} worker(s)",
            shape.workers
        ),
    };
    if min > max {
        bail!("the minimum ({min} jobs) is above the maximum ({max} jobs); lower --min or raise --max");
    }
    Ok((min, max))
}

/// `scale N`: N workers (local backend) or N nodes' worth of jobs (batch backends).
pub(crate) async fn scale(state: &StateDir, a: cli::ScaleArgs) -> Result<i32> {
    let client = connect(state).await?;
    let local = pool_status(&client, &a.pool).await?.is_some_and(|p| p.unit == "worker");
    let target = if local { ScaleTarget::Workers(a.n) } else { ScaleTarget::Nodes(a.n) };
    let text = control(&client, ControlRequest::Scale { pool: Some(a.pool.clone()), target }).await?;
    println!("cluster `{}`: {text}", state.name);
    if !a.wait {
        return Ok(0);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(a.timeout);
    loop {
        let p = pool_status(&client, &a.pool).await?.unwrap_or_default();
        let active: Vec<_> = p.jobs.iter().filter(|j| j.state.is_active()).collect();
        let workers: usize = active.iter().map(|j| j.workers.len()).sum();
        let want_jobs = p.target.unwrap_or(0) as usize;
        // An allocation seen ended (its process or job gone) may still have a worker the
        // scheduler has not yet seen leave: done only once the scheduler has.
        let leaving = p.jobs.iter().any(|j| !j.state.is_active() && !j.workers.is_empty());
        if active.len() == want_jobs && workers == want_jobs * p.workers_per_job as usize && !leaving {
            let total = client.status().await?.workers.len();
            println!("{total} workers ({workers} in pool `{}`)", a.pool);
            return Ok(0);
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "{workers} workers after {} s, not {}; busy workers are retired only once idle (see `status`)",
                a.timeout,
                want_jobs * p.workers_per_job as usize
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
