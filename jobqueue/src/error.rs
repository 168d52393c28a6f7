//! The one error type of the `rdask-jobqueue` library, and the exit code of each error.
//!
//! Every public function of the crate returns [`Result`]; callers match on [`Error`]'s
//! variants, never on messages. Each message is complete in itself (it includes what it was
//! caused by and says what to do), so the binary prints it as it is.
//!
//! The exit codes of `rdask-jobqueue` ([`Error::exit_code`]), for scripts:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | tasks failed (`wait`, `submit --wait`) |
//! | 2 | bad command line, option value or configuration (clap's own code) |
//! | 3 | the cluster is not running, or its scheduler cannot be reached |
//! | 4 | refused: by the scheduler (an invalid job, a scale or adapt request it will not do, a cluster already up) or by the batch system (`sbatch`, `qsub`, `bsub` refused the job script) |
//! | 5 | anything else: a batch-system status or cancel command failed, a file could not be read or written, the open-file limit is too low for the workers asked for, the cluster did not start in time, an internal error |
//!
//! `run` and `mpi` exit with their client command's own code.

use std::path::PathBuf;

use rdask::cluster::InfoError;
use rdask::protocol::{JobId, Refusal};
use rdask::worker::WorkerError;
use rdask::ClientError;
use rdask_transport::auth::SecretError;

use crate::batch::RenderError;
use crate::config::ConfigError;
use crate::jobs::BatchError;
use crate::spec::SpecError;

/// A result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in kinds a caller can act on; [`Error::exit_code`] maps each to the
/// documented exit code of `rdask-jobqueue`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A command-line argument or option value is wrong; the message says what to change.
    #[error("{0}")]
    Usage(String),
    /// A configuration file or `RDASK_*` variable is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The options do not make a valid cluster spec (or a saved spec cannot be read).
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A job script cannot be made from these parameters or this template.
    #[error("{}{source}", pool.as_ref().map(|p| format!("pool `{p}`: ")).unwrap_or_default())]
    Render {
        /// The pool whose script it is, where there are several.
        pool: Option<String>,
        /// Why.
        #[source]
        source: RenderError,
    },
    /// The cluster's state directory says nothing usable about a running cluster (no
    /// scheduler file: it is not up), or an environment variable meant to say where it is
    /// is malformed.
    #[error(transparent)]
    Info(#[from] InfoError),
    /// The cluster is not up: its state directory has no scheduler.
    #[error("cluster `{cluster}` is not up (no scheduler in {}); start it with `rdask-jobqueue up`", dir.display())]
    NotRunning {
        /// The cluster's name.
        cluster: String,
        /// Its state directory.
        dir: PathBuf,
    },
    /// The cluster's scheduler could not be reached (or the connection broke).
    #[error("{source}\nIf the cluster `{cluster}` crashed, run `rdask-jobqueue down --name {cluster}` to clean up.")]
    Unreachable {
        /// The cluster's name.
        cluster: String,
        /// What the client saw.
        #[source]
        source: ClientError,
    },
    /// A client call failed: refused, no such job, a task failed, a protocol error…
    #[error(transparent)]
    Client(ClientError),
    /// The scheduler (or its provisioner) refused a request, in its own words.
    #[error("{0}")]
    Refused(Refusal),
    /// The cluster is up already; `up` starts nothing.
    #[error(
        "cluster `{cluster}` is already up (scheduler pid {pid} at {addresses}); use it, or stop it with `rdask-jobqueue down --name {cluster}`"
    )]
    AlreadyUp {
        /// The cluster's name.
        cluster: String,
        /// Its scheduler's pid.
        pid: u32,
        /// Its scheduler's addresses.
        addresses: String,
    },
    /// The batch system refused to submit a job script (its own words are in `source`).
    #[error("{system} refused the job script {}: {source}", script.display())]
    Submission {
        /// The batch system.
        system: String,
        /// The script.
        script: PathBuf,
        /// The submit command's failure, with its output.
        #[source]
        source: BatchError,
    },
    /// A batch-system command is missing, or failed (status, cancel), or was given a bad id.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// Batch jobs still active after they were cancelled and waited for.
    #[error(
        "{} job(s) still active after {secs} s: {}; cancel them by hand ({system} …)",
        jobs.len(),
        jobs.join(" ")
    )]
    StillActive {
        /// The batch system.
        system: &'static str,
        /// The jobs.
        jobs: Vec<String>,
        /// How long they were waited for.
        secs: u64,
    },
    /// Tasks of a job failed (what they said is printed by `wait`).
    #[error("job {job}: {failed} of {tasks} task(s) failed")]
    TasksFailed {
        /// The job.
        job: JobId,
        /// How many of its tasks failed.
        failed: usize,
        /// How many it has.
        tasks: u64,
    },
    /// The first allocations of a starting cluster could not be started: the batch system
    /// refused the job scripts (or the local launcher could not start a worker); its words.
    #[error(transparent)]
    Launch(#[from] crate::provision::driver::SubmissionRefused),
    /// The background scheduler started by `up` exited before it was ready. Its exit code,
    /// when it is one of the documented ones, is `up`'s: a batch system that refused the
    /// first job scripts makes `up` exit with 4.
    #[error("the scheduler exited ({status}) before it was ready:\n{log}")]
    SchedulerExited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its log.
        log: String,
    },
    /// The cluster did not come up (or did not reach a size) in time, or its jobs ended
    /// first: what happened, and the end of the log that shows why.
    #[error("{what}")]
    NotReady {
        /// What did not happen, with the log's end.
        what: String,
    },
    /// A worker could not run (its scheduler unreachable for its death timeout, say).
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// The cluster's secret could not be read or written.
    #[error("{source}{hint}")]
    Secret {
        /// Why.
        #[source]
        source: SecretError,
        /// What to do, if there is something to say.
        hint: &'static str,
    },
    /// A file, directory or program could not be read, written or started.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The open-file limit cannot hold the connections the scheduler is asked to hold.
    #[error(transparent)]
    Limit(#[from] rdask::limits::LimitError),
    /// An MPI job failed to start or run (feature `mpi`).
    #[error("{0}")]
    Mpi(String),
}

