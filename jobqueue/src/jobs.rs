//! Batch systems: submit a job script, poll the state of a cluster's jobs, cancel them.
//!
//! One small trait, [`BatchSystem`], with an implementation per batch system.
//! Commands run argv-style (never through a shell), and their output is parsed
//! by pure functions tested on captured real output. Anything unexpected is an
//! error that quotes the command and what it printed.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where a batch job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting in the queue.
    Pending,
    /// Running.
    Running,
    /// Ended on its own.
    Finished,
    /// Ended in error (failed, timed out, out of memory, node failure…).
    Failed,
    /// Cancelled.
    Cancelled,
    /// The batch system no longer knows the job (it ended some time ago).
    Gone,
}

impl JobState {
    /// Whether the job can still hold or start a worker.
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Pending | JobState::Running)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Finished => "finished",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Gone => "gone",
        };
        f.write_str(s)
    }
}

/// A batch command failed or said something unexpected.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The command does not exist.
    #[error("`{command}` not found: install {package} (or set its path in the configuration)")]
    Missing {
        /// The command.
        command: String,
        /// The package that provides it.
        package: &'static str,
    },
    /// The command ran and failed, or printed what we cannot read.
    #[error("`{command}` failed ({status}): {output}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed (stdout and stderr).
        output: String,
    },
}

/// The commands of one batch system, by path.
pub trait BatchSystem: Send + Sync {
    /// A short name (`slurm`, `pbs`, `sge`).
    fn name(&self) -> &'static str;
    /// Submits a script; returns the job id.
    fn submit(&self, script: &Path) -> Result<String, BatchError>;
    /// The state of each of `ids`, in one call.
    fn status(&self, ids: &[String]) -> Result<HashMap<String, JobState>, BatchError>;
    /// Cancels `ids`; ids the batch system no longer knows are not an error.
    fn cancel(&self, ids: &[String]) -> Result<(), BatchError>;
}

/// Commands of a batch system: submit, status, cancel (paths or names on PATH).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Commands {
    /// Submits a script.
    pub submit: PathBuf,
    /// Reports job states.
    pub status: PathBuf,
    /// Cancels jobs.
    pub cancel: PathBuf,
}

fn run(program: &Path, args: &[&str], package: &'static str) -> Result<String, BatchError> {
    run_in(program, args, package, None)
}

/// Runs a command, in `cwd` if given (batch systems put some files in the submitter's directory).
fn run_in(program: &Path, args: &[&str], package: &'static str, cwd: Option<&Path>) -> Result<String, BatchError> {
    let line = format!("{} {}", program.display(), args.join(" "));
    let mut cmd = Command::new(program);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.args(args).output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => BatchError::Missing { command: program.display().to_string(), package },
        _ => BatchError::Failed { command: line.clone(), status: "not started".into(), output: e.to_string() },
    })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text)
    } else {
        let output = format!("{}{}", text, String::from_utf8_lossy(&out.stderr)).trim().to_string();
        Err(BatchError::Failed { command: line, status: out.status.to_string(), output })
    }
}

/// Submits `script` with `program flags… script`, run in the script's directory (some qsub
/// wrappers write the job's output files into the submitter's directory), and reads the job
/// id from its output with `parse`.
fn submit_with(
    program: &Path,
    flags: &[&str],
    script: &Path,
    package: &'static str,
    parse: fn(&str) -> Option<String>,
) -> Result<String, BatchError> {
    let path = script.display().to_string();
    let args: Vec<&str> = flags.iter().copied().chain([path.as_str()]).collect();
    let out = run_in(program, &args, package, script.parent())?;
    parse(&out).ok_or_else(|| BatchError::Failed {
        command: format!("{} {}", program.display(), args.join(" ")),
        status: "exit 0".into(),
        output: format!("no job id in: {out}"),
    })
}

/// Slurm: `sbatch --parsable`, `squeue`, `scancel`.
#[derive(Clone, Debug)]
pub struct Slurm(pub Commands);

impl Default for Slurm {
    fn default() -> Slurm {
        Slurm(Commands { submit: "sbatch".into(), status: "squeue".into(), cancel: "scancel".into() })
    }
}

const SLURM_PKG: &str = "the Slurm client (Debian: slurm-client)";

impl BatchSystem for Slurm {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn submit(&self, script: &Path) -> Result<String, BatchError> {
        submit_with(&self.0.submit, &["--parsable"], script, SLURM_PKG, parse_slurm_submit)
    }

