//! Slurm: `sbatch --parsable`, `squeue`, `scancel`, and `templates/slurm.sh.tera`.

use std::collections::HashMap;
use std::path::Path;

use super::{System, SystemDef};
use crate::batch::{RenderError, TemplateContext};
use crate::jobs::{
    check_ids, fill_gone, most_active, run, submit_with, BatchError, BatchSystem, Commands, JobState, Role,
};

/// Slurm's entry in [`super::SYSTEMS`].
pub const SYSTEM: System = System::new(&Def);

const PACKAGE: &str = "the Slurm client (Debian: slurm-client)";

/// What rdask knows of Slurm.
pub struct Def;

impl SystemDef for Def {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn description(&self) -> &'static str {
        "Slurm (sbatch, squeue, scancel)"
    }

    fn package(&self) -> &'static str {
        PACKAGE
    }

    fn default_commands(&self) -> Commands {
        Commands::named("sbatch", "squeue", "scancel")
    }

    fn template(&self) -> &'static str {
        include_str!("../../../templates/slurm.sh.tera")
    }

    fn validate(&self, job: &TemplateContext) -> Result<(), RenderError> {
        if job.resource_spec.is_some() {
            let hint = "use job-extra-directives, e.g. --constraint=…";
            return Err(RenderError::Unsupported { system: SYSTEM, what: "resource-spec", hint });
        }
        Ok(())
    }

    fn memory(&self, bytes: u64) -> Option<String> {
        Some(memory(bytes))
    }

    fn is_stderr_file(&self, file_name: &str, id: &str) -> bool {
        file_name.ends_with(&format!("-{id}.err"))
    }

    fn is_job_id(&self, id: &str) -> bool {
        is_job_id(id)
    }

    fn connect(&self, commands: Commands) -> Box<dyn BatchSystem> {
        Box::new(Slurm(commands))
    }
}

const KI: u64 = 1024;
const MI: u64 = KI * KI;
const GI: u64 = MI * KI;

/// Slurm `--mem`: whole KiB/MiB/GiB rounded **up**, with Slurm's suffixes `K`/`M`/`G` (which mean
/// binary units), as dask-jobqueue's `slurm_format_bytes_ceil`: 28GB → `27G`, 100GB → `94G`.
pub fn memory(bytes: u64) -> String {
    match bytes {
        b if b >= GI => format!("{}G", b.div_ceil(GI)),
        b if b >= MI => format!("{}M", b.div_ceil(MI)),
        b if b >= KI => format!("{}K", b.div_ceil(KI)),
        _ => "1K".to_string(),
    }
}

/// A Slurm job id: digits, or an array task's `digits_digits`.
pub fn is_job_id(id: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    match id.split_once('_') {
        Some((job, task)) => digits(job) && digits(task),
        None => digits(id),
    }
}

/// Slurm: `sbatch --parsable`, `squeue`, `scancel`.
#[derive(Clone, Debug)]
pub struct Slurm(pub Commands);

impl Default for Slurm {
    fn default() -> Slurm {
        Slurm(Def.default_commands())
    }
}

impl BatchSystem for Slurm {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn submit(&self, script: &Path) -> Result<String, BatchError> {
        submit_with(self.0.tool(Role::Submit, PACKAGE), &["--parsable"], script, parse_submit)
    }

    fn status(&self, ids: &[String]) -> Result<HashMap<String, JobState>, BatchError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        check_ids("slurm", ids, is_job_id)?;
        let list = ids.join(",");
        let args = ["-h", "-t", "all", "-o", "%i %T", "-j", &list];
        let out = match run(self.0.tool(Role::Status, PACKAGE), &args) {
            Ok(o) => o,
            // Every id purged: squeue fails with "Invalid job id specified".
            Err(BatchError::Failed { output, .. }) if output.contains("Invalid job id") => String::new(),
            Err(e) => return Err(e),
        };
        Ok(fill_gone(ids, parse_status(&out)))
    }

    fn cancel(&self, ids: &[String]) -> Result<(), BatchError> {
        if ids.is_empty() {
            return Ok(());
        }
        check_ids("slurm", ids, is_job_id)?;
        let args: Vec<&str> = ids.iter().map(String::as_str).collect();
        match run(self.0.tool(Role::Cancel, PACKAGE), &args) {
            Err(BatchError::Failed { output, .. }) if output.contains("Invalid job id") => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

/// `sbatch --parsable` prints `ID` or `ID;cluster`.
pub fn parse_submit(out: &str) -> Option<String> {
    let id = out.trim().split(';').next()?.trim();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit() || c == '_')).then(|| id.to_string())
}

