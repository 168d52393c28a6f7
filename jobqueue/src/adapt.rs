//! Adaptive scaling: how many batch jobs the cluster should have, decided from what it observes.
//!
//! [`Policy::decide`] is a pure function of an [`Observation`] (unfinished work per kind with
//! measured durations, the cluster's jobs and their workers) and the time, plus the little
//! state the policy keeps between intervals (how long a surplus has lasted, submission
//! failures). It performs no I/O: the provisioner ([`crate::provision`]) observes at each
//! adaptive interval, calls it, and carries the [`Decision`] out. Tests drive it with a simulated clock.
//!
//! Rules:
//! - it counts in whole jobs: a job holding several workers is added and removed as one;
//! - jobs pending in the queue count as capacity on the way, so a slow queue causes no
//!   submit-cancel loop; at most `max_pending` jobs are pending at once;
//! - scale-up is immediate, scale-down only after `scale_down_after` consecutive intervals of
//!   surplus, and only of jobs whose workers are all idle (pending jobs go first);
//! - a job whose workers leave within `replace_ahead` (their walltime) is not capacity: while
//!   work remains, its replacement is submitted before it ends;
//! - failed submissions (and jobs that end before their worker joins) back off, doubling the
//!   delay, and after `max_failures` in a row adaptive submission pauses until `adapt` is run again.

use std::time::{Duration, Instant};

use rdask::protocol::{KindLoad, WorkerId};

pub use rdask::protocol::AdaptSpec;

/// A worker as the policy sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerView {
    /// The scheduler's id.
    pub id: WorkerId,
    /// It has tasks.
    pub busy: bool,
    /// It is retiring already.
    pub retiring: bool,
    /// Until it must leave.
    pub ends_in: Option<Duration>,
}

/// One active job of the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct JobView {
    /// The batch system's id.
    pub id: String,
    /// Still waiting in the queue.
    pub pending: bool,
    /// Its workers that have joined.
    pub workers: Vec<WorkerView>,
}

impl JobView {
    /// Running, with every worker joined and idle (none retiring): it may be removed.
    fn idle(&self, workers_per_job: u32) -> bool {
        !self.pending
            && self.workers.len() as u32 >= workers_per_job
            && self.workers.iter().all(|w| !w.busy && !w.retiring)
    }

    /// Its workers leave within `ahead` (or are leaving): it is not capacity any more.
    fn leaving(&self, ahead: Duration) -> bool {
        !self.pending && self.workers.iter().any(|w| w.retiring || w.ends_in.is_some_and(|e| e < ahead))
    }
}

/// What the provisioner observed this interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    /// Unfinished work per kind.
    pub load: Vec<KindLoad>,
    /// The active (pending or running) jobs, oldest first.
    pub jobs: Vec<JobView>,
}

/// What to do now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// The number of jobs wanted.
    pub target: u32,
    /// Why, in words, for `status` and the log.
    pub reason: String,
    /// Jobs to submit now.
    pub submit: u32,
    /// Pending jobs to cancel.
    pub cancel: Vec<String>,
    /// Running jobs whose workers to retire (each job as one unit).
    pub retire: Vec<String>,
}

/// The shape of the cluster's jobs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JobShape {
    /// Workers in one job.
    pub workers: u32,
    /// Task slots of one worker.
    pub slots: u32,
}

/// The policy and the state it keeps between intervals.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The settings.
    pub spec: AdaptSpec,
    shape: JobShape,
    surplus_for: u32,
    failures: u32,
    last_failure: Option<String>,
    retry_at: Option<Instant>,
    paused: bool,
}

impl Policy {
    /// A policy for jobs of `shape`.
    pub fn new(spec: AdaptSpec, shape: JobShape) -> Policy {
        Policy { spec, shape, surplus_for: 0, failures: 0, last_failure: None, retry_at: None, paused: false }
    }

