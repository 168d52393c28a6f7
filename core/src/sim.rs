//! `SimCluster`: the real sans-IO [`Scheduler`] driven by simulated workers under a simulated
//! clock, to measure what the scheduler costs and how good its decisions are at scales no test
//! machine can start (10,000 workers, 10M tasks).
//!
//! Everything the scheduler sees is what a driver would give it: worker registrations,
//! heartbeats, `Finished` batches, `InputMissing`, disconnections and ticks, each at its
//! simulated time (an event queue ordered by time, then by the order events were queued). The
//! workers are simulated: a worker runs up to its slots' worth of the tasks it was sent, in the
//! order it got them, each for the duration the [`Shape`] gives it after fetching its inputs from
//! their holders (at [`SimConfig::bandwidth`]), and reports the tasks that ended at one instant
//! in one `Finished`. Messages take [`SimConfig::latency`] each way.
//!
//! What is measured: the thread CPU time spent inside [`Scheduler::handle`] only (not the
//! simulation's bookkeeping), split by what the event was; the live heap bytes the scheduler keeps
//! per queued task (when the embedding passes a counter of its allocator's live bytes, see
//! [`SimConfig::live_bytes`]); the makespan against the ideal (total work ÷ slots, and the
//! critical path); the bytes moved between workers. It checks what it can see: every task run
//! once when nothing fails, no task started before its inputs finished, inputs named as the job
//! declared them (see [`Report::violations`]).
//!
//! With [`SimConfig::wire`] every message goes through the real codec, as the `Sim` tests of
//! `scheduler/tests.rs` do; the benchmark leaves it off, since it measures `handle` alone.
//! The scheduler is ticked once per heartbeat interval rather than at `next_deadline()` (which
//! scans every worker; the driver asks it once per turn): a heartbeat timeout is noticed at most
//! one interval late.
//!
//! Built for tests and with the `sim` feature (the benchmark's `--only sim`).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustc_hash::FxHashSet;

use crate::protocol::{
    self, Assignment, ClientInfo, CommandSpec, Finished, JobId, JobOutcome, JobSpec, JobTasks, Needs, Offer, Reply,
    Request, TaskBody, TaskId, TaskRef, TaskSpec, ToClient, ToScheduler, ToWorker, Work, WorkerId, WorkerInfo,
};
use crate::scheduler::{Command, Config, ConnId, Event, Scheduler};

/// What one job's tasks are: how many, their inputs, how long each runs and how big its result is.
/// Inputs are computed, not stored, so a 10M-task workload costs the simulation little memory.
pub trait Shape {
    /// How many tasks.
    fn tasks(&self) -> u32;
    /// Task `i`'s inputs (indices below `i`), appended to `out`.
    fn deps(&self, _i: u32, _out: &mut Vec<u32>) {}
    /// How long task `i` runs, in microseconds.
    fn duration_us(&self, i: u32) -> u64;
    /// The size of task `i`'s result in bytes (moved when a task on another worker needs it).
    fn size(&self, _i: u32) -> u64 {
        0
    }
    /// Which of the job's functions task `i` calls (graph jobs).
    fn func(&self, _i: u32) -> u32 {
        0
    }
    /// Whether the client keeps task `i`'s result.
    fn keep(&self, _i: u32) -> bool {
        false
    }
}

/// One job of a workload.
pub struct SimJob {
    /// Its name (the kind of an array's tasks).
    pub name: String,
    /// Its functions: empty for a command array, else a graph of function tasks.
    pub functions: Vec<String>,
    /// Its tasks.
    pub shape: Box<dyn Shape>,
}

impl SimJob {
    /// The job as a client submits it.
    pub fn spec(&self) -> JobSpec {
        let n = self.shape.tasks();
        let (command, tasks) = if self.functions.is_empty() {
            let cmd = CommandSpec {
                argv: vec!["true".into()],
                env: vec![],
                cwd: None,
                stdout: None,
                stderr: None,
                stream: None,
            };
            (Some(cmd), JobTasks::Array { ranges: vec![(0, n - 1)], cpus: 1, needs: Needs::default() })
        } else {
            let mut deps = Vec::new();
            let specs = (0..n)
                .map(|i| {
                    deps.clear();
                    self.shape.deps(i, &mut deps);
                    TaskSpec {
                        body: TaskBody::Function { func: self.shape.func(i), args: Bytes::new() },
                        deps: deps.iter().map(|&d| TaskRef::Local(d)).collect(),
                        keep: self.shape.keep(i),
                        cpus: 1,
                        needs: Needs::default(),
                    }
                })
                .collect();
            (None, JobTasks::Graph(specs))
        };
        JobSpec {
            name: self.name.clone(),
            functions: self.functions.clone(),
            command,
            tasks,
            max_attempts: 3,
            release_on_disconnect: false,
        }
    }
}

/// A named set of jobs, submitted together before the workers join.
pub struct Workload {
    /// Its name, for tables.
    pub name: String,
    /// Its jobs, submitted in order.
    pub jobs: Vec<SimJob>,
}

/// A worker failing at a simulated time.
#[derive(Clone, Copy, Debug)]
pub struct Failure {
    /// When, after the workers joined.
    pub at: Duration,
    /// Which worker (in registration order, from 0).
    pub worker: usize,
    /// `true`: it goes silent (found out by the heartbeat timeout); `false`: its connection breaks.
    pub silent: bool,
}

