//! The provisioner against the real sans-IO scheduler and a fake batch system, under a
//! simulated clock: the scheduler is `rdask::scheduler::Scheduler` itself, its workers and
//! client are scripted connections, and the batch system is [`FakeBatch`] reached through the
//! real [`BatchBackend`] (so scripts are rendered, written and journalled as in a cluster).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdask::protocol::{
    AllocationState, ClientInfo, CommandSpec, ControlRequest, Finished, JobSpec, JobTasks, Offer, ProvisioningStatus,
    RefusalKind, Reply, Request, ScaleTarget, TaskId, ToClient, ToScheduler, ToWorker, WorkerId, WorkerInfo,
};
use rdask::scheduler::{Command, ConnId, Event, Scheduler};

use super::driver::execute;
use super::launch::{BatchLauncher, Launcher};
use super::{Action, Config, Input, PoolConfig, Provisioner, FIXED_MAX_FAILURES};
use crate::adapt::{AdaptSpec, JobShape};
use crate::backend::{self, BatchBackend};
use crate::batch::JobParams;
use crate::fake::FakeBatch;
use crate::jobs::JobState;
use crate::state::StateDir;
use crate::systems::slurm;

const TICK: Duration = Duration::from_millis(500);

struct Sim {
    now: Instant,
    prov: Provisioner,
    sched: Scheduler,
    fake: FakeBatch,
    launcher: BatchLauncher,
    state: StateDir,
    _home: tempfile::TempDir,
    /// Connected workers: their launch tag and, once welcomed, their id.
    workers: BTreeMap<ConnId, (String, Option<WorkerId>)>,
    /// Tasks each worker runs now.
    running: HashMap<ConnId, Vec<TaskId>>,
    next_conn: ConnId,
    client: ConnId,
    next_req: u64,
    replies: HashMap<u64, Reply>,
    published: Option<ProvisioningStatus>,
    /// What the scheduler had been given to show when each reply reached the client.
    published_at_reply: HashMap<u64, Option<ProvisioningStatus>>,
    /// The accepted scale/adapt requests the driver would journal, in order.
    recorded: Vec<rdask::protocol::ControlRequest>,
}

fn pool(name: &str, workers: u32, initial: u32) -> PoolConfig {
    PoolConfig {
        name: name.into(),
        shape: JobShape { workers, slots: 1 },
        nodes_per_job: 1,
        initial,
        scalable: true,
        offer: Default::default(),
    }
}

impl Sim {
    fn new(pools: Vec<PoolConfig>, adapt: Option<AdaptSpec>) -> Sim {
        Sim::on(FakeBatch::new(), pools, adapt)
    }

    /// A cluster on `fake`, prepared beforehand; its first tick has run.
    // The simulated clock starts from a real instant, and only ever moves by `advance`.
    #[allow(clippy::disallowed_methods)]
    fn on(fake: FakeBatch, pools: Vec<PoolConfig>, adapt: Option<AdaptSpec>) -> Sim {
        let home = tempfile::tempdir().unwrap();
        let state = StateDir::locate(Some(home.path()), "sim").unwrap();
        state.create().unwrap();
        let params = JobParams { cores: Some(1), memory: Some("100MB".into()), ..JobParams::default() };
        let specs: Vec<(String, JobParams)> = pools.iter().map(|p| (p.name.clone(), params.clone())).collect();
        let argv: Vec<String> = ["rdask-jobqueue", "worker"].map(String::from).to_vec();
        let system = slurm::SYSTEM;
        let backend = BatchBackend::new(
            &state,
            system,
            backend::default_commands(system),
            Box::new(fake.clone()),
            &specs,
            &argv,
            None,
        )
        .unwrap();
        let now = Instant::now();
        let config =
            Config { backend: "slurm".into(), unit: "job", pools, adapt, poll_interval: Duration::from_secs(2) };
        let sched = Scheduler::new(rdask::scheduler::Config { controlled: true, ..Default::default() });
        let mut sim = Sim {
            now,
            prov: Provisioner::new(config, now),
            sched,
            fake,
            launcher: BatchLauncher(backend),
            state,
            _home: home,
            workers: BTreeMap::new(),
            running: HashMap::new(),
            next_conn: 1,
            client: 0,
            next_req: 1,
            replies: HashMap::new(),
            published: None,
            published_at_reply: HashMap::new(),
            recorded: Vec::new(),
        };
        sim.client = sim.connect();
        sim.sched.handle(now, Event::Message(sim.client, ToScheduler::RegisterClient(ClientInfo::default())));
        sim.prov.handle(now, Input::Tick);
        sim.pump();
        sim
    }

