//! IBM Spectrum LSF: `bsub` (the script on its standard input), `bjobs`, `bkill`, and
//! `templates/lsf.sh.tera` (directives as dask-jobqueue's `LSFJob` writes them).

use std::collections::HashMap;
use std::path::Path;

use super::{System, SystemDef};
use crate::batch::{JobParams, RenderError, TemplateContext};
use crate::jobs::{
    check_ids, fill_gone, most_active, run, submit_on_stdin, BatchError, BatchSystem, Commands, JobState, Role,
};

/// LSF's entry in [`super::SYSTEMS`].
pub const SYSTEM: System = System::new(&Def);

const PACKAGE: &str =
    "the LSF client commands (bsub, bjobs, bkill; `source <LSF_TOP>/conf/profile.lsf` puts them on PATH)";

/// What rdask knows of LSF.
pub struct Def;

impl SystemDef for Def {
    fn name(&self) -> &'static str {
        "lsf"
    }

    fn description(&self) -> &'static str {
        "IBM Spectrum LSF (bsub, bjobs, bkill)"
    }

    fn package(&self) -> &'static str {
        PACKAGE
    }

    fn default_commands(&self) -> Commands {
        Commands::named("bsub", "bjobs", "bkill")
    }

    fn template(&self) -> &'static str {
        include_str!("../../../templates/lsf.sh.tera")
    }

    /// LSF's `-P` takes a project: `project`, else `account`.
    fn account(&self, params: &JobParams) -> Option<String> {
        params.project.clone().or_else(|| params.account.clone())
    }

    fn validate(&self, job: &TemplateContext) -> Result<(), RenderError> {
        if job.nodes > 1 {
            let hint = "submit one job per node (--nodes-per-job 1, the default), or start a worker on each \
                        host with blaunch in a template of your own (--template)";
            return Err(RenderError::Unsupported { system: SYSTEM, what: "nodes > 1", hint });
        }
        if job.resource_spec.is_some() {
            let hint = "use job-extra-directives, e.g. --job-extra-directives='-R \"select[mem>4000]\"'";
            return Err(RenderError::Unsupported { system: SYSTEM, what: "resource-spec", hint });
        }
        Ok(())
    }

    fn memory(&self, bytes: u64) -> Option<String> {
        Some(memory(bytes))
    }

    fn walltime(&self, seconds: u64) -> String {
        walltime(seconds)
    }

    fn is_stderr_file(&self, file_name: &str, id: &str) -> bool {
        let Some(stem) = file_name.strip_suffix(".err") else { return false };
        let job = format!("-{id}");
        // `NAME-ID.err`, or `NAME-ID_INDEX.err` for a task of an array.
        stem.ends_with(&job)
            || stem.rsplit_once('_').is_some_and(|(head, index)| {
                head.ends_with(&job) && !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit())
            })
    }

    fn is_job_id(&self, id: &str) -> bool {
        is_job_id(id)
    }

    fn connect(&self, commands: Commands) -> Box<dyn BatchSystem> {
        Box::new(Lsf(commands))
    }
}

/// LSF `-M`: whole kilobytes (decimal), rounded up: 28GB → `28000000`. KB is LSF's unit for
/// limits unless `LSF_UNIT_FOR_LIMITS` in `lsf.conf` says otherwise (dask-jobqueue's fallback
/// too; see templates/README.md for a site with another unit).
pub fn memory(bytes: u64) -> String {
    bytes.div_ceil(1000).to_string()
}

