//! `adapt`: adaptive scaling of a running cluster turned on, changed or off (see
//! [`crate::adapt`] for the policy).

use rdask::protocol::{AdaptSpec, ControlRequest};

use crate::adapt::JobShape;
use crate::cli::AdaptArgs;
use crate::cmd::scale::{control, pool_status};
use crate::connect;
use crate::error::{Error, Result};
use crate::state::StateDir;

/// `adapt`: turns adaptive scaling on (or off) for a running cluster.
pub(crate) async fn adapt(state: &StateDir, a: AdaptArgs) -> Result<i32> {
    let client = connect(state).await?;
    if a.off {
        let text = control(state, &client, ControlRequest::Adapt { pool: None, spec: None }).await?;
        println!("cluster `{}` {text}", state.name);
        return Ok(0);
    }
    let shape = match pool_status(state, &client, crate::backend::DEFAULT_POOL).await? {
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
    let text = control(state, &client, ControlRequest::Adapt { pool: None, spec: Some(spec) }).await?;
    println!("cluster `{}` {text}; see `rdask-jobqueue status`", state.name);
    Ok(0)
}

/// The bounds of `adapt` in jobs: given in jobs, or in workers (rounded to whole jobs).
pub(crate) fn adapt_bounds(a: &AdaptArgs, shape: JobShape) -> Result<(u32, u32)> {
    let min = match (a.min, a.min_workers) {
        (Some(j), _) => j,
        (None, Some(w)) => w.div_ceil(shape.workers),
        (None, None) => 0,
    };
    let max = match (a.max, a.max_workers) {
        (Some(j), _) => j,
        (None, Some(w)) => (w / shape.workers).max(1),
        (None, None) => {
            return Err(Error::Usage(format!(
                "give the most jobs with --max N (or the most workers with --max-workers N); each job here holds {} worker(s)",
                shape.workers
            )))
        }
    };
    if min > max {
        return Err(Error::Usage(format!(
            "the minimum ({min} jobs) is above the maximum ({max} jobs); lower --min or raise --max"
        )));
    }
    Ok((min, max))
}