    fn connect(&mut self) -> ConnId {
        let c = self.next_conn;
        self.next_conn += 1;
        self.sched.handle(self.now, Event::Connected(c));
        c
    }

    /// Delivers everything the scheduler and the provisioner have to say, until both are quiet.
    fn pump(&mut self) {
        loop {
            let commands = self.sched.take_commands();
            let actions = self.prov.take_actions();
            if commands.is_empty() && actions.is_empty() {
                return;
            }
            for c in commands {
                self.command(c);
            }
            for a in actions {
                match a {
                    Action::Scheduler(rdask::scheduler::Control::Provisioning(p)) => {
                        self.published = Some(p.clone());
                        self.sched.handle(self.now, Event::Control(rdask::scheduler::Control::Provisioning(p)));
                    }
                    Action::Scheduler(c) => {
                        // What it says goes out at once (a reply is on the client's socket
                        // before the provisioner's next action reaches the scheduler).
                        self.sched.handle(self.now, Event::Control(c));
                        for c in self.sched.take_commands() {
                            self.command(c);
                        }
                    }
                    // What the driver journals (accepted scale/adapt requests) needs no answer.
                    Action::Record(request) => self.recorded.push(request),
                    other => {
                        let input = execute(&mut self.launcher, other).expect("an answer");
                        self.prov.handle(self.now, input);
                    }
                }
            }
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Notify(n) => self.prov.handle(self.now, Input::Notice(n)),
            Command::ToWorker(conn, ToWorker::Welcome { id, .. }) => {
                self.workers.get_mut(&conn).expect("a worker").1 = Some(id);
            }
            Command::ToWorker(conn, ToWorker::Compute(list)) => {
                self.running.entry(conn).or_default().extend(list.iter().map(|a| a.id));
            }
            // A retired worker hands over (it holds nothing here) and exits.
            Command::ToWorker(conn, ToWorker::Stop) | Command::Close(conn) if self.workers.contains_key(&conn) => {
                self.workers.remove(&conn);
                self.sched.handle(self.now, Event::Disconnected(conn, "exited".into()));
            }
            Command::ToClient(_, ToClient::Reply { req, body }) => {
                self.published_at_reply.insert(req, self.published.clone());
                self.replies.insert(req, body);
            }
            _ => {}
        }
    }

