//! What the scheduler remembers across its own death: the journal's records, folding them back
//! into a state, and the adoption of what reconnecting workers still run and hold.
//!
//! With [`Config::journal`](super::Config::journal) the scheduler emits a
//! [`Command::Journal`](super::Command::Journal) record for each change a restart must know:
//! a job submitted (its spec, once: a command array's command and ranges, a graph's function
//! names, arguments and dependencies, as postcard: [`Record::Accepted`]), each of its tasks
//! ending (those that finished in one event together, [`Record::Finished`]; those that failed
//! in one event with the same error together, [`Record::Failed`]), a job released, a worker
//! joining or leaving. What is journalled per task is bounded: its part of the spec, then its index each time it ends;
//! results never are (they live on workers). A graph whose arguments exceed
//! [`MAX_JOURNALLED_ARGS`] is not journalled, only its number (so ids are never reused): a
//! restart does not restore it. The driver appends the records before it carries out the
//! commands that follow them, so a client's `Submitted` reply is never sent before its job is
//! on record.
//!
//! A function task's `Finished` says that its result existed, not where: a restored scheduler
//! takes it as finished with its result lost, until a returning worker says it holds it
//! (`Resume::held`). When the window closes, the results nobody claimed and that are still
//! wanted (kept for the client, or an input of a task still to run) are recomputed exactly as
//! those of a lost worker; those nobody wants any more stay finished, and do not run again.
//!
//! A restored job's owner: the connection that submitted it is gone, so the first client that
//! asks about the job (waits for it, gathers it, asks its progress) becomes its owner. A job
//! submitted with `release_on_disconnect` is released when that owner disconnects, as before,
//! or, if no client claims it within the adoption window's full length, then: its client died
//! with the scheduler.
//!
//! [`Restored::fold`] turns records into the state to restore; [`Restored::records`] writes
//! that state back as the fewest records (compaction). [`Scheduler::restore`] rebuilds jobs
//! from it and parks their unfinished tasks for an *adoption window*: workers that come back
//! within it say what they still run ([`Resume`]) and those tasks are theirs again; the
//! outcomes they report of tasks that ended meanwhile are taken. What nobody claims is run when
//! the window closes (at its end, or as soon as every worker on record is back).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};

use super::graph::State;
use super::{Command, Config, Scheduler};
use crate::protocol::{JobId, JobSpec, JobTasks, Resume, TaskBody, TaskError, TaskId, ToWorker, WorkerId};

/// One entry of the scheduler's journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// A job was accepted as `job` (written by earlier versions; read, never written now).
    Submitted {
        /// Its id.
        job: JobId,
        /// What was submitted.
        spec: Box<JobSpec>,
    },
    /// A job was accepted as `job`: its spec, encoded compactly (a graph's tasks are most of
    /// a journal's bytes, and writing them is on the scheduler's path).
    Accepted {
        /// Its id.
        job: JobId,
        /// What was submitted.
        spec: EncodedSpec,
    },
    /// Tasks of a journalled job finished (one record per job and driver turn).
    Finished {
        /// Their job.
        job: JobId,
        /// Their indexes.
        tasks: Vec<u32>,
    },
    /// A job that is not restored (a graph too large to journal) had this id: no later job gets it.
    Numbered {
        /// Its id.
        job: JobId,
    },
    /// Tasks of a journalled job failed for good, all with this error (one record per job,
    /// error and event: cancelling a million tasks is one line, not a million).
    Failed {
        /// Their job.
        job: JobId,
        /// Their indexes.
        tasks: Vec<u32>,
        /// Why.
        error: TaskError,
    },
    /// A task of a journalled job ended: finished (`error: None`) or failed (written by
    /// earlier versions, one per task; still read).
    Ended {
        /// The task.
        task: TaskId,
        /// Why it failed, if it did (a command's exit code and stderr tail).
        error: Option<TaskError>,
    },
    /// A job was released: nothing of it is restored.
    Released {
        /// Its id.
        job: JobId,
    },
    /// A worker registered.
    WorkerJoined {
        /// Its id.
        worker: WorkerId,
    },
    /// A worker left.
    WorkerLeft {
        /// Its id.
        worker: WorkerId,
    },
}

