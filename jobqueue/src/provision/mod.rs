//! Provisioning: which allocations (batch jobs, or local worker processes) a cluster has, and
//! which it should have — carried inside the scheduler's process, the way the scheduler is.
//!
//! [`Provisioner`] is sans-IO like [`rdask::scheduler::Scheduler`]: [`Provisioner::handle`]
//! takes an [`Input`] (a notice from the scheduler, the result of a batch-system call, the
//! time passing) and queues [`Action`]s (submit, poll, cancel, explain; retire, reply,
//! observe through the scheduler). It never reads a clock, a file or a socket: the
//! [`driver`] does, and the tests in `tests.rs` play both the scheduler and a batch system
//! ([`crate::fake::FakeBatch`]) under a simulated clock.
//!
//! Rules it keeps:
//! - every worker carries the launch tag of the allocation that started it (`<pool>/<n>`); a
//!   worker is matched to its allocation by that tag alone;
//! - capacity is only ever removed by cancelling allocations that have no worker (pending ones
//!   first), or by retiring all the workers of an allocation through the scheduler, which
//!   refuses atomically if any of them is busy; the allocation is cancelled once they have
//!   left. `scale` and `adapt` both go through this one path: a busy worker is never stopped;
//! - an allocation that ends before any worker of it joined is a failed start: its stderr's
//!   tail is fetched for `status`, and submission backs off (doubling, then pauses);
//! - a refused submission or a failed poll is shown in `status` as the pool's error.
#![deny(clippy::disallowed_methods)] // sans-IO: see clippy.toml; `driver` and `launch` are the I/O

pub mod driver;
pub mod launch;

pub use self::driver::adapt_cluster;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rdask::protocol::{
    AdaptSpec, AdaptState, AllocationState, AllocationStatus, ClusterStatus, ControlRequest, EventKind, PoolStatus,
    ProvisioningStatus, Refusal, RefusalKind, Reply, ScaleTarget, WorkerId,
};
use rdask::scheduler::{Control, Notice};

use crate::adapt::{JobShape, JobView, Observation, Policy, WorkerView};

/// Failed submissions in a row after which a pool that is not adapting stops submitting.
const FIXED_MAX_FAILURES: u32 = 5;
/// Ended allocations kept for `status`, per pool.
const ENDED_KEPT: usize = 20;
/// How long a running allocation whose workers were refused retirement is left alone.
const RETIRE_RETRY: Duration = Duration::from_secs(1);

/// One pool as the provisioner runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolConfig {
    /// Its name (`default` for the main options).
    pub name: String,
    /// The workers of one allocation and the slots of each.
    pub shape: JobShape,
    /// Nodes of one allocation (to turn `scale --nodes` into allocations).
    pub nodes_per_job: u32,
    /// Allocations to start with.
    pub initial: u32,
    /// Whether its size can change (a `--job-array` cluster's cannot).
    pub scalable: bool,
    /// What each of its workers offers besides slots (GPUs, memory, named resources).
    pub offer: rdask::protocol::Offer,
}

/// How the provisioner runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `local`, or the batch system's name.
    pub backend: String,
    /// What one allocation is called: `job` (batch) or `worker` (local).
    pub unit: &'static str,
    /// The pools, the main one first.
    pub pools: Vec<PoolConfig>,
    /// Every pool adapts from the start (each from the work its workers could run).
    pub adapt: Option<AdaptSpec>,
    /// Between two polls of the allocations' states.
    pub poll_interval: Duration,
}

/// What happened.
#[derive(Debug)]
pub enum Input {
    /// The scheduler said something.
    Notice(Notice),
    /// A [`Action::Submit`] ended: the allocation's id and first state, or why not.
    Submitted {
        /// The allocation's sequence number.
        seq: u64,
        /// Its id and state, or the batch system's words.
        result: Result<(String, AllocationState), String>,
    },
    /// A [`Action::Poll`] ended: the states of the ids it named, or why not.
    Polled(Result<HashMap<String, AllocationState>, String>),
    /// A [`Action::Cancel`] ended.
    Cancelled(Result<(), String>),
    /// A [`Action::Explain`] ended: what the allocation's stderr ends with, if anything.
    Explained {
        /// The allocation's id.
        id: String,
        /// The note.
        note: Option<String>,
    },
    /// Time passed (the driver calls at [`Provisioner::next_deadline`] or later).
    Tick,
}