    /// Time passes: heartbeats from every worker, a tick for both.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += TICK.min(end - self.now);
            let conns: Vec<ConnId> = self.workers.keys().copied().collect();
            for c in conns {
                self.sched.handle(
                    self.now,
                    Event::Message(
                        c,
                        ToScheduler::Heartbeat { load: Default::default(), ack: false, interval_ms: 1000 },
                    ),
                );
            }
            self.sched.handle(self.now, Event::Tick);
            self.prov.handle(self.now, Input::Tick);
            self.pump();
        }
    }

    /// The launch tag the job script of batch job `id` gives its workers.
    fn launch_of(&self, id: &str) -> String {
        let script = self.fake.script(id).expect("submitted");
        let at = script.find("RDASK_LAUNCH_TAG=").expect("the script sets the launch tag") + "RDASK_LAUNCH_TAG=".len();
        script[at..].split_whitespace().next().unwrap().trim_matches('\'').to_string()
    }

    /// Batch job `id` starts and its `n` workers join.
    fn start(&mut self, id: &str, n: u32) {
        self.fake.set_state(id, JobState::Running);
        let launch = self.launch_of(id);
        // Its workers offer what their pool says they will.
        let pool = launch.split('/').next().unwrap_or_default().to_string();
        let offer = self.status().pools.iter().find(|p| p.name == pool).map(|p| p.offer.clone()).unwrap_or_default();
        for _ in 0..n {
            let c = self.connect();
            self.workers.insert(c, (launch.clone(), None));
            let info = WorkerInfo {
                slots: 1,
                host: "node".into(),
                pid: c as u32,
                launch: Some(launch.clone()),
                data_address: format!("tcp://node:{c}"),
                lifetime_ms: None,
                offer: offer.clone(),
                resume: None,
            };
            self.sched.handle(self.now, Event::Message(c, ToScheduler::RegisterWorker(info)));
            self.pump();
        }
    }

    /// Starts every pending job with `n` workers each; returns their ids.
    fn start_all(&mut self, n: u32) -> Vec<String> {
        let ids: Vec<String> =
            self.fake.jobs().into_iter().filter(|(_, s)| *s == JobState::Pending).map(|(i, _)| i).collect();
        for id in &ids {
            self.start(id, n);
        }
        ids
    }

    fn request(&mut self, body: Request) -> Reply {
        let req = self.next_req;
        self.next_req += 1;
        self.sched.handle(self.now, Event::Message(self.client, ToScheduler::Request { req, body }));
        self.pump();
        self.replies.remove(&req).expect("answered")
    }

    fn control(&mut self, body: ControlRequest) -> Result<String, rdask::protocol::Refusal> {
        match self.request(Request::Control(body)) {
            Reply::Control(t) => Ok(t),
            Reply::Refused(r) => Err(r),
            other => panic!("{other:?}"),
        }
    }

    fn scale(&mut self, pool: &str, jobs: u32) -> String {
        self.control(ControlRequest::Scale { pool: Some(pool.into()), target: ScaleTarget::Jobs(jobs) }).unwrap()
    }

    /// Submits `n` long command tasks; they run until [`Sim::finish_all`].
    fn submit_tasks(&mut self, n: u32) {
        self.submit_needing(n, Default::default());
    }

    /// [`Sim::submit_tasks`], each task needing `needs`.
    fn submit_needing(&mut self, n: u32, needs: rdask::protocol::Needs) {
        let command = CommandSpec {
            argv: vec!["sleep".into(), "1000".into()],
            env: vec![],
            cwd: None,
            stdout: None,
            stderr: None,
            stream: None,
        };
        let spec = JobSpec {
            name: "long".into(),
            functions: vec![],
            command: Some(command),
            tasks: JobTasks::Array { ranges: vec![(1, n)], cpus: 1, needs },
            max_attempts: 3,
            release_on_disconnect: false,
        };
        assert!(matches!(self.request(Request::Submit(Box::new(spec))), Reply::Submitted(_)));
    }

    fn finish_all(&mut self) {
        for (c, tasks) in std::mem::take(&mut self.running) {
            let done = tasks.into_iter().map(|id| Finished { id, size: 0, duration_us: 1000 }).collect();
            self.sched.handle(self.now, Event::Message(c, ToScheduler::Finished(done)));
        }
        self.pump();
    }

    fn status(&self) -> ProvisioningStatus {
        self.published.clone().expect("published")
    }

    /// The active batch jobs of `pool`, as `status` shows them.
    fn active(&self, pool: &str) -> Vec<String> {
        let st = self.status();
        let p = st.pools.iter().find(|p| p.name == pool).unwrap();
        p.jobs.iter().filter(|j| j.state.is_active()).map(|j| j.id.clone()).collect()
    }

    /// The workers that run a task now.
    fn busy_workers(&self) -> Vec<ConnId> {
        self.running.iter().filter(|(_, t)| !t.is_empty()).map(|(c, _)| *c).collect()
    }
}

#[test]
fn each_pool_starts_its_jobs_and_scales_up_and_down_on_its_own() {
    let mut sim = Sim::new(vec![pool("default", 2, 2), pool("gpu", 1, 1)], None);
    assert_eq!(sim.fake.active().len(), 3, "two jobs of the main pool and one of `gpu`");
    assert_eq!(sim.active("default").len(), 2);
    assert_eq!(sim.active("gpu").len(), 1);
    let started = sim.start_all(2);
    sim.advance(Duration::from_secs(3));
    let st = sim.status();
    assert!(st.pools[0].jobs.iter().all(|j| j.state == AllocationState::Running && j.workers.len() == 2), "{st:?}");

    let said = sim.scale("gpu", 3);
    assert!(said.contains("`gpu` to 3 job(s)"), "{said}");
    sim.advance(TICK);
    assert_eq!(sim.active("gpu").len(), 3);
    assert_eq!(sim.active("default").len(), 2, "the other pool is left alone");

    // Down: the two queued `gpu` jobs are cancelled first, newest first; nothing running is touched.
    sim.scale("gpu", 1);
    sim.advance(TICK);
    assert_eq!(sim.active("gpu"), vec![started[2].clone()], "the running gpu job stays");
    assert_eq!(sim.fake.cancelled().len(), 2);
    assert!(started.iter().all(|id| !sim.fake.cancelled().contains(id)));

    // Down again: a running job's idle workers are retired, then the job is cancelled.
    sim.scale("default", 1);
    sim.advance(Duration::from_secs(3));
    assert_eq!(sim.active("default").len(), 1, "{:?}", sim.status());
    let default_workers = sim.workers.values().filter(|(launch, _)| launch.starts_with("default/")).count();
    assert_eq!(default_workers, 2, "one job of two workers left");
    assert!(sim.fake.cancelled().contains(&started[1]), "the newest job went: {:?}", sim.fake.cancelled());
}

