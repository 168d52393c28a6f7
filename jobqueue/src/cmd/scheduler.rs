//! `scheduler`, the role that `up` starts in the background: the core scheduler and, driven
//! beside it in the same process, the provisioner ([`crate::provision`]) that starts, polls
//! and ends the workers' allocations (local processes or batch jobs).

use std::time::{Duration, Instant};

use rdask::cluster::{SchedulerFile, SECRET_FILE};
use rdask::protocol::{AdaptSpec, AllocationState};
use rdask::Secret;

use crate::adapt;
use crate::backend::{self, BatchBackend};
use crate::batch;
use crate::cli::{self, SchedulerCmd};
use crate::error::{Error, Result};
use crate::net;
use crate::pools::{batch_system_of, commands_of, worker_argv};
use crate::provision::driver::Driver;
use crate::provision::launch::{BatchLauncher, LocalLauncher};
use crate::provision::{self, Provisioner};
use crate::spec::ClusterSpec;
use crate::state::{self, Journalled, StateDir};

/// `scheduler`: runs the scheduler and its local workers in the foreground.
pub(crate) async fn scheduler(state: &StateDir, cmd: SchedulerCmd) -> Result<i32> {
    rdask::init_logging();
    let a = match &cmd.spec_file {
        Some(p) => ClusterSpec::load(p)?,
        None => ClusterSpec::resolve(&cmd.args, state)?,
    };
    let batch = batch_system_of(&a);
    // One descriptor per worker's connection: raise the soft limit to the hard one, and stop
    // here, saying which limit, if even that cannot hold the workers asked for.
    let planned = a.planned_workers();
    let limit =
        rdask::limits::ensure(rdask::limits::needed_for(planned as u64), format!("a scheduler for {planned} workers"))?;
    tracing::debug!("open-file limit {} (hard {}), {planned} workers planned", limit.soft, limit.hard);
    state.create()?;
    let me = std::process::id();
    state.record(&Journalled::Process { pid: me, start: state::process_start_time(me).unwrap_or(0), launch: None })?;
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
    let listener = rdask_transport::listen(&addr).await.map_err(Error::io(match protocol {
        cli::Protocol::Tcp => format!("cannot listen on {addr} (is the port in use? choose another with --port)"),
        cli::Protocol::Ucx => format!("cannot listen on {addr}"),
    }))?;
    let port = listener.local_addr().host_port.rsplit_once(':').map(|(_, p)| p.to_string()).unwrap_or_default();
    let addresses = net::candidate_addresses_on(addr.scheme, &bind_host, &port);
    let config = rdask::scheduler::Config {
        heartbeat_interval: Duration::from_millis(a.scheduler.heartbeat_ms),
        heartbeat_timeout: Duration::from_millis(a.scheduler.heartbeat_ms * 10),
        ..Default::default()
    };
    // The scheduler's journal: a fresh one, or (restoring) the dead scheduler's to carry on from.
    let journal_path = state.file(state::SCHEDULER_JOURNAL);
    if !cmd.restore {
        let _ = std::fs::remove_file(&journal_path);
    }
    let (file, restored) = rdask::journal::JournalFile::open(&journal_path)
        .map_err(Error::io(format!("cannot open the scheduler's journal {}", journal_path.display())))?;
    if cmd.restore {
        tracing::info!(
            jobs = restored.jobs.len(),
            workers = restored.workers.len(),
            "restoring from the journal of the scheduler that died"
        );
    }
    let journal = rdask::server::Journal { file, restored, window: ADOPTION_WINDOW };
    let (server, controller) = rdask::server::spawn_journalled(listener, secret.clone(), config, journal);
    tracing::info!("scheduler listening; workers and clients use {}", addresses.join(", "));
    let rdask::server::Controller { notices, control } = controller;
    let dashboard = tokio_util::sync::CancellationToken::new();
    let _stop_dashboard = dashboard.clone().drop_guard();
    if let Some(bind) = &a.scheduler.dashboard {
        let info = rdask::cluster::ClusterInfo {
            addresses: addresses.iter().filter_map(|a| a.parse().ok()).collect(),
            secret: secret.clone(),
        };
        match crate::dashboard::start(bind, info, dashboard.clone()).await {
            Ok(at) => {
                let host = if at.ip().is_unspecified() { rdask::worker::hostname() } else { at.ip().to_string() };
                let address = format!("http://{}:{}/", net::bracket(&host), at.port());
                tracing::info!("dashboard at {}", crate::dashboard::url(&address, &secret));
                let _ = control.send(rdask::scheduler::Control::Dashboard(address));
            }
            Err(e) => tracing::warn!("no dashboard: {e}"),
        }
    }
    let started = match batch {
        None => {
            let (exe, mut ours) = crate::embed::self_command()?;
            ours.extend(["--name".to_string(), state.name.clone(), "worker".to_string()]);
            let (program, args) = match (&a.workers.program, a.workers.per_gpu) {
                (Some(p), false) => (p.clone(), Vec::new()),
                (None, false) => (exe, ours),
                // `worker --worker-per-gpu` starts the pinned workers (running the program, if any).
                (program, true) => {
                    let mut args = ours;
                    args.push("--worker-per-gpu".into());
                    if let Some(p) = program {
                        args.extend(["--program".into(), p.display().to_string()]);
                    }
                    (exe, args)
                }
            };
            let env = vec![
                (rdask::local::ROLE_VAR.to_string(), "worker".to_string()),
                ("RDASK_SCHEDULER".to_string(), addresses.join(",")),
                ("RDASK_SECRET_FILE".to_string(), state.file(SECRET_FILE).display().to_string()),
                ("RDASK_SLOTS".to_string(), a.workers.slots.to_string()),
                ("RDASK_DEATH_TIMEOUT".to_string(), a.workers.death_timeout.to_string()),
                (rdask::protocol::OFFER_VAR.to_string(), local_offer(&a).to_text()),
            ];
            let mut launcher = LocalLauncher::new(state, program, args, env);
            let mut prov = provisioner_of(&a, None);
            if cmd.restore {
                adopt(state, &mut prov, Some(&mut launcher));
            }
            Driver::start(prov, launcher, control.clone(), Duration::from_secs(5)).await
        }
        Some(system) => {
            let specs: Vec<(String, batch::JobParams)> =
                a.pools.iter().map(|p| (p.name.clone(), p.params.clone())).collect();
            let commands = commands_of(&a, system);
            let b = BatchBackend::new(
                state,
                system,
                commands.clone(),
                backend::batch_system(system, commands),
                &specs,
                &worker_argv(&a, state, &addresses)?,
                a.template.as_deref(),
            )?;
            let launcher = BatchLauncher(b);
            let mut prov = provisioner_of(&a, Some(system));
            if cmd.restore {
                adopt(state, &mut prov, None);
            }
            Driver::start(prov, launcher, control.clone(), Duration::from_secs(60)).await
        }
    };
    let mut driver = match started {
        Ok(d) => d,
        Err(e) => {
            // `up` sees the scheduler exit without its file and shows this from the log.
            tracing::error!("{e}");
            server.abort();
            state.clear_journal();
            return Err(Error::Launch(e));
        }
    };
    driver.journal_settings(state.clone());
    // Ready: `up` waits for this file, so a failed submission above is reported by `up` itself.
    SchedulerFile { addresses: addresses.clone(), pid: std::process::id(), host: rdask::worker::hostname() }
        .write(&state.path)
        .map_err(Error::io(format!("cannot write the scheduler file in {}", state.path.display())))?;
    let mut driver = std::pin::pin!(tokio::spawn(driver.run(notices)));

    let signal = |kind| tokio::signal::unix::signal(kind).map_err(Error::io("cannot handle signals"));
    let mut term = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut server = std::pin::pin!(server.wait());
    tokio::select! {
        _ = &mut server => {}
        _ = term.recv() => shutdown_self(&control, &mut server).await,
        _ = int.recv() => shutdown_self(&control, &mut server).await,
    }
    // The scheduler has ended; the driver ends every allocation it has.
    let ended = match driver.as_mut().await {
        Ok(r) => r,
        Err(e) => Err(format!("the provisioner panicked: {e}")),
    };
    let _ = std::fs::remove_file(state.file(rdask::cluster::SCHEDULER_FILE));
    match ended {
        Ok(()) => {
            if batch.is_some() {
                tracing::info!("every batch job of the cluster has ended");
            }
            state.clear_journal();
            tracing::info!("cluster `{}` is down", state.name);
            Ok(0)
        }
        Err(e) => {
            // The journal stays: `down` tries again.
            tracing::error!("{e}; `rdask-jobqueue down` tries again");
            Ok(5)
        }
    }
}