/// What the driver must do.
#[derive(Debug)]
pub enum Action {
    /// Start one allocation of `pool` whose workers echo `launch`; answer with
    /// [`Input::Submitted`] of the same `seq`.
    Submit {
        /// Matches the answer.
        seq: u64,
        /// The pool.
        pool: String,
        /// The launch tag its workers must carry.
        launch: String,
    },
    /// Ask the states of these allocations; answer with [`Input::Polled`].
    Poll(Vec<String>),
    /// Cancel these allocations; answer with [`Input::Cancelled`].
    Cancel(Vec<String>),
    /// Find why this allocation ended early; answer with [`Input::Explained`].
    Explain(String),
    /// Send this to the scheduler.
    Scheduler(Control),
    /// Journal this accepted `scale`/`adapt` request: a restarted scheduler applies it again
    /// ([`Provisioner::reapply`]).
    Record(ControlRequest),
}

#[derive(Debug)]
enum Mode {
    /// This many allocations.
    Fixed(u32),
    /// As many as the policy says.
    Adaptive(Box<Policy>),
}

#[derive(Debug)]
struct Pool {
    config: PoolConfig,
    mode: Mode,
    /// The last batch-system error of this pool.
    error: Option<String>,
    /// Failed submissions in a row, for a pool that is not adapting.
    failures: u32,
    retry_at: Option<Instant>,
    paused: bool,
    /// The adaptive policy's last words.
    decided: Option<(u32, String)>,
    next_decision: Option<Instant>,
}

#[derive(Debug)]
struct Alloc {
    pool: usize,
    launch: String,
    /// `None` until its submission answered.
    id: Option<String>,
    state: AllocationState,
    workers: BTreeSet<WorkerId>,
    ever_joined: bool,
    /// A retirement of its workers is in flight (the token).
    retire_token: Option<u64>,
    /// Its workers are retiring: once they have left it is cancelled.
    retiring: bool,
    refused_at: Option<Instant>,
    cancel_sent: bool,
    submitted_at: Instant,
    note: Option<String>,
}

impl Alloc {
    /// An allocation of pool `pool` whose workers carry `launch`, just submitted (or adopted).
    fn new(pool: usize, launch: String, now: Instant) -> Alloc {
        Alloc {
            pool,
            launch,
            id: None,
            state: AllocationState::Pending,
            workers: BTreeSet::new(),
            ever_joined: false,
            retire_token: None,
            retiring: false,
            refused_at: None,
            cancel_sent: false,
            submitted_at: now,
            note: None,
        }
    }

    /// Still counted as capacity: active, not on its way out.
    fn counts(&self) -> bool {
        self.state.is_active() && !self.cancel_sent && !self.retiring && self.retire_token.is_none()
    }

    /// Waiting in the queue (or for its submission's answer): no worker can be on it.
    fn queued(&self) -> bool {
        self.state == AllocationState::Pending && self.workers.is_empty() && !self.ever_joined
    }
}

/// The provisioner of one cluster; see the [module documentation](self).
#[derive(Debug)]
pub struct Provisioner {
    backend: String,
    unit: &'static str,
    pools: Vec<Pool>,
    allocs: BTreeMap<u64, Alloc>,
    by_launch: HashMap<String, u64>,
    by_id: HashMap<String, u64>,
    next_seq: u64,
    next_token: u64,
    poll_interval: Duration,
    next_poll: Instant,
    polling: bool,
    /// An observation asked for the adaptive pools.
    observing: bool,
    shutting_down: bool,
    actions: Vec<Action>,
    /// Answers to requests, sent after the state they changed is published.
    replies: Vec<Action>,
    published: Option<ProvisioningStatus>,
}

