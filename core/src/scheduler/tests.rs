//! Unit tests of the scheduler state machine, driven by a simulated clock.
//!
//! [`Sim`] plays the driver (`crate::server`): it owns a [`Scheduler`] and a fake `now`, feeds it events and
//! records the commands it emits. Every message going in and every message coming out passes through the real
//! wire codec (`protocol::encode` then `protocol::decode`), so a codec regression breaks these tests too. The
//! helpers (`computes`, `releases`, `replies`, `closes`, ...) *remove* what they return from the recorded output,
//! so each assertion sees only what is new. After every event the harness checks that `next_deadline()` is never
//! later than a live worker's last message plus its heartbeat timeout (stretched as the longer of the interval
//! the scheduler told it and the one its last heartbeat kept is stretched from the base interval), and that the scheduler's indexes and counts
//! match a full scan of its tasks (`check.rs`). Time only moves with `advance`.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use super::placement::{DEPTH_LONG, DEPTH_SHORT};
use super::{Command, Config, ConnId, Control, Event, Notice, Scheduler};
use crate::protocol::{
    self, AdaptSpec, Assignment, Cancelled, ClientInfo, ClusterStatus, CommandSpec, ControlRequest, Counts, EndedPage,
    ErrorKind, Finished, Holding, JobId, JobOutcome, JobSpec, JobTasks, Needs, Offer, ProvisioningStatus, Refusal,
    RefusalKind, Reply, Request, ScaleTarget, TaskBody, TaskError, TaskId, TaskRef, TaskSpec, ToClient, ToScheduler,
    ToWorker, Work, WorkerId, WorkerInfo,
};

/// Encodes and decodes a message, as the transport would.
fn wire<T: Serialize + DeserializeOwned + PartialEq + Debug>(msg: T) -> T {
    let back: T = protocol::decode(&protocol::encode(&msg)).expect("a message we encoded decodes");
    assert_eq!(back, msg, "the wire round trip changed the message");
    back
}

struct Sim {
    sched: Scheduler,
    now: Instant,
    timeout: Duration,
    next_conn: ConnId,
    next_req: u64,
    /// What the scheduler emitted that no helper has taken yet, in order.
    out: Vec<Command>,
    /// Live worker connections and when each last sent something.
    seen: HashMap<ConnId, Instant>,
    /// The base heartbeat interval of the scheduler's config.
    base: Duration,
    /// Per worker connection: the heartbeat interval the scheduler told it last, and the one its
    /// last heartbeat said it keeps.
    paces: HashMap<ConnId, (Duration, Duration)>,
}

impl Sim {
    fn new() -> Sim {
        Sim::with(Config::default())
    }

    /// A scheduler with an embedding (a provisioner) that takes its notices.
    fn controlled() -> Sim {
        Sim::with(Config { controlled: true, ..Config::default() })
    }

    // The simulated clock starts at a real instant: `Instant` has no other constructor.
    #[allow(clippy::disallowed_methods)]
    fn with(config: Config) -> Sim {
        let (timeout, base) = (config.heartbeat_timeout, config.heartbeat_interval);
        let sched = Scheduler::new(config);
        let (seen, paces) = (HashMap::new(), HashMap::new());
        Sim { sched, now: Instant::now(), timeout, next_conn: 1, next_req: 1, out: vec![], seen, base, paces }
    }

    fn handle(&mut self, event: Event) {
        let event = match event {
            Event::Message(c, msg) => {
                if let Some(t) = self.seen.get_mut(&c) {
                    *t = self.now;
                }
                if let (ToScheduler::Heartbeat { interval_ms, .. }, Some(p)) = (&msg, self.paces.get_mut(&c)) {
                    p.1 = Duration::from_millis(*interval_ms);
                }
                Event::Message(c, wire(msg))
            }
            Event::Disconnected(c, why) => {
                self.seen.remove(&c);
                Event::Disconnected(c, why)
            }
            other => other,
        };
        self.sched.handle(self.now, event);
        self.sched.check_invariants();
        for cmd in self.sched.take_commands() {
            self.out.push(match cmd {
                Command::ToWorker(c, m) => {
                    match m {
                        ToWorker::Welcome { heartbeat_ms, .. } => {
                            let told = Duration::from_millis(heartbeat_ms);
                            self.paces.insert(c, (told, told));
                        }
                        ToWorker::Pace { heartbeat_ms } => {
                            if let Some(p) = self.paces.get_mut(&c) {
                                p.0 = Duration::from_millis(heartbeat_ms);
                            }
                        }
                        _ => {}
                    }
                    Command::ToWorker(c, wire(m))
                }
                Command::ToClient(c, m) => Command::ToClient(c, wire(m)),
                Command::Close(c) => {
                    self.seen.remove(&c);
                    Command::Close(c)
                }
                Command::Exit => Command::Exit,
                Command::Notify(n) => Command::Notify(n),
                Command::Journal(r) => Command::Journal(r),
            });
        }
        let first = self.seen.iter().map(|(c, seen)| *seen + self.silence_allowed(*c)).min();
        if let Some(first) = first {
            let deadline = self.sched.next_deadline().expect("workers are connected: there is a deadline");
            assert!(deadline <= first, "next_deadline is later than a live worker's timeout");
        }
    }

    fn send(&mut self, conn: ConnId, msg: ToScheduler) {
        self.handle(Event::Message(conn, msg));
    }

    fn connect(&mut self) -> ConnId {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.handle(Event::Connected(conn));
        conn
    }

    fn connect_worker(&mut self, slots: u16) -> (ConnId, WorkerId) {
        self.connect_mortal_worker(slots, None)
    }

    /// A worker that must be gone `lifetime` from now (`None`: never).
    fn connect_mortal_worker(&mut self, slots: u16, lifetime: Option<Duration>) -> (ConnId, WorkerId) {
        self.connect_worker_with(slots, |info| info.lifetime_ms = lifetime.map(|d| d.as_millis() as u64))
    }

    /// A worker of `slots` slots registering with what `edit` sets besides.
    fn connect_worker_with(&mut self, slots: u16, edit: impl FnOnce(&mut WorkerInfo)) -> (ConnId, WorkerId) {
        let conn = self.connect();
        let mut info = WorkerInfo {
            slots,
            host: "node".into(),
            pid: 1,
            launch: None,
            data_address: format!("tcp://node:{conn}"),
            lifetime_ms: None,
            offer: Offer::default(),
            resume: None,
        };
        edit(&mut info);
        self.send(conn, ToScheduler::RegisterWorker(info));
        self.seen.insert(conn, self.now);
        let ids = self.sent_to(conn, |m| if let ToWorker::Welcome { id, .. } = m { Some(*id) } else { None });
        assert_eq!(ids.len(), 1, "one Welcome per registration");
        (conn, ids[0])
    }

    fn connect_client(&mut self) -> ConnId {
        self.connect_client_as(ClientInfo::default())
    }

    fn connect_client_as(&mut self, info: ClientInfo) -> ConnId {
        let conn = self.connect();
        self.send(conn, ToScheduler::RegisterClient(info));
        let welcomes = self.take(|c| matches!(c, Command::ToClient(x, ToClient::Welcome) if *x == conn).then_some(()));
        assert_eq!(welcomes.len(), 1);
        conn
    }

    fn disconnect(&mut self, conn: ConnId) {
        self.handle(Event::Disconnected(conn, "connection reset".into()));
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.handle(Event::Tick);
    }

    /// The heartbeat timeout of worker `conn`, from what the wire said: the base one, stretched
    /// as the longer of the interval it was told last and the one it said it keeps is stretched
    /// from the base interval (the latter at most the longest the scheduler tells).
    fn silence_allowed(&self, conn: ConnId) -> Duration {
        let (told, kept) = self.paces.get(&conn).copied().unwrap_or((self.base, self.base));
        let longest = told.max(kept.min(self.base * super::MAX_STRETCH));
        self.timeout.mul_f64(longest.as_secs_f64() / self.base.as_secs_f64()).max(self.timeout)
    }

    /// The heartbeat interval the scheduler told worker `conn` last.
    fn told(&self, conn: ConnId) -> Duration {
        self.paces.get(&conn).map_or(self.base, |p| p.0)
    }

    /// A heartbeat from a worker keeping the interval it was told last.
    fn heartbeat(&mut self, conn: ConnId) {
        let interval_ms = self.told(conn).as_millis() as u64;
        self.send(conn, ToScheduler::Heartbeat { load: Default::default(), ack: false, interval_ms });
    }

    /// Removes and returns the recorded commands that `f` picks.
    fn take<R>(&mut self, mut f: impl FnMut(&Command) -> Option<R>) -> Vec<R> {
        let mut got = Vec::new();
        self.out.retain(|c| f(c).map(|r| got.push(r)).is_none());
        got
    }

    /// Removes and returns the messages to worker `conn` that `f` picks.
    fn sent_to<R>(&mut self, conn: ConnId, f: impl Fn(&ToWorker) -> Option<R>) -> Vec<R> {
        self.take(|c| if let Command::ToWorker(x, m) = c { (*x == conn).then(|| f(m)).flatten() } else { None })
    }

    /// The tasks sent to one worker since last asked.
    fn computes(&mut self, conn: ConnId) -> Vec<Assignment> {
        self.sent_to(conn, |m| if let ToWorker::Compute(l) = m { Some(l.clone()) } else { None }).concat()
    }

