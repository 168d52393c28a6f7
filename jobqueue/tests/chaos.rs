//! Chaos (#15): while a cluster runs a 20,000-task function graph and a 5,000-task command
//! array, a seeded loop SIGKILLs, at random moments, a random worker, the scheduler, or a
//! client (the graph's client program or a `wait`), and starts again what is needed: `up`
//! restores the scheduler from its journal, a killed client is started again and carries on
//! with the same job. A **round** is one kill and what follows it. When both jobs are done,
//! every result is checked: every value of the graph, and that every command task ran to the
//! end at least once with the exit code its index gives, recorded as such. The jobs are
//! submitted again until the rounds are done; then `down` must leave no process behind.
//!
//! `RDASK_CHAOS_SEED` replays a run's choices (the seed is printed first: which process is
//! killed, and the pauses between kills; the machine's own timing is not replayed);
//! `RDASK_CHAOS_ROUNDS` changes the number of rounds (20; the first four are one of each kind).
//!
//! This test has its own `main` (`harness = false`): the same binary is also the cluster's
//! program (`chaos cli …`: the CLI, with workers that have the graph's functions) and the
//! graph's client (`chaos client …`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{scheduler_pid, sigkill, status, worker_pids};
use rdask::protocol::JobId;
use rdask::{Client, ClientError, Graph, Job, Registry, TaskHandle};

/// Tasks of the graph: leaves, sums of `GROUP` leaves each, and two sums of half the groups.
const LEAVES: u32 = 19_800;
const GROUP: u32 = 100;
const GROUPS: u32 = LEAVES / GROUP;
/// Command tasks of the array.
const ARRAY: u32 = 5_000;
/// How long a leaf works (it sleeps): the graph lasts a few seconds on two small workers.
const LEAF_SLEEP_US: u64 = 1_000;
/// Bounds on the whole test.
const TIME_LIMIT: Duration = Duration::from_secs(280);
/// How long one pass's jobs may take to end once the kills stop.
const PASS_LIMIT: Duration = Duration::from_secs(150);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("cli") => std::process::exit(cli(&args[2..])),
        Some("client") => std::process::exit(graph_client(&args[2..])),
        _ => {}
    }
    if args.iter().any(|a| a == "--list") {
        println!("chaos: test");
        return;
    }
    // A name filter that is not this test's (`cargo test -- other`) skips it.
    if let Some(filter) = args.iter().skip(1).find(|a| !a.starts_with('-')) {
        if !"chaos".contains(filter.as_str()) {
            return;
        }
    }
    chaos();
}

// ---- the cluster's program: the CLI with the graph's functions --------------------------

/// The graph's functions: a leaf's value from its index, and sums.
fn registry() -> Registry {
    let mut r = Registry::new();
    r.register("leaf", |(i, sleep_us): (u64, u64)| {
        std::thread::sleep(Duration::from_micros(sleep_us));
        leaf_value(i)
    });
    r.register_with_inputs("sum", |(): (), inputs: Vec<u64>| inputs.iter().sum::<u64>());
    r
}

fn leaf_value(i: u64) -> u64 {
    i.wrapping_mul(2_654_435_761) % 1_000_003
}

fn cli(args: &[String]) -> i32 {
    let me = std::env::current_exe().expect("this program's path");
    rdask_jobqueue::embed::set_self_command(me, vec!["cli".into()]);
    rdask_jobqueue::embed::set_worker_registry(registry());
    let argv = std::iter::once("rdask-jobqueue".to_string()).chain(args.iter().cloned());
    rdask_jobqueue::embed::main_with_args(argv)
}

// ---- the graph's client ---------------------------------------------------------------

/// The graph, the same every time it is built: its kept tasks (group sums, then the halves).
fn build_graph() -> (Graph, Vec<TaskHandle>) {
    let mut g = Graph::new();
    let leaves: Vec<TaskHandle> = (0..LEAVES).map(|i| g.call("leaf", &(u64::from(i), LEAF_SLEEP_US))).collect();
    let groups: Vec<TaskHandle> = leaves.chunks(GROUP as usize).map(|c| g.call_with("sum", &(), c)).collect();
    let (a, b) = groups.split_at(groups.len() / 2);
    let halves = [g.call_with("sum", &(), a), g.call_with("sum", &(), b)];
    for h in &groups {
        g.keep(*h);
    }
    g.keep_after_disconnect();
    assert_eq!(g.len(), 20_000);
    (g, groups.into_iter().chain(halves).collect())
}