#[test]
fn a_client_answered_sees_the_state_its_request_changed() {
    let mut sim = Sim::new(vec![pool("default", 1, 2)], None);
    let req = sim.next_req;
    sim.scale("default", 5);
    // `scale --wait` asks for `status` as soon as it is answered: it must see the new target.
    let shown = sim.published_at_reply[&req].clone().expect("published before the reply");
    assert_eq!(shown.pools[0].target, Some(5), "{shown:?}");
}

/// The same guarantee through `scale` and `adapt`: a worker with a task is never stopped,
/// and its job is never cancelled; the idle job goes instead, and the busy one once idle.
#[test]
fn a_busy_worker_is_never_cancelled_by_scale_or_by_adapt() {
    for through in ["scale", "adapt"] {
        let mut sim = Sim::new(vec![pool("default", 1, 2)], None);
        let ids = sim.start_all(1);
        sim.submit_tasks(1);
        let busy = sim.busy_workers();
        assert_eq!(busy.len(), 1, "one task, one busy worker");
        let busy_launch = sim.workers[&busy[0]].0.clone();
        let busy_job = ids.iter().find(|id| sim.launch_of(id) == busy_launch).unwrap().clone();
        let idle_job = ids.iter().find(|id| **id != busy_job).unwrap().clone();

        let go_to_zero = |sim: &mut Sim| match through {
            "scale" => {
                sim.scale("default", 0);
            }
            _ => {
                let spec = AdaptSpec { interval: 0.5, scale_down_after: 1, ..AdaptSpec::new(0, 2) };
                sim.control(ControlRequest::Adapt { pool: None, spec: Some(spec) }).unwrap();
            }
        };
        go_to_zero(&mut sim);
        sim.advance(Duration::from_secs(10));
        assert!(sim.workers.contains_key(&busy[0]), "{through}: the busy worker is still there");
        assert!(!sim.fake.cancelled().contains(&busy_job), "{through}: its job was not cancelled");
        assert!(sim.fake.cancelled().contains(&idle_job), "{through}: the idle job went: {:?}", sim.fake.cancelled());
        assert_eq!(sim.active("default"), vec![busy_job.clone()], "{through}");

        // Once its task is done, it goes too.
        sim.finish_all();
        sim.advance(Duration::from_secs(10));
        assert!(sim.workers.is_empty(), "{through}: {:?}", sim.workers);
        assert!(sim.fake.cancelled().contains(&busy_job), "{through}");
        assert!(sim.active("default").is_empty(), "{through}: {:?}", sim.status());
    }
}

#[test]
fn a_job_that_dies_before_its_worker_joins_is_explained_and_backed_off() {
    let mut sim = Sim::new(vec![pool("default", 1, 1)], None);
    let first = sim.fake.active();
    assert_eq!(first.len(), 1);
    sim.fake.set_state(&first[0], JobState::Failed);
    sim.advance(Duration::from_secs(2));
    let st = sim.status();
    let j = st.pools[0].jobs.iter().find(|j| j.id == first[0]).unwrap();
    assert_eq!(j.state, AllocationState::Failed);
    assert!(j.note.as_deref().unwrap().contains("ended before its worker joined"), "{j:?}");
    assert!(st.pools[0].error.as_deref().unwrap().contains(&first[0]), "{st:?}");
    // It is replaced, but not at once: after a backoff.
    let submits = |sim: &Sim| sim.fake.calls().iter().filter(|c| *c == "submit").count();
    assert_eq!(submits(&sim), 1, "no instant resubmission");
    sim.advance(Duration::from_secs(3));
    assert_eq!(submits(&sim), 2, "one resubmission after the backoff");
    // A worker joining clears the error.
    let second = sim.fake.active();
    sim.start(&second[0], 1);
    sim.advance(TICK);
    assert_eq!(sim.status().pools[0].error, None);
}