impl Provisioner {
    /// A provisioner that starts each pool's initial allocations at the first [`Input::Tick`].
    pub fn new(config: Config, now: Instant) -> Provisioner {
        let pools = config
            .pools
            .into_iter()
            .map(|c| {
                // `up --adapt-max` makes every pool adapt, each from the work it could run.
                let mode = match &config.adapt {
                    Some(spec) => Mode::Adaptive(Box::new(Policy::new(spec.clone(), c.shape))),
                    None => Mode::Fixed(c.initial),
                };
                let next_decision = matches!(mode, Mode::Adaptive(_)).then_some(now);
                Pool {
                    config: c,
                    mode,
                    error: None,
                    failures: 0,
                    retry_at: None,
                    paused: false,
                    decided: None,
                    next_decision,
                }
            })
            .collect();
        Provisioner {
            backend: config.backend,
            unit: config.unit,
            pools,
            allocs: BTreeMap::new(),
            by_launch: HashMap::new(),
            by_id: HashMap::new(),
            next_seq: 1,
            next_token: 1,
            poll_interval: config.poll_interval,
            next_poll: now + config.poll_interval,
            polling: false,
            observing: false,
            shutting_down: false,
            actions: Vec::new(),
            replies: Vec::new(),
            published: None,
        }
    }