/// How the cluster is simulated.
pub struct SimConfig {
    /// Workers, all joining at time 0.
    pub workers: usize,
    /// Slots per worker.
    pub slots: u16,
    /// One-way message latency between the scheduler and a worker.
    pub latency: Duration,
    /// Worker-to-worker bandwidth for inputs, in bytes per second.
    pub bandwidth: f64,
    /// The scheduler's configuration.
    pub scheduler: Config,
    /// Workers that fail.
    pub failures: Vec<Failure>,
    /// Round-trip every message through the wire codec.
    pub wire: bool,
    /// Reads the live heap bytes of the process (a counting allocator's), for memory per task.
    /// With it, the workload is submitted before the workers join (every task queued); without,
    /// after.
    pub live_bytes: Option<fn() -> u64>,
    /// Gives up after this much simulated time.
    pub limit: Duration,
}

impl SimConfig {
    /// `workers` workers of `slots` slots, 50 µs latency, 1 GB/s between workers, no failures.
    pub fn new(workers: usize, slots: u16) -> SimConfig {
        SimConfig {
            workers,
            slots,
            latency: Duration::from_micros(50),
            bandwidth: 1e9,
            scheduler: Config::default(),
            failures: Vec::new(),
            wire: false,
            live_bytes: None,
            limit: Duration::from_secs(30 * 86_400),
        }
    }
}

/// Scheduler CPU time, by what it was handling.
#[derive(Clone, Debug, Default)]
pub struct Cpu {
    /// Submitting the workload.
    pub submit: Duration,
    /// Workers registering.
    pub register: Duration,
    /// `Finished` batches (and the placement that follows them).
    pub finished: Duration,
    /// Heartbeats.
    pub heartbeat: Duration,
    /// Ticks, disconnections, `InputMissing` and the rest.
    pub other: Duration,
    /// `handle` calls.
    pub calls: u64,
}

impl Cpu {
    /// Everything but submission and registration: running the workload.
    pub fn run(&self) -> Duration {
        self.finished + self.heartbeat + self.other
    }
}

/// What a simulation found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Tasks in the workload.
    pub tasks: u64,
    /// Task assignments the scheduler made (reruns included): its decisions.
    pub decisions: u64,
    /// Scheduler CPU time inside `handle`.
    pub cpu: Cpu,
    /// Live heap bytes the scheduler kept per queued task after the submission (if measured).
    pub bytes_per_task: Option<f64>,
    /// From the workers joining to the last job's end (simulated).
    pub makespan: Duration,
    /// Total work ÷ total slots.
    pub ideal_work: Duration,
    /// The longest chain of durations through the graph.
    pub critical_path: Duration,
    /// The makespan of a zero-latency greedy list schedule of the same tasks on the same slots
    /// ([`greedy_makespan`]): what a scheduler that knows no durations reaches at best by
    /// handing the first ready task to the first free slot, with free messages and inputs.
    pub greedy: Duration,
    /// Input bytes fetched from another worker.
    pub bytes_moved: u64,
    /// Time tasks waited in workers' queues, in all (from arriving to starting or being found
    /// without an input).
    pub queued: Duration,
    /// Tasks run more than once.
    pub reruns: u64,
    /// Tasks never finished.
    pub never_run: u64,
    /// Tasks started before an input finished, or given other inputs than declared.
    pub violations: u64,
    /// The jobs' outcomes, in submission order (`None`: not ended).
    pub outcomes: Vec<Option<JobOutcome>>,
    /// Whether every job ended before the queue ran dry or the limit.
    pub completed: bool,
    /// Simulated events processed.
    pub events: u64,
}

impl Report {
    /// The ideal makespan: the larger of total work ÷ slots and the critical path.
    pub fn ideal(&self) -> Duration {
        self.ideal_work.max(self.critical_path)
    }

    /// Makespan ÷ ideal.
    pub fn quality(&self) -> f64 {
        self.makespan.as_secs_f64() / self.ideal().as_secs_f64().max(1e-9)
    }

    /// Makespan ÷ the greedy schedule's ([`Report::greedy`]): the part of the gap to the ideal
    /// that is the scheduler's, not the workload's (above 1: worse than greedy).
    pub fn over_greedy(&self) -> f64 {
        self.makespan.as_secs_f64() / self.greedy.as_secs_f64().max(1e-9)
    }

    /// Scheduler CPU per decision while running the workload (registration excluded), in µs.
    pub fn us_per_decision(&self) -> f64 {
        self.cpu.run().as_secs_f64() * 1e6 / (self.decisions.max(1) as f64)
    }
}

enum Ev {
    /// A message reaches the scheduler.
    ToScheduler(ConnId, ToScheduler),
    /// A message reaches worker `w`.
    ToWorker(usize, ToWorker),
    /// A task ends on worker `w` (in its life `epoch`).
    Done {
        w: usize,
        epoch: u32,
        task: TaskId,
        cpus: u32,
        duration_us: u32,
    },
    /// Worker `w` reports what ended at this instant.
    Flush(usize),
    Heartbeat(usize),
    Tick,
    Fail(Failure),
}

struct Entry {
    t: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Entry) -> bool {
        (self.t, self.seq) == (o.t, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Entry) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    // Reversed: `BinaryHeap` is a max-heap and the earliest event comes first.
    fn cmp(&self, o: &Entry) -> Ordering {
        (o.t, o.seq).cmp(&(self.t, self.seq))
    }
}

struct SimWorker {
    conn: ConnId,
    id: WorkerId,
    slots: u32,
    busy: u32,
    /// Tasks sent to it and not started, with when they arrived.
    queue: VecDeque<(Assignment, u64)>,
    held: FxHashSet<TaskId>,
    alive: bool,
    epoch: u32,
    ended: Vec<Finished>,
    /// The heartbeat interval the scheduler told it (`Welcome`, `Pace`).
    beat: Duration,
}

/// Job-level facts the simulation needs, by submission order.
struct JobFacts {
    id: JobId,
    /// Times each task finished (reruns count).
    runs: Vec<u8>,
}