/// A job's spec as the journal holds it: postcard, written as a hex string (a JSON line stays
/// one line of text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedSpec(pub Vec<u8>);

impl EncodedSpec {
    /// Encodes `spec`.
    pub fn encode(spec: &JobSpec) -> EncodedSpec {
        EncodedSpec(postcard::to_stdvec(spec).expect("a job spec encodes"))
    }

    /// The spec, or why it cannot be read.
    pub fn decode(&self) -> Result<JobSpec, postcard::Error> {
        postcard::from_bytes(&self.0)
    }
}

impl Serialize for EncodedSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(self.0.len() * 2);
        for b in &self.0 {
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
        s.serialize_str(&out)
    }
}

impl<'de> Deserialize<'de> for EncodedSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<EncodedSpec, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let digit = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(serde::de::Error::custom("a job spec is written in lowercase hex digits")),
        };
        if text.len() % 2 != 0 {
            return Err(serde::de::Error::custom("a job spec's hex digits come in pairs"));
        }
        text.as_bytes()
            .chunks(2)
            .map(|p| Ok(digit(p[0])? << 4 | digit(p[1])?))
            .collect::<Result<_, _>>()
            .map(EncodedSpec)
    }
}

/// A journalled job, folded: its spec and the outcomes of its tasks that ended.
#[derive(Clone, Debug, PartialEq)]
pub struct RestoredJob {
    /// What was submitted.
    pub spec: Box<JobSpec>,
    /// The tasks that ended, by index: `None` finished, `Some` failed.
    pub ended: BTreeMap<u32, Option<TaskError>>,
}

/// What a journal says, folded into the state it describes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Restored {
    /// The journalled jobs not released, by id.
    pub jobs: BTreeMap<JobId, RestoredJob>,
    /// The workers registered and not gone.
    pub workers: BTreeSet<WorkerId>,
    /// The highest job id given so far (0: none).
    pub last_job: u32,
    /// The highest worker id given so far (0: none).
    pub last_worker: u32,
}

impl Restored {
    /// Folds records, oldest first. Records about a job that is not on record are ignored.
    pub fn fold(records: impl IntoIterator<Item = Record>) -> Restored {
        let mut r = Restored::default();
        for rec in records {
            match rec {
                Record::Submitted { job, spec } => {
                    r.last_job = r.last_job.max(job.0);
                    r.jobs.insert(job, RestoredJob { spec, ended: BTreeMap::new() });
                }
                Record::Accepted { job, spec } => {
                    r.last_job = r.last_job.max(job.0);
                    match spec.decode() {
                        Ok(spec) => {
                            r.jobs.insert(job, RestoredJob { spec: Box::new(spec), ended: BTreeMap::new() });
                        }
                        Err(e) => {
                            tracing::error!(%job, "cannot read the job's spec in the journal ({e}): not restored")
                        }
                    }
                }
                Record::Finished { job, tasks } => {
                    if let Some(j) = r.jobs.get_mut(&job) {
                        j.ended.extend(tasks.into_iter().map(|t| (t, None)));
                    }
                }
                Record::Failed { job, tasks, error } => {
                    if let Some(j) = r.jobs.get_mut(&job) {
                        j.ended.extend(tasks.into_iter().map(|t| (t, Some(error.clone()))));
                    }
                }
                Record::Numbered { job } => r.last_job = r.last_job.max(job.0),
                Record::Ended { task, error } => {
                    if let Some(j) = r.jobs.get_mut(&task.job) {
                        j.ended.insert(task.index, error);
                    }
                }
                Record::Released { job } => {
                    r.jobs.remove(&job);
                }
                Record::WorkerJoined { worker } => {
                    r.last_worker = r.last_worker.max(worker.0);
                    r.workers.insert(worker);
                }
                Record::WorkerLeft { worker } => {
                    r.workers.remove(&worker);
                }
            }
        }
        r
    }

