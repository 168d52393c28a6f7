//! The `rdask-jobqueue` command; see `rdask-jobqueue --help`.

use rdask_jobqueue::config::{self, CliError, Environment};

fn main() {
    // A closed pipe (`rdask-jobqueue status | head`) ends the program quietly, not with a panic.
    #[allow(unsafe_code)]
    // SAFETY: resetting SIGPIPE to its default action before any thread starts is sound.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // The command line, with the configuration files and RDASK_<OPTION> variables merged in.
    let cli = match config::parse_cli(std::env::args_os(), &Environment::current()) {
        Ok(cli) => cli,
        Err(CliError::Usage(e)) => e.exit(),
        Err(CliError::Config(e)) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    match rdask_jobqueue::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
