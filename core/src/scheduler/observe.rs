//! What the scheduler lets others watch: the cluster's events, the task stream and the counters
//! behind `rdask-jobqueue events`, the dashboard and `/metrics`.
//!
//! Memory is bounded: the newest [`EVENTS_KEPT`] events and [`TASKS_KEPT`] task records are
//! kept, older ones dropped; a reader that fell behind is told how many it missed
//! ([`EventPage::missed`]), never silently given a gap. Counters (per kind, bytes moved) are
//! totals since the scheduler started and are never dropped. Times are milliseconds since the
//! first event the scheduler handled (it never reads the clock).

use std::collections::VecDeque;
use std::time::Instant;

use crate::protocol::{
    ClusterEvent, EventKind, EventPage, KindMetrics, Metrics, TaskError, TaskId, TaskRecord, WorkerId,
    DURATION_BUCKETS_US,
};

use super::Scheduler;

/// Events kept for readers.
pub const EVENTS_KEPT: usize = 10_000;
/// Task records kept for the task stream.
pub const TASKS_KEPT: usize = 5_000;

/// The rings and totals.
#[derive(Debug, Default)]
pub(super) struct Observed {
    started: Option<Instant>,
    events: VecDeque<ClusterEvent>,
    next_event: u64,
    /// Kinds by index, named only when read (no string per task on the hot path).
    tasks: VecDeque<Ended>,
    next_task: u64,
    /// Bytes fetched by workers that left (those still here report their own totals).
    pub(super) fetched_by_gone: u64,
    pub(super) workers_joined: u64,
    pub(super) workers_left: u64,
    pub(super) dashboard: Option<String>,
}

/// A task record as kept: [`TaskRecord`] with its kind's index.
#[derive(Debug)]
struct Ended {
    seq: u64,
    worker: WorkerId,
    kind: u32,
    start_ms: u64,
    end_ms: u64,
    ok: bool,
}

/// Per-kind counters, kept with the kind's measured durations.
#[derive(Debug, Default, Clone)]
pub(super) struct KindCounters {
    pub(super) finished: u64,
    pub(super) failed: u64,
    pub(super) buckets: [u64; DURATION_BUCKETS_US.len()],
    pub(super) sum_us: u64,
}

impl KindCounters {
    pub(super) fn finished(&mut self, duration_us: u32) {
        self.finished += 1;
        let d = u64::from(duration_us);
        self.sum_us += d;
        let b = DURATION_BUCKETS_US.iter().position(|&bound| d <= bound).unwrap_or(DURATION_BUCKETS_US.len() - 1);
        self.buckets[b] += 1;
    }
}

impl Observed {
    fn ms(&mut self, now: Instant) -> u64 {
        let start = *self.started.get_or_insert(now);
        now.saturating_duration_since(start).as_millis().min(u128::from(u64::MAX)) as u64
    }
}

impl Scheduler {
    fn now_ms(&mut self) -> u64 {
        let now = self.now.expect("set by handle");
        self.observed.ms(now)
    }

    /// Records an event.
    pub(super) fn event(&mut self, what: EventKind) {
        let at_ms = self.now_ms();
        let o = &mut self.observed;
        o.next_event += 1;
        o.events.push_back(ClusterEvent { seq: o.next_event, at_ms, what });
        if o.events.len() > EVENTS_KEPT {
            o.events.pop_front();
        }
    }

    /// Records a task of kind `kind` that ended on worker `w` after running `duration_us`.
    pub(super) fn task_ended(&mut self, kind: u32, w: WorkerId, duration_us: u32, ok: bool) {
        let end_ms = self.now_ms();
        // A job without a command has no kind (`NO_KIND`): nothing to count.
        if let Some(k) = self.kinds.get_mut(kind as usize) {
            if ok {
                k.counters.finished(duration_us);
            } else {
                k.counters.failed += 1;
            }
        }
        let o = &mut self.observed;
        o.next_task += 1;
        let start_ms = end_ms.saturating_sub(u64::from(duration_us) / 1000);
        o.tasks.push_back(Ended { seq: o.next_task, worker: w, kind, start_ms, end_ms, ok });
        if o.tasks.len() > TASKS_KEPT {
            o.tasks.pop_front();
        }
    }

    /// Records that task `id` failed on `worker` (not its dependents failing with it).
    pub(super) fn task_failed_event(&mut self, id: TaskId, worker: Option<WorkerId>, error: &TaskError) {
        let Some(job) = self.jobs.get(&id.job) else { return };
        let task = job.array_id(id.index);
        self.event(EventKind::TaskFailed { job: id.job, task, worker, error: error.clone() });
    }

    /// The events after `after`, and how many of those are no longer kept.
    pub(super) fn events_after(&mut self, after: u64) -> EventPage {
        let now_ms = self.now_ms();
        let o = &self.observed;
        let first = o.events.front().map_or(o.next_event + 1, |e| e.seq);
        let missed = first.saturating_sub(after + 1);
        let events = o.events.iter().filter(|e| e.seq > after).cloned().collect();
        EventPage { now_ms, events, missed }
    }

    /// The counters, and the task stream after `tasks_after`.
    pub(super) fn metrics(&mut self, tasks_after: u64) -> Metrics {
        let now_ms = self.now_ms();
        let kinds = self
            .kinds
            .iter()
            .map(|k| KindMetrics {
                kind: k.name.clone(),
                finished: k.counters.finished,
                failed: k.counters.failed,
                duration_buckets: k.counters.buckets.to_vec(),
                duration_sum_us: k.counters.sum_us,
            })
            .collect();
        let here: u64 = self.workers.values().map(|w| w.load.fetched_bytes).sum();
        let o = &self.observed;
        Metrics {
            now_ms,
            kinds,
            fetched_bytes: o.fetched_by_gone + here,
            workers_joined: o.workers_joined,
            workers_left: o.workers_left,
            tasks: o
                .tasks
                .iter()
                .filter(|t| t.seq > tasks_after)
                .map(|t| TaskRecord {
                    seq: t.seq,
                    worker: t.worker,
                    kind: self.kinds.get(t.kind as usize).map(|k| k.name.clone()).unwrap_or_default(),
                    start_ms: t.start_ms,
                    end_ms: t.end_ms,
                    ok: t.ok,
                })
                .collect(),
        }
    }

    pub(super) fn dashboard(&self) -> Option<String> {
        self.observed.dashboard.clone()
    }

    pub(super) fn set_dashboard(&mut self, address: String) {
        self.observed.dashboard = Some(address);
    }
}
