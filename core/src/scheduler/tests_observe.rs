//! What the scheduler lets others watch: events, the task stream, the counters.

use super::*;
use crate::protocol::{ClusterEvent, EventKind, EventPage, Metrics, WorkerLoad};
use crate::scheduler::EVENTS_KEPT;

fn events(sim: &mut Sim, client: ConnId, after: u64) -> EventPage {
    match sim.request(client, Request::Events { after }) {
        Reply::Events(p) => p,
        other => panic!("expected Events, got {other:?}"),
    }
}

fn metrics(sim: &mut Sim, client: ConnId, tasks_after: u64) -> Metrics {
    match sim.request(client, Request::Metrics { tasks_after }) {
        Reply::Metrics(m) => *m,
        other => panic!("expected Metrics, got {other:?}"),
    }
}

#[test]
fn a_job_s_life_is_in_the_events_and_its_tasks_in_the_counters() {
    let mut sim = Sim::new();
    let (c1, w1) = sim.connect_worker(2);
    let client = sim.connect_client();
    let job = sim.submit(client, array(vec![(1, 4)], 1));
    let on = sim.computes(c1);
    assert_eq!(on.len(), 4);
    sim.advance(Duration::from_millis(30));
    sim.finish_with(c1, &[on[0].id, on[1].id, on[2].id], 0, 2_000);
    sim.send(c1, ToScheduler::Failed(on[3].id, TaskError { kind: ErrorKind::ExitCode(3), message: "oops".into() }));

    let page = events(&mut sim, client, 0);
    assert_eq!(page.missed, 0);
    let kinds: Vec<&EventKind> = page.events.iter().map(|e| &e.what).collect();
    assert!(matches!(kinds[0], EventKind::WorkerJoined { worker, slots: 2, .. } if *worker == w1), "{kinds:?}");
    assert!(matches!(kinds[1], EventKind::JobSubmitted { job: j, tasks: 4, .. } if *j == job), "{kinds:?}");
    let array_index = match kinds[2] {
        EventKind::TaskFailed { job: j, task, worker, error } => {
            assert_eq!((*j, *worker, &error.kind), (job, Some(w1), &ErrorKind::ExitCode(3)));
            assert_eq!(error.message, "oops");
            *task
        }
        other => panic!("expected TaskFailed, got {other:?}"),
    };
    assert!((1..=4).contains(&array_index), "an array task is named by its array index");
    assert!(matches!(kinds[3], EventKind::JobFinished { finished: 3, failed: 1, .. }), "{kinds:?}");
    assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4], "numbered without gaps");
    assert!(page.events[2].at_ms >= 30, "times are on the scheduler's clock: {:?}", page.events[2]);
    // Reading on from the last seen number gives only what is new.
    sim.disconnect(c1);
    let next = events(&mut sim, client, 4);
    assert!(matches!(&next.events[..], [ClusterEvent { seq: 5, what: EventKind::WorkerLeft { .. }, .. }]), "{next:?}");

    let m = metrics(&mut sim, client, 0);
    let k = m.kinds.iter().find(|k| k.kind == "command:g").expect("the job's kind");
    assert_eq!((k.finished, k.failed), (3, 1));
    assert_eq!(k.duration_sum_us, 6_000);
    assert_eq!(k.duration_buckets.iter().sum::<u64>(), 3);
    assert_eq!(k.duration_buckets[2], 3, "2 ms lies in the (1 ms, 10 ms] bucket");
    assert_eq!(m.tasks.len(), 4);
    assert_eq!(m.tasks.iter().filter(|t| !t.ok).count(), 1);
    assert!(m.tasks.iter().all(|t| t.worker == w1 && t.kind == "command:g" && t.start_ms <= t.end_ms));
    assert_eq!((m.workers_joined, m.workers_left), (1, 1));
    assert!(metrics(&mut sim, client, m.tasks.last().unwrap().seq).tasks.is_empty());
}

#[test]
fn a_reader_that_fell_behind_is_told_how_many_events_it_missed() {
    let mut sim = Sim::new();
    let client = sim.connect_client();
    for _ in 0..(EVENTS_KEPT + 10) {
        let (c, _) = sim.connect_worker(1);
        sim.disconnect(c);
    }
    let page = events(&mut sim, client, 0);
    let total = 2 * (EVENTS_KEPT as u64 + 10);
    assert_eq!(page.events.len(), EVENTS_KEPT, "memory for events is bounded");
    assert_eq!(page.missed, total - EVENTS_KEPT as u64);
    assert_eq!(page.events.last().unwrap().seq, total);
    assert_eq!(events(&mut sim, client, total - 1).missed, 0);
}

#[test]
fn heartbeats_carry_the_worker_s_load_into_status_and_bytes_moved_outlive_the_worker() {
    let mut sim = Sim::new();
    let (c1, _) = sim.connect_worker(1);
    let client = sim.connect_client();
    let load = WorkerLoad { rss_bytes: 5 << 20, cpu_ms: 1234, fetched_bytes: 999 };
    sim.send(c1, ToScheduler::Heartbeat { load, ack: false, interval_ms: 1000 });
    assert_eq!(sim.status(client).workers[0].load, load);
    sim.disconnect(c1);
    assert_eq!(metrics(&mut sim, client, 0).fetched_bytes, 999);
}