    /// The tasks sent to any worker since last asked.
    fn all_computes(&mut self) -> Vec<(ConnId, Assignment)> {
        let lists = self.take(|c| match c {
            Command::ToWorker(x, ToWorker::Compute(l)) => Some((*x, l.clone())),
            _ => None,
        });
        lists.into_iter().flat_map(|(c, l)| l.into_iter().map(move |a| (c, a))).collect()
    }

    fn releases(&mut self, conn: ConnId) -> Vec<TaskId> {
        self.sent_to(conn, |m| if let ToWorker::Release(l) = m { Some(l.clone()) } else { None }).concat()
    }

    fn stops(&mut self, conn: ConnId) -> usize {
        self.sent_to(conn, |m| matches!(m, ToWorker::Stop).then_some(())).len()
    }

    /// The `Replicate` orders sent to worker `conn`: (from, address, ids).
    fn replicates(&mut self, conn: ConnId) -> Vec<(WorkerId, String, Vec<TaskId>)> {
        self.sent_to(conn, |m| match m {
            ToWorker::Replicate { from, address, ids } => Some((*from, address.clone(), ids.clone())),
            _ => None,
        })
    }

    /// Removes and returns the notices to the embedding.
    fn notices(&mut self) -> Vec<Notice> {
        let mut got = Vec::new();
        self.out.retain_mut(|c| match c {
            Command::Notify(_) => {
                let Command::Notify(n) = std::mem::replace(c, Command::Exit) else { unreachable!() };
                got.push(n);
                false
            }
            _ => true,
        });
        got
    }

    /// Registers a worker echoing `launch`.
    fn connect_tagged_worker(&mut self, slots: u16, launch: &str) -> (ConnId, WorkerId) {
        self.connect_worker_with(slots, |info| info.launch = Some(launch.into()))
    }

    fn closes(&mut self) -> Vec<ConnId> {
        self.take(|c| if let Command::Close(x) = c { Some(*x) } else { None })
    }

    fn replies(&mut self, client: ConnId) -> Vec<(u64, Reply)> {
        self.take(|c| match c {
            Command::ToClient(x, ToClient::Reply { req, body }) if *x == client => Some((*req, body.clone())),
            _ => None,
        })
    }

    /// Sends a request and returns its `req`, for replies that come later.
    fn request_async(&mut self, client: ConnId, body: Request) -> u64 {
        let req = self.next_req;
        self.next_req += 1;
        self.send(client, ToScheduler::Request { req, body });
        req
    }

    fn request(&mut self, client: ConnId, body: Request) -> Reply {
        let req = self.request_async(client, body);
        let mut got = self.take(|c| match c {
            Command::ToClient(x, ToClient::Reply { req: r, body }) if *x == client && *r == req => Some(body.clone()),
            _ => None,
        });
        assert_eq!(got.len(), 1, "exactly one immediate reply to request {req}");
        got.pop().expect("one")
    }

    fn submit(&mut self, client: ConnId, spec: JobSpec) -> JobId {
        let Reply::Submitted(j) = self.request(client, Request::Submit(spec.into())) else { panic!("refused") };
        j
    }

    fn progress(&mut self, client: ConnId, job: JobId) -> Counts {
        let Reply::Progress(c) = self.request(client, Request::Progress(job)) else { panic!("no Progress") };
        c
    }

    fn status(&mut self, client: ConnId) -> ClusterStatus {
        let Reply::Status(s) = self.request(client, Request::Status) else { panic!("no Status") };
        s
    }

    fn finish_with(&mut self, conn: ConnId, ids: &[TaskId], size: u64, duration_us: u32) {
        let list = ids.iter().map(|&id| Finished { id, size, duration_us }).collect();
        self.send(conn, ToScheduler::Finished(list));
    }

    fn finish(&mut self, conn: ConnId, ids: &[TaskId]) {
        self.finish_with(conn, ids, 100, 50_000);
    }

    fn fail(&mut self, conn: ConnId, id: TaskId, kind: ErrorKind) {
        self.send(conn, ToScheduler::Failed(id, TaskError { kind, message: "boom".into() }));
    }

    /// Finishes everything sent to workers, again and again, until nothing new is sent.
    fn run_to_end(&mut self) {
        loop {
            let work = self.all_computes();
            if work.is_empty() {
                return;
            }
            for (conn, a) in work {
                self.finish(conn, &[a.id]);
            }
        }
    }
}

fn task(deps: &[u32], keep: bool) -> TaskSpec {
    TaskSpec {
        body: TaskBody::Function { func: 0, args: Bytes::from_static(b"args") },
        deps: deps.iter().map(|&d| TaskRef::Local(d)).collect(),
        keep,
        cpus: 1,
        needs: Needs::default(),
    }
}

fn graph(tasks: Vec<TaskSpec>) -> JobSpec {
    JobSpec {
        name: "g".into(),
        functions: vec!["f".into()],
        command: None,
        tasks: JobTasks::Graph(tasks),
        max_attempts: 3,
        release_on_disconnect: false,
    }
}

fn command() -> CommandSpec {
    CommandSpec { argv: vec!["true".into()], env: vec![], cwd: None, stdout: None, stderr: None, stream: None }
}

fn array(ranges: Vec<(u32, u32)>, cpus: u16) -> JobSpec {
    JobSpec {
        command: Some(command()),
        tasks: JobTasks::Array { ranges, cpus, needs: Needs::default() },
        ..graph(vec![])
    }
}

fn tid(job: JobId, index: u32) -> TaskId {
    TaskId { job, index }
}

fn ids(list: &[Assignment]) -> Vec<TaskId> {
    list.iter().map(|a| a.id).collect()
}

fn counts(total: u32, waiting: u32, running: u32, finished: u32, failed: u32) -> Counts {
    Counts { total, waiting, running, finished, failed }
}

fn job_done(reply: Reply) -> JobOutcome {
    match reply {
        Reply::JobDone(o) => o,
        other => panic!("expected JobDone, got {other:?}"),
    }
}

#[test]
fn independent_tasks_spread_over_workers_and_wait_is_answered_once() {
    let mut sim = Sim::new();
    let (c1, w1) = sim.connect_worker(1);
    let (c2, w2) = sim.connect_worker(1);
    let client = sim.connect_client();
    let job = sim.submit(client, graph((0..4).map(|_| task(&[], true)).collect()));
    let wait = sim.request_async(client, Request::Wait(job));
    let (on1, on2) = (ids(&sim.computes(c1)), ids(&sim.computes(c2)));
    assert!(!on1.is_empty() && !on2.is_empty(), "both workers get work: {on1:?} / {on2:?}");
    let all: HashSet<TaskId> = on1.iter().chain(&on2).copied().collect();
    assert_eq!(all, (0..4).map(|i| tid(job, i)).collect(), "each task is sent exactly once");
    assert_eq!(on1.len() + on2.len(), 4);
    assert_eq!(sim.progress(client, job), counts(4, 0, 4, 0, 0));

    sim.finish(c1, &on1);
    assert!(sim.replies(client).is_empty(), "Wait answered before the job ended");
    sim.finish(c2, &on2);
    assert_eq!(sim.progress(client, job), counts(4, 0, 0, 4, 0));
    let replies = sim.replies(client);
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].0, wait);
    let outcome = job_done(replies[0].1.clone());
    let holding = |w: WorkerId, c: ConnId, on: &[TaskId]| Holding {
        worker: w,
        address: format!("tcp://node:{c}"),
        tasks: on.iter().map(|t| t.index).collect(),
    };
    let expected = JobOutcome {
        job,
        tasks: 4,
        finished: 4,
        failed: vec![],
        holdings: vec![holding(w1, c1, &on1), holding(w2, c2, &on2)],
    };
    assert_eq!(outcome, expected);

    // A new Wait is answered at once; the first is never answered again, even when the job ends a second
    // time (w1 dies, its kept results are computed again on w2).
    assert_eq!(job_done(sim.request(client, Request::Wait(job))), expected);
    sim.disconnect(c1);
    let redo = ids(&sim.computes(c2));
    assert_eq!(redo.iter().collect::<HashSet<_>>(), on1.iter().collect());
    sim.finish(c2, &redo);
    assert!(sim.replies(client).is_empty());
    let all: Vec<TaskId> = (0..4).map(|i| tid(job, i)).collect();
    assert_eq!(job_done(sim.request(client, Request::Wait(job))).holdings, vec![holding(w2, c2, &all)]);
}

