//! The task graph: jobs, their tasks, and the states a task goes through.
//!
//! A task's [`State`] carries what is only meaningful in that state (the worker it is assigned
//! to, the worker holding its result, its missing inputs), and every transition goes through
//! [`Scheduler::set_state`], which also keeps the job's counts and the per-worker indexes
//! (`Worker::running`, `Worker::holds`) in step. This module owns the transitions that workers
//! report (finished, failed, input missing), the dependency bookkeeping, and what happens to
//! results: released when nobody needs them, recomputed when lost and still wanted, forgotten with
//! their job.
//!
//! Tasks are reached only through the accessors of [`Tasks`]; in tests each access is counted per
//! thread (`visits`), so a test can show that an operation touches only the tasks it should.

use crate::protocol::{Counts, ErrorKind, Finished, JobId, TaskBody, TaskError, TaskId, ToWorker, WorkerId};

use super::{Command, ConnId, Record, Scheduler};

/// Where a task is in its life. Each variant holds what is only meaningful in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// Some inputs are not available yet: `missing` counts them.
    Waiting { missing: u32 },
    /// Every input is available; the task is in `Scheduler::ready` (or about to be).
    Ready,
    /// Sent to `worker`, which runs it or has it queued.
    Assigned { worker: WorkerId },
    /// Done. Its result is on `holder`, unless that is `None`: released, lost, or a command
    /// task's, which leaves no result.
    Finished { holder: Option<WorkerId> },
    /// Failed for good (see the job's errors).
    Failed,
}

impl State {
    /// The worker running the task, or holding its result.
    pub(super) fn worker(self) -> Option<WorkerId> {
        match self {
            State::Assigned { worker } => Some(worker),
            State::Finished { holder } => holder,
            State::Waiting { .. } | State::Ready | State::Failed => None,
        }
    }
}

#[derive(Debug)]
pub(super) struct Task {
    /// Changed only by [`Scheduler::set_state`].
    state: State,
    pub(super) attempts: u8,
    pub(super) keep: bool,
    pub(super) cpus: u16,
    /// What else it needs: an index into `Scheduler::needs` (0: nothing).
    pub(super) needs: u32,
    pub(super) size: u64,
    pub(super) body: TaskBody,
    pub(super) deps: Box<[TaskId]>,
    pub(super) dependents: Vec<TaskId>,
}

impl Task {
    pub(super) fn new(body: TaskBody, deps: Box<[TaskId]>, keep: bool, cpus: u16, needs: u32) -> Task {
        Task {
            state: State::Waiting { missing: 0 },
            attempts: 0,
            keep,
            cpus,
            needs,
            size: 0,
            body,
            deps,
            dependents: Vec::new(),
        }
    }

    pub(super) fn state(&self) -> State {
        self.state
    }
}

/// A job's tasks, by index. Every access is counted in tests (see `visits`).
#[derive(Debug)]
pub(super) struct Tasks(Vec<Task>);

impl Tasks {
    pub(super) fn new(tasks: Vec<Task>) -> Tasks {
        Tasks(tasks)
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn get(&self, index: u32) -> Option<&Task> {
        visit();
        self.0.get(index as usize)
    }

    pub(super) fn get_mut(&mut self, index: u32) -> Option<&mut Task> {
        visit();
        self.0.get_mut(index as usize)
    }

    /// Every task with its index (each one counts as a visit).
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &Task)> + '_ {
        self.0.iter().enumerate().map(|(i, t)| {
            visit();
            (i as u32, t)
        })
    }

    /// The tasks without counting visits, for the consistency check.
    #[cfg(test)]
    pub(super) fn unvisited(&self) -> &[Task] {
        &self.0
    }
}

