//! The `rdask-jobqueue` command; see `rdask-jobqueue --help`.

use clap::Parser;

fn main() {
    // A closed pipe (`rdask-jobqueue status | head`) ends the program quietly, not with a panic.
    #[allow(unsafe_code)]
    // SAFETY: resetting SIGPIPE to its default action before any thread starts is sound.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = rdask_jobqueue::cli::Cli::parse();
    match rdask_jobqueue::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