#[test]
fn diamond_runs_in_order_releases_inputs_and_keeps_the_result() {
    let mut sim = Sim::new();
    let (c1, w1) = sim.connect_worker(1);
    let (c2, w2) = sim.connect_worker(1);
    let worker_of = |c: ConnId| if c == c1 { w1 } else { w2 };
    let client = sim.connect_client();
    let job =
        sim.submit(client, graph(vec![task(&[], false), task(&[0], false), task(&[0], false), task(&[1, 2], true)]));
    let (a, b, c, d) = (tid(job, 0), tid(job, 1), tid(job, 2), tid(job, 3));
    let first = sim.all_computes();
    assert_eq!(first.len(), 1, "only `a` can start: {first:?}");
    let (ca, aa) = first[0].clone();
    assert_eq!(aa.id, a);
    let ha = worker_of(ca);

    sim.finish(ca, &[a]);
    let second = sim.all_computes();
    let started: HashSet<TaskId> = second.iter().map(|(_, x)| x.id).collect();
    assert_eq!(started, [b, c].into());
    for (_, x) in &second {
        assert_eq!(x.inputs, vec![(a, ha)]);
    }
    let holder: HashMap<TaskId, (ConnId, WorkerId)> =
        second.iter().map(|(cn, x)| (x.id, (*cn, worker_of(*cn)))).collect();
    sim.finish(holder[&b].0, &[b]);
    assert!(sim.releases(c1).is_empty() && sim.releases(c2).is_empty(), "`a` released while `c` still needs it");
    assert!(sim.all_computes().is_empty(), "`d` started before `c` finished");
    sim.finish(holder[&c].0, &[c]);
    assert_eq!(sim.releases(ca), vec![a], "`a` is released once `b` and `c` are done");
    let third = sim.all_computes();
    assert_eq!(third.len(), 1);
    let (cd, ad) = third[0].clone();
    assert_eq!(ad.id, d);
    assert_eq!(ad.inputs, vec![(b, holder[&b].1), (c, holder[&c].1)], "inputs in dependency order");

    sim.finish(cd, &[d]);
    let mut released: Vec<TaskId> = [c1, c2].into_iter().flat_map(|cn| sim.releases(cn)).collect();
    released.sort();
    assert_eq!(released, vec![b, c], "`d` is kept, its inputs are not");
    let outcome = job_done(sim.request(client, Request::Wait(job)));
    assert_eq!(outcome.holdings.iter().map(|h| h.tasks.clone()).collect::<Vec<_>>(), vec![vec![3]]);
    let holding: u32 = sim.status(client).workers.iter().map(|w| w.holding).sum();
    assert_eq!(holding, 1);
}

#[test]
fn task_goes_to_the_worker_holding_most_of_its_input_bytes() {
    let mut sim = Sim::new();
    let _ = sim.connect_worker(2);
    let _ = sim.connect_worker(2);
    let client = sim.connect_client();
    let job =
        sim.submit(client, graph(vec![task(&[], true), task(&[], true), task(&[0], false), task(&[0, 1], false)]));
    let (p, x, z, y) = (tid(job, 0), tid(job, 1), tid(job, 2), tid(job, 3));
    let first = sim.all_computes();
    let where_ = |t: TaskId| first.iter().find(|(_, a)| a.id == t).expect("sent").0;
    let (hp, hx) = (where_(p), where_(x));
    assert_ne!(hp, hx, "independent tasks are spread over both workers");
    sim.finish_with(hp, &[p], 10, 50_000);
    assert_eq!(ids(&sim.computes(hp)), vec![z], "`z` runs where its input is");
    sim.finish_with(hx, &[x], 10_000, 50_000);
    assert_eq!(ids(&sim.computes(hx)), vec![y], "`y` runs where most of its input bytes are");
    assert!(sim.all_computes().is_empty());
}

#[test]
fn silent_worker_is_lost_at_the_next_tick_and_its_tasks_move() {
    let mut sim = Sim::new();
    let t0 = sim.now;
    let (c1, _) = sim.connect_worker(1);
    let (c2, _) = sim.connect_worker(1);
    let client = sim.connect_client();
    let job = sim.submit(client, graph((0..4).map(|_| task(&[], false)).collect()));
    let (on1, on2) = (ids(&sim.computes(c1)), ids(&sim.computes(c2)));
    assert_eq!((on1.len(), on2.len()), (2, 2));
    sim.finish(c2, &on2);
    for i in 0..9 {
        sim.advance(Duration::from_secs(1));
        // Every third heartbeat asks for an answer; the others keep the worker alive all the same.
        sim.send(c2, ToScheduler::Heartbeat { load: Default::default(), ack: i % 3 == 2, interval_ms: 1000 });
        assert!(sim.closes().is_empty(), "a worker is lost before its timeout");
    }
    let acks = sim.take(|c| matches!(c, Command::ToWorker(x, ToWorker::Ack) if *x == c2).then_some(()));
    assert_eq!(acks.len(), 3, "a heartbeat is acknowledged when it asks, and only then");
    let deadline = sim.sched.next_deadline().expect("workers");
    assert!(deadline <= t0 + sim.timeout && deadline > sim.now, "deadline {:?} after t0", deadline - t0);

    sim.now = deadline;
    sim.advance(Duration::from_millis(1));
    assert_eq!(sim.closes(), vec![c1]);
    assert_eq!(sim.sched.worker_count(), 1);
    let moved: HashSet<TaskId> = ids(&sim.computes(c2)).into_iter().collect();
    assert_eq!(moved, on1.iter().copied().collect());
    // A late report from the dead worker changes nothing.
    sim.out.clear();
    sim.finish(c1, &on1);
    assert!(sim.out.is_empty(), "{:?}", sim.out);
    assert_eq!(sim.progress(client, job), counts(4, 0, 2, 2, 0));
    sim.finish(c2, &on1);
    assert_eq!(sim.progress(client, job), counts(4, 0, 0, 4, 0));
    assert!(sim.sched.next_deadline().expect("c2") <= sim.now + sim.timeout);
}

#[test]
fn lost_result_needed_by_a_waiting_task_is_recomputed() {
    let mut sim = Sim::new();
    let (c1, _) = sim.connect_worker(1);
    let (c2, w2) = sim.connect_worker(1);
    let client = sim.connect_client();
    let job = sim.submit(client, graph(vec![task(&[], false), task(&[], false), task(&[0, 1], true)]));
    let (a, c, b) = (tid(job, 0), tid(job, 1), tid(job, 2));
    assert_eq!((ids(&sim.computes(c1)), ids(&sim.computes(c2))), (vec![a], vec![c]));
    sim.finish(c1, &[a]);
    assert!(sim.all_computes().is_empty());
    sim.disconnect(c1);
    let again = sim.computes(c2);
    assert_eq!(ids(&again), vec![a], "`a` is computed again on the live worker");
    assert_eq!(sim.progress(client, job), counts(3, 1, 2, 0, 0));
    sim.finish(c2, &[a, c]);
    let last = sim.computes(c2);
    assert_eq!(ids(&last), vec![b]);
    assert_eq!(last[0].inputs, vec![(a, w2), (c, w2)]);
}

#[test]
fn lost_result_whose_input_was_released_is_recomputed_recursively() {
    let mut sim = Sim::new();
    let (c1, w1) = sim.connect_worker(1);
    let (c2, w2) = sim.connect_worker(1);
    let client = sim.connect_client();
    let job =
        sim.submit(client, graph(vec![task(&[], false), task(&[], false), task(&[0], false), task(&[2, 1], true)]));
    let (x, c, a, b) = (tid(job, 0), tid(job, 1), tid(job, 2), tid(job, 3));
    assert_eq!((ids(&sim.computes(c1)), ids(&sim.computes(c2))), (vec![x], vec![c]));
    sim.finish(c1, &[x]);
    let on1 = sim.computes(c1);
    assert_eq!((ids(&on1), on1[0].inputs.clone()), (vec![a], vec![(x, w1)]));
    sim.finish(c1, &[a]);
    assert_eq!(sim.releases(c1), vec![x], "`x` is not needed any more");
    sim.disconnect(c1);
    let redo = sim.computes(c2);
    assert_eq!(ids(&redo), vec![x], "`a` needs `x`, which was released: `x` first");
    sim.finish(c2, &[x]);
    let redo = sim.computes(c2);
    assert_eq!((ids(&redo), redo[0].inputs.clone()), (vec![a], vec![(x, w2)]));
    sim.finish(c2, &[a, c]);
    let last = sim.computes(c2);
    assert_eq!((ids(&last), last[0].inputs.clone()), (vec![b], vec![(a, w2), (c, w2)]));
    sim.finish(c2, &[b]);
    assert_eq!(sim.progress(client, job), counts(4, 0, 0, 4, 0));
}

#[test]
fn task_fails_after_max_attempts_worker_deaths_and_so_do_its_dependents() {
    let mut sim = Sim::new();
    let (c1, _) = sim.connect_worker(1);
    let client = sim.connect_client();
    let spec = JobSpec { max_attempts: 2, ..graph(vec![task(&[], false), task(&[0], false), task(&[], false)]) };
    let job = sim.submit(client, spec);
    let (a, u) = (tid(job, 0), tid(job, 2));
    assert_eq!(ids(&sim.computes(c1)), vec![a, u]);
    sim.finish(c1, &[u]);
    let wait = sim.request_async(client, Request::Wait(job));
    sim.disconnect(c1);
    assert_eq!(sim.progress(client, job), counts(3, 2, 0, 1, 0), "one death is not enough to fail");
    let (c2, _) = sim.connect_worker(1);
    assert_eq!(ids(&sim.computes(c2)), vec![a]);
    assert!(sim.replies(client).is_empty());
    sim.disconnect(c2);
    let replies = sim.replies(client);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].0, wait);
    let outcome = job_done(replies[0].1.clone());
    assert_eq!((outcome.tasks, outcome.finished), (3, 1));
    let kinds: Vec<(u32, ErrorKind)> = outcome.failed.into_iter().map(|(i, e)| (i, e.kind)).collect();
    assert_eq!(kinds, vec![(0, ErrorKind::WorkerLost), (1, ErrorKind::DependencyFailed(a))]);
}