#[test]
fn a_rejected_submission_is_the_pools_error_then_pauses_it() {
    let mut sim = Sim::new(vec![pool("default", 1, 0)], None);
    for _ in 0..FIXED_MAX_FAILURES {
        sim.fake.reject_next("sbatch: error: invalid partition specified: nope");
    }
    sim.scale("default", 1);
    sim.advance(TICK);
    let err = sim.status().pools[0].error.clone().unwrap();
    assert!(err.contains("invalid partition specified: nope"), "{err}");
    assert!(sim.fake.active().is_empty());
    sim.advance(Duration::from_secs(120));
    let attempts = sim.fake.calls().iter().filter(|c| *c == "submit").count();
    assert_eq!(attempts as u32, FIXED_MAX_FAILURES, "five tries with backoff, then paused");
    let err = sim.status().pools[0].error.clone().unwrap();
    assert!(err.contains("PAUSED") && err.contains("invalid partition"), "{err}");
    sim.advance(Duration::from_secs(600));
    assert_eq!(
        sim.fake.calls().iter().filter(|c| *c == "submit").count() as u32,
        FIXED_MAX_FAILURES,
        "none while paused"
    );
    // `scale` again resumes.
    sim.scale("default", 1);
    sim.advance(TICK);
    assert_eq!(sim.fake.active().len(), 1);
}

#[test]
fn adaptive_rejections_pause_adapting_with_the_reason() {
    let spec = AdaptSpec { interval: 0.5, max_failures: 3, ..AdaptSpec::new(1, 3) };
    let fake = FakeBatch::new();
    for _ in 0..10 {
        fake.reject_next("qsub: Unknown queue");
    }
    let mut sim = Sim::on(fake, vec![pool("default", 1, 0)], Some(spec));
    sim.advance(Duration::from_secs(60));
    assert_eq!(sim.fake.calls().iter().filter(|c| *c == "submit").count(), 3);
    let a = sim.status().pools[0].adapt.clone().unwrap();
    assert!(a.paused && a.reason.contains("PAUSED") && a.reason.contains("Unknown queue"), "{a:?}");
}

#[test]
fn poll_errors_keep_the_last_states_and_are_shown() {
    let mut sim = Sim::new(vec![pool("default", 1, 2)], None);
    let ids = sim.start_all(1);
    sim.fake.fail_polls(3);
    sim.advance(Duration::from_secs(3));
    let st = sim.status();
    let err = st.pools[0].error.clone().unwrap();
    assert!(err.contains("polling failed") && err.contains("Socket timed out"), "{err}");
    assert_eq!(sim.active("default").len(), 2, "states are kept: {st:?}");
    assert!(sim.fake.cancelled().is_empty(), "a failed poll ends nothing");
    sim.advance(Duration::from_secs(10));
    assert_eq!(sim.status().pools[0].error, None, "a good poll clears it");
    // A job the batch system ended is seen ending.
    sim.fake.set_state(&ids[0], JobState::Finished);
    sim.advance(Duration::from_secs(3));
    assert_eq!(sim.active("default").len(), 2, "and replaced");
}

#[test]
fn requests_are_answered_from_live_state_and_refused_with_a_kind() {
    let mut sim = Sim::new(vec![pool("default", 2, 0)], None);
    let r = sim.control(ControlRequest::Scale { pool: Some("nope".into()), target: ScaleTarget::Jobs(1) }).unwrap_err();
    assert_eq!(r.kind, RefusalKind::NotFound);
    assert!(r.message.contains("no worker pool named `nope`; this cluster has: default"), "{r}");
    let bad = AdaptSpec { interval: 0.0, ..AdaptSpec::new(3, 1) };
    let r = sim.control(ControlRequest::Adapt { pool: None, spec: Some(bad) }).unwrap_err();
    assert_eq!(r.kind, RefusalKind::Invalid);
    // Workers round up to whole jobs of two.
    sim.control(ControlRequest::Scale { pool: None, target: ScaleTarget::Workers(3) }).unwrap();
    sim.advance(TICK);
    assert_eq!(sim.fake.active().len(), 2);
    assert_eq!(sim.status().pools[0].target, Some(2));
    // Status comes with the scheduler's own reply, not from a file.
    let Reply::Status(s) = sim.request(Request::Status) else { panic!() };
    assert_eq!(s.provisioning.unwrap().pools[0].jobs.len(), 2);
    // Only the accepted request is journalled, for a restart to apply again.
    let accepted = ControlRequest::Scale { pool: None, target: ScaleTarget::Workers(3) };
    assert_eq!(sim.recorded, vec![accepted]);
}

