//! Placement: which ready task goes to which worker, and the measured durations it relies on.
//!
//! [`Scheduler::schedule`] runs at the end of every event: it hands ready tasks to workers with
//! room (a queue depth per slot that deepens for short tasks), preferring the worker holding
//! most of a task's input bytes and skipping workers whose lifetime ends before the task is
//! expected to. The expected durations come from [`KindStats`], one per kind of task (a function,
//! or a command job's name).

use std::collections::VecDeque;
use std::ops::Bound;

use rustc_hash::FxHashMap;
use std::time::{Duration, Instant};

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
/// How many workers in turn a task whose input holders are busy looks at for a free slot.
const LOOKAHEAD: usize = 32;
/// Tasks shorter than this on average are "short": queueing many of them hides round trips.
pub(super) const SHORT_TASK_US: f64 = 2_000.0;

/// The workers with room that one [`Scheduler::schedule`] call has looked at: taken from
/// `Scheduler::open` in id order as they are needed, or directly when they hold a task's inputs.
struct Room {
    /// (worker, room left in CPUs, slots).
    list: Vec<(WorkerId, u32, u32)>,
    /// Where each worker of `list` is (full ones are swapped out).
    at: FxHashMap<WorkerId, usize>,
    /// The last open worker taken in id order.
    cursor: Option<WorkerId>,
    /// Every open worker has been looked at.
    exhausted: bool,
    /// Workers found without room: they leave `open` when the call ends.
    closed: Vec<WorkerId>,
    depth: u32,
    now: Instant,
}

impl Room {
    fn new(depth: u32, now: Instant) -> Room {
        Room {
            list: Vec::new(),
            at: FxHashMap::default(),
            cursor: None,
            exhausted: false,
            closed: Vec::new(),
            depth,
            now,
        }
    }

    /// The room (CPUs) and slots of worker `id`, if it may take a task now.
    fn free(&self, s: &Scheduler, id: WorkerId) -> Option<(u32, u32)> {
        let w = s.workers.get(&id)?;
        let room = (w.slots() * self.depth).saturating_sub(w.used);
        (!w.retiring && w.ends_at.is_none_or(|e| e > self.now) && room > 0).then_some((room, w.slots()))
    }

    fn add(&mut self, id: WorkerId, room: u32, slots: u32) -> usize {
        self.at.insert(id, self.list.len());
        self.list.push((id, room, slots));
        self.list.len() - 1
    }

    /// Takes the next open worker with room, in id order; `false` when there is none left.
    fn pull(&mut self, s: &Scheduler) -> bool {
        while !self.exhausted {
            let next = match self.cursor {
                None => s.open.iter().next(),
                Some(c) => s.open.range((Bound::Excluded(c), Bound::Unbounded)).next(),
            };
            let Some(&id) = next else {
                self.exhausted = true;
                break;
            };
            self.cursor = Some(id);
            if self.at.contains_key(&id) {
                continue;
            }
            match self.free(s, id) {
                Some((room, slots)) => {
                    self.add(id, room, slots);
                    return true;
                }
                None => self.closed.push(id),
            }
        }
        false
    }

    /// Where worker `id` is in `list`, taking it in if it is open and has room.
    fn find(&mut self, s: &Scheduler, id: WorkerId) -> Option<usize> {
        if let Some(&k) = self.at.get(&id) {
            return Some(k);
        }
        if !s.open.contains(&id) {
            return None;
        }
        let (room, slots) = self.free(s, id)?;
        Some(self.add(id, room, slots))
    }

    /// A task of `cpus` CPUs goes to `list[k]`; a worker left without room leaves the list.
    fn take(&mut self, k: usize, cpus: u32) {
        let (w, room, slots) = &mut self.list[k];
        *room -= cpus.min(*slots);
        if *room == 0 {
            let w = *w;
            self.list.swap_remove(k);
            self.at.remove(&w);
            self.closed.push(w);
            if let Some((moved, ..)) = self.list.get(k) {
                self.at.insert(*moved, k);
            }
        }
    }
}

