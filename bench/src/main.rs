//! rdask benchmarks: throughput, latency, memory and data movement, each against a target
//! and, where there is one, against the machine's own limit or Dask.
//!
//! `cargo run --release -p rdask-bench -- [--quick] [--only NAME[,NAME]] [--sim-runs WORKLOAD@WORKERS[:TASKS][,...]]`
//! Names: memory, trivial, command, roundtrip, register, transfer, dashboard (needs Chromium),
//! journal, sim (the scheduler with simulated workers, also written to `bench/results/sim.json`),
//! dask, hyperqueue (needs `bench/peers/hq`, see `bench/peers/build-hq.sh`), fleet
//! (hundreds of worker processes; also writes `bench/results/fleet.json`), ucx (the last needs
//! `--features ucx`, and `ucx_perftest` from ucx-utils for its reference figure).
//! Prints a table and writes `bench/results/<UTC>.json` and `bench/results/latest.json`.
//! Nothing here asserts a timing: a missed target is reported, not failed.

use std::error::Error;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdask::protocol::{CommandSpec, JobId, JobSpec, JobTasks, TaskBody, TaskId, TaskRef, TaskSpec};
use rdask::{Client, ClusterInfo, Graph, Job, LocalCluster, Registry, TaskHandle};
use serde_json::{json, Value};

mod dashboard;
mod fleet;
mod hq;
mod sim;
#[cfg(feature = "ucx")]
mod ucx;

pub(crate) type R<T> = Result<T, Box<dyn Error>>;

/// Counts live heap bytes for the `sim` benchmark's memory per task (off otherwise).
#[global_allocator]
static ALLOC: sim::Counting = sim::Counting;

const BENCHES: &[&str] = &[
    "memory",
    "trivial",
    "command",
    "roundtrip",
    "register",
    "transfer",
    "dashboard",
    "journal",
    "sim",
    "dask",
    "hyperqueue",
    "fleet",
    "ucx",
];
const MIB: usize = 1 << 20;

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register("inc", |x: u64| x + 1);
    // `make`: 8 raw little-endian bytes (a size) in, that many bytes out, moved without encoding.
    r.register_raw("make", |args, _| {
        let n = u64::from_le_bytes(args.try_into().map_err(|_| "make wants 8 bytes")?) as usize;
        Ok(Bytes::from(vec![7u8; n]))
    });
    // `len`: the length of its one input, as 8 raw little-endian bytes.
    r.register_raw("len", |_, inputs| Ok(Bytes::copy_from_slice(&(inputs[0].len() as u64).to_le_bytes())));
    // `wait_file`: blocks its worker until the file named by its raw UTF-8 argument exists (at most 120 s).
    r.register_raw("wait_file", |args, _| {
        let path = PathBuf::from(String::from_utf8_lossy(args).into_owned());
        let deadline = Instant::now() + Duration::from_secs(120);
        while !path.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(Bytes::new())
    });
    r
}

