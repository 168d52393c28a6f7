//! The heartbeat interval the scheduler tells grows with the workers connected, and each
//! worker's death timeout with the interval it keeps: a worker is never lost because the
//! interval changed, and a silent one is still found out.

use super::*;
use crate::scheduler::MAX_STRETCH;

impl Sim {
    /// `n` workers of one slot, in registration order.
    fn connect_workers(&mut self, n: usize) -> Vec<ConnId> {
        (0..n).map(|_| self.connect_worker(1).0).collect()
    }

    /// The intervals of the `Pace` messages sent to `conn`, taken.
    fn paces_to(&mut self, conn: ConnId) -> Vec<Duration> {
        self.sent_to(conn, |m| if let ToWorker::Pace { heartbeat_ms } = m { Some(*heartbeat_ms) } else { None })
            .into_iter()
            .map(Duration::from_millis)
            .collect()
    }

    /// A heartbeat from a worker that keeps `interval` (whatever it was told).
    fn heartbeat_keeping(&mut self, conn: ConnId, interval: Duration) {
        let interval_ms = interval.as_millis() as u64;
        self.send(conn, ToScheduler::Heartbeat { load: Default::default(), ack: false, interval_ms });
    }
}

#[test]
fn the_interval_told_grows_with_the_workers_and_a_worker_is_told_again_once() {
    let mut sim = Sim::new();
    let base = sim.base;
    let workers = sim.connect_workers(500);
    let told: Vec<Duration> = workers.iter().map(|c| sim.told(*c)).collect();
    assert_eq!(told[0], base, "one worker: the base interval");
    assert_eq!(told[99], base, "a hundred workers: still the base interval");
    assert!(told.windows(2).all(|w| w[0] <= w[1]), "the interval told at registration never shrinks as workers join");
    assert!(told[499] >= base * 4, "500 workers: told {:?} at registration", told[499]);
    assert!(told[499] <= base * MAX_STRETCH);
    sim.out.clear();

    // The first worker was told the base interval: its next heartbeat brings it the new one,
    // instead of an Ack, and the one after brings nothing.
    let first = workers[0];
    sim.send(
        first,
        ToScheduler::Heartbeat { load: Default::default(), ack: true, interval_ms: base.as_millis() as u64 },
    );
    assert_eq!(sim.paces_to(first), vec![told[499]], "told the interval of 500 workers");
    assert!(std::mem::take(&mut sim.out).is_empty(), "a Pace answers a heartbeat that asked, no Ack besides");
    sim.heartbeat(first);
    assert!(sim.paces_to(first).is_empty(), "told once, not at every heartbeat");
    // The last one to join was told the current interval already.
    sim.heartbeat(workers[499]);
    assert!(sim.out.is_empty(), "no Pace for a worker on time: {:?}", sim.out);
}

/// Every worker heartbeats at the interval it was told, except `silent` (from `silent_from`) and
/// `late` (none between `late_from` and `late_until`); the clock moves by one second and ticks.
/// Returns when each connection was closed, by connection.
fn run_paced(
    sim: &mut Sim,
    workers: &[ConnId],
    (silent, silent_from): (ConnId, Instant),
    (late, late_from, late_until): (ConnId, Instant, Instant),
    until: Instant,
) -> HashMap<ConnId, Instant> {
    let mut due: HashMap<ConnId, Instant> = workers.iter().map(|c| (*c, sim.now)).collect();
    let mut closed = HashMap::new();
    while sim.now < until {
        for &c in workers {
            let quiet =
                (c == silent && sim.now >= silent_from) || (c == late && sim.now >= late_from && sim.now < late_until);
            if !closed.contains_key(&c) && !quiet && due[&c] <= sim.now {
                sim.heartbeat(c);
                due.insert(c, sim.now + sim.told(c));
            }
        }
        sim.advance(Duration::from_secs(1));
        for c in sim.closes() {
            closed.insert(c, sim.now);
        }
        sim.out.clear();
    }
    closed
}

