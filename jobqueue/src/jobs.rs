//! What every batch system shares: submit a job script, poll the state of a cluster's jobs,
//! cancel them.
//!
//! One small trait, [`BatchSystem`], implemented once per batch system in
//! [`crate::systems`] (one module each, with its parsers). Commands run argv-style (never
//! through a shell), with the helpers here, and their output is parsed by pure functions
//! tested on captured real output. Anything unexpected is an error that quotes the command
//! and what it printed.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
    #[error(
        "`{command}` not found: install {package}, or give its path with --{key} (or `{key} = \"/path/to/it\"` in rdask.toml)",
        key = .role.key()
    )]
    Missing {
        /// The command.
        command: String,
        /// The package that provides it.
        package: &'static str,
        /// Which of the batch system's commands it is.
        role: Role,
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
    /// A job id that the batch system could not have given (from a damaged journal, say):
    /// it is never passed to a command, where it could mean something else (`bkill 0`
    /// kills every job of the user).
    #[error("`{id}` is not a {system} job id; it is not passed to {system}'s commands (is the journal damaged?)")]
    BadId {
        /// The batch system.
        system: &'static str,
        /// The id.
        id: String,
    },
}

/// The commands of one batch system, by path.
pub trait BatchSystem: Send + Sync {
    /// A short name (`slurm`, `pbs`, `sge`, `lsf`).
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

impl Commands {
    /// Commands by name (looked up on `PATH` when run).
    pub fn named(submit: &str, status: &str, cancel: &str) -> Commands {
        Commands { submit: submit.into(), status: status.into(), cancel: cancel.into() }
    }

    /// The command of `role`.
    pub fn get(&self, role: Role) -> &Path {
        match role {
            Role::Submit => &self.submit,
            Role::Status => &self.status,
            Role::Cancel => &self.cancel,
        }
    }

    /// The command of `role`, ready to run, with the package that provides it (for errors).
    pub fn tool(&self, role: Role, package: &'static str) -> Tool<'_> {
        Tool { program: self.get(role), role, package }
    }
}

/// Which of a batch system's three commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Submits a job script.
    Submit,
    /// Reports job states.
    Status,
    /// Cancels jobs.
    Cancel,
}

impl Role {
    /// All three, in the order submit, status, cancel.
    pub const ALL: [Role; 3] = [Role::Submit, Role::Status, Role::Cancel];

    /// Its option and configuration key: `submit-command`, `status-command`, `cancel-command`.
    pub fn key(self) -> &'static str {
        match self {
            Role::Submit => "submit-command",
            Role::Status => "status-command",
            Role::Cancel => "cancel-command",
        }
    }
}

/// One command of a batch system, as the implementations run it.
#[derive(Clone, Copy, Debug)]
pub struct Tool<'a> {
    /// Its path, or a name on `PATH`.
    pub program: &'a Path,
    /// Which command it is (named by a "not found" error).
    pub role: Role,
    /// The package that provides it (named by a "not found" error).
    pub package: &'static str,
}

impl Tool<'_> {
    fn line(&self, args: &[&str]) -> String {
        std::iter::once(self.program.display().to_string())
            .chain(args.iter().map(|a| a.to_string()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn missing(&self) -> BatchError {
        BatchError::Missing { command: self.program.display().to_string(), package: self.package, role: self.role }
    }
}

/// Runs `tool args…` and returns its standard output, or an error that quotes what it printed.
pub fn run(tool: Tool<'_>, args: &[&str]) -> Result<String, BatchError> {
    run_with(tool, args, None, None)
}

/// [`run`] in `cwd` if given (batch systems put some files in the submitter's directory), with
/// `input` written to its standard input if given (its standard input is empty otherwise).
pub fn run_with(tool: Tool<'_>, args: &[&str], cwd: Option<&Path>, input: Option<&[u8]>) -> Result<String, BatchError> {
    let line = tool.line(args);
    let mut cmd = Command::new(tool.program);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    let not_started = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => tool.missing(),
        _ => BatchError::Failed { command: line.clone(), status: "not started".into(), output: e.to_string() },
    };
    let mut child = cmd.spawn().map_err(not_started)?;
    // Written from another thread, so that a command that prints before it has read all of
    // its input cannot block both sides; a command that exits without reading it is
    // reported by its exit status.
    let writer = child.stdin.take().zip(input).map(|(mut stdin, data)| {
        let data = data.to_vec();
        std::thread::spawn(move || stdin.write_all(&data))
    });
    let out = child.wait_with_output().map_err(|e| BatchError::Failed {
        command: line.clone(),
        status: "not waited for".into(),
        output: e.to_string(),
    })?;
    if let Some(w) = writer {
        let _ = w.join();
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text)
    } else {
        let output = format!("{}{}", text, String::from_utf8_lossy(&out.stderr)).trim().to_string();
        Err(BatchError::Failed { command: line, status: out.status.to_string(), output })
    }
}