fn main() {
    let registry = registry();
    rdask::worker_main_if_requested(&registry);
    let args: Vec<String> = std::env::args().skip(1).collect();
    if std::env::var_os("RDASK_LOG").is_none() {
        std::env::set_var("RDASK_LOG", "warn"); // workers inherit it: keep their info lines out of the table
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    #[cfg(feature = "ucx")]
    if args.first().map(String::as_str) == Some("--ucx-transfer") {
        // The ucx benchmark's rdask-level transfer, in a process of its own (UCX_TLS is per process).
        let size: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(64 * MIB);
        let v = rt
            .block_on(transfer_on(rdask_transport::Scheme::Ucx, size, 5))
            .unwrap_or_else(|e| json!({ "error": e.to_string() }));
        println!("{v}");
        std::process::exit(0);
    }
    #[cfg(feature = "ucx")]
    if args.first().map(String::as_str) == Some("--ucx-peer") {
        // The receiving process of the ucx benchmark.
        if let Err(e) = rt.block_on(ucx::peer(&args[1..])) {
            eprintln!("ucx peer: {e}");
            std::process::exit(1);
        }
        std::process::exit(0);
    }
    if args.first().map(String::as_str) == Some("--submit-graph") {
        // The separate client process of the memory benchmark (see `queued_rss`).
        let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
        let v = rt.block_on(submit_graph_child(n)).unwrap_or_else(|e| json!({ "error": e.to_string() }));
        println!("{v}");
        std::process::exit(if v.get("error").is_some() { 1 } else { 0 });
    }
    let (mut quick, mut only) = (false, BENCHES.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let mut sim_runs: Option<Vec<sim::Pick>> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--only" => {
                only = it.next().map(|s| s.split(',').map(str::to_string).collect()).unwrap_or_default();
                if let Some(bad) = only.iter().find(|n| !BENCHES.contains(&n.as_str())) {
                    eprintln!("unknown benchmark `{bad}`; known: {}", BENCHES.join(", "));
                    std::process::exit(2);
                }
            }
            "--sim-runs" => match it.next().map(|s| sim::Pick::parse_list(s)) {
                Some(Ok(picks)) => sim_runs = Some(picks),
                Some(Err(e)) => {
                    eprintln!("--sim-runs: {e}");
                    std::process::exit(2);
                }
                None => {
                    eprintln!("--sim-runs wants WORKLOAD@WORKERS[,...], e.g. array@10000,mix@10000");
                    std::process::exit(2);
                }
            },
            other => {
                println!(
                    "usage: rdask-bench [--quick] [--only NAME[,NAME...]] [--sim-runs WORKLOAD@WORKERS[:TASKS][,...]]\nbenchmarks: {}",
                    BENCHES.join(", ")
                );
                std::process::exit(if other == "-h" || other == "--help" { 0 } else { 2 });
            }
        }
    }
    let rdask_counts: Vec<usize> = if quick { vec![10_000, 100_000] } else { vec![10_000, 100_000, 1_000_000] };
    let dask_counts: Vec<usize> = if quick { vec![10_000] } else { vec![10_000, 100_000] };
    let mut results = serde_json::Map::new();
    // Memory first: the heap of this process is still fresh, so RSS growth is the scheduler's.
    for name in BENCHES.iter().filter(|n| only.iter().any(|o| o == *n)) {
        eprintln!("== {name}");
        let start = Instant::now();
        let r: R<Value> = match *name {
            "memory" => rt.block_on(memory(1_000_000)),
            "trivial" => rt.block_on(trivial(&rdask_counts)),
            "command" => rt.block_on(command(5_000)),
            "roundtrip" => rt.block_on(roundtrip(1_000)),
            "register" => rt.block_on(register(20)),
            "transfer" => rt.block_on(transfer(512 * MIB, 5)),
            "dashboard" => rt.block_on(dashboard::bench(quick)),
            "journal" => rt.block_on(journal(quick)),
            "sim" => sim::bench(quick, sim_runs.as_deref()),
            "fleet" => rt.block_on(fleet::bench(quick)),
            "hyperqueue" => rt.block_on(hq::bench(quick)),
            #[cfg(feature = "ucx")]
            "ucx" => rt.block_on(ucx::bench(quick)),
            #[cfg(not(feature = "ucx"))]
            "ucx" => Ok(json!({ "skipped": "built without UCX (cargo run --release -p rdask-bench --features ucx)" })),
            _ => rt.block_on(dask(&dask_counts)),
        };
        let v = r.unwrap_or_else(|e| {
            eprintln!("   {name} failed: {e}");
            json!({ "error": e.to_string() })
        });
        eprintln!("   {name}: {:.1} s", start.elapsed().as_secs_f64());
        results.insert(name.to_string(), v);
    }
    drop(rt);
    let results = Value::Object(results);
    let summary = summarize(&results);
    print_table(&summary);
    let stamp = utc_stamp();
    let report = json!({
        "timestamp_utc": stamp, "quick": quick, "machine": machine(), "summary": summary, "results": results,
    });
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    let text = serde_json::to_string_pretty(&report).expect("json");
    let written = std::fs::create_dir_all(&dir)
        .and_then(|_| std::fs::write(dir.join(format!("{stamp}.json")), &text))
        .and_then(|_| std::fs::write(dir.join("latest.json"), &text));
    match written {
        Ok(()) => println!("\nwrote {}", dir.join("latest.json").display()),
        Err(e) => eprintln!("cannot write results to {}: {e}", dir.display()),
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// VmRSS of this process, in bytes.
fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok());
    kb.unwrap_or(0) * 1024
}

/// Polls the cluster status until `n` workers are registered (every ~200 µs, at most 30 s).
async fn wait_workers(client: &Client, n: usize) -> R<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.status().await?.workers.len() < n {
        if Instant::now() > deadline {
            return Err(format!("fewer than {n} workers registered within 30 s").into());
        }
        // tokio's timer has 1 ms granularity; a short blocking sleep polls finer.
        tokio::task::block_in_place(|| std::thread::sleep(Duration::from_micros(200)));
    }
    Ok(())
}

// ---------------------------------------------------------------- trivial function tasks

/// `n` independent `inc` tasks: build the graph, submit, gather every result, check the sum.
/// Seconds spent building, submitting, and running + gathering.
pub(crate) async fn inc_round(client: &Client, n: usize) -> R<[f64; 3]> {
    let t0 = Instant::now();
    let mut g = Graph::new();
    let handles: Vec<TaskHandle> = (0..n as u64).map(|i| g.call("inc", &i)).collect();
    let t1 = Instant::now();
    let job = client.submit(g).await?;
    let t2 = Instant::now();
    let out: Vec<u64> = client.gather(&job, &handles).await?;
    let t3 = Instant::now();
    let (got, want) = (out.iter().sum::<u64>(), (n as u64) * (n as u64 + 1) / 2);
    if got != want {
        return Err(format!("{n} inc tasks summed to {got}, not {want}").into());
    }
    client.release(job.id).await?;
    Ok([secs(t1 - t0), secs(t2 - t1), secs(t3 - t2)])
}

