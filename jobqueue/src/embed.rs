//! The CLI inside another program: the Python package `rdask` runs `rdask-jobqueue` in its own
//! process (`python -m rdask …`), starts its scheduler and workers as `python -m rdask …` again,
//! and gives its workers a function registry of its own (the `"python"` function).
//!
//! Both settings are process-wide and set once, before the first command runs; a program that
//! sets neither is the plain binary: it starts itself (`current_exe`) with an empty registry.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rdask::Registry;

use crate::cli::Cmd;
use crate::config::{self, CliError, Environment};
use crate::error::{Error, Result};
use crate::spec::ClusterSpec;
use crate::state::StateDir;

/// The program and leading arguments that start this program again.
static SELF_COMMAND: OnceLock<(PathBuf, Vec<String>)> = OnceLock::new();
/// The functions a worker started by this program offers.
static WORKER_REGISTRY: OnceLock<Arc<Registry>> = OnceLock::new();

/// Makes `program args… <rdask-jobqueue arguments>` the command that starts this program again
/// (the scheduler `up` starts, local workers, the worker command of job scripts), for example
/// `python3 -m rdask`. Returns false (and changes nothing) if it was set already.
pub fn set_self_command(program: PathBuf, args: Vec<String>) -> bool {
    SELF_COMMAND.set((program, args)).is_ok()
}

/// Makes `registry` the functions of the workers that this process runs (`worker`). Returns
/// false (and changes nothing) if one was set already.
pub fn set_worker_registry(registry: Registry) -> bool {
    WORKER_REGISTRY.set(Arc::new(registry)).is_ok()
}

/// The command that starts this program again: its program and leading arguments.
pub(crate) fn self_command() -> Result<(PathBuf, Vec<String>)> {
    match SELF_COMMAND.get() {
        Some(c) => Ok(c.clone()),
        None => Ok((std::env::current_exe().map_err(Error::io("cannot find this program's path"))?, Vec::new())),
    }
}

/// The functions of this program's workers.
pub(crate) fn worker_registry() -> Arc<Registry> {
    WORKER_REGISTRY.get().cloned().unwrap_or_default()
}

/// One invocation of the CLI, `args` as `std::env::args_os` gives them (the program's name
/// first): the exit code, or the error, whose [`Error::exit_code`] the binary would exit with.
/// Unlike the binary it never exits the process: `--help` and `--version` are printed and
/// give `Ok(0)`, other command-line errors are [`Error::Usage`] with clap's text.
pub fn run_args<I, T>(args: I) -> Result<i32>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    match config::parse_cli(args, &Environment::current()) {
        Ok(cli) => crate::run(cli),
        Err(CliError::Usage(e)) if !e.use_stderr() => {
            let _ = e.print();
            Ok(0)
        }
        Err(CliError::Usage(e)) => Err(Error::Usage(e.render().to_string().trim_end().to_string())),
        Err(CliError::Config(e)) => Err(Error::Config(e)),
    }
}

/// [`run_args`] as the binary's `main` ends: the error printed, its exit code returned.
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    match run_args(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// The script that `job-script` with these arguments (the program's name first, then
/// `job-script` and its options) prints, returned instead of printed.
pub fn job_script<I, T>(args: I) -> Result<String>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let cli = match config::parse_cli(args, &Environment::current()) {
        Ok(cli) => cli,
        Err(CliError::Usage(e)) => return Err(Error::Usage(e.render().to_string().trim_end().to_string())),
        Err(CliError::Config(e)) => return Err(Error::Config(e)),
    };
    let Cmd::JobScript(a) = cli.command else {
        return Err(Error::Usage("job_script: the arguments must be those of `job-script`".into()));
    };
    let state = StateDir::locate(cli.home.as_deref(), &cli.name)?;
    crate::cmd::job_script::render(&state, &ClusterSpec::resolve(&a, &state)?)
}
