//! `--only sim`: the real scheduler with simulated workers (`rdask::sim::SimCluster`), per
//! workload × worker count: the scheduler's CPU time per decision (inside `handle` only, thread
//! CPU clock), the heap it keeps per queued task (this binary's counting allocator), the makespan
//! against the ideal and the bytes moved between workers. Messages skip the codec here (the
//! figures are `handle`'s alone); the tests of `rdask::sim` run the same workloads through it.
//! Writes `bench/results/sim.json` besides the usual report.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::time::Instant;

use rdask::sim::{workloads, Report, SimCluster, SimConfig, Workload};
use serde_json::{json, Value};

use crate::R;

/// The system allocator, counting live bytes while [`COUNTING`] is on (off, it costs one load).
pub(crate) struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicI64 = AtomicI64::new(0);

// Sound: every call is forwarded unchanged to `System`, which upholds `GlobalAlloc`'s contract;
// the counter is only arithmetic on an atomic.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            LIVE.fetch_add(layout.size() as i64, Relaxed);
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Relaxed) {
            LIVE.fetch_sub(layout.size() as i64, Relaxed);
        }
        // SAFETY: `ptr` came from `alloc`/`realloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            LIVE.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Live heap bytes counted so far (meaningful as a difference).
fn live_bytes() -> u64 {
    LIVE.load(Relaxed).max(0) as u64
}

const SLOTS: u16 = 8;

/// A workload of about that many tasks.
type Make = fn(u32) -> Workload;

/// One run picked on the command line (`--sim-runs array@10000` or `array@10000:10000000`): a
/// workload, of the size the full benchmark gives it or the one named, on that many workers. Picked runs skip the memory and scaling runs
/// and write no `sim.json` (it would be partial).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Pick {
    workload: String,
    workers: usize,
    tasks: Option<u32>,
}

impl Pick {
    /// `WORKLOAD@WORKERS[:TASKS][,...]`.
    pub(crate) fn parse_list(s: &str) -> Result<Vec<Pick>, String> {
        s.split(',')
            .map(|item| {
                let (w, n) = item.split_once('@').ok_or_else(|| format!("`{item}`: want WORKLOAD@WORKERS"))?;
                if !WORKLOADS.iter().any(|(name, ..)| *name == w) {
                    let known: Vec<&str> = WORKLOADS.iter().map(|(name, ..)| *name).collect();
                    return Err(format!("unknown workload `{w}`; known: {}", known.join(", ")));
                }
                let (n, tasks) = match n.split_once(':') {
                    Some((n, t)) => (n, Some(t.parse().map_err(|_| format!("`{t}` is not a number of tasks"))?)),
                    None => (n, None),
                };
                let workers = n.parse().map_err(|_| format!("`{n}` is not a number of workers"))?;
                Ok(Pick { workload: w.to_string(), workers, tasks })
            })
            .collect()
    }
}

/// The workloads, with their sizes in the full run and with `--quick`.
const WORKLOADS: [(&str, Make, u32, u32); 4] = [
    ("array", workloads::array, 1_000_000, 200_000),
    ("tree", workloads::tree, 1_000_000, 100_000),
    ("stencil", workloads::stencil, 200_000, 20_000),
    ("mix", workloads::mix, 1_000_000, 100_000),
];

/// A run on `workers` workers that are up before the workload is submitted; `bytes_per_task`
/// comes from `memory`'s run of the same workload (submitted to a scheduler without workers).
fn one(workload: &Workload, workers: usize, bytes_per_task: &Value) -> Value {
    let config = SimConfig::new(workers, SLOTS);
    let wall = Instant::now();
    let r = SimCluster::new(config, workload).run();
    let mut row = figures(&workload.name, workers, &r, wall.elapsed().as_secs_f64());
    row["bytes_per_task"] = bytes_per_task.clone();
    print_row(&row);
    row
}