#[test]
fn failure_fails_transitive_dependents_only() {
    let mut sim = Sim::new();
    let (c1, _) = sim.connect_worker(4);
    let client = sim.connect_client();
    let tasks = vec![task(&[], true), task(&[0], false), task(&[1], false), task(&[], false), task(&[3], false)];
    let job = sim.submit(client, graph(tasks));
    let (a, b, u, v) = (tid(job, 0), tid(job, 1), tid(job, 3), tid(job, 4));
    assert_eq!(ids(&sim.computes(c1)), vec![a, u]);
    sim.fail(c1, a, ErrorKind::Error);
    assert_eq!(sim.progress(client, job), counts(5, 1, 1, 0, 3));
    assert_eq!(sim.status(client).workers[0].assigned, 1, "the failed task's slot is free again");
    sim.finish(c1, &[u]);
    assert_eq!(ids(&sim.computes(c1)), vec![v]);
    sim.finish(c1, &[v]);
    assert_eq!(sim.releases(c1), vec![u, v], "results nobody needs are released");
    let outcome = job_done(sim.request(client, Request::Wait(job)));
    let err = |kind| TaskError { kind, message: "boom".into() };
    assert_eq!(outcome.finished, 2);
    assert_eq!(
        outcome.failed,
        vec![
            (0, err(ErrorKind::Error)),
            (1, err(ErrorKind::DependencyFailed(a))),
            (2, err(ErrorKind::DependencyFailed(b)))
        ]
    );
    // A later job that uses the failed (kept) task fails at once, and says why.
    let later = graph(vec![TaskSpec { deps: vec![TaskRef::Global(a)], ..task(&[], true) }]);
    let j2 = sim.submit(client, later);
    let outcome = job_done(sim.request(client, Request::Wait(j2)));
    assert_eq!(outcome.failed.len(), 1);
    assert_eq!(outcome.failed[0].1.kind, ErrorKind::DependencyFailed(a));
    assert!(sim.all_computes().is_empty());
}

#[test]
fn invalid_submissions_are_refused_and_change_nothing() {
    let mut sim = Sim::new();
    let _ = sim.connect_worker(1);
    let client = sim.connect_client();
    let j1 = sim.submit(client, graph(vec![task(&[], true), task(&[], false)]));
    let _ = sim.all_computes();
    let global = |t: TaskId| TaskSpec { deps: vec![TaskRef::Global(t)], ..task(&[], false) };
    let cases: Vec<(&str, JobSpec)> = vec![
        ("forward dep", graph(vec![task(&[1], false), task(&[], false)])),
        ("self dep", graph(vec![task(&[0], false)])),
        (
            "unknown function",
            graph(vec![TaskSpec { body: TaskBody::Function { func: 1, args: Bytes::new() }, ..task(&[], false) }]),
        ),
        ("array without command", JobSpec { command: None, ..array(vec![(1, 10)], 1) }),
        ("empty array", array(vec![], 1)),
        ("backwards array", array(vec![(5, 1)], 1)),
        ("empty graph", graph(vec![])),
        ("command task without command", graph(vec![TaskSpec { body: TaskBody::Command, ..task(&[], false) }])),
        ("global dep on a task not kept", graph(vec![global(tid(j1, 1))])),
        ("global dep on no task", graph(vec![global(tid(j1, 9))])),
        ("global dep on no job", graph(vec![global(tid(JobId(99), 0))])),
    ];
    let before = sim.status(client);
    for (what, spec) in cases {
        match sim.request(client, Request::Submit(spec.into())) {
            Reply::Refused(msg) => assert!(!msg.message.is_empty(), "{what}: empty message"),
            other => panic!("{what}: expected Refused, got {other:?}"),
        }
        assert_eq!(sim.status(client), before, "{what} changed the state");
        assert!(sim.out.is_empty(), "{what}: {:?}", sim.out);
    }
    let j2 = sim.submit(client, graph(vec![global(tid(j1, 0))]));
    assert_eq!(sim.status(client).jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![j1, j2]);
}

#[test]
fn messages_from_the_wrong_role_close_the_connection_and_change_nothing_else() {
    // Each case on a fresh cluster: a worker c1 running task a, a client, and a stranger that never registered.
    type Make = fn(TaskId, JobId) -> ToScheduler;
    let cases: Vec<(&str, Make)> = vec![
        ("client", |a, _| ToScheduler::Finished(vec![Finished { id: a, size: 1, duration_us: 1 }])),
        ("client", |a, _| ToScheduler::Failed(a, TaskError { kind: ErrorKind::Panic, message: String::new() })),
        ("client", |_, _| {
            ToScheduler::RegisterWorker(WorkerInfo {
                slots: 8,
                host: "h".into(),
                pid: 1,
                launch: None,
                data_address: "tcp://127.0.0.1:1".into(),
                lifetime_ms: None,
                offer: Offer::default(),
                resume: None,
            })
        }),
        ("worker", |_, _| ToScheduler::Request { req: 1, body: Request::Shutdown }),
        ("worker", |_, _| ToScheduler::Request { req: 2, body: Request::Submit(graph(vec![task(&[], false)]).into()) }),
        ("worker", |_, job| ToScheduler::Request { req: 3, body: Request::Release(job) }),
        ("worker", |_, _| ToScheduler::RegisterClient(Default::default())),
        ("stranger", |a, _| ToScheduler::Finished(vec![Finished { id: a, size: 1, duration_us: 1 }])),
        ("stranger", |_, _| ToScheduler::Request { req: 4, body: Request::Shutdown }),
    ];
    for (who, make) in cases {
        let mut sim = Sim::new();
        let (c1, _) = sim.connect_worker(1);
        let client = sim.connect_client();
        let job = sim.submit(client, graph(vec![task(&[], false)]));
        let a = tid(job, 0);
        assert_eq!(ids(&sim.computes(c1)), vec![a]);
        let before = sim.status(client);
        let stranger = sim.connect();
        let conn = match who {
            "client" => client,
            "worker" => c1,
            _ => stranger,
        };
        let msg = make(a, job);
        let what = format!("{msg:?} from the {who}");
        sim.send(conn, msg);
        assert_eq!(std::mem::take(&mut sim.out), vec![Command::Close(conn)], "{what}");
        if who == "client" {
            // The client is gone; the cluster is as it was, and its job runs on.
            sim.heartbeat(c1);
            let client2 = sim.connect_client();
            let after = sim.status(client2);
            assert_eq!((&after.workers, &after.jobs), (&before.workers, &before.jobs), "{what}");
            assert_eq!(after.clients, 1, "the offender is gone, its successor counted");
        } else if who == "worker" {
            // The offending worker is dropped like a dead one: its task waits for another worker.
            let s = sim.status(client);
            assert!(s.workers.is_empty(), "{what}");
            assert_eq!(
                s.jobs,
                before
                    .jobs
                    .iter()
                    .cloned()
                    .map(|mut j| {
                        j.counts.running = 0;
                        j.counts.waiting = 1;
                        j
                    })
                    .collect::<Vec<_>>(),
                "{what}"
            );
            let (c2, _) = sim.connect_worker(1);
            assert_eq!(ids(&sim.computes(c2)), vec![a], "{what}");
        } else {
            assert_eq!(sim.status(client), before, "{what}");
        }
    }
    // A connection that never connected is ignored altogether.
    let mut sim = Sim::new();
    sim.send(99, ToScheduler::RegisterClient(Default::default()));
    assert!(sim.out.is_empty());
}

#[test]
fn million_task_array_is_counted_and_numbered_by_its_ranges() {
    let mut sim = Sim::new();
    let client = sim.connect_client();
    let job = sim.submit(client, array(vec![(1, 1), (5, 7), (10, 1_000_005)], 1));
    assert_eq!(sim.sched.task_count(), 1_000_000);
    assert_eq!(sim.progress(client, job), counts(1_000_000, 1_000_000, 0, 0, 0));
    let (c1, _) = sim.connect_worker(4);
    let is_command = |c: &Command| matches!(c, Command::ToWorker(x, ToWorker::Command(..)) if *x == c1);
    assert!(matches!(&sim.out[0], Command::ToWorker(_, ToWorker::Command(j, s)) if *j == job && *s == command()));
    assert_eq!(sim.take(|c| is_command(c).then_some(())).len(), 1);
    let work: Vec<Work> = sim.computes(c1).into_iter().map(|a| a.work).collect();
    let expected: Vec<Work> = [1, 5, 6, 7, 10, 11, 12, 13].into_iter().map(|i| Work::Command { array_id: i }).collect();
    assert_eq!(work, expected);
    sim.finish(c1, &(0..8).map(|i| tid(job, i)).collect::<Vec<_>>());
    assert_eq!(sim.computes(c1).len(), 8);
    assert!(sim.take(|c| is_command(c).then_some(())).is_empty(), "the command is sent again");
    assert_eq!(sim.progress(client, job), counts(1_000_000, 999_984, 8, 8, 0));
}

#[test]
fn queue_depth_bounds_what_a_one_slot_worker_is_given() {
    let mut sim = Sim::new();
    let (c1, _) = sim.connect_worker(1);
    let client = sim.connect_client();
    let job = sim.submit(client, array(vec![(0, 1999)], 1));
    let mut in_flight: Vec<TaskId> = Vec::new();
    let mut deepest = 0;
    for round in 0.. {
        in_flight.extend(ids(&sim.computes(c1)));
        if in_flight.is_empty() {
            break;
        }
        deepest = deepest.max(in_flight.len());
        // Long tasks first, then short ones: the queue may deepen, never beyond the short-task depth.
        let limit = if round < 5 { DEPTH_LONG } else { DEPTH_SHORT };
        assert!(in_flight.len() as u32 <= limit, "round {round}: {} queued on a 1-slot worker", in_flight.len());
        let done: Vec<TaskId> = in_flight.drain(..in_flight.len().min(2)).collect();
        sim.finish_with(c1, &done, 0, if round < 5 { 50_000 } else { 10 });
    }
    assert!(deepest > DEPTH_LONG as usize, "short tasks never got a deeper queue ({deepest})");
    assert_eq!(sim.progress(client, job).finished, 2000);
}