#[cfg(test)]
thread_local! {
    static VISITS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
fn visit() {
    VISITS.with(|v| v.set(v.get() + 1));
}

#[cfg(not(test))]
#[inline(always)]
fn visit() {}

/// How many task accesses this thread has made so far (tests only).
#[cfg(test)]
pub(super) fn visits() -> u64 {
    VISITS.with(|v| v.get())
}

#[derive(Debug)]
pub(super) struct Job {
    pub(super) spec_name: String,
    pub(super) functions: Vec<String>,
    pub(super) command: Option<crate::protocol::CommandSpec>,
    pub(super) array: Option<Vec<(u32, u32)>>,
    pub(super) tasks: Tasks,
    pub(super) counts: Counts,
    /// Why each failed task failed, by task index (looked up per task by `Ended` pages).
    pub(super) errors: rustc_hash::FxHashMap<u32, TaskError>,
    pub(super) max_attempts: u8,
    pub(super) owner: ConnId,
    pub(super) release_on_disconnect: bool,
    pub(super) release_when_done: bool,
    pub(super) waiters: Vec<(ConnId, u64)>,
    /// Other jobs whose tasks depend on this one's.
    pub(super) referenced_by: Vec<JobId>,
    /// Jobs this one depends on.
    pub(super) references: Vec<JobId>,
    /// The kind (index into `Scheduler::kinds`) of each function the job names, and of its command.
    pub(super) func_kinds: Vec<u32>,
    pub(super) command_kind: u32,
    /// The needs of all its tasks, when they all need the same (an array's always do).
    pub(super) uniform_needs: Option<u32>,
    /// Whether it and its tasks' outcomes are journalled (see `journal.rs`).
    pub(super) journalled: bool,
    /// The indices of its tasks in the order they ended, once a client asked
    /// ([`Request::Ended`](crate::protocol::Request::Ended)); `None` before: nothing is spent
    /// on jobs nobody follows. A task whose result was lost and recomputed is listed again.
    pub(super) ended: Option<Vec<u32>>,
}

impl Job {
    pub(super) fn done(&self) -> bool {
        self.counts.finished + self.counts.failed == self.counts.total
    }

    /// The array index of task `index`, for command arrays.
    pub(super) fn array_id(&self, index: u32) -> u32 {
        let mut i = index;
        for &(a, b) in self.array.as_deref().unwrap_or(&[]) {
            let n = b - a + 1;
            if i < n {
                return a + i;
            }
            i -= n;
        }
        index
    }

    /// The task whose array index is `id` (for command arrays; else the task of index `id`).
    pub(super) fn task_of(&self, id: u32) -> Option<u32> {
        let Some(ranges) = self.array.as_deref() else {
            return ((id as usize) < self.tasks.len()).then_some(id);
        };
        let mut before = 0;
        for &(a, b) in ranges {
            if (a..=b).contains(&id) {
                return Some(before + id - a);
            }
            before += b - a + 1;
        }
        None
    }
}

impl State {
    /// Whether a task in this state has ended: finished or failed for good.
    pub(super) fn ended(self) -> bool {
        matches!(self, State::Finished { .. } | State::Failed)
    }
}

/// The count of a job's that a task in `state` is part of.
pub(super) fn count_of(c: &mut Counts, state: State) -> &mut u32 {
    match state {
        State::Waiting { .. } | State::Ready => &mut c.waiting,
        State::Assigned { .. } => &mut c.running,
        State::Finished { .. } => &mut c.finished,
        State::Failed => &mut c.failed,
    }
}

impl Scheduler {
    pub(super) fn task(&self, id: TaskId) -> Option<&Task> {
        self.jobs.get(&id.job)?.tasks.get(id.index)
    }

    pub(super) fn task_mut(&mut self, id: TaskId) -> Option<&mut Task> {
        self.jobs.get_mut(&id.job)?.tasks.get_mut(id.index)
    }

    /// Moves a task to another state: the one place where states change. Keeps the job's counts,
    /// and the indexes and CPU use of the worker it leaves or joins (a worker already gone is
    /// skipped).
    pub(super) fn set_state(&mut self, id: TaskId, to: State) {
        let now = self.now;
        let job = self.jobs.get_mut(&id.job).expect("task's job exists");
        let t = job.tasks.get_mut(id.index).expect("task exists");
        let from = std::mem::replace(&mut t.state, to);
        let (cpus, needs) = (u32::from(t.cpus), t.needs);
        *count_of(&mut job.counts, from) -= 1;
        *count_of(&mut job.counts, to) += 1;
        if let Some(order) = &mut job.ended {
            if to.ended() && !from.ended() {
                order.push(id.index);
            }
        }
        match from {
            State::Assigned { worker } => {
                // What it held of the worker's offer goes back (or went with the worker).
                let gpus = if needs != 0 { self.bound.remove(&id).unwrap_or_default() } else { Vec::new() };
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.unassign(id, cpus, now);
                    self.open.insert(worker);
                    if needs != 0 {
                        w.give(&self.needs[needs as usize], &gpus);
                    }
                }
            }
            State::Finished { holder: Some(h) } => {
                if let Some(w) = self.workers.get_mut(&h) {
                    w.holds.remove(&id);
                }
            }
            _ => {}
        }
        match to {
            State::Assigned { worker } => {
                self.workers.get_mut(&worker).expect("tasks are assigned to live workers").assign(id, cpus);
            }
            State::Finished { holder: Some(h) } => {
                self.workers.get_mut(&h).expect("results are held by live workers").holds.insert(id);
            }
            _ => {}
        }
    }

    pub(super) fn on_finished(&mut self, w: WorkerId, list: Vec<Finished>) {
        let mut stale = Vec::new();
        let mut done_jobs = Vec::new();
        for f in list {
            if !self.reported_by(f.id, w) {
                stale.push(f.id);
                continue;
            }
            let task = self.task_mut(f.id).expect("reported_by found it");
            task.size = f.size;
            // A command task leaves no result behind: nothing to hold.
            let holds = !matches!(task.body, TaskBody::Command);
            let kind = self.record_duration(f.id, f.duration_us);
            self.task_ended(kind, w, f.duration_us, true);
            if let Some(worker) = self.workers.get_mut(&w) {
                worker.finished += 1;
            }
            self.set_state(f.id, State::Finished { holder: holds.then_some(w) });
            if self.jobs[&f.id.job].journalled {
                self.journal_finished(f.id);
            }
            self.after_finish(f.id);
            if self.jobs[&f.id.job].done() {
                done_jobs.push(f.id.job);
            }
        }
        if !stale.is_empty() {
            if let Some(worker) = self.workers.get(&w) {
                self.commands.push(Command::ToWorker(worker.conn, ToWorker::Release(stale)));
            }
        }
        done_jobs.dedup();
        for j in done_jobs {
            self.on_job_done(j);
        }
    }

    /// A task just finished: wake its dependents, release inputs nobody needs any more.
    pub(super) fn after_finish(&mut self, id: TaskId) {
        let (dependents, deps) = {
            let t = self.task(id).expect("finished task exists");
            (t.dependents.clone(), t.deps.clone())
        };
        for d in dependents {
            let Some(dt) = self.task_mut(d) else { continue };
            let now_ready = match &mut dt.state {
                State::Waiting { missing } => {
                    *missing -= 1;
                    *missing == 0
                }
                _ => false,
            };
            if now_ready {
                self.set_state(d, State::Ready);
                self.ready.push_front(d);
            }
        }
        for dep in deps.iter() {
            self.maybe_release(*dep);
        }
        self.maybe_release(id);
    }

    /// Releases a finished task's result when no one needs it.
    fn maybe_release(&mut self, id: TaskId) {
        let Some(t) = self.task(id) else { return };
        let State::Finished { holder: Some(h) } = t.state else { return };
        if t.keep || self.needed_by_dependents(t) {
            return;
        }
        self.set_state(id, State::Finished { holder: None });
        if self.workers.contains_key(&h) {
            self.releases.entry(h).or_default().push(id);
        }
    }

    /// Whether `w` may report the outcome of task `id`: it is assigned to `w`, or it is ready,
    /// having ended on a worker that lost its scheduler (see `journal.rs`), and is assigned to
    /// `w` now.
    fn reported_by(&mut self, id: TaskId, w: WorkerId) -> bool {
        match self.task(id).map(Task::state) {
            Some(State::Ready) => {
                let _ = self.assign(id, w);
                true
            }
            Some(s) => s == State::Assigned { worker: w },
            None => false,
        }
    }

    pub(super) fn on_failed(&mut self, w: WorkerId, id: TaskId, err: TaskError) {
        if !self.reported_by(id, w) {
            return;
        }
        tracing::debug!(task = %id, worker = %w, error = %err, "task failed");
        self.task_ended(self.kind_of(id), w, 0, false);
        self.task_failed_event(id, Some(w), &err);
        self.fail(id, err);
    }

    /// Fails a task and, transitively, every task that depends on it.
    pub(super) fn fail(&mut self, id: TaskId, err: TaskError) {
        let mut stack = vec![(id, err)];
        let mut done_jobs = Vec::new();
        while let Some((t, err)) = stack.pop() {
            let Some(task) = self.task(t) else { continue };
            if matches!(task.state, State::Failed | State::Finished { .. }) {
                continue;
            }
            let dependents = task.dependents.clone();
            let deps = task.deps.clone();
            // An assigned task's worker is told nothing: it reported the failure, or it is gone.
            self.set_state(t, State::Failed);
            // Its inputs may be needed by nobody now.
            for dep in deps.iter() {
                self.maybe_release(*dep);
            }
            if self.jobs[&t.job].journalled {
                self.journal_failed(t, &err);
            }
            let job = self.jobs.get_mut(&t.job).expect("task's job exists");
            job.errors.insert(t.index, err.clone());
            if job.done() {
                done_jobs.push(t.job);
            }
            for d in dependents {
                let message = err.message.clone();
                stack.push((d, TaskError { kind: ErrorKind::DependencyFailed(t), message }));
            }
        }
        done_jobs.sort();
        done_jobs.dedup();
        for j in done_jobs {
            self.on_job_done(j);
        }
    }

    pub(super) fn on_input_missing(&mut self, w: WorkerId, id: TaskId, input: TaskId) {
        let Some(task) = self.task(id) else { return };
        if task.state != (State::Assigned { worker: w }) {
            return;
        }
        tracing::info!(task = %id, input = %input, worker = %w, "input missing; recomputing it");
        // `refresh` below counts what is missing.
        self.set_state(id, State::Waiting { missing: 0 });
        self.lose_results(&[input]);
        self.refresh(id);
    }

    /// Results that are gone (their holder died or lost them): recompute those still needed.
    pub(super) fn lose_results(&mut self, ids: &[TaskId]) {
        let mut needed = Vec::new();
        for &id in ids {
            let Some(t) = self.task(id) else { continue };
            let State::Finished { holder } = t.state else { continue };
            if holder.is_some() {
                self.set_state(id, State::Finished { holder: None });
            }
            if self.wanted(id) {
                needed.push(id);
            }
        }
        for id in needed {
            self.recompute(id);
        }
    }

    /// Brings a finished task whose result is gone back to `Waiting`, with what it needs.
    pub(super) fn recompute(&mut self, id: TaskId) {
        if self.available(id) || self.task(id).is_none_or(|t| !matches!(t.state, State::Finished { .. })) {
            return;
        }
        self.set_state(id, State::Waiting { missing: 0 });
        let (deps, dependents) = {
            let t = self.task(id).expect("exists");
            (t.deps.clone(), t.dependents.clone())
        };
        for dep in deps.iter() {
            // An input released earlier must be computed again too.
            self.recompute(*dep);
        }
        self.refresh(id);
        for d in dependents {
            if matches!(self.task(d).map(|t| t.state), Some(State::Waiting { .. } | State::Ready)) {
                self.refresh(d);
            }
        }
    }

    /// Recounts a waiting or ready task's missing inputs and queues it when none are.
    pub(super) fn refresh(&mut self, id: TaskId) {
        let t = self.task(id).expect("exists");
        let missing = t.deps.iter().filter(|d| !self.available(**d)).count() as u32;
        match (t.state, missing) {
            (State::Waiting { .. }, 0) => {
                self.set_state(id, State::Ready);
                self.ready.push_back(id);
            }
            (State::Waiting { .. } | State::Ready, m) if m > 0 => self.set_state(id, State::Waiting { missing: m }),
            _ => {}
        }
    }

    /// Queues a new task without inputs.
    pub(super) fn queue_new(&mut self, id: TaskId) {
        self.set_state(id, State::Ready);
        self.ready.push_back(id);
    }

    /// Whether a finished task's result is still wanted: kept for a client, or an input of a task to run.
    pub(super) fn wanted(&self, id: TaskId) -> bool {
        let Some(t) = self.task(id) else { return false };
        t.keep && !self.jobs[&id.job].release_when_done || self.needed_by_dependents(t)
    }

    /// Whether a dependent still has to run (finished and failed ones need nothing more).
    fn needed_by_dependents(&self, t: &Task) -> bool {
        t.dependents
            .iter()
            .any(|d| self.task(*d).is_some_and(|dt| !matches!(dt.state, State::Finished { .. } | State::Failed)))
    }

    /// Whether a task's result can be had now (a command task's empty result always can).
    pub(super) fn available(&self, id: TaskId) -> bool {
        self.task(id).is_some_and(|t| match t.state {
            State::Finished { holder } => holder.is_some() || matches!(t.body, TaskBody::Command),
            _ => false,
        })
    }

    /// Releases a job once done and referenced by no other (now, or when that happens).
    pub(super) fn request_release(&mut self, job: JobId) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        j.release_when_done = true;
        if j.done() && j.referenced_by.is_empty() {
            self.release_job(job);
        }
    }

    /// Forgets a finished job and tells its workers to drop its results.
    pub(super) fn release_job(&mut self, job: JobId) {
        let Some(j) = self.jobs.remove(&job) else { return };
        if j.journalled {
            self.journal(Record::Released { job });
        }
        // A done job has no assigned task: the workers it touches hold its results.
        let held: Vec<(WorkerId, TaskId)> =
            j.tasks.iter().filter_map(|(index, t)| t.state.worker().map(|w| (w, TaskId { job, index }))).collect();
        let mut holders: Vec<WorkerId> = held.iter().map(|(w, _)| *w).collect();
        holders.sort();
        holders.dedup();
        for h in holders {
            if let Some(w) = self.workers.get(&h) {
                self.commands.push(Command::ToWorker(w.conn, ToWorker::ReleaseJob(job)));
            }
        }
        for (h, id) in held {
            if let Some(w) = self.workers.get_mut(&h) {
                w.holds.remove(&id);
            }
        }
        for r in j.references {
            if let Some(rj) = self.jobs.get_mut(&r) {
                rj.referenced_by.retain(|x| *x != job);
                if rj.release_when_done && rj.done() && rj.referenced_by.is_empty() {
                    self.release_job(r);
                }
            }
        }
        tracing::debug!(job = %job, "job released");
    }
}