fn figures(name: &str, workers: usize, r: &Report, wall_s: f64) -> Value {
    let run = r.cpu.run().as_secs_f64();
    json!({
        "workload": name, "workers": workers, "slots": workers * usize::from(SLOTS), "tasks": r.tasks,
        "decisions": r.decisions, "completed": r.completed, "violations": r.violations, "never_run": r.never_run,
        "decisions_per_s": r.decisions as f64 / run.max(1e-9), "us_per_decision": r.us_per_decision(),
        "cpu_s": { "submit": r.cpu.submit.as_secs_f64(), "register": r.cpu.register.as_secs_f64(),
                   "finished": r.cpu.finished.as_secs_f64(), "heartbeat": r.cpu.heartbeat.as_secs_f64(),
                   "other": r.cpu.other.as_secs_f64() },
        "submit_us_per_task": r.cpu.submit.as_secs_f64() * 1e6 / r.tasks.max(1) as f64,
        "bytes_per_task": r.bytes_per_task,
        "makespan_s": r.makespan.as_secs_f64(), "ideal_s": r.ideal().as_secs_f64(),
        "work_over_slots_s": r.ideal_work.as_secs_f64(), "critical_path_s": r.critical_path.as_secs_f64(),
        "makespan_over_ideal": r.quality(), "bytes_moved": r.bytes_moved,
        "greedy_s": r.greedy.as_secs_f64(), "greedy_over_ideal": r.greedy.as_secs_f64() / r.ideal().as_secs_f64().max(1e-9),
        "makespan_over_greedy": r.over_greedy(),
        "events": r.events, "wall_s": wall_s,
    })
}

fn print_header() {
    println!(
        "\n{:<8} {:>7} {:>9} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9} {:>7}",
        "workload",
        "workers",
        "tasks",
        "decisions/s",
        "us/dec",
        "B/task",
        "span/id",
        "greedy/id",
        "span/gr",
        "reg s",
        "moved GiB",
        "submit us",
        "wall s"
    );
}

fn print_row(v: &Value) {
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let ok = if v["completed"] == true && v["violations"] == 0 { "" } else { "  INCOMPLETE" };
    println!(
        "{:<8} {:>7} {:>9} {:>12.0} {:>8.3} {:>8.0} {:>8.3} {:>8.3} {:>8.3} {:>8.2} {:>10.1} {:>9.3} {:>7.1}{ok}",
        v["workload"].as_str().unwrap_or(""),
        v["workers"].as_u64().unwrap_or(0),
        v["tasks"].as_u64().unwrap_or(0),
        f("decisions_per_s"),
        f("us_per_decision"),
        f("bytes_per_task"),
        f("makespan_over_ideal"),
        f("greedy_over_ideal"),
        f("makespan_over_greedy"),
        v["cpu_s"]["register"].as_f64().unwrap_or(f64::NAN),
        f("bytes_moved") / (1u64 << 30) as f64,
        f("submit_us_per_task"),
        f("wall_s"),
    );
}

/// Memory per queued task of a workload submitted to a scheduler without workers.
fn memory(workload: &Workload) -> Value {
    let mut config = SimConfig::new(0, SLOTS);
    config.live_bytes = Some(live_bytes);
    let r = SimCluster::new(config, workload).run();
    let v = json!({ "workload": workload.name, "tasks": r.tasks, "bytes_per_task": r.bytes_per_task,
                    "submit_us_per_task": r.cpu.submit.as_secs_f64() * 1e6 / r.tasks.max(1) as f64 });
    println!(
        "memory   {:>7} {:>9}  {:.0} B per queued task, submit {:.3} us per task (no workers)",
        workload.name,
        r.tasks,
        r.bytes_per_task.unwrap_or(f64::NAN),
        v["submit_us_per_task"].as_f64().unwrap_or(f64::NAN)
    );
    v
}

