//! `worker`: a worker in the foreground (command tasks, or a user's program as the worker).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdask::cluster::{ClusterInfo, SECRET_FILE};
use rdask::protocol::{Offer, OFFER_VAR};
use rdask::Secret;

use crate::cli::WorkerArgs;
use crate::error::{Error, Result};
use crate::net;
use crate::resources;
use crate::state::StateDir;

/// `worker`: runs a worker (command tasks only) in the foreground.
pub(crate) async fn worker(state: &StateDir, a: WorkerArgs) -> Result<i32> {
    rdask::init_logging();
    // Where the secret was read from, for a worker program to read it too.
    let mut secret_file = None;
    let info = match &a.scheduler {
        Some(addr) => {
            let addresses = addr
                .split(',')
                .map(|s| s.trim().parse())
                .collect::<Result<Vec<rdask::Address>, _>>()
                .map_err(|e| Error::Usage(format!("bad --scheduler `{addr}`: {e}")))?;
            let file = a.secret_file.clone().unwrap_or_else(|| state.file(SECRET_FILE));
            let secret = Secret::load(&file)
                .map_err(|source| Error::Secret { source, hint: "\n(give the cluster's secret with --secret-file)" })?;
            secret_file = Some(file);
            ClusterInfo { addresses, secret }
        }
        None => match std::env::var("RDASK_SCHEDULER") {
            Ok(_) => ClusterInfo::from_env()?,
            Err(_) => ClusterInfo::from_state_dir(
                &std::env::var_os("RDASK_STATE_DIR").map(PathBuf::from).unwrap_or(state.path.clone()),
            )?,
        },
    };
    // Its launch tag comes from RDASK_LAUNCH_TAG, which the job script sets.
    let mut config = rdask::worker::WorkerConfig::new(info);
    if let Some(dir) = &a.local_directory {
        let dir = expand_vars(dir);
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("cannot create local directory {dir}")))?;
        std::env::set_current_dir(&dir).map_err(Error::io(format!("cannot enter local directory {dir}")))?;
    }
    if let Some(iface) = &a.interface {
        config.listen_host = net::interface_ipv4(iface)?.to_string();
    }
    if let Some(s) = a.slots.or_else(|| std::env::var("RDASK_SLOTS").ok().and_then(|v| v.parse().ok())) {
        config.slots = s;
    }
    config.death_timeout = Duration::from_secs(
        a.death_timeout
            .or_else(|| std::env::var("RDASK_DEATH_TIMEOUT").ok().and_then(|v| v.parse().ok()))
            .unwrap_or(60),
    );
    if let Some(life) = a.lifetime {
        config.ends_at = Some(Instant::now() + Duration::from_secs(life) - stagger(a.lifetime_stagger.min(life)));
    }
    let env = |k: &str| std::env::var(k).ok();
    config.offer = match std::env::var(OFFER_VAR) {
        // Set by whoever started this worker (the local backend, from `up --resource`).
        Ok(text) if a.offer.gpus.is_none() && a.offer.resources.is_empty() && a.offer.memory.is_none() => {
            let mut offer = Offer::from_text(&text).map_err(|e| Error::Usage(format!("{OFFER_VAR}: {e}")))?;
            if offer.gpus.is_empty() {
                offer.gpus = resources::detect_gpus(&env);
            }
            offer
        }
        _ => a.offer.offer(&env).map_err(Error::Usage)?,
    };
    if a.worker_per_gpu {
        if config.offer.gpus.is_empty() {
            return Err(Error::Usage(
                "--worker-per-gpu: this worker has no GPU (none found; give them with --gpus 0,1 or --resource gpu=N)"
                    .into(),
            ));
        }
        let mut args = vec!["--name".to_string(), state.name.clone()];
        if let Some(h) = state.path.parent() {
            args.extend(["--home".into(), h.display().to_string()]);
        }
        args.push("worker".into());
        let mut opt = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                args.extend([k.to_string(), v]);
            }
        };
        opt("--scheduler", a.scheduler.clone());
        opt("--secret-file", a.secret_file.as_ref().map(|f| f.display().to_string()));
        opt("--death-timeout", Some(config.death_timeout.as_secs().to_string()));
        opt("--local-directory", a.local_directory.clone());
        opt("--interface", a.interface.clone());
        opt("--lifetime", a.lifetime.map(|l| l.to_string()));
        opt("--lifetime-stagger", a.lifetime.map(|_| a.lifetime_stagger.to_string()));
        opt("--program", a.program.as_ref().map(|p| p.display().to_string()));
        return resources::worker_per_gpu(&args, &config.offer, config.slots)
            .await
            .map_err(Error::io("cannot start the workers of --worker-per-gpu"));
    }
    if let Some(program) = &a.program {
        return Err(exec_worker_program(program, &config, secret_file.as_deref()));
    }
    rdask::worker::run(config, crate::embed::worker_registry()).await?;
    Ok(0)
}

/// Replaces this process by `program`, a worker configured through its environment as
/// [`rdask::worker_main`] reads it (same pid: the batch system's signals reach it); returns
/// only on failure.
fn exec_worker_program(program: &Path, config: &rdask::worker::WorkerConfig, secret_file: Option<&Path>) -> Error {
    use std::os::unix::process::CommandExt;
    let addresses: Vec<String> = config.cluster.addresses.iter().map(|a| a.to_string()).collect();
    let mut cmd = std::process::Command::new(program);
    cmd.env(rdask::local::ROLE_VAR, "worker")
        .env("RDASK_SCHEDULER", addresses.join(","))
        .env("RDASK_SLOTS", config.slots.to_string())
        .env("RDASK_DEATH_TIMEOUT", config.death_timeout.as_secs().to_string())
        .env("RDASK_LISTEN_HOST", &config.listen_host)
        .env(OFFER_VAR, config.offer.to_text());
    match secret_file {
        Some(f) => cmd.env("RDASK_SECRET_FILE", f).env_remove("RDASK_SECRET"),
        None => cmd.env("RDASK_SECRET", config.cluster.secret.to_hex()),
    };
    if let Some(at) = config.ends_at {
        cmd.env("RDASK_LIFETIME_MS", at.saturating_duration_since(Instant::now()).as_millis().to_string());
    }
    let e = cmd.exec();
    Error::Io { what: format!("cannot start the worker program {}", program.display()), source: e }
}

/// A pseudo-random duration up to `max_secs`, different for each process.
fn stagger(max_secs: u64) -> Duration {
    if max_secs == 0 {
        return Duration::ZERO;
    }
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let mixed = (u64::from(std::process::id()) << 32 | u64::from(nanos)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    Duration::from_millis((mixed >> 11) % (max_secs * 1000))
}

/// `$VAR` and `${VAR}` replaced by their values (unset: empty), as a shell would.
fn expand_vars(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(end) => (&inner[..end], &inner[end + 1..]),
                None => ("", after),
            }
        } else {
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if name.is_empty() {
            out.push('$');
            rest = after;
        } else {
            out.push_str(&std::env::var(name).unwrap_or_default());
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}