    /// Whether adaptive submission is paused after repeated failures.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Why submission is paused, to append to a reason.
    pub fn pause_note(&self) -> String {
        format!(
            "; adaptive submission PAUSED after {} failed submissions (last: {}); fix the cause and run `rdask-jobqueue adapt` again",
            self.failures,
            self.last_failure.as_deref().unwrap_or("unknown")
        )
    }

    /// Records a submission that failed (or a job that ended before its worker joined).
    pub fn failed(&mut self, now: Instant, why: &str) {
        self.failures += 1;
        self.last_failure = Some(why.lines().next().unwrap_or(why).to_string());
        if self.failures >= self.spec.max_failures {
            self.paused = true;
            self.retry_at = None;
        } else {
            // 2 s, 4 s, 8 s, ... at most 5 minutes.
            let delay = Duration::from_secs(1u64 << self.failures.min(8)).min(Duration::from_secs(300));
            self.retry_at = Some(now + delay);
        }
    }

    /// Records that a job's worker joined: the batch system works, the failures are forgotten.
    pub fn succeeded(&mut self) {
        if !self.paused {
            self.failures = 0;
            self.last_failure = None;
            self.retry_at = None;
        }
    }

    /// Decides what to do now.
    pub fn decide(&mut self, now: Instant, obs: &Observation) -> Decision {
        let spec = &self.spec;
        let slots_per_job = (self.shape.workers * self.shape.slots).max(1);
        let default_us = spec.default_task_duration * 1e6;
        let (mut tasks, mut work_us) = (0u64, 0f64);
        for k in &obs.load {
            let n = k.queued + k.running;
            tasks += n;
            work_us += n as f64 * k.mean_us.map_or(default_us, |m| m as f64);
        }
        // Slots to finish the work within the target duration; never more than there are tasks.
        let slots =
            if tasks == 0 { 0 } else { ((work_us / (spec.target_duration * 1e6)).ceil() as u64).clamp(1, tasks) };
        let wanted = slots.div_ceil(u64::from(slots_per_job)).min(u64::from(u32::MAX)) as u32;
        let target = wanted.clamp(spec.min_jobs, spec.max_jobs);

        let ahead = Duration::from_secs_f64(spec.replace_ahead);
        let active = obs.jobs.len() as u32;
        let pending = obs.jobs.iter().filter(|j| j.pending).count() as u32;
        let leaving = obs.jobs.iter().filter(|j| j.leaving(ahead)).count() as u32;
        let capacity = active - leaving;

        let mut d = Decision { target, ..Decision::default() };
        let work = if tasks == 0 {
            "no unfinished tasks".to_string()
        } else {
            format!("{tasks} unfinished tasks, about {:.1} s of work", work_us / 1e6)
        };
        let bounds = if target != wanted {
            format!(" (wanted {wanted}, bounded to {}..={})", spec.min_jobs, spec.max_jobs)
        } else {
            String::new()
        };
        d.reason = format!(
            "{work} → {target} job(s){bounds} of {} slot(s) to finish within {} s",
            slots_per_job, spec.target_duration
        );
        if leaving > 0 {
            d.reason += &format!("; {leaving} job(s) near their walltime are being replaced");
        }

        if capacity < target {
            self.surplus_for = 0;
            let missing = target - capacity;
            let room = spec.max_jobs.saturating_sub(capacity).min(spec.max_pending.saturating_sub(pending));
            let n = missing.min(room);
            if self.paused {
                d.reason += &self.pause_note();
            } else if let Some(at) = self.retry_at.filter(|at| *at > now) {
                d.reason += &format!(
                    "; next submission in {:.0} s after {} failure(s) (last: {})",
                    (at - now).as_secs_f64().ceil(),
                    self.failures,
                    self.last_failure.as_deref().unwrap_or("unknown")
                );
            } else {
                d.submit = n;
                if n < missing {
                    d.reason += &format!(
                        "; {} more held back by --max {} / --max-pending {}",
                        missing - n,
                        spec.max_jobs,
                        spec.max_pending
                    );
                }
            }
            return d;
        }
        let surplus = capacity - target;
        if surplus == 0 {
            self.surplus_for = 0;
            return d;
        }
        self.surplus_for += 1;
        if self.surplus_for < spec.scale_down_after {
            d.reason +=
                &format!("; {surplus} job(s) too many for {}/{} intervals", self.surplus_for, spec.scale_down_after);
            return d;
        }
        // Pending jobs first (newest first), then running jobs whose workers are all idle.
        let mut left = surplus as usize;
        for j in obs.jobs.iter().rev().filter(|j| j.pending) {
            if left == 0 {
                break;
            }
            d.cancel.push(j.id.clone());
            left -= 1;
        }
        for j in obs.jobs.iter().rev().filter(|j| !j.leaving(ahead) && j.idle(self.shape.workers)) {
            if left == 0 {
                break;
            }
            d.retire.push(j.id.clone());
            left -= 1;
        }
        if left > 0 {
            d.reason += &format!("; {left} job(s) too many but busy: they stay until idle");
        }
        if !d.cancel.is_empty() || !d.retire.is_empty() {
            self.surplus_for = 0;
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(queued: u64, running: u64, mean_ms: Option<u64>) -> Vec<KindLoad> {
        vec![KindLoad {
            kind: "f".into(),
            queued,
            running,
            mean_us: mean_ms.map(|m| m * 1000),
            needs: Default::default(),
        }]
    }

    fn worker(id: u32, busy: bool) -> WorkerView {
        WorkerView { id: WorkerId(id), busy, retiring: false, ends_in: None }
    }

    fn running(id: &str, workers: Vec<WorkerView>) -> JobView {
        JobView { id: id.into(), pending: false, workers }
    }

    fn pending(id: &str) -> JobView {
        JobView { id: id.into(), pending: true, workers: vec![] }
    }

    fn policy(min: u32, max: u32) -> Policy {
        Policy::new(AdaptSpec::new(min, max), JobShape { workers: 1, slots: 1 })
    }

    #[test]
    fn work_sets_the_target_within_bounds() {
        let now = Instant::now();
        let mut p = policy(0, 4);
        let none = p.decide(now, &Observation::default());
        assert_eq!((none.target, none.submit), (0, 0), "{}", none.reason);
        // 20 tasks of 1 s = 20 s of work: 4 slots finish it in 5 s.
        let d = p.decide(now, &Observation { load: load(20, 0, Some(1000)), jobs: vec![] });
        assert_eq!((d.target, d.submit), (4, 4), "{}", d.reason);
        // 2,000 such tasks: capped at 4.
        let d = p.decide(now, &Observation { load: load(2000, 0, Some(1000)), jobs: vec![] });
        assert_eq!(d.target, 4);
        assert!(d.reason.contains("bounded to 0..=4"), "{}", d.reason);
        // Never more jobs than tasks; unknown durations use the default (0.5 s).
        let d = p.decide(now, &Observation { load: load(3, 0, None), jobs: vec![] });
        assert_eq!(d.target, 1, "1.5 s of work fits one slot in 5 s: {}", d.reason);
        let mut p = policy(2, 4);
        assert_eq!(p.decide(now, &Observation::default()).submit, 2, "--min holds with no work");
    }

    #[test]
    fn pending_jobs_count_as_capacity_and_are_not_submitted_again() {
        let t0 = Instant::now();
        let mut p = policy(0, 4);
        let busy = Observation { load: load(2000, 0, Some(1000)), jobs: vec![] };
        assert_eq!(p.decide(t0, &busy).submit, 4);
        // The four sit in the queue for a minute: nothing more is submitted, nothing cancelled.
        let queued = Observation { jobs: (0..4).map(|i| pending(&i.to_string())).collect(), ..busy.clone() };
        for s in 1..60 {
            let d = p.decide(t0 + Duration::from_secs(s), &queued);
            assert_eq!((d.submit, d.cancel.len(), d.retire.len()), (0, 0, 0), "{}", d.reason);
        }
    }

    #[test]
    fn at_most_max_pending_jobs_wait_in_the_queue() {
        let now = Instant::now();
        let mut p =
            Policy::new(AdaptSpec { max_pending: 2, ..AdaptSpec::new(0, 10) }, JobShape { workers: 1, slots: 1 });
        let obs = Observation { load: load(2000, 0, Some(1000)), jobs: vec![pending("1")] };
        let d = p.decide(now, &obs);
        assert_eq!(d.submit, 1, "{}", d.reason);
        assert!(d.reason.contains("held back"), "{}", d.reason);
    }

    #[test]
    fn steady_load_does_not_oscillate() {
        let t0 = Instant::now();
        let mut p = policy(0, 8);
        // 3 jobs running, busy, with work worth exactly 3 slots.
        let jobs: Vec<JobView> = (0..3).map(|i| running(&i.to_string(), vec![worker(i, true)])).collect();
        let obs = Observation { load: load(12, 3, Some(1000)), jobs };
        for s in 0..300 {
            let d = p.decide(t0 + Duration::from_secs(s), &obs);
            assert_eq!((d.target, d.submit, d.cancel.len(), d.retire.len()), (3, 0, 0, 0), "second {s}: {}", d.reason);
        }
    }

    #[test]
    fn scale_down_waits_for_several_intervals_and_takes_idle_jobs_only() {
        let t0 = Instant::now();
        let mut p = policy(0, 4);
        let jobs = vec![
            running("1", vec![worker(1, true)]),
            running("2", vec![worker(2, false)]),
            running("3", vec![worker(3, false)]),
        ];
        let obs = Observation { load: load(0, 1, Some(60_000)), jobs };
        // One long task runs: 1 job wanted, 2 too many. Nothing happens for 2 intervals.
        for s in 0..2 {
            let d = p.decide(t0 + Duration::from_secs(s), &obs);
            assert_eq!((d.target, d.retire.len()), (1, 0), "{}", d.reason);
        }
        let d = p.decide(t0 + Duration::from_secs(2), &obs);
        assert_eq!(d.retire, vec!["3".to_string(), "2".to_string()], "{}", d.reason);
        // The busy job is never chosen, even when all must go.
        let mut p = policy(0, 4);
        let obs = Observation { load: vec![], jobs: vec![running("1", vec![worker(1, true)])] };
        for s in 0..10 {
            let d = p.decide(t0 + Duration::from_secs(s), &obs);
            assert!(d.retire.is_empty() && d.cancel.is_empty(), "{}", d.reason);
        }
    }

    #[test]
    fn a_job_of_several_workers_is_one_unit() {
        let t0 = Instant::now();
        let shape = JobShape { workers: 4, slots: 2 };
        let mut p = Policy::new(AdaptSpec::new(0, 4), shape);
        // 16 tasks of 5 s = 80 s of work: 16 slots = 2 jobs of 8 slots.
        let d = p.decide(t0, &Observation { load: load(16, 0, Some(5000)), jobs: vec![] });
        assert_eq!((d.target, d.submit), (2, 2), "{}", d.reason);
        // One worker of a job busy: the job stays, though three of its workers are idle.
        let job = running("1", vec![worker(1, true), worker(2, false), worker(3, false), worker(4, false)]);
        let obs = Observation { load: vec![], jobs: vec![job] };
        for s in 0..10 {
            let d = p.decide(t0 + Duration::from_secs(s), &obs);
            assert!(d.retire.is_empty(), "{}", d.reason);
        }
        // A job with only some of its workers joined is not idle either.
        let mut p = Policy::new(AdaptSpec::new(0, 4), shape);
        let obs = Observation { load: vec![], jobs: vec![running("1", vec![worker(1, false)])] };
        for s in 0..10 {
            assert!(p.decide(t0 + Duration::from_secs(s), &obs).retire.is_empty());
        }
        let all_idle = running("1", (1..=4).map(|i| worker(i, false)).collect());
        let obs = Observation { load: vec![], jobs: vec![all_idle] };
        let first = (10..20).map(|s| p.decide(t0 + Duration::from_secs(s), &obs).retire).find(|r| !r.is_empty());
        assert_eq!(first, Some(vec!["1".to_string()]), "the whole job goes, once");
    }

    #[test]
    fn pending_jobs_are_cancelled_before_running_ones() {
        let t0 = Instant::now();
        let mut p = policy(0, 4);
        let obs = Observation { load: vec![], jobs: vec![running("1", vec![worker(1, false)]), pending("2")] };
        let d: Vec<Decision> = (0..3).map(|s| p.decide(t0 + Duration::from_secs(s), &obs)).collect();
        assert_eq!(d[2].cancel, vec!["2".to_string()]);
        assert_eq!(d[2].retire, vec!["1".to_string()]);
    }

    #[test]
    fn a_job_near_its_walltime_is_replaced_while_work_remains() {
        let t0 = Instant::now();
        let mut p = policy(0, 4);
        let mut w = worker(1, true);
        w.ends_in = Some(Duration::from_secs(30));
        let obs = Observation { load: load(100, 1, Some(1000)), jobs: vec![running("1", vec![w.clone()])] };
        // 101 s of work: 4 wanted; the leaving job is neither capacity nor counted against --max.
        let d = p.decide(t0, &obs);
        assert_eq!((d.target, d.submit), (4, 4), "{}", d.reason);
        assert!(d.reason.contains("near their walltime"), "{}", d.reason);
        // With little work left: one replacement.
        let obs = Observation { load: load(1, 1, Some(1000)), jobs: vec![running("1", vec![w])] };
        assert_eq!(policy(0, 4).decide(t0, &obs).submit, 1);
    }

    #[test]
    fn failures_back_off_then_pause_without_a_busy_loop() {
        let t0 = Instant::now();
        let mut p = policy(0, 4);
        let obs = Observation { load: load(100, 0, Some(1000)), jobs: vec![] };
        let mut submissions = Vec::new();
        let mut t = t0;
        for _ in 0..600 {
            let d = p.decide(t, &obs);
            if d.submit > 0 {
                submissions.push(t - t0);
                p.failed(t, "sbatch: error: invalid partition specified: nope");
            }
            t += Duration::from_secs(1);
        }
        let secs: Vec<u64> = submissions.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, vec![0, 2, 6, 14, 30], "attempts back off by doubling delays, then stop");
        assert!(p.paused());
        let d = p.decide(t, &obs);
        assert_eq!(d.submit, 0);
        assert!(
            d.reason.contains("PAUSED after 5 failed submissions (last: sbatch: error: invalid partition"),
            "{}",
            d.reason
        );
        // Scaling down still works while paused.
        let obs = Observation { load: vec![], jobs: vec![running("1", vec![worker(1, false)])] };
        let retired: Vec<String> = (0..3).flat_map(|_| p.decide(t, &obs).retire).collect();
        assert_eq!(retired, vec!["1".to_string()]);
    }

    #[test]
    fn a_success_resets_the_backoff() {
        let t0 = Instant::now();
        let mut p = policy(0, 4);
        let obs = Observation { load: load(100, 0, Some(1000)), jobs: vec![] };
        p.failed(t0, "boom");
        assert_eq!(p.decide(t0 + Duration::from_secs(1), &obs).submit, 0);
        p.succeeded();
        assert_eq!(p.decide(t0 + Duration::from_secs(1), &obs).submit, 4);
    }

    #[test]
    fn bad_specs_are_refused_with_the_option_named() {
        assert!(AdaptSpec::new(5, 2).check().unwrap_err().contains("--min (5) is larger than --max (2)"));
        assert!(AdaptSpec::new(0, 0).check().unwrap_err().contains("--max"));
        let bad = AdaptSpec { target_duration: 0.0, ..AdaptSpec::new(0, 1) };
        assert!(bad.check().unwrap_err().contains("--target-duration"));
        assert!(AdaptSpec::new(0, 4).check().is_ok());
    }
}
