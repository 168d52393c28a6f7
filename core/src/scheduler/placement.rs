//! Placement: which ready task goes to which worker, and the measured durations it relies on.
//!
//! [`Scheduler::schedule`] runs at the end of every event: it hands ready tasks to workers with
//! room (a queue depth per slot that deepens for short tasks), preferring the worker holding
//! most of a task's input bytes and skipping workers whose lifetime ends before the task is
//! expected to. The expected durations come from [`KindStats`], one per kind of task (a function,
//! or a command job's name).

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use std::time::Duration;

use crate::protocol::{Assignment, JobId, TaskBody, TaskId, ToWorker, Work, WorkerId};

use super::graph::State;
use super::observe::KindCounters;
use super::{Command, Scheduler};

#[derive(Debug)]
pub(super) struct KindStats {
    pub(super) name: String,
    /// Mean duration in microseconds, exponentially weighted; `None` until one finished.
    pub(super) mean_us: Option<f64>,
    /// Finished and failed tasks and their durations, for `/metrics`.
    pub(super) counters: KindCounters,
}

/// No kind (a job without a command).
pub(super) const NO_KIND: u32 = u32::MAX;

/// Per-worker queue depth (in CPUs per slot) for short tasks and for the rest.
pub(super) const DEPTH_SHORT: u32 = 512;
pub(super) const DEPTH_LONG: u32 = 2;
/// Tasks shorter than this on average are "short": queueing many of them hides round trips.
pub(super) const SHORT_TASK_US: f64 = 2_000.0;

impl Scheduler {
    /// Hands ready tasks to workers with room, preferring the worker that holds the most input bytes.
    ///
    /// Costs the tasks placed and the workers that may have room (`Scheduler::open`), not a scan
    /// of every worker: at 10,000 workers, a scan per event was most of the scheduler's time.
    pub(super) fn schedule(&mut self) {
        if self.ready.is_empty() || self.workers.is_empty() {
            return;
        }
        let depth = if self.mean_duration_us < SHORT_TASK_US { DEPTH_SHORT } else { DEPTH_LONG };
        if depth != self.open_depth {
            // Every worker's room changed with the depth.
            self.open = self.workers.keys().copied().collect();
            self.open_depth = depth;
        }
        let now = self.now.expect("set by handle");
        // (worker, room left in CPUs, slots), in the order of their ids; those without room leave `open`.
        let mut room: Vec<(WorkerId, u32, u32)> = Vec::new();
        let mut closed = Vec::new();
        for id in &self.open {
            match self.workers.get(id) {
                Some(w) if !w.retiring && w.ends_at.is_none_or(|e| e > now) && w.slots() * depth > w.used => {
                    room.push((*id, w.slots() * depth - w.used, w.slots()));
                }
                _ => closed.push(*id),
            }
        }
        for id in closed {
            self.open.remove(&id);
        }
        let mortal = room.iter().any(|(w, ..)| self.workers[w].ends_at.is_some());
        // Where each worker is in `room` (full ones are swapped out).
        let mut at: FxHashMap<WorkerId, usize> = room.iter().enumerate().map(|(k, (w, ..))| (*w, k)).collect();
        let mut batches: FxHashMap<WorkerId, Vec<Assignment>> = FxHashMap::default();
        let mut next = 0usize;
        let mut skipped = VecDeque::new();
        let mut holders: Vec<(WorkerId, u64)> = Vec::new();
        while !room.is_empty() {
            let Some(id) = self.ready.pop_front() else { break };
            let Some(t) = self.task(id) else { continue };
            if t.state() != State::Ready {
                continue;
            }
            if !t.deps.iter().all(|d| self.available(*d)) {
                self.refresh(id);
                continue;
            }
            let cpus = u32::from(t.cpus);
            let needs = &self.needs[t.needs as usize];
            let has = |w: &WorkerId| t.needs == 0 || self.workers[w].has_free(needs);
            // A worker that must leave before the task is expected to end does not get it.
            // Tasks queued on it are assumed to be like this one.
            let lives = |w: &WorkerId| {
                !mortal || {
                    let worker = &self.workers[w];
                    let ahead = f64::from(1 + worker.assigned() / worker.slots());
                    let expected = Duration::from_micros((self.expected_us(id) * ahead) as u64);
                    worker.ends_at.is_none_or(|e| now + expected <= e)
                }
            };
            let fits = |k: usize| room[k].1 >= cpus.min(room[k].2) && lives(&room[k].0) && has(&room[k].0);
            let mut best: Option<usize> = None;
            if !t.deps.is_empty() {
                // The holders of its inputs and the bytes each holds; among those with room, the
                // one with the most (the first in `room` on a tie), else the first with room.
                holders.clear();
                for dt in t.deps.iter().filter_map(|d| self.task(*d)) {
                    let Some(h) = dt.state().worker() else { continue };
                    match holders.iter_mut().find(|(w, _)| *w == h) {
                        Some((_, bytes)) => *bytes += dt.size.max(1),
                        None => holders.push((h, dt.size.max(1))),
                    }
                }
                let mut best_bytes = 0u64;
                for &(h, bytes) in &holders {
                    let Some(&k) = at.get(&h) else { continue };
                    if !fits(k) {
                        continue;
                    }
                    if best.is_none_or(|b| bytes > best_bytes || bytes == best_bytes && k < b) {
                        best = Some(k);
                        best_bytes = bytes;
                    }
                }
                best = best.or_else(|| (0..room.len()).find(|&k| fits(k)));
            }
            let slot = best.or_else(|| (0..room.len()).map(|k| (next + k) % room.len()).find(|&k| fits(k)));
            let Some(k) = slot else {
                // No worker has room for this many CPUs now; keep it for later.
                skipped.push_back(id);
                if skipped.len() > 64 {
                    break;
                }
                continue;
            };
            next = k + 1;
            let w = room[k].0;
            room[k].1 -= cpus.min(room[k].2);
            if room[k].1 == 0 {
                room.swap_remove(k);
                at.remove(&w);
                self.open.remove(&w);
                if let Some((moved, ..)) = room.get(k) {
                    at.insert(*moved, k);
                }
            }
            let assignment = self.assign(id, w);
            batches.entry(w).or_default().push(assignment);
        }
        while let Some(id) = skipped.pop_back() {
            self.ready.push_front(id);
        }
        let mut batches: Vec<_> = batches.into_iter().collect();
        batches.sort_by_key(|(w, _)| *w);
        for (w, list) in batches {
            let worker = self.workers.get_mut(&w).expect("worker with room exists");
            let conn = worker.conn;
            let mut jobs: Vec<JobId> = list
                .iter()
                .filter(|a| matches!(a.work, Work::Command { .. }))
                .map(|a| a.id.job)
                .filter(|j| !worker.commands.contains(j))
                .collect();
            jobs.sort();
            jobs.dedup();
            for j in jobs {
                worker.commands.push(j);
                let spec = self.jobs[&j].command.clone().expect("command tasks have a command");
                self.commands.push(Command::ToWorker(conn, ToWorker::Command(j, spec)));
            }
            self.commands.push(Command::ToWorker(conn, ToWorker::Compute(list)));
        }
    }