#[test]
fn task_wider_than_the_worker_runs_when_the_worker_is_free() {
    let mut sim = Sim::new();
    let (c1, _) = sim.connect_worker(1);
    let client = sim.connect_client();
    let small = sim.submit(client, array(vec![(1, 1)], 1));
    let wide = sim.submit(client, array(vec![(1, 1)], 2));
    let huge = sim.submit(client, array(vec![(1, 1)], 64));
    // A task wider than the worker counts as the whole worker; the worker runs it alone (worker.rs `dispatch`).
    let sent = sim.computes(c1);
    assert_eq!(ids(&sent), vec![tid(small, 0), tid(wide, 0)]);
    assert_eq!(sent[1].cpus, 2, "the worker is told the real width");
    sim.finish(c1, &[tid(small, 0), tid(wide, 0)]);
    let sent = sim.computes(c1);
    assert_eq!((ids(&sent), sent[0].cpus), (vec![tid(huge, 0)], 64), "never stuck however wide");
}

#[test]
fn release_on_disconnect_releases_the_clients_jobs_once_done() {
    let mut sim = Sim::new();
    let (c1, _) = sim.connect_worker(2);
    let client = sim.connect_client();
    let spec = JobSpec { release_on_disconnect: true, ..graph(vec![task(&[], true), task(&[], true)]) };
    let released = sim.submit(client, spec.clone());
    let kept = sim.submit(client, JobSpec { release_on_disconnect: false, ..spec.clone() });
    sim.run_to_end();
    let running = sim.submit(client, spec);
    let late = ids(&sim.computes(c1));
    assert_eq!(late.len(), 2);
    let other = sim.connect_client();
    assert_eq!(sim.status(other).jobs.len(), 3);
    let release_jobs =
        |sim: &mut Sim| sim.sent_to(c1, |m| if let ToWorker::ReleaseJob(j) = m { Some(*j) } else { None });
    sim.disconnect(client);
    assert_eq!(release_jobs(&mut sim), vec![released]);
    assert_eq!(sim.status(other).jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![kept, running]);
    sim.finish(c1, &late);
    assert_eq!(release_jobs(&mut sim), vec![running], "a job still running is released when it ends");
    let status = sim.status(other);
    assert_eq!(status.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![kept]);
    assert_eq!(status.workers[0].holding, 2, "only the kept job's results are held");
}

#[test]
fn shutdown_stops_workers_answers_and_exits() {
    let mut sim = Sim::new();
    let (c1, _) = sim.connect_worker(1);
    let (c2, _) = sim.connect_worker(1);
    let client = sim.connect_client();
    sim.out.clear();
    let req = sim.request_async(client, Request::Shutdown);
    let mut out = std::mem::take(&mut sim.out);
    assert_eq!(out.pop(), Some(Command::Exit), "Exit comes last");
    assert_eq!(out.pop(), Some(Command::ToClient(client, ToClient::Reply { req, body: Reply::Ok })));
    let stop = |c: &Command| if let Command::ToWorker(x, ToWorker::Stop) = c { Some(*x) } else { None };
    let stopped: HashSet<ConnId> = out.iter().filter_map(stop).collect();
    assert_eq!((stopped, out.len()), ([c1, c2].into(), 2), "{out:?}");
    assert!(matches!(sim.request(client, Request::Submit(graph(vec![task(&[], false)]).into())), Reply::Refused(_)));
}

#[test]
fn input_missing_recomputes_the_input_then_reruns_the_task() {
    let mut sim = Sim::new();
    let (c1, w1) = sim.connect_worker(1);
    let client = sim.connect_client();
    let job = sim.submit(client, graph(vec![task(&[], false), task(&[0], true)]));
    let (a, b) = (tid(job, 0), tid(job, 1));
    assert_eq!(ids(&sim.computes(c1)), vec![a]);
    sim.finish(c1, &[a]);
    assert_eq!(ids(&sim.computes(c1)), vec![b]);
    sim.send(c1, ToScheduler::InputMissing(a, b));
    assert!(sim.out.is_empty(), "an InputMissing for a task that is not running is ignored");
    sim.send(c1, ToScheduler::InputMissing(b, a));
    assert_eq!(ids(&sim.computes(c1)), vec![a], "`b` waits for `a` to be computed again");
    assert_eq!(sim.progress(client, job), counts(2, 1, 1, 0, 0));
    sim.finish(c1, &[b]);
    assert_eq!(sim.releases(c1), vec![b], "a report for the withdrawn attempt is stale");
    sim.finish(c1, &[a]);
    let again = sim.computes(c1);
    assert_eq!((ids(&again), again[0].inputs.clone()), (vec![b], vec![(a, w1)]));
}

#[test]
fn retiring_worker_gets_no_new_tasks() {
    let mut sim = Sim::new();
    let (c1, _) = sim.connect_worker(4);
    let (c2, _) = sim.connect_worker(4);
    sim.send(c1, ToScheduler::Retire);
    let client = sim.connect_client();
    let job = sim.submit(client, array(vec![(1, 4)], 1));
    assert!(sim.computes(c1).is_empty());
    assert_eq!(sim.computes(c2).len(), 4);
    assert!(sim.status(client).workers[0].retiring);
    assert_eq!(sim.progress(client, job).running, 4);
}

#[test]
fn workers_learn_the_address_of_each_peer_they_fetch_from_once_before_the_task() {
    let mut sim = Sim::new();
    let workers: Vec<(ConnId, WorkerId)> = (0..3).map(|_| sim.connect_worker(1)).collect();
    let peers = sim.take(|c| matches!(c, Command::ToWorker(_, ToWorker::Peers(_))).then_some(()));
    assert!(peers.is_empty(), "joining broadcasts no peer list (it cost 10,000 workers 50M entries)");
    // Three roots, then rounds of tasks that each need all three: most inputs are on a peer.
    let mut tasks: Vec<TaskSpec> = (0..3).map(|_| task(&[], true)).collect();
    tasks.extend((0..12).map(|_| task(&[0, 1, 2], true)));
    let client = sim.connect_client();
    let job = sim.submit(client, graph(tasks));
    let addr = |c: ConnId| format!("tcp://node:{c}");
    let mut told: HashMap<ConnId, Vec<(WorkerId, String)>> = HashMap::new();
    let mut remote_inputs = 0;
    loop {
        let out = sim.take(|c| match c {
            Command::ToWorker(x, m @ (ToWorker::Peers(_) | ToWorker::Compute(_))) => Some((*x, m.clone())),
            _ => None,
        });
        if out.is_empty() {
            break;
        }
        let mut done = Vec::new();
        for (conn, m) in out {
            let me = workers.iter().find(|(c, _)| *c == conn).expect("sent to a worker").1;
            let known = told.entry(conn).or_default();
            match m {
                ToWorker::Peers(list) => {
                    for (w, a) in list {
                        assert!(known.iter().all(|(k, _)| *k != w), "{w} is sent to {conn} once");
                        let holder = workers.iter().find(|(_, x)| *x == w).expect("a live peer").0;
                        assert_eq!(a, addr(holder), "the address {w} registered with");
                        known.push((w, a));
                    }
                }
                ToWorker::Compute(list) => {
                    for a in list {
                        for (_, h) in a.inputs.iter().filter(|(_, h)| *h != me) {
                            remote_inputs += 1;
                            assert!(known.iter().any(|(k, _)| k == h), "{conn} knows {h} before fetching from it");
                        }
                        done.push((conn, a.id));
                    }
                }
                _ => unreachable!(),
            }
        }
        for (conn, id) in done {
            sim.finish(conn, &[id]);
        }
    }
    assert_eq!(sim.progress(client, job).finished, 15);
    assert!(remote_inputs > 0, "the test placed tasks whose inputs are on a peer");
}

#[test]
fn new_worker_gets_the_commands_of_the_tasks_it_is_given() {
    let mut sim = Sim::new();
    let (c1, _) = sim.connect_worker(1);
    let client = sim.connect_client();
    let j1 = sim.submit(client, array(vec![(1, 3)], 1));
    let j2 = sim.submit(client, array(vec![(1, 1)], 1));
    assert_eq!(sim.computes(c1).len(), 2);
    sim.disconnect(c1);
    let (c2, _) = sim.connect_worker(4);
    let mut commands = Vec::new();
    for cmd in std::mem::take(&mut sim.out) {
        match cmd {
            Command::ToWorker(x, ToWorker::Command(j, _)) if x == c2 => commands.push(j),
            Command::ToWorker(x, ToWorker::Compute(list)) if x == c2 => {
                assert!(list.iter().all(|a| commands.contains(&a.id.job)), "a task arrives before its command");
            }
            _ => {}
        }
    }
    // Each job's command once, even when the batch interleaves the jobs' tasks.
    commands.sort();
    assert_eq!(commands, vec![j1, j2]);
}

#[test]
fn losing_a_worker_whose_job_ends_and_is_released_in_the_same_loss_does_not_panic() {
    let mut sim = Sim::new();
    let (c1, _) = sim.connect_worker(1);
    let client = sim.connect_client();
    let spec =
        JobSpec { max_attempts: 1, release_on_disconnect: true, ..graph(vec![task(&[], true), task(&[], true)]) };
    let job = sim.submit(client, spec);
    assert_eq!(ids(&sim.computes(c1)), vec![tid(job, 0), tid(job, 1)]);
    sim.finish(c1, &[tid(job, 0)]);
    sim.disconnect(client);
    sim.disconnect(c1);
    // Task 1 failed (attempts spent), the job ended and was released; task 0's lost result is nobody's loss.
    let c2 = sim.connect_client();
    assert!(sim.status(c2).jobs.is_empty());
}

