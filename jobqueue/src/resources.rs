//! What workers offer and tasks need besides CPUs, from the command line and the environment:
//! `--gpus`, `--memory`, `--resource NAME=N`, and the GPUs a worker finds it was given.

use std::path::Path;

use clap::Args;
use rdask::protocol::{is_resource_name, Needs, Offer};

use crate::batch::units::parse_memory;

/// What each task of a submission needs (`submit --gpus 1 --memory 4GB --resource license=1`).
#[derive(Clone, Debug, Default, Args)]
pub struct NeedArgs {
    /// GPUs each task needs: it runs only where that many are free, with CUDA_VISIBLE_DEVICES
    /// (and ROCR_VISIBLE_DEVICES, ZE_AFFINITY_MASK) set to exactly its GPUs.
    #[arg(long, default_value_t = 0, help_heading = "Resources")]
    pub gpus: u16,
    /// Memory each task needs, e.g. 4GB: it runs only on workers that declared enough free.
    #[arg(long, help_heading = "Resources")]
    pub memory: Option<String>,
    /// A named resource each task needs, NAME=COUNT (repeatable), e.g. license=1.
    #[arg(long = "resource", value_name = "NAME=COUNT", help_heading = "Resources")]
    pub resources: Vec<String>,
    /// Run only on workers of this pool (`up --pool NAME …`; the main one is `default`).
    #[arg(long, help_heading = "Resources")]
    pub pool: Option<String>,
}

impl NeedArgs {
    /// The typed need; the error says which option is wrong and how to write it.
    pub fn needs(&self) -> Result<Needs, String> {
        let memory = match &self.memory {
            Some(m) => parse_memory(m).map_err(|e| format!("--memory: {e}"))?,
            None => 0,
        };
        let mut named = parse_named_list(&self.resources)?;
        // `gpu` is the GPUs' own name: `--resource gpu=2` is `--gpus 2`.
        let mut gpus = self.gpus;
        if let Some(i) = named.iter().position(|(k, _)| k == "gpu") {
            let (_, n) = named.remove(i);
            gpus = gpus.max(u16::try_from(n).map_err(|_| "--resource gpu=N: at most 65535 GPUs".to_string())?);
        }
        if let Some(p) = self.pool.as_deref().filter(|p| !is_resource_name(p)) {
            return Err(format!("--pool `{p}` is not a pool name"));
        }
        Ok(Needs { gpus, memory, named, pool: self.pool.clone() })
    }
}

/// What a worker offers (`worker --gpus 0,1 --resource license=4`, `up --resource gpu=4`).
#[derive(Clone, Debug, Default, Args)]
pub struct OfferArgs {
    /// The GPUs this worker may use, as CUDA_VISIBLE_DEVICES names them (e.g. 0,1), or `none`
    /// [default: found: CUDA_VISIBLE_DEVICES, ROCR_VISIBLE_DEVICES, the batch system's GPU
    /// variables, else nvidia-smi].
    #[arg(long = "gpus", value_name = "LIST", help_heading = "Resources")]
    pub gpus: Option<String>,
    /// Memory the worker offers to tasks that ask for memory, e.g. 16GB [default: none declared].
    #[arg(long = "memory", help_heading = "Resources")]
    pub memory: Option<String>,
    /// A named resource the worker offers, NAME=COUNT (repeatable); `gpu=4` offers GPUs 0-3.
    #[arg(long = "resource", value_name = "NAME=COUNT", help_heading = "Resources")]
    pub resources: Vec<String>,
}

/// Reads `NAME=COUNT` items; the error names the item and the rule.
pub fn parse_named_list(items: &[String]) -> Result<Vec<(String, u32)>, String> {
    let mut named = Vec::new();
    for item in items.iter().flat_map(|i| i.split(',')).map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("--resource `{item}`: write it as NAME=COUNT, e.g. license=1"))?;
        let (k, v) = (k.trim(), v.trim());
        if !is_resource_name(k) || k == "gpus" || k == "memory" || k == "pool" {
            return Err(format!(
                "--resource `{item}`: `{k}` is not a resource name (a letter, then letters, digits, _ - .; \
                 use --gpus, --memory and --pool for those)"
            ));
        }
        let n: u32 = v.parse().map_err(|_| format!("--resource `{item}`: `{v}` is not a whole number"))?;
        if named.iter().any(|(name, _)| name == k) {
            return Err(format!("--resource `{k}` is given twice"));
        }
        named.push((k.to_string(), n));
    }
    named.sort();
    Ok(named)
}