/// What the kept tasks must hold.
fn expected() -> Vec<u64> {
    let groups: Vec<u64> =
        (0..GROUPS).map(|g| (g * GROUP..(g + 1) * GROUP).map(|i| leaf_value(u64::from(i))).sum()).collect();
    let half = groups.len() / 2;
    let halves = [groups[..half].iter().sum(), groups[half..].iter().sum()];
    groups.into_iter().chain(halves).collect()
}

/// `client HOME DIR`: submits the graph (or, started again, finds its job in `DIR/job`),
/// gathers the kept results through scheduler restarts, checks them, writes `DIR/ok`,
/// releases the job. Exit 0 when the results are right, 1 when they are not or the job is lost.
fn graph_client(args: &[String]) -> i32 {
    let (home, dir) = (PathBuf::from(&args[0]), PathBuf::from(&args[1]));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let deadline = Instant::now() + PASS_LIMIT * 2;
        loop {
            match client_attempt(&home, &dir).await {
                Ok(()) => return 0,
                Err(Transient(e)) if Instant::now() < deadline => {
                    eprintln!("chaos client: {e}; trying again");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(Transient(e) | Fatal(e)) => {
                    eprintln!("chaos client: {e}");
                    return 1;
                }
            }
        }
    })
}

enum Failure {
    /// The scheduler is away (being restarted) or a worker went with a result: try again.
    Transient(String),
    /// The results are wrong or the job is gone.
    Fatal(String),
}
use Failure::{Fatal, Transient};

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        match e {
            ClientError::Unreachable { .. } | ClientError::Disconnected | ClientError::Result { .. } => {
                Transient(e.to_string())
            }
            other => Fatal(other.to_string()),
        }
    }
}

async fn client_attempt(home: &Path, dir: &Path) -> Result<(), Failure> {
    if dir.join("ok").exists() {
        return Ok(());
    }
    let info =
        rdask::cluster::ClusterInfo::from_state_dir(&home.join("default")).map_err(|e| Transient(e.to_string()))?;
    let client = Client::connect(&info).await?;
    let (graph, kept) = build_graph();
    let job_file = dir.join("job");
    let id = match std::fs::read_to_string(&job_file) {
        Ok(t) => JobId(t.trim().parse().map_err(|e| Fatal(format!("{}: {e}", job_file.display())))?),
        Err(_) => {
            let job = client.submit(graph).await?;
            let tmp = dir.join("job.tmp");
            std::fs::write(&tmp, job.id.0.to_string()).expect("write the job's id");
            std::fs::rename(&tmp, &job_file).expect("write the job's id");
            eprintln!("chaos client: submitted job {}", job.id);
            job.id
        }
    };
    let job = Job { id };
    let got: Vec<u64> = client.gather(&job, &kept).await?;
    if got != expected() {
        let wrong = got.iter().zip(expected()).filter(|(a, b)| **a != *b).count();
        return Err(Fatal(format!("job {id}: {wrong} of {} results are wrong", kept.len())));
    }
    std::fs::write(dir.join("ok"), format!("job {id}\n")).expect("write ok");
    client.release(id).await?;
    Ok(())
}

// ---- the test -------------------------------------------------------------------------

/// SplitMix64: a small seeded generator, enough to pick kills and moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `chaos cli ARGS` with its state under `home`, as `common::rdask_command` runs the binary.
fn chaos_cli(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("this program's path"));
    c.env("RDASK_HOME", home).env("RDASK_CONFIG", "/dev/null").env_remove("RDASK_CLUSTER").arg("cli").args(args);
    c
}

