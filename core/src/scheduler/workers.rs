//! Workers and their lifecycle: registration, heartbeats, lifetimes, and loss.
//!
//! Each [`Worker`] keeps two indexes, the tasks assigned to it (`running`) and the results it
//! holds (`holds`), which [`Scheduler::set_state`] keeps in step with the tasks' states. They make
//! losing a worker cost the tasks on it, not a scan of every task the scheduler has.

use rustc_hash::FxHashSet;
use std::time::{Duration, Instant};

use crate::protocol::{
    ErrorKind, EventKind, JobId, Needs, TaskError, TaskId, ToWorker, WorkerId, WorkerInfo, WorkerLoad,
};

use super::graph::State;
use super::pace::{silence_allowed, Pace};
use super::{Command, ConnId, Notice, Peer, Record, Scheduler};

#[derive(Debug)]
pub(super) struct Worker {
    pub(super) conn: ConnId,
    pub(super) info: WorkerInfo,
    /// CPUs of assigned tasks (running or queued on the worker).
    pub(super) used: u32,
    /// The tasks assigned to it (running or queued there): the `Assigned` tasks naming it.
    pub(super) running: FxHashSet<TaskId>,
    /// The results it holds: the `Finished` tasks naming it as their holder.
    pub(super) holds: FxHashSet<TaskId>,
    /// The peers whose data address it has been sent (with the first task that needed an input
    /// of theirs, see `Scheduler::peers_to_tell`): only those it fetches from, not every worker.
    pub(super) told: FxHashSet<WorkerId>,
    pub(super) last_seen: Instant,
    /// The heartbeat interval it was told and the one it keeps (`pace.rs`).
    pub(super) pace: Pace,
    pub(super) retiring: bool,
    /// Jobs whose command this worker has been sent.
    pub(super) commands: Vec<JobId>,
    /// When it must be gone (from its lifetime).
    pub(super) ends_at: Option<Instant>,
    /// Since when it has had no task (`None` while it has one).
    pub(super) idle_since: Option<Instant>,
    /// While retiring: the worker taking over its results, until it says it has them.
    pub(super) handover: Option<WorkerId>,
    /// While retiring: its results have been offered to another worker (once is enough).
    pub(super) handed_over: bool,
    /// It has been told to stop.
    pub(super) stop_sent: bool,
    /// What its assigned tasks hold of its offer.
    pub(super) held: Held,
    /// Tasks it finished.
    pub(super) finished: u64,
    /// What its process used at its last heartbeat.
    pub(super) load: WorkerLoad,
}

/// What a worker's assigned tasks hold of its [`crate::protocol::Offer`].
#[derive(Debug, Default)]
pub(super) struct Held {
    /// Per GPU of the offer, whether a task holds it.
    pub(super) gpus: Vec<bool>,
    pub(super) memory: u64,
    /// Per named resource of the offer, in its order.
    pub(super) named: Vec<u32>,
}

impl Worker {
    pub(super) fn slots(&self) -> u32 {
        u32::from(self.info.slots).max(1)
    }

    /// The CPUs a task occupies on this worker: one wider than the worker takes all of it.
    pub(super) fn charge(&self, cpus: u32) -> u32 {
        cpus.min(self.slots())
    }

    /// How many tasks are assigned to it.
    pub(super) fn assigned(&self) -> u32 {
        self.running.len() as u32
    }

    /// How many results it holds.
    pub(super) fn holding(&self) -> u32 {
        self.holds.len() as u32
    }

    /// Task `id`, of `cpus` CPUs, is now assigned to it (only [`Scheduler::set_state`] calls this).
    pub(super) fn assign(&mut self, id: TaskId, cpus: u32) {
        self.used += self.charge(cpus);
        self.running.insert(id);
        self.idle_since = None;
    }

    /// Whether `needs` is free on this worker now.
    pub(super) fn has_free(&self, needs: &Needs) -> bool {
        let offer = &self.info.offer;
        let free_gpus = self.held.gpus.iter().filter(|h| !**h).count();
        usize::from(needs.gpus) <= free_gpus
            && needs.pool.as_ref().is_none_or(|p| offer.pool.as_ref() == Some(p))
            && (needs.memory == 0 || self.held.memory + needs.memory <= offer.memory)
            && needs.named.iter().all(|(name, n)| {
                offer
                    .named
                    .iter()
                    .position(|(k, _)| k == name)
                    .is_some_and(|i| self.held.named[i] + n <= offer.named[i].1)
            })
    }

