//! A scripted batch system for unit tests of provisioning, scaling and adaptive code: jobs
//! live in memory, their states change when the test says so, and the test can make the next
//! submission or poll fail. It proves the logic around a batch system, never that submission
//! to a real one works (the tests in `tests/batch.rs` and `tests/adapt.rs` do that).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::jobs::{BatchError, BatchSystem, JobState};

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    jobs: BTreeMap<String, JobState>,
    scripts: BTreeMap<String, String>,
    reject: Vec<String>,
    fail_polls: u32,
    cancelled: Vec<String>,
    calls: Vec<String>,
}

/// A fake batch system; clones share their jobs (one to hand over, one to script the test).
#[derive(Clone, Debug, Default)]
pub struct FakeBatch(Arc<Mutex<Inner>>);

impl FakeBatch {
    /// A batch system with no jobs; the first id is `1000`.
    pub fn new() -> FakeBatch {
        let f = FakeBatch::default();
        f.lock().next = 1000;
        f
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next submission fails with `message`, as `sbatch` printing it would.
    pub fn reject_next(&self, message: &str) {
        self.lock().reject.push(message.to_string());
    }

    /// The next `n` polls fail.
    pub fn fail_polls(&self, n: u32) {
        self.lock().fail_polls = n;
    }

    /// Sets a job's state (it started, it failed, its walltime ran out…).
    pub fn set_state(&self, id: &str, state: JobState) {
        self.lock().jobs.insert(id.to_string(), state);
    }

    /// Starts every pending job; returns their ids.
    pub fn start_pending(&self) -> Vec<String> {
        let mut g = self.lock();
        let ids: Vec<String> =
            g.jobs.iter().filter(|(_, s)| **s == JobState::Pending).map(|(i, _)| i.clone()).collect();
        for id in &ids {
            g.jobs.insert(id.clone(), JobState::Running);
        }
        ids
    }

    /// Every job and its state, by id.
    pub fn jobs(&self) -> BTreeMap<String, JobState> {
        self.lock().jobs.clone()
    }

    /// The ids of the jobs that are pending or running.
    pub fn active(&self) -> Vec<String> {
        self.lock().jobs.iter().filter(|(_, s)| s.is_active()).map(|(i, _)| i.clone()).collect()
    }

    /// The script job `id` was submitted with.
    pub fn script(&self, id: &str) -> Option<String> {
        self.lock().scripts.get(id).cloned()
    }

    /// Every id a `cancel` named, in order.
    pub fn cancelled(&self) -> Vec<String> {
        self.lock().cancelled.clone()
    }

    /// The calls made, in order: `submit`, `status`, `cancel`.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }
}

fn failed(command: &str, output: String) -> BatchError {
    BatchError::Failed { command: command.to_string(), status: "exit status: 1".into(), output }
}

impl BatchSystem for FakeBatch {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn submit(&self, script: &Path) -> Result<String, BatchError> {
        let mut g = self.lock();
        g.calls.push("submit".into());
        if !g.reject.is_empty() {
            let why = g.reject.remove(0);
            return Err(failed(&format!("fake-submit {}", script.display()), why));
        }
        let text = std::fs::read_to_string(script).map_err(|e| failed("fake-submit", e.to_string()))?;
        let id = g.next.to_string();
        g.next += 1;
        g.jobs.insert(id.clone(), JobState::Pending);
        g.scripts.insert(id.clone(), text);
        Ok(id)
    }

    fn status(&self, ids: &[String]) -> Result<std::collections::HashMap<String, JobState>, BatchError> {
        let mut g = self.lock();
        g.calls.push("status".into());
        if g.fail_polls > 0 {
            g.fail_polls -= 1;
            return Err(failed("fake-status", "slurm_load_jobs error: Socket timed out".into()));
        }
        Ok(ids.iter().map(|id| (id.clone(), g.jobs.get(id).copied().unwrap_or(JobState::Gone))).collect())
    }

    fn cancel(&self, ids: &[String]) -> Result<(), BatchError> {
        let mut g = self.lock();
        g.calls.push("cancel".into());
        for id in ids {
            g.cancelled.push(id.clone());
            if let Some(s) = g.jobs.get_mut(id) {
                if s.is_active() {
                    *s = JobState::Cancelled;
                }
            }
        }
        Ok(())
    }
}