/// `squeue -h -t all -o '%i %T'`: one `ID STATE` line per job (array tasks as `ID_N`).
pub fn parse_status(out: &str) -> HashMap<String, JobState> {
    let mut map: HashMap<String, JobState> = HashMap::new();
    for line in out.lines() {
        let mut it = line.split_whitespace();
        let (Some(id), Some(state)) = (it.next(), it.next()) else { continue };
        let state = match state {
            "PENDING" | "CONFIGURING" | "REQUEUED" | "RESIZING" => JobState::Pending,
            "RUNNING" | "COMPLETING" | "SUSPENDED" | "STOPPED" | "SIGNALING" | "STAGE_OUT" => JobState::Running,
            "COMPLETED" => JobState::Finished,
            "CANCELLED" => JobState::Cancelled,
            _ => JobState::Failed,
        };
        // An array job is as active as its most active task.
        let base = id.split('_').next().unwrap_or(id).to_string();
        let merged = map.get(&base).map_or(state, |old| most_active(*old, state));
        map.insert(base, merged);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::units::parse_memory;
    use proptest::prelude::*;

    #[test]
    fn slurm_output() {
        assert_eq!(parse_submit("12\n"), Some("12".into()));
        assert_eq!(parse_submit("12;rdask\n"), Some("12".into()));
        assert_eq!(parse_submit("Submitted batch job 12\n"), None);
        let s = parse_status("12 RUNNING\n13 PENDING\n14 COMPLETED\n15 CANCELLED\n16 TIMEOUT\n17_1 COMPLETED\n17_2 RUNNING\n17_[3-4] PENDING\n");
        assert_eq!(s["12"], JobState::Running);
        assert_eq!(s["13"], JobState::Pending);
        assert_eq!(s["14"], JobState::Finished);
        assert_eq!(s["15"], JobState::Cancelled);
        assert_eq!(s["16"], JobState::Failed);
        assert_eq!(s["17"], JobState::Running);
    }

    #[test]
    fn a_missing_command_names_its_package() {
        let sys = Slurm(Commands::named("/nonexistent/sbatch", "/nonexistent/squeue", "/nonexistent/scancel"));
        let e = sys.submit(Path::new("/tmp/x.sh")).unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/sbatch") && e.contains("slurm-client") && e.contains("--submit-command"),
            "{e}"
        );
    }

    #[test]
    fn ids_that_are_not_slurms_never_reach_its_commands() {
        let sys = Slurm(Commands::named("/nonexistent/sbatch", "/nonexistent/squeue", "/nonexistent/scancel"));
        let e = sys.cancel(&["12".into(), "--user=me".into()]).unwrap_err();
        assert!(matches!(e, BatchError::BadId { .. }), "{e}");
        assert!(is_job_id("12") && is_job_id("12_3") && !is_job_id("12_") && !is_job_id("_3"));
        assert!(Def.is_stderr_file("rdask-worker-12.err", "12") && !Def.is_stderr_file("rdask-worker-112.err.x", "12"));
    }

    #[test]
    fn memory_is_rounded_up_to_slurms_binary_units() {
        // Values from dask-jobqueue's doctests and golden files (its doctests say 13M, but its
        // code, which rounds up, gives 12M).
        for (n, slurm) in [
            (1, "1K"),
            (1234, "2K"),
            (12_345_678, "12M"),
            (1_234_567_890, "2G"),
            (15_000_000_000, "14G"),
            (28_000_000_000, "27G"),
            (100_000_000_000, "94G"),
            (5_000_000_000, "5G"),
        ] {
            assert_eq!(memory(n), slurm, "{n}");
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in ".*") {
            let _ = parse_submit(&s);
            let _ = parse_status(&s);
        }

        #[test]
        fn submitted_ids_round_trip(id in 1u64..u64::MAX / 2, cluster in proptest::option::of("[a-z][a-z0-9-]{0,12}")) {
            let out = match &cluster { Some(c) => format!("{id};{c}\n"), None => format!("{id}\n") };
            let parsed = parse_submit(&out);
            prop_assert_eq!(parsed.clone(), Some(id.to_string()));
            prop_assert!(is_job_id(&parsed.unwrap()));
        }

        #[test]
        fn memory_is_never_below_the_request(n in 1u64..u64::MAX / 2) {
            // Slurm's `27G` is 27 GiB: never less than asked for, less than one unit more.
            let slurm = memory(n);
            let back = parse_memory(&format!("{slurm}iB")).unwrap();
            prop_assert!(back >= n && back - n < n.max(KI), "{} -> {} -> {}", n, slurm, back);
        }
    }
}
