//! The `scheduler` role that `up` starts in the background: the core scheduler, the workers'
//! backend (local processes or batch jobs), and the manager loop that polls the batch system
//! and follows `scale` targets or the adaptive policy.

use super::*;

/// `scheduler`: runs the scheduler and its local workers in the foreground.
pub(crate) async fn scheduler(state: &StateDir, cmd: SchedulerCmd) -> Result<i32> {
    rdask::init_logging();
    let a = match &cmd.spec_file {
        Some(p) => ClusterSpec::load(p)?,
        None => ClusterSpec::resolve(&cmd.args, state)?,
    };
    let batch = batch_system_of(&a);
    state.create()?;
    let me = std::process::id();
    state.journal("pid", &format!("{me}:{}", state::process_start_time(me).unwrap_or(0)))?;
    let secret_path = state.file(SECRET_FILE);
    let secret = match Secret::load(&secret_path) {
        Ok(s) => s,
        Err(_) if !secret_path.exists() => {
            let s = Secret::generate();
            s.save(&secret_path)?;
            s
        }
        Err(e) => return Err(e.into()),
    };
    let bind_host = match &a.scheduler.interface {
        Some(iface) => net::interface_ipv4(iface)?.to_string(),
        None => a.scheduler.host.clone(),
    };
    let (protocol, port) = (a.scheduler.protocol, a.scheduler.port);
    let addr = rdask::Address { scheme: protocol.scheme(), host_port: format!("{}:{port}", net::bracket(&bind_host)) };
    let listener = rdask_transport::listen(&addr).await.with_context(|| match protocol {
        cli::Protocol::Tcp => format!("cannot listen on {addr} (is the port in use? choose another with --port)"),
        cli::Protocol::Ucx => format!("cannot listen on {addr}"),
    })?;
    let port = listener.local_addr().host_port.rsplit_once(':').map(|(_, p)| p.to_string()).unwrap_or_default();
    let addresses = net::candidate_addresses_on(addr.scheme, &bind_host, &port);
    let config = rdask::scheduler::Config {
        heartbeat_interval: Duration::from_millis(a.scheduler.heartbeat_ms),
        heartbeat_timeout: Duration::from_millis(a.scheduler.heartbeat_ms * 10),
        ..Default::default()
    };
    let server = rdask::server::spawn(listener, secret.clone(), config);
    let server_address = server.address.clone();
    tracing::info!("scheduler listening; workers and clients use {}", addresses.join(", "));
    let mut local = None;
    let mut batch_backend = None;
    match batch {
        None => {
            let (program, args) = match &a.workers.program {
                Some(p) => (p.clone(), Vec::new()),
                None => {
                    (std::env::current_exe()?, vec!["--name".to_string(), state.name.clone(), "worker".to_string()])
                }
            };
            let mut b = LocalBackend::new(program, args, a.workers.slots, a.workers.death_timeout);
            // An adaptive cluster starts with its minimum; the policy does the rest.
            b.start(state, &addresses, a.initial_local_workers())?;
            local = Some(std::sync::Arc::new(std::sync::Mutex::new(b)));
        }
        Some(system) => {
            let pools = pools_of(&a);
            let specs: Vec<(String, batch::JobParams)> =
                pools.iter().map(|p| (p.name.clone(), p.params.clone())).collect();
            let mut b = BatchBackend::new(
                state,
                system,
                commands_of(&a, system),
                &specs,
                &worker_argv(&a, state, &addresses)?,
                a.template.as_deref(),
            )?;
            // An adaptive cluster's main pool starts with what the policy asks for.
            let adaptive = a.adapt.is_some();
            let submitted: Result<()> =
                pools.iter().filter(|p| !(adaptive && p.name == backend::DEFAULT_POOL)).try_for_each(|p| {
                    b.submit(&p.name, if a.job_array { 1 } else { p.jobs() })?;
                    Ok(())
                });
            if let Err(e) = submitted {
                tracing::error!("{e:#}");
                let _ = b.cancel_all(Duration::from_secs(60));
                server.abort();
                let _ = std::fs::remove_file(state.file(rdask::cluster::SCHEDULER_FILE));
                return Err(e);
            }
            batch_backend = Some(std::sync::Arc::new(std::sync::Mutex::new(b)));
        }
    }
    // Ready: `up` waits for this file, so a failed submission above is reported by `up` itself.
    SchedulerFile { addresses: addresses.clone(), pid: std::process::id(), host: rdask::worker::hostname() }
        .write(&state.path)?;
    let log_directory = job_params(&a).log_directory;
    for entry in std::fs::read_dir(&state.path)?.flatten() {
        // Targets of an earlier run of this cluster do not apply to this one.
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(TARGET_FILE) || name == manager::ADAPT_FILE || name == manager::ADAPT_STATUS_FILE {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(ad) = a.adapt {
        let spec = adapt::AdaptSpec { target_duration: ad.target_duration, ..adapt::AdaptSpec::new(ad.min, ad.max) };
        manager::set_adaptive(state, Some(&spec))?;
    }
    let manager = {
        let every = Duration::from_secs_f64(a.scheduler.poll_interval.max(0.1));
        let info = ClusterInfo { addresses: vec![server_address.clone()], secret: secret.clone() };
        let (batch_backend, local, state, addresses) =
            (batch_backend.clone(), local.clone(), state.clone(), addresses.clone());
        let pools = if batch.is_some() { pools_of(&a) } else { Vec::new() };
        // What adaptive scaling adds and removes: a job of the main pool, or one local worker.
        let shape =
            pools.first().map_or(adapt::JobShape { workers: 1, slots: u32::from(a.workers.slots) }, PoolPlan::shape);
        tokio::spawn(async move {
            // Jobs that have had a worker: one that ends without ever having had one failed to start.
            let mut had_worker: std::collections::HashSet<String> = Default::default();
            let client = Client::connect(&info).await.ok();
            let mut adaptive: Option<manager::Adaptive> = None;
            loop {
                let pause = adaptive.as_ref().map_or(every, |a| Duration::from_secs_f64(a.spec().interval.max(0.1)));
                tokio::time::sleep(pause).await;
                // Read now, so that a change made during the pause applies at once.
                let spec = manager::read_spec(&state);
                match (&spec, &adaptive) {
                    (None, _) => adaptive = None,
                    (Some(s), Some(ad)) if ad.spec() == s => {}
                    // New settings (or `adapt` run again, which also resumes a paused one).
                    (Some(s), _) => adaptive = Some(manager::Adaptive::new(s.clone(), shape, backend::DEFAULT_POOL)),
                }
                let status = match &client {
                    Some(c) => c.status().await.ok(),
                    None => None,
                };
                let workers = status.as_ref().map(|s| s.workers.clone()).unwrap_or_default();
                had_worker.extend(workers.iter().filter_map(|w| w.info.launch.clone()));
                let busy: Vec<(u32, Option<String>)> =
                    workers.iter().filter(|w| w.assigned > 0).map(|w| (w.info.pid, w.info.launch.clone())).collect();
                let target = read_target(&state, backend::DEFAULT_POOL);
                if let Some(b) = batch_backend.clone() {
                    let (seen, logs, busy) = (had_worker.clone(), log_directory.clone(), busy.clone());
                    let targets: Vec<(String, usize)> = pools
                        .iter()
                        .filter(|p| !(adaptive.is_some() && p.name == backend::DEFAULT_POOL))
                        .filter_map(|p| read_target(&state, &p.name).map(|n| (p.name.clone(), p.jobs_for_nodes(n))))
                        .collect();
                    let b2 = b.clone();
                    let r = tokio::task::spawn_blocking(move || {
                        let had = |id: &str| seen.iter().any(|w| backend::same_job(id, w));
                        let mut b = b2.lock().expect("backend lock");
                        let failed = b.poll_and_explain(had, logs.as_deref())?;
                        let idle = |id: &str| {
                            !busy.iter().any(|(_, j)| j.as_deref().is_some_and(|j| backend::same_job(id, j)))
                        };
                        for (pool, jobs) in &targets {
                            b.scale_to(pool, *jobs, idle)?;
                        }
                        anyhow::Ok(failed)
                    })
                    .await;
                    let failed = match r {
                        Ok(Ok(failed)) => failed,
                        Ok(Err(e)) => {
                            tracing::warn!("managing batch jobs failed: {e:#}");
                            Vec::new()
                        }
                        Err(e) => {
                            tracing::warn!("managing batch jobs panicked: {e}");
                            Vec::new()
                        }
                    };
                    if let (Some(ad), Some(c), Some(s)) = (adaptive.as_mut(), &client, &status) {
                        ad.step(&state, &b, c, s, &had_worker, &failed).await;
                    }
                }
                if let (Some(l), Some(ad), Some(c), Some(s)) = (&local, adaptive.as_mut(), &client, &status) {
                    ad.step(&state, l, c, s, &had_worker, &[]).await;
                } else if let (Some(l), Some(n)) = (&local, target) {
                    let idle = |pid: u32| !busy.iter().any(|(p, _)| *p == pid);
                    if let Err(e) = l.lock().expect("local lock").scale_to(&state, &addresses, n as usize, idle) {
                        tracing::warn!("scaling local workers failed: {e:#}");
                    }
                }
            }
        })
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let info = ClusterInfo { addresses: vec![server_address], secret };
    let mut server = std::pin::pin!(server.wait());
    tokio::select! {
        _ = &mut server => {}
        _ = term.recv() => shutdown_self(&info, &mut server).await,
        _ = int.recv() => shutdown_self(&info, &mut server).await,
    }
    manager.abort();
    if let Some(b) = local {
        b.lock().expect("local lock").stop(Duration::from_secs(5));
    }
    if let Some(b) = batch_backend {
        let r =
            tokio::task::spawn_blocking(move || b.lock().expect("backend lock").cancel_all(Duration::from_secs(60)))
                .await;
        match r {
            Ok(Ok(())) => tracing::info!("every batch job of the cluster has ended"),
            Ok(Err(e)) => {
                tracing::error!("{e:#}");
                return Ok(1);
            }
            Err(e) => tracing::error!("cancelling batch jobs panicked: {e}"),
        }
    }
    let _ = std::fs::remove_file(state.file(rdask::cluster::SCHEDULER_FILE));
    state.clear_journal();
    tracing::info!("cluster `{}` is down", state.name);
    Ok(0)
}

pub(crate) async fn shutdown_self(
    info: &ClusterInfo,
    server: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) {
    tracing::info!("signal received: stopping the workers and the scheduler");
    // Going through the protocol tells every worker to stop, like `down` does.
    if let Ok(c) = Client::connect(info).await {
        let _ = c.shutdown().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), server.as_mut()).await;
}