    /// Takes over an allocation that a previous scheduler process of the cluster started
    /// (restarting from the journal): it counts as its pool's capacity, its workers are matched
    /// by `launch` as they come back, and the next polls tell whether it still runs. An
    /// allocation of a pool that is no more is ignored (returns false).
    pub fn adopt(&mut self, now: Instant, pool: &str, launch: &str, id: &str, state: AllocationState) -> bool {
        let Some(index) = self.pools.iter().position(|p| p.config.name == pool) else { return false };
        if self.by_launch.contains_key(launch) {
            return false;
        }
        // Launch tags are `<pool>/<seq>`: new ones must not repeat an adopted one.
        if let Some(n) = launch.rsplit_once('/').and_then(|(_, n)| n.parse::<u64>().ok()) {
            self.next_seq = self.next_seq.max(n + 1);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_launch.insert(launch.to_string(), seq);
        self.by_id.insert(id.to_string(), seq);
        // Its workers joined the scheduler before: an end now is not a failed start.
        let a =
            Alloc { id: Some(id.to_string()), state, ever_joined: true, ..Alloc::new(index, launch.to_string(), now) };
        self.allocs.insert(seq, a);
        tracing::info!(job = %id, %launch, "allocation adopted from the previous scheduler process");
        true
    }

    /// Applies a `scale`/`adapt` request that a previous scheduler process accepted and
    /// journalled (restarting): the pools come back with the sizes they were given last.
    pub fn reapply(&mut self, now: Instant, body: ControlRequest) {
        if let Err(r) = self.request(now, body) {
            tracing::warn!("a journalled scale/adapt request no longer applies: {r}");
        }
    }

    /// Takes what there is to do, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// When the next [`Input::Tick`] is due.
    pub fn next_deadline(&self) -> Instant {
        let mut at = self.next_poll;
        for p in &self.pools {
            for t in [p.next_decision, p.retry_at].into_iter().flatten() {
                at = at.min(t);
            }
        }
        at
    }

    /// The ids of every allocation that may still be active, for cancelling them all.
    pub fn active_ids(&self) -> Vec<String> {
        self.allocs.values().filter(|a| a.state.is_active()).filter_map(|a| a.id.clone()).collect()
    }

    /// Submissions still waiting for their answer.
    pub fn submitting(&self) -> usize {
        self.allocs.values().filter(|a| a.id.is_none() && a.state.is_active()).count()
    }

    /// Stops submitting (the cluster is going down); what is active stays for the driver to cancel.
    pub fn shut_down(&mut self) {
        self.shutting_down = true;
    }

    /// Takes one input.
    pub fn handle(&mut self, now: Instant, input: Input) {
        // Ticks refresh the ages that `status` shows.
        let tick = matches!(input, Input::Tick);
        match input {
            Input::Notice(n) => self.notice(now, n),
            Input::Submitted { seq, result } => self.submitted(now, seq, result),
            Input::Polled(r) => self.polled(now, r),
            Input::Cancelled(r) => {
                if let Err(e) = r {
                    tracing::warn!("cancelling allocations failed: {e}");
                    for p in &mut self.pools {
                        p.error = Some(format!("cancelling failed: {e}"));
                    }
                }
            }
            Input::Explained { id, note } => {
                if let Some(a) = self.by_id.get(&id).and_then(|s| self.allocs.get_mut(s)) {
                    a.note = Some(match note {
                        Some(t) => format!("ended before its worker joined; its stderr ends with:\n{t}"),
                        None => "ended before its worker joined (no stderr file found)".to_string(),
                    });
                    tracing::warn!(job = %id, "{}", a.note.as_deref().unwrap_or_default());
                    let (pool, state, note) = (a.pool, a.state, a.note.clone());
                    self.allocation_event(pool, id, state, note);
                }
            }
            Input::Tick => {}
        }
        self.step(now);
        self.publish(now, tick);
        // After the new state: a client that is answered and then asks for `status` (as
        // `scale --wait` does) sees what its request changed, not the state before it.
        self.actions.append(&mut self.replies);
    }

    fn notice(&mut self, now: Instant, n: Notice) {
        match n {
            Notice::WorkerJoined { worker, launch } => {
                let Some(seq) = launch.as_ref().and_then(|l| self.by_launch.get(l)).copied() else { return };
                let a = self.allocs.get_mut(&seq).expect("indexed");
                let first = !a.ever_joined;
                a.workers.insert(worker);
                a.ever_joined = true;
                if a.state == AllocationState::Pending {
                    a.state = AllocationState::Running;
                    let (pool, id) = (a.pool, a.id.clone().unwrap_or_default());
                    self.allocation_event(pool, id, AllocationState::Running, None);
                }
                let a = self.allocs.get_mut(&seq).expect("indexed");
                if first {
                    let p = &mut self.pools[a.pool];
                    p.failures = 0;
                    p.retry_at = None;
                    if let Mode::Adaptive(policy) = &mut p.mode {
                        policy.succeeded();
                    }
                }
            }
            Notice::WorkerLeft { worker, launch, .. } => {
                let Some(seq) = launch.as_ref().and_then(|l| self.by_launch.get(l)).copied() else { return };
                let a = self.allocs.get_mut(&seq).expect("indexed");
                a.workers.remove(&worker);
                if a.retiring && a.workers.is_empty() && !a.cancel_sent {
                    // Its workers have handed over and left: make sure its script ends too.
                    if let Some(id) = a.id.clone() {
                        a.cancel_sent = true;
                        self.actions.push(Action::Cancel(vec![id]));
                    }
                }
            }
            Notice::Request { conn, req, body } => {
                let reply = match self.request(now, body.clone()) {
                    Ok(text) => {
                        self.actions.push(Action::Record(body));
                        Reply::Control(text)
                    }
                    Err(r) => Reply::Refused(r),
                };
                self.replies.push(Action::Scheduler(Control::Reply { conn, req, reply }));
            }
            Notice::Retired { token, result } => {
                let Some(a) = self.allocs.values_mut().find(|a| a.retire_token == Some(token)) else { return };
                a.retire_token = None;
                match result {
                    Ok(()) => {
                        tracing::info!(launch = %a.launch, "retiring the workers of an allocation");
                        a.retiring = true;
                        if a.workers.is_empty() && !a.cancel_sent {
                            if let Some(id) = a.id.clone() {
                                a.cancel_sent = true;
                                self.actions.push(Action::Cancel(vec![id]));
                            }
                        }
                    }
                    Err(why) => {
                        tracing::debug!(launch = %a.launch, "not retired: {why}");
                        a.refused_at = Some(now);
                    }
                }
            }
            Notice::Observed(status) => {
                self.observing = false;
                self.adapt(now, &status);
            }
            Notice::ClientJoined { .. } | Notice::ClientLeft { .. } => {}
        }
    }

    fn pool_index(&self, pool: Option<&str>) -> Result<usize, Refusal> {
        let name = pool.unwrap_or(&self.pools[0].config.name);
        self.pools.iter().position(|p| p.config.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.pools.iter().map(|p| p.config.name.as_str()).collect();
            Refusal::new(
                RefusalKind::NotFound,
                format!("no worker pool named `{name}`; this cluster has: {}", names.join(", ")),
            )
        })
    }

