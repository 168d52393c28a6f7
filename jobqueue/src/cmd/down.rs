//! `down`: stops a cluster and everything it started, even after a crash.

use std::time::{Duration, Instant};

use rdask::cluster::SchedulerFile;

use crate::backend;
use crate::cli::DownArgs;
use crate::error::{Error, Result};
use crate::state::{process_alive, Journalled, StateDir};
use crate::{cleanup, connect};

/// `down`: stops the cluster and everything it started.
pub(crate) async fn down(state: &StateDir, a: DownArgs) -> Result<i32> {
    let file = SchedulerFile::read(&state.path).ok();
    let journal = state.journal_entries();
    if file.is_none() && journal.is_empty() {
        println!("cluster `{}` is not running (nothing in {})", state.name, state.path.display());
        return Ok(0);
    }
    // The scheduler clears the journal when it exits; what it listed must be gone too (the
    // scheduler's own batch job, with --scheduler-in-job, ends only after it).
    let journalled: Vec<Journalled> = state.journal_entries();
    if let Some(f) = &file {
        // The scheduler may run on another host (--scheduler-in-job): its pid only means
        // something here when it runs here.
        let here = f.host == rdask::worker::hostname();
        if !here || process_alive(f.pid, "") {
            match connect(state).await {
                Ok(c) => {
                    let _ = c.shutdown().await;
                    // It removes its scheduler file once its workers and jobs have ended.
                    let deadline = Instant::now() + Duration::from_secs(a.timeout);
                    while state.file(rdask::cluster::SCHEDULER_FILE).exists()
                        && (!here || process_alive(f.pid, ""))
                        && Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                // (Not `Unreachable`'s own words: they advise running `down`.)
                Err(Error::Unreachable { source, .. }) => {
                    eprintln!("scheduler unreachable ({source}); ending what it started")
                }
                Err(e) => eprintln!("scheduler unreachable ({e}); ending what it started"),
            }
        }
    }
    // Whatever is still alive (a crashed scheduler's workers, a stuck process) is ended now.
    let left = cleanup(state);
    if journalled.iter().any(|e| matches!(e, Journalled::Job { .. })) {
        // Written back for `cancel_journalled`, which reads them from the journal.
        for e in &journalled {
            state.record(e)?;
        }
        let cancelled = backend::cancel_journalled(state, backend::batch_system);
        state.clear_journal();
        cancelled?;
    }
    if left > 0 {
        println!("ended {left} leftover process(es)");
    }
    // Nothing to restore from any more: a later `up` starts a new cluster.
    let _ = std::fs::remove_file(state.file(crate::state::SCHEDULER_JOURNAL));
    println!("cluster `{}` is down", state.name);
    Ok(0)
}