async fn trivial(counts: &[usize]) -> R<Value> {
    let cluster = LocalCluster::start(2, 1).await?;
    let res: R<Value> = async {
        let client = cluster.client(2).await?;
        inc_round(&client, 1_000).await?; // warm-up: connections, allocator, the mean task duration
        let mut rounds = Vec::new();
        for &n in counts {
            let reps = if n <= 100_000 { 3 } else { 1 };
            let mut rs = Vec::new();
            for _ in 0..reps {
                rs.push(inc_round(&client, n).await?);
            }
            rs.sort_by(|a, b| a.iter().sum::<f64>().total_cmp(&b.iter().sum()));
            let [build, submit, gather] = rs[rs.len() / 2];
            let total = build + submit + gather;
            eprintln!("   {n} tasks: {total:.3} s, {:.0} tasks/s", n as f64 / total);
            rounds.push(json!({
                "tasks": n, "seconds": total, "tasks_per_s": n as f64 / total, "us_per_task": total * 1e6 / n as f64,
                "build_graph_s": build, "submit_s": submit, "run_and_gather_s": gather, "reps_median_of": reps,
            }));
        }
        Ok(json!({ "workers": 2, "slots_per_worker": 1, "target_tasks_per_s": 100_000,
            "method": "graph build + submit + gather of all results (gather waits for the job), median of 3 reps up to 100k",
            "rounds": rounds }))
    }
    .await;
    cluster.shutdown().await;
    res
}

// ---------------------------------------------------------------- command tasks

/// fork+exec of `/bin/true` with std::process::Command: 2 concurrent spawners, `n` in all.
fn spawn_rate(n: u32) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..n / 2 {
                    let st = std::process::Command::new("/bin/true")
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                    assert!(st.is_ok_and(|s| s.success()), "/bin/true failed");
                }
            });
        }
    });
    f64::from(n / 2 * 2) / secs(t.elapsed())
}

/// `/bin/true`, its output discarded: the command the command-task figures run.
pub(crate) fn true_command() -> CommandSpec {
    CommandSpec { argv: vec!["/bin/true".into()], env: vec![], cwd: None, stdout: None, stderr: None, stream: None }
}

async fn command(n: u32) -> R<Value> {
    let cluster = LocalCluster::start(2, 1).await?;
    let res: R<(Vec<f64>, Vec<f64>)> = async {
        let client = cluster.client(2).await?;
        let spec = true_command();
        let warm = client.submit_array("warm-up", spec.clone(), vec![(1, 200)], 1).await?;
        client.wait(warm).await?;
        // Alternate the machine's rate and ours (the workers idle meanwhile): this box is noisy.
        let (mut machine, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            machine.push(spawn_rate(n));
            let t = Instant::now();
            let job = client.submit_array("true", spec.clone(), vec![(1, n)], 1).await?;
            let out = client.wait(job).await?;
            ours.push(f64::from(n) / secs(t.elapsed()));
            if out.finished != n || !out.failed.is_empty() {
                return Err(format!("array of {n}: {} finished, {} failed", out.finished, out.failed.len()).into());
            }
            client.release(job).await?;
        }
        Ok((machine, ours))
    }
    .await;
    cluster.shutdown().await;
    let (mut machine, mut ours) = res?;
    let (m, o) = (median(&mut machine), median(&mut ours));
    Ok(json!({
        "tasks": n, "workers": 2, "slots_per_worker": 1, "tasks_per_s": o, "machine_spawn_per_s": m,
        "runs_tasks_per_s": ours, "runs_machine_spawn_per_s": machine, "ratio": o / m, "target_ratio": 0.9,
        "method": "submit_array(/bin/true, stdout/stderr None) to wait(), 2 workers x 1 slot; machine: 2 threads of std::process::Command::status(), same count; alternated 3 times, medians",
    }))
}

// ---------------------------------------------------------------- journal

/// Tasks per second of one array of `n` `spec` tasks, submit to wait.
pub(crate) async fn command_round(c: &Client, spec: &rdask::protocol::CommandSpec, n: u32) -> R<f64> {
    let t = Instant::now();
    let job = c.submit_array("true", spec.clone(), vec![(1, n)], 1).await?;
    let out = c.wait(job).await?;
    if out.finished != n {
        return Err(format!("{} of {n} commands finished", out.finished).into());
    }
    c.release(job).await?;
    Ok(f64::from(n) / secs(t.elapsed()))
}

/// Throughput with the scheduler journalling (as `rdask-jobqueue`'s always does) against
/// without: command arrays and function graphs (each journalled: its spec once, then every
/// task's end), on two
/// clusters of the same shape, in alternating rounds.
async fn journal(quick: bool) -> R<Value> {
    let (cmd_n, fn_n, pairs) = if quick { (3_000u32, 50_000usize, 3) } else { (5_000, 100_000, 5) };
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("scheduler.journal");
    let plain = LocalCluster::start(2, 1).await?;
    let journalled = LocalCluster::start_journalled(2, 1, &path).await?;
    let res: R<Value> = async {
        let (a, b) = (plain.client(2).await?, journalled.client(2).await?);
        let spec = true_command();
        for c in [&a, &b] {
            inc_round(c, 1_000).await?;
        }
        let (mut cmd_off, mut cmd_on, mut fn_off, mut fn_on) = (vec![], vec![], vec![], vec![]);
        for _ in 0..pairs {
            cmd_off.push(command_round(&a, &spec, cmd_n).await?);
            cmd_on.push(command_round(&b, &spec, cmd_n).await?);
            let [x, y, z] = inc_round(&a, fn_n).await?;
            fn_off.push(fn_n as f64 / (x + y + z));
            let [x, y, z] = inc_round(&b, fn_n).await?;
            fn_on.push(fn_n as f64 / (x + y + z));
        }
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let (co, cn, fo, fnn) =
            (median(&mut cmd_off.clone()), median(&mut cmd_on.clone()), median(&mut fn_off.clone()), median(&mut fn_on.clone()));
        eprintln!(
            "   command x{cmd_n}: {co:.0}/s without, {cn:.0}/s journalled ({:+.1}%); functions x{fn_n}: {fo:.0}/s without, {fnn:.0}/s journalled ({:+.1}%); journal {bytes} bytes",
            (cn / co - 1.0) * 100.0,
            (fnn / fo - 1.0) * 100.0
        );
        Ok(json!({
            "command_tasks": cmd_n, "function_tasks": fn_n, "pairs": pairs, "workers": 2, "slots_per_worker": 1,
            "command_off": cmd_off, "command_on": cmd_on, "function_off": fn_off, "function_on": fn_on,
            "command_ratio": cn / co, "function_ratio": fnn / fo, "journal_bytes": bytes,
            "method": "two LocalClusters of 2 workers x 1 slot, one journalling (server::spawn_journalled); alternating rounds: /bin/true arrays submit->wait, trivial inc graphs build->gather; medians",
        }))
    }
    .await;
    plain.shutdown().await;
    journalled.shutdown().await;
    res
}