    fn status(&self, ids: &[String]) -> Result<HashMap<String, JobState>, BatchError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let list = ids.join(",");
        let args = ["-h", "-t", "all", "-o", "%i %T", "-j", &list];
        let out = match run(&self.0.status, &args, SLURM_PKG) {
            Ok(o) => o,
            // Every id purged: squeue fails with "Invalid job id specified".
            Err(BatchError::Failed { output, .. }) if output.contains("Invalid job id") => String::new(),
            Err(e) => return Err(e),
        };
        Ok(fill_gone(ids, parse_slurm_status(&out)))
    }

    fn cancel(&self, ids: &[String]) -> Result<(), BatchError> {
        if ids.is_empty() {
            return Ok(());
        }
        let args: Vec<&str> = ids.iter().map(String::as_str).collect();
        match run(&self.0.cancel, &args, SLURM_PKG) {
            Err(BatchError::Failed { output, .. }) if output.contains("Invalid job id") => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

/// `sbatch --parsable` prints `ID` or `ID;cluster`.
pub fn parse_slurm_submit(out: &str) -> Option<String> {
    let id = out.trim().split(';').next()?.trim();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit() || c == '_')).then(|| id.to_string())
}

/// `squeue -h -t all -o '%i %T'`: one `ID STATE` line per job (array tasks as `ID_N`).
pub fn parse_slurm_status(out: &str) -> HashMap<String, JobState> {
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
        let merged = match map.get(&base) {
            Some(old) if old.is_active() && !state.is_active() => *old,
            Some(JobState::Running) => JobState::Running,
            _ => state,
        };
        map.insert(base, merged);
    }
    map
}

/// PBS (and the PBS-style wrappers of `slurm-wlm-torque`): `qsub`, `qstat`, `qdel`.
#[derive(Clone, Debug)]
pub struct Pbs(pub Commands);

impl Default for Pbs {
    fn default() -> Pbs {
        Pbs(Commands { submit: "qsub".into(), status: "qstat".into(), cancel: "qdel".into() })
    }
}

const PBS_PKG: &str = "the PBS client commands (OpenPBS/PBS Pro qsub, qstat, qdel)";

impl BatchSystem for Pbs {
    fn name(&self) -> &'static str {
        "pbs"
    }

    fn submit(&self, script: &Path) -> Result<String, BatchError> {
        submit_with(&self.0.submit, &[], script, PBS_PKG, parse_pbs_submit)
    }

    fn status(&self, ids: &[String]) -> Result<HashMap<String, JobState>, BatchError> {
        table_status(&self.0.status, &[], PBS_PKG, ids, parse_pbs_status)
    }

    fn cancel(&self, ids: &[String]) -> Result<(), BatchError> {
        cancel_each(&self.0.cancel, PBS_PKG, ids)
    }
}

/// PBS `qsub` prints `ID` or `ID.server`.
pub fn parse_pbs_submit(out: &str) -> Option<String> {
    let id = out.trim().lines().last()?.trim();
    let digits: String = id.chars().take_while(|c| c.is_ascii_digit()).collect();
    (!digits.is_empty()).then_some(digits)
}

/// PBS `qstat`: a table whose first column is the id (`ID` or `ID.server`) and fifth the state letter.
pub fn parse_pbs_status(out: &str) -> HashMap<String, JobState> {
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

/// Son of Grid Engine: `qsub -terse`, `qstat`, `qdel`.
#[derive(Clone, Debug)]
pub struct Sge(pub Commands);

impl Default for Sge {
    fn default() -> Sge {
        Sge(Commands { submit: "qsub".into(), status: "qstat".into(), cancel: "qdel".into() })
    }
}

const SGE_PKG: &str = "the Grid Engine client (Debian: gridengine-client)";

impl BatchSystem for Sge {
    fn name(&self) -> &'static str {
        "sge"
    }

    fn submit(&self, script: &Path) -> Result<String, BatchError> {
        submit_with(&self.0.submit, &["-terse"], script, SGE_PKG, parse_sge_submit)
    }

    fn status(&self, ids: &[String]) -> Result<HashMap<String, JobState>, BatchError> {
        table_status(&self.0.status, &["-u", "*"], SGE_PKG, ids, parse_sge_status)
    }

    fn cancel(&self, ids: &[String]) -> Result<(), BatchError> {
        cancel_each(&self.0.cancel, SGE_PKG, ids)
    }
}

/// `qsub -terse` prints `ID`, or `ID.1-10:1` for an array.
pub fn parse_sge_submit(out: &str) -> Option<String> {
    let id: String = out.trim().chars().take_while(|c| c.is_ascii_digit()).collect();
    (!id.is_empty()).then_some(id)
}

