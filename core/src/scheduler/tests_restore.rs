//! Restarting from the journal: what ended stays ended, what workers still run is theirs
//! again, what nobody claims runs when the adoption window closes, and compaction keeps what
//! the journal says.

use super::*;
use crate::protocol::Resume;
use crate::scheduler::{Record, Restored};

const WINDOW: Duration = Duration::from_secs(10);

fn journalled() -> Config {
    Config { journal: true, ..Config::default() }
}

impl Sim {
    /// Takes the journal records emitted so far, through the journal's codec (JSON).
    fn journal(&mut self) -> Vec<Record> {
        self.take(|c| if let Command::Journal(r) = c { Some(r.clone()) } else { None })
            .into_iter()
            .map(|r| serde_json::from_str(&serde_json::to_string(&r).expect("encodes")).expect("decodes"))
            .collect()
    }

    /// The scheduler restarted at `now` from `records`.
    fn restarted(records: Vec<Record>, now: Instant) -> Sim {
        let config = journalled();
        let (timeout, base) = (config.heartbeat_timeout, config.heartbeat_interval);
        let sched = Scheduler::restore(config, now, &Restored::fold(records), WINDOW);
        let (seen, paces) = (HashMap::new(), HashMap::new());
        Sim { sched, now, timeout, next_conn: 100, next_req: 1, out: vec![], seen, base, paces }
    }

    /// A worker coming back with what it still runs; returns its connection and new id.
    fn reconnect_worker(&mut self, slots: u16, resume: Resume) -> (ConnId, WorkerId) {
        self.connect_worker_with(slots, |info| info.resume = Some(Box::new(resume)))
    }
}