    /// The fewest records that fold back into `self` (what a compacted journal holds).
    pub fn records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        if self.last_job > 0 && !self.jobs.contains_key(&JobId(self.last_job)) {
            out.push(Record::Numbered { job: JobId(self.last_job) });
        }
        for (id, j) in &self.jobs {
            out.push(Record::Accepted { job: *id, spec: EncodedSpec::encode(&j.spec) });
            let finished: Vec<u32> = j.ended.iter().filter(|(_, e)| e.is_none()).map(|(i, _)| *i).collect();
            if !finished.is_empty() {
                out.push(Record::Finished { job: *id, tasks: finished });
            }
            // Failures grouped by error, each group in index order.
            let failed = j.ended.iter().filter_map(|(index, error)| Some((error.as_ref()?, *index)));
            for (error, tasks) in grouped(failed) {
                out.push(Record::Failed { job: *id, tasks, error: error.clone() });
            }
        }
        if self.last_worker > 0 && !self.workers.contains(&WorkerId(self.last_worker)) {
            // The last id given went to a worker that left: joined and left again keeps it.
            out.push(Record::WorkerJoined { worker: WorkerId(self.last_worker) });
            out.push(Record::WorkerLeft { worker: WorkerId(self.last_worker) });
        }
        out.extend(self.workers.iter().map(|w| Record::WorkerJoined { worker: *w }));
        out
    }
}

/// The most argument bytes of a graph that is journalled (and so restored): more is not
/// written to disk on every submission.
pub const MAX_JOURNALLED_ARGS: usize = 64 << 20;

/// Whether jobs of this spec are journalled (and so restored): command arrays, and graphs whose
/// arguments are at most [`MAX_JOURNALLED_ARGS`].
pub(super) fn journalled(spec: &JobSpec) -> bool {
    match &spec.tasks {
        JobTasks::Array { .. } => true,
        JobTasks::Graph(tasks) => {
            let args: usize =
                tasks.iter().map(|t| if let TaskBody::Function { args, .. } = &t.body { args.len() } else { 0 }).sum();
            args <= MAX_JOURNALLED_ARGS
        }
    }
}

/// The owner of a restored job until a client claims it (no connection has id 0).
pub(super) const UNCLAIMED: super::ConnId = 0;

/// A restored scheduler's adoption window.
#[derive(Debug)]
pub(super) struct Adopting {
    /// When it closes at the latest.
    pub(super) until: Instant,
    /// Workers on record that have not come back.
    pub(super) awaiting: FxHashSet<WorkerId>,
    /// The restored jobs, whose ready tasks are held back from placement until it closes.
    pub(super) jobs: FxHashSet<JobId>,
    /// Those held back.
    pub(super) parked: Vec<TaskId>,
    /// Function tasks that ended before the restart, their results not (yet) claimed.
    pub(super) unheld: Vec<TaskId>,
    /// Tasks adopted from workers so far.
    pub(super) adopted: usize,
}

impl Scheduler {
    /// A scheduler restored from its journal at `now`: the journalled jobs with their ended
    /// tasks, their other tasks parked for `window` (or until every worker on record is back).
    pub fn restore(config: Config, now: Instant, restored: &Restored, window: Duration) -> Scheduler {
        let mut s = Scheduler::new(config);
        s.now = Some(now);
        s.restoring = true;
        s.next_worker = restored.last_worker + 1;
        let mut unheld = Vec::new();
        let mut jobs = FxHashSet::default();
        for (id, j) in &restored.jobs {
            s.next_job = id.0;
            if let Err(e) = s.submit_checked(UNCLAIMED, (*j.spec).clone()) {
                tracing::error!(job = %id, "cannot restore job from the journal: {e}");
                continue;
            }
            jobs.insert(*id);
            for (index, error) in &j.ended {
                let task = TaskId { job: *id, index: *index };
                let Some(t) = s.task(task) else { continue };
                if matches!(t.state(), State::Finished { .. } | State::Failed) {
                    continue;
                }
                match error {
                    None => {
                        // Its result, if it had one, is on a worker that may come back.
                        if !matches!(t.body, TaskBody::Command) {
                            unheld.push(task);
                        }
                        s.set_state(task, State::Finished { holder: None });
                    }
                    Some(e) => s.fail(task, e.clone()),
                }
            }
            // What each task still waits for, now that some of its inputs ended: a command
            // task's (empty) result is there, a function task's is not until it is claimed.
            let n = s.jobs[id].tasks.len() as u32;
            for index in 0..n {
                let task = TaskId { job: *id, index };
                if matches!(s.task(task).map(|t| t.state()), Some(State::Waiting { .. })) {
                    s.refresh(task);
                }
            }
            s.on_job_done(*id);
        }
        s.next_job = s.next_job.max(restored.last_job + 1);
        let parked: Vec<TaskId> = s.ready.drain(..).collect();
        tracing::info!(
            jobs = restored.jobs.len(),
            parked = parked.len(),
            workers = restored.workers.len(),
            "restored from the journal; waiting up to {} s for the workers to come back",
            window.as_secs()
        );
        s.adopting = Some(Adopting {
            until: now + window,
            awaiting: restored.workers.iter().copied().collect(),
            jobs,
            parked,
            unheld,
            adopted: 0,
        });
        s.unclaimed_until = Some(now + window);
        s.restoring = false;
        s.close_adoption_if_due(now);
        s
    }