/// How long a restored scheduler waits for the workers on record to come back before running
/// again the tasks they have not claimed (it stops waiting once they are all back).
const ADOPTION_WINDOW: Duration = Duration::from_secs(20);

/// Takes over the allocations of the scheduler process that died, from the cluster's journal:
/// its local worker processes still alive (with `local`), its batch jobs (the next poll says
/// which still run).
fn adopt(state: &StateDir, prov: &mut Provisioner, mut local: Option<&mut LocalLauncher>) {
    let now = Instant::now();
    let pool_of = |launch: &str| launch.rsplit_once('/').map(|(p, _)| p.to_string()).unwrap_or_default();
    for e in state.journal_entries() {
        match e {
            Journalled::Process { pid, start, launch: Some(launch) } => {
                if let Some(l) = local.as_deref_mut() {
                    if state::process_is(pid, start)
                        && prov.adopt(now, &pool_of(&launch), &launch, &pid.to_string(), AllocationState::Running)
                    {
                        l.adopt(pid, start);
                    }
                }
            }
            Journalled::Job { id, pool, launch, .. } if local.is_none() && !launch.is_empty() => {
                prov.adopt(now, &pool, &launch, &id, AllocationState::Pending);
            }
            Journalled::Setting { request } => prov.reapply(now, request),
            _ => {}
        }
    }
}

