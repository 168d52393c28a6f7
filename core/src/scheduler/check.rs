//! The consistency check that the `Sim` suite runs after every event (tests only): the
//! per-worker indexes, CPU use and idleness, the jobs' counts, `missing` of waiting tasks and the
//! retiring count all match what a full scan of the tasks finds.

use std::collections::{HashMap, HashSet};

use crate::protocol::{Counts, TaskBody, TaskId, WorkerId};

use super::graph::{count_of, State};
use super::Scheduler;

impl Scheduler {
    /// Panics, saying what, where the scheduler's derived state disagrees with a full scan.
    pub(super) fn check_invariants(&self) {
        let mut running: HashMap<WorkerId, HashSet<TaskId>> = HashMap::new();
        let mut holds: HashMap<WorkerId, HashSet<TaskId>> = HashMap::new();
        let mut used: HashMap<WorkerId, u32> = HashMap::new();
        let available = |id: &TaskId| {
            self.jobs.get(&id.job).and_then(|j| j.tasks.unvisited().get(id.index as usize)).is_some_and(|t| {
                match t.state() {
                    State::Finished { holder } => holder.is_some() || matches!(t.body, TaskBody::Command),
                    _ => false,
                }
            })
        };
        for (job, j) in &self.jobs {
            let mut counts = Counts { total: j.counts.total, ..Counts::default() };
            for (index, t) in j.tasks.unvisited().iter().enumerate() {
                let id = TaskId { job: *job, index: index as u32 };
                *count_of(&mut counts, t.state()) += 1;
                match t.state() {
                    State::Assigned { worker } => {
                        let w =
                            self.workers.get(&worker).unwrap_or_else(|| panic!("{id} is assigned to {worker}, gone"));
                        running.entry(worker).or_default().insert(id);
                        *used.entry(worker).or_default() += w.charge(u32::from(t.cpus));
                    }
                    State::Finished { holder: Some(h) } => {
                        assert!(self.workers.contains_key(&h), "{id}'s result is on {h}, gone");
                        assert!(!matches!(t.body, TaskBody::Command), "command task {id} has a holder");
                        holds.entry(h).or_default().insert(id);
                    }
                    State::Waiting { missing } => {
                        let really = t.deps.iter().filter(|d| !available(d)).count() as u32;
                        assert_eq!(missing, really, "{id} is waiting for {missing} inputs, but {really} are missing");
                    }
                    _ => {}
                }
            }
            assert_eq!(counts, j.counts, "the counts of {job} do not match its tasks");
            assert_eq!(j.tasks.len() as u32, j.counts.total);
        }
        for (id, w) in &self.workers {
            let empty = HashSet::new();
            assert_eq!(&w.running, running.get(id).unwrap_or(&empty), "tasks assigned to {id}: index and scan differ");
            assert_eq!(&w.holds, holds.get(id).unwrap_or(&empty), "results held by {id}: index and scan differ");
            assert_eq!(w.used, used.get(id).copied().unwrap_or(0), "CPUs used on {id}");
            assert_eq!(w.idle_since.is_some(), w.running.is_empty(), "{id} is idle exactly when it has no task");
        }
        let retiring = self.workers.values().filter(|w| w.retiring && !w.stop_sent).count();
        assert_eq!(self.retiring, retiring, "retiring workers not yet stopped");
    }
}