/// LSF `-W`: `HH:MM`, rounded up to the minute, hours unbounded: 5400 s → `01:30`.
pub fn walltime(seconds: u64) -> String {
    let minutes = seconds.div_ceil(60);
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// An LSF job id: a positive number (never `0`, which `bkill` reads as "every job of mine"),
/// optionally with an array index: `123`, `123[4]`.
pub fn is_job_id(id: &str) -> bool {
    let number = |s: &str| {
        s.len() <= 20 && s.starts_with(|c: char| ('1'..='9').contains(&c)) && s.bytes().all(|b| b.is_ascii_digit())
    };
    match id.split_once('[') {
        Some((job, index)) => number(job) && index.strip_suffix(']').is_some_and(number),
        None => number(id),
    }
}

/// The job id without an array index: `123[4]` → `123`.
fn base_id(id: &str) -> &str {
    id.split_once('[').map_or(id, |(job, _)| job)
}

/// LSF: `bsub < script` (argv only: the script is written to its standard input), `bjobs`, `bkill`.
#[derive(Clone, Debug)]
pub struct Lsf(pub Commands);

impl Default for Lsf {
    fn default() -> Lsf {
        Lsf(Def.default_commands())
    }
}

impl BatchSystem for Lsf {
    fn name(&self) -> &'static str {
        "lsf"
    }

    fn submit(&self, script: &Path) -> Result<String, BatchError> {
        // On its standard input the script's `#BSUB` lines are read, whatever the site's
        // `bsub` does with a script given as an argument (dask-jobqueue's `use_stdin`).
        submit_on_stdin(self.0.tool(Role::Submit, PACKAGE), &[], script, parse_submit)
    }

    fn status(&self, ids: &[String]) -> Result<HashMap<String, JobState>, BatchError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        check_ids("lsf", ids, is_job_id)?;
        let args: Vec<&str> =
            ["-noheader", "-o", "jobid stat"].into_iter().chain(ids.iter().map(String::as_str)).collect();
        let out = match run(self.0.tool(Role::Status, PACKAGE), &args) {
            Ok(o) => o,
            // Some ids are unknown (they ended long ago): bjobs says so and fails, and what it
            // printed still holds the others' states.
            Err(BatchError::Failed { output, .. }) if every_line_read(&output) => output,
            Err(e) => return Err(e),
        };
        Ok(fill_gone(ids, parse_status(&out)))
    }

    fn cancel(&self, ids: &[String]) -> Result<(), BatchError> {
        if ids.is_empty() {
            return Ok(());
        }
        check_ids("lsf", ids, is_job_id)?;
        let args: Vec<&str> = ids.iter().map(String::as_str).collect();
        match run(self.0.tool(Role::Cancel, PACKAGE), &args) {
            // Jobs that had already ended make bkill fail: they are as wanted.
            Err(BatchError::Failed { output, .. }) if kill_output_is_benign(&output) => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

/// `bsub` prints `Job <123> is submitted to queue <normal>.` (possibly after other lines).
pub fn parse_submit(out: &str) -> Option<String> {
    out.lines().find_map(|line| {
        let (id, rest) = line.trim().strip_prefix("Job <")?.split_once('>')?;
        (is_job_id(id) && rest.trim_start().starts_with("is submitted")).then(|| id.to_string())
    })
}

/// One line of `bjobs -noheader -o "jobid stat"` (standard output and error together): a job and
/// its state, `Job <ID> is not found` (gone), or `None` for anything else.
pub fn parse_status_line(line: &str) -> Option<(&str, JobState)> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("Job <") {
        let (id, tail) = rest.split_once('>')?;
        return (is_job_id(id) && tail.trim() == "is not found").then(|| (base_id(id), JobState::Gone));
    }
    let mut words = line.split_whitespace();
    let (Some(id), Some(stat), None) = (words.next(), words.next(), words.next()) else { return None };
    if !is_job_id(id) {
        return None;
    }
    let state = match stat {
        "PEND" | "WAIT" | "PSUSP" | "PROV" => JobState::Pending,
        // Suspended while running, or out of the master's sight: the job still holds its hosts.
        "RUN" | "USUSP" | "SSUSP" | "UNKWN" => JobState::Running,
        "DONE" => JobState::Finished,
        "ZOMBI" => JobState::Cancelled,
        s if s.bytes().all(|b| b.is_ascii_uppercase()) => JobState::Failed,
        _ => return None,
    };
    Some((base_id(id), state))
}

/// The states in `bjobs` output (lines it cannot read are skipped); an array's tasks share its
/// id and the array is as active as its most active task.
pub fn parse_status(out: &str) -> HashMap<String, JobState> {
    let mut map: HashMap<String, JobState> = HashMap::new();
    for (id, state) in out.lines().filter_map(parse_status_line) {
        let merged = map.get(id).map_or(state, |old| most_active(*old, state));
        map.insert(id.to_string(), merged);
    }
    map
}

/// Whether failed `bjobs` output is only job states and unknown jobs (at least one line).
fn every_line_read(out: &str) -> bool {
    let mut lines = out.lines().filter(|l| !l.trim().is_empty()).peekable();
    lines.peek().is_some() && lines.all(|l| parse_status_line(l).is_some())
}

/// Whether failed `bkill` output only says that jobs are being killed or had already ended.
pub fn kill_output_is_benign(out: &str) -> bool {
    const FINE: [&str; 6] = [
        "is being terminated",
        "is being signaled",
        "Job has already finished",
        "No matching job found",
        "is not found",
        "Operation is in progress",
    ];
    let mut lines = out.lines().map(str::trim).filter(|l| !l.is_empty()).peekable();
    lines.peek().is_some() && lines.all(|l| l.starts_with("Job <") && FINE.iter().any(|f| l.contains(f)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lsf_output() {
        assert_eq!(parse_submit("Job <123> is submitted to queue <normal>.\n"), Some("123".into()));
        let noisy = "Warning: your job is in the default project\nJob <9> is submitted to default queue <short>.\n";
        assert_eq!(parse_submit(noisy), Some("9".into()));
        assert_eq!(parse_submit("Job <0> is submitted to queue <normal>.\n"), None);
        assert_eq!(parse_submit("Request aborted by esub. Job not submitted.\n"), None);
        let out = "1 PEND\n2 RUN\n3 DONE\n4 EXIT\n5 PSUSP\n6 USUSP\n7 SSUSP\n8 ZOMBI\n9 UNKWN\n\
                   10 DONE\n10 RUN\n10 PEND\nJob <11> is not found\nJob <12[3]> is not found\n";
        let s = parse_status(out);
        use JobState::*;
        let got: Vec<JobState> = (1..=12).map(|i| s[&i.to_string()]).collect();
        assert_eq!(
            got,
            [Pending, Running, Finished, Failed, Pending, Running, Running, Cancelled, Running, Running, Gone, Gone]
        );
        assert_eq!(parse_status("jobid stat\nNo unfinished job found\n12 RUN extra\n-1 RUN\n0 RUN\n"), HashMap::new());
    }

    #[test]
    fn failed_commands_that_only_name_ended_jobs_are_not_errors() {
        assert!(every_line_read("5 RUN\nJob <6> is not found\n"));
        assert!(!every_line_read(""), "a silent failure is an error");
        assert!(!every_line_read("5 RUN\nLSF is down. Please wait ...\n"));
        assert!(kill_output_is_benign("Job <5> is being terminated\nJob <6>: Job has already finished\n"));
        assert!(kill_output_is_benign("Job <7>: No matching job found\n"));
        assert!(!kill_output_is_benign(""));
        assert!(!kill_output_is_benign("Job <5> is being terminated\nUser permission denied\n"));
    }

    #[test]
    fn ids_and_log_files() {
        for id in ["1", "123", "123[4]", "99999999"] {
            assert!(is_job_id(id), "{id}");
        }
        for id in ["0", "012", "123[", "123[]", "123[0]", "[4]", "12a", "123[4]x"] {
            assert!(!is_job_id(id), "{id}");
        }
        assert!(Def.is_stderr_file("rdask-worker-123.err", "123"));
        assert!(Def.is_stderr_file("rdask-worker-123_4.err", "123"), "an array task's");
        assert!(!Def.is_stderr_file("rdask-worker-1123.err", "123"));
        assert!(!Def.is_stderr_file("rdask-worker-123.out", "123"));
        assert!(!Def.is_stderr_file("rdask-worker-123_.err", "123"));
    }

    #[test]
    fn memory_in_kilobytes_and_walltime_in_minutes() {
        assert_eq!(memory(28_000_000_000), "28000000", "dask-jobqueue's -M for 28GB");
        assert_eq!(memory(1), "1");
        assert_eq!(memory(1001), "2");
        assert_eq!(
            (walltime(1800), walltime(5400), walltime(61), walltime(360_000)),
            ("00:30".into(), "01:30".into(), "00:02".into(), "100:00".into())
        );
    }

    /// A stand-in for an LSF command: a shell script in `dir` that runs `body`.
    fn fake(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn submit_writes_the_script_to_bsubs_standard_input_and_status_and_cancel_read_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let got = d.join("got");
        let bsub = fake(
            d,
            "bsub",
            &format!(
                "cat > '{}'; echo \"args:$#\" >> '{}'; echo 'Job <42> is submitted to queue <normal>.'",
                got.display(),
                got.display()
            ),
        );
        let args = d.join("args");
        let bjobs = fake(
            d,
            "bjobs",
            &format!("echo \"$@\" > '{}'; echo '42 RUN'; echo 'Job <41> is not found' >&2; exit 255", args.display()),
        );
        let bkill = fake(
            d,
            "bkill",
            "echo 'Job <42> is being terminated'; echo 'Job <41>: Job has already finished' >&2; exit 255",
        );
        let lsf = Lsf(Commands { submit: bsub, status: bjobs, cancel: bkill });
        let script = d.join("job.sh");
        std::fs::write(&script, "#!/bin/sh\n#BSUB -J x\necho 'quote\" $HOME'\n").unwrap();
        assert_eq!(lsf.submit(&script).unwrap(), "42");
        assert_eq!(std::fs::read_to_string(&got).unwrap(), "#!/bin/sh\n#BSUB -J x\necho 'quote\" $HOME'\nargs:0\n");
        let s = lsf.status(&["41".into(), "42".into(), "43".into()]).unwrap();
        assert_eq!((s["41"], s["42"], s["43"]), (JobState::Gone, JobState::Running, JobState::Gone));
        assert_eq!(std::fs::read_to_string(&args).unwrap(), "-noheader -o jobid stat 41 42 43\n");
        lsf.cancel(&["41".into(), "42".into()]).unwrap();
        let e = lsf.cancel(&["0".into()]).unwrap_err();
        assert!(matches!(e, BatchError::BadId { .. }), "bkill 0 would kill every job of the user: {e}");
        let down = Lsf(Commands {
            status: fake(d, "down", "echo 'LSF is down. Please wait ...' >&2; exit 255"),
            ..lsf.0.clone()
        });
        let e = down.status(&["42".into()]).unwrap_err().to_string();
        assert!(e.contains("LSF is down"), "{e}");
        let missing = Lsf(Commands { submit: d.join("no-bsub"), ..lsf.0 });
        let e = missing.submit(&script).unwrap_err().to_string();
        assert!(e.contains("no-bsub` not found") && e.contains("--submit-command") && e.contains("profile.lsf"), "{e}");
    }

    /// Every state `bjobs` shows, and what rdask makes of it.
    const STATES: [(&str, JobState); 11] = [
        ("PEND", JobState::Pending),
        ("WAIT", JobState::Pending),
        ("PSUSP", JobState::Pending),
        ("PROV", JobState::Pending),
        ("RUN", JobState::Running),
        ("USUSP", JobState::Running),
        ("SSUSP", JobState::Running),
        ("UNKWN", JobState::Running),
        ("DONE", JobState::Finished),
        ("EXIT", JobState::Failed),
        ("ZOMBI", JobState::Cancelled),
    ];

    proptest! {
        #[test]
        fn parsers_never_panic(s in ".*") {
            let _ = parse_submit(&s);
            let _ = parse_status(&s);
            let _ = kill_output_is_benign(&s);
            let _ = every_line_read(&s);
        }

        #[test]
        fn parsers_never_panic_on_lsf_like_input(s in "(Job <[0-9\\[\\]]{0,6}>[ a-z<>.]{0,30}\n|[0-9]{0,4} [A-Z]{0,5}\n){0,6}") {
            let _ = parse_submit(&s);
            let _ = parse_status(&s);
            let _ = every_line_read(&s);
        }

        #[test]
        fn submitted_ids_round_trip(id in 1u64..u64::MAX / 2, queue in "[a-z_]{1,12}", before in proptest::collection::vec("[A-Za-z ,.]{0,40}", 0..3)) {
            let out = format!("{}Job <{id}> is submitted to queue <{queue}>.\n", before.iter().map(|l| format!("{l}\n")).collect::<String>());
            let parsed = parse_submit(&out);
            prop_assert_eq!(parsed.clone(), Some(id.to_string()));
            prop_assert!(is_job_id(&parsed.unwrap()));
        }

        #[test]
        fn states_round_trip(jobs in proptest::collection::btree_map(1u32..1_000_000, proptest::option::of(0..STATES.len()), 0..20)) {
            let out: String = jobs.iter().map(|(id, s)| match s {
                Some(i) => format!("{id} {}\n", STATES[*i].0),
                None => format!("Job <{id}> is not found\n"),
            }).collect();
            let parsed = parse_status(&out);
            prop_assert_eq!(parsed.len(), jobs.len());
            prop_assert!(out.is_empty() || every_line_read(&out));
            for (id, s) in &jobs {
                let expected = s.map_or(JobState::Gone, |i| STATES[i].1);
                prop_assert_eq!(parsed[&id.to_string()], expected);
            }
        }
    }
}
