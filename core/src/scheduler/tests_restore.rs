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
        let timeout = config.heartbeat_timeout;
        let sched = Scheduler::restore(config, now, &Restored::fold(records), WINDOW);
        Sim { sched, now, timeout, next_conn: 100, next_req: 1, out: vec![], seen: HashMap::new() }
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
        [Record::WorkerJoined { .. }, Record::WorkerJoined { .. }, Record::Submitted { .. }, ..]
    ));
    let ended = records.iter().filter(|r| matches!(r, Record::Ended { .. })).count();
    assert_eq!(ended, first.len(), "one Ended record per task that ended, no more");

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
    assert!(restored.jobs.is_empty());
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
