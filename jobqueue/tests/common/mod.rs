//! Running `rdask-jobqueue` as a user would, for the integration tests.
#![allow(dead_code)] // each test crate uses its own subset

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod browser;

/// Runs `rdask-jobqueue ARGS` with its state under `home`, untouched by the caller's own
/// cluster name or configuration files.
pub fn rdask(home: &Path, args: &[&str]) -> Output {
    rdask_command(home, args).output().expect("rdask-jobqueue runs")
}

/// `rdask-jobqueue ARGS` as [`rdask`] runs it, to start in the background.
pub fn rdask_command(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rdask-jobqueue"));
    c.env("RDASK_HOME", home).env("RDASK_CONFIG", "/dev/null").env_remove("RDASK_CLUSTER").args(args);
    c
}

/// The pids that tasks 1..=n write, each into its own file in `dir` (written aside and
/// renamed, so never read half-written), once all n are there.
pub fn recorded_pids(dir: &Path, n: u32) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read: Vec<u32> = (1..=n)
            .filter_map(|i| std::fs::read_to_string(dir.join(i.to_string())).ok()?.trim().parse().ok())
            .collect();
        if read.len() == n as usize {
            return read;
        }
        assert!(Instant::now() < deadline, "the {n} tasks did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid of the default cluster's scheduler, from its scheduler file.
pub fn scheduler_pid(home: &Path) -> u32 {
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("default/scheduler.json")).unwrap()).unwrap();
    file["pid"].as_u64().unwrap() as u32
}

/// Sends SIGKILL to `pid`.
pub fn sigkill(pid: u32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
}

/// The workers' pids in a status, sorted.
pub fn worker_pids(s: &Value) -> Vec<u64> {
    let mut p: Vec<u64> = s["workers"].as_array().unwrap().iter().map(|w| w["info"]["pid"].as_u64().unwrap()).collect();
    p.sort();
    p
}

/// The finished tasks of every job in a status.
pub fn finished_tasks(s: &Value) -> u64 {
    s["jobs"].as_array().unwrap().iter().map(|j| j["counts"]["finished"].as_u64().unwrap_or(0)).sum()
}

/// Tasks 1..=n append a line each to their own file in `dir`: those whose file does not hold
/// exactly one line, with the count.
pub fn runs_per_task(dir: &Path, n: u32) -> Vec<(u32, usize)> {
    (1..=n)
        .map(|i| (i, std::fs::read_to_string(dir.join(i.to_string())).map(|t| t.lines().count()).unwrap_or(0)))
        .filter(|(_, runs)| *runs != 1)
        .collect()
}

/// A temporary `RDASK_HOME` whose default cluster is taken down when it goes out of scope,
/// so that a test that fails half-way leaves no scheduler, worker or batch job behind.
pub struct Home(tempfile::TempDir);

impl Home {
    pub fn new() -> Home {
        Home(tempfile::tempdir().expect("a temporary directory"))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        // Does nothing (quickly) when the test already took its cluster down.
        let _ = rdask(self.0.path(), &["down"]);
    }
}

/// Exit status, stdout and stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs it and asserts success; returns stdout.
pub fn ok(home: &Path, args: &[&str]) -> String {
    let o = rdask(home, args);
    assert!(o.status.success(), "{args:?} failed: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Whether `program` exists; under CI its absence fails the test.
pub fn available(program: &str, setup: &str) -> bool {
    if Path::new(program).exists() {
        return true;
    }
    assert!(std::env::var("CI").is_err(), "{program} is missing under CI: {setup} should have installed it");
    eprintln!("skipped: {program} not found (run `{setup}` as root to get it)");
    false
}

/// The URL `up` prints on its `dashboard:` line.
pub fn dashboard_url(up: &str) -> String {
    up.lines()
        .find_map(|l| l.strip_prefix("dashboard: "))
        .unwrap_or_else(|| panic!("`up` printed no dashboard URL:\n{up}"))
        .trim()
        .to_string()
}

pub fn status(home: &Path) -> Value {
    serde_json::from_str(&ok(home, &["status", "--output", "json"])).unwrap()
}

/// Waits until `f(status)` holds.
pub fn wait_for(home: &Path, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = status(home);
        if f(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; status:\n{s:#}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until no process mentions `home` on its command line (the workers of the cluster).
pub fn no_process_left(home: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = Command::new("pgrep").args(["-af", &home.display().to_string()]).output().unwrap();
        let left = String::from_utf8_lossy(&out.stdout).into_owned();
        if left.trim().is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes of the cluster left running:\n{left}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The cluster's batch jobs that `status` shows running.
pub fn running_jobs(s: &Value) -> usize {
    s["batch_jobs"].as_array().unwrap().iter().filter(|j| j["state"] == "running").count()
}

/// Waits until the batch system shows exactly `n` of `ids` active.
pub fn wait_active(system: &str, ids: &[String], n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while active_in(system, ids).len() != n {
        assert!(Instant::now() < deadline, "not {n} active: {:?}", active_in(system, ids));
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn batch_ids(s: &Value) -> Vec<String> {
    s["batch_jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_string()).collect()
}

/// The states the batch system itself shows for `ids` (through our parsers' commands).
pub fn active_in(system: &str, ids: &[String]) -> Vec<String> {
    let out = match system {
        "slurm" => Command::new("squeue").args(["-h", "-o", "%i %T", "-j", &ids.join(",")]).output().unwrap(),
        _ => Command::new("/usr/bin/qstat").args(["-u", "*"]).output().unwrap(),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| {
            let first = l.split_whitespace().next().unwrap_or("");
            let base = first.split('_').next().unwrap_or(first);
            ids.iter().any(|id| id == base)
        })
        .map(str::to_string)
        .collect()
}

/// `rdask-jobqueue events --follow --output json`, running; its lines as JSON as they come.
pub struct Follower {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<Value>,
    pub seen: Vec<Value>,
}

impl Follower {
    pub fn start(home: &Path) -> Follower {
        let mut child = rdask_command(home, &["events", "--follow", "--output", "json"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("rdask-jobqueue runs");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line: {line}: {e}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Follower { child, lines, seen: Vec::new() }
    }

    /// Reads events until `f` holds for one (within 90 s); returns its index in `seen`.
    pub fn until(&mut self, what: &str, f: impl Fn(&Value) -> bool) -> usize {
        if let Some(i) = self.seen.iter().position(&f) {
            return i;
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    let hit = f(&v);
                    self.seen.push(v);
                    if hit {
                        return self.seen.len() - 1;
                    }
                }
                Err(_) => panic!("`events --follow` showed no {what} within 90 s; it showed {:#?}", self.seen),
            }
        }
    }

    /// The index of the first event named `name` seen so far.
    pub fn first(&self, name: &str) -> usize {
        self.seen.iter().position(|e| e["event"] == name).unwrap_or_else(|| panic!("no {name}: {:#?}", self.seen))
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