/// The error of a submission that succeeded without printing a job id that `parse` reads.
fn no_job_id(tool: Tool<'_>, args: &[&str], out: &str) -> BatchError {
    BatchError::Failed { command: tool.line(args), status: "exit 0".into(), output: format!("no job id in: {out}") }
}

/// Submits `script` with `tool flags… script`, run in the script's directory (some qsub
/// wrappers write the job's output files into the submitter's directory), and reads the job
/// id from its output with `parse`.
pub fn submit_with(
    tool: Tool<'_>,
    flags: &[&str],
    script: &Path,
    parse: fn(&str) -> Option<String>,
) -> Result<String, BatchError> {
    let path = script.display().to_string();
    let args: Vec<&str> = flags.iter().copied().chain([path.as_str()]).collect();
    let out = run_with(tool, &args, script.parent(), None)?;
    parse(&out).ok_or_else(|| no_job_id(tool, &args, &out))
}

/// Submits `script` as `tool flags… < script` does, with no shell: the script's text is written
/// to the command's standard input. Run in the script's directory; the job id is read from
/// the output with `parse`.
pub fn submit_on_stdin(
    tool: Tool<'_>,
    flags: &[&str],
    script: &Path,
    parse: fn(&str) -> Option<String>,
) -> Result<String, BatchError> {
    let text = std::fs::read(script).map_err(|e| BatchError::Failed {
        command: format!("{} < {}", tool.line(flags), script.display()),
        status: "not started".into(),
        output: format!("cannot read the job script: {e}"),
    })?;
    let out = run_with(tool, flags, script.parent(), Some(&text))?;
    parse(&out).ok_or_else(|| no_job_id(tool, flags, &out))
}

/// States of `ids` from a command that prints every job the server knows in a machine format
/// (XML, JSON, `key = value` blocks), read by `parse`. Output that does not parse is an error,
/// so that it is never taken for "every job has gone".
pub fn parsed_status(
    tool: Tool<'_>,
    args: &[&str],
    ids: &[String],
    parse: fn(&str) -> Result<HashMap<String, JobState>, String>,
) -> Result<HashMap<String, JobState>, BatchError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let out = run(tool, args)?;
    let found = parse(&out).map_err(|why| {
        let shown: String = out.chars().take(400).collect();
        BatchError::Failed {
            command: tool.line(args),
            status: "exit status 0".into(),
            output: format!("its output could not be read ({why}): {shown}"),
        }
    })?;
    Ok(fill_gone(ids, found))
}

/// `qdel`-style cancellation, one id per call: a job that already ended makes it fail, and
/// that is the state wanted anyway, so failures are not errors (a missing command is).
pub fn cancel_each(tool: Tool<'_>, ids: &[String]) -> Result<(), BatchError> {
    for id in ids {
        if let Err(e @ BatchError::Missing { .. }) = run(tool, &[id]) {
            return Err(e);
        }
    }
    Ok(())
}

/// `found` for exactly `ids`: each id it lacks has gone.
pub fn fill_gone(ids: &[String], mut found: HashMap<String, JobState>) -> HashMap<String, JobState> {
    ids.iter().map(|id| (id.clone(), found.remove(id).unwrap_or(JobState::Gone))).collect()
}

/// The state of a job array from the states of two of its tasks (`old`, seen first, and
/// `new`): as active as its most active task; among ended ones, the later.
pub fn most_active(old: JobState, new: JobState) -> JobState {
    match (old, new) {
        (old, new) if old.is_active() && !new.is_active() => old,
        (JobState::Running, _) => JobState::Running,
        (_, new) => new,
    }
}

/// Checks that every one of `ids` is an id of `system` (`valid` says which are); the error
/// names the first that is not.
pub fn check_ids(system: &'static str, ids: &[String], valid: fn(&str) -> bool) -> Result<(), BatchError> {
    match ids.iter().find(|id| !valid(id)) {
        Some(id) => Err(BatchError::BadId { system, id: id.clone() }),
        None => Ok(()),
    }
}