impl Scheduler {
    /// Hands ready tasks to workers with room, preferring the worker that holds the most input bytes.
    ///
    /// Costs the tasks placed and the workers it looks at, not a scan of every worker: workers
    /// with room come from `Scheduler::open` in id order as they are needed (see [`Room`]), and
    /// the holders of a task's inputs from its inputs. At 10,000 workers, building a list of all
    /// workers on every event was most of the scheduler's time.
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
        let mut room = Room::new(depth, now);
        let mut batches: FxHashMap<WorkerId, Vec<Assignment>> = FxHashMap::default();
        let mut next = 0usize;
        let mut skipped = VecDeque::new();
        let mut holders: Vec<(WorkerId, u64)> = Vec::new();
        while !room.list.is_empty() || room.pull(self) {
            let Some(id) = self.ready.pop_front() else { break };
            if self.adopting.is_some()
                && self.task(id).is_some_and(|t| t.state() == State::Ready)
                && self.park_if_adopting(id)
            {
                continue;
            }
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
                let worker = &self.workers[w];
                worker.ends_at.is_none_or(|e| {
                    let ahead = f64::from(1 + worker.assigned() / worker.slots());
                    now + Duration::from_micros((self.expected_us(id) * ahead) as u64) <= e
                })
            };
            let fits = |room: &Room, k: usize| {
                let (w, r, slots) = room.list[k];
                r >= cpus.min(slots) && lives(&w) && has(&w)
            };
            // Whether it would start at once on `list[k]` (a free slot), not wait in its queue.
            let starts = |room: &Room, k: usize| {
                let (_, r, slots) = room.list[k];
                r >= cpus.min(slots) + slots * (depth - 1)
            };
            let mut best: Option<usize> = None;
            if !t.deps.is_empty() {
                // The holders of its inputs and the bytes each holds; among those with room, one
                // where it starts at once, then the one holding the most, then the first looked at.
                holders.clear();
                for dt in t.deps.iter().filter_map(|d| self.task(*d)) {
                    let Some(h) = dt.state().worker() else { continue };
                    match holders.iter_mut().find(|(w, _)| *w == h) {
                        Some((_, bytes)) => *bytes += dt.size.max(1),
                        None => holders.push((h, dt.size.max(1))),
                    }
                }
                let mut chosen = None;
                for &(h, bytes) in &holders {
                    let Some(k) = room.find(self, h) else { continue };
                    if fits(&room, k) {
                        let key = (starts(&room, k), bytes, std::cmp::Reverse(k));
                        if chosen.is_none_or(|c| key > c) {
                            chosen = Some(key);
                        }
                    }
                }
                best = chosen.map(|(_, _, std::cmp::Reverse(k))| k);
                if !chosen.is_some_and(|(now, ..)| now) {
                    // Its holders would queue it behind their tasks: rather a worker where it
                    // starts at once and fetches its inputs, if one is near in turn.
                    let ok = |room: &Room, k: usize| fits(room, k) && starts(room, k);
                    let n = room.list.len();
                    let mut found = (0..n.min(LOOKAHEAD)).map(|k| (next + k) % n).find(|&k| ok(&room, k));
                    for _ in 0..LOOKAHEAD {
                        if found.is_some() || !room.pull(self) {
                            break;
                        }
                        found = Some(room.list.len() - 1).filter(|&k| ok(&room, k));
                    }
                    best = found.or(best);
                }
            }
            // Else the next worker in turn that fits, looking at another open worker before
            // coming round again.
            let slot = best.or_else(|| {
                if next >= room.list.len() {
                    room.pull(self);
                }
                let n = room.list.len();
                if let Some(k) = (0..n).map(|k| (next + k) % n).find(|&k| fits(&room, k)) {
                    return Some(k);
                }
                while room.pull(self) {
                    if fits(&room, room.list.len() - 1) {
                        return Some(room.list.len() - 1);
                    }
                }
                None
            });
            let Some(k) = slot else {
                // No worker has room for this many CPUs now; keep it for later.
                skipped.push_back(id);
                if skipped.len() > 64 {
                    break;
                }
                continue;
            };
            next = k + 1;
            let w = room.list[k].0;
            room.take(k, cpus);
            let assignment = self.assign(id, w);
            batches.entry(w).or_default().push(assignment);
        }
        for w in room.closed {
            self.open.remove(&w);
        }
        while let Some(id) = skipped.pop_back() {
            self.ready.push_front(id);
        }
        let mut batches: Vec<_> = batches.into_iter().collect();
        batches.sort_by_key(|(w, _)| *w);
        for (w, list) in batches {
            let peers = self.peers_to_tell(w, &list);
            let worker = self.workers.get_mut(&w).expect("worker with room exists");
            let conn = worker.conn;
            if !peers.is_empty() {
                // Before the tasks, on the same connection: the worker knows them when it fetches.
                self.commands.push(Command::ToWorker(conn, ToWorker::Peers(peers)));
            }
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

    /// The data addresses of the holders of `list`'s inputs that worker `w` has not been sent yet,
    /// marked as sent. A worker learns only the peers it fetches from, each once, so the cost is
    /// the inputs placed, not the workers squared.
    fn peers_to_tell(&mut self, w: WorkerId, list: &[Assignment]) -> Vec<(WorkerId, String)> {
        let Some(worker) = self.workers.get_mut(&w) else { return Vec::new() };
        // Worker 0 "holds" command tasks' empty results: there is nothing to fetch.
        let new: Vec<WorkerId> = list
            .iter()
            .flat_map(|a| a.inputs.iter().map(|(_, h)| *h))
            .filter(|h| *h != w && h.0 != 0)
            .filter(|h| worker.told.insert(*h))
            .collect();
        // Inputs are placed only when available, so their holders are live.
        new.into_iter().filter_map(|h| self.workers.get(&h).map(|p| (h, p.info.data_address.clone()))).collect()
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