/// The thread's CPU clock.
fn cpu_now() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).expect("the thread CPU clock");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// What one reading of the CPU clock adds to a measured interval, to take it out again.
fn clock_cost() -> Duration {
    let n = 2000u32;
    let start = cpu_now();
    for _ in 0..n {
        std::hint::black_box(cpu_now());
    }
    (cpu_now() - start) / n
}

fn wire<T: serde::Serialize + serde::de::DeserializeOwned>(on: bool, msg: T) -> T {
    if on {
        protocol::decode(&protocol::encode(&msg)).expect("a message we encoded decodes")
    } else {
        msg
    }
}

/// The simulation: a scheduler, its workers, a clock and the queue of what happens next.
pub struct SimCluster<'a> {
    config: SimConfig,
    workload: &'a Workload,
    sched: Scheduler,
    origin: Instant,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Entry>,
    workers: Vec<SimWorker>,
    jobs: Vec<JobFacts>,
    client: ConnId,
    next_req: u64,
    /// Jobs by request number of their `Wait`, and those still waited for.
    waits: Vec<(u64, usize)>,
    pending: usize,
    report: Report,
    clock_cost: Duration,
    deps: Vec<u32>,
}

impl<'a> SimCluster<'a> {
    /// A cluster about to run `workload`.
    // The simulated clock starts at a real instant: `Instant` has no other constructor.
    #[allow(clippy::disallowed_methods)]
    pub fn new(config: SimConfig, workload: &'a Workload) -> SimCluster<'a> {
        let sched = Scheduler::new(config.scheduler.clone());
        SimCluster {
            config,
            workload,
            sched,
            origin: Instant::now(),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            workers: Vec::new(),
            jobs: Vec::new(),
            client: 1,
            next_req: 1,
            waits: Vec::new(),
            pending: 0,
            report: Report::default(),
            clock_cost: clock_cost(),
            deps: Vec::new(),
        }
    }

    fn at(&mut self, delay: Duration, ev: Ev) {
        self.seq += 1;
        let t = self.now + delay.as_micros() as u64;
        self.queue.push(Entry { t, seq: self.seq, ev });
    }

    /// Hands one event to the scheduler, timing `handle` alone, and carries out its commands.
    fn handle(&mut self, event: Event) -> Duration {
        let now = self.origin + Duration::from_micros(self.now);
        let start = cpu_now();
        self.sched.handle(now, event);
        let spent = (cpu_now() - start).saturating_sub(self.clock_cost);
        self.report.cpu.calls += 1;
        for cmd in self.sched.take_commands() {
            self.command(cmd);
        }
        spent
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::ToWorker(conn, msg) => {
                let msg = wire(self.config.wire, msg);
                match &msg {
                    ToWorker::Compute(list) => self.report.decisions += list.len() as u64,
                    // Nothing a simulated worker acts on (it finds its peers by id): not queued.
                    ToWorker::Peers(_) | ToWorker::Ack | ToWorker::Command(..) => return,
                    _ => {}
                }
                let w = (conn - 2) as usize;
                let latency = self.config.latency;
                self.at(latency, Ev::ToWorker(w, msg));
            }
            Command::ToClient(_, ToClient::Reply { req, body }) => match wire(self.config.wire, body) {
                Reply::Submitted(id) => self.jobs.push(JobFacts { id, runs: Vec::new() }),
                Reply::JobDone(outcome) => {
                    if let Some(k) = self.waits.iter().position(|(r, _)| *r == req) {
                        let (_, job) = self.waits.swap_remove(k);
                        self.report.outcomes[job] = Some(outcome);
                        self.pending -= 1;
                        self.report.makespan = Duration::from_micros(self.now);
                    }
                }
                other => panic!("unexpected reply {other:?}"),
            },
            // The scheduler gave up on a worker (a heartbeat timeout): it is gone for the simulation too.
            Command::Close(conn) => self.kill((conn - 2) as usize),
            Command::ToClient(..) | Command::Exit | Command::Notify(_) | Command::Journal(_) => {}
        }
    }

    fn request(&mut self, body: Request) -> u64 {
        let req = self.next_req;
        self.next_req += 1;
        let msg = wire(self.config.wire, ToScheduler::Request { req, body });
        let spent = self.handle(Event::Message(self.client, msg));
        self.report.cpu.submit += spent;
        req
    }

    /// Submits the workload, registers the workers and runs until every job ended.
    pub fn run(mut self) -> Report {
        self.handle(Event::Connected(self.client));
        self.handle(Event::Message(self.client, ToScheduler::RegisterClient(ClientInfo::default())));
        // Measuring memory, the workload is submitted before any worker joins, so that every
        // task is queued; otherwise once all have joined, as on a cluster that is up (workers
        // joining one by one would each take a full queue of the tasks).
        let measure = self.config.live_bytes;
        if measure.is_none() {
            self.register_workers();
        }
        let before = measure.map(|f| f());
        for sj in &self.workload.jobs {
            let spec = sj.spec();
            self.request(Request::Submit(Box::new(spec)));
        }
        if let (Some(before), Some(f)) = (before, measure) {
            // The specs were built and consumed inside the measurement: what is left is the scheduler's.
            let tasks: u64 = self.workload.jobs.iter().map(|j| u64::from(j.shape.tasks())).sum();
            self.report.bytes_per_task = Some((f() as f64 - before as f64) / tasks as f64);
        }
        assert_eq!(self.jobs.len(), self.workload.jobs.len(), "every job of the workload is accepted");
        self.report.outcomes = vec![None; self.jobs.len()];
        for k in 0..self.jobs.len() {
            self.jobs[k].runs = vec![0; self.workload.jobs[k].shape.tasks() as usize];
            let req = self.request(Request::Wait(self.jobs[k].id));
            self.waits.push((req, k));
        }
        self.pending = self.jobs.len();
        self.ideal();
        if measure.is_some() {
            self.register_workers();
        }
        let interval = self.config.scheduler.heartbeat_interval;
        self.at(interval, Ev::Tick);
        for f in self.config.failures.clone() {
            self.at(f.at, Ev::Fail(f));
        }
        let limit = self.config.limit.as_micros() as u64;
        while self.pending > 0 {
            let Some(e) = self.queue.pop() else { break };
            if e.t > limit {
                break;
            }
            self.now = e.t;
            self.report.events += 1;
            self.step(e.ev);
        }
        self.report.completed = self.pending == 0;
        self.tally();
        self.report
    }