    /// Takes `needs` (free, see [`Worker::has_free`]); returns the GPUs bound, as indices of its offer.
    pub(super) fn take(&mut self, needs: &Needs) -> Vec<u16> {
        let mut bound = Vec::with_capacity(usize::from(needs.gpus));
        for (i, held) in self.held.gpus.iter_mut().enumerate() {
            if bound.len() == usize::from(needs.gpus) {
                break;
            }
            if !*held {
                *held = true;
                bound.push(i as u16);
            }
        }
        self.held.memory += needs.memory;
        for (name, n) in &needs.named {
            if let Some(i) = self.info.offer.named.iter().position(|(k, _)| k == name) {
                self.held.named[i] += n;
            }
        }
        bound
    }

    /// Gives back what a task took.
    pub(super) fn give(&mut self, needs: &Needs, gpus: &[u16]) {
        for g in gpus {
            if let Some(h) = self.held.gpus.get_mut(usize::from(*g)) {
                *h = false;
            }
        }
        self.held.memory = self.held.memory.saturating_sub(needs.memory);
        for (name, n) in &needs.named {
            if let Some(i) = self.info.offer.named.iter().position(|(k, _)| k == name) {
                self.held.named[i] = self.held.named[i].saturating_sub(*n);
            }
        }
    }

    /// Task `id` is no longer assigned to it (only [`Scheduler::set_state`] calls this).
    pub(super) fn unassign(&mut self, id: TaskId, cpus: u32, now: Option<Instant>) {
        self.used -= self.charge(cpus);
        self.running.remove(&id);
        if self.running.is_empty() {
            self.idle_since = now;
        }
    }
}

impl Scheduler {
    pub(super) fn on_register_worker(&mut self, now: Instant, conn: ConnId, mut info: WorkerInfo) {
        // A worker coming back keeps its id where it is free (its peers and results refer to it).
        let resume = info.resume.take();
        let id = match &resume {
            Some(r) if r.worker.0 > 0 && r.worker.0 < self.next_worker && !self.workers.contains_key(&r.worker) => {
                r.worker
            }
            _ => {
                self.next_worker += 1;
                WorkerId(self.next_worker - 1)
            }
        };
        self.journal(Record::WorkerJoined { worker: id });
        tracing::info!(worker = %id, host = %info.host, pid = info.pid, launch = ?info.launch, slots = info.slots, "worker registered");
        self.notify(Notice::WorkerJoined { worker: id, launch: info.launch.clone() });
        self.observed.workers_joined += 1;
        let (host, slots, launch) = (info.host.clone(), info.slots, info.launch.clone());
        self.event(EventKind::WorkerJoined { worker: id, host, slots, launch });
        // No peer list is broadcast: a worker learns a peer's address with the first task that
        // needs an input it holds (`Scheduler::peers_to_tell`), so registering costs O(1), not
        // a message to every worker (50M entries for 10,000 workers joining). A returning
        // worker's id may come with another address: whoever was told the old one is told again.
        if resume.as_ref().is_some_and(|r| r.worker == id) {
            for w in self.workers.values_mut() {
                w.told.remove(&id);
            }
        }
        self.conns.insert(conn, Peer::Worker(id));
        let ends_at = info.lifetime_ms.map(|ms| now + Duration::from_millis(ms));
        let heartbeat = self.heartbeat_for(self.workers.len() + 1);
        let pace = Pace::new(heartbeat);
        let silence = now + silence_allowed(&self.config, &pace);
        let due = ends_at.into_iter().chain([silence]).chain(self.wake_at).min();
        self.wake_at = due;
        let held = Held { gpus: vec![false; info.offer.gpus.len()], memory: 0, named: vec![0; info.offer.named.len()] };
        let heartbeat_ms = heartbeat.as_millis() as u64;
        self.commands.push(Command::ToWorker(conn, ToWorker::Welcome { id, heartbeat_ms }));
        self.workers.insert(
            id,
            Worker {
                conn,
                info,
                used: 0,
                running: FxHashSet::default(),
                holds: FxHashSet::default(),
                told: FxHashSet::default(),
                last_seen: now,
                pace,
                retiring: false,
                commands: Vec::new(),
                ends_at,
                idle_since: Some(now),
                handover: None,
                handed_over: false,
                stop_sent: false,
                held,
                finished: 0,
                load: WorkerLoad::default(),
            },
        );
        self.open.insert(id);
        if let Some(r) = resume {
            self.adopt(id, *r);
        }
    }