/// A local unit: one worker process, or with --worker-per-gpu one per GPU, sharing the slots.
fn local_shape(a: &ClusterSpec) -> adapt::JobShape {
    let slots = u32::from(a.workers.slots);
    let gpus = local_offer(a).gpus.len() as u32;
    match a.workers.per_gpu && gpus > 0 {
        true => adapt::JobShape { workers: gpus, slots: (slots / gpus).max(1) },
        false => adapt::JobShape { workers: 1, slots },
    }
}

/// A batch pool's jobs: as `--processes` says, or with --worker-per-gpu one worker per GPU.
fn batch_shape(a: &ClusterSpec, p: &crate::spec::PoolSpec) -> adapt::JobShape {
    let gpus = p.params.gpus.unwrap_or(0);
    match a.workers.per_gpu && gpus > 0 {
        true => adapt::JobShape { workers: p.per_job() * gpus, slots: (p.params.cores.unwrap_or(1) / gpus).max(1) },
        false => p.shape(),
    }
}

/// What each local worker offers: `up --resource` (`gpu=N` is GPUs 0..N-1).
fn local_offer(a: &ClusterSpec) -> rdask::protocol::Offer {
    let mut named = a.workers.resources.clone();
    let gpus = named.iter().position(|(k, _)| k == "gpu").map_or(0, |i| named.remove(i).1);
    let pool = Some(backend::DEFAULT_POOL.to_string());
    rdask::protocol::Offer { gpus: (0..gpus).map(|i| i.to_string()).collect(), memory: 0, named, pool }
}

/// What each of the workers `--worker-per-gpu` makes of `offer` offers: one GPU, and its share
/// (rounded down) of the memory and named resources.
fn per_gpu_share(offer: &rdask::protocol::Offer) -> rdask::protocol::Offer {
    let n = offer.gpus.len().max(1);
    rdask::protocol::Offer {
        gpus: offer.gpus.iter().take(1).cloned().collect(),
        memory: offer.memory / n as u64,
        named: offer.named.iter().map(|(k, v)| (k.clone(), v / n as u32)).collect(),
        pool: offer.pool.clone(),
    }
}

/// What each worker of a batch pool will offer: its share of the job's GPUs and memory
/// (their device names are only known inside the job), and `up --resource`.
fn batch_offer(a: &ClusterSpec, p: &crate::spec::PoolSpec) -> rdask::protocol::Offer {
    let gpus = p.params.gpus.unwrap_or(0);
    let processes = if a.workers.per_gpu && gpus > 0 { gpus } else { p.params.processes.unwrap_or(1).max(1) };
    let gpus = gpus / processes;
    let memory = p.params.memory.as_deref().and_then(|m| batch::units::parse_memory(m).ok()).unwrap_or(0);
    let mut offer = local_offer(a);
    offer.gpus = (0..gpus).map(|i| i.to_string()).collect();
    offer.memory = memory / u64::from(processes);
    offer.pool = Some(p.name.clone());
    offer
}

/// The provisioner of a spec: its pools, whether the main one adapts, how often to poll.
pub(crate) fn provisioner_of(a: &ClusterSpec, system: Option<batch::System>) -> Provisioner {
    let local = system.is_none();
    let pools = if local {
        vec![provision::PoolConfig {
            name: backend::DEFAULT_POOL.to_string(),
            shape: local_shape(a),
            nodes_per_job: 1,
            initial: a.initial_local_workers() as u32,
            scalable: true,
            offer: if a.workers.per_gpu { per_gpu_share(&local_offer(a)) } else { local_offer(a) },
        }]
    } else {
        a.pools
            .iter()
            .map(|p| provision::PoolConfig {
                name: p.name.clone(),
                shape: batch_shape(a, p),
                nodes_per_job: p.per_job(),
                initial: if a.job_array { 1 } else { p.jobs() as u32 },
                scalable: !a.job_array,
                offer: batch_offer(a, p),
            })
            .collect()
    };
    let adapt = a.adapt.map(|ad| AdaptSpec { target_duration: ad.target_duration, ..AdaptSpec::new(ad.min, ad.max) });
    Provisioner::new(
        provision::Config {
            backend: system.map_or_else(|| "local".to_string(), |s| s.to_string()),
            unit: if local { "worker" } else { "job" },
            pools,
            adapt,
            poll_interval: Duration::from_secs_f64(if local { 0.2 } else { a.scheduler.poll_interval.max(0.1) }),
        },
        Instant::now(),
    )
}

/// SIGTERM or SIGINT: stop the workers and the scheduler, as `down` does.
pub(crate) async fn shutdown_self(
    control: &tokio::sync::mpsc::UnboundedSender<rdask::scheduler::Control>,
    server: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) {
    tracing::info!("signal received: stopping the workers and the scheduler");
    let _ = control.send(rdask::scheduler::Control::Shutdown);
    let _ = tokio::time::timeout(Duration::from_secs(5), server.as_mut()).await;
}