    fn request(&mut self, now: Instant, body: ControlRequest) -> Result<String, Refusal> {
        if self.shutting_down {
            return Err(Refusal::new(RefusalKind::ShuttingDown, "the cluster is shutting down"));
        }
        let (pool, what) = match &body {
            ControlRequest::Scale { pool, .. } => (pool.as_deref(), "scaled"),
            ControlRequest::Adapt { .. } => (None, "adapt"),
        };
        let i = self.pool_index(pool)?;
        if !self.pools[i].config.scalable {
            let verb = if what == "adapt" { "cannot adapt" } else { "cannot be scaled" };
            return Err(Refusal::new(
                RefusalKind::Unsupported,
                format!("a cluster started with --job-array {verb}; start it without --job-array"),
            ));
        }
        let unit = self.unit;
        let p = &mut self.pools[i];
        let per_job = p.config.shape.workers.max(1);
        match body {
            ControlRequest::Scale { target, .. } => {
                let jobs = match target {
                    ScaleTarget::Jobs(n) => n,
                    ScaleTarget::Nodes(n) => n.div_ceil(p.config.nodes_per_job.max(1)),
                    ScaleTarget::Workers(n) => n.div_ceil(per_job),
                };
                let was_adapting = matches!(p.mode, Mode::Adaptive(_));
                p.mode = Mode::Fixed(jobs);
                p.decided = None;
                p.next_decision = None;
                p.paused = false;
                p.failures = 0;
                p.retry_at = None;
                let workers = jobs * per_job;
                let mut text = if unit == "worker" {
                    format!("scaling to {workers} worker(s)")
                } else {
                    format!("scaling pool `{}` to {jobs} job(s) of {per_job} worker(s)", p.config.name)
                };
                if was_adapting {
                    text += "; adaptive scaling is off now";
                }
                Ok(text)
            }
            ControlRequest::Adapt { spec: None, .. } => {
                let have = self.allocs.values().filter(|a| a.pool == i && a.counts()).count() as u32;
                let p = &mut self.pools[i];
                p.mode = Mode::Fixed(have);
                p.decided = None;
                p.next_decision = None;
                Ok(format!("no longer adapts; it keeps the {have} {unit}(s) it has (change them with `scale`)"))
            }
            ControlRequest::Adapt { spec: Some(spec), .. } => {
                spec.check().map_err(|e| Refusal::new(RefusalKind::Invalid, e.to_string()))?;
                let what = if unit == "worker" {
                    format!("local workers of {} slot(s)", p.config.shape.slots)
                } else {
                    format!("job(s) of {per_job} worker(s) × {} slot(s)", p.config.shape.slots)
                };
                let text = format!(
                    "adapts between {} and {} {what}, aiming to finish queued work within {} s",
                    spec.min_jobs, spec.max_jobs, spec.target_duration
                );
                p.mode = Mode::Adaptive(Box::new(Policy::new(spec, p.config.shape)));
                p.decided = None;
                p.next_decision = Some(now);
                Ok(text)
            }
        }
    }

    fn submitted(&mut self, now: Instant, seq: u64, result: Result<(String, AllocationState), String>) {
        let Some(a) = self.allocs.get_mut(&seq) else { return };
        let pool = a.pool;
        match result {
            Ok((id, state)) => {
                tracing::info!(job = %id, launch = %a.launch, "allocation submitted");
                self.by_id.insert(id.clone(), seq);
                a.id = Some(id.clone());
                a.state = if a.ever_joined { AllocationState::Running } else { state };
                let state = a.state;
                self.pools[pool].error = None;
                if self.shutting_down {
                    a.cancel_sent = true;
                    self.actions.push(Action::Cancel(vec![id.clone()]));
                }
                self.allocation_event(pool, id, state, None);
            }
            Err(e) => {
                let p = &self.pools[pool];
                let what = if matches!(p.mode, Mode::Adaptive(_)) { "adaptive submission" } else { "submission" };
                tracing::warn!(pool = %p.config.name, "{what} failed: {e}");
                let a = self.allocs.remove(&seq).expect("present");
                self.by_launch.remove(&a.launch);
                self.failed(now, pool, format!("submission failed: {e}"));
            }
        }
    }

    /// A submission failed, or an allocation ended before any worker of it joined.
    fn failed(&mut self, now: Instant, pool: usize, why: String) {
        let p = &mut self.pools[pool];
        match &mut p.mode {
            Mode::Adaptive(policy) => policy.failed(now, &why),
            Mode::Fixed(_) => {
                p.failures += 1;
                if p.failures >= FIXED_MAX_FAILURES {
                    p.paused = true;
                    p.retry_at = None;
                } else {
                    p.retry_at =
                        Some(now + Duration::from_secs(1u64 << p.failures.min(8)).min(Duration::from_secs(300)));
                }
            }
        }
        let message = why.clone();
        p.error = Some(why);
        let pool = p.config.name.clone();
        self.actions.push(Action::Scheduler(Control::Event(EventKind::BatchError { pool, message })));
    }