fn chaos_ok(home: &Path, args: &[&str]) -> String {
    let o = chaos_cli(home, args).output().expect("runs");
    assert!(o.status.success(), "{args:?} failed: {}", common::text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One pass: the two jobs and the client processes that wait for them.
struct Pass {
    dir: PathBuf,
    array: u32,
    waiter: Child,
    client: Child,
    /// Every client process started, for the final check that none is left.
    pids: Vec<u32>,
}

impl Pass {
    fn start(home: &Path, n: u32) -> Pass {
        let dir = home.join(format!("pass-{n}"));
        std::fs::create_dir_all(dir.join("runs")).unwrap();
        let script = format!("echo done >> {}/%{{TASK_ID}}; exit $((%{{TASK_ID}} % 4))", dir.join("runs").display());
        let said = chaos_ok(home, &["submit", "--array", &format!("1-{ARRAY}"), "--", "sh", "-c", &script]);
        let array: u32 = said
            .split_whitespace()
            .nth(2)
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("`submit` said: {said}"));
        let mut pass = Pass { dir, array, waiter: spawn_placeholder(), client: spawn_placeholder(), pids: vec![] };
        pass.waiter = pass.start_waiter(home);
        pass.client = pass.start_client(home);
        pass
    }

    fn start_waiter(&mut self, home: &Path) -> Child {
        let out = std::fs::File::create(self.dir.join("wait.json")).unwrap();
        let err = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("wait.err")).unwrap();
        let c = chaos_cli(home, &["wait", &self.array.to_string(), "--output", "json"])
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        self.pids.push(c.id());
        c
    }

    fn start_client(&mut self, home: &Path) -> Child {
        let err = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("client.err")).unwrap();
        let c = Command::new(std::env::current_exe().unwrap())
            .arg("client")
            .arg(home)
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        self.pids.push(c.id());
        c
    }

    /// Whether both clients have exited.
    fn done(&mut self) -> bool {
        self.waiter.try_wait().unwrap().is_some() && self.client.try_wait().unwrap().is_some()
    }

    /// Checks every outcome of the pass.
    fn check(mut self) -> Vec<u32> {
        let client = self.client.wait().unwrap();
        let client_err = std::fs::read_to_string(self.dir.join("client.err")).unwrap_or_default();
        assert!(client.success(), "the graph's client failed ({client}):\n{client_err}");
        assert!(self.dir.join("ok").exists(), "the graph's client ended without checking its results");
        let waiter = self.waiter.wait().unwrap();
        let wait_err = std::fs::read_to_string(self.dir.join("wait.err")).unwrap_or_default();
        // Three tasks in four exit non-zero: `wait` says tasks failed (exit code 1).
        assert_eq!(waiter.code(), Some(1), "`wait` for the array: {wait_err}");
        let outcome: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.dir.join("wait.json")).unwrap()).unwrap();
        assert_eq!(outcome["tasks"], ARRAY);
        let mut codes = std::collections::BTreeMap::new();
        for f in outcome["failed"].as_array().unwrap() {
            let index = f[0].as_u64().unwrap() as u32;
            let code = f[1]["kind"]["ExitCode"].as_i64().unwrap_or_else(|| panic!("task {index} failed: {f}"));
            codes.insert(index, code);
        }
        // Exit code 0 is a finished task, any other a failed one with that code.
        let wrong: Vec<(u32, Option<i64>)> = (1..=ARRAY)
            .map(|i| (i, codes.get(&i).copied()))
            .filter(|&(i, code)| code != Some(i64::from(i % 4)).filter(|c| *c != 0))
            .collect();
        assert!(wrong.is_empty(), "array tasks whose recorded exit code is wrong (task, code): {wrong:?}");
        assert_eq!(outcome["finished"], ARRAY / 4);
        let never: Vec<u32> = (1..=ARRAY)
            .filter(|i| {
                std::fs::read_to_string(self.dir.join("runs").join(i.to_string())).map_or(0, |t| t.lines().count()) == 0
            })
            .collect();
        assert!(never.is_empty(), "array tasks that never ran to the end: {never:?}");
        self.pids
    }
}

/// A child that has exited, to hold a place.
fn spawn_placeholder() -> Child {
    let mut c = Command::new("true").spawn().unwrap();
    c.wait().unwrap();
    c
}

fn alive(pid: u32) -> bool {
    rdask_jobqueue::state::process_alive(pid, "")
}