impl Error {
    /// The exit code of `rdask-jobqueue` for this error; see the [module](self) documentation.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::TasksFailed { .. } => 1,
            Error::Client(ClientError::TaskFailed { .. }) => 1,
            Error::Usage(_) | Error::Config(_) | Error::Render { .. } => 2,
            Error::Spec(e) => match e {
                SpecError::Read { .. } | SpecError::Write { .. } | SpecError::Corrupt(_) => 5,
                _ => 2,
            },
            Error::Info(e) => match e {
                InfoError::BadEnv { .. } => 2,
                InfoError::Secret(_) => 5,
                _ => 3,
            },
            Error::Client(ClientError::NoSuchJob(_)) => 2,
            Error::Batch(BatchError::Missing { .. }) => 2,
            Error::NotRunning { .. }
            | Error::Unreachable { .. }
            | Error::Client(ClientError::Unreachable { .. } | ClientError::Disconnected) => 3,
            Error::Worker(WorkerError::DeathTimeout { .. }) => 3,
            Error::Refused(_) | Error::Client(ClientError::Refused(_)) | Error::AlreadyUp { .. } => 4,
            Error::Submission { .. } | Error::Launch(_) => 4,
            Error::SchedulerExited { status, .. } => status.code().filter(|c| (2..=4).contains(c)).unwrap_or(5),
            Error::Client(_)
            | Error::Batch(_)
            | Error::StillActive { .. }
            | Error::NotReady { .. }
            | Error::Worker(_)
            | Error::Secret { .. }
            | Error::Io { .. }
            | Error::Limit(_)
            | Error::Mpi(_) => 5,
        }
    }

    /// An I/O error while doing `what` (a sentence fragment naming the path).
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    /// A client error talking to the cluster `cluster`: unreachable (with the hint to clean
    /// up after a crash), or what the scheduler answered.
    pub fn client(cluster: &str) -> impl FnOnce(ClientError) -> Error + '_ {
        move |e| match e {
            ClientError::Unreachable { .. } | ClientError::Disconnected => {
                Error::Unreachable { cluster: cluster.to_string(), source: e }
            }
            other => Error::Client(other),
        }
    }
}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Error {
        Error::Client(e)
    }
}

impl From<SecretError> for Error {
    fn from(source: SecretError) -> Error {
        Error::Secret { source, hint: "" }
    }
}

impl From<RenderError> for Error {
    fn from(source: RenderError) -> Error {
        Error::Render { pool: None, source }
    }
}

#[cfg(test)]
mod tests {
    use rdask::protocol::RefusalKind;

    use super::*;

    /// The documented table, kind by kind: what a script sees.
    #[test]
    fn each_kind_of_error_has_its_documented_exit_code() {
        let unreachable = || ClientError::Unreachable { addresses: "tcp://h:1".into(), last: "refused".into() };
        let refusal = || Refusal::new(RefusalKind::NotFound, "no worker pool named `x`");
        let failed = BatchError::Failed { command: "sbatch x".into(), status: "1".into(), output: "no".into() };
        let io = || std::io::Error::other("disk full");
        let cases: Vec<(Error, i32)> = vec![
            (Error::TasksFailed { job: JobId(1), failed: 2, tasks: 3 }, 1),
            (Error::Usage("bad --array".into()), 2),
            (Error::Client(ClientError::NoSuchJob(JobId(9))), 2),
            (Error::NotRunning { cluster: "c".into(), dir: "/x".into() }, 3),
            (Error::client("c")(unreachable()), 3),
            (Error::client("c")(ClientError::Disconnected), 3),
            (Error::client("c")(ClientError::Refused(refusal())), 4),
            (Error::Refused(refusal()), 4),
            (Error::AlreadyUp { cluster: "c".into(), pid: 1, addresses: "a".into() }, 4),
            (Error::Submission { system: "slurm".into(), script: "/s.sh".into(), source: failed }, 4),
            (Error::Io { what: "cannot write x".into(), source: io() }, 5),
            (Error::NotReady { what: "only 1 of 2 workers".into() }, 5),
        ];
        for (e, code) in cases {
            assert_eq!(e.exit_code(), code, "{e:?}");
        }
    }

    #[test]
    fn an_unreachable_cluster_says_how_to_clean_up_after_a_crash() {
        let e = Error::client("mine")(ClientError::Disconnected);
        assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
        assert!(e.to_string().contains("rdask-jobqueue down --name mine"), "{e}");
    }
}