    /// Tells the scheduler's event log that an allocation of pool `pool` is now in `state`.
    fn allocation_event(&mut self, pool: usize, id: String, state: AllocationState, note: Option<String>) {
        let pool = self.pools[pool].config.name.clone();
        self.actions.push(Action::Scheduler(Control::Event(EventKind::Allocation { pool, id, state, note })));
    }

    fn polled(&mut self, now: Instant, r: Result<HashMap<String, AllocationState>, String>) {
        self.polling = false;
        let states = match r {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("polling the allocations failed: {e}");
                for p in &mut self.pools {
                    p.error = Some(format!("polling failed (states shown are the last known): {e}"));
                }
                let (pool, message) = (self.pools[0].config.name.clone(), format!("polling failed: {e}"));
                self.actions.push(Action::Scheduler(Control::Event(EventKind::BatchError { pool, message })));
                return;
            }
        };
        for p in &mut self.pools {
            if p.error.as_deref().is_some_and(|e| e.starts_with("polling failed")) {
                p.error = None;
            }
        }
        let mut failed = Vec::new();
        let mut changed = Vec::new();
        for (seq, a) in &mut self.allocs {
            let Some(s) = a.id.as_ref().and_then(|id| states.get(id)) else { continue };
            if *s == a.state || !a.state.is_active() {
                continue;
            }
            // A worker that joined says more than a poll that lags behind it.
            if *s == AllocationState::Pending && a.ever_joined {
                continue;
            }
            tracing::info!(job = ?a.id, from = %a.state, to = %s, "allocation state changed");
            a.state = *s;
            changed.push((a.pool, a.id.clone().unwrap_or_default(), *s));
            if !s.is_active() && !a.ever_joined && !a.cancel_sent {
                failed.push(*seq);
            }
        }
        changed.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (pool, id, state) in changed {
            self.allocation_event(pool, id, state, None);
        }
        for seq in failed {
            let a = &self.allocs[&seq];
            let (pool, id) = (a.pool, a.id.clone().expect("polled"));
            self.actions.push(Action::Explain(id.clone()));
            let what = if self.unit == "job" { "batch job" } else { "worker process" };
            self.failed(now, pool, format!("{what} {id} ended before its worker joined"));
        }
        self.forget_old();
    }

    /// Keeps the last few ended allocations of each pool, for `status`.
    fn forget_old(&mut self) {
        for pool in 0..self.pools.len() {
            let ended: Vec<u64> =
                self.allocs.iter().filter(|(_, a)| a.pool == pool && !a.state.is_active()).map(|(s, _)| *s).collect();
            for seq in ended.iter().take(ended.len().saturating_sub(ENDED_KEPT)) {
                let a = self.allocs.remove(seq).expect("present");
                self.by_launch.remove(&a.launch);
                if let Some(id) = a.id {
                    self.by_id.remove(&id);
                }
            }
        }
    }

    /// Polls, reconciles fixed pools, asks for observations for adaptive ones.
    fn step(&mut self, now: Instant) {
        if self.shutting_down {
            return;
        }
        if now >= self.next_poll && !self.polling {
            self.next_poll = now + self.poll_interval;
            let ids: Vec<String> =
                self.allocs.values().filter(|a| a.state.is_active()).filter_map(|a| a.id.clone()).collect();
            if !ids.is_empty() {
                self.polling = true;
                self.actions.push(Action::Poll(ids));
            }
        }
        let mut observe = false;
        for i in 0..self.pools.len() {
            match &self.pools[i].mode {
                Mode::Fixed(target) => {
                    let target = *target;
                    self.reconcile(now, i, target);
                }
                Mode::Adaptive(_) => {
                    if self.pools[i].next_decision.is_some_and(|t| now >= t) {
                        observe = true;
                    }
                }
            }
        }
        if observe && !self.observing {
            self.observing = true;
            self.actions.push(Action::Scheduler(Control::Observe));
        }
    }

    fn submit(&mut self, now: Instant, pool: usize) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let launch = format!("{}/{seq}", self.pools[pool].config.name);
        self.by_launch.insert(launch.clone(), seq);
        self.allocs.insert(seq, Alloc::new(pool, launch.clone(), now));
        self.actions.push(Action::Submit { seq, pool: self.pools[pool].config.name.clone(), launch });
    }

    /// Asks the scheduler to retire every worker of allocation `seq` (all or none).
    fn retire(&mut self, seq: u64) {
        let token = self.next_token;
        self.next_token += 1;
        let a = self.allocs.get_mut(&seq).expect("present");
        a.retire_token = Some(token);
        let workers = a.workers.iter().copied().collect();
        self.actions.push(Action::Scheduler(Control::Retire { token, workers }));
    }

    fn cancel_queued(&mut self, seqs: &[u64]) {
        let mut ids = Vec::new();
        for s in seqs {
            let a = self.allocs.get_mut(s).expect("present");
            a.cancel_sent = true;
            ids.extend(a.id.clone());
        }
        if !ids.is_empty() {
            tracing::info!(jobs = ?ids, "cancelling queued allocations");
            self.actions.push(Action::Cancel(ids));
        }
    }

    /// Brings a pool that is not adapting to `target` allocations.
    fn reconcile(&mut self, now: Instant, pool: usize, target: u32) {
        let counted: Vec<u64> =
            self.allocs.iter().filter(|(_, a)| a.pool == pool && a.counts()).map(|(s, _)| *s).collect();
        let have = counted.len() as u32;
        let p = &self.pools[pool];
        if have < target {
            if p.paused || p.retry_at.is_some_and(|t| t > now) {
                return;
            }
            for _ in have..target {
                self.submit(now, pool);
            }
            return;
        }
        let mut surplus = (have - target) as usize;
        if surplus == 0 {
            return;
        }
        // Queued ones first (newest first; those still being submitted wait for their id).
        let queued: Vec<u64> = counted
            .iter()
            .rev()
            .filter(|s| self.allocs[s].queued() && self.allocs[s].id.is_some())
            .take(surplus)
            .copied()
            .collect();
        surplus -= queued.len();
        self.cancel_queued(&queued);
        // Then running ones, newest first, through the scheduler: all their workers or none.
        let running: Vec<u64> = counted
            .iter()
            .rev()
            .filter(|s| {
                let a = &self.allocs[s];
                !a.queued() && a.id.is_some() && a.refused_at.is_none_or(|t| now.duration_since(t) >= RETIRE_RETRY)
            })
            .take(surplus)
            .copied()
            .collect();
        for seq in running {
            let a = &self.allocs[&seq];
            if a.workers.is_empty() {
                // Running, but no worker of it has joined yet: nothing can be lost.
                self.cancel_queued(&[seq]);
            } else {
                self.retire(seq);
            }
        }
    }

    /// One adaptive decision for every adaptive pool whose time has come.
    fn adapt(&mut self, now: Instant, status: &ClusterStatus) {
        let workers: HashMap<WorkerId, &rdask::protocol::WorkerStatus> =
            status.workers.iter().map(|w| (w.id, w)).collect();
        for i in 0..self.pools.len() {
            if self.pools[i].next_decision.is_none_or(|t| now < t) {
                continue;
            }
            let jobs: Vec<JobView> = self
                .allocs
                .values()
                .filter(|a| a.pool == i && a.counts())
                .map(|a| JobView {
                    id: a.launch.clone(),
                    pending: a.queued(),
                    workers: a
                        .workers
                        .iter()
                        .filter_map(|w| workers.get(w))
                        .map(|w| WorkerView {
                            id: w.id,
                            busy: w.assigned > 0,
                            retiring: w.retiring,
                            ends_in: w.ends_in_ms.map(Duration::from_millis),
                        })
                        .collect(),
                })
                .collect();
            let load = pool_load(&self.pools, i, &status.load);
            let obs = Observation { load, jobs };
            let Mode::Adaptive(policy) = &mut self.pools[i].mode else { continue };
            let d = policy.decide(now, &obs);
            let interval = Duration::from_secs_f64(policy.spec.interval.max(0.01));
            let reason = d.reason.clone();
            let p = &mut self.pools[i];
            if p.decided.as_ref().is_none_or(|(t, r)| *r != d.reason || *t != d.target) {
                tracing::info!(pool = %p.config.name, target = d.target, "adaptive: {}", d.reason);
                let (pool, target, reason) = (p.config.name.clone(), d.target, d.reason.clone());
                self.actions.push(Action::Scheduler(Control::Event(EventKind::Adapt { pool, target, reason })));
            }
            let p = &mut self.pools[i];
            p.decided = Some((d.target, reason));
            p.next_decision = Some(now + interval);
            for _ in 0..d.submit {
                self.submit(now, i);
            }
            let seq_of = |launch: &String| self.by_launch.get(launch).copied();
            let cancel: Vec<u64> = d.cancel.iter().filter_map(seq_of).collect();
            let retire: Vec<u64> = d.retire.iter().filter_map(seq_of).collect();
            self.cancel_queued(&cancel);
            for seq in retire {
                self.retire(seq);
            }
        }
    }

    /// What `status` shows.
    pub fn status(&self, now: Instant) -> ProvisioningStatus {
        let pools = self
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let jobs = self
                    .allocs
                    .values()
                    .filter(|a| a.pool == i && (a.id.is_some() || a.state.is_active()))
                    .map(|a| AllocationStatus {
                        id: a.id.clone().unwrap_or_default(),
                        launch: a.launch.clone(),
                        state: a.state,
                        workers: a.workers.iter().copied().collect(),
                        age_ms: now.duration_since(a.submitted_at).as_millis() as u64,
                        note: a.note.clone(),
                    })
                    .collect();
                let (target, adapt) = match &p.mode {
                    Mode::Fixed(n) => (Some(*n), None),
                    Mode::Adaptive(policy) => {
                        let (target, mut reason) = p.decided.clone().unwrap_or((
                            0,
                            format!("first decision within {} s", policy.spec.interval),
                        ));
                        // Paused since the last decision, maybe: say so now.
                        if policy.paused() && !reason.contains("PAUSED") {
                            reason += &policy.pause_note();
                        }
                        (None, Some(AdaptState { spec: policy.spec.clone(), target, reason, paused: policy.paused() }))
                    }
                };
                let mut error = p.error.clone();
                if p.paused {
                    error = Some(format!(
                        "submission PAUSED after {} failures (last: {}); fix the cause and run `rdask-jobqueue scale` again",
                        p.failures,
                        p.error.as_deref().unwrap_or("unknown")
                    ));
                }
                PoolStatus {
                    name: p.config.name.clone(),
                    unit: self.unit.to_string(),
                    workers_per_job: p.config.shape.workers,
                    slots: p.config.shape.slots,
                    offer: p.config.offer.clone(),
                    target,
                    adapt,
                    jobs,
                    error,
                }
            })
            .collect();
        ProvisioningStatus { backend: self.backend.clone(), pools }
    }

    /// Tells the scheduler what `status` shows, when it changed (ages aside).
    fn publish(&mut self, now: Instant, always: bool) {
        let st = self.status(now);
        let same = self.published.as_ref().is_some_and(|p| {
            let strip = |s: &ProvisioningStatus| {
                let mut s = s.clone();
                s.pools.iter_mut().flat_map(|p| p.jobs.iter_mut()).for_each(|j| j.age_ms = 0);
                s
            };
            strip(p) == strip(&st)
        });
        if always || !same {
            self.published = Some(st.clone());
            self.actions.push(Action::Scheduler(Control::Provisioning(st)));
        }
    }
}

/// The work pool `i` adapts to: what its workers could run, and of the work that needs nothing
/// special (no GPU, memory or named resource), only what pools without GPUs are there for. So
/// GPU tasks grow the GPU pool alone, and CPU tasks grow the CPU pools, not the GPU pool, when
/// there is a CPU pool.
fn pool_load(pools: &[Pool], i: usize, load: &[rdask::protocol::KindLoad]) -> Vec<rdask::protocol::KindLoad> {
    let offer = &pools[i].config.offer;
    let cpu_pool_exists = pools.iter().any(|p| p.config.offer.gpus.is_empty());
    load.iter()
        .filter(|l| {
            if l.needs.is_empty() {
                offer.gpus.is_empty() || !cpu_pool_exists
            } else {
                offer.could_hold(&l.needs).is_ok()
            }
        })
        .cloned()
        .collect()
}