#[test]
fn a_failed_tasks_inputs_are_released_and_not_recomputed_when_lost() {
    let mut sim = Sim::new();
    let (c1, _) = sim.connect_worker(1);
    let client = sim.connect_client();
    let job = sim.submit(client, graph(vec![task(&[], false), task(&[0], false)]));
    let (a, b) = (tid(job, 0), tid(job, 1));
    assert_eq!(ids(&sim.computes(c1)), vec![a]);
    sim.finish(c1, &[a]);
    assert_eq!(ids(&sim.computes(c1)), vec![b]);
    sim.releases(c1);
    sim.fail(c1, b, ErrorKind::Panic);
    assert_eq!(sim.releases(c1), vec![a], "nobody needs a any more");
    let (c2, _) = sim.connect_worker(1);
    sim.disconnect(c1);
    assert!(sim.computes(c2).is_empty(), "nothing to recompute");
    assert_eq!(sim.progress(client, job), counts(2, 0, 0, 1, 1));
}

#[test]
fn a_job_referenced_by_another_stays_until_that_one_is_released() {
    let mut sim = Sim::new();
    let (c1, _) = sim.connect_worker(1);
    let client = sim.connect_client();
    let j1 = sim.submit(client, graph(vec![task(&[], true)]));
    let y = tid(j1, 0);
    let sent = ids(&sim.computes(c1));
    sim.finish(c1, &sent);
    let mut x_spec = task(&[], true);
    x_spec.deps = vec![TaskRef::Global(y)];
    let j2 = sim.submit(client, graph(vec![x_spec]));
    let x = tid(j2, 0);
    assert_eq!(ids(&sim.computes(c1)), vec![x]);
    sim.finish(c1, &[x]);
    assert_eq!(sim.request(client, Request::Release(j1)), Reply::Ok);
    assert_eq!(sim.status(client).jobs.len(), 2, "j1 is pinned by j2");
    // x's result is lost: recomputing it needs y, which is recomputed too.
    let (c2, _) = sim.connect_worker(1);
    sim.disconnect(c1);
    assert_eq!(ids(&sim.computes(c2)), vec![y]);
    sim.finish(c2, &[y]);
    assert_eq!(ids(&sim.computes(c2)), vec![x]);
    sim.finish(c2, &[x]);
    assert!(matches!(sim.request(client, Request::Wait(j2)), Reply::JobDone(_)));
    // Releasing j2 releases j1 too, as asked earlier.
    assert_eq!(sim.request(client, Request::Release(j2)), Reply::Ok);
    assert!(sim.status(client).jobs.is_empty());
}

#[test]
fn retire_request_takes_idle_workers_only_all_or_none() {
    let mut sim = Sim::new();
    let (c1, w1) = sim.connect_worker(1);
    let (c2, w2) = sim.connect_worker(1);
    let client = sim.connect_client();
    let job = sim.submit(client, array(vec![(1, 1)], 1));
    let (busy, idle) = if sim.computes(c1).is_empty() { ((c2, w2), (c1, w1)) } else { ((c1, w1), (c2, w2)) };
    let refused = sim.request(client, Request::Retire(vec![idle.1, busy.1]));
    assert!(
        matches!(&refused, Reply::Refused(e) if e.kind == crate::protocol::RefusalKind::Busy && e.message.contains("busy")),
        "{refused:?}"
    );
    assert!(sim.status(client).workers.iter().all(|w| !w.retiring), "a refused request retires nobody");
    assert_eq!(sim.request(client, Request::Retire(vec![idle.1])), Reply::Ok);
    assert_eq!(sim.stops(idle.0), 1, "an idle worker holding nothing is stopped at once");
    assert_eq!(sim.stops(busy.0), 0);
    // The busy worker finishes its task and keeps working.
    sim.finish(busy.0, &[tid(job, 0)]);
    let more = sim.submit(client, array(vec![(1, 2)], 1));
    assert_eq!(ids(&sim.computes(busy.0)), vec![tid(more, 0), tid(more, 1)]);
    assert!(sim.computes(idle.0).is_empty(), "a retiring worker gets no task");
}

#[test]
fn a_retiring_worker_hands_the_results_only_it_holds_to_another_before_it_stops() {
    let mut sim = Sim::new();
    let (c1, w1) = sim.connect_worker(4);
    let client = sim.connect_client();
    // Two kept results, and one input of a task that cannot run yet.
    let job = sim.submit(client, graph(vec![task(&[], true), task(&[], true), task(&[], false)]));
    let on1 = ids(&sim.computes(c1));
    sim.finish(c1, &on1);
    let (c2, w2) = sim.connect_worker(4);
    sim.take(|_| Some(()));
    // Nobody else could take w1's results when only w1 is there: refused; with w2 there: accepted.
    assert_eq!(sim.request(client, Request::Retire(vec![w1])), Reply::Ok);
    let orders = sim.replicates(c2);
    assert_eq!(orders, vec![(w1, format!("tcp://node:{c1}"), vec![tid(job, 0), tid(job, 1)])]);
    assert_eq!(sim.stops(c1), 0, "not stopped before the hand-over ends");
    sim.send(c2, ToScheduler::Replicated { from: w1, ids: vec![tid(job, 0), tid(job, 1)] });
    assert_eq!(sim.stops(c1), 1);
    let status = sim.status(client);
    let holding: Vec<(WorkerId, u32)> = status.workers.iter().map(|w| (w.id, w.holding)).collect();
    assert_eq!(holding, vec![(w1, 0), (w2, 2)]);
    sim.disconnect(c1);
    // Nothing is recomputed: the results are on w2, and the client is told so.
    assert!(sim.all_computes().is_empty());
    let outcome = job_done(sim.request(client, Request::Wait(job)));
    assert_eq!(
        outcome.holdings.iter().map(|h| (h.worker, h.tasks.clone())).collect::<Vec<_>>(),
        vec![(w2, vec![0, 1])]
    );
}

#[test]
fn the_last_worker_holding_wanted_results_is_not_retired_by_request() {
    let mut sim = Sim::new();
    let (c1, w1) = sim.connect_worker(1);
    let client = sim.connect_client();
    let job = sim.submit(client, graph(vec![task(&[], true)]));
    sim.finish(c1, &[tid(job, 0)]);
    let refused = sim.request(client, Request::Retire(vec![w1]));
    assert!(matches!(&refused, Reply::Refused(e) if e.message.contains("1 results still wanted")), "{refused:?}");
    assert_eq!(sim.stops(c1), 0);
    // Once released, it can go.
    assert_eq!(sim.request(client, Request::Release(job)), Reply::Ok);
    assert_eq!(sim.request(client, Request::Retire(vec![w1])), Reply::Ok);
    assert_eq!(sim.stops(c1), 1);
}

#[test]
fn a_worker_that_asks_to_retire_is_stopped_only_when_its_tasks_are_done() {
    let mut sim = Sim::new();
    let (c1, _) = sim.connect_worker(2);
    let client = sim.connect_client();
    let job = sim.submit(client, array(vec![(1, 2)], 1));
    assert_eq!(sim.computes(c1).len(), 2);
    sim.send(c1, ToScheduler::Retire);
    sim.finish(c1, &[tid(job, 0)]);
    assert_eq!(sim.stops(c1), 0, "one task still runs");
    sim.finish(c1, &[tid(job, 1)]);
    assert_eq!(sim.stops(c1), 1);
    assert_eq!(sim.progress(client, job), counts(2, 0, 0, 2, 0));
}

#[test]
fn a_hand_over_whose_target_dies_goes_to_another_worker() {
    let mut sim = Sim::new();
    let (c1, w1) = sim.connect_worker(1);
    let client = sim.connect_client();
    let job = sim.submit(client, graph(vec![task(&[], true)]));
    sim.finish(c1, &[tid(job, 0)]);
    let (c2, _) = sim.connect_worker(1);
    assert_eq!(sim.request(client, Request::Retire(vec![w1])), Reply::Ok);
    assert_eq!(sim.replicates(c2).len(), 1);
    let (c3, w3) = sim.connect_worker(1);
    sim.disconnect(c2);
    assert_eq!(sim.replicates(c3), vec![(w1, format!("tcp://node:{c1}"), vec![tid(job, 0)])]);
    sim.send(c3, ToScheduler::Replicated { from: w1, ids: vec![tid(job, 0)] });
    assert_eq!(sim.stops(c1), 1);
    let outcome = job_done(sim.request(client, Request::Wait(job)));
    assert_eq!(outcome.holdings[0].worker, w3);
}