// ---------------------------------------------------------------- scheduler memory

async fn submit_graph_child(n: usize) -> R<Value> {
    let client = Client::connect(&ClusterInfo::from_env()?).await?;
    let t = Instant::now();
    let mut g = Graph::new();
    for i in 0..n as u64 {
        g.call("inc", &i);
    }
    let build = secs(t.elapsed());
    let t = Instant::now();
    let job = client.submit(g).await?;
    Ok(json!({ "job": job.id.0, "build_graph_s": build, "submit_s": secs(t.elapsed()) }))
}

/// RSS growth of this process (the scheduler's) per task of an `n`-task job left queued (no workers).
pub(crate) async fn queued_rss(n: u32, graph: bool) -> R<Value> {
    let cluster = LocalCluster::start(0, 1).await?;
    let res: R<Value> = async {
        let client = cluster.client(0).await?;
        let before = rss_bytes();
        let t = Instant::now();
        let mut v: Value = if graph {
            // Built and submitted by a separate client process: the client's graph is not counted.
            let out = tokio::process::Command::new(std::env::current_exe()?)
                .args(["--submit-graph", &n.to_string()])
                .env("RDASK_SCHEDULER", cluster.info().addresses[0].to_string())
                .env("RDASK_SECRET", cluster.info().secret.to_hex())
                .kill_on_drop(true)
                .output()
                .await?;
            if !out.status.success() {
                return Err(format!("the submitting client failed ({})", out.status).into());
            }
            serde_json::from_slice(&out.stdout)?
        } else {
            // A command array's spec is a few bytes: a client in this process adds nothing.
            let spec = true_command();
            let job = client.submit_array("queued", spec, vec![(1, n)], 1).await?;
            json!({ "job": job.0, "submit_s": secs(t.elapsed()) })
        };
        let job = JobId(v["job"].as_u64().ok_or("no job id from the submitting client")? as u32);
        let c = client.progress(job).await?;
        if c.waiting != n || c.total != n {
            return Err(format!("job {job}: {} of {} tasks queued, expected {n}", c.waiting, c.total).into());
        }
        let after = rss_bytes();
        v["tasks"] = json!(n);
        v["rss_before"] = json!(before);
        v["rss_after"] = json!(after);
        v["bytes_per_task"] = json!((after as f64 - before as f64) / f64::from(n));
        Ok(v)
    }
    .await;
    cluster.shutdown().await;
    res
}

async fn memory(n: u32) -> R<Value> {
    Ok(json!({
        "target_bytes_per_task": 300, "array": queued_rss(n, false).await?, "graph": queued_rss(n, true).await?,
        "method": "VmRSS of this process (scheduler in-process, no workers, so every task stays queued) before submission and after progress() confirms all tasks queued. The command array is submitted by a client in this process (its spec is a few bytes); the graph of `inc` calls is built and submitted by a separate client process (this binary with --submit-graph), so the client's graph is not counted. Runs first, on a fresh heap, each in a fresh LocalCluster",
    }))
}

// ---------------------------------------------------------------- latency

async fn roundtrip(n: usize) -> R<Value> {
    let cluster = LocalCluster::start(2, 1).await?;
    let res: R<(Vec<f64>, Vec<f64>)> = async {
        let client = cluster.client(2).await?;
        let (mut us, mut submit_us) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..(n + 50) as u64 {
            let t = Instant::now();
            let mut g = Graph::new();
            let h = g.call("inc", &i);
            let job = client.submit(g).await?;
            let ts = t.elapsed().as_secs_f64() * 1e6;
            let out: Vec<u64> = client.gather(&job, &[h]).await?;
            let dt = t.elapsed().as_secs_f64() * 1e6;
            if out != [i + 1] {
                return Err(format!("inc({i}) gave {out:?}").into());
            }
            client.release(job.id).await?;
            if i >= 50 {
                us.push(dt); // the first 50 warm up
                submit_us.push(ts);
            }
        }
        Ok((us, submit_us))
    }
    .await;
    cluster.shutdown().await;
    let (mut us, mut submit_us) = res?;
    let mean = us.iter().sum::<f64>() / us.len() as f64;
    Ok(json!({ "samples": us.len(), "median_us": median(&mut us), "p99_us": us[(us.len() * 99).div_ceil(100) - 1],
        "min_us": us[0], "mean_us": mean,
        "submit_reply_median_us": median(&mut submit_us), "target_median_us": 300,
        "method": "sequential Graph(1 inc) -> submit (submit_reply: until Submitted) -> gather (wait + fetch from the worker) on 2 workers x 1 slot; release after each, untimed" }))
}