/// SGE `qstat`: `job-ID prior name user state …`; finished jobs are not listed.
pub fn parse_sge_status(out: &str) -> HashMap<String, JobState> {
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

/// States of `ids` from a `qstat`-style command that lists every job the server knows (ours are
/// picked from it; a job it does not list has gone).
fn table_status(
    program: &Path,
    args: &[&str],
    package: &'static str,
    ids: &[String],
    parse: fn(&str) -> HashMap<String, JobState>,
) -> Result<HashMap<String, JobState>, BatchError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let out = run(program, args, package)?;
    Ok(fill_gone(ids, parse(&out)))
}

/// `qdel`-style cancellation, one id per call: a job that already ended makes it fail, and
/// that is the state wanted anyway, so failures are not errors.
fn cancel_each(program: &Path, package: &'static str, ids: &[String]) -> Result<(), BatchError> {
    for id in ids {
        let _ = run(program, &[id], package);
    }
    Ok(())
}

fn fill_gone(ids: &[String], mut found: HashMap<String, JobState>) -> HashMap<String, JobState> {
    ids.iter().map(|id| (id.clone(), found.remove(id).unwrap_or(JobState::Gone))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_output() {
        assert_eq!(parse_slurm_submit("12\n"), Some("12".into()));
        assert_eq!(parse_slurm_submit("12;rdask\n"), Some("12".into()));
        assert_eq!(parse_slurm_submit("Submitted batch job 12\n"), None);
        let s = parse_slurm_status("12 RUNNING\n13 PENDING\n14 COMPLETED\n15 CANCELLED\n16 TIMEOUT\n17_1 COMPLETED\n17_2 RUNNING\n17_[3-4] PENDING\n");
        assert_eq!(s["12"], JobState::Running);
        assert_eq!(s["13"], JobState::Pending);
        assert_eq!(s["14"], JobState::Finished);
        assert_eq!(s["15"], JobState::Cancelled);
        assert_eq!(s["16"], JobState::Failed);
        assert_eq!(s["17"], JobState::Running);
    }

    #[test]
    fn pbs_output() {
        assert_eq!(parse_pbs_submit("55\n"), Some("55".into()));
        assert_eq!(parse_pbs_submit("55.pbsserver\n"), Some("55".into()));
        let table = "Job id              Name             Username        Time Use S Queue\n\
                     ------------------- ---------------- --------------- -------- - ---------------\n\
                     49                  rdask-pbs-b      root            00:00:00 R debug\n\
                     50.srv              x                root            0        Q debug\n\
                     51                  y                root            00:00:01 C debug\n";
        let s = parse_pbs_status(table);
        assert_eq!((s["49"], s["50"], s["51"]), (JobState::Running, JobState::Pending, JobState::Finished));
    }

    #[test]
    fn sge_output() {
        assert_eq!(parse_sge_submit("3\n"), Some("3".into()));
        assert_eq!(parse_sge_submit("5.1-10:1\n"), Some("5".into()));
        let table = "job-ID  prior   name       user         state submit/start at     queue                          slots ja-task-ID\n\
        -----------------------------------------------------------------------------------------------------------------\n\
              3 0.50000 pend       root         r     11/25/2026 12:45:09 all.q@vm                           1\n\
              4 0.00000 heldjob    root         hqw   11/25/2026 12:45:09                                    1\n\
              5 0.00000 bad        root         Eqw   11/25/2026 12:45:09                                    1\n\
              6 0.00000 del        root         dr    11/25/2026 12:45:09 all.q@vm                           1\n";
        let s = parse_sge_status(table);
        assert_eq!(s["3"], JobState::Running);
        assert_eq!(s["4"], JobState::Pending);
        assert_eq!(s["5"], JobState::Failed);
        assert_eq!(s["6"], JobState::Running, "being deleted, still running");
        let all = fill_gone(&["3".into(), "99".into()], s);
        assert_eq!(all["99"], JobState::Gone);
    }

    #[test]
    fn a_missing_command_names_its_package() {
        let sys = Slurm(Commands {
            submit: "/nonexistent/sbatch".into(),
            status: "/nonexistent/squeue".into(),
            cancel: "/nonexistent/scancel".into(),
        });
        let e = sys.submit(Path::new("/tmp/x.sh")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/sbatch") && e.contains("slurm-client"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(s in ".*") {
            let _ = parse_slurm_submit(&s);
            let _ = parse_slurm_status(&s);
            let _ = parse_pbs_submit(&s);
            let _ = parse_pbs_status(&s);
            let _ = parse_sge_submit(&s);
            let _ = parse_sge_status(&s);
        }
    }
}
