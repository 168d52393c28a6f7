//! The consistency check that the `Sim` suite runs after every event (tests only): the
//! per-worker indexes, CPU use and idleness, the jobs' counts, `missing` of waiting tasks and the
//! retiring count all match what a full scan of the tasks finds.

use std::collections::HashMap;

use rustc_hash::FxHashSet;

use crate::protocol::{Counts, TaskBody, TaskId, WorkerId};

use super::graph::{count_of, State};
use super::Scheduler;

impl Scheduler {
    /// Panics, saying what, where the scheduler's derived state disagrees with a full scan.
    pub(super) fn check_invariants(&self) {
        let mut running: HashMap<WorkerId, FxHashSet<TaskId>> = HashMap::new();
        let mut holds: HashMap<WorkerId, FxHashSet<TaskId>> = HashMap::new();
        let mut used: HashMap<WorkerId, u32> = HashMap::new();
        // Per worker: GPUs bound, memory and named resources held by its assigned tasks.
        let mut gpus: HashMap<WorkerId, Vec<u16>> = HashMap::new();
        let mut memory: HashMap<WorkerId, u64> = HashMap::new();
        let mut named: HashMap<WorkerId, HashMap<String, u32>> = HashMap::new();
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
                        let needs = &self.needs[t.needs as usize];
                        let bound = self.bound.get(&id).cloned().unwrap_or_default();
                        assert_eq!(bound.len(), usize::from(needs.gpus), "{id} needs {needs} but has GPUs {bound:?}");
                        gpus.entry(worker).or_default().extend(bound);
                        *memory.entry(worker).or_default() += needs.memory;
                        for (k, n) in &needs.named {
                            *named.entry(worker).or_default().entry(k.clone()).or_default() += n;
                        }
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
            let empty = FxHashSet::default();
            assert_eq!(&w.running, running.get(id).unwrap_or(&empty), "tasks assigned to {id}: index and scan differ");
            assert_eq!(&w.holds, holds.get(id).unwrap_or(&empty), "results held by {id}: index and scan differ");
            assert_eq!(w.used, used.get(id).copied().unwrap_or(0), "CPUs used on {id}");
            assert_eq!(w.idle_since.is_some(), w.running.is_empty(), "{id} is idle exactly when it has no task");
            let mut bound = gpus.remove(id).unwrap_or_default();
            bound.sort();
            let held: Vec<u16> = (0..w.held.gpus.len() as u16).filter(|g| w.held.gpus[usize::from(*g)]).collect();
            assert_eq!(bound, held, "GPUs of {id}: bound to its tasks and marked held differ (or one is bound twice)");
            assert_eq!(w.held.memory, memory.remove(id).unwrap_or(0), "memory held on {id}");
            let mine = named.remove(id).unwrap_or_default();
            for (i, (k, _)) in w.info.offer.named.iter().enumerate() {
                assert_eq!(w.held.named[i], mine.get(k).copied().unwrap_or(0), "{k} held on {id}");
            }
        }
        assert!(
            self.bound.keys().all(|t| self.task(*t).is_some_and(|t| matches!(t.state(), State::Assigned { .. }))),
            "GPUs bound to a task that is not assigned"
        );
        if self.open_depth > 0 {
            let now = self.now.expect("checked after an event");
            for (id, w) in &self.workers {
                let room = !w.retiring && w.ends_at.is_none_or(|e| e > now) && w.slots() * self.open_depth > w.used;
                assert!(!room || self.open.contains(id), "{id} has room but is not among the open workers");
            }
        }
        let retiring = self.workers.values().filter(|w| w.retiring && !w.stop_sent).count();
        assert_eq!(self.retiring, retiring, "retiring workers not yet stopped");
    }
}
