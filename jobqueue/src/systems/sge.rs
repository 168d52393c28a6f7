//! Son of Grid Engine: `qsub -terse`, `qstat -xml`, `qdel`, and `templates/sge.sh.tera`.

use std::collections::HashMap;
use std::path::Path;

use super::{System, SystemDef};
use crate::batch::{JobParams, RenderError, TemplateContext};
use crate::jobs::{
    cancel_each, check_ids, parsed_status, submit_with, BatchError, BatchSystem, Commands, JobState, Role,
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

/// Son of Grid Engine: `qsub -terse`, `qstat -xml`, `qdel`.
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
        parsed_status(self.0.tool(Role::Status, PACKAGE), &["-xml", "-u", "*"], ids, parse_status)
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

/// SGE `qstat -xml -u '*'`: a `<job_list>` per job (per task of an array, which share the job
/// number) under `<queue_info>` (running) and `<job_info>` (pending), each with its
/// `<JB_job_number>` and `<state>` letters; finished jobs are not listed.
pub fn parse_status(out: &str) -> Result<HashMap<String, JobState>, String> {
    let doc = roxmltree::Document::parse(out).map_err(|e| format!("not XML: {e}"))?;
    let root = doc.root_element().tag_name().name();
    if root != "job_info" {
        return Err(format!("<{root}> where <job_info> was expected"));
    }
    let mut map: HashMap<String, JobState> = HashMap::new();
    for job in doc.descendants().filter(|n| n.has_tag_name("job_list")) {
        let field = |name: &str| {
            job.children().find(|c| c.has_tag_name(name)).map(|c| c.text().unwrap_or("").trim().to_string())
        };
        let id = field("JB_job_number").filter(|id| is_job_id(id)).ok_or("a <job_list> without a job number")?;
        let state = state(&field("state").ok_or_else(|| format!("job {id} without a <state>"))?);
        // Array tasks share the id: running wins.
        let e = map.entry(id).or_insert(state);
        if state == JobState::Running {
            *e = state;
        }
    }
    Ok(map)
}

/// What SGE's state letters (`qw`, `hqw`, `r`, `t`, `Eqw`, `dr`, …) mean here.
fn state(letters: &str) -> JobState {
    let has = |c: char| letters.contains(c);
    // A job being deleted (`dr`, `dt`) still runs until SGE has killed it.
    if has('E') {
        JobState::Failed
    } else if has('d') && !has('r') && !has('t') {
        JobState::Cancelled
    } else if has('r') || has('t') || has('s') || has('S') || has('T') {
        JobState::Running
    } else {
        JobState::Pending
    }
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
        let xml = include_str!("testdata/sge-qstat.xml");
        let s = parse_status(xml).unwrap();
        assert_eq!(s["41"], JobState::Running);
        assert_eq!(s["42"], JobState::Running, "an array whose tasks run");
        assert_eq!(s["43"], JobState::Pending, "held");
        assert_eq!(s["44"], JobState::Failed);
        assert_eq!(s["45"], JobState::Running, "being deleted, still running");
        assert_eq!(s.len(), 5);
        let none = "<?xml version='1.0'?>\n<job_info><queue_info></queue_info><job_info></job_info></job_info>";
        assert!(parse_status(none).unwrap().is_empty());
        assert!(parse_status("error: commlib error: got select error").is_err(), "an error text is not 'no jobs'");
        assert!(parse_status("<job_info><job_list><state>r</state></job_list></job_info>").is_err());
        let all = fill_gone(&["41".into(), "99".into()], s);
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
        fn listed_jobs_are_read_back(jobs in proptest::collection::vec((1u64..1_000_000, "(qw|hqw|r|t|Eqw|dr|s|Rr)"), 0..20)) {
            let mut xml = String::from("<?xml version='1.0'?>\n<job_info xmlns:xsd=\"x\">\n  <queue_info>\n");
            for (id, letters) in &jobs {
                xml += &format!("    <job_list state=\"x\">\n      <JB_job_number>{id}</JB_job_number>\n      <JB_name>a&amp;b</JB_name>\n      <state>{letters}</state>\n    </job_list>\n");
            }
            xml += "  </queue_info>\n  <job_info>\n  </job_info>\n</job_info>\n";
            let parsed = parse_status(&xml).unwrap();
            for (id, _) in &jobs {
                // Array tasks share an id: the job runs if any task runs, else it is as its first task.
                let states: Vec<JobState> = jobs.iter().filter(|(i, _)| i == id).map(|(_, l)| state(l)).collect();
                let want = if states.contains(&JobState::Running) { JobState::Running } else { states[0] };
                prop_assert_eq!(parsed[&id.to_string()], want);
            }
            prop_assert_eq!(parsed.len(), jobs.iter().map(|j| j.0).collect::<std::collections::HashSet<_>>().len());
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