/// Where `program` would be run from: itself if it names a path (it has a `/`), else the
/// first executable file of that name in the directories of `path` (a `PATH` value).
pub fn find_program(program: &Path, path: Option<&OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.as_os_str().is_empty() {
        return None;
    }
    if program.to_string_lossy().contains('/') {
        return executable(program).then(|| program.to_path_buf());
    }
    std::env::split_paths(path?).map(|dir| dir.join(program)).find(|p| executable(p))
}

/// Checks that each of `commands` can be run (on this process's `PATH`), so that a missing one
/// is reported before anything is started; the error names the package and the option.
pub fn check_commands(commands: &Commands, package: &'static str) -> Result<(), BatchError> {
    let path = std::env::var_os("PATH");
    for role in Role::ALL {
        let tool = commands.tool(role, package);
        if find_program(tool.program, path.as_deref()).is_none() {
            return Err(tool.missing());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commands(submit: &str) -> Commands {
        Commands::named(submit, "/bin/true", "/bin/true")
    }

    #[test]
    fn ids_a_job_lacks_are_gone_and_arrays_are_as_active_as_their_most_active_task() {
        let found = HashMap::from([("3".to_string(), JobState::Running)]);
        let all = fill_gone(&["3".into(), "99".into()], found);
        assert_eq!((all["3"], all["99"], all.len()), (JobState::Running, JobState::Gone, 2));
        use JobState::*;
        assert_eq!(most_active(Pending, Running), Running);
        assert_eq!(most_active(Running, Pending), Running);
        assert_eq!(most_active(Running, Finished), Running);
        assert_eq!(most_active(Finished, Pending), Pending);
        assert_eq!(most_active(Finished, Failed), Failed);
    }

    #[test]
    fn a_missing_command_names_its_package_and_option() {
        let e = check_commands(&commands("/nonexistent/bsub"), "the LSF client").unwrap_err().to_string();
        assert_eq!(
            e,
            "`/nonexistent/bsub` not found: install the LSF client, or give its path with --submit-command \
             (or `submit-command = \"/path/to/it\"` in rdask.toml)"
        );
        let c = Commands::named("/bin/true", "no-such-command-here", "/bin/true");
        let e = check_commands(&c, "x").unwrap_err().to_string();
        assert!(e.starts_with("`no-such-command-here` not found") && e.contains("--status-command"), "{e}");
        check_commands(&Commands::named("true", "/bin/true", "sh"), "x").unwrap();
        let e = run(c.tool(Role::Status, "pkg"), &[]).unwrap_err().to_string();
        assert!(e.contains("install pkg") && e.contains("--status-command"), "{e}");
    }

    #[test]
    fn find_program_looks_on_the_path_only_for_bare_names() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("bjobs");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::write(dir.path().join("plain"), "").unwrap();
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let path = std::env::join_paths(["/nonexistent", dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(find_program(Path::new("bjobs"), Some(&path)), Some(exe.clone()));
        assert_eq!(find_program(Path::new("plain"), Some(&path)), None, "not executable");
        assert_eq!(find_program(Path::new("bjobs"), None), None);
        assert_eq!(find_program(&exe, None), Some(exe.clone()));
        assert_eq!(find_program(Path::new("./bjobs"), Some(&path)), None, "a path is not looked up");
        assert_eq!(find_program(Path::new(""), Some(&path)), None);
    }

    #[test]
    fn input_reaches_the_command_and_failures_quote_its_output() {
        let sh = Commands::named("/bin/sh", "/bin/sh", "/bin/sh");
        let tool = sh.tool(Role::Submit, "sh");
        let script = "echo read: $(cat)";
        let big = format!("{}\n", "x".repeat(300_000));
        let out = run_with(tool, &["-c", script], None, Some(big.as_bytes())).unwrap();
        assert_eq!(out.len(), "read: \n".len() + 300_000, "all of a large input is read");
        let out = run_with(tool, &["-c", "echo hi"], None, Some(big.as_bytes())).unwrap();
        assert_eq!(out, "hi\n", "a command that does not read its input is not an error");
        let e = run(tool, &["-c", "echo no such job >&2; exit 3"]).unwrap_err().to_string();
        assert_eq!(e, "`/bin/sh -c echo no such job >&2; exit 3` failed (exit status: 3): no such job");
        assert_eq!(run(tool, &["-c", "cat"]).unwrap(), "", "no input: an empty standard input");
    }

    #[test]
    fn bad_ids_are_named() {
        let digits = |id: &str| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
        check_ids("slurm", &["1".into(), "22".into()], digits).unwrap();
        let e = check_ids("pbs", &["1".into(), "-u".into()], digits).unwrap_err().to_string();
        assert!(e.starts_with("`-u` is not a pbs job id"), "{e}");
    }
}
