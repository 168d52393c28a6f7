//! The heartbeat interval the scheduler sets, and how long it lets each worker be silent.
//!
//! At rest a scheduler does nothing but read heartbeats, so their number is its cost: with
//! [`Config::heartbeat_interval`] between them, 500 workers send 500 a second. As Dask does, the
//! interval grows with the workers connected ([`heartbeat_interval`]): the base interval up to
//! [`PACED_FROM`] workers, then in proportion to them (the scheduler reads at most
//! `PACED_FROM` heartbeats per base interval), at most [`MAX_STRETCH`] times the base.
//!
//! A worker is told its interval when it registers ([`ToWorker::Welcome`]) and again, in answer
//! to a heartbeat, when the interval it keeps is notably off ([`ToWorker::Pace`]); every
//! heartbeat says which interval the worker keeps. A worker's death timeout stretches with its
//! interval ([`silence_allowed`]), and allows for the longer of the interval it was told last and
//! the one it keeps: a worker is never declared lost because the interval changed, whichever
//! way, while the change was on its way.

use std::time::Duration;

use crate::protocol::{ToWorker, WorkerId, WorkerLoad};

use super::{Command, Config, Scheduler};

/// Up to this many workers, heartbeats come at the base interval.
pub const PACED_FROM: usize = 100;

/// The interval grows to at most this many times the base (a lost worker that stays silent is
/// found out within as many base death timeouts).
pub const MAX_STRETCH: u32 = 10;

/// The heartbeat interval for `workers` connected workers, given the base interval: `base` up to
/// [`PACED_FROM`] workers, then `base × workers / PACED_FROM`, at most [`MAX_STRETCH`] × `base`;
/// in whole milliseconds, as the wire carries it.
pub fn heartbeat_interval(base: Duration, workers: usize) -> Duration {
    let stretch = (workers as f64 / PACED_FROM as f64).clamp(1.0, f64::from(MAX_STRETCH));
    Duration::from_millis((base.as_millis() as f64 * stretch).round() as u64)
}

/// Whether an interval a worker was told is far enough (a quarter) from the one it should have
/// to be worth a message: workers joining one by one change the target at each registration.
fn notably_apart(told: Duration, target: Duration) -> bool {
    let (a, b) = (told.as_secs_f64(), target.as_secs_f64());
    a > b * 1.25 || b > a * 1.25
}

/// How a worker was told to send heartbeats, and how it says it does.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pace {
    /// The interval the scheduler told it last.
    told: Duration,
    /// The interval its last heartbeat said it keeps (the told one until it has said).
    kept: Duration,
}

impl Pace {
    /// A worker just told `interval` (in its registration reply).
    pub(super) fn new(interval: Duration) -> Pace {
        Pace { told: interval, kept: interval }
    }
}

/// How long a worker of `pace` may be silent before it is declared lost: the death timeout
/// ([`Config::heartbeat_timeout`]) stretched as its interval is stretched from the base, for the
/// longer of the interval it was told and the one it keeps (the latter at most the longest the
/// scheduler tells, whatever the worker says); never less than the base death timeout.
pub(super) fn silence_allowed(config: &Config, pace: &Pace) -> Duration {
    let base = config.heartbeat_interval;
    if base.is_zero() {
        return config.heartbeat_timeout;
    }
    let longest = base.saturating_mul(MAX_STRETCH);
    let interval = pace.told.max(pace.kept.min(longest));
    config.heartbeat_timeout.mul_f64(interval.as_secs_f64() / base.as_secs_f64()).max(config.heartbeat_timeout)
}

impl Scheduler {
    /// The interval to tell a worker now that `workers` are connected.
    pub(super) fn heartbeat_for(&self, workers: usize) -> Duration {
        heartbeat_interval(self.config.heartbeat_interval, workers)
    }

    /// A heartbeat of worker `w` (its `last_seen` already moved): its load, the interval it
    /// keeps, its pace corrected if notably off, and an [`ToWorker::Ack`] if it asked for one
    /// and got no [`ToWorker::Pace`] instead.
    pub(super) fn on_heartbeat(&mut self, w: WorkerId, load: WorkerLoad, ack: bool, interval_ms: u64) {
        let target = self.heartbeat_for(self.workers.len());
        let Some(worker) = self.workers.get_mut(&w) else { return };
        worker.load = load;
        worker.pace.kept = Duration::from_millis(interval_ms);
        let conn = worker.conn;
        if notably_apart(worker.pace.told, target) {
            worker.pace.told = target;
            let heartbeat_ms = target.as_millis() as u64;
            self.commands.push(Command::ToWorker(conn, ToWorker::Pace { heartbeat_ms }));
        } else if ack {
            // Only when asked: at rest, a heartbeat costs the scheduler its read, no write.
            self.commands.push(Command::ToWorker(conn, ToWorker::Ack));
        }
        // A worker saying it keeps a shorter interval brings its deadline forward.
        let deadline = worker.last_seen + silence_allowed(&self.config, &worker.pace);
        if self.wake_at.is_none_or(|t| deadline < t) {
            self.wake_at = Some(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_grows_with_the_workers_past_a_hundred_up_to_a_cap() {
        let s = Duration::from_secs(1);
        assert_eq!(heartbeat_interval(s, 0), s);
        assert_eq!(heartbeat_interval(s, PACED_FROM), s, "the base interval up to PACED_FROM workers");
        assert_eq!(heartbeat_interval(s, 500), Duration::from_secs(5));
        assert_eq!(heartbeat_interval(s, 1_000_000), s * MAX_STRETCH, "at most MAX_STRETCH times the base");
        let mut last = Duration::ZERO;
        for n in 0..2000 {
            let i = heartbeat_interval(s, n);
            assert!(i >= last, "never shorter for more workers");
            last = i;
        }
    }

    #[test]
    fn silence_allowed_stretches_with_the_longer_interval_and_trusts_a_worker_only_so_far() {
        let config = Config::default();
        let (base, timeout) = (config.heartbeat_interval, config.heartbeat_timeout);
        assert_eq!(silence_allowed(&config, &Pace::new(base)), timeout);
        let five = Pace::new(base * 5);
        assert_eq!(silence_allowed(&config, &five), timeout * 5);
        // Told a shorter interval, still keeping the longer one: the longer one counts.
        let shrinking = Pace { told: base, kept: base * 5 };
        assert_eq!(silence_allowed(&config, &shrinking), timeout * 5);
        // A worker keeping a shorter interval than told: the told one counts.
        assert_eq!(silence_allowed(&config, &Pace { told: base * 5, kept: base }), timeout * 5);
        // Whatever a worker says, no more than the longest interval the scheduler tells.
        let boast = Pace { told: base, kept: Duration::from_secs(86_400) };
        assert_eq!(silence_allowed(&config, &boast), timeout * MAX_STRETCH);
    }

    #[test]
    fn a_worker_is_told_again_only_when_notably_off() {
        let ms = Duration::from_millis;
        assert!(!notably_apart(ms(1000), ms(1200)));
        assert!(notably_apart(ms(1000), ms(1300)));
        assert!(notably_apart(ms(5000), ms(1000)), "shorter counts too");
    }
}