    pub(super) fn on_tick(&mut self, now: Instant) {
        // Each worker's own death timeout, stretched with its heartbeat interval.
        let dead: Vec<(WorkerId, Duration)> = self
            .workers
            .iter()
            .map(|(id, w)| (*id, w.last_seen, silence_allowed(&self.config, &w.pace)))
            .filter(|(_, seen, allowed)| now.duration_since(*seen) >= *allowed)
            .map(|(id, _, allowed)| (id, allowed))
            .collect();
        for (w, allowed) in dead {
            let conn = self.workers[&w].conn;
            self.conns.remove(&conn);
            self.commands.push(Command::Close(conn));
            self.worker_lost(w, &format!("no heartbeat for {} s", allowed.as_secs_f64()));
        }
        let mut expired: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| !w.retiring && w.ends_at.is_some_and(|e| e <= now))
            .map(|(id, _)| *id)
            .collect();
        expired.sort();
        for w in expired {
            self.retire(w, "its lifetime (its batch job's walltime) is up");
        }
        self.wake_at = self.scan_wake_at();
    }

    /// A worker is gone: re-run what it was running, recompute what only it held. Costs the
    /// tasks on it (its indexes), not a scan of all tasks.
    pub(super) fn worker_lost(&mut self, w: WorkerId, reason: &str) {
        let Some(worker) = self.workers.remove(&w) else { return };
        self.journal(Record::WorkerLeft { worker: w });
        self.notify(Notice::WorkerLeft { worker: w, launch: worker.info.launch.clone(), reason: reason.to_string() });
        self.observed.workers_left += 1;
        self.observed.fetched_by_gone += worker.load.fetched_bytes;
        self.event(EventKind::WorkerLeft { worker: w, reason: reason.to_string() });
        if worker.retiring && !worker.stop_sent {
            self.retiring -= 1;
        }
        // Retiring workers handing their results to this one must find another.
        for other in self.workers.values_mut() {
            if other.handover == Some(w) {
                other.handover = None;
            }
        }
        let who = format!("{w} (pid {} on {}) {reason}", worker.info.pid, worker.info.host);
        if self.shutting_down {
            tracing::info!("worker {who}");
        } else {
            tracing::warn!("worker {who}");
        }
        // Sorted, so that the tasks to re-run are queued in a deterministic order.
        let mut rerun: Vec<TaskId> = worker.running.into_iter().collect();
        rerun.sort();
        let mut lost: Vec<TaskId> = worker.holds.into_iter().collect();
        lost.sort();
        for id in rerun {
            // The worker is gone from `workers`: `set_state` leaves its (dropped) indexes alone.
            let Some(max) = self.jobs.get(&id.job).map(|j| j.max_attempts) else { continue };
            let Some(t) = self.task_mut(id) else { continue };
            if t.state() != (State::Assigned { worker: w }) {
                continue;
            }
            t.attempts = t.attempts.saturating_add(1);
            let n = t.attempts;
            // `refresh` counts what is missing; a failed task does not need it.
            self.set_state(id, State::Waiting { missing: 0 });
            if n >= max {
                let message = format!("the worker running it died {n} times; last: {who}");
                let error = TaskError { kind: ErrorKind::WorkerLost, message };
                self.task_failed_event(id, Some(w), &error);
                self.fail(id, error);
            } else {
                self.refresh(id);
            }
        }
        // Failures above may have ended and released jobs: their tasks are gone, and so is the need.
        lost.retain(|id| self.task(*id).is_some_and(|t| t.state() == (State::Finished { holder: Some(w) })));
        self.lose_results(&lost);
    }
}