#[test]
fn with_many_workers_a_late_worker_is_not_lost_and_a_silent_one_is_lost_within_its_stretched_timeout() {
    let mut sim = Sim::new();
    let (base, timeout) = (sim.base, sim.timeout);
    let workers = sim.connect_workers(500);
    let t0 = sim.now;
    let (silent, late) = (workers[250], workers[300]);
    // A heartbeat each brings every worker the interval of 500 workers (5 base intervals), then:
    // `silent` says nothing more from 2 s on; `late` skips heartbeats for 2.5 base death timeouts.
    let late_for = timeout * 5 / 2;
    let closed = run_paced(
        &mut sim,
        &workers,
        (silent, t0 + Duration::from_secs(2)),
        (late, t0 + Duration::from_secs(20), t0 + Duration::from_secs(20) + late_for),
        t0 + timeout * 8,
    );
    let told = sim.told(silent);
    assert!(told >= base * 4, "the interval told grew: {told:?}");
    assert!(
        !closed.contains_key(&late),
        "a worker silent for {late_for:?}, under 10 of its {told:?} intervals, is not lost"
    );
    assert_eq!(closed.keys().copied().collect::<Vec<_>>(), vec![silent], "only the silent worker is lost");
    // Its last heartbeat was the first of the run, at t0 (the next was due `told` later).
    let stretched = timeout.mul_f64(told.as_secs_f64() / base.as_secs_f64());
    let silence = closed[&silent] - t0;
    assert!(silence >= stretched, "lost after {silence:?} of silence, before its stretched timeout {stretched:?}");
    assert!(
        silence <= stretched + Duration::from_secs(1),
        "lost after {silence:?}, a tick after its timeout {stretched:?}"
    );
    assert_eq!(sim.sched.worker_count(), 499);
}

#[test]
fn when_workers_leave_the_interval_shrinks_and_a_worker_keeping_the_old_one_is_not_lost() {
    let mut sim = Sim::new();
    let (base, timeout) = (sim.base, sim.timeout);
    let workers = sim.connect_workers(1000);
    let w = workers[0];
    sim.heartbeat_keeping(w, base);
    let longest = base * MAX_STRETCH;
    assert_eq!(sim.paces_to(w), vec![longest], "1000 workers: the longest interval");
    sim.heartbeat_keeping(w, longest);
    for &c in &workers[10..] {
        sim.disconnect(c);
    }
    sim.out.clear();
    // The other nine heartbeat every base interval throughout.
    let others = workers[1..10].to_vec();
    let wait = |sim: &mut Sim, d: Duration| {
        let end = sim.now + d;
        while sim.now < end {
            for &c in &others {
                sim.heartbeat_keeping(c, base);
            }
            sim.advance(base.min(end - sim.now));
        }
    };
    // Ten workers are left: the base interval again. The worker keeps the longest until it
    // hears otherwise; its next heartbeat, one longest interval later, brings it the base one.
    wait(&mut sim, longest);
    assert!(sim.closes().is_empty());
    sim.heartbeat_keeping(w, longest);
    assert_eq!(sim.paces_to(w), vec![base], "told the base interval again");
    // That Pace is on its way: one more heartbeat at the old interval, a little late, is in time.
    wait(&mut sim, longest + base / 2);
    assert!(sim.closes().is_empty(), "a worker keeping the interval it was told before is not lost");
    sim.heartbeat_keeping(w, base);
    // Now it keeps the base interval: silent, it is lost within the base death timeout.
    let last = sim.now;
    let mut lost_at = None;
    while lost_at.is_none() && sim.now < last + timeout * 3 {
        wait(&mut sim, Duration::from_secs(1));
        let closes = sim.closes();
        assert!(closes.iter().all(|c| *c == w), "only the silent worker is lost");
        if closes.contains(&w) {
            lost_at = Some(sim.now);
        }
        sim.out.clear();
    }
    let silence = lost_at.expect("the silent worker is lost") - last;
    assert!(silence >= timeout && silence <= timeout + Duration::from_secs(1), "lost after {silence:?} of silence");
}