    /// A reconnecting worker's tasks and results: those still wanted are its again.
    pub(super) fn adopt(&mut self, w: WorkerId, resume: Resume) {
        if let Some(a) = &mut self.adopting {
            a.awaiting.remove(&resume.worker);
        }
        // Outcomes it reported that the scheduler may not have journalled: taken now, before
        // the window can close and place those tasks again.
        if !resume.finished.is_empty() {
            self.on_finished(w, resume.finished);
        }
        for (id, e) in resume.failed {
            self.on_failed(w, id, e);
        }
        let mut adopted = 0;
        for id in resume.running {
            // A task waiting for inputs that are lost to this scheduler: the worker had them.
            if self.task(id).is_some_and(|t| matches!(t.state(), State::Ready | State::Waiting { .. })) {
                let _ = self.assign(id, w);
                adopted += 1;
            }
        }
        let mut stale = Vec::new();
        let mut jobs = Vec::new();
        for (id, size) in resume.held {
            // Not run since the restart, or ended before it with its result not claimed yet.
            let wanted = self.task(id).is_some_and(|t| {
                !matches!(t.body, TaskBody::Command)
                    && matches!(t.state(), State::Ready | State::Waiting { .. } | State::Finished { holder: None })
            });
            if wanted {
                if let Some(t) = self.task_mut(id) {
                    t.size = size;
                }
                self.set_state(id, State::Finished { holder: Some(w) });
                self.after_finish(id);
                jobs.push(id.job);
                adopted += 1;
            } else {
                stale.push(id);
            }
        }
        if !stale.is_empty() {
            let conn = self.workers[&w].conn;
            self.commands.push(Command::ToWorker(conn, ToWorker::Release(stale)));
        }
        jobs.sort();
        jobs.dedup();
        for j in jobs {
            self.on_job_done(j);
        }
        if let Some(a) = &mut self.adopting {
            a.adopted += adopted;
        }
        tracing::info!(worker = %w, adopted, "worker came back");
    }

    /// Whether a ready task is held back because the adoption window is open (its job is
    /// restored and a worker that may still run it has not come back): it is parked.
    pub(super) fn park_if_adopting(&mut self, id: TaskId) -> bool {
        match &mut self.adopting {
            Some(a) if a.jobs.contains(&id.job) => {
                a.parked.push(id);
                true
            }
            _ => false,
        }
    }