    fn register_workers(&mut self) {
        let interval = self.config.scheduler.heartbeat_interval;
        for w in 0..self.config.workers {
            let conn = 2 + w as ConnId;
            self.handle(Event::Connected(conn));
            self.workers.push(SimWorker {
                conn,
                id: WorkerId(0),
                slots: u32::from(self.config.slots.max(1)),
                busy: 0,
                queue: VecDeque::new(),
                held: FxHashSet::default(),
                alive: true,
                epoch: 0,
                ended: Vec::new(),
                beat: interval,
            });
            let info = WorkerInfo {
                slots: self.config.slots,
                host: format!("node{w}"),
                pid: 1,
                launch: None,
                data_address: format!("tcp://node{w}:1"),
                lifetime_ms: None,
                offer: Offer::default(),
                resume: None,
            };
            let msg = wire(self.config.wire, ToScheduler::RegisterWorker(info));
            let spent = self.handle(Event::Message(conn, msg));
            self.report.cpu.register += spent;
            // Heartbeats spread over the interval, as workers starting at different times send them.
            let phase = interval.mul_f64((w as f64 + 0.5) / self.config.workers as f64);
            self.at(phase, Ev::Heartbeat(w));
        }
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::ToScheduler(conn, msg) => {
                let w = (conn - 2) as usize;
                if conn >= 2 && !self.workers[w].alive {
                    return; // sent before it died, arriving after its connection broke
                }
                let kind = match &msg {
                    ToScheduler::Finished(_) => 0,
                    ToScheduler::Heartbeat { .. } => 1,
                    _ => 2,
                };
                let msg = wire(self.config.wire, msg);
                let spent = self.handle(Event::Message(conn, msg));
                match kind {
                    0 => self.report.cpu.finished += spent,
                    1 => self.report.cpu.heartbeat += spent,
                    _ => self.report.cpu.other += spent,
                }
            }
            Ev::ToWorker(w, msg) => self.deliver(w, msg),
            Ev::Done { w, epoch, task, cpus, duration_us } => {
                let job = self.job_index(task.job);
                let sj = &self.workload.jobs[job];
                let worker = &mut self.workers[w];
                if !worker.alive || worker.epoch != epoch {
                    return;
                }
                worker.busy -= cpus;
                if !sj.functions.is_empty() {
                    worker.held.insert(task);
                }
                let size = sj.shape.size(task.index);
                if worker.ended.is_empty() {
                    self.at(Duration::ZERO, Ev::Flush(w));
                }
                self.workers[w].ended.push(Finished { id: task, size, duration_us });
                let runs = &mut self.jobs[job].runs[task.index as usize];
                *runs = runs.saturating_add(1);
                self.start(w);
            }
            Ev::Flush(w) => {
                if !self.workers[w].alive {
                    return;
                }
                let list = std::mem::take(&mut self.workers[w].ended);
                let conn = self.workers[w].conn;
                self.at(self.config.latency, Ev::ToScheduler(conn, ToScheduler::Finished(list)));
            }
            Ev::Heartbeat(w) => {
                if self.workers[w].alive {
                    let (conn, beat) = (self.workers[w].conn, self.workers[w].beat);
                    let interval_ms = beat.as_millis() as u64;
                    let msg = ToScheduler::Heartbeat { load: Default::default(), ack: false, interval_ms };
                    self.at(self.config.latency, Ev::ToScheduler(conn, msg));
                    self.at(beat, Ev::Heartbeat(w));
                }
            }
            Ev::Tick => {
                let spent = self.handle(Event::Tick);
                self.report.cpu.other += spent;
                self.at(self.config.scheduler.heartbeat_interval, Ev::Tick);
            }
            Ev::Fail(f) => {
                let conn = self.workers[f.worker].conn;
                self.kill(f.worker);
                if !f.silent {
                    let spent = self.handle(Event::Disconnected(conn, "simulated failure".into()));
                    self.report.cpu.other += spent;
                }
            }
        }
    }

    fn kill(&mut self, w: usize) {
        let worker = &mut self.workers[w];
        worker.alive = false;
        worker.epoch += 1;
        worker.queue.clear();
        worker.held.clear();
        worker.ended.clear();
        worker.busy = 0;
    }

    /// The simulated worker that has scheduler id `id` (ids are given in registration order, from 1).
    fn worker_index(&self, id: WorkerId) -> Option<usize> {
        let guess = (id.0 as usize).wrapping_sub(1);
        match self.workers.get(guess) {
            Some(w) if w.id == id => Some(guess),
            _ => self.workers.iter().position(|w| w.id == id),
        }
    }

    fn job_index(&self, job: JobId) -> usize {
        // Jobs are numbered in submission order from the first one's id.
        (job.0 - self.jobs[0].id.0) as usize
    }

    fn deliver(&mut self, w: usize, msg: ToWorker) {
        if !self.workers[w].alive {
            return;
        }
        let worker = &mut self.workers[w];
        match msg {
            ToWorker::Welcome { id, heartbeat_ms } => {
                (worker.id, worker.beat) = (id, Duration::from_millis(heartbeat_ms))
            }
            // Its next heartbeat, already queued, comes at the old interval, the following ones at this.
            ToWorker::Pace { heartbeat_ms } => worker.beat = Duration::from_millis(heartbeat_ms),
            ToWorker::Compute(list) => {
                let now = self.now;
                worker.queue.extend(list.into_iter().map(|a| (a, now)));
                self.start(w);
            }
            ToWorker::Release(ids) => {
                for id in ids {
                    worker.held.remove(&id);
                }
            }
            ToWorker::ReleaseJob(job) => worker.held.retain(|t| t.job != job),
            ToWorker::Stop => self.kill(w),
            ToWorker::Peers(_) | ToWorker::Command(..) | ToWorker::Ack | ToWorker::Replicate { .. } => {}
        }
    }

    /// Starts what worker `w` has queued while it has free slots.
    fn start(&mut self, w: usize) {
        while self.workers[w].busy < self.workers[w].slots {
            let Some((a, arrived)) = self.workers[w].queue.pop_front() else { return };
            self.report.queued += Duration::from_micros(self.now - arrived);
            let workload = self.workload;
            let shape = &workload.jobs[self.job_index(a.id.job)].shape;
            self.deps.clear();
            shape.deps(a.id.index, &mut self.deps);
            let declared = self.deps.iter().map(|&d| TaskId { job: a.id.job, index: d });
            if !declared.eq(a.inputs.iter().map(|(t, _)| *t)) {
                self.report.violations += 1;
            }
            let mut fetch = 0u64;
            let mut missing = None;
            for &(input, holder) in &a.inputs {
                if self.jobs[self.job_index(input.job)].runs[input.index as usize] == 0 {
                    self.report.violations += 1;
                }
                if holder == self.workers[w].id || holder == WorkerId(0) {
                    continue;
                }
                let from = self.worker_index(holder).filter(|&k| self.workers[k].alive);
                match from {
                    Some(k) if self.workers[k].held.contains(&input) => {
                        fetch += workload.jobs[self.job_index(input.job)].shape.size(input.index);
                    }
                    _ => {
                        missing = Some(input);
                        break;
                    }
                }
            }
            if let Some(input) = missing {
                let conn = self.workers[w].conn;
                self.at(self.config.latency, Ev::ToScheduler(conn, ToScheduler::InputMissing(a.id, input)));
                continue;
            }
            self.report.bytes_moved += fetch;
            let duration_us = shape.duration_us(a.id.index);
            let cpus = u32::from(a.cpus).clamp(1, self.workers[w].slots);
            debug_assert!(matches!(a.work, Work::Command { .. } | Work::Function { .. }));
            let worker = &mut self.workers[w];
            worker.busy += cpus;
            let epoch = worker.epoch;
            let took =
                Duration::from_secs_f64(fetch as f64 / self.config.bandwidth) + Duration::from_micros(duration_us);
            self.at(
                took,
                Ev::Done { w, epoch, task: a.id, cpus, duration_us: duration_us.min(u64::from(u32::MAX)) as u32 },
            );
        }
    }

    /// Total work ÷ slots, and the critical path (inputs precede their dependents by index).
    fn ideal(&mut self) {
        let mut work = 0u64;
        let mut longest = 0u64;
        let mut tasks = 0u64;
        for sj in &self.workload.jobs {
            let n = sj.shape.tasks();
            tasks += u64::from(n);
            let mut path: Vec<u64> = Vec::with_capacity(n as usize);
            let mut deps = Vec::new();
            for i in 0..n {
                deps.clear();
                sj.shape.deps(i, &mut deps);
                let d = sj.shape.duration_us(i);
                work += d;
                let p = d + deps.iter().map(|&k| path[k as usize]).max().unwrap_or(0);
                longest = longest.max(p);
                path.push(p);
            }
        }
        let slots = (self.config.workers as u64 * u64::from(self.config.slots.max(1))).max(1);
        self.report.tasks = tasks;
        self.report.ideal_work = Duration::from_micros(work / slots);
        self.report.critical_path = Duration::from_micros(longest);
        // Only the tasks' widths of one slot are simulated (every workload's tasks take one CPU).
        self.report.greedy = greedy_makespan(self.workload, slots);
    }

    fn tally(&mut self) {
        for j in &self.jobs {
            for &r in &j.runs {
                match r {
                    0 => self.report.never_run += 1,
                    1 => {}
                    _ => self.report.reruns += 1,
                }
            }
        }
    }
}