fn wait_dead(pid: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "{what} {pid} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn chaos() {
    let seed: u64 = match std::env::var("RDASK_CHAOS_SEED") {
        Ok(s) => s.parse().expect("RDASK_CHAOS_SEED is a number"),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
    };
    let rounds: u32 = std::env::var("RDASK_CHAOS_ROUNDS").map_or(20, |r| r.parse().expect("a number of rounds"));
    println!("chaos: seed {seed} (RDASK_CHAOS_SEED={seed} replays it), {rounds} rounds");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let home = common::Home::new();
    let h = home.path();
    chaos_ok(h, &["up", "--workers", "2", "--slots", "4"]);
    let mut done = 0u32;
    let mut passes = 0u32;
    let mut clients = Vec::new();
    let mut tally = [0u32; 4];
    let mut first = [0usize, 1, 2, 3];
    for i in (1..first.len()).rev() {
        first.swap(i, rng.below(i as u64 + 1) as usize);
    }
    while done < rounds {
        assert!(started.elapsed() < TIME_LIMIT, "{done} of {rounds} rounds in {TIME_LIMIT:?} (seed {seed})");
        passes += 1;
        let mut pass = Pass::start(h, passes);
        let pass_started = Instant::now();
        loop {
            // A random moment: 0.3 to 2.5 s from the last round.
            let pause = Duration::from_millis(300 + rng.below(2200));
            let until = Instant::now() + pause;
            while Instant::now() < until && !pass.done() {
                std::thread::sleep(Duration::from_millis(50));
            }
            if pass.done() {
                break;
            }
            assert!(pass_started.elapsed() < PASS_LIMIT, "pass {passes} did not end in {PASS_LIMIT:?} (seed {seed})");
            if done >= rounds {
                continue;
            }
            done += 1;
            // The first four rounds are the four kinds of kill in a random order, so that every
            // run has each; then any.
            let what = if done <= 4 { first[done as usize - 1] } else { rng.below(4) as usize };
            tally[what] += 1;
            let t = Instant::now();
            let said = match what {
                0 => {
                    let workers = worker_pids(&status(h));
                    if workers.is_empty() {
                        "no worker to kill".to_string()
                    } else {
                        let pid = workers[rng.below(workers.len() as u64) as usize] as u32;
                        sigkill(pid);
                        wait_dead(pid, "worker");
                        format!("killed worker {pid}")
                    }
                }
                1 => {
                    let pid = scheduler_pid(h);
                    sigkill(pid);
                    wait_dead(pid, "scheduler");
                    let up = chaos_cli(h, &["up"]).output().unwrap();
                    assert!(up.status.success(), "`up` after the scheduler's death: {}", common::text(&up));
                    assert!(common::text(&up).contains("restoring it from its journal"), "{}", common::text(&up));
                    format!("killed the scheduler {pid}; `up` restored it")
                }
                2 | 3 => {
                    let (child, name) =
                        if what == 2 { (&mut pass.client, "the graph's client") } else { (&mut pass.waiter, "`wait`") };
                    let pid = child.id();
                    if child.try_wait().unwrap().is_some() {
                        // It is done with its job: nothing to kill, not a round.
                        done -= 1;
                        tally[what] -= 1;
                        continue;
                    }
                    sigkill(pid);
                    let _ = child.wait();
                    let again = if what == 2 { pass.start_client(h) } else { pass.start_waiter(h) };
                    *if what == 2 { &mut pass.client } else { &mut pass.waiter } = again;
                    format!("killed {name} {pid}; started it again")
                }
                _ => unreachable!("four kinds"),
            };
            println!(
                "chaos: round {done} (pass {passes}, {:.1} s): {said} in {:.1} s",
                started.elapsed().as_secs_f64(),
                t.elapsed().as_secs_f64()
            );
        }
        clients.extend(pass.check());
        println!("chaos: pass {passes} checked after {:.1} s", started.elapsed().as_secs_f64());
    }
    chaos_ok(h, &["down"]);
    common::no_process_left(h);
    let left: Vec<u32> = clients.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "client processes left: {left:?}");
    println!(
        "chaos: {rounds} rounds ({} workers, {} schedulers, {} graph clients, {} waits killed) in {passes} passes, {:.1} s; seed {seed}",
        tally[0],
        tally[1],
        tally[2],
        tally[3],
        started.elapsed().as_secs_f64()
    );
}
