//! Retirement: taking workers out of the cluster without losing work or wanted results.
//!
//! A retiring worker gets no new task. Once it is idle, the results only it holds that are still
//! wanted are offered to another worker (`Replicate`); when that worker answers (`Replicated`) it
//! holds them from then on, and the retiring one is told to stop. A request to retire several
//! workers is all or none ([`Scheduler::check_retire`]).

use crate::protocol::{EventKind, Refusal, RefusalKind, TaskId, ToWorker, WorkerId};

use super::graph::State;
use super::{Command, Scheduler};

impl Scheduler {
    /// Starts retiring worker `w`: it gets no new task and is stopped once idle and its results
    /// are handed over (see `progress_retirements`).
    pub(super) fn retire(&mut self, w: WorkerId, why: &str) {
        let Some(worker) = self.workers.get_mut(&w) else { return };
        if worker.retiring {
            return;
        }
        tracing::info!(worker = %w, "retiring: {why}");
        worker.retiring = true;
        self.retiring += 1;
        self.event(EventKind::WorkerRetiring { worker: w, reason: why.to_string() });
    }

    /// Whether workers `ws` can retire together now: all idle, and their wanted results have
    /// another worker to go to.
    pub(super) fn check_retire(&self, ws: &[WorkerId]) -> Result<(), Refusal> {
        for w in ws {
            match self.workers.get(w) {
                None => return Err(Refusal::new(RefusalKind::NotFound, format!("no worker {w}"))),
                Some(worker) if worker.retiring => {
                    return Err(Refusal::new(RefusalKind::Busy, format!("worker {w} is already retiring")))
                }
                Some(worker) if worker.assigned() > 0 => {
                    return Err(Refusal::new(
                        RefusalKind::Busy,
                        format!("worker {w} is busy ({} tasks)", worker.assigned()),
                    ))
                }
                Some(_) => {}
            }
        }
        let others = self.workers.iter().any(|(id, o)| !o.retiring && !ws.contains(id));
        if !others {
            let held: usize = ws.iter().map(|w| self.wanted_on(*w).len()).sum();
            if held > 0 {
                return Err(Refusal::new(
                    RefusalKind::Busy,
                    format!("they hold {held} results still wanted, and no other worker could take them"),
                ));
            }
        }
        Ok(())
    }

    /// Moves idle retiring workers on: hands their wanted results to another worker, then stops them.
    pub(super) fn progress_retirements(&mut self) {
        let mut idle: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| w.retiring && !w.stop_sent && w.assigned() == 0 && w.handover.is_none())
            .map(|(id, _)| *id)
            .collect();
        idle.sort();
        for w in idle {
            let ids = if self.workers[&w].handed_over { Vec::new() } else { self.wanted_on(w) };
            let target = self
                .workers
                .iter()
                .filter(|(id, o)| **id != w && !o.retiring)
                .min_by_key(|(id, o)| (o.holding(), **id))
                .map(|(id, o)| (*id, o.conn));
            match (ids.is_empty(), target) {
                (false, Some((t, conn))) => {
                    tracing::info!(worker = %w, to = %t, results = ids.len(), "handing results over before retiring");
                    let address = self.workers[&w].info.data_address.clone();
                    self.commands.push(Command::ToWorker(conn, ToWorker::Replicate { from: w, address, ids }));
                    let worker = self.workers.get_mut(&w).expect("listed above");
                    worker.handover = Some(t);
                }
                (empty, _) => {
                    if !empty {
                        tracing::warn!(
                            worker = %w,
                            results = ids.len(),
                            "no other worker to take the results of a retiring worker: they will be recomputed if needed"
                        );
                    }
                    let worker = self.workers.get_mut(&w).expect("listed above");
                    worker.stop_sent = true;
                    self.retiring -= 1;
                    self.commands.push(Command::ToWorker(worker.conn, ToWorker::Stop));
                }
            }
        }
    }

    /// The finished results held by `w` that are still wanted, from its index.
    fn wanted_on(&self, w: WorkerId) -> Vec<TaskId> {
        let Some(worker) = self.workers.get(&w) else { return Vec::new() };
        let mut ids: Vec<TaskId> = worker.holds.iter().copied().filter(|id| self.wanted(*id)).collect();
        ids.sort();
        ids
    }

    /// Worker `to` copied results of retiring worker `from`: they are held by `to` from now on.
    pub(super) fn on_replicated(&mut self, to: WorkerId, from: WorkerId, ids: &[TaskId]) {
        if self.workers.get(&from).is_none_or(|w| w.handover != Some(to)) {
            // A late answer (the retiring worker is gone): `to` holds copies nobody tracks.
            if let Some(worker) = self.workers.get(&to) {
                self.commands.push(Command::ToWorker(worker.conn, ToWorker::Release(ids.to_vec())));
            }
            return;
        }
        let mut moved = 0u32;
        for &id in ids {
            if self.task(id).is_some_and(|t| t.state() == (State::Finished { holder: Some(from) })) {
                self.set_state(id, State::Finished { holder: Some(to) });
                moved += 1;
            }
        }
        let f = self.workers.get_mut(&from).expect("checked above");
        f.handover = None;
        f.handed_over = true;
        tracing::info!(worker = %from, to = %to, results = moved, "results handed over");
    }
}
