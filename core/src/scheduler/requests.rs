//! Clients' requests: submit, wait, progress, status (with the load per kind), release, cancel, retire
//! and shutdown, and what a client's leaving does to the jobs it owns.
//!
//! A submitted job is validated here as a whole (refused with nothing changed) before its tasks
//! enter the graph; its outcome, when done, goes to every client waiting on it.

use std::collections::HashMap;
use std::time::Duration;

use crate::protocol::{
    Cancelled, ClientInfo, ClusterStatus, Counts, EndedPage, ErrorKind, EventKind, Holding, JobId, JobOutcome, JobSpec,
    JobStatus, JobTasks, KindLoad, Needs, Refusal, RefusalKind, Reply, Request, TaskBody, TaskError, TaskId, TaskRef,
    ToClient, WorkerId, WorkerStatus,
};

use super::graph::{Job, State, Task, Tasks};
use super::placement::NO_KIND;
use super::{Command, ConnId, Notice, Peer, Record, Scheduler};
use crate::protocol::ENDED_PAGE;

impl Scheduler {
    pub(super) fn on_request(&mut self, conn: ConnId, req: u64, body: Request) {
        if let Request::Wait(job) | Request::Progress(job) = &body {
            self.claim(*job, conn);
        }
        let reply = match body {
            Request::Submit(spec) => match self.submit(conn, *spec) {
                Ok(id) => Reply::Submitted(id),
                Err(e) => Reply::Refused(e),
            },
            Request::Wait(job) => match self.jobs.get_mut(&job) {
                None => Reply::NoSuchJob(job),
                Some(j) if !j.done() || self.adopting.as_ref().is_some_and(|a| a.jobs.contains(&job)) => {
                    j.waiters.push((conn, req));
                    return;
                }
                Some(_) => Reply::JobDone(self.outcome(job)),
            },
            Request::Progress(job) => match self.jobs.get(&job) {
                None => Reply::NoSuchJob(job),
                Some(j) => Reply::Progress(j.counts),
            },
            Request::Status => Reply::Status(self.status()),
            Request::Events { after } => Reply::Events(self.events_after(after)),
            Request::Metrics { tasks_after } => Reply::Metrics(Box::new(self.metrics(tasks_after))),
            Request::Ended { job, after } => match self.ended_page(job, after) {
                None => Reply::NoSuchJob(job),
                Some(page) => Reply::Ended(page),
            },
            Request::Cancel { job, tasks } => self.cancel(job, tasks.as_deref()),
            Request::Release(job) => {
                if !self.jobs.contains_key(&job) {
                    Reply::NoSuchJob(job)
                } else {
                    self.request_release(job);
                    Reply::Ok
                }
            }
            Request::Retire(ws) => match self.check_retire(&ws) {
                Ok(()) => {
                    for w in ws {
                        self.retire(w, "the cluster is scaling down");
                    }
                    Reply::Ok
                }
                Err(e) => Reply::Refused(e),
            },
            Request::Shutdown => {
                self.shutdown(Some((conn, req)));
                return;
            }
            Request::Control(body) if self.config.controlled => {
                self.notify(Notice::Request { conn, req, body });
                return;
            }
            Request::Control(_) => Reply::Refused(Refusal::new(
                RefusalKind::Unsupported,
                "this cluster has no provisioner: its workers are started by whoever runs it \
                 (srun, mpirun, or a program's own LocalCluster)",
            )),
        };
        self.commands.push(Command::ToClient(conn, ToClient::Reply { req, body: reply }));
    }

    /// A client's connection closed: release the jobs it asked to be released then.
    pub(super) fn client_left(&mut self, conn: ConnId, info: ClientInfo) {
        if !self.shutting_down {
            self.notify(Notice::ClientLeft { conn, info });
        }
        let owned: Vec<JobId> =
            self.jobs.iter().filter(|(_, j)| j.owner == conn && j.release_on_disconnect).map(|(id, _)| *id).collect();
        for j in owned {
            self.request_release(j);
        }
    }

    fn submit(&mut self, owner: ConnId, spec: JobSpec) -> Result<JobId, Refusal> {
        if self.shutting_down {
            return Err(Refusal::new(RefusalKind::ShuttingDown, "the cluster is shutting down"));
        }
        let journalled = self.config.journal && super::journal::journalled(&spec);
        let record = journalled.then(|| super::journal::EncodedSpec::encode(&spec));
        let id = self.submit_checked(owner, spec).map_err(|e| Refusal::new(RefusalKind::Invalid, e))?;
        // Before the reply that follows: a client is never told of a job that is not on record.
        self.journal(match record {
            Some(spec) => Record::Accepted { job: id, spec },
            None => Record::Numbered { job: id },
        });
        Ok(id)
    }

