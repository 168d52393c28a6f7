//! The local backend: worker processes on this machine, no batch system.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::state::StateDir;

/// Worker processes started by the scheduler on its own machine.
#[derive(Debug)]
pub struct LocalBackend {
    /// The program to start (`rdask-jobqueue` itself, or the user's program for function tasks).
    pub program: PathBuf,
    /// Arguments before the worker role takes over (`worker` for rdask-jobqueue).
    pub args: Vec<String>,
    /// Slots per worker.
    pub slots: u16,
    /// Death timeout given to workers, in seconds.
    pub death_timeout: u64,
    children: Vec<Child>,
    /// Workers asked to retire.
    retiring: Vec<u32>,
    /// Where new workers go: the state directory and the scheduler's addresses (set by `start`).
    target: Option<(StateDir, Vec<String>)>,
}

impl LocalBackend {
    /// A backend that starts `program args…` with the worker environment.
    pub fn new(program: PathBuf, args: Vec<String>, slots: u16, death_timeout: u64) -> LocalBackend {
        LocalBackend { program, args, slots, death_timeout, children: Vec::new(), retiring: Vec::new(), target: None }
    }

    /// Starts `n` workers that join the cluster at `addresses`, journalling each pid first thing.
    pub fn start(&mut self, state: &StateDir, addresses: &[String], n: usize) -> Result<()> {
        self.target = Some((state.clone(), addresses.to_vec()));
        for _ in 0..n {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(state.file("workers.log"))
                .context("cannot open workers.log")?;
            let child = Command::new(&self.program)
                .args(&self.args)
                .env(rdask::local::ROLE_VAR, "worker")
                .env("RDASK_SCHEDULER", addresses.join(","))
                .env("RDASK_SECRET_FILE", state.file(rdask::cluster::SECRET_FILE))
                .env_remove("RDASK_SECRET")
                .env("RDASK_SLOTS", self.slots.to_string())
                .env("RDASK_DEATH_TIMEOUT", self.death_timeout.to_string())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start worker program {}", self.program.display()))?;
            let pid = child.id();
            let start = crate::state::process_start_time(pid).unwrap_or(0);
            state.journal("pid", &format!("{pid}:{start}"))?;
            self.children.push(child);
        }
        Ok(())
    }

    /// Brings the number of workers to `n`: starts the missing ones, or asks surplus workers
    /// whose pid is `idle` to retire (SIGTERM: they finish what they hold and leave).
    pub fn scale_to(
        &mut self,
        state: &StateDir,
        addresses: &[String],
        n: usize,
        idle: impl Fn(u32) -> bool,
    ) -> Result<()> {
        self.children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        let live: Vec<u32> = self.children.iter().map(|c| c.id()).filter(|p| !self.retiring.contains(p)).collect();
        if live.len() < n {
            tracing::info!(from = live.len(), to = n, "scaling up");
            return self.start(state, addresses, n - live.len());
        }
        for pid in live.iter().rev().filter(|p| idle(**p)).take(live.len() - n) {
            tracing::info!(pid, "scaling down: retiring an idle worker");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::Signal::SIGTERM);
            self.retiring.push(*pid);
        }
        Ok(())
    }

    /// The pids of the workers still running, oldest first.
    pub fn live(&mut self) -> Vec<u32> {
        self.children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        self.children.iter().map(Child::id).collect()
    }

    /// Starts one more worker, like the ones `start` started.
    pub fn add_one(&mut self) -> Result<()> {
        let Some((state, addresses)) = self.target.clone() else {
            anyhow::bail!("no worker was started yet: the scheduler's address is unknown");
        };
        self.start(&state, &addresses, 1)
    }

    /// Sends SIGTERM to those of `pids` that are workers still running.
    pub fn terminate(&mut self, pids: &[u32]) {
        for pid in self.live().into_iter().filter(|p| pids.contains(p)) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        }
    }

    /// Stops every worker: they were told to stop by the scheduler; whoever is left after
    /// `grace` gets SIGTERM, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for child in &mut self.children {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                std::thread::sleep(Duration::from_millis(200));
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        self.children.clear();
    }
}