async fn register(n: usize) -> R<Value> {
    let mut cluster = LocalCluster::start(0, 1).await?;
    let res: R<(Vec<f64>, Vec<f64>)> = async {
        let client = cluster.client(0).await?;
        let (mut total, mut spawn) = (Vec::new(), Vec::new());
        for i in 0..n {
            let t = Instant::now();
            cluster.add_worker(1)?;
            spawn.push(t.elapsed().as_secs_f64() * 1e3);
            wait_workers(&client, i + 1).await?;
            total.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok((total, spawn))
    }
    .await;
    cluster.shutdown().await;
    let (mut total, mut spawn) = res?;
    Ok(json!({ "workers": n, "median_ms": median(&mut total), "max_ms": total[n - 1], "min_ms": total[0],
        "spawn_call_median_ms": median(&mut spawn), "target_median_ms": 20,
        "method": "LocalCluster::add_worker (fork+exec of this binary) until status() lists it, polled every ~200 us; earlier workers stay up" }))
}

// ---------------------------------------------------------------- data movement

/// One loopback TCP connection moving `size` bytes with write_all/read_exact; seconds, median of `reps`.
fn loopback(size: usize, reps: usize, fresh: bool) -> R<f64> {
    let src = vec![7u8; size];
    let mut dst = vec![0u8; size];
    dst.iter_mut().step_by(4096).for_each(|b| *b = 1); // pre-fault for the reused-buffer variant
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut times = Vec::new();
    for _ in 0..reps {
        let t = std::thread::scope(|s| -> R<f64> {
            let sender = s.spawn(|| -> std::io::Result<()> { listener.accept()?.0.write_all(&src) });
            let t = Instant::now();
            let mut c = std::net::TcpStream::connect(addr)?;
            if fresh {
                let mut buf = vec![0u8; size]; // lazily mapped: page faults as the data lands, like a fetch
                c.read_exact(&mut buf)?;
            } else {
                c.read_exact(&mut dst)?;
            }
            let dt = secs(t.elapsed());
            sender.join().map_err(|_| "sender panicked")??;
            Ok(dt)
        })?;
        times.push(t);
    }
    Ok(median(&mut times))
}

/// A job of one function task, with `deps` from earlier jobs.
fn one_task(func: &str, args: Bytes, deps: Vec<TaskRef>, cpus: u16) -> JobSpec {
    let task =
        TaskSpec { body: TaskBody::Function { func: 0, args }, deps, keep: true, cpus, needs: Default::default() };
    let (functions, tasks) = (vec![func.to_string()], JobTasks::Graph(vec![task]));
    JobSpec { name: func.into(), functions, command: None, tasks, max_attempts: 1, release_on_disconnect: true }
}

/// Runs `len` on worker B over task `index` of the producer job (held by worker A); seconds.
async fn consume(client: &Client, producer: JobId, index: u32, size: usize, a: rdask::protocol::WorkerId) -> R<f64> {
    let t = Instant::now();
    let deps = vec![TaskRef::Global(TaskId { job: producer, index })];
    let job = Job { id: client.submit_spec(one_task("len", Bytes::new(), deps, 1)).await? };
    let out = client.gather_raw(&job, &[TaskHandle(0)]).await?;
    let dt = secs(t.elapsed());
    let len = out[0].as_ref().try_into().map(u64::from_le_bytes).map_err(|_| "len returned garbage")?;
    if len != size as u64 {
        return Err(format!("consumer saw {len} bytes, not {size}").into());
    }
    let ran_on = client.wait(job.id).await?.holdings.first().map(|h| h.worker);
    if ran_on == Some(a) {
        return Err("the consumer ran on the producer's worker: no transfer to time".into());
    }
    client.release(job.id).await?;
    Ok(dt)
}

async fn transfer(size: usize, reps: usize) -> R<Value> {
    transfer_on(rdask_transport::Scheme::Tcp, size, reps).await
}

/// [`transfer`] on a cluster whose scheduler, workers and data servers use `scheme`.
async fn transfer_on(scheme: rdask_transport::Scheme, size: usize, reps: usize) -> R<Value> {
    let tcp = loopback(size, 5, false)?;
    let tcp_fresh = loopback(size, 5, true)?;
    let flag = std::env::temp_dir().join(format!("rdask-bench-{}.release", std::process::id()));
    let _ = std::fs::remove_file(&flag);
    let mut cluster = LocalCluster::start_on(scheme, 1, 1).await?;
    let res: R<Value> = async {
        let client = cluster.client(1).await?;
        // Worker A (alone) produces the big and a small result; keeps both.
        let mut g = Graph::new();
        let big = g.call_raw("make", Bytes::copy_from_slice(&(size as u64).to_le_bytes()), &[]);
        let small = g.call_raw("make", Bytes::copy_from_slice(&8u64.to_le_bytes()), &[]);
        let t = Instant::now();
        let producer = client.submit(g).await?;
        let done = client.wait(producer.id).await?;
        let produce = secs(t.elapsed());
        let a = done.holdings.first().ok_or("no worker holds the produced data")?.worker;
        // Keep A busy with a task that blocks until we say so, and retire A (SIGTERM): it takes
        // no new task but serves its data until that task ends. Then start B: the consumers can
        // only go to B and must fetch from A.
        let flag_arg = Bytes::from(flag.to_string_lossy().into_owned());
        let blocker = client.submit_spec(one_task("wait_file", flag_arg, vec![], 1)).await?;
        if client.progress(blocker).await?.running != 1 {
            return Err("the blocking task did not start on worker A".into());
        }
        let pid = cluster.worker_pids()[0].to_string();
        if !std::process::Command::new("kill").args(["-TERM", &pid]).status()?.success() {
            return Err(format!("kill -TERM {pid} failed").into());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !client.status().await?.workers.iter().any(|w| w.id == a && w.retiring) {
            if Instant::now() > deadline {
                return Err("worker A did not retire on SIGTERM within 10 s".into());
            }
            tokio::task::block_in_place(|| std::thread::sleep(Duration::from_micros(200)));
        }
        cluster.add_worker(1)?;
        wait_workers(&client, 2).await?;
        let mut small_s: Vec<f64> = Vec::new();
        for _ in 0..5 {
            small_s.push(consume(&client, producer.id, small.0, 8, a).await?);
        }
        let mut big_s: Vec<f64> = Vec::new();
        for _ in 0..reps {
            big_s.push(consume(&client, producer.id, big.0, size, a).await?);
        }
        client.release(producer.id).await?; // so that A's leaving loses nothing still wanted
        std::fs::write(&flag, b"")?;
        client.wait(blocker).await?;
        let (small_m, big_m) = (median(&mut small_s), median(&mut big_s));
        let fetch = big_m - small_m;
        let mibps = |s: f64| size as f64 / MIB as f64 / s;
        Ok(json!({
            "bytes": size, "reps": reps, "produce_s": produce, "consume_big_s": big_s, "consume_small_median_s": small_m,
            "fetch_s": fetch, "fetch_mib_per_s": mibps(fetch),
            "tcp_s": tcp, "tcp_mib_per_s": mibps(tcp), "ratio": tcp / fetch, "target_ratio": 0.7,
            "tcp_fresh_buffer_s": tcp_fresh, "tcp_fresh_buffer_mib_per_s": mibps(tcp_fresh), "ratio_vs_fresh_buffer": tcp_fresh / fetch,
            "method": "A produces 512 MiB (register_raw), then runs a blocking task and is retired (SIGTERM) so it takes no new task; B starts and runs `len` over it (Global dependency). fetch = median(consume big) - median(consume 8 B), i.e. the end-to-end time of a consumer job minus that of one whose remote input is tiny. Baseline (ratio): std TcpStream loopback, one connection, write_all/read_exact into a pre-faulted buffer, median of 5; also into a fresh, lazily faulted buffer each time as a fetch must allocate (noisy on VMs: page faults). 2 workers + client on nproc cores",
        }))
    }
    .await;
    let _ = std::fs::write(&flag, b""); // never leave the blocker waiting
    cluster.shutdown().await;
    let _ = std::fs::remove_file(&flag);
    res
}

// ---------------------------------------------------------------- Dask

async fn dask(counts: &[usize]) -> R<Value> {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers");
    let python = peers.join(".venv/bin/python");
    if !python.exists() {
        return Ok(json!({ "skipped": format!("{} not found (run bench/peers/setup.sh)", python.display()) }));
    }
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(peers.join("dask_trivial.py")).stdout(Stdio::piped()).kill_on_drop(true);
    for n in counts {
        cmd.args(["--tasks", &n.to_string()]);
    }
    let out =
        tokio::time::timeout(Duration::from_secs(1200), cmd.output()).await.map_err(|_| "Dask ran over 20 min")??;
    if !out.status.success() {
        return Err(format!("dask_trivial.py failed ({})", out.status).into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(serde_json::from_str(text.lines().last().ok_or("dask_trivial.py printed nothing")?)?)
}

// ---------------------------------------------------------------- report

fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|v| v.trim_start_matches([' ', '\t', ':']));
    let mem = read("/proc/meminfo");
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "cpu_model": model, "mem_total": mem.lines().next().map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")),
        "arch": std::env::consts::ARCH, "git_commit": commit,
    })
}