    pub(super) fn submit_checked(&mut self, owner: ConnId, spec: JobSpec) -> Result<JobId, String> {
        let id = JobId(self.next_job);
        let journalled = self.config.journal && super::journal::journalled(&spec);
        let mut references = Vec::new();
        let (tasks, array) = match spec.tasks {
            JobTasks::Array { ranges, cpus, needs } => {
                let needs = self.intern(needs)?;
                if spec.command.is_none() {
                    return Err("an array job needs a command".into());
                }
                let n: u64 = ranges.iter().map(|&(a, b)| u64::from(b.saturating_sub(a)) + 1).sum();
                if ranges.is_empty() || ranges.iter().any(|&(a, b)| a > b) || n > u64::from(u32::MAX) {
                    return Err("the array's index ranges are empty or invalid".into());
                }
                let tasks =
                    (0..n).map(|_| Task::new(TaskBody::Command, Box::new([]), false, cpus.max(1), needs)).collect();
                (tasks, Some(ranges))
            }
            JobTasks::Graph(specs) => {
                let mut tasks: Vec<Task> = Vec::with_capacity(specs.len());
                for (i, s) in specs.into_iter().enumerate() {
                    match &s.body {
                        TaskBody::Function { func, .. } if *func as usize >= spec.functions.len() => {
                            return Err(format!("task {i} names function #{func}, which the job does not list"));
                        }
                        TaskBody::Command if spec.command.is_none() => {
                            return Err(format!("task {i} is a command task but the job has no command"));
                        }
                        _ => {}
                    }
                    let mut deps = Vec::with_capacity(s.deps.len());
                    for d in s.deps {
                        match d {
                            TaskRef::Local(j) if (j as usize) < i => deps.push(TaskId { job: id, index: j }),
                            TaskRef::Local(j) => {
                                return Err(format!(
                                    "task {i} depends on task {j}, which is not added before it; add tasks in dependency order"
                                ))
                            }
                            TaskRef::Global(t) => {
                                match self.task(t) {
                                    Some(dt) if dt.keep && !self.jobs[&t.job].release_when_done => {}
                                    Some(_) => {
                                        return Err(format!(
                                            "task {i} depends on task {t}, whose result is not kept; mark it `keep` or submit both together"
                                        ))
                                    }
                                    None => return Err(format!("task {i} depends on task {t}, which does not exist")),
                                }
                                if !references.contains(&t.job) {
                                    references.push(t.job);
                                }
                                deps.push(t);
                            }
                        }
                    }
                    let needs = self.intern(s.needs).map_err(|e| format!("task {i}: {e}"))?;
                    tasks.push(Task::new(s.body, deps.into_boxed_slice(), s.keep, s.cpus.max(1), needs));
                }
                (tasks, None)
            }
        };
        if tasks.is_empty() {
            return Err("the job has no tasks".into());
        }
        self.next_job += 1;
        let total = tasks.len() as u32;
        let first = tasks[0].needs;
        let uniform_needs = tasks.iter().all(|t| t.needs == first).then_some(first);
        let func_kinds = spec.functions.iter().map(|f| self.kind_named(f.clone())).collect();
        let command_kind =
            if spec.command.is_some() { self.kind_named(format!("command:{}", spec.name)) } else { NO_KIND };
        let job = Job {
            spec_name: spec.name,
            functions: spec.functions,
            command: spec.command,
            array,
            tasks: Tasks::new(tasks),
            counts: Counts { total, waiting: total, ..Counts::default() },
            errors: Default::default(),
            max_attempts: spec.max_attempts.max(1),
            owner,
            release_on_disconnect: spec.release_on_disconnect,
            release_when_done: false,
            waiters: Vec::new(),
            referenced_by: Vec::new(),
            references: references.clone(),
            func_kinds,
            command_kind,
            uniform_needs,
            journalled,
            ended: None,
        };
        self.jobs.insert(id, job);
        for r in references {
            self.jobs.get_mut(&r).expect("checked above").referenced_by.push(id);
        }
        // Wire dependents and find the tasks that can start now.
        let mut failed_inputs = Vec::new();
        for i in 0..total {
            let tid = TaskId { job: id, index: i };
            let deps = self.task(tid).expect("just added").deps.clone();
            for d in deps.iter() {
                self.task_mut(*d).expect("validated").dependents.push(tid);
                if let Some(dt) = self.task(*d) {
                    if dt.state() == State::Failed {
                        failed_inputs.push((tid, *d));
                    } else if dt.state() == (State::Finished { holder: None }) {
                        self.recompute(*d);
                    }
                }
            }
            if !deps.is_empty() {
                self.refresh(tid);
            }
        }
        // Tasks without inputs, in submission order, behind what is already queued.
        for i in 0..total {
            let tid = TaskId { job: id, index: i };
            let t = self.task(tid).expect("just added");
            if t.deps.is_empty() && matches!(t.state(), State::Waiting { .. }) {
                self.queue_new(tid);
            }
        }
        tracing::info!(job = %id, tasks = total, "job submitted");
        let name = self.jobs.get(&id).map(|j| j.spec_name.clone()).unwrap_or_default();
        self.event(EventKind::JobSubmitted { job: id, name, tasks: total });
        for (t, d) in failed_inputs {
            self.fail(t, TaskError { kind: ErrorKind::DependencyFailed(d), message: "failed earlier".into() });
        }
        Ok(id)
    }

