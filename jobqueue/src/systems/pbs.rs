//! PBS (PBS Pro, OpenPBS, and the PBS-style wrappers of `slurm-wlm-torque`): `qsub`, `qstat`,
//! `qdel`, and `templates/pbs.sh.tera`.

use std::collections::HashMap;
use std::path::Path;

use super::{System, SystemDef};
use crate::batch::{RenderError, TemplateContext};
use crate::jobs::{
    cancel_each, check_ids, submit_with, table_status, BatchError, BatchSystem, Commands, JobState, Role,
};

/// PBS's entry in [`super::SYSTEMS`].
pub const SYSTEM: System = System::new(&Def);

const PACKAGE: &str = "the PBS client commands (OpenPBS/PBS Pro qsub, qstat, qdel)";

/// What rdask knows of PBS.
pub struct Def;

impl SystemDef for Def {
    fn name(&self) -> &'static str {
        "pbs"
    }

    fn description(&self) -> &'static str {
        "PBS Pro, OpenPBS or PBS-style wrappers (qsub, qstat, qdel)"
    }

    fn package(&self) -> &'static str {
        PACKAGE
    }

    fn default_commands(&self) -> Commands {
        Commands::named("qsub", "qstat", "qdel")
    }

    fn template(&self) -> &'static str {
        include_str!("../../../templates/pbs.sh.tera")
    }

    fn validate(&self, job: &TemplateContext) -> Result<(), RenderError> {
        if job.resource_spec.is_some() && (job.gpus > 0 || job.nodes > 1) {
            let reason = "it replaces the generated select=…; write the node and GPU counts into it";
            return Err(RenderError::Invalid { key: "resource-spec", reason: reason.into() });
        }
        Ok(())
    }

    fn memory(&self, bytes: u64) -> Option<String> {
        Some(memory(bytes))
    }

    fn is_stderr_file(&self, file_name: &str, id: &str) -> bool {
        file_name.ends_with(&format!(".e{id}"))
    }

    fn is_job_id(&self, id: &str) -> bool {
        is_job_id(id)
    }

    fn connect(&self, commands: Commands) -> Box<dyn BatchSystem> {
        Box::new(Pbs(commands))
    }
}

const KI: u64 = 1024;
const MI: u64 = KI * KI;
const GI: u64 = MI * KI;

/// PBS `mem=`: as dask-jobqueue's `pbs_format_bytes_ceil` (rounded up; `GB`/`MB`/`kB` mean binary
/// units to PBS): ≥ 10 GiB → `27GB`; ≥ 10 MiB → `4769MB`; ≥ 10 KiB → `…kB`; else `…B`.
pub fn memory(bytes: u64) -> String {
    match bytes {
        b if b >= 10 * GI => format!("{}GB", b.div_ceil(GI)),
        b if b >= 10 * MI => format!("{}MB", b.div_ceil(MI)),
        b if b >= 10 * KI => format!("{}kB", b.div_ceil(KI)),
        b => format!("{b}B"),
    }
}

/// A PBS job id as rdask keeps it: the digits before `.server`.
pub fn is_job_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())
}

/// PBS (and the PBS-style wrappers of `slurm-wlm-torque`): `qsub`, `qstat`, `qdel`.
#[derive(Clone, Debug)]
pub struct Pbs(pub Commands);

impl Default for Pbs {
    fn default() -> Pbs {
        Pbs(Def.default_commands())
    }
}

impl BatchSystem for Pbs {
    fn name(&self) -> &'static str {
        "pbs"
    }

    fn submit(&self, script: &Path) -> Result<String, BatchError> {
        submit_with(self.0.tool(Role::Submit, PACKAGE), &[], script, parse_submit)
    }

    fn status(&self, ids: &[String]) -> Result<HashMap<String, JobState>, BatchError> {
        check_ids("pbs", ids, is_job_id)?;
        table_status(self.0.tool(Role::Status, PACKAGE), &[], ids, parse_status)
    }

    fn cancel(&self, ids: &[String]) -> Result<(), BatchError> {
        check_ids("pbs", ids, is_job_id)?;
        cancel_each(self.0.tool(Role::Cancel, PACKAGE), ids)
    }
}

/// PBS `qsub` prints `ID` or `ID.server`.
pub fn parse_submit(out: &str) -> Option<String> {
    let id = out.trim().lines().last()?.trim();
    let digits: String = id.chars().take_while(|c| c.is_ascii_digit()).collect();
    (!digits.is_empty()).then_some(digits)
}

/// PBS `qstat`: a table whose first column is the id (`ID` or `ID.server`) and fifth the state letter.
pub fn parse_status(out: &str) -> HashMap<String, JobState> {
    let mut map = HashMap::new();
    for line in out.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 5 || !cols[0].starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        let id: String = cols[0].chars().take_while(|c| c.is_ascii_digit()).collect();
        let state = match cols[4] {
            "Q" | "H" | "W" | "T" => JobState::Pending,
            "R" | "E" | "S" | "B" => JobState::Running,
            "C" | "F" | "X" => JobState::Finished,
            _ => JobState::Failed,
        };
        map.insert(id, state);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::units::parse_memory;
    use proptest::prelude::*;

    #[test]
    fn pbs_output() {
        assert_eq!(parse_submit("55\n"), Some("55".into()));
        assert_eq!(parse_submit("55.pbsserver\n"), Some("55".into()));
        let table = "Job id              Name             Username        Time Use S Queue\n\
                     ------------------- ---------------- --------------- -------- - ---------------\n\
                     49                  rdask-pbs-b      root            00:00:00 R debug\n\
                     50.srv              x                root            0        Q debug\n\
                     51                  y                root            00:00:01 C debug\n";
        let s = parse_status(table);
        assert_eq!((s["49"], s["50"], s["51"]), (JobState::Running, JobState::Pending, JobState::Finished));
        assert!(Def.is_stderr_file("rdask-worker.e49", "49") && !Def.is_stderr_file("rdask-worker.e149", "49"));
    }

    #[test]
    fn memory_is_rounded_up_as_dask_jobqueue_does() {
        for (n, pbs) in [
            (1, "1B"),
            (1234, "1234B"),
            // dask-jobqueue's doctests say 13MB and 1177MB, but its code (ceil) gives these.
            (12_345_678, "12MB"),
            (1_234_567_890, "1178MB"),
            (15_000_000_000, "14GB"),
            (28_000_000_000, "27GB"),
            (100_000_000_000, "94GB"),
            (5_000_000_000, "4769MB"),
        ] {
            assert_eq!(memory(n), pbs, "{n}");
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in ".*") {
            let _ = parse_submit(&s);
            let _ = parse_status(&s);
        }

        #[test]
        fn submitted_ids_round_trip(id in 0u64..u64::MAX / 2, server in proptest::option::of("[a-z][a-z0-9.-]{0,20}")) {
            let out = match &server { Some(s) => format!("{id}.{s}\n"), None => format!("{id}\n") };
            let parsed = parse_submit(&out);
            prop_assert_eq!(parsed.clone(), Some(id.to_string()));
            prop_assert!(is_job_id(&parsed.unwrap()));
        }

        #[test]
        fn memory_is_never_below_the_request(n in 1u64..u64::MAX / 2) {
            let pbs = memory(n).replace("kB", "KiB").replace("MB", "MiB").replace("GB", "GiB");
            prop_assert!(parse_memory(&pbs).unwrap() >= n);
        }
    }
}
