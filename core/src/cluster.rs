//! How to reach a cluster: its scheduler's addresses and its secret.
//!
//! A cluster's state directory holds `scheduler.json` (addresses, pid) and
//! `secret` (0600). Processes started by rdask itself may get the same
//! through the environment instead (`RDASK_SCHEDULER`, `RDASK_SECRET`).

use std::path::{Path, PathBuf};

use rdask_transport::auth::{Secret, SecretError};
use rdask_transport::Address;
use serde::{Deserialize, Serialize};

/// Everything a worker or client needs to join a cluster.
#[derive(Clone, Debug)]
pub struct ClusterInfo {
    /// Candidate scheduler addresses, tried in order.
    pub addresses: Vec<Address>,
    /// The shared secret.
    pub secret: Secret,
}

/// Why cluster information could not be found.
#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    /// No scheduler file: the cluster is not running (or another state directory was meant).
    #[error(
        "no scheduler file at {0}: is the cluster up? (start it with `rdask-jobqueue up`, or set RDASK_HOME / --name)"
    )]
    NotRunning(PathBuf),
    /// The scheduler file is unreadable or corrupt.
    #[error("scheduler file {path} is unreadable: {detail}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The secret could not be loaded.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// An environment variable is malformed.
    #[error("{var} is malformed: {detail}")]
    BadEnv {
        /// The variable.
        var: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// The contents of `scheduler.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SchedulerFile {
    /// Addresses where workers and clients reach the scheduler, best first.
    pub addresses: Vec<String>,
    /// The scheduler's process id.
    pub pid: u32,
    /// The scheduler's host.
    pub host: String,
}

/// File names inside a state directory.
pub const SCHEDULER_FILE: &str = "scheduler.json";
/// The secret's file name.
pub const SECRET_FILE: &str = "secret";

impl SchedulerFile {
    /// Reads `scheduler.json` from a state directory.
    pub fn read(dir: &Path) -> Result<SchedulerFile, InfoError> {
        let path = dir.join(SCHEDULER_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(InfoError::NotRunning(path)),
            Err(e) => return Err(InfoError::BadFile { path, detail: e.to_string() }),
        };
        serde_json::from_str(&text).map_err(|e| InfoError::BadFile { path, detail: e.to_string() })
    }

    /// Writes it atomically (a temporary file renamed into place).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(format!(".{SCHEDULER_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_string_pretty(self).expect("serialisable"))?;
        std::fs::rename(tmp, dir.join(SCHEDULER_FILE))
    }
}

impl ClusterInfo {
    /// Reads a cluster's state directory.
    pub fn from_state_dir(dir: &Path) -> Result<ClusterInfo, InfoError> {
        let file = SchedulerFile::read(dir)?;
        let path = dir.join(SCHEDULER_FILE);
        let addresses = file
            .addresses
            .iter()
            .map(|a| a.parse().map_err(|e| InfoError::BadFile { path: path.clone(), detail: format!("{e}") }))
            .collect::<Result<Vec<Address>, _>>()?;
        let secret = Secret::load(&dir.join(SECRET_FILE))?;
        Ok(ClusterInfo { addresses, secret })
    }

    /// Reads `RDASK_SCHEDULER` (comma-separated addresses) and `RDASK_SECRET` (hex) or,
    /// failing that, the state directory in `RDASK_STATE_DIR`.
    pub fn from_env() -> Result<ClusterInfo, InfoError> {
        if let Ok(dir) = std::env::var("RDASK_STATE_DIR") {
            if std::env::var_os("RDASK_SCHEDULER").is_none() {
                return ClusterInfo::from_state_dir(Path::new(&dir));
            }
        }
        let addrs = std::env::var("RDASK_SCHEDULER").map_err(|_| InfoError::BadEnv {
            var: "RDASK_SCHEDULER",
            detail: "not set (set it, or RDASK_STATE_DIR, to say where the scheduler is)".into(),
        })?;
        let addresses = addrs
            .split(',')
            .map(|a| a.trim().parse().map_err(|e| InfoError::BadEnv { var: "RDASK_SCHEDULER", detail: format!("{e}") }))
            .collect::<Result<Vec<Address>, _>>()?;
        let secret = match std::env::var("RDASK_SECRET") {
            Ok(hex) => Secret::from_hex(&hex)
                .ok_or(InfoError::BadEnv { var: "RDASK_SECRET", detail: "expected 64 hex digits".into() })?,
            Err(_) => match std::env::var("RDASK_SECRET_FILE") {
                Ok(p) => Secret::load(Path::new(&p))?,
                Err(_) => {
                    return Err(InfoError::BadEnv {
                        var: "RDASK_SECRET",
                        detail: "not set, nor RDASK_SECRET_FILE: the cluster's secret is needed".into(),
                    })
                }
            },
        };
        Ok(ClusterInfo { addresses, secret })
    }
}