/// The makespan of a zero-latency greedy list schedule of `workload` on `slots` one-CPU slots:
/// whenever a slot is free, it starts the first ready task in submission order (jobs in order,
/// then tasks by index), a task being ready once its inputs ended; messages, input transfers and
/// the scheduler's decisions take no time. For independent tasks this is "in submission order
/// onto the earliest free slot". It is what a scheduler that does not know durations in advance
/// reaches at best without reordering, so `makespan ÷ greedy` shows how much of the gap to the
/// ideal is the scheduler's own when the ideal is out of reach (it is not a lower bound: another
/// order can do better).
pub fn greedy_makespan(workload: &Workload, slots: u64) -> Duration {
    use std::cmp::Reverse;
    // Tasks are numbered globally, job after job; `offsets[j]` is job j's first.
    let mut offsets = Vec::with_capacity(workload.jobs.len() + 1);
    let mut total = 0u64;
    for sj in &workload.jobs {
        offsets.push(total);
        total += u64::from(sj.shape.tasks());
    }
    offsets.push(total);
    let locate = |g: u64| {
        let j = offsets.partition_point(|&o| o <= g) - 1;
        (j, (g - offsets[j]) as u32)
    };
    // Dependents of each task (compressed rows) and the inputs each waits for; none are built
    // for a workload without dependencies (a 10M-task array).
    let mut deps = Vec::new();
    let mut waiting: Vec<u32> = Vec::new();
    let mut starts: Vec<u64> = Vec::new();
    let mut dependents: Vec<u64> = Vec::new();
    let has_deps = workload.jobs.iter().any(|sj| {
        (0..sj.shape.tasks()).any(|i| {
            deps.clear();
            sj.shape.deps(i, &mut deps);
            !deps.is_empty()
        })
    });
    if has_deps {
        waiting = vec![0; total as usize];
        starts = vec![0; total as usize + 1];
        for (j, sj) in workload.jobs.iter().enumerate() {
            for i in 0..sj.shape.tasks() {
                deps.clear();
                sj.shape.deps(i, &mut deps);
                waiting[(offsets[j] + u64::from(i)) as usize] = deps.len() as u32;
                for &d in &deps {
                    starts[(offsets[j] + u64::from(d)) as usize + 1] += 1;
                }
            }
        }
        for k in 1..starts.len() {
            starts[k] += starts[k - 1];
        }
        dependents = vec![0; starts[total as usize] as usize];
        let mut fill = starts.clone();
        for (j, sj) in workload.jobs.iter().enumerate() {
            for i in 0..sj.shape.tasks() {
                deps.clear();
                sj.shape.deps(i, &mut deps);
                for &d in &deps {
                    let from = (offsets[j] + u64::from(d)) as usize;
                    dependents[fill[from] as usize] = offsets[j] + u64::from(i);
                    fill[from] += 1;
                }
            }
        }
    }
    // Ready tasks: without dependencies, every task in submission order (a cursor, not a heap
    // of 10M); else those whose inputs ended, by number.
    let mut released: BinaryHeap<Reverse<u64>> = BinaryHeap::new();
    let mut cursor = if has_deps { total } else { 0 };
    if has_deps {
        released.extend((0..total).filter(|&g| waiting[g as usize] == 0).map(Reverse));
    }
    // Running tasks by end time.
    let mut running: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let (mut now, mut free, mut end) = (0u64, slots.max(1), 0u64);
    loop {
        while free > 0 {
            let g = if cursor < total {
                cursor += 1;
                Some(cursor - 1)
            } else {
                released.pop().map(|Reverse(g)| g)
            };
            let Some(g) = g else { break };
            let (j, i) = locate(g);
            let done = now + workload.jobs[j].shape.duration_us(i);
            running.push(Reverse((done, g)));
            end = end.max(done);
            free -= 1;
        }
        // Everything that ends at the next end time frees its slot and its dependents before
        // the slots are filled again.
        let Some(&Reverse((t, _))) = running.peek() else { break };
        now = t;
        while let Some(Reverse((_, g))) = running.peek().filter(|Reverse((e, _))| *e == t).copied() {
            running.pop();
            free += 1;
            if has_deps {
                for k in starts[g as usize]..starts[g as usize + 1] {
                    let d = dependents[k as usize];
                    waiting[d as usize] -= 1;
                    if waiting[d as usize] == 0 {
                        released.push(Reverse(d));
                    }
                }
            }
        }
    }
    Duration::from_micros(end)
}

