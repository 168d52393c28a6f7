//! A cluster's state directory: `$RDASK_HOME/<name>` (default `~/.rdask/<name>`).
//!
//! It holds the secret (0600), `scheduler.json` (addresses and pid, while the
//! scheduler runs), `spec.json` (what it was started with), `scheduler.log`, the typed
//! journal of the processes and jobs the cluster started ([`Journalled`], one JSON object a
//! line), and command tasks' output (`jobs/`).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

use crate::batch::System;
use crate::jobs::Commands;

/// The scheduler's own journal in the state directory (see [`rdask::journal`]): its jobs and
/// workers, for a restart to carry on from.
pub const SCHEDULER_JOURNAL: &str = "scheduler.journal";

/// The state directory of one cluster.
#[derive(Clone, Debug)]
pub struct StateDir {
    /// The cluster's name.
    pub name: String,
    /// Its directory.
    pub path: PathBuf,
}

impl StateDir {
    /// The directory of cluster `name` under `home` (or `$RDASK_HOME`, or `~/.rdask`).
    pub fn locate(home: Option<&Path>, name: &str) -> Result<StateDir> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(Error::Usage(format!(
                "invalid cluster name `{name}`: use letters, digits, `-` and `_` (e.g. --name mycluster)"
            )));
        }
        let home = match home {
            Some(h) => h.to_path_buf(),
            None => match std::env::var_os("HOME") {
                Some(h) => PathBuf::from(h).join(".rdask"),
                None => {
                    return Err(Error::Usage(
                        "neither RDASK_HOME nor HOME is set: set RDASK_HOME to a directory for cluster state".into(),
                    ))
                }
            },
        };
        Ok(StateDir { name: name.to_string(), path: home.join(name) })
    }

    /// Creates the directory (owner-only).
    pub fn create(&self) -> Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)
            .map_err(Error::io(format!("cannot create state directory {}", self.path.display())))
    }

    /// A file inside the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Appends an entry to the journal, synced to disk before returning: whatever the
    /// cluster starts is on record before it can be lost.
    pub fn record(&self, entry: &Journalled) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.file("journal"))
            .map_err(Error::io(format!("cannot open the journal in {}", self.path.display())))?;
        writeln!(f, "{}", serde_json::to_string(entry).expect("serialisable"))
            .and_then(|()| f.sync_data())
            .map_err(Error::io(format!("cannot write the journal in {}", self.path.display())))
    }

    /// The journal's entries, in order (a line torn by a crash is skipped).
    pub fn journal_entries(&self) -> Vec<Journalled> {
        std::fs::read_to_string(self.file("journal"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Forgets the journal (after everything in it was ended).
    pub fn clear_journal(&self) {
        let _ = std::fs::remove_file(self.file("journal"));
        let _ = std::fs::remove_file(self.file(SCHEDULER_JOURNAL));
    }
}

/// One entry of a cluster's journal: what it started, for `down` to end after a crash.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Journalled {
    /// A process (the scheduler, a local worker): its pid and start time (see [`process_start_time`]).
    Process {
        /// Its pid.
        pid: u32,
        /// Its start time, so that a recycled pid is never signalled.
        start: u64,
        /// The launch tag of a local worker process (none for the scheduler): a restarted
        /// scheduler adopts the process as that allocation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        launch: Option<String>,
    },
    /// The batch system the cluster's jobs go to, and the commands that reach it.
    BatchSystem {
        /// The system.
        system: System,
        /// Its commands.
        commands: Commands,
    },
    /// A `scale` or `adapt` request the provisioner accepted, for a restart to apply again.
    Setting {
        /// The request.
        request: rdask::protocol::ControlRequest,
    },
    /// A batch job, journalled as soon as the batch system gave its id.
    Job {
        /// The system.
        system: System,
        /// Its id.
        id: String,
        /// Its pool.
        pool: String,
        /// The launch tag its workers carry.
        launch: String,
    },
}

/// Whether process `pid` with start time `start` (see [`process_start_time`]) is alive and
/// not a zombie.
pub fn process_is(pid: u32, start: u64) -> bool {
    stat(pid).is_some_and(|(state, started)| state != 'Z' && started == Some(start))
}

/// Whether process `pid` exists and runs a program whose command line mentions `needle`
/// (so a recycled pid of another program is never signalled).
pub fn process_alive(pid: u32, needle: &str) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        // A zombie has exited; it is only waiting for its parent.
        Ok(cmd) => stat(pid).is_none_or(|(state, _)| state != 'Z') && String::from_utf8_lossy(&cmd).contains(needle),
        Err(_) => false,
    }
}

/// The start time of process `pid` (clock ticks since boot, from `/proc/<pid>/stat`):
/// with the pid, it identifies a process even after the pid is recycled.
pub fn process_start_time(pid: u32) -> Option<u64> {
    stat(pid)?.1
}

/// The state letter and start time of process `pid`, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(char, Option<u64>)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3: the state,
    // then starttime as field 22.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(18).and_then(|s| s.parse().ok())))
}
