//! Son of Grid Engine: `qsub -terse`, `qstat`, `qdel`, and `templates/sge.sh.tera`.

use std::collections::HashMap;
use std::path::Path;

use super::{System, SystemDef};
use crate::batch::{JobParams, RenderError, TemplateContext};
use crate::jobs::{
    cancel_each, check_ids, submit_with, table_status, BatchError, BatchSystem, Commands, JobState, Role,
};

/// SGE's entry in [`super::SYSTEMS`].
pub const SYSTEM: System = System::new(&Def);

const PACKAGE: &str = "the Grid Engine client (Debian: gridengine-client)";

/// What rdask knows of SGE.
pub struct Def;

impl SystemDef for Def {
    fn name(&self) -> &'static str {
        "sge"
    }

    fn description(&self) -> &'static str {
        "Son of Grid Engine (qsub, qstat, qdel)"
    }

    fn package(&self) -> &'static str {
        PACKAGE
    }

    fn default_commands(&self) -> Commands {
        Commands::named("qsub", "qstat", "qdel")
    }

    fn template(&self) -> &'static str {
        include_str!("../../../templates/sge.sh.tera")
    }

    /// SGE's `-P` takes a project: `project`, else `account`.
    fn account(&self, params: &JobParams) -> Option<String> {
        params.project.clone().or_else(|| params.account.clone())
    }

    fn validate(&self, job: &TemplateContext) -> Result<(), RenderError> {
        if job.nodes > 1 {
            let hint = "submit one job per node, or request a parallel environment with job-extra-directives";
            return Err(RenderError::Unsupported { system: SYSTEM, what: "nodes > 1", hint });
        }
        Ok(())
    }

    fn is_stderr_file(&self, file_name: &str, id: &str) -> bool {
        file_name.ends_with(&format!(".e{id}"))
    }

    fn is_job_id(&self, id: &str) -> bool {
        is_job_id(id)
    }

    fn connect(&self, commands: Commands) -> Box<dyn BatchSystem> {
        Box::new(Sge(commands))
    }
}

/// An SGE job id: digits (an array's tasks share it).
pub fn is_job_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())
}

/// Son of Grid Engine: `qsub -terse`, `qstat`, `qdel`.
#[derive(Clone, Debug)]
pub struct Sge(pub Commands);

impl Default for Sge {
    fn default() -> Sge {
        Sge(Def.default_commands())
    }
}

impl BatchSystem for Sge {
    fn name(&self) -> &'static str {
        "sge"
    }

    fn submit(&self, script: &Path) -> Result<String, BatchError> {
        submit_with(self.0.tool(Role::Submit, PACKAGE), &["-terse"], script, parse_submit)
    }

    fn status(&self, ids: &[String]) -> Result<HashMap<String, JobState>, BatchError> {
        check_ids("sge", ids, is_job_id)?;
        table_status(self.0.tool(Role::Status, PACKAGE), &["-u", "*"], ids, parse_status)
    }

    fn cancel(&self, ids: &[String]) -> Result<(), BatchError> {
        check_ids("sge", ids, is_job_id)?;
        cancel_each(self.0.tool(Role::Cancel, PACKAGE), ids)
    }
}

/// `qsub -terse` prints `ID`, or `ID.1-10:1` for an array.
pub fn parse_submit(out: &str) -> Option<String> {
    let id: String = out.trim().chars().take_while(|c| c.is_ascii_digit()).collect();
    (!id.is_empty()).then_some(id)
}

/// SGE `qstat`: `job-ID prior name user state …`; finished jobs are not listed.
pub fn parse_status(out: &str) -> HashMap<String, JobState> {
    let mut map: HashMap<String, JobState> = HashMap::new();
    for line in out.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 5 || !cols[0].chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let s = cols[4];
        // A job being deleted (`dr`, `dt`) still runs until SGE has killed it.
        let state = if s.contains('E') {
            JobState::Failed
        } else if s.contains('d') && !s.contains('r') && !s.contains('t') {
            JobState::Cancelled
        } else if s.contains('r') || s.contains('t') || s.contains('s') || s.contains('S') || s.contains('T') {
            JobState::Running
        } else {
            JobState::Pending
        };
        // Array tasks share the id: running wins.
        let e = map.entry(cols[0].to_string()).or_insert(state);
        if state == JobState::Running {
            *e = state;
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::fill_gone;
    use proptest::prelude::*;

    #[test]
    fn sge_output() {
        assert_eq!(parse_submit("3\n"), Some("3".into()));
        assert_eq!(parse_submit("5.1-10:1\n"), Some("5".into()));
        let table = "job-ID  prior   name       user         state submit/start at     queue                          slots ja-task-ID\n\
        -----------------------------------------------------------------------------------------------------------------\n\
              3 0.50000 pend       root         r     11/25/2026 12:45:09 all.q@vm                           1\n\
              4 0.00000 heldjob    root         hqw   11/25/2026 12:45:09                                    1\n\
              5 0.00000 bad        root         Eqw   11/25/2026 12:45:09                                    1\n\
              6 0.00000 del        root         dr    11/25/2026 12:45:09 all.q@vm                           1\n";
        let s = parse_status(table);
        assert_eq!(s["3"], JobState::Running);
        assert_eq!(s["4"], JobState::Pending);
        assert_eq!(s["5"], JobState::Failed);
        assert_eq!(s["6"], JobState::Running, "being deleted, still running");
        let all = fill_gone(&["3".into(), "99".into()], s);
        assert_eq!(all["99"], JobState::Gone);
        assert!(Def.is_stderr_file("rdask-worker.e3", "3") && !Def.is_stderr_file("rdask-worker.e33", "3"));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in ".*") {
            let _ = parse_submit(&s);
            let _ = parse_status(&s);
        }

        #[test]
        fn submitted_ids_round_trip(id in 0u64..u64::MAX / 2, array in proptest::option::of((1u32..100, 1u32..1000))) {
            let out = match array { Some((a, b)) => format!("{id}.{a}-{b}:1\n"), None => format!("{id}\n") };
            let parsed = parse_submit(&out);
            prop_assert_eq!(parsed.clone(), Some(id.to_string()));
            prop_assert!(is_job_id(&parsed.unwrap()));
        }
    }
}
