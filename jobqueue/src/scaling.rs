//! `scale` and `adapt`: changing a running cluster's size, by hand or by policy.

use super::*;

/// `adapt`: turns adaptive scaling on (or off) for a running batch cluster.
pub(crate) async fn adapt_cmd(state: &StateDir, a: cli::AdaptArgs) -> Result<i32> {
    let _client = connect(state).await?;
    let up = up_spec(state)?;
    if up.job_array {
        bail!("a cluster started with --job-array cannot adapt; start it without --job-array");
    }
    if a.off {
        manager::set_adaptive(state, None)?;
        println!("cluster `{}` no longer adapts; it keeps the jobs it has (change them with `scale`)", state.name);
        return Ok(0);
    }
    let shape = match up.backend {
        Backend::Local => adapt::JobShape { workers: 1, slots: u32::from(up.workers.slots) },
        Backend::Batch(_) => up.main_pool().shape(),
    };
    let (min, max) = adapt_bounds(&a, shape)?;
    let spec = adapt::AdaptSpec {
        target_duration: a.target_duration,
        interval: a.interval,
        max_pending: a.max_pending,
        scale_down_after: a.scale_down_after,
        max_failures: a.max_failures,
        replace_ahead: a.replace_ahead,
        ..adapt::AdaptSpec::new(min, max)
    };
    spec.check().map_err(|e| anyhow!("{e}"))?;
    let _ = std::fs::remove_file(state.file(TARGET_FILE));
    manager::set_adaptive(state, Some(&spec))?;
    let what = match up.backend {
        Backend::Local => format!("local workers of {} slot(s)", shape.slots),
        Backend::Batch(_) => format!("job(s) of {} worker(s) × {} slot(s)", shape.workers, shape.slots),
    };
    println!(
        "cluster `{}` adapts between {min} and {max} {what}, aiming to finish queued work within {} s; see `rdask-jobqueue status`",
        state.name, spec.target_duration
    );
    Ok(0)
}

/// The bounds of `adapt` in jobs: given in jobs, or in workers (rounded to whole jobs).
pub(crate) fn adapt_bounds(a: &cli::AdaptArgs, shape: adapt::JobShape) -> Result<(u32, u32)> {
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

/// The spec the cluster was started with (`spec.json`).
pub(crate) fn up_spec(state: &StateDir) -> Result<ClusterSpec> {
    let path = state.file(SPEC_FILE);
    if !path.exists() {
        bail!("cluster `{}` was not started by `rdask-jobqueue up`; it cannot be scaled", state.name);
    }
    Ok(ClusterSpec::load(&path)?)
}

/// `scale N`: N workers (local backend) or N nodes' worth of jobs (batch backends).
pub(crate) async fn scale(state: &StateDir, a: cli::ScaleArgs) -> Result<i32> {
    let client = connect(state).await?;
    let up = up_spec(state)?;
    if up.job_array {
        bail!("a cluster started with --job-array cannot be scaled; start it without --job-array to scale it");
    }
    let local = up.backend == Backend::Local;
    let pools = if local { Vec::new() } else { pools_of(&up) };
    let pool = pools.iter().find(|p| p.name == a.pool);
    if !local && pool.is_none() {
        let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        bail!("no worker pool named `{}`; this cluster has: {}", a.pool, names.join(", "));
    }
    // Adaptive scaling drives the main pool only: scaling another pool leaves it on.
    if a.pool == backend::DEFAULT_POOL && manager::read_spec(state).is_some() {
        manager::set_adaptive(state, None)?;
        println!("adaptive scaling is off now");
    }
    let tmp = state.file(".target.tmp");
    std::fs::write(&tmp, a.n.to_string())?;
    std::fs::rename(tmp, state.file(&target_file(&a.pool)))?;
    // Workers of the other pools stay as they are.
    let others: usize = match pool {
        None => 0,
        Some(_) => {
            let jobs = backend::read_jobs(state);
            let s = client.status().await?;
            s.workers
                .iter()
                .filter(|w| {
                    let job = w.info.launch.as_deref().unwrap_or("");
                    jobs.iter().any(|j| j.pool != a.pool && backend::same_job(&j.id, job))
                })
                .count()
        }
    };
    let want = match pool {
        None => a.n as usize,
        Some(p) => others + PoolPlan { nodes: a.n, ..p.clone() }.workers(),
    };
    match pool {
        None => println!("scaling cluster `{}` to {} workers", state.name, a.n),
        Some(p) => println!("scaling pool `{}` of cluster `{}` to {} nodes", p.name, state.name, a.n),
    }
    if !a.wait {
        return Ok(0);
    }
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    loop {
        let n = client.status().await?.workers.len();
        if n == want {
            println!("{n} workers");
            return Ok(0);
        }
        if Instant::now() > deadline {
            bail!(
                "{n} workers after {} s, not {want}; busy workers are retired only once idle (see `status`)",
                a.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
