//! `/metrics`: the scheduler's counters in Prometheus' text format (prometheus-client).
//!
//! Rendered afresh from the collector's latest status and counters on each scrape; the
//! per-kind duration histograms are the scheduler's own (fixed buckets), encoded as they are.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use rdask::protocol::{ClusterStatus, Metrics, DURATION_BUCKETS_US};

/// The content type of what prometheus-client writes (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Sum, count, and (upper bound, count) per bucket.
type Buckets = (f64, u64, Vec<(f64, u64)>);

/// A histogram whose buckets were counted elsewhere (by the scheduler).
#[derive(Debug, Default)]
struct Counted(Mutex<Buckets>);

impl TypedMetric for Counted {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Counted {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = &*self.0.lock().expect("histogram lock");
        encoder.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The text exposition of `status` and `m`.
pub fn render(status: &ClusterStatus, m: &Metrics, latency: Duration) -> Result<String, std::fmt::Error> {
    let mut reg = Registry::with_prefix("rdask");
    let ended = Family::<Labels, Counter>::default();
    reg.register("tasks_ended", "Tasks that ended, by kind and outcome (finished or failed)", ended.clone());
    let unfinished = Family::<Labels, Gauge>::default();
    reg.register("tasks", "Tasks not yet ended, by kind and state (queued or running)", unfinished.clone());
    let durations = Family::<Labels, Counted>::default();
    reg.register("task_duration_seconds", "Durations of finished tasks, by kind", durations.clone());
    for k in &m.kinds {
        ended.get_or_create(&labels(&[("kind", &k.kind), ("outcome", "finished")])).inc_by(k.finished);
        ended.get_or_create(&labels(&[("kind", &k.kind), ("outcome", "failed")])).inc_by(k.failed);
        let buckets = DURATION_BUCKETS_US
            .iter()
            .zip(&k.duration_buckets)
            // prometheus-client writes the bucket of f64::MAX as `le="+Inf"` (and sums the counts).
            .map(|(&b, &n)| (if b == u64::MAX { f64::MAX } else { b as f64 / 1e6 }, n))
            .collect();
        let h = durations.get_or_create(&labels(&[("kind", &k.kind)]));
        *h.0.lock().expect("histogram lock") = (k.duration_sum_us as f64 / 1e6, k.finished, buckets);
    }
    for l in &status.load {
        unfinished.get_or_create(&labels(&[("kind", &l.kind), ("state", "queued")])).inc_by(l.queued as i64);
        unfinished.get_or_create(&labels(&[("kind", &l.kind), ("state", "running")])).inc_by(l.running as i64);
    }
    let workers = Gauge::<i64>::default();
    reg.register("workers", "Connected workers", workers.clone());
    workers.set(status.workers.len() as i64);
    let slots = Family::<Labels, Gauge>::default();
    reg.register("slots", "Task slots of the connected workers, by state (busy or total)", slots.clone());
    let total: u64 = status.workers.iter().map(|w| u64::from(w.info.slots.max(1))).sum();
    let busy: u64 = status.workers.iter().map(|w| u64::from(w.assigned).min(u64::from(w.info.slots.max(1)))).sum();
    slots.get_or_create(&labels(&[("state", "total")])).set(total as i64);
    slots.get_or_create(&labels(&[("state", "busy")])).set(busy as i64);
    let joined = Counter::<u64, AtomicU64>::default();
    reg.register("workers_joined", "Workers that joined since the scheduler started", joined.clone());
    joined.inc_by(m.workers_joined);
    let left = Counter::<u64, AtomicU64>::default();
    reg.register("workers_left", "Workers that left or were lost since the scheduler started", left.clone());
    left.inc_by(m.workers_left);
    let jobs = Family::<Labels, Gauge>::default();
    reg.register("batch_jobs", "Allocations (batch jobs, local worker processes) by pool and state", jobs.clone());
    if let Some(p) = &status.provisioning {
        for pool in &p.pools {
            for a in &pool.jobs {
                jobs.get_or_create(&labels(&[("pool", &pool.name), ("state", &a.state.to_string())])).inc();
            }
        }
    }
    let bytes = Counter::<u64, AtomicU64>::default();
    reg.register("transferred_bytes", "Bytes of task inputs moved between workers", bytes.clone());
    bytes.inc_by(m.fetched_bytes);
    let lat = Gauge::<f64, AtomicU64>::default();
    reg.register(
        "scheduler_latency_seconds",
        "Time the scheduler's event loop took to answer the dashboard's last status request",
        lat.clone(),
    );
    lat.set(latency.as_secs_f64());
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg)?;
    Ok(out)
}
