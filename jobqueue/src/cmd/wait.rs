//! `wait`: waits for a job, with a progress bar; failed tasks are an error (exit code 1).

use std::io::IsTerminal;
use std::time::Duration;

use rdask::protocol::JobId;
use rdask::{Client, ClientError};

use crate::cli::{OutputMode, WaitArgs};
use crate::connect;
use crate::error::{Error, Result};
use crate::state::StateDir;

/// `wait`: waits for a job, with a progress bar.
pub(crate) async fn wait(state: &StateDir, a: WaitArgs) -> Result<i32> {
    let job = job_or_last(state, a.job, "wait")?;
    let client = match connect(state).await {
        Ok(c) => c,
        // A scheduler being restarted from its journal (`up` after a crash): wait a little.
        Err(Error::Unreachable { .. }) if state.file(crate::state::SCHEDULER_JOURNAL).exists() => {
            eprintln!(
                "cannot reach the scheduler of cluster `{}`; waiting up to {} s for it to come back \
                 (`rdask-jobqueue up --name {}` restarts it from its journal)",
                state.name,
                FIRST_CONNECT.as_secs(),
                state.name
            );
            reconnect(state, FIRST_CONNECT).await?
        }
        Err(e) => return Err(e),
    };
    wait_job(state, &client, job, a.output).await
}

/// `job`, or else the last job submitted to the cluster (for the subcommand `verb`).
pub(crate) fn job_or_last(state: &StateDir, job: Option<u32>, verb: &str) -> Result<JobId> {
    if let Some(j) = job {
        return Ok(JobId(j));
    }
    let text = std::fs::read_to_string(state.file("last-job"))
        .map_err(|_| Error::Usage(format!("no job given and none submitted yet on cluster `{}`", state.name)))?;
    let id = text.trim().parse().map_err(|_| {
        Error::Usage(format!("corrupt last-job file in {}; give the job: `{verb} JOB`", state.path.display()))
    })?;
    Ok(JobId(id))
}

pub(crate) async fn wait_job(state: &StateDir, client: &Client, job: JobId, output: OutputMode) -> Result<i32> {
    let counts = client.progress(job).await.map_err(Error::client(&state.name))?;
    let bar = if std::io::stderr().is_terminal() && output == OutputMode::Text {
        let b = indicatif::ProgressBar::new(u64::from(counts.total));
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} job {msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b.set_message(job.to_string());
        Some(b)
    } else {
        None
    };
    // A scheduler that dies and is restarted (`up` restores it from its journal) keeps its
    // jobs: the wait carries on with a new connection.
    let mut reconnected: Option<Client> = None;
    let outcome = loop {
        let result = {
            let client = reconnected.as_ref().unwrap_or(client);
            let waiter = client.wait(job);
            tokio::pin!(waiter);
            loop {
                tokio::select! {
                    o = &mut waiter => break o,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        if let (Some(b), Ok(c)) = (&bar, client.progress(job).await) {
                            b.set_position(u64::from(c.finished + c.failed));
                        }
                    }
                }
            }
        };
        match result {
            Ok(o) => break o,
            Err(e @ (ClientError::Disconnected | ClientError::Unreachable { .. })) => {
                eprintln!(
                    "lost the scheduler of cluster `{}` ({e}); waiting up to {} s for it to come back \
                     (`rdask-jobqueue up --name {}` restarts it from its journal)",
                    state.name,
                    RECONNECT.as_secs(),
                    state.name
                );
                reconnected = Some(reconnect(state, RECONNECT).await?);
                eprintln!("reconnected to cluster `{}`; still waiting for job {job}", state.name);
            }
            Err(e) => return Err(Error::client(&state.name)(e)),
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if output == OutputMode::Json {
        println!("{}", serde_json::to_string_pretty(&outcome).expect("serialisable"));
    } else {
        println!(
            "job {job}: {} of {} tasks finished, {} failed (output in {}; `rdask-jobqueue output {job} --task N` prints a task's)",
            outcome.finished,
            outcome.tasks,
            outcome.failed.len(),
            state.path.join("jobs").join(job.to_string()).display()
        );
        for (i, e) in outcome.failed.iter().take(10) {
            println!("  task {i} {e}");
        }
        if outcome.failed.len() > 10 {
            println!("  … and {} more (see --output json)", outcome.failed.len() - 10);
        }
    }
    if outcome.failed.is_empty() {
        Ok(0)
    } else {
        Err(Error::TasksFailed { job, failed: outcome.failed.len(), tasks: u64::from(outcome.tasks) })
    }
}

/// How long `wait` looks for a scheduler that went away while it waited…
const RECONNECT: Duration = Duration::from_secs(600);
/// …and for one it cannot reach when it starts, if the cluster has a journal to restart from
/// (a crashed cluster that nobody restarts fails soon enough to say so).
const FIRST_CONNECT: Duration = Duration::from_secs(30);

/// A connection to the cluster's scheduler once it is back; an error once `within` has
/// passed, or at once if the cluster was taken down (its scheduler file and journal are gone).
async fn reconnect(state: &StateDir, within: Duration) -> Result<Client> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Ok(c) = crate::connect(state).await {
            return Ok(c);
        }
        let gone = !state.file(rdask::cluster::SCHEDULER_FILE).exists()
            && !state.file(crate::state::SCHEDULER_JOURNAL).exists();
        if gone || std::time::Instant::now() > deadline {
            return crate::connect(state).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
