//! What the scheduler's options mean for batch jobs: the batch system and its commands, the job
//! parameters, the worker command, the worker pools and the `scale` target files.

use super::*;

/// The batch system a scheduler's options name, or `None` for the local backend.
pub(crate) fn batch_system_of(a: &SchedulerArgs) -> Result<Option<System>> {
    Ok(match a.backend.as_str() {
        "local" => None,
        other => Some(other.parse()?),
    })
}

pub(crate) fn commands_of(a: &SchedulerArgs, system: System) -> crate::jobs::Commands {
    let d = backend::default_commands(system);
    crate::jobs::Commands {
        submit: a.submit_command.clone().unwrap_or(d.submit),
        status: a.status_command.clone().unwrap_or(d.status),
        cancel: a.cancel_command.clone().unwrap_or(d.cancel),
    }
}

/// Jobs to submit for `--nodes`: one per `--nodes-per-job` nodes.
pub(crate) fn jobs_for(a: &SchedulerArgs) -> usize {
    let per = a.job.nodes.unwrap_or(1).max(1);
    a.nodes.div_ceil(per) as usize
}

/// The job parameters with what the scheduler's own options imply.
pub(crate) fn job_params(a: &SchedulerArgs, state: &StateDir) -> batch::JobParams {
    let mut p = a.job.clone();
    p.death_timeout = Some(a.death_timeout);
    p.interface.clone_from(&a.interface);
    if a.job_array {
        p.array = Some(jobs_for(a) as u32);
    }
    if p.cores.is_none() {
        p.cores = Some(u32::from(a.slots));
    }
    if p.log_directory.is_none() {
        p.log_directory = Some(state.path.join("logs").display().to_string());
    }
    p
}

/// The worker command of a job: this program (or `--worker-command`) joining the cluster.
pub(crate) fn worker_argv(a: &SchedulerArgs, state: &StateDir, addresses: &[String]) -> Result<Vec<String>> {
    let exe = match &a.worker_command {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("cannot find this program's path")?,
    };
    let addresses = if addresses.is_empty() { "<scheduler-address>".to_string() } else { addresses.join(",") };
    let mut v = vec![exe.display().to_string(), "--name".into(), state.name.clone()];
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
    Ok(v)
}

/// Where `scale` writes the number of workers (local) or nodes (batch) the cluster should have.
pub(crate) const TARGET_FILE: &str = "target";

pub(crate) fn target_file(pool: &str) -> String {
    if pool == backend::DEFAULT_POOL {
        TARGET_FILE.to_string()
    } else {
        format!("{TARGET_FILE}-{pool}")
    }
}

pub(crate) fn read_target(state: &StateDir, pool: &str) -> Option<u32> {
    std::fs::read_to_string(state.file(&target_file(pool))).ok()?.trim().parse().ok()
}

/// A worker pool as the scheduler runs it: its job parameters and its number of nodes.
#[derive(Clone, Debug)]
pub(crate) struct PoolPlan {
    pub(crate) name: String,
    pub(crate) params: batch::JobParams,
    pub(crate) nodes: u32,
}

impl PoolPlan {
    pub(crate) fn per_job(&self) -> u32 {
        self.params.nodes.unwrap_or(1).max(1)
    }

    /// Jobs for `nodes` nodes: one per `nodes-per-job`.
    pub(crate) fn jobs_for_nodes(&self, nodes: u32) -> usize {
        nodes.div_ceil(self.per_job()) as usize
    }

    pub(crate) fn jobs(&self) -> usize {
        self.jobs_for_nodes(self.nodes)
    }

    /// The workers of one job and the slots of each.
    pub(crate) fn shape(&self) -> adapt::JobShape {
        let processes = self.params.processes.unwrap_or(1).max(1);
        let slots = (self.params.cores.unwrap_or(1) / processes).max(1);
        adapt::JobShape { workers: self.per_job() * processes, slots }
    }

    /// Workers its jobs hold when they all run.
    pub(crate) fn workers(&self) -> usize {
        self.jobs() * (self.per_job() * self.params.processes.unwrap_or(1)) as usize
    }
}

/// The default pool (the main options) and every `--pool`.
pub(crate) fn pools_of(a: &SchedulerArgs, state: &StateDir) -> Result<Vec<PoolPlan>> {
    let base = job_params(a, state);
    let mut pools = vec![PoolPlan { name: backend::DEFAULT_POOL.into(), params: base.clone(), nodes: a.nodes }];
    for spec in &a.pool {
        let mut words = spec.split_whitespace();
        let name = words.next().unwrap_or_default().to_string();
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            bail!("--pool `{spec}` must start with a name (letters, digits, - and _), e.g. --pool 'gpu nodes=2 queue=gpu'");
        }
        if pools.iter().any(|p| p.name == name) {
            bail!("two pools are named `{name}`; give each --pool its own name");
        }
        let mut params = serde_json::to_value(&base)?;
        params["job-name"] = serde_json::Value::String(format!("rdask-{name}"));
        let mut nodes = 1;
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                bail!("`{word}` in pool `{name}` is not KEY=VALUE (e.g. queue=gpu)");
            };
            if key == "nodes" {
                nodes = value.parse().map_err(|_| anyhow!("nodes={value} in pool `{name}` is not a whole number"))?;
                continue;
            }
            let key = if key == "nodes-per-job" { "nodes" } else { key };
            let obj = params.as_object_mut().expect("job parameters are an object");
            let Some(slot) = obj.get_mut(key) else {
                let mut keys: Vec<&str> = obj.keys().map(String::as_str).filter(|k| *k != "nodes").collect();
                keys.sort();
                bail!("unknown key `{key}` in pool `{name}`; valid keys: nodes, nodes-per-job, {}", keys.join(", "));
            };
            match slot {
                serde_json::Value::Array(items) => items.push(serde_json::Value::String(value.to_string())),
                _ => {
                    *slot = match value.parse::<u64>() {
                        Ok(n) => serde_json::Value::from(n),
                        Err(_) => serde_json::Value::String(value.to_string()),
                    }
                }
            }
        }
        let params: batch::JobParams =
            serde_json::from_value(params).map_err(|e| anyhow!("bad value in pool `{name}`: {e}"))?;
        let mut plan = PoolPlan { name, params, nodes };
        if a.job_array {
            plan.params.array = Some(plan.jobs() as u32);
        }
        pools.push(plan);
    }
    Ok(pools)
}