#[test]
fn down_after_a_crash_cancels_every_journalled_job() {
    let mut sim = Sim::new(vec![pool("default", 1, 3)], None);
    sim.start_all(1);
    sim.scale("default", 4);
    sim.advance(TICK);
    let active = sim.fake.active();
    assert_eq!(active.len(), 4);
    // The scheduler is gone without cancelling anything; `down` reads the journal.
    let Sim { state, fake, _home, .. } = sim;
    let n = backend::cancel_journalled(&state, |system, commands| {
        assert_eq!(system, slurm::SYSTEM);
        assert_eq!(commands, backend::default_commands(slurm::SYSTEM), "the journalled commands");
        Box::new(fake.clone())
    })
    .unwrap();
    assert_eq!(n, 4);
    assert!(fake.active().is_empty(), "{:?}", fake.jobs());
    for id in active {
        assert!(fake.cancelled().contains(&id));
    }
}

#[test]
fn ending_the_cluster_cancels_what_is_still_being_submitted_too() {
    let mut sim = Sim::new(vec![pool("default", 1, 2)], None);
    sim.prov.shut_down();
    let ids = sim.prov.active_ids();
    assert_eq!(ids.len(), 2);
    sim.launcher.end_all(&ids, Duration::from_secs(5)).unwrap();
    assert!(sim.fake.active().is_empty());
    // No new submission once shutting down, whatever the target.
    let r = sim.control(ControlRequest::Scale { pool: None, target: ScaleTarget::Jobs(5) }).unwrap_err();
    assert_eq!(r.kind, RefusalKind::ShuttingDown);
}

fn gpu_pool() -> PoolConfig {
    PoolConfig {
        offer: Offer { gpus: vec!["0".into()], pool: Some("gpu".into()), ..Offer::default() },
        ..pool("gpu", 1, 0)
    }
}

#[test]
fn gpu_tasks_grow_only_the_gpu_pool() {
    let spec = AdaptSpec { interval: 0.5, ..AdaptSpec::new(0, 2) };
    let mut sim = Sim::new(vec![pool("default", 1, 0), gpu_pool()], Some(spec));
    sim.advance(Duration::from_secs(2));
    assert!(sim.fake.active().is_empty(), "no work, no job");
    sim.submit_needing(20, rdask::protocol::Needs { gpus: 1, ..Default::default() });
    sim.advance(Duration::from_secs(3));
    assert_eq!(sim.active("default").len(), 0, "the CPU pool does not grow for GPU tasks");
    assert_eq!(sim.active("gpu").len(), 2, "the GPU pool grows to its maximum");
    // Its workers join, each with one GPU: one GPU task each.
    sim.start_all(1);
    sim.advance(TICK);
    assert_eq!(sim.busy_workers().len(), 2, "both GPU workers run a GPU task");
    assert_eq!(sim.running.values().map(Vec::len).sum::<usize>(), 2, "one task per GPU");
}

#[test]
fn cpu_tasks_grow_only_the_cpu_pool() {
    let spec = AdaptSpec { interval: 0.5, ..AdaptSpec::new(0, 2) };
    let mut sim = Sim::new(vec![pool("default", 1, 0), gpu_pool()], Some(spec));
    sim.submit_tasks(20);
    sim.advance(Duration::from_secs(3));
    assert_eq!(sim.active("default").len(), 2, "the CPU pool grows for CPU tasks");
    assert_eq!(sim.active("gpu").len(), 0, "the GPU pool does not");
}

#[test]
fn a_gpu_pool_alone_also_runs_cpu_work() {
    let spec = AdaptSpec { interval: 0.5, ..AdaptSpec::new(0, 1) };
    let mut sim = Sim::new(vec![gpu_pool()], Some(spec));
    sim.submit_tasks(5);
    sim.advance(Duration::from_secs(3));
    assert_eq!(sim.active("gpu").len(), 1, "with no CPU pool, the GPU pool is there for CPU work too");
}

#[test]
fn tasks_that_name_a_pool_grow_that_pool_only() {
    let spec = AdaptSpec { interval: 0.5, ..AdaptSpec::new(0, 2) };
    let big = PoolConfig { offer: Offer { pool: Some("big".into()), ..Offer::default() }, ..pool("big", 1, 0) };
    let mut sim = Sim::new(vec![pool("default", 1, 0), big], Some(spec));
    sim.submit_needing(20, rdask::protocol::Needs { pool: Some("big".into()), ..Default::default() });
    sim.advance(Duration::from_secs(3));
    assert_eq!((sim.active("default").len(), sim.active("big").len()), (0, 2));
}