#[test]
fn a_restarted_scheduler_keeps_what_ended_and_adopts_what_workers_still_run() {
    let mut sim = Sim::with(journalled());
    let (a, wa) = sim.connect_worker(2);
    let (b, wb) = sim.connect_worker(2);
    let client = sim.connect_client();
    let job = sim.submit(client, array(vec![(1, 40)], 1));
    let mut ran: Vec<TaskId> = Vec::new();
    // A first round: every task sent finishes, but one fails with exit code 3.
    let first = sim.all_computes();
    let failed = first[0].1.id;
    for (conn, t) in &first {
        ran.push(t.id);
        if t.id == failed {
            sim.fail(*conn, t.id, ErrorKind::ExitCode(3));
        } else {
            sim.finish(*conn, &[t.id]);
        }
    }
    // The second round is running when the scheduler dies; one of its tasks ends before the
    // scheduler heard of it.
    let second = sim.all_computes();
    assert!(!second.is_empty());
    let records = sim.journal();
    assert!(matches!(
        &records[..],
        [Record::WorkerJoined { .. }, Record::WorkerJoined { .. }, Record::Accepted { .. }, ..]
    ));
    let ended: usize = records
        .iter()
        .map(|r| match r {
            Record::Ended { .. } => 1,
            Record::Finished { tasks, .. } | Record::Failed { tasks, .. } => tasks.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(ended, first.len(), "each task that ended is on record once, no more");

    let mut sim = Sim::restarted(records, sim.now + Duration::from_secs(1));
    let client = sim.connect_client();
    assert_eq!(sim.progress(client, job), counts(40, 40 - first.len() as u32, 0, first.len() as u32 - 1, 1));
    // Nothing runs before the workers on record are back.
    assert!(sim.all_computes().is_empty());
    let running = |conn: ConnId| second.iter().filter(|(c, _)| *c == conn).map(|(_, t)| t.id).collect::<Vec<_>>();
    let (ra, rb) = (running(a), running(b));
    // Worker a reported ra[0] finished just before the crash (not journalled): it says so again.
    let lately = vec![Finished { id: ra[0], size: 0, duration_us: 500_000 }];
    let resume = Resume { worker: wa, running: ra[1..].to_vec(), held: vec![], finished: lately, failed: vec![] };
    let (a2, wa2) = sim.reconnect_worker(2, resume);
    assert_eq!(wa2, wa, "a worker coming back keeps its id");
    assert!(sim.all_computes().is_empty(), "worker b is on record and not back yet: nothing is placed");
    // b comes back last, with an outcome it reported just before the crash: the window closes
    // at its registration, and that task must not be placed again.
    let lately = vec![Finished { id: rb[0], size: 0, duration_us: 500_000 }];
    let resume = Resume { worker: wb, running: rb[1..].to_vec(), held: vec![], finished: lately, failed: vec![] };
    let (b2, wb2) = sim.reconnect_worker(2, resume);
    assert_eq!(wb2, wb);
    // Everyone is back: the window closes and the rest is placed; nothing adopted runs again.
    let third = sim.all_computes();
    let adopted: Vec<TaskId> = ra.iter().chain(&rb).copied().collect();
    for (_, t) in &third {
        assert!(!ran.contains(&t.id) && !adopted.contains(&t.id), "task {} ran twice", t.id);
    }
    for (conn, t) in third {
        sim.finish(conn, &[t.id]);
    }
    sim.finish(a2, &ra[1..]);
    sim.finish(b2, &rb[1..]);
    sim.run_to_end();
    let r = sim.request_async(client, Request::Wait(job));
    let replies = sim.replies(client);
    let outcome = job_done(replies.into_iter().find(|(q, _)| *q == r).expect("wait answered").1);
    assert_eq!((outcome.tasks, outcome.finished), (40, 39));
    assert_eq!(outcome.failed.len(), 1);
    assert_eq!(outcome.failed[0].1.kind, ErrorKind::ExitCode(3), "the failed task's exit code survives the restart");
}

#[test]
fn tasks_of_a_worker_that_does_not_come_back_run_when_the_window_closes() {
    let mut sim = Sim::with(journalled());
    let (_a, _) = sim.connect_worker(4);
    let client = sim.connect_client();
    let job = sim.submit(client, array(vec![(1, 8)], 1));
    let sent = sim.all_computes();
    assert_eq!(sent.len(), 8);
    let records = sim.journal();
    let mut sim = Sim::restarted(records, sim.now);
    let (c, _) = sim.connect_worker(4);
    assert!(sim.all_computes().is_empty(), "the window is open: the lost worker may still come back");
    for _ in 0..WINDOW.as_secs() {
        sim.heartbeat(c);
        sim.advance(Duration::from_secs(1));
    }
    let rerun = sim.computes(c);
    assert!(!rerun.is_empty(), "after the window the unclaimed tasks run again");
    sim.finish(c, &ids(&rerun));
    sim.run_to_end();
    let client = sim.connect_client();
    assert_eq!(sim.progress(client, job), counts(8, 0, 0, 8, 0));
}

#[test]
fn released_jobs_are_not_restored_and_their_ids_are_not_given_again() {
    let mut sim = Sim::with(journalled());
    let (_a, _) = sim.connect_worker(4);
    let client = sim.connect_client();
    let done = sim.submit(client, array(vec![(1, 2)], 1));
    sim.run_to_end();
    assert_eq!(sim.request(client, Request::Release(done)), Reply::Ok);
    let g = sim.submit(client, graph(vec![task(&[], false)]));
    let records = sim.journal();
    let restored = Restored::fold(records.clone());
    assert_eq!(
        restored.jobs.keys().copied().collect::<Vec<_>>(),
        vec![g],
        "the graph is on record, not the released array"
    );
    // Compaction says the same in fewer records.
    let compacted = restored.records();
    assert!(compacted.len() < records.len());
    assert_eq!(Restored::fold(compacted), restored);
    let mut sim = Sim::restarted(records, sim.now);
    let client = sim.connect_client();
    assert_eq!(sim.request(client, Request::Progress(done)), Reply::NoSuchJob(done));
    let next = sim.submit(client, array(vec![(1, 1)], 1));
    assert!(next.0 > g.0, "job ids are never given twice, across restarts too");
}

/// Task values as workers would compute them: a task's value is its index plus its inputs'
/// values, each fetched from the worker the scheduler names as its holder, so a task sent
/// with an input on a worker that does not hold it fails the test.
#[derive(Default)]
struct Values {
    held: HashMap<WorkerId, HashMap<TaskId, u64>>,
    computed: Vec<TaskId>,
}

impl Values {
    /// Computes and finishes everything sent to workers until nothing new is sent.
    fn run(&mut self, sim: &mut Sim, workers: &HashMap<ConnId, WorkerId>) {
        loop {
            let work = sim.all_computes();
            if work.is_empty() {
                return;
            }
            for (conn, a) in work {
                let value = a.id.index as u64
                    + a.inputs
                        .iter()
                        .map(|(id, w)| {
                            *self.held.get(w).and_then(|h| h.get(id)).unwrap_or_else(|| {
                                panic!("task {} sent with input {id} on worker {w}, which does not hold it", a.id)
                            })
                        })
                        .sum::<u64>();
                self.held.entry(workers[&conn]).or_default().insert(a.id, value);
                self.computed.push(a.id);
                sim.finish(conn, &[a.id]);
            }
        }
    }

    fn holder(&self, id: TaskId) -> WorkerId {
        *self.held.iter().find(|(_, h)| h.contains_key(&id)).expect("computed").0
    }
}

/// r0 r1 r2 r3 → m0 = f(r0, r2), m1 = f(r1, r3) → t = f(m0, m1), kept. (Roots go to workers
/// in turn: on two workers, m0's inputs are on one, m1's on the other.)
fn diamonds() -> JobSpec {
    graph(vec![
        task(&[], false),
        task(&[], false),
        task(&[], false),
        task(&[], false),
        task(&[0, 2], false),
        task(&[1, 3], false),
        task(&[4, 5], true),
    ])
}

/// t's value: its index plus its inputs', recursively.
#[allow(clippy::identity_op)] // spelled out task by task
const T_VALUE: u64 = 6 + (4 + 0 + 2) + (5 + 1 + 3);

#[test]
fn a_restored_graph_keeps_the_results_a_returning_worker_holds_and_recomputes_a_lost_workers() {
    let mut sim = Sim::with(journalled());
    let (a, wa) = sim.connect_worker(1);
    let (b, wb) = sim.connect_worker(1);
    let mut workers = HashMap::from([(a, wa), (b, wb)]);
    let client = sim.connect_client();
    let job = sim.submit(client, diamonds());
    let mut values = Values::default();
    // Roots, then m0 and m1; the scheduler dies before its Compute of t leaves.
    let roots = sim.all_computes();
    assert_eq!(roots.len(), 4);
    for (conn, a) in &roots {
        values.held.entry(workers[conn]).or_default().insert(a.id, u64::from(a.id.index));
        sim.finish(*conn, &[a.id]);
    }
    let mids = sim.all_computes();
    assert_eq!(mids.len(), 2);
    for (conn, a) in &mids {
        let v = u64::from(a.id.index) + a.inputs.iter().map(|(id, w)| values.held[w][id]).sum::<u64>();
        values.held.entry(workers[conn]).or_default().insert(a.id, v);
        sim.finish(*conn, &[a.id]);
    }
    let (m0, m1) = (tid(job, 4), tid(job, 5));
    let (keeper, lost) = (values.holder(m0), values.holder(m1));
    assert_ne!(keeper, lost, "m0 and m1 went to different workers (inputs where they are)");
    let records = sim.journal();
    assert!(
        records.iter().any(|r| matches!(r, Record::Accepted { job: j, .. } if *j == job)),
        "a graph is journalled with its spec"
    );

    let mut sim = Sim::restarted(records, sim.now + Duration::from_secs(1));
    let client = sim.connect_client();
    let wait = sim.request_async(client, Request::Wait(job));
    assert_eq!(sim.progress(client, job), counts(7, 1, 0, 6, 0), "what ended is restored as ended");
    // The worker holding m0 comes back with it; the one holding m1 is gone for good.
    values.held.remove(&lost);
    let resume = Resume { worker: keeper, running: vec![], held: vec![(m0, 100)], finished: vec![], failed: vec![] };
    let (k, _) = sim.reconnect_worker(1, resume);
    let (fresh, wf) = sim.connect_worker(1);
    workers = HashMap::from([(k, keeper), (fresh, wf)]);
    values.held.retain(|w, _| *w == keeper);
    assert!(sim.all_computes().is_empty(), "the window is open: the worker holding m1 may still come back");
    for _ in 0..WINDOW.as_secs() {
        sim.heartbeat(k);
        sim.heartbeat(fresh);
        sim.advance(Duration::from_secs(1));
    }
    values.run(&mut sim, &workers);
    let mut recomputed = values.computed.clone();
    recomputed.sort();
    assert_eq!(
        recomputed,
        vec![tid(job, 1), tid(job, 3), m1, tid(job, 6)],
        "only the lost result, the inputs it needs and what depends on it run again"
    );
    let outcome = job_done(sim.replies(client).into_iter().find(|(q, _)| *q == wait).expect("wait answered").1);
    assert_eq!((outcome.tasks, outcome.finished), (7, 7));
    let holder = outcome.holdings.iter().find(|h| h.tasks.contains(&6)).expect("t is kept");
    let w = *workers.get(&if holder.address.ends_with(&format!(":{k}")) { k } else { fresh }).unwrap();
    assert_eq!(values.held[&w][&tid(job, 6)], T_VALUE, "the restored graph computed the right value");
}

#[test]
fn a_done_graphs_kept_result_is_served_by_its_returning_worker_and_a_wait_waits_for_it() {
    let mut sim = Sim::with(journalled());
    let (a, wa) = sim.connect_worker(2);
    let client = sim.connect_client();
    let job = sim.submit(client, diamonds());
    let mut values = Values::default();
    values.run(&mut sim, &HashMap::from([(a, wa)]));
    let records = sim.journal();

    let mut sim = Sim::restarted(records, sim.now);
    let client = sim.connect_client();
    let wait = sim.request_async(client, Request::Wait(job));
    assert!(
        sim.replies(client).is_empty(),
        "the job ended, but its kept result is on a worker that has not come back: the wait waits"
    );
    let held = vec![(tid(job, 6), 100)];
    let resume = Resume { worker: wa, running: vec![], held, finished: vec![], failed: vec![] };
    let (a2, _) = sim.reconnect_worker(2, resume);
    assert!(sim.all_computes().is_empty(), "nothing runs again");
    let outcome = job_done(sim.replies(client).into_iter().find(|(q, _)| *q == wait).expect("wait answered").1);
    assert_eq!(outcome.finished, 7);
    assert_eq!(outcome.holdings.len(), 1);
    assert!(outcome.holdings[0].address.ends_with(&format!(":{a2}")), "served by the worker that came back");
}

#[test]
fn a_restored_job_released_on_disconnect_belongs_to_the_first_client_that_asks_or_is_released() {
    let spec = || JobSpec { release_on_disconnect: true, ..diamonds() };
    let mut sim = Sim::with(journalled());
    let (a, wa) = sim.connect_worker(2);
    let client = sim.connect_client();
    let claimed = sim.submit(client, spec());
    let orphan = sim.submit(client, spec());
    Values::default().run(&mut sim, &HashMap::from([(a, wa)]));
    let records = sim.journal();

    let mut sim = Sim::restarted(records, sim.now);
    let held = (0..7).flat_map(|i| [(tid(claimed, i), 1), (tid(orphan, i), 1)]).collect();
    let (a2, _) =
        sim.reconnect_worker(2, Resume { worker: wa, running: vec![], held, finished: vec![], failed: vec![] });
    let owner = sim.connect_client();
    assert_eq!(sim.progress(owner, claimed).finished, 7);
    for _ in 0..=WINDOW.as_secs() {
        sim.heartbeat(a2);
        sim.advance(Duration::from_secs(1));
    }
    let other = sim.connect_client();
    assert_eq!(sim.request(other, Request::Progress(orphan)), Reply::NoSuchJob(orphan), "no client claimed it");
    assert_eq!(sim.progress(other, claimed).finished, 7, "claimed by the client that asked first");
    sim.disconnect(owner);
    assert_eq!(sim.request(other, Request::Progress(claimed)), Reply::NoSuchJob(claimed), "released with its owner");
}

proptest::proptest! {
    #[test]
    fn an_encoded_spec_reads_back_from_its_journal_line(bytes: Vec<u8>) {
        let spec = crate::scheduler::EncodedSpec(bytes);
        let line = serde_json::to_string(&spec).expect("encodes");
        proptest::prop_assert_eq!(serde_json::from_str::<crate::scheduler::EncodedSpec>(&line).expect("decodes"), spec);
    }

    #[test]
    fn a_spec_that_is_not_pairs_of_lowercase_hex_digits_is_refused(text in "[0-9a-zA-Z]{0,9}") {
        let ok = text.len() % 2 == 0 && text.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
        let read = serde_json::from_str::<crate::scheduler::EncodedSpec>(&format!("\"{text}\""));
        proptest::prop_assert_eq!(read.is_ok(), ok);
    }
}

#[test]
fn a_journal_written_by_an_earlier_version_is_read_and_compacts_to_the_same() {
    let (job, spec) = (JobId(4), array(vec![(1, 3)], 1));
    let old = [
        Record::Submitted { job, spec: Box::new(spec.clone()) },
        Record::Ended { task: tid(job, 0), error: None },
        Record::Ended {
            task: tid(job, 2),
            error: Some(TaskError { kind: ErrorKind::ExitCode(2), message: "x".into() }),
        },
    ];
    let lines: Vec<String> = old.iter().map(|r| serde_json::to_string(r).expect("encodes")).collect();
    let read: Vec<Record> = lines.iter().map(|l| serde_json::from_str(l).expect("decodes")).collect();
    let restored = Restored::fold(read);
    assert_eq!(*restored.jobs[&job].spec, spec);
    assert_eq!(restored.jobs[&job].ended.len(), 2);
    let compacted = restored.records();
    assert!(matches!(compacted[0], Record::Accepted { .. }), "compaction writes the current form");
    assert_eq!(Restored::fold(compacted), restored);
}

#[test]
fn a_cancelled_array_is_one_journal_record_and_stays_cancelled_after_a_restart() {
    let mut sim = Sim::with(journalled());
    let (w, _) = sim.connect_worker(1);
    let client = sim.connect_client();
    let n = 10_000;
    let job = sim.submit(client, array(vec![(1, n)], 1));
    let running = sim.computes(w).len() as u32;
    let reply = sim.request(client, Request::Cancel { job, tasks: None });
    assert_eq!(reply, Reply::Cancelled(Cancelled { cancelled: n - running, running }));
    let records = sim.journal();
    let failed: Vec<&Record> =
        records.iter().filter(|r| matches!(r, Record::Failed { .. } | Record::Ended { .. })).collect();
    assert!(
        matches!(&failed[..], [Record::Failed { tasks, error, .. }] if tasks.len() as u32 == n - running && error.kind == ErrorKind::Cancelled),
        "the cancellation is one record: {} records",
        failed.len()
    );
    // Restarted from that journal (and from its compacted form), the cancelled stay cancelled.
    for records in [records.clone(), Restored::fold(records).records()] {
        let mut sim = Sim::restarted(records, sim.now + Duration::from_secs(1));
        let client = sim.connect_client();
        let p = sim.progress(client, job);
        assert_eq!((p.total, p.failed), (n, n - running), "{p:?}");
    }
}