pub(crate) fn bench(quick: bool, picks: Option<&[Pick]>) -> R<Value> {
    let size = |full: u32, small: u32| if quick { small } else { full };
    if let Some(picks) = picks {
        print_header();
        let mut runs = Vec::new();
        for p in picks {
            let (_, make, full, small) = WORKLOADS.iter().find(|(name, ..)| *name == p.workload).expect("parsed");
            let n = p.tasks.unwrap_or(size(*full, *small));
            runs.push(one(&make(n), p.workers, &Value::Null));
        }
        return Ok(json!({ "slots_per_worker": SLOTS, "runs": runs }));
    }
    COUNTING.store(true, Relaxed);
    let workers: &[usize] = &[10, 100, 1_000, 10_000];
    let big = size(10_000_000, 1_000_000);
    let mut runs = Vec::new();
    let mut memory = Vec::new();
    print_header();
    for (_, w, full, small) in WORKLOADS {
        let workload = w(size(full, small));
        let m = self::memory(&workload);
        for &k in workers {
            runs.push(one(&workload, k, &m["bytes_per_task"]));
        }
        memory.push(m);
    }
    // Per-task cost from 10k tasks to `big`, at 10,000 workers (their registration excluded).
    let mut scaling = Vec::new();
    let mut n = 10_000u32;
    while n <= big {
        let same = runs.iter().find(|r| r["workload"] == "array" && r["workers"] == 10_000 && r["tasks"] == n);
        scaling.push(same.cloned().unwrap_or_else(|| one(&workloads::array(n), 10_000, &Value::Null)));
        n *= 10;
    }
    println!();
    // The targets' sizes: an array and a graph of `big` tasks, queued.
    let targets = vec![self::memory(&workloads::array(big)), self::memory(&workloads::tree(big))];
    COUNTING.store(false, Relaxed);
    let v = json!({ "slots_per_worker": SLOTS, "runs": runs, "array_scaling_10k_workers": scaling,
                    "memory": targets, "memory_per_workload": memory });
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("results").join("sim.json");
    std::fs::create_dir_all(path.parent().expect("results dir"))?;
    std::fs::write(&path, serde_json::to_string_pretty(&v)?)?;
    println!("wrote {}", path.display());
    Ok(v)
}

/// The figures against the targets, as rows of the main table.
pub(crate) fn rows(s: &Value) -> Vec<Value> {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut rows = Vec::new();
    let mut row = |figure: String, value: String, target: &str, met: Option<bool>, note: String| {
        rows.push(json!({ "figure": figure, "value": value, "target": target, "met": met, "note": note }));
    };
    let scaling = s["array_scaling_10k_workers"].as_array().cloned().unwrap_or_default();
    if let Some(last) = scaling.last() {
        let us = f(&last["us_per_decision"]);
        let note = format!("array, {} tasks, {} workers", last["tasks"], last["workers"]);
        row("sim: scheduler CPU per decision".into(), format!("{us:.3} us"), "<= 1 us", Some(us <= 1.0), note);
    }
    if let (Some(a), Some(b)) = (scaling.first(), scaling.last().filter(|_| scaling.len() > 1)) {
        let (ua, ub) = (f(&a["us_per_decision"]), f(&b["us_per_decision"]));
        let d = ub / ua - 1.0;
        let fig = format!("sim: us/decision, {} vs {} tasks", a["tasks"], b["tasks"]);
        row(fig, format!("{ua:.3} vs {ub:.3} us"), "within +-20%", Some(d.abs() <= 0.2), format!("{:+.0}%", d * 100.0));
    }
    for (m, (kind, target)) in s["memory"].as_array().into_iter().flatten().zip([("array", 150.0), ("graph", 250.0)]) {
        let b = f(&m["bytes_per_task"]);
        let note =
            format!("{} ({}), {} tasks, heap bytes kept", kind, m["workload"].as_str().unwrap_or(""), m["tasks"]);
        row(
            format!("sim: memory per queued {kind} task"),
            format!("{b:.0} B"),
            &format!("<= {target} B"),
            Some(b <= target),
            note,
        );
    }
    for (workload, target) in [("array", 1.05), ("mix", 1.05), ("stencil", 1.15), ("tree", 1.15)] {
        let worst = s["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["workload"] == workload)
            .max_by(|a, b| f(&a["makespan_over_ideal"]).total_cmp(&f(&b["makespan_over_ideal"])));
        if let Some(r) = worst {
            let q = f(&r["makespan_over_ideal"]);
            let note = format!(
                "worst at {} workers, {} tasks; a zero-latency greedy schedule gets {:.3}, this run {:.3}x that",
                r["workers"],
                r["tasks"],
                f(&r["greedy_over_ideal"]),
                f(&r["makespan_over_greedy"])
            );
            row(
                format!("sim: makespan / ideal, {workload}"),
                format!("{q:.3}"),
                &format!("<= {target}"),
                Some(q <= target),
                note,
            );
        }
    }
    rows
}
