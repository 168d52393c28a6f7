//! `hyperqueue`: HyperQueue (`bench/peers/hq`, built from source by `bench/peers/build-hq.sh`)
//! against rdask in the same run: command-array throughput on the same shape (2 workers x 1
//! slot, `/bin/true`, no output kept) in alternating rounds, and the scheduler's memory per
//! queued task of a large array with no workers. Skipped, saying so, without the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdask::process::{self, Target};
use rdask::LocalCluster;
use serde_json::{json, Value};

use crate::{command_round, median, queued_rss, true_command, R};

/// A HyperQueue server and its workers, ended by pid when dropped.
struct Hq {
    bin: PathBuf,
    dir: tempfile::TempDir,
    server: std::process::Child,
    workers: Vec<std::process::Child>,
}

impl Hq {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--server-dir").arg(self.dir.path()).stdin(Stdio::null());
        c
    }

    /// `hq ARGS --output-mode json`, parsed.
    fn json(&self, args: &[&str]) -> R<Value> {
        let out = self.cmd().args(args).args(["--output-mode", "json"]).stderr(Stdio::null()).output()?;
        if !out.status.success() {
            return Err(format!("hq {} failed ({})", args.join(" "), out.status).into());
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn start(bin: &Path) -> R<Hq> {
        let dir = tempfile::tempdir()?;
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let server = Command::new(bin)
            .arg("--server-dir")
            .arg(dir.path())
            .args(["server", "start"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let hq = Hq { bin: bin.to_path_buf(), dir, server, workers: Vec::new() };
        let deadline = Instant::now() + Duration::from_secs(30);
        while hq.json(&["server", "info"]).is_err() {
            if Instant::now() > deadline {
                return Err("the HyperQueue server did not answer within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(hq)
    }

    fn workers_up(&self) -> R<usize> {
        Ok(self.json(&["worker", "list"])?.as_array().map_or(0, Vec::len))
    }

    fn add_workers(&mut self, n: usize) -> R<()> {
        for _ in 0..n {
            let w = self
                .cmd()
                .args(["worker", "start", "--cpus", "1", "--detect-resources", "none"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            self.workers.push(w);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.workers_up()? < self.workers.len() {
            if Instant::now() > deadline {
                return Err("HyperQueue workers did not register within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn end_workers(&mut self) -> R<()> {
        let targets: Vec<Target> = self.workers.iter().map(|w| Target::Process(w.id())).collect();
        process::terminate_all(&targets, process::GRACE);
        for mut w in self.workers.drain(..) {
            let _ = w.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.workers_up()? > 0 {
            if Instant::now() > deadline {
                return Err("the HyperQueue server still lists workers 30 s after they ended".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// (finished, waiting) of job `id`.
    fn job_counts(&self, id: u64) -> R<(u64, u64)> {
        let v = self.json(&["job", "info", &id.to_string()])?;
        let stats = &v[0]["info"]["task_stats"];
        match (stats["finished"].as_u64(), stats["waiting"].as_u64()) {
            (Some(f), Some(w)) => Ok((f, w)),
            _ => Err(format!("hq job info {id}: no task counts in {v}").into()),
        }
    }

    /// Submits an array of `n` `/bin/true` with no output files; with `wait`, until it ended.
    fn submit_true(&self, n: u32, wait: bool) -> R<u64> {
        let mut c = self.cmd();
        c.args(["submit", "--array", &format!("1-{n}"), "--stdout", "none", "--stderr", "none"]);
        if wait {
            c.arg("--wait");
        }
        let out = c.args(["--output-mode", "json", "/bin/true"]).stderr(Stdio::null()).output()?;
        if !out.status.success() {
            return Err(format!("hq submit of {n} tasks failed ({})", out.status).into());
        }
        // A stream of JSON values, the one with the job id first; `--wait` may add more after it.
        let text = String::from_utf8_lossy(&out.stdout);
        let id = serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .map_while(Result::ok)
            .find_map(|v| v["id"].as_u64())
            .ok_or_else(|| format!("hq submit printed no job id: {text}"))?;
        Ok(id)
    }

    /// Tasks per second of one array of `n`, submit to end, checked finished.
    fn command_round(&self, n: u32) -> R<f64> {
        let t = Instant::now();
        let id = self.submit_true(n, true)?;
        let dt = t.elapsed().as_secs_f64();
        let (finished, _) = self.job_counts(id)?;
        if finished != u64::from(n) {
            return Err(format!("HyperQueue job {id}: {finished} of {n} tasks finished").into());
        }
        Ok(f64::from(n) / dt)
    }
}

impl Drop for Hq {
    fn drop(&mut self) {
        let _ = self.cmd().args(["server", "stop"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        let mut all: Vec<Target> = self.workers.iter().map(|w| Target::Process(w.id())).collect();
        all.push(Target::Process(self.server.id()));
        process::terminate_all(&all, process::GRACE);
        for w in &mut self.workers {
            let _ = w.wait();
        }
        let _ = self.server.wait();
    }
}

fn vm_rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: u64 =
        s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok()).unwrap_or(0);
    kib * 1024
}

pub(crate) async fn bench(quick: bool) -> R<Value> {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/hq");
    if !bin.exists() {
        return Ok(json!({ "skipped": format!("{} not found (run bench/peers/build-hq.sh)", bin.display()) }));
    }
    let version =
        Command::new(&bin).arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())?;
    let commit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/hq.commit")).ok();
    let (cmd_n, mem_n, rounds) = if quick { (3_000u32, 200_000u32, 3) } else { (5_000, 1_000_000, 3) };
    // rdask's memory first, on this process's fresh heap (as the `memory` bench does).
    let ours_mem = queued_rss(mem_n, false).await?;
    let mut hq = tokio::task::block_in_place(|| -> R<Hq> {
        let mut hq = Hq::start(&bin)?;
        hq.add_workers(2)?;
        hq.submit_true(200, true)?; // warm-up
        Ok(hq)
    })?;
    let cluster = LocalCluster::start(2, 1).await?;
    let res: R<(Vec<f64>, Vec<f64>)> = async {
        let client = cluster.client(2).await?;
        command_round(&client, &true_command(), 200).await?; // warm-up
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            ours.push(command_round(&client, &true_command(), cmd_n).await?);
            theirs.push(tokio::task::block_in_place(|| hq.command_round(cmd_n))?);
        }
        Ok((ours, theirs))
    }
    .await;
    cluster.shutdown().await;
    let (mut ours, mut theirs) = res?;
    // HyperQueue's memory: its server's RSS before and after an array of `mem_n` with no workers.
    let hq_mem = tokio::task::block_in_place(|| -> R<Value> {
        hq.end_workers()?;
        let before = vm_rss_bytes(hq.server.id());
        let t = Instant::now();
        let id = hq.submit_true(mem_n, false)?;
        let submit_s = t.elapsed().as_secs_f64();
        let (_, waiting) = hq.job_counts(id)?;
        if waiting != u64::from(mem_n) {
            return Err(format!("HyperQueue job {id}: {waiting} of {mem_n} tasks waiting").into());
        }
        let after = vm_rss_bytes(hq.server.id());
        Ok(json!({ "tasks": mem_n, "rss_before": before, "rss_after": after, "submit_s": submit_s,
            "bytes_per_task": (after as f64 - before as f64) / f64::from(mem_n) }))
    })?;
    drop(hq);
    let (o, t) = (median(&mut ours), median(&mut theirs));
    let (ob, tb) = (
        ours_mem["bytes_per_task"].as_f64().unwrap_or(f64::NAN),
        hq_mem["bytes_per_task"].as_f64().unwrap_or(f64::NAN),
    );
    eprintln!("   command x{cmd_n}: rdask {o:.0}/s, HyperQueue {t:.0}/s ({:.2}x)", o / t);
    eprintln!("   queued array x{mem_n}: rdask {ob:.0} B/task, HyperQueue {tb:.0} B/task ({:.2}x)", ob / tb);
    Ok(json!({
        "peer": "hyperqueue", "version": version, "commit": commit.map(|c| c.trim().to_string()),
        "command_tasks": cmd_n, "workers": 2, "slots_per_worker": 1,
        "rdask_tasks_per_s": o, "hq_tasks_per_s": t, "runs_rdask": ours, "runs_hq": theirs,
        "command_ratio": o / t,
        "memory": { "rdask": ours_mem, "hq": hq_mem }, "memory_ratio": ob / tb,
        "method": "command: the same machine, 2 workers x 1 slot each (rdask LocalCluster; hq worker start --cpus 1 --detect-resources none), /bin/true without output files (rdask stdout/stderr None; hq --stdout none --stderr none), alternating rounds, medians; rdask submit_array->wait from an in-process client, hq `hq submit --array 1-N --wait` (its client process included). memory: rdask as the `memory` bench's array (VmRSS of this process, scheduler in-process, no workers); HyperQueue: VmRSS of the hq server process before and after `hq submit --array 1-N` with no workers, once `hq job info` counts N waiting. Ratios are rdask:HyperQueue",
    }))
}