/// `YYYYMMDDTHHMMSSZ` now (UTC), without a date crate.
fn utc_stamp() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let (days, rem) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The figures against their targets: one row each, for the table and the JSON.
fn summarize(r: &Value) -> Vec<Value> {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut rows = Vec::new();
    let mut row = |figure: String, value: String, target: &str, met: Option<bool>, note: String| {
        rows.push(json!({ "figure": figure, "value": value, "target": target, "met": met, "note": note }));
    };
    for (name, v) in r.as_object().into_iter().flatten() {
        if let Some(e) = v.get("error").or(v.get("skipped")).and_then(Value::as_str) {
            row(name.clone(), "-".into(), "", None, e.chars().take(90).collect());
        }
    }
    let rounds = r["trivial"]["rounds"].as_array().cloned().unwrap_or_default();
    for x in &rounds {
        let tps = f(&x["tasks_per_s"]);
        let (fig, note) = (format!("trivial tasks/s, {} tasks", x["tasks"]), format!("{:.2}x target", tps / 1e5));
        row(fig, format!("{tps:.0}/s"), ">= 100000/s", Some(tps >= 1e5), note);
    }
    if let (Some(a), Some(b)) = (rounds.first(), rounds.last().filter(|_| rounds.len() > 1)) {
        let (ua, ub) = (f(&a["us_per_task"]), f(&b["us_per_task"]));
        let (fig, d) = (format!("time/task, {} vs {} tasks", a["tasks"], b["tasks"]), ub / ua - 1.0);
        row(fig, format!("{ua:.2} vs {ub:.2} us"), "within +-20%", Some(d.abs() <= 0.2), format!("{:+.0}%", d * 100.0));
    }
    for d in r["dask"]["results"].as_array().into_iter().flatten() {
        let ours = rounds.iter().find(|x| x["tasks"] == d["tasks"]).map(|x| f(&x["tasks_per_s"]));
        let ratio = ours.map(|o| o / f(&d["tasks_per_s"]));
        let note = match ours {
            Some(o) => format!("rdask {o:.0}/s = {:.1}x Dask", o / f(&d["tasks_per_s"])),
            None => "no rdask figure at this count".into(),
        };
        let value = format!("{:.0}/s Dask", f(&d["tasks_per_s"]));
        row(format!("rdask/Dask tasks/s, {} tasks", d["tasks"]), value, ">= 50x", ratio.map(|q| q >= 50.0), note);
    }
    let h = &r["hyperqueue"];
    if h["command_ratio"].is_number() {
        let q = f(&h["command_ratio"]);
        let note = format!("rdask {:.0}/s, HyperQueue {:.0}/s", f(&h["rdask_tasks_per_s"]), f(&h["hq_tasks_per_s"]));
        row(
            format!("rdask:HyperQueue command tasks/s x{}", h["command_tasks"]),
            format!("{q:.2}x"),
            ">= 1x",
            Some(q >= 1.0),
            note,
        );
    }
    if h["memory_ratio"].is_number() {
        let q = f(&h["memory_ratio"]);
        let (a, b) = (f(&h["memory"]["rdask"]["bytes_per_task"]), f(&h["memory"]["hq"]["bytes_per_task"]));
        let note =
            format!("rdask {a:.0} B, HyperQueue {b:.0} B per queued task ({} tasks)", h["memory"]["hq"]["tasks"]);
        row("rdask:HyperQueue RSS/queued task".into(), format!("{q:.2}x"), "<= 1x", Some(q <= 1.0), note);
    }
    let fl = &r["fleet"];
    if fl["register_all_s"].is_number() {
        let n = &fl["workers"];
        let note = format!(
            "spawned in {:.1} s; peak {} fds (soft limit {})",
            f(&fl["spawn_s"]),
            fl["peak_fds"],
            fl["nofile_soft"]
        );
        row(
            format!("fleet: {n} workers registered"),
            format!("{:.1} s", f(&fl["register_all_s"])),
            "all",
            Some(true),
            note,
        );
        let pct = f(&fl["rest_cpu_percent_of_core"]);
        let note =
            format!("{:.1} us per heartbeat over {:.0} s", f(&fl["rest_us_per_heartbeat"]), f(&fl["rest_window_s"]));
        row(
            format!("fleet: scheduler CPU at rest, {n} workers"),
            format!("{pct:.2}%"),
            "< 2% of a core",
            Some(pct < 2.0),
            note,
        );
        let note = format!(
            "{} /bin/true in {:.1} s, {} workers ran some",
            fl["tasks"],
            f(&fl["array_s"]),
            fl["workers_that_ran_tasks"]
        );
        row(
            format!("fleet: array across {n} workers"),
            format!("{:.0}/s", f(&fl["array_tasks_per_s"])),
            "completes",
            Some(true),
            note,
        );
    }
    let d = &r["dashboard"];
    if d["ratio"].is_number() {
        let (q, fig) = (f(&d["ratio"]), format!("trivial tasks/s, dashboard open + scraped, {} tasks", d["tasks"]));
        let note =
            format!("{:.0}/s vs {:.0}/s without ({:+.1}%)", f(&d["on_median"]), f(&d["off_median"]), (q - 1.0) * 100.0);
        row(fig, format!("{:.0}/s", f(&d["on_median"])), "within 5% of without", Some(q >= 0.95), note);
    }
    let j = &r["journal"];
    if j["command_ratio"].is_number() {
        let (c, g) = (f(&j["command_ratio"]), f(&j["function_ratio"]));
        let note = format!("{} /bin/true tasks, {:+.1}%", j["command_tasks"], (c - 1.0) * 100.0);
        row(
            "command tasks/s, journalled vs not".into(),
            format!("{:.0}%", c * 100.0),
            "within 10%",
            Some(c >= 0.9),
            note,
        );
        let note = format!("{} inc tasks, {:+.1}%", j["function_tasks"], (g - 1.0) * 100.0);
        row(
            "function tasks/s, journalled vs not".into(),
            format!("{:.0}%", g * 100.0),
            "within 5%",
            Some(g >= 0.95),
            note,
        );
    }
    let c = &r["command"];
    if c["ratio"].is_number() {
        let note = format!("{:.0}% of fork+exec {:.0}/s", f(&c["ratio"]) * 100.0, f(&c["machine_spawn_per_s"]));
        let fig = format!("command /bin/true x{}", c["tasks"]);
        row(fig, format!("{:.0}/s", f(&c["tasks_per_s"])), ">= 90% of machine", Some(f(&c["ratio"]) >= 0.9), note);
    }
    for kind in ["array", "graph"] {
        let m = &r["memory"][kind];
        if m["bytes_per_task"].is_number() {
            let b = f(&m["bytes_per_task"]);
            let note = format!("{} tasks, submit {:.2} s", m["tasks"], f(&m["submit_s"]));
            row(format!("scheduler RSS/queued task, {kind}"), format!("{b:.0} B"), "<= 300 B", Some(b <= 300.0), note);
        }
    }
    let (t, d) = (&r["roundtrip"], &r["dask"]["roundtrip_median_us"]);
    if t["median_us"].is_number() {
        let mut note = format!("p99 {:.0} us", f(&t["p99_us"]));
        if d.is_number() {
            note += &format!("; Dask median {:.0} us", f(d));
        }
        let us = f(&t["median_us"]);
        row("submit->result median".into(), format!("{us:.0} us"), "<= 300 us", Some(us <= 300.0), note);
    }
    let w = &r["register"];
    if w["median_ms"].is_number() {
        let (ms, note) = (f(&w["median_ms"]), format!("max {:.1} ms", f(&w["max_ms"])));
        row("worker start->registered".into(), format!("{ms:.1} ms"), "<= 20 ms", Some(ms <= 20.0), note);
    }
    let x = &r["transfer"];
    if x["ratio"].is_number() {
        let note = format!(
            "{:.0}% of TCP {:.0} MiB/s; {:.0}% of TCP into fresh buffer {:.0} MiB/s",
            f(&x["ratio"]) * 100.0,
            f(&x["tcp_mib_per_s"]),
            f(&x["ratio_vs_fresh_buffer"]) * 100.0,
            f(&x["tcp_fresh_buffer_mib_per_s"])
        );
        let value = format!("{:.0} MiB/s", f(&x["fetch_mib_per_s"]));
        row("512 MiB worker->worker".into(), value, ">= 70% of TCP", Some(f(&x["ratio"]) >= 0.7), note);
    }
    let u = &r["ucx"];
    for mib in ["64", "512"] {
        let bw = |path: &str| f(&u[path]["mib_per_s_by_mib"][mib]["mib_per_s"]);
        let q = &u["ratios"][format!("{mib}_mib")];
        if q["ucx_sm_vs_perftest"].is_number() {
            let (p, t) = (f(&q["ucx_sm_vs_perftest"]), f(&q["ucx_sm_vs_rdask_tcp"]));
            let note = format!(
                "{:.0}% of ucx_perftest {:.0}; {t:.2}x rdask TCP {:.0}; UCX tcp {:.0} ({:.0}% of perftest); \
                 peer-failure mode (no shm) {:.0}",
                p * 100.0,
                f(&u["ucx_perftest_tag_bw_mib_per_s"]["ucx_sm"][mib]),
                bw("tcp"),
                bw("ucx_tcp"),
                f(&q["ucx_tcp_vs_perftest"]) * 100.0,
                bw("ucx_sm_peer_mode")
            );
            let value = format!("{:.0} MiB/s", bw("ucx_sm"));
            let met = Some(p >= 0.8 && t >= 1.5);
            row(format!("{mib} MiB over UCX shm"), value, ">= 80% perftest, 1.5x TCP", met, note);
        }
    }
    for mib in ["64", "512"] {
        let (sm, tcp) = (&u["rdask_fetch"]["ucx_sm"][mib], &u["rdask_fetch"]["ucx_tcp"][mib]);
        if sm["fetch_mib_per_s"].is_number() {
            let mut note = format!("UCX tcp {:.0} MiB/s", f(&tcp["fetch_mib_per_s"]));
            if mib == "512" && x["fetch_mib_per_s"].is_number() {
                note += &format!("; rdask over TCP {:.0} MiB/s (transfer)", f(&x["fetch_mib_per_s"]));
            }
            let value = format!("{:.0} MiB/s", f(&sm["fetch_mib_per_s"]));
            row(format!("{mib} MiB rdask fetch, UCX shm"), value, "", None, note);
        }
    }
    if u["ucx_sm"]["round_trip_us_median"].is_number() {
        let note = format!(
            "UCX tcp {:.0} us, rdask TCP {:.0} us",
            f(&u["ucx_tcp"]["round_trip_us_median"]),
            f(&u["tcp"]["round_trip_us_median"])
        );
        row(
            "small round trip, UCX shm".into(),
            format!("{:.0} us", f(&u["ucx_sm"]["round_trip_us_median"])),
            "",
            None,
            note,
        );
    }
    if r["sim"]["runs"].is_array() {
        rows.extend(sim::rows(&r["sim"]));
    }
    rows
}

fn print_table(rows: &[Value]) {
    let cell = |r: &Value, k: &str| r[k].as_str().unwrap_or("").to_string();
    let width = |k: &str| rows.iter().map(|r| cell(r, k).len()).max().unwrap_or(0).max(6);
    let (w0, w1, w2) = (width("figure"), width("value"), width("target"));
    println!("\n{:<w0$}  {:>w1$}  {:<w2$}  result", "figure", "value", "target");
    for r in rows {
        let verdict = match r["met"].as_bool() {
            Some(true) => "ok  ",
            Some(false) => "MISS",
            None => "    ",
        };
        let (fig, val, tgt, note) = (cell(r, "figure"), cell(r, "value"), cell(r, "target"), cell(r, "note"));
        println!("{fig:<w0$}  {val:>w1$}  {tgt:<w2$}  {verdict} {note}");
    }
}