#[test]
fn a_mortal_worker_gets_only_tasks_it_can_finish_and_retires_when_its_time_is_up() {
    let mut sim = Sim::new();
    let (c1, _) = sim.connect_mortal_worker(1, Some(Duration::from_secs(10)));
    let (c2, _) = sim.connect_worker(1);
    let client = sim.connect_client();
    // Teach the scheduler that `command:g` tasks take 4 s.
    let first = sim.submit(client, array(vec![(1, 2)], 1));
    for (c, a) in sim.all_computes() {
        sim.finish_with(c, &[a.id], 0, 4_000_000);
    }
    let status = sim.status(client);
    assert!(status.load.is_empty(), "no unfinished work: {:?}", status.load);
    assert_eq!(sim.progress(client, first).finished, 2);
    sim.advance(Duration::from_secs(3));
    // 7 s left on c1: one 4 s task fits, a second queued behind it would end after c1 must leave.
    let job = sim.submit(client, array(vec![(1, 4)], 1));
    let sent = sim.all_computes();
    let on1: Vec<TaskId> = sent.iter().filter(|(c, _)| *c == c1).map(|(_, a)| a.id).collect();
    assert_eq!(on1.len(), 1, "c1 gets only what fits in its lifetime: {sent:?}");
    sim.advance(Duration::from_secs(4));
    for (c, a) in sent {
        sim.finish_with(c, &[a.id], 0, 4_000_000);
    }
    // 3 s left on c1: no 4 s task fits any more; the rest goes to c2.
    loop {
        let sent = sim.all_computes();
        if sent.is_empty() {
            break;
        }
        assert!(sent.iter().all(|(c, _)| *c == c2), "{sent:?}");
        for (c, a) in sent {
            sim.finish_with(c, &[a.id], 0, 4_000_000);
        }
    }
    assert_eq!(sim.progress(client, job).finished, 4, "every task ran");
    assert_eq!(sim.stops(c1), 0, "still within its lifetime");
    sim.advance(Duration::from_secs(3));
    assert_eq!(sim.stops(c1), 1, "retired at the end of its lifetime");
    assert_eq!(sim.stops(c2), 0);
}

#[test]
fn status_reports_unfinished_work_by_kind_with_measured_durations() {
    let mut sim = Sim::new();
    let (c1, _) = sim.connect_worker(4);
    let client = sim.connect_client();
    let mut spec = graph(vec![task(&[], false), task(&[], false), task(&[], false)]);
    spec.functions = vec!["f".into(), "h".into()];
    if let JobTasks::Graph(ts) = &mut spec.tasks {
        ts[2].body = TaskBody::Function { func: 1, args: Bytes::new() };
    }
    let job = sim.submit(client, spec);
    let sent = ids(&sim.computes(c1));
    assert_eq!(sent.len(), 3, "short tasks queue deep on a worker");
    sim.finish_with(c1, &[tid(job, 0)], 0, 3_000);
    let load = sim.status(client).load;
    let view: Vec<(String, u64, u64, Option<u64>)> =
        load.into_iter().map(|k| (k.kind, k.queued, k.running, k.mean_us)).collect();
    assert_eq!(view, vec![("f".into(), 0, 1, Some(3_000)), ("h".into(), 0, 1, None)]);
}

// The embedding's contract: notices out, controls in.

#[test]
fn without_an_embedding_provisioning_requests_are_refused_and_nothing_is_notified() {
    let mut sim = Sim::new();
    let client = sim.connect_client();
    let _ = sim.connect_tagged_worker(1, "default/1");
    let reply =
        sim.request(client, Request::Control(ControlRequest::Scale { pool: None, target: ScaleTarget::Jobs(2) }));
    assert!(matches!(&reply, Reply::Refused(r) if r.kind == RefusalKind::Unsupported), "{reply:?}");
    assert!(sim.notices().is_empty());
}

#[test]
fn workers_are_notified_with_the_launch_tag_they_echo_when_they_join_and_leave() {
    let mut sim = Sim::controlled();
    let (conn, w) = sim.connect_tagged_worker(2, "gpu/7");
    assert_eq!(sim.notices(), vec![Notice::WorkerJoined { worker: w, launch: Some("gpu/7".into()) }]);
    sim.disconnect(conn);
    let left = sim.notices();
    assert!(
        matches!(&left[..], [Notice::WorkerLeft { worker, launch: Some(l), .. }] if *worker == w && l == "gpu/7"),
        "{left:?}"
    );
}

#[test]
fn a_provisioning_request_goes_to_the_embedding_and_its_answer_to_the_client() {
    let mut sim = Sim::controlled();
    let client = sim.connect_client();
    let _ = sim.notices();
    let spec = AdaptSpec {
        min_jobs: 0,
        max_jobs: 3,
        target_duration: 5.0,
        interval: 1.0,
        max_pending: 4,
        scale_down_after: 3,
        max_failures: 5,
        replace_ahead: 60.0,
        default_task_duration: 0.5,
    };
    let body = ControlRequest::Adapt { pool: Some("gpu".into()), spec: Some(spec) };
    let req = sim.request_async(client, Request::Control(body.clone()));
    assert!(sim.replies(client).is_empty(), "the scheduler does not answer for the provisioner");
    assert_eq!(sim.notices(), vec![Notice::Request { conn: client, req, body }]);
    sim.handle(Event::Control(Control::Reply { conn: client, req, reply: Reply::Control("adapting".into()) }));
    assert_eq!(sim.replies(client), vec![(req, Reply::Control("adapting".into()))]);
}

#[test]
fn status_carries_what_the_provisioner_last_reported() {
    let mut sim = Sim::controlled();
    let client = sim.connect_client();
    let p = ProvisioningStatus { backend: "slurm".into(), pools: vec![] };
    sim.handle(Event::Control(Control::Provisioning(p.clone())));
    let Reply::Status(s) = sim.request(client, Request::Status) else { panic!("a status reply") };
    assert_eq!(s.provisioning, Some(p));
    sim.handle(Event::Control(Control::Observe));
    assert!(matches!(&sim.notices()[..], [.., Notice::Observed(s)] if s.provisioning.is_some()));
}

#[test]
fn retiring_through_the_embedding_is_all_or_none_and_never_stops_a_busy_worker() {
    let mut sim = Sim::controlled();
    let client = sim.connect_client();
    let (c1, w1) = sim.connect_tagged_worker(1, "default/1");
    let (c2, w2) = sim.connect_tagged_worker(1, "default/2");
    let job = match sim.request(client, Request::Submit(Box::new(array(vec![(1, 1)], 1)))) {
        Reply::Submitted(j) => j,
        other => panic!("{other:?}"),
    };
    let busy = if sim.computes(c1).is_empty() { (c2, w2) } else { (c1, w1) };
    let idle = if busy.1 == w1 { (c2, w2) } else { (c1, w1) };
    let _ = sim.notices();
    sim.handle(Event::Control(Control::Retire { token: 9, workers: vec![idle.1, busy.1] }));
    let n = sim.notices();
    assert!(
        matches!(&n[..], [Notice::Retired { token: 9, result: Err(Refusal { kind: RefusalKind::Busy, .. }) }]),
        "{n:?}"
    );
    assert_eq!((sim.stops(busy.0), sim.stops(idle.0)), (0, 0), "none of them is stopped");
    sim.handle(Event::Control(Control::Retire { token: 10, workers: vec![idle.1] }));
    assert_eq!(sim.notices(), vec![Notice::Retired { token: 10, result: Ok(()) }]);
    assert_eq!(sim.stops(idle.0), 1, "an idle worker holding nothing stops at once");
    sim.finish(busy.0, &[tid(job, 0)]);
    assert_eq!(sim.stops(busy.0), 0);
}

#[test]
fn only_a_client_that_ends_the_cluster_is_reported_and_an_orderly_shutdown_is_not() {
    let mut sim = Sim::controlled();
    let watcher = sim.connect_client();
    let owner = sim.connect_client_as(ClientInfo { ends_cluster: true });
    let _ = sim.notices();
    sim.disconnect(watcher);
    assert_eq!(sim.notices(), vec![Notice::ClientLeft { conn: watcher, info: ClientInfo { ends_cluster: false } }]);
    sim.disconnect(owner);
    assert_eq!(sim.notices(), vec![Notice::ClientLeft { conn: owner, info: ClientInfo { ends_cluster: true } }]);
    let again = sim.connect_client_as(ClientInfo { ends_cluster: true });
    let _ = sim.request(again, Request::Shutdown);
    sim.disconnect(again);
    assert!(!sim.notices().iter().any(|n| matches!(n, Notice::ClientLeft { .. })), "a shutdown is not a departure");
}

#[test]
fn losing_a_worker_visits_only_the_tasks_on_it_however_many_others_exist() {
    let mut sim = Sim::new();
    let client = sim.connect_client();
    let (a, _) = sim.connect_worker(1);
    // Results held by `a` that are kept, so still wanted when it is lost.
    let kept = sim.submit(client, graph((0..20).map(|_| task(&[], true)).collect()));
    loop {
        let got = ids(&sim.computes(a));
        if got.is_empty() {
            break;
        }
        sim.finish(a, &got);
    }
    assert_eq!(sim.progress(client, kept), counts(20, 0, 0, 20, 0));
    // 100k tasks more: most queued, some running on `a` and `b`, some results held by `b`.
    let (b, _) = sim.connect_worker(4);
    let many = sim.submit(client, graph((0..100_000).map(|_| task(&[], true)).collect()));
    let on_b = ids(&sim.computes(b));
    sim.finish(b, &on_b);
    let running_on_a = ids(&sim.computes(a)).len();
    let running_on_b = ids(&sim.computes(b)).len();
    assert!(running_on_a > 0 && running_on_b > 0 && !on_b.is_empty());
    let on_a = running_on_a + 20;
    let (running, finished) = ((running_on_a + running_on_b) as u32, on_b.len() as u32);
    assert_eq!(sim.progress(client, many), counts(100_000, 100_000 - running - finished, running, finished, 0));

    let before = super::graph::visits();
    sim.disconnect(a);
    let visited = (super::graph::visits() - before) as usize;
    // Every task on `a` is looked at a few times (about ten for a result to recompute), and none
    // of the 100k others: a scan of all tasks would count at least 100k.
    assert!(visited >= on_a, "the counter counts: {visited} visits for {on_a} tasks on the lost worker");
    assert!(visited <= 16 * on_a, "losing a worker with {on_a} tasks visited {visited} tasks");
    // And the loss did what it must: `a`'s tasks run again, its kept results are recomputed.
    let p = sim.progress(client, many);
    assert_eq!((p.running, p.finished), (running_on_b as u32, on_b.len() as u32));
    assert_eq!(sim.progress(client, kept), counts(20, 20, 0, 0, 0));
}

