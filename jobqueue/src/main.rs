//! The `rdask-jobqueue` command; see `rdask-jobqueue --help`. Its exit codes are
//! [`rdask_jobqueue::Error::exit_code`]'s (the table is in `rdask_jobqueue::error`).

use rdask_jobqueue::config::{self, CliError, Environment};
use rdask_jobqueue::Error;

fn main() {
    // A closed pipe (`rdask-jobqueue status | head`) ends the program quietly, not with a panic.
    #[allow(unsafe_code)]
    // SAFETY: resetting SIGPIPE to its default action before any thread starts is sound.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // The command line, with the configuration files and RDASK_<OPTION> variables merged in.
    let result = match config::parse_cli(std::env::args_os(), &Environment::current()) {
        Ok(cli) => rdask_jobqueue::run(cli),
        // clap prints it and exits with 2 (0 for --help and --version).
        Err(CliError::Usage(e)) => e.exit(),
        Err(CliError::Config(e)) => Err(Error::Config(e)),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