/// A reproducible number in `[0, 1)` for task `i` of a stream `salt` (SplitMix64).
pub fn unit(salt: u64, i: u32) -> f64 {
    let mut z = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(i).wrapping_add(0x6A09_E667_F3BC_C909);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The workloads of the benchmark.
pub mod workloads {
    use super::{unit, Shape, SimJob, Workload};

    /// Independent tasks of `mean_us` ± 50 %.
    pub struct Array {
        /// Tasks.
        pub n: u32,
        /// Mean duration.
        pub mean_us: u64,
    }

    impl Shape for Array {
        fn tasks(&self) -> u32 {
            self.n
        }
        fn duration_us(&self, i: u32) -> u64 {
            (self.mean_us as f64 * (0.5 + unit(1, i))) as u64
        }
    }

    /// A command array of `n` tasks of 1 s ± 50 %.
    pub fn array(n: u32) -> Workload {
        let shape = Box::new(Array { n, mean_us: 1_000_000 });
        Workload { name: "array".into(), jobs: vec![SimJob { name: "array".into(), functions: vec![], shape }] }
    }

    /// A reduction tree: `leaves` leaf tasks (100 ms ± 50 %, 1 MiB results), reduced `fan_in` at a
    /// time (20 ms ± 50 %, 1 MiB) up to one root, whose result is kept.
    pub struct Tree {
        /// Offset and width of each level, leaves first.
        levels: Vec<(u32, u32)>,
        fan_in: u32,
    }

    impl Tree {
        /// A tree over `leaves` leaves.
        pub fn new(leaves: u32, fan_in: u32) -> Tree {
            let mut levels = vec![(0, leaves)];
            while let Some(&(o, w)) = levels.last().filter(|(_, w)| *w > 1) {
                levels.push((o + w, w.div_ceil(fan_in)));
            }
            Tree { levels, fan_in }
        }

        fn level(&self, i: u32) -> usize {
            self.levels.iter().rposition(|&(o, _)| o <= i).expect("level 0 starts at 0")
        }
    }

    impl Shape for Tree {
        fn tasks(&self) -> u32 {
            let (o, w) = *self.levels.last().expect("a level");
            o + w
        }
        fn deps(&self, i: u32, out: &mut Vec<u32>) {
            let k = self.level(i);
            if k == 0 {
                return;
            }
            let (o, _) = self.levels[k];
            let (po, pw) = self.levels[k - 1];
            let first = (i - o) * self.fan_in;
            out.extend((first..(first + self.fan_in).min(pw)).map(|j| po + j));
        }
        fn duration_us(&self, i: u32) -> u64 {
            let mean = if self.level(i) == 0 { 100_000.0 } else { 20_000.0 };
            (mean * (0.5 + unit(2, i))) as u64
        }
        fn size(&self, _i: u32) -> u64 {
            1 << 20
        }
        fn func(&self, i: u32) -> u32 {
            u32::from(self.level(i) > 0)
        }
        fn keep(&self, i: u32) -> bool {
            i + 1 == self.tasks()
        }
    }

    /// A reduction tree of about `n` tasks (binary, so `n / 2` leaves).
    pub fn tree(n: u32) -> Workload {
        let shape = Box::new(Tree::new((n / 2).max(1), 2));
        let functions = vec!["leaf".into(), "reduce".into()];
        Workload { name: "tree".into(), jobs: vec![SimJob { name: "tree".into(), functions, shape }] }
    }

    /// A chunked stencil, like the deconvolution's iterations: a `gx` × `gy` grid of chunks, each
    /// step's chunk depending on itself and its four neighbours at the step before; 1 s ± 10 %,
    /// 8 MiB results; the last step's results are kept.
    pub struct Stencil {
        /// Grid width.
        pub gx: u32,
        /// Grid height.
        pub gy: u32,
        /// Steps.
        pub steps: u32,
    }

    impl Shape for Stencil {
        fn tasks(&self) -> u32 {
            self.gx * self.gy * self.steps
        }
        fn deps(&self, i: u32, out: &mut Vec<u32>) {
            let plane = self.gx * self.gy;
            let (s, x, y) = (i / plane, i % plane % self.gx, i % plane / self.gx);
            if s == 0 {
                return;
            }
            let at = |x: u32, y: u32| (s - 1) * plane + y * self.gx + x;
            out.push(at(x, y));
            if x > 0 {
                out.push(at(x - 1, y));
            }
            if x + 1 < self.gx {
                out.push(at(x + 1, y));
            }
            if y > 0 {
                out.push(at(x, y - 1));
            }
            if y + 1 < self.gy {
                out.push(at(x, y + 1));
            }
        }
        fn duration_us(&self, i: u32) -> u64 {
            (1_000_000.0 * (0.9 + 0.2 * unit(3, i))) as u64
        }
        fn size(&self, _i: u32) -> u64 {
            8 << 20
        }
        fn keep(&self, i: u32) -> bool {
            i / (self.gx * self.gy) + 1 == self.steps
        }
    }

    /// A stencil of about `n` tasks: a square grid over 10 steps.
    pub fn stencil(n: u32) -> Workload {
        let side = ((f64::from(n) / 10.0).sqrt() as u32).max(2);
        let shape = Box::new(Stencil { gx: side, gy: side, steps: 10 });
        let functions = vec!["step".into()];
        Workload { name: "stencil".into(), jobs: vec![SimJob { name: "stencil".into(), functions, shape }] }
    }

    /// Short and long function tasks interleaved: every tenth is long (1 s ± 50 %), the rest
    /// short (10 ms ± 50 %); each a kind of its own; 1 KiB results, nothing kept.
    pub struct Mix {
        /// Tasks.
        pub n: u32,
    }

    impl Shape for Mix {
        fn tasks(&self) -> u32 {
            self.n
        }
        fn duration_us(&self, i: u32) -> u64 {
            let mean = if self.func(i) == 1 { 1_000_000.0 } else { 10_000.0 };
            (mean * (0.5 + unit(4, i))) as u64
        }
        fn size(&self, _i: u32) -> u64 {
            1024
        }
        fn func(&self, i: u32) -> u32 {
            u32::from(i % 10 == 9)
        }
    }

    /// A mix of `n` short and long tasks.
    pub fn mix(n: u32) -> Workload {
        let functions = vec!["short".into(), "long".into()];
        let shape = Box::new(Mix { n });
        Workload { name: "mix".into(), jobs: vec![SimJob { name: "mix".into(), functions, shape }] }
    }
}

#[cfg(test)]
mod tests {
    use super::workloads::{array, mix, stencil, tree, Tree};
    use super::*;

    fn run(workload: &Workload, workers: usize, failures: Vec<Failure>) -> Report {
        let mut config = SimConfig::new(workers, 4);
        config.wire = true;
        config.failures = failures;
        SimCluster::new(config, workload).run()
    }

    /// Every task ran exactly once, after its inputs, and every job finished without failures.
    fn assert_correct(r: &Report) {
        assert!(r.completed, "every job ended: {r:?}");
        assert_eq!(r.never_run, 0, "every task ran");
        assert_eq!(r.reruns, 0, "no task ran twice without a failure");
        assert_eq!(r.violations, 0, "no task started before its inputs, and inputs as declared");
        let outcomes: Vec<&JobOutcome> = r.outcomes.iter().flatten().collect();
        assert_eq!(outcomes.len(), r.outcomes.len(), "every job's outcome came");
        let finished: u64 = outcomes.iter().map(|o| u64::from(o.finished)).sum();
        assert_eq!(finished, r.tasks, "the scheduler counts every task finished");
        assert!(outcomes.iter().all(|o| o.failed.is_empty()), "no task failed");
        assert_eq!(r.decisions, r.tasks, "one assignment per task");
    }

    /// A workload given task by task: durations in seconds and inputs.
    struct Listed(Vec<(u64, Vec<u32>)>);

    impl Shape for Listed {
        fn tasks(&self) -> u32 {
            self.0.len() as u32
        }
        fn deps(&self, i: u32, out: &mut Vec<u32>) {
            out.extend(&self.0[i as usize].1);
        }
        fn duration_us(&self, i: u32) -> u64 {
            self.0[i as usize].0 * 1_000_000
        }
    }

    fn listed(jobs: Vec<Vec<(u64, Vec<u32>)>>) -> Workload {
        let jobs = jobs
            .into_iter()
            .map(|tasks| SimJob { name: "listed".into(), functions: vec!["f".into()], shape: Box::new(Listed(tasks)) })
            .collect();
        Workload { name: "listed".into(), jobs }
    }

    #[test]
    fn greedy_schedule_of_independent_tasks_fills_the_earliest_free_slot_in_order() {
        // Two slots: 3 s on the first; 1 s, 1 s, then 2 s on the second (free first each time):
        // 4 s, where total work ÷ slots is 3.5 s.
        let w = listed(vec![vec![(3, vec![]), (1, vec![]), (1, vec![]), (2, vec![])]]);
        assert_eq!(greedy_makespan(&w, 2), Duration::from_secs(4));
        // The same tasks as two jobs: submission order runs across jobs.
        let w = listed(vec![vec![(3, vec![]), (1, vec![])], vec![(1, vec![]), (2, vec![])]]);
        assert_eq!(greedy_makespan(&w, 2), Duration::from_secs(4));
        // Greedy is not optimal: the long task last costs 5 s where 4 s would do.
        let w = listed(vec![vec![(1, vec![]), (1, vec![]), (1, vec![]), (1, vec![]), (3, vec![])]]);
        assert_eq!(greedy_makespan(&w, 2), Duration::from_secs(5));
        assert_eq!(greedy_makespan(&w, 1), Duration::from_secs(7), "one slot runs them end to end");
    }

    #[test]
    fn greedy_schedule_of_a_graph_waits_for_inputs_and_takes_the_first_ready_task() {
        // 0 (2 s) and 1 (1 s) start at once; at 1 s task 3 (needs 1) is the only one ready and
        // takes the free slot until 4 s; task 2 (needs 0) starts at 2 s, ends at 3 s: 4 s.
        let w = listed(vec![vec![(2, vec![]), (1, vec![]), (1, vec![0]), (3, vec![1])]]);
        assert_eq!(greedy_makespan(&w, 2), Duration::from_secs(4));
        // A chain runs end to end however many slots there are.
        let w = listed(vec![vec![(1, vec![]), (2, vec![0]), (3, vec![1])]]);
        assert_eq!(greedy_makespan(&w, 8), Duration::from_secs(6));
        // Tasks ending at the same instant free their dependents together: at 1 s, 0 and 1 end
        // and 2, 3 (needing 1) and 4 (needing 0) are ready; the first two in order, 2 and the
        // 3 s task 3, take the two slots, then 4: 4 s (taking 4 first, as if 0 ended alone,
        // would put 3 last: 5 s).
        let w = listed(vec![vec![(1, vec![]), (1, vec![]), (1, vec![1]), (3, vec![1]), (1, vec![0])]]);
        assert_eq!(greedy_makespan(&w, 2), Duration::from_secs(4));
    }

    #[test]
    fn the_report_says_how_far_the_scheduler_is_from_greedy() {
        let w = array(2_000);
        let r = run(&w, 10, vec![]);
        assert_eq!(r.greedy, greedy_makespan(&w, 40), "computed for the run's 10 workers × 4 slots");
        assert!(r.greedy >= r.ideal_work, "no schedule beats total work ÷ slots");
        assert!(r.over_greedy() > 0.9, "latency and decisions cost time: {:?} vs {:?}", r.makespan, r.greedy);
    }

    #[test]
    fn tree_shape_reduces_to_one_root() {
        let t = Tree::new(10, 2);
        // 10 leaves, then 5, 3, 2, 1.
        assert_eq!(t.tasks(), 21);
        let mut seen = [0u32; 21];
        for i in 0..21 {
            let mut d = Vec::new();
            t.deps(i, &mut d);
            assert!(d.iter().all(|&k| k < i), "inputs come first");
            for k in d {
                seen[k as usize] += 1;
            }
        }
        assert!(seen[..20].iter().all(|&n| n == 1), "every task but the root feeds exactly one other");
        assert_eq!(seen[20], 0);
    }

    #[test]
    fn every_workload_runs_each_task_once_after_its_inputs() {
        for (w, workers) in [(array(2_000), 10), (tree(2_000), 10), (stencil(1_000), 10), (mix(2_000), 10)] {
            let r = run(&w, workers, vec![]);
            assert_correct(&r);
            // Not a timing: simulated time against the best any schedule could do.
            assert!(
                r.quality() >= 0.99 && r.quality() < 2.0,
                "{}: makespan {:?} vs ideal {:?}",
                w.name,
                r.makespan,
                r.ideal()
            );
        }
    }

    #[test]
    fn graph_inputs_move_between_workers_and_a_single_worker_moves_none() {
        let w = stencil(1_000);
        let many = run(&w, 10, vec![]);
        assert!(many.bytes_moved > 0, "chunks on different workers need their neighbours");
        let one = run(&w, 1, vec![]);
        assert_correct(&one);
        assert_eq!(one.bytes_moved, 0, "one worker holds every input");
    }

    #[test]
    fn a_failed_workers_tasks_run_again() {
        for silent in [false, true] {
            for w in [array(2_000), stencil(1_000), tree(2_000)] {
                let failure = Failure { at: Duration::from_millis(1_500), worker: 3, silent };
                let r = run(&w, 10, vec![failure]);
                assert!(r.completed, "{}: every job ended despite the failure", w.name);
                assert_eq!(r.never_run, 0, "{}: every task ran", w.name);
                assert_eq!(r.violations, 0, "{}: inputs before dependents, also when recomputed", w.name);
                let ok =
                    |o: &Option<JobOutcome>| o.as_ref().is_some_and(|o| o.failed.is_empty() && o.finished == o.tasks);
                assert!(r.outcomes.iter().all(ok), "{}: every task finished, none failed", w.name);
                assert!(r.decisions > r.tasks, "{}: what the failed worker had was assigned again", w.name);
            }
        }
    }
}