    pub(super) fn assign(&mut self, id: TaskId, w: WorkerId) -> Assignment {
        let job = &self.jobs[&id.job];
        let t = job.tasks.get(id.index).expect("a ready task exists");
        let work = match &t.body {
            TaskBody::Function { func, args } => {
                Work::Function { name: job.functions[*func as usize].clone(), args: args.clone() }
            }
            TaskBody::Command => Work::Command { array_id: job.array_id(id.index) },
        };
        let inputs = t
            .deps
            .iter()
            // Checked by `schedule`; a command task's empty result is "held" by worker 0.
            .map(|d| (*d, self.task(*d).and_then(|dt| dt.state().worker()).unwrap_or(WorkerId(0))))
            .collect();
        let (cpus, needs) = (t.cpus, t.needs);
        self.set_state(id, State::Assigned { worker: w });
        let mut gpus = Vec::new();
        if needs != 0 {
            let worker = self.workers.get_mut(&w).expect("assigned to a live worker");
            let bound = worker.take(&self.needs[needs as usize]);
            gpus = bound.iter().map(|g| worker.info.offer.gpus[usize::from(*g)].clone()).collect();
            if !bound.is_empty() {
                self.bound.insert(id, bound);
            }
        }
        Assignment { id, work, inputs, cpus, gpus }
    }

    /// Folds a finished task's duration into the overall mean and its kind's; returns the kind.
    pub(super) fn record_duration(&mut self, id: TaskId, duration_us: u32) -> u32 {
        let d = f64::from(duration_us);
        self.mean_duration_us = 0.99 * self.mean_duration_us + 0.01 * d;
        let kind = self.kind_of(id);
        if let Some(k) = self.kinds.get_mut(kind as usize) {
            k.mean_us = Some(k.mean_us.map_or(d, |m| 0.9 * m + 0.1 * d));
        }
        kind
    }

    /// The kind of a task: its function's, or its job's command's.
    pub(super) fn kind_of(&self, id: TaskId) -> u32 {
        let Some(job) = self.jobs.get(&id.job) else { return NO_KIND };
        let Some(t) = job.tasks.get(id.index) else { return NO_KIND };
        match &t.body {
            TaskBody::Function { func, .. } => job.func_kinds.get(*func as usize).copied().unwrap_or(NO_KIND),
            TaskBody::Command => job.command_kind,
        }
    }

    pub(super) fn kind_named(&mut self, name: String) -> u32 {
        if let Some(k) = self.kind_index.get(&name) {
            return *k;
        }
        let k = self.kinds.len() as u32;
        self.kind_index.insert(name.clone(), k);
        self.kinds.push(KindStats { name, mean_us: None, counters: KindCounters::default() });
        k
    }

    /// The expected duration of task `id`, in microseconds: its kind's mean, or the default.
    fn expected_us(&self, id: TaskId) -> f64 {
        let default = self.config.default_duration.as_micros() as f64;
        self.kinds.get(self.kind_of(id) as usize).and_then(|k| k.mean_us).unwrap_or(default)
    }
}
