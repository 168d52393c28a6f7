//! `submit`: a command, or an array of them, submitted to the cluster.

use rdask::protocol::{parse_array, CommandSpec};

use crate::cli::{OutputMode, SubmitArgs};
use crate::cmd::wait::wait_job;
use crate::connect;
use crate::error::{Error, Result};
use crate::state::StateDir;

/// Arrays larger than this stream their output unless told where it goes (`--stream`).
pub(crate) const STREAM_ABOVE: u64 = 1000;

/// Whether a job of `n` tasks streams its output.
fn streams(a: &SubmitArgs, n: u64) -> bool {
    a.stream || (!a.no_stream && a.stdout.is_none() && a.stderr.is_none() && n > STREAM_ABOVE)
}

/// `submit`: submits a command (or an array of them).
pub(crate) async fn submit(state: &StateDir, a: SubmitArgs) -> Result<i32> {
    let ranges = match &a.array {
        Some(s) => parse_array(s).map_err(|e| Error::Usage(format!("bad --array: {e}")))?,
        None => vec![(0, 0)],
    };
    if a.command.is_empty() {
        return Err(Error::Usage(
            "no command given: write it after `--`, e.g. rdask-jobqueue submit -- ./simulate --step 1".into(),
        ));
    }
    let mut env = Vec::new();
    for kv in &a.env {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => env.push((k.to_string(), v.to_string())),
            _ => return Err(Error::Usage(format!("bad --env `{kv}`: write it as NAME=VALUE"))),
        }
    }
    let jobs_dir = state.path.join("jobs").join("%{JOB_ID}");
    let n: u64 = ranges.iter().map(|&(x, y)| u64::from(y - x) + 1).sum();
    let streamed = streams(&a, n);
    let stream = |opt: &Option<String>, ext: &str| match opt.as_deref() {
        Some("none") => None,
        Some(p) => Some(p.to_string()),
        None => Some(jobs_dir.join(format!("%{{TASK_ID}}.{ext}")).display().to_string()),
    };
    let cwd = match &a.cwd {
        Some(c) => c.display().to_string(),
        None => std::env::current_dir().map_err(Error::io("cannot read the current directory"))?.display().to_string(),
    };
    let spec = CommandSpec {
        argv: a.command.clone(),
        env,
        cwd: Some(cwd),
        stdout: if streamed { None } else { stream(&a.stdout, "out") },
        stderr: if streamed { None } else { stream(&a.stderr, "err") },
        stream: streamed.then(|| jobs_dir.display().to_string()),
    };
    let needs = a.needs.needs().map_err(Error::Usage)?;
    let client = connect(state).await?;
    let name = a.job_name.clone().unwrap_or_else(|| a.command[0].clone());
    let job =
        client.submit_array_needing(&name, spec, ranges, a.cpus, needs).await.map_err(Error::client(&state.name))?;
    let last = state.file("last-job");
    std::fs::write(&last, job.0.to_string()).map_err(Error::io(format!("cannot write {}", last.display())))?;
    println!("submitted job {job} ({n} task{})", if n == 1 { "" } else { "s" });
    if a.wait {
        return wait_job(state, &client, job, OutputMode::Text).await;
    }
    Ok(0)
}