    /// Closes the adoption window once it is over or every worker on record is back: what
    /// no worker claimed is placed now, and the results nobody claimed that are still wanted
    /// are recomputed, as a lost worker's are.
    pub(super) fn close_adoption_if_due(&mut self, now: Instant) {
        let Some(a) = &self.adopting else { return };
        if now < a.until && !a.awaiting.is_empty() {
            return;
        }
        let a = self.adopting.take().expect("checked above");
        let mut rerun = 0;
        for &id in &a.parked {
            if self.task(id).is_some_and(|t| t.state() == State::Ready) {
                self.ready.push_back(id);
                rerun += 1;
            }
        }
        let mut recomputed = 0;
        for &id in &a.unheld {
            if self.task(id).is_some_and(|t| t.state() == (State::Finished { holder: None })) && self.wanted(id) {
                self.recompute(id);
                recomputed += 1;
            }
        }
        // Waits for restored jobs were held until now: their results may have been on workers
        // that were still coming back.
        for &j in &a.jobs {
            self.on_job_done(j);
        }
        tracing::info!(
            adopted = a.adopted,
            rerun,
            recomputed,
            missing_workers = a.awaiting.len(),
            "adoption window closed: the tasks no worker claimed run again"
        );
    }

    /// A client asked about `job`: if it is a restored job nobody claimed yet, it is its owner.
    pub(super) fn claim(&mut self, job: JobId, conn: super::ConnId) {
        if let Some(j) = self.jobs.get_mut(&job) {
            if j.owner == UNCLAIMED {
                j.owner = conn;
            }
        }
    }

    /// Once the claim period after a restart is over: the restored jobs to be released when
    /// their client disconnects, and that no client claimed, are released (their client died).
    pub(super) fn release_unclaimed_if_due(&mut self, now: Instant) {
        if self.unclaimed_until.is_none_or(|t| now < t) {
            return;
        }
        self.unclaimed_until = None;
        let unclaimed: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.owner == UNCLAIMED && j.release_on_disconnect)
            .map(|(id, _)| *id)
            .collect();
        for j in unclaimed {
            tracing::info!(job = %j, "no client claimed the restored job: released");
            self.request_release(j);
        }
    }

    /// Emits a journal record (with [`Config::journal`], and not while restoring).
    pub(super) fn journal(&mut self, record: Record) {
        if self.config.journal && !self.restoring {
            self.commands.push(Command::Journal(record));
        }
    }

    /// Notes that a journalled job's task finished: journalled at the end of the event, in
    /// one [`Record::Finished`] per job (the driver writes a turn's records before it acts on
    /// any of its commands, so where in the turn they are does not matter).
    pub(super) fn journal_finished(&mut self, task: TaskId) {
        if self.config.journal && !self.restoring {
            self.finished_unjournalled.push(task);
        }
    }

    /// Notes that a journalled job's task failed for good: journalled at the end of the event,
    /// with the other tasks of its job that failed with the same error (see
    /// [`Scheduler::journal_finished`]).
    pub(super) fn journal_failed(&mut self, task: TaskId, error: &TaskError) {
        if self.config.journal && !self.restoring {
            self.failed_unjournalled.push((task, error.clone()));
        }
    }

    /// Emits the records of the tasks noted by [`Scheduler::journal_finished`] and
    /// [`Scheduler::journal_failed`].
    pub(super) fn flush_ended(&mut self) {
        let failed = std::mem::take(&mut self.failed_unjournalled);
        for ((job, error), tasks) in grouped(failed.iter().map(|(t, e)| ((t.job, e), t.index))) {
            self.commands.push(Command::Journal(Record::Failed { job, tasks, error: error.clone() }));
        }
        let mut tasks = std::mem::take(&mut self.finished_unjournalled);
        tasks.sort_unstable();
        for run in tasks.chunk_by(|a, b| a.job == b.job) {
            let job = run[0].job;
            self.commands
                .push(Command::Journal(Record::Finished { job, tasks: run.iter().map(|t| t.index).collect() }));
        }
        tasks.clear();
        self.finished_unjournalled = tasks;
    }
}

/// `items`' values grouped by key: the groups in the order their keys first came, each group's
/// values in their order (a job's failures of one error become one [`Record::Failed`]).
fn grouped<K: Copy + std::hash::Hash + Eq, V>(items: impl IntoIterator<Item = (K, V)>) -> Vec<(K, Vec<V>)> {
    let mut groups: Vec<(K, Vec<V>)> = Vec::new();
    let mut at: HashMap<K, usize> = HashMap::new();
    for (k, v) in items {
        let g = *at.entry(k).or_insert_with(|| {
            groups.push((k, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(v);
    }
    groups
}
