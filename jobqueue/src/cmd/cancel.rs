//! `cancel`: the tasks of a job that have not started never will (as HyperQueue's
//! `hq job cancel`); tasks already running finish. Cancelled tasks count as failed, so a
//! `wait` on the job exits 1 and says which were cancelled.

use rdask::protocol::RefusalKind;
use rdask::ClientError;

use crate::cli::CancelArgs;
use crate::cmd::wait::job_or_last;
use crate::connect;
use crate::error::{Error, Result};
use crate::state::StateDir;

/// `cancel`: prints what was cancelled and what is still running.
pub(crate) async fn cancel(state: &StateDir, a: CancelArgs) -> Result<i32> {
    let job = job_or_last(state, a.job, "cancel")?;
    let tasks = (!a.task.is_empty()).then(|| a.task.clone());
    let client = connect(state).await?;
    let done = client.cancel(job, tasks).await.map_err(|e| match e {
        // A `--task` the job does not have is a bad option value (exit 2, as clap's own);
        // any other refusal is the scheduler's (exit 4).
        ClientError::Refused(why) if why.kind == RefusalKind::Invalid => Error::Usage(why.message),
        e => Error::client(&state.name)(e),
    })?;
    let running = match done.running {
        0 => String::new(),
        n => format!("; {n} already running will finish (`rdask-jobqueue wait {job}` waits for them)"),
    };
    println!("job {job}: {} tasks cancelled{running}", done.cancelled);
    Ok(0)
}