#[path = "tests_resources.rs"]
mod resources;

#[path = "tests_observe.rs"]
mod observe;

#[path = "tests_restore.rs"]
mod restore;

#[path = "tests_pace.rs"]
mod pace;

fn ended_page(reply: Reply) -> EndedPage {
    match reply {
        Reply::Ended(p) => p,
        other => panic!("expected Ended, got {other:?}"),
    }
}

#[test]
fn ended_lists_tasks_in_the_order_they_end_with_their_holders_and_failures() {
    let mut sim = Sim::new();
    let (c1, w1) = sim.connect_worker(2);
    let client = sim.connect_client();
    // Tasks 0 and 1 finish before anyone asks; 3 next; 2 fails by its worker's death.
    let spec = JobSpec { max_attempts: 1, ..graph((0..4).map(|_| task(&[], true)).collect()) };
    let job = sim.submit(client, spec);
    assert_eq!(ids(&sim.computes(c1)), (0..4).map(|i| tid(job, i)).collect::<Vec<_>>());
    sim.finish(c1, &[tid(job, 1), tid(job, 0)]);

    let first = ended_page(sim.request(client, Request::Ended { job, after: 0 }));
    let holding =
        |w: WorkerId, c: ConnId, tasks: Vec<u32>| Holding { worker: w, address: format!("tcp://node:{c}"), tasks };
    assert_eq!(first.next, 2);
    assert_eq!(
        first.finished.iter().collect::<HashSet<_>>(),
        [0, 1].iter().collect(),
        "what ended before the first ask"
    );
    assert!(first.failed.is_empty() && !first.done);
    assert_eq!(first.holdings.len(), 1);
    assert_eq!(first.holdings[0].worker, w1);
    // Nothing new: an empty page at the same place.
    let same = ended_page(sim.request(client, Request::Ended { job, after: first.next }));
    assert_eq!((same.next, same.finished.len(), same.done), (2, 0, false));

    sim.finish(c1, &[tid(job, 3)]);
    let page = ended_page(sim.request(client, Request::Ended { job, after: 2 }));
    assert_eq!((page.next, page.finished.clone(), page.done), (3, vec![3], false));
    assert_eq!(page.holdings, vec![holding(w1, c1, vec![3])]);

    // The worker dies with task 2 running (max_attempts 1: it fails) and the results of 0, 1, 3:
    // those are recomputed on the next worker and listed again when they end again.
    sim.disconnect(c1);
    let (c2, w2) = sim.connect_worker(4);
    let failed = ended_page(sim.request(client, Request::Ended { job, after: 3 }));
    assert_eq!(failed.next, 4);
    assert_eq!(
        failed.failed.iter().map(|(i, e)| (*i, e.kind.clone())).collect::<Vec<_>>(),
        vec![(2, ErrorKind::WorkerLost)]
    );
    assert!(!failed.done, "the lost results are being recomputed");
    let redo = ids(&sim.computes(c2));
    sim.finish(c2, &redo);
    let last = ended_page(sim.request(client, Request::Ended { job, after: 4 }));
    assert_eq!(last.finished.iter().collect::<HashSet<_>>(), [0, 1, 3].iter().collect());
    assert_eq!(last.holdings.len(), 1);
    assert_eq!(last.holdings[0].worker, w2);
    assert!(last.done, "every task ended and was listed");
    assert_eq!(last.next, 7);
    assert!(matches!(sim.request(client, Request::Ended { job: JobId(999), after: 0 }), Reply::NoSuchJob(_)));
}

#[test]
fn cancel_fails_what_has_not_started_and_its_dependents_while_running_tasks_finish() {
    let mut sim = Sim::new();
    let (c1, _) = sim.connect_worker(1);
    let client = sim.connect_client();
    // 0 runs; 1 and 2 wait for it, 3 for 2; 0 and 2 are cancelled.
    let job = sim.submit(client, graph(vec![task(&[], true), task(&[0], true), task(&[0], true), task(&[2], true)]));
    let t = |i| tid(job, i);
    assert_eq!(ids(&sim.computes(c1)), vec![t(0)]);
    let reply = sim.request(client, Request::Cancel { job, tasks: Some(vec![0, 2]) });
    assert_eq!(reply, Reply::Cancelled(Cancelled { cancelled: 1, running: 1 }));
    let cancelled = TaskError { kind: ErrorKind::Cancelled, message: "cancelled by a client".into() };
    assert_eq!(sim.progress(client, job), counts(4, 1, 1, 0, 2), "2 and its dependent 3 failed");
    sim.finish(c1, &[t(0)]);
    assert_eq!(ids(&sim.computes(c1)), vec![t(1)], "the running task finished and its dependent runs");
    // Whole-job cancel: nothing is left to cancel but the running task.
    let reply = sim.request(client, Request::Cancel { job, tasks: None });
    assert_eq!(reply, Reply::Cancelled(Cancelled { cancelled: 0, running: 1 }));
    sim.finish(c1, &[t(1)]);
    let outcome = job_done(sim.request(client, Request::Wait(job)));
    assert_eq!(outcome.finished, 2);
    let dep = TaskError { kind: ErrorKind::DependencyFailed(t(2)), ..cancelled.clone() };
    assert_eq!(outcome.failed, vec![(2, cancelled), (3, dep)]);
    // A wrong index refuses the request and changes nothing; an unknown job is said so.
    let other = sim.submit(client, array(vec![(1, 3), (7, 9)], 1));
    let given = ids(&sim.computes(c1));
    let sent = given.len() as u32;
    assert!(sent >= 1);
    let refused = sim.request(client, Request::Cancel { job: other, tasks: Some(vec![1, 4]) });
    assert!(
        matches!(&refused, Reply::Refused(r) if r.kind == RefusalKind::Invalid && r.message.contains("no task 4: its array is 1-3,7-9")),
        "{refused:?}"
    );
    assert_eq!(sim.progress(client, other).failed, 0);
    // An array's tasks are named by their array index: 9 is the last one.
    let last = sim.request(client, Request::Cancel { job: other, tasks: Some(vec![9]) });
    assert_eq!(last, Reply::Cancelled(Cancelled { cancelled: 1, running: 0 }));
    let cancelled_all = sim.request(client, Request::Cancel { job: other, tasks: None });
    assert_eq!(cancelled_all, Reply::Cancelled(Cancelled { cancelled: 5 - sent, running: sent }));
    assert!(sim.all_computes().is_empty(), "a cancelled task is never sent");
    sim.finish(c1, &given);
    let outcome = job_done(sim.request(client, Request::Wait(other)));
    assert_eq!(outcome.finished, sent);
    let failed: Vec<u32> = outcome.failed.iter().map(|(i, _)| *i).collect();
    assert!(failed.contains(&9) && failed.len() as u32 == 6 - sent, "{failed:?}");
    let gone = JobId(9_999);
    assert_eq!(sim.request(client, Request::Cancel { job: gone, tasks: None }), Reply::NoSuchJob(gone));
}

#[test]
fn every_failure_of_a_large_cancelled_array_is_listed_once_with_its_reason() {
    // A campaign's array cancelled before any worker came: each of its tasks failed, and the
    // `Ended` pages (what `as_completed` and `wait --stream` follow) name each once, with why.
    // (Each failed task's reason is looked up by index: a scan per task made this quadratic.)
    let mut sim = Sim::new();
    let client = sim.connect_client();
    let n = 150_000;
    let job = sim.submit(client, array(vec![(1, n)], 1));
    let reply = sim.request(client, Request::Cancel { job, tasks: None });
    assert_eq!(reply, Reply::Cancelled(Cancelled { cancelled: n, running: 0 }));
    let mut seen = vec![false; n as usize];
    let mut after = 0;
    loop {
        let page = ended_page(sim.request(client, Request::Ended { job, after }));
        assert!(page.finished.is_empty());
        for (i, e) in &page.failed {
            assert_eq!(e.kind, ErrorKind::Cancelled, "task {i}: {e:?}");
            assert!(!std::mem::replace(&mut seen[*i as usize], true), "task {i} listed twice");
        }
        after = page.next;
        if page.done {
            break;
        }
    }
    assert!(seen.iter().all(|s| *s), "every task was listed");
    let outcome = job_done(sim.request(client, Request::Wait(job)));
    assert_eq!(outcome.failed.len(), n as usize);
    assert_eq!(outcome.failed.first().map(|(i, _)| *i), Some(1), "arrays report their own indices");
}

#[test]
fn a_status_looks_at_no_task_of_a_large_queued_array() {
    // The dashboard and the provisioner ask for the status every second or so, while a
    // campaign's array of millions waits: its cost must not grow with the tasks queued.
    let mut sim = Sim::new();
    let (w, _) = sim.connect_worker(1);
    let client = sim.connect_client();
    let job = sim.submit(client, array(vec![(1, 100_000)], 1));
    assert!(!sim.computes(w).is_empty());
    let before = super::graph::visits();
    let s = sim.status(client);
    let visited = super::graph::visits() - before;
    assert!(visited < 100, "a status visited {visited} tasks of a queued array");
    let j = s.jobs.iter().find(|j| j.id == job).expect("the job is listed");
    assert!(j.counts.waiting > 99_000 && j.waiting_for.is_none(), "{j:?}");
}
