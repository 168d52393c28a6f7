//! `job-script`: the job script `up` would submit, printed.

use rdask::cluster::SchedulerFile;

use crate::backend;
use crate::batch::System;
use crate::error::{Error, Result};
use crate::pools::{batch_system_of, job_params, worker_argv};
use crate::spec::ClusterSpec;
use crate::state::StateDir;

/// `job-script`: the script `up` would submit.
pub(crate) fn job_script(state: &StateDir, spec: &ClusterSpec) -> Result<i32> {
    print!("{}", render(state, spec)?);
    Ok(0)
}

/// The script `up` would submit (what `job-script` prints).
pub(crate) fn render(state: &StateDir, spec: &ClusterSpec) -> Result<String> {
    let Some(system) = batch_system_of(spec) else {
        return Err(Error::Usage(format!(
            "the local backend submits no job script; choose a batch system with --backend {}",
            System::list("|")
        )));
    };
    let addresses = SchedulerFile::read(&state.path).map(|f| f.addresses).unwrap_or_default();
    Ok(backend::render(system, &job_params(spec), &worker_argv(spec, state, &addresses)?, spec.template.as_deref())?)
}