    pub(super) fn on_job_done(&mut self, job: JobId) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        if !j.done() {
            return;
        }
        tracing::info!(job = %job, finished = j.counts.finished, failed = j.counts.failed, "job done");
        let (name, finished, failed) = (j.spec_name.clone(), j.counts.finished, j.counts.failed);
        let waiters = std::mem::take(&mut j.waiters);
        if !waiters.is_empty() {
            let outcome = self.outcome(job);
            for (conn, req) in waiters {
                let body = Reply::JobDone(outcome.clone());
                self.commands.push(Command::ToClient(conn, ToClient::Reply { req, body }));
            }
        }
        self.event(EventKind::JobFinished { job, name, finished, failed });
        // The jobs it references stay until it is released itself: if one of its kept
        // results is lost, recomputing it may need theirs.
        if let Some(j) = self.jobs.get(&job) {
            if j.release_when_done && j.referenced_by.is_empty() {
                self.release_job(job);
            }
        }
    }

    /// Cancels the tasks of `job` that have not started (every one, or those of `which`): they
    /// and their dependents fail as cancelled; running ones are counted and left to finish.
    /// Indexes are all checked first: a wrong one refuses the whole request.
    fn cancel(&mut self, job: JobId, which: Option<&[u32]>) -> Reply {
        let Some(j) = self.jobs.get(&job) else { return Reply::NoSuchJob(job) };
        let n = j.tasks.len() as u32;
        let indexes: Vec<u32> = match which {
            None => (0..n).collect(),
            Some(list) => match list.iter().map(|&id| j.task_of(id).ok_or(id)).collect::<Result<_, _>>() {
                Ok(indexes) => indexes,
                Err(id) => {
                    let have = match j.array.as_deref() {
                        Some(ranges) => {
                            let r: Vec<String> = ranges.iter().map(|(a, b)| format!("{a}-{b}")).collect();
                            format!("its array is {}", r.join(","))
                        }
                        None => format!("its tasks are 0 to {}", n.saturating_sub(1)),
                    };
                    let why = format!("job {job} has no task {id}: {have}");
                    return Reply::Refused(Refusal::new(RefusalKind::Invalid, why));
                }
            },
        };
        let mut done = Cancelled::default();
        for index in indexes {
            let id = TaskId { job, index };
            match self.task(id).map(|t| t.state()) {
                Some(State::Waiting { .. } | State::Ready) => {
                    done.cancelled += 1;
                    let error = TaskError { kind: ErrorKind::Cancelled, message: "cancelled by a client".into() };
                    self.fail(id, error);
                }
                Some(State::Assigned { .. }) => done.running += 1,
                _ => {}
            }
        }
        tracing::info!(job = %job, cancelled = done.cancelled, running = done.running, "tasks cancelled");
        Reply::Cancelled(done)
    }

    /// The tasks of `job` that ended, from the `after`-th on (see [`Request::Ended`]); starts
    /// following the job on its first call.
    fn ended_page(&mut self, job: JobId, after: u32) -> Option<EndedPage> {
        let j = self.jobs.get_mut(&job)?;
        let Job { tasks, ended, .. } = &mut *j;
        ended.get_or_insert_with(|| tasks.iter().filter(|(_, t)| t.state().ended()).map(|(i, _)| i).collect());
        let j = &self.jobs[&job];
        let order = j.ended.as_deref().unwrap_or_default();
        let from = (after as usize).min(order.len());
        let to = (from + ENDED_PAGE as usize).min(order.len());
        let (mut finished, mut failed) = (Vec::new(), Vec::new());
        let mut by_worker: HashMap<WorkerId, Vec<u32>> = HashMap::new();
        for &i in &order[from..to] {
            let Some(t) = j.tasks.get(i) else { continue };
            match t.state() {
                State::Finished { holder } => {
                    finished.push(i);
                    if let (Some(w), true) = (holder, t.keep) {
                        by_worker.entry(w).or_default().push(i);
                    }
                }
                State::Failed => {
                    let error = j.errors.get(&i).cloned();
                    let unknown = || TaskError { kind: ErrorKind::Error, message: "failed (no reason kept)".into() };
                    failed.push((i, error.unwrap_or_else(unknown)));
                }
                // Ended, then its result was lost: it is listed again when it ends again.
                _ => {}
            }
        }
        let holdings = self.holdings(by_worker);
        Some(EndedPage { next: to as u32, finished, holdings, failed, done: j.done() && to == order.len() })
    }

    /// Where results are, from the tasks each worker holds, in worker order (a worker gone is left out).
    fn holdings(&self, by_worker: HashMap<WorkerId, Vec<u32>>) -> Vec<Holding> {
        let mut holdings: Vec<Holding> = by_worker
            .into_iter()
            .filter_map(|(w, tasks)| {
                let address = self.workers.get(&w)?.info.data_address.clone();
                Some(Holding { worker: w, address, tasks })
            })
            .collect();
        holdings.sort_by_key(|h| h.worker);
        holdings
    }

    fn outcome(&self, job: JobId) -> JobOutcome {
        let j = &self.jobs[&job];
        let mut by_worker: HashMap<WorkerId, Vec<u32>> = HashMap::new();
        for (i, t) in j.tasks.iter() {
            if let (State::Finished { holder: Some(w) }, true) = (t.state(), t.keep) {
                by_worker.entry(w).or_default().push(i);
            }
        }
        let holdings = self.holdings(by_worker);
        // Arrays report their own indices (RDASK_TASK_ID); graphs report task indices.
        let mut failed: Vec<_> = j.errors.iter().map(|(i, e)| (j.array_id(*i), e.clone())).collect();
        failed.sort_by_key(|(i, _)| *i);
        JobOutcome { job, tasks: j.counts.total, finished: j.counts.finished, failed, holdings }
    }

    pub(super) fn status(&self) -> ClusterStatus {
        let now = self.now.expect("set by handle");
        let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        let mut workers: Vec<WorkerStatus> = self
            .workers
            .iter()
            .map(|(id, w)| WorkerStatus {
                id: *id,
                info: w.info.clone(),
                assigned: w.assigned(),
                holding: w.holding(),
                retiring: w.retiring,
                ends_in_ms: w.ends_at.map(|e| ms(e.saturating_duration_since(now))),
                idle_ms: w.idle_since.map_or(0, |i| ms(now.saturating_duration_since(i))),
                finished: w.finished,
                held_bytes: w.holds.iter().filter_map(|t| self.task(*t)).map(|t| t.size).sum(),
                load: w.load,
            })
            .collect();
        workers.sort_by_key(|w| w.id);
        let mut jobs: Vec<JobStatus> = self
            .jobs
            .iter()
            .map(|(id, j)| JobStatus {
                id: *id,
                name: j.spec_name.clone(),
                counts: j.counts,
                waiting_for: self.waiting_for(j),
            })
            .collect();
        jobs.sort_by_key(|j| j.id);
        let clients = self.conns.values().filter(|p| matches!(p, Peer::Client(_))).count() as u32;
        ClusterStatus {
            workers,
            jobs,
            clients,
            load: self.load(),
            provisioning: self.provisioning.clone(),
            dashboard: self.dashboard(),
        }
    }

    /// Queued and running tasks per kind. A job with one kind counts from its counts; only jobs
    /// mixing functions are looked at task by task.
    fn load(&self) -> Vec<KindLoad> {
        // By (kind, needs).
        let mut by_kind: HashMap<(u32, u32), (u64, u64)> = HashMap::new();
        for (jid, j) in &self.jobs {
            if j.counts.waiting + j.counts.running == 0 {
                continue;
            }
            // The one kind of all its tasks: an array's are its command (whatever functions
            // its spec lists), a graph's are its only function or its command.
            let kind = match (&j.array, j.func_kinds.as_slice(), j.command_kind) {
                (Some(_), _, k) => Some(k),
                (None, [k], NO_KIND) => Some(*k),
                (None, [], k) => Some(k),
                _ => None,
            };
            if let (Some(k), Some(needs)) = (kind, j.uniform_needs) {
                let e = by_kind.entry((k, needs)).or_default();
                e.0 += u64::from(j.counts.waiting);
                e.1 += u64::from(j.counts.running);
                continue;
            }
            for (index, t) in j.tasks.iter() {
                let queued = matches!(t.state(), State::Waiting { .. } | State::Ready);
                if queued || matches!(t.state(), State::Assigned { .. }) {
                    let e = by_kind.entry((self.kind_of(TaskId { job: *jid, index }), t.needs)).or_default();
                    if queued {
                        e.0 += 1;
                    } else {
                        e.1 += 1;
                    }
                }
            }
        }
        let mut load: Vec<KindLoad> = by_kind
            .into_iter()
            .filter_map(|((k, n), (queued, running))| {
                let stats = self.kinds.get(k as usize)?;
                Some(KindLoad {
                    kind: stats.name.clone(),
                    queued,
                    running,
                    mean_us: stats.mean_us.map(|m| m as u64),
                    needs: self.needs[n as usize].clone(),
                })
            })
            .collect();
        load.sort_by(|a, b| a.kind.cmp(&b.kind).then_with(|| a.needs.cmp(&b.needs)));
        load
    }

    /// Why a job's waiting tasks wait, when they need what no worker has free (the needs of
    /// its first waiting task stand for all: an array's tasks all need the same).
    fn waiting_for(&self, j: &Job) -> Option<String> {
        if j.counts.waiting == 0 {
            return None;
        }
        // A job whose tasks all need the same is answered without a look at its tasks (a
        // campaign's array of millions is asked about at every status, the dashboard's too).
        let needs = match j.uniform_needs {
            Some(0) => return None,
            Some(n) => n,
            None => {
                let waiting = |t: &&Task| matches!(t.state(), State::Ready | State::Waiting { .. }) && t.needs != 0;
                j.tasks.iter().map(|(_, t)| t).find(waiting)?.needs
            }
        };
        let needs = &self.needs[needs as usize];
        if self.workers.values().any(|w| w.has_free(needs)) {
            return None;
        }
        let offered = self.workers.values().any(|w| w.info.offer.could_hold(needs).is_ok());
        let pools: Vec<&str> = self
            .provisioning
            .iter()
            .flat_map(|p| &p.pools)
            .filter(|p| p.offer.could_hold(needs).is_ok())
            .map(|p| p.name.as_str())
            .collect();
        Some(match (offered, pools.is_empty()) {
            (true, _) => format!("{needs}: busy on every worker that offers it"),
            (false, false) => format!("{needs}: no worker offers it yet; pool `{}` does", pools.join("`, `")),
            (false, true) => format!("{needs}: no worker offers it yet"),
        })
    }

    /// The index of `needs` in `self.needs`, after checking that some worker or pool could ever
    /// hold it. Refused: the reason, naming each pool and what it offers.
    fn intern(&mut self, mut needs: Needs) -> Result<u32, String> {
        needs.named.sort();
        if needs.named.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err("a named resource is asked for twice".into());
        }
        needs.named.retain(|(_, n)| *n > 0);
        if let Some(i) = self.needs_index.get(&needs) {
            return Ok(*i);
        }
        self.could_run(&needs)?;
        let i = self.needs.len() as u32;
        self.needs.push(needs.clone());
        self.needs_index.insert(needs, i);
        Ok(i)
    }

    /// Whether a task needing `needs` could ever run: on a worker now, or on one a pool would
    /// start. With no pools declared (no provisioner) it may wait for workers to come.
    fn could_run(&self, needs: &Needs) -> Result<(), String> {
        if needs.is_empty() || self.workers.values().any(|w| w.info.offer.could_hold(needs).is_ok()) {
            return Ok(());
        }
        let Some(p) = self.provisioning.as_ref().filter(|p| !p.pools.is_empty()) else { return Ok(()) };
        let mut why = Vec::new();
        for pool in &p.pools {
            match pool.offer.could_hold(needs) {
                Ok(()) => return Ok(()),
                Err(e) => why.push(format!("pool `{}`: {e}", pool.name)),
            }
        }
        Err(format!(
            "no worker and no pool could ever run a task that needs {needs} ({}); ask for less, or add a pool that offers it (--pool)",
            why.join("; ")
        ))
    }
}
