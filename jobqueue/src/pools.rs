//! What a cluster spec means for batch jobs: the batch system and its commands, the job
//! parameters, the worker command and the worker pools (thin views of [`crate::spec`]).

use crate::batch::{self, System};
use crate::error::{Error, Result};
use crate::spec::ClusterSpec;
use crate::state::StateDir;
use rdask::cluster::SECRET_FILE;

/// The batch system a spec names, or `None` for the local backend.
pub(crate) fn batch_system_of(spec: &ClusterSpec) -> Option<System> {
    spec.backend.batch()
}

pub(crate) fn commands_of(spec: &ClusterSpec, system: System) -> crate::jobs::Commands {
    spec.commands_for(system)
}

/// The main pool's job parameters.
pub(crate) fn job_params(spec: &ClusterSpec) -> batch::JobParams {
    spec.main_pool().params.clone()
}

/// The worker command of a job: this program (or `--worker-command`) joining the cluster,
/// which runs `--worker-program` as the worker where one is given.
pub(crate) fn worker_argv(spec: &ClusterSpec, state: &StateDir, addresses: &[String]) -> Result<Vec<String>> {
    let (exe, leading) = match &spec.workers.command {
        Some(p) => (p.clone(), Vec::new()),
        None => crate::embed::self_command()?,
    };
    let addresses = if addresses.is_empty() { "<scheduler-address>".to_string() } else { addresses.join(",") };
    let mut v = vec![exe.display().to_string()];
    v.extend(leading);
    v.extend(["--name".into(), state.name.clone()]);
    if let Some(h) = state.path.parent() {
        v.extend(["--home".into(), h.display().to_string()]);
    }
    v.extend([
        "worker".into(),
        "--scheduler".into(),
        addresses,
        "--secret-file".into(),
        state.file(SECRET_FILE).display().to_string(),
    ]);
    if let Some(program) = &spec.workers.program {
        let abs = std::fs::canonicalize(program).map_err(Error::io(format!(
            "the worker program {} cannot be found (give its path with --worker-program)",
            program.display()
        )))?;
        v.extend(["--program".into(), abs.display().to_string()]);
    }
    // GPUs are found in the job's environment; named resources are passed on.
    for (name, n) in &spec.workers.resources {
        v.extend(["--resource".into(), format!("{name}={n}")]);
    }
    if spec.workers.per_gpu {
        v.push("--worker-per-gpu".into());
    }
    Ok(v)
}
