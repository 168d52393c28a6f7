//! What carries out the provisioner's [`Action`](super::Action)s: a [`Launcher`] starts,
//! polls and ends allocations, blocking (the driver calls it off the async threads).
//!
//! [`BatchLauncher`] submits job scripts to a batch system given by injection (the real one,
//! or [`crate::fake::FakeBatch`] in tests); [`LocalLauncher`] starts worker processes on this
//! machine. Both journal what they start before anything else happens to it, so that `down`
//! can end it even if the scheduler was killed.
#![allow(clippy::disallowed_methods)] // the I/O side of the provisioner: it runs processes and timers

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdask::protocol::AllocationState;

use crate::backend::BatchBackend;
use crate::error::{Error, Result};
use crate::jobs::JobState;
use crate::state::{Journalled, StateDir};

/// Starts, polls and ends allocations. Every call may block.
pub trait Launcher: Send + 'static {
    /// Starts one allocation of `pool` whose workers carry `launch`; its id and first state.
    fn submit(&mut self, pool: &str, launch: &str) -> Result<(String, AllocationState)>;
    /// The states of `ids`, in one call.
    fn poll(&mut self, ids: &[String]) -> Result<HashMap<String, AllocationState>>;
    /// Ends `ids` (they end in their own time; a later poll sees them go).
    fn cancel(&mut self, ids: &[String]) -> Result<()>;
    /// Why `id` ended early: the tail of its stderr, when there is one.
    fn explain(&mut self, id: &str) -> Option<String>;
    /// Ends `ids` and waits until none of them is active (the cluster is going down).
    fn end_all(&mut self, ids: &[String], timeout: Duration) -> Result<()>;
}

/// A batch system's state as an allocation's.
pub fn allocation_state(s: JobState) -> AllocationState {
    match s {
        JobState::Pending => AllocationState::Pending,
        JobState::Running => AllocationState::Running,
        JobState::Finished => AllocationState::Finished,
        JobState::Failed => AllocationState::Failed,
        JobState::Cancelled => AllocationState::Cancelled,
        JobState::Gone => AllocationState::Gone,
    }
}

/// Batch jobs.
pub struct BatchLauncher(pub BatchBackend);

impl Launcher for BatchLauncher {
    fn submit(&mut self, pool: &str, launch: &str) -> Result<(String, AllocationState)> {
        Ok((self.0.submit(pool, launch)?, AllocationState::Pending))
    }

    fn poll(&mut self, ids: &[String]) -> Result<HashMap<String, AllocationState>> {
        Ok(self.0.status(ids)?.into_iter().map(|(id, s)| (id, allocation_state(s))).collect())
    }

    fn cancel(&mut self, ids: &[String]) -> Result<()> {
        self.0.cancel(ids)
    }

    fn explain(&mut self, id: &str) -> Option<String> {
        self.0.stderr_tail(id)
    }

    fn end_all(&mut self, ids: &[String], timeout: Duration) -> Result<()> {
        self.0.cancel_and_wait(ids, timeout)
    }
}

/// Worker processes on this machine; an allocation is one worker, its id the pid.
pub struct LocalLauncher {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    state: StateDir,
    children: HashMap<String, Child>,
    /// Worker processes a previous scheduler process started (adopted after a restart): not
    /// our children, so known by pid and start time.
    adopted: HashMap<String, (u32, u64)>,
}

impl LocalLauncher {
    /// Starts `program args…` with the worker environment `env` (scheduler address, secret
    /// file, slots…) plus the launch tag.
    pub fn new(state: &StateDir, program: PathBuf, args: Vec<String>, env: Vec<(String, String)>) -> LocalLauncher {
        LocalLauncher { program, args, env, state: state.clone(), children: HashMap::new(), adopted: HashMap::new() }
    }

    /// Takes over worker process `pid` (started at `start`) of a previous scheduler process;
    /// its allocation id is its pid, as for the ones this launcher starts.
    pub fn adopt(&mut self, pid: u32, start: u64) {
        self.adopted.insert(pid.to_string(), (pid, start));
    }
}

impl Launcher for LocalLauncher {
    fn submit(&mut self, _pool: &str, launch: &str) -> Result<(String, AllocationState)> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.file("workers.log"))
            .map_err(Error::io(format!("cannot open {}", self.state.file("workers.log").display())))?;
        let log2 = log.try_clone().map_err(Error::io("cannot open workers.log twice"))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(rdask::worker::LAUNCH_TAG_VAR, launch)
            .env_remove("RDASK_SECRET")
            .stdin(Stdio::null())
            .stdout(log2)
            .stderr(log)
            .spawn()
            .map_err(Error::io(format!("cannot start worker program {}", self.program.display())))?;
        let pid = child.id();
        let start = crate::state::process_start_time(pid).unwrap_or(0);
        self.state.record(&Journalled::Process { pid, start, launch: Some(launch.to_string()) })?;
        self.children.insert(pid.to_string(), child);
        Ok((pid.to_string(), AllocationState::Running))
    }

    fn poll(&mut self, ids: &[String]) -> Result<HashMap<String, AllocationState>> {
        let mut out = HashMap::new();
        for id in ids {
            let state = match self.children.get_mut(id).map(Child::try_wait) {
                Some(Ok(None)) => AllocationState::Running,
                Some(Ok(Some(s))) if s.success() => AllocationState::Finished,
                Some(_) => AllocationState::Failed,
                // An adopted process's exit status is its (dead) parent's to know.
                None => match self.adopted.get(id) {
                    Some((pid, start)) if crate::state::process_is(*pid, *start) => AllocationState::Running,
                    Some(_) => AllocationState::Finished,
                    None => AllocationState::Gone,
                },
            };
            if !state.is_active() {
                self.children.remove(id);
                self.adopted.remove(id);
            }
            out.insert(id.clone(), state);
        }
        Ok(out)
    }

    fn cancel(&mut self, ids: &[String]) -> Result<()> {
        // SIGTERM: a worker finishes what it holds, hands its results over and leaves.
        for id in ids {
            if let Some((pid, start)) = self.adopted.get(id) {
                if crate::state::process_is(*pid, *start) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*pid as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
            }
            if let Some(c) = self.children.get_mut(id) {
                if matches!(c.try_wait(), Ok(None)) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(c.id() as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
            }
        }
        Ok(())
    }

    fn explain(&mut self, _id: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.state.file("workers.log")).ok()?;
        let lines: Vec<&str> = text.lines().collect();
        Some(lines[lines.len().saturating_sub(10)..].join("\n"))
    }

    fn end_all(&mut self, _ids: &[String], grace: Duration) -> Result<()> {
        // The scheduler told every worker to stop; whoever is left after `grace` is ended.
        let deadline = Instant::now() + grace;
        for (_, mut child) in self.children.drain() {
            let wait = deadline.saturating_duration_since(Instant::now());
            rdask::process::end(rdask::process::Target::Process(child.id()), wait, rdask::process::GRACE);
            let _ = child.wait();
        }
        for (_, (pid, start)) in self.adopted.drain() {
            if crate::state::process_is(pid, start) {
                let wait = deadline.saturating_duration_since(Instant::now());
                rdask::process::end(rdask::process::Target::Process(pid), wait, rdask::process::GRACE);
            }
        }
        Ok(())
    }
}