/// A GPU list as CUDA_VISIBLE_DEVICES and the batch systems write it: `0,1`, `GPU-uuid,…`;
/// Slurm may write ranges (`0-3`). `None` for an empty or malformed list.
pub fn parse_gpu_list(s: &str) -> Option<Vec<String>> {
    let s = s.trim();
    if s.is_empty() || s == "none" || s == "NoDevFiles" {
        return None;
    }
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim) {
        if item.is_empty() || item.len() > 64 || !item.chars().all(|c| c.is_ascii_alphanumeric() || "-_:".contains(c)) {
            return None;
        }
        match item.split_once('-').and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?))) {
            Some((a, b)) if a <= b && b - a < 1024 => out.extend((a..=b).map(|i| i.to_string())),
            _ => out.push(item.to_string()),
        }
    }
    Some(out)
}

/// The variables that may name the GPUs given to this process, most specific first.
pub const GPU_ENV: [&str; 5] =
    ["CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "GPU_DEVICE_ORDINAL"];

/// The GPUs this process was given: the first of [`GPU_ENV`] that is set and well-formed,
/// else the devices `nvidia-smi` lists, else none.
pub fn detect_gpus(env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    for var in GPU_ENV {
        if let Some(v) = env(var) {
            // Set but empty (or NoDevFiles): the batch system gave no GPU.
            return parse_gpu_list(&v).unwrap_or_default();
        }
    }
    nvidia_smi_indices(Path::new("nvidia-smi")).unwrap_or_default()
}

/// `nvidia-smi --query-gpu=index --format=csv,noheader`: one index per line.
fn nvidia_smi_indices(program: &Path) -> Option<Vec<String>> {
    let out = std::process::Command::new(program)
        .args(["--query-gpu=index", "--format=csv,noheader"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let list: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
    list.iter().all(|l| l.chars().all(|c| c.is_ascii_digit())).then_some(list)
}

impl OfferArgs {
    /// The worker's offer: the options, or what it finds in `env` where they are silent.
    pub fn offer(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Offer, String> {
        let mut named = parse_named_list(&self.resources)?;
        let counted = named.iter().position(|(k, _)| k == "gpu").map(|i| named.remove(i).1);
        let gpus = match (&self.gpus, counted) {
            (Some(_), Some(_)) => return Err("give the GPUs either with --gpus or with --resource gpu=N".into()),
            (Some(list), None) if list.trim() == "none" => Vec::new(),
            (Some(list), None) => parse_gpu_list(list)
                .ok_or_else(|| format!("--gpus `{list}`: write the devices as CUDA_VISIBLE_DEVICES does, e.g. 0,1"))?,
            (None, Some(n)) => (0..n).map(|i| i.to_string()).collect(),
            (None, None) => detect_gpus(env),
        };
        let memory = match &self.memory {
            Some(m) => parse_memory(m).map_err(|e| format!("--memory: {e}"))?,
            None => 0,
        };
        // The pool, from the launch tag (`<pool>/<n>`) whoever started the worker gave it.
        let pool = env(rdask::worker::LAUNCH_TAG_VAR)
            .and_then(|t| t.split_once('/').map(|(p, _)| p.to_string()))
            .filter(|p| is_resource_name(p));
        Ok(Offer { gpus, memory, named, pool })
    }
}

/// `worker --worker-per-gpu`: one worker process per GPU of `offer`, as dask-cuda's
/// `LocalCUDACluster` does: each is this program again with `args` (the worker's own options,
/// without `--worker-per-gpu`) and `--gpus ID`, pinned to its device by `CUDA_VISIBLE_DEVICES`
/// (and the ROCm and oneAPI equivalents), with an equal share of the slots, memory and named
/// resources. They share the launch tag. SIGTERM and SIGINT are passed on; the exit status is
/// the first failure's, else 0.
pub async fn worker_per_gpu(args: &[String], offer: &Offer, slots: u16) -> std::io::Result<i32> {
    let n = offer.gpus.len().max(1);
    let (exe, leading) = crate::embed::self_command().map_err(std::io::Error::other)?;
    let mut children = Vec::new();
    for (i, gpu) in offer.gpus.iter().enumerate() {
        let share = |total: u64| total / n as u64 + u64::from((i as u64) < total % n as u64);
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(&leading).args(args).args(["--gpus", gpu]);
        cmd.args(["--slots", &(slots as usize / n).max(1).to_string()]);
        if offer.memory > 0 {
            cmd.args(["--memory", &format!("{}B", share(offer.memory))]);
        }
        for (name, count) in &offer.named {
            let mine = share(u64::from(*count));
            if mine > 0 {
                cmd.args(["--resource", &format!("{name}={mine}")]);
            }
        }
        for var in rdask::worker::GPU_VARS {
            cmd.env(var, gpu);
        }
        cmd.env_remove(rdask::protocol::OFFER_VAR);
        children.push(cmd.spawn()?);
    }
    let pids: Vec<i32> = children.iter().filter_map(|c| c.id()).map(|p| p as i32).collect();
    let forward = tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        loop {
            let sig = tokio::select! {
                _ = term.recv() => nix::sys::signal::Signal::SIGTERM,
                _ = int.recv() => nix::sys::signal::Signal::SIGINT,
            };
            for p in &pids {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), sig);
            }
        }
    });
    let mut code = 0;
    for mut c in children {
        let status = c.wait().await?;
        if code == 0 && !status.success() {
            code = status.code().unwrap_or(1);
        }
    }
    forward.abort();
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn gpus_are_found_in_the_environment_most_specific_first() {
        let found = |vars: &[(&str, &str)]| detect_gpus(&env(vars));
        assert_eq!(found(&[("CUDA_VISIBLE_DEVICES", "2,3"), ("SLURM_JOB_GPUS", "0-3")]), ["2", "3"]);
        assert_eq!(found(&[("SLURM_JOB_GPUS", "0-2")]), ["0", "1", "2"]);
        assert_eq!(found(&[("ROCR_VISIBLE_DEVICES", "GPU-1a2b")]), ["GPU-1a2b"]);
        assert!(found(&[("CUDA_VISIBLE_DEVICES", ""), ("SLURM_JOB_GPUS", "0")]).is_empty(), "set empty: none given");
        assert!(found(&[("CUDA_VISIBLE_DEVICES", "NoDevFiles")]).is_empty());
    }

    #[test]
    fn worker_options_win_over_the_environment() {
        let e = env(&[("CUDA_VISIBLE_DEVICES", "0,1"), ("RDASK_LAUNCH_TAG", "gpu/7")]);
        let o = |gpus: Option<&str>, res: &[&str]| {
            OfferArgs {
                gpus: gpus.map(str::to_string),
                memory: None,
                resources: res.iter().map(|s| s.to_string()).collect(),
            }
            .offer(&e)
        };
        assert_eq!(o(Some("5"), &[]).unwrap().gpus, ["5"]);
        assert_eq!(
            o(None, &["gpu=4", "license=2"]).unwrap(),
            Offer {
                gpus: vec!["0".into(), "1".into(), "2".into(), "3".into()],
                memory: 0,
                named: vec![("license".into(), 2)],
                pool: Some("gpu".into()),
            }
        );
        assert!(o(Some("none"), &[]).unwrap().gpus.is_empty());
        assert_eq!(o(None, &[]).unwrap().gpus, ["0", "1"], "found when not given");
        assert!(o(Some("0"), &["gpu=1"]).unwrap_err().contains("either"));
        assert!(o(Some("a b"), &[]).unwrap_err().contains("--gpus"));
    }

    #[test]
    fn bad_resources_say_what_to_write() {
        let n = |items: &[&str]| parse_named_list(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(n(&["license=1,db=2"]).unwrap(), vec![("db".into(), 2), ("license".into(), 1)]);
        assert!(n(&["license"]).unwrap_err().contains("NAME=COUNT"));
        assert!(n(&["license=x"]).unwrap_err().contains("whole number"));
        assert!(n(&["1x=2"]).unwrap_err().contains("not a resource name"));
        assert!(n(&["memory=2"]).unwrap_err().contains("--memory"));
        assert!(n(&["a=1", "a=2"]).unwrap_err().contains("twice"));
        let need = NeedArgs { gpus: 0, memory: Some("4GB".into()), resources: vec!["gpu=2".into()], pool: None }
            .needs()
            .unwrap();
        assert_eq!((need.gpus, need.memory, need.named.len()), (2, 4_000_000_000, 0));
        assert!(NeedArgs { memory: Some("lots".into()), ..NeedArgs::default() }
            .needs()
            .unwrap_err()
            .contains("--memory"));
    }

    proptest! {
        #[test]
        fn gpu_lists_never_panic(s in ".*") {
            let _ = parse_gpu_list(&s);
        }

        #[test]
        fn gpu_lists_round_trip(ids in proptest::collection::vec("[0-9]{1,3}|GPU-[0-9a-f]{8}", 1..8)) {
            prop_assert_eq!(parse_gpu_list(&ids.join(",")), Some(ids));
        }

        #[test]
        fn named_resources_round_trip(items in proptest::collection::btree_map("[a-z][a-z0-9_.-]{0,10}", 0u32..1_000_000, 0..6)) {
            let items: Vec<(String, u32)> = items.into_iter().filter(|(k, _)| k != "gpus" && k != "memory").collect();
            let text: Vec<String> = items.iter().map(|(k, v)| format!("{k}={v}")).collect();
            prop_assert_eq!(parse_named_list(&text).unwrap(), items);
        }
    }
}
