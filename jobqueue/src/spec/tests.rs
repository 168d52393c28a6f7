//! Tests of the cluster spec: `--pool` items against the flags, errors, the JSON form.

use clap::Parser;
use proptest::prelude::*;

use super::*;
use crate::cli::{Cli, Cmd};

fn state() -> StateDir {
    StateDir { name: "c".into(), path: "/home/u/.rdask/c".into() }
}

/// The spec of `job-script ARGS`, as the command line alone makes it.
fn spec(args: &[&str]) -> Result<ClusterSpec, SpecError> {
    let cli = Cli::try_parse_from(["rdask-jobqueue", "job-script"].iter().chain(args)).expect("valid arguments");
    let Cmd::JobScript(a) = cli.command else { unreachable!("job-script parses as JobScript") };
    ClusterSpec::resolve(&a, &state())
}

fn err(args: &[&str]) -> String {
    spec(args).unwrap_err().to_string()
}

/// `p`, named and job-named as the main pool.
fn as_main(p: &PoolSpec) -> PoolSpec {
    let mut p = p.clone();
    p.name = DEFAULT_POOL.into();
    p.params.job_name = None;
    p
}

#[test]
fn a_pool_item_means_what_the_same_flags_mean() {
    let flags = spec(&["--backend", "slurm", "--nodes", "2", "--account", "12345", "--walltime", "90"]).unwrap();
    let pooled = spec(&["--backend", "slurm", "--pool", "gpu nodes=2 account=12345 walltime=90"]).unwrap();
    assert_eq!(pooled.pools.len(), 2);
    let gpu = pooled.pool("gpu").unwrap();
    assert_eq!(gpu.params.account.as_deref(), Some("12345"), "all digits stay a string");
    assert_eq!(gpu.params.walltime.as_deref(), Some("90"));
    assert_eq!(gpu.params.job_name.as_deref(), Some("rdask-gpu"));
    assert_eq!(as_main(gpu), flags.pools[0]);
    let all = "gpu nodes=2 queue=gpu gpus=1 cores=4 memory=16GB nodes-per-job=2 env=A=1";
    let gpu = spec(&["--backend", "slurm", "--pool", all]).unwrap().pools[1].clone();
    assert_eq!((gpu.nodes, gpu.params.gpus, gpu.params.cores, gpu.params.nodes), (2, Some(1), Some(4), Some(2)));
    assert_eq!((gpu.params.queue.as_deref(), gpu.params.memory.as_deref()), (Some("gpu"), Some("16GB")));
    assert_eq!(gpu.params.environment, ["A=1"]);
    assert_eq!(gpu.jobs(), 1);
}

#[test]
fn a_pool_has_the_main_options_except_the_keys_it_gives() {
    let s = spec(&[
        "--backend",
        "pbs",
        "--nodes",
        "4",
        "--queue",
        "main",
        "--cores",
        "8",
        "--job-extra-directives",
        "-V",
        "--slots",
        "2",
        "--death-timeout",
        "30",
        "--pool",
        "big queue=big job-extra-directives=-a job-extra-directives=-b",
        "--pool",
        "small",
    ])
    .unwrap();
    let (main, big, small) = (&s.pools[0], &s.pools[1], &s.pools[2]);
    assert_eq!((main.nodes, big.nodes, small.nodes), (4, 1, 1), "a pool has 1 node unless it says");
    assert_eq!(big.params.queue.as_deref(), Some("big"));
    assert_eq!(small.params.queue.as_deref(), Some("main"));
    assert_eq!(big.params.cores, Some(8));
    assert_eq!(big.params.job_extra_directives, ["-a", "-b"], "a list key replaces the list");
    assert_eq!(small.params.job_extra_directives, ["-V"]);
    assert_eq!(small.params.death_timeout, Some(30));
    assert_eq!(small.params.log_directory.as_deref(), Some("/home/u/.rdask/c/logs"));
    let s = spec(&["--backend", "pbs", "--slots", "3", "--pool", "p"]).unwrap();
    assert_eq!(s.pools[1].params.cores, Some(3), "cores default to --slots, as the main pool's");
}

#[test]
fn quoted_values_keep_their_spaces() {
    let s = spec(&[
        "--backend",
        "slurm",
        "--pool",
        "gpu job-extra-directives='--exclusive --x' job-script-prologue=\"module load cuda\" job-name=g",
    ])
    .unwrap();
    let gpu = &s.pools[1];
    assert_eq!(gpu.params.job_extra_directives, ["--exclusive --x"]);
    assert_eq!(gpu.params.job_script_prologue, ["module load cuda"]);
    assert_eq!(gpu.params.job_name.as_deref(), Some("g"));
}

#[test]
fn pool_errors_name_the_pool_and_the_key_and_say_what_to_do() {
    let e = err(&["--backend", "slurm", "--pool", "gpu acount=12345"]);
    assert!(e.starts_with("--pool gpu: unknown key \"acount\"; did you mean \"account\"? Valid keys: nodes, "), "{e}");
    assert!(e.contains("walltime") && e.contains("nodes-per-job") && e.contains("job-extra-directives"), "{e}");
    let e = err(&["--backend", "slurm", "--pool", "gpu nodes=two"]);
    assert_eq!(e, "--pool gpu: invalid value \"two\" for \"nodes\": invalid digit found in string");
    let e = err(&["--backend", "slurm", "--pool", "gpu cores=-1"]);
    assert!(e.starts_with("--pool gpu: invalid value \"-1\" for \"cores\""), "{e}");
    let e = err(&["--backend", "slurm", "--pool", "gpu queue"]);
    assert_eq!(e, "--pool gpu: `queue` is not KEY=VALUE (e.g. queue=gpu)");
    let e = err(&["--backend", "slurm", "--pool", "gpu queue=a queue=b"]);
    assert!(e.starts_with("--pool gpu: \"queue\" is given twice"), "{e}");
    let e = err(&["--backend", "slurm", "--pool", "gpu job-extra-directives='--x"]);
    assert!(e.contains("unclosed quote"), "{e}");
    let e = err(&["--backend", "slurm", "--pool", "queue=gpu"]);
    assert!(e.contains("must start with a name"), "{e}");
    let e = err(&["--backend", "slurm", "--pool", ""]);
    assert!(e.contains("must start with a name"), "{e}");
    let e = err(&["--backend", "slurm", "--pool", "a", "--pool", "a cores=2"]);
    assert!(e.starts_with("two pools are named `a`"), "{e}");
    let e = err(&["--backend", "slurm", "--pool", "default"]);
    assert!(e.starts_with("two pools are named `default`"), "{e}");
    let e = err(&["--backend", "slurm", "--pool", "gpu help=1"]);
    assert!(e.starts_with("--pool gpu: unknown key \"help\""), "{e}");
}

#[test]
fn the_spec_says_what_the_scheduler_options_mean() {
    let s = spec(&["--workers", "3", "--adapt-max", "4", "--adapt-min", "1", "--target-duration", "9"]).unwrap();
    assert_eq!(s.backend, Backend::Local);
    assert_eq!(s.commands, None);
    assert_eq!(s.adapt, Some(AdaptSettings { min: 1, max: 4, target_duration: 9.0 }));
    assert_eq!(s.initial_local_workers(), 1);
    let s = spec(&["--backend", "sge", "--status-command", "/x/qstat", "--job-array", "--nodes", "3"]).unwrap();
    assert_eq!(s.backend, Backend::Batch(crate::systems::sge::SYSTEM));
    let c = s.commands.clone().unwrap();
    assert_eq!((c.submit.to_str(), c.status.to_str()), (Some("qsub"), Some("/x/qstat")));
    assert_eq!(s.main_pool().params.array, Some(3));
    assert_eq!(err(&["--adapt-min", "2"]), "--adapt-min 2 needs --adapt-max (the most jobs to adapt up to)");
    assert_eq!(
        err(&["--adapt-min", "3", "--adapt-max", "2"]),
        "--adapt-min 3 is above --adapt-max 2; lower one of them"
    );
    assert_eq!(err(&["--adapt-max", "0"]), "--adapt-max must be at least 1");
}

#[test]
fn the_json_form_round_trips_and_names_its_version() {
    let s = spec(&["--backend", "slurm", "--pool", "gpu gpus=1", "--interface", "lo"]).unwrap();
    let text = s.to_json();
    assert_eq!(ClusterSpec::from_json(&text).unwrap(), s);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["backend"], "slurm");
    assert_eq!(v["pools"][1]["name"], "gpu");
    let other = text.replacen("\"version\": 1", "\"version\": 2", 1);
    let e = ClusterSpec::from_json(&other).unwrap_err().to_string();
    assert!(e.starts_with("cluster spec version 2 is not supported: this rdask-jobqueue reads version 1"), "{e}");
    let e = ClusterSpec::from_json(&text.replacen("\"version\": 1,", "", 1)).unwrap_err().to_string();
    assert!(e.contains("no `version`"), "{e}");
    let e = ClusterSpec::from_json(&text.replacen("\"version\": 1,", "\"version\": 1, \"colour\": 3,", 1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `colour`"), "{e}");
    let e = ClusterSpec::from_json(&text.replacen("\"slurm\"", "\"lsff\"", 1)).unwrap_err().to_string();
    assert!(e.contains("unknown batch system `lsff`"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(SPEC_FILE);
    s.save(&path).unwrap();
    assert_eq!(ClusterSpec::load(&path).unwrap(), s);
    assert!(!path.with_extension("json.tmp").exists());
    std::fs::write(&path, "{\"version\": 1}").unwrap();
    let e = ClusterSpec::load(&path).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{} is not a cluster spec: missing field", path.display())), "{e}");
}

/// Values of the pool keys, as a user would write them.
#[derive(Debug, Clone)]
struct Values {
    nodes: Option<u32>,
    ints: Vec<(&'static str, u32)>,
    strings: Vec<(&'static str, String)>,
    lists: Vec<(&'static str, Vec<String>)>,
}

fn values() -> impl Strategy<Value = Values> {
    let word = || "[0-9]{1,6}|[a-z][a-z0-9_.-]{0,8}";
    let walltime = prop_oneof!["[0-9]{1,4}", "[0-9]{2}:[0-5][0-9]:[0-5][0-9]", "[0-9]-[0-9]{2}:[0-5][0-9]:[0-5][0-9]"];
    let memory = "[1-9][0-9]{0,3}(MB|GB|GiB| GB)";
    let item = "-{0,2}[a-zA-Z0-9=:,]{1,6}( [a-z0-9'\"$]{1,5}){0,2}";
    let strings = (
        proptest::option::of(word()),
        proptest::option::of(word()),
        proptest::option::of(word()),
        proptest::option::of(walltime),
        proptest::option::of(memory),
        proptest::option::of(word()),
        proptest::option::of("/[a-z]{1,5}/[a-z$]{1,5}"),
        proptest::option::of("/[a-z]{1,5}/[a-z]{1,5}"),
        proptest::option::of("#!/bin/(ba)?sh( -l)?"),
        proptest::option::of("select=[1-9]:ncpus=[1-9]{1,2}"),
    );
    let ints = proptest::collection::vec((0..4usize, 1..100u32), 0..4);
    let lists = proptest::collection::vec((0..6usize, proptest::collection::vec(item, 1..3)), 0..3);
    (proptest::option::of(0..50u32), strings, ints, lists).prop_map(|(nodes, s, ints, lists)| {
        let named = [
            ("account", s.0),
            ("queue", s.1),
            ("project", s.2),
            ("walltime", s.3),
            ("memory", s.4),
            ("job-name", s.5),
            ("local-directory", s.6),
            ("log-directory", s.7),
            ("shebang", s.8),
            ("resource-spec", s.9),
        ];
        let int_keys = ["cores", "processes", "gpus", "nodes-per-job"];
        let list_keys = [
            "job-extra-directives",
            "job-directives-skip",
            "job-script-prologue",
            "job-script-epilogue",
            "worker-extra-args",
            "env",
        ];
        let mut v = Values { nodes, ints: Vec::new(), strings: Vec::new(), lists: Vec::new() };
        v.strings = named.into_iter().filter_map(|(k, x)| x.map(|x| (k, x))).collect();
        for (i, n) in ints {
            if !v.ints.iter().any(|(k, _)| *k == int_keys[i]) {
                v.ints.push((int_keys[i], n));
            }
        }
        for (i, items) in lists {
            if !v.lists.iter().any(|(k, _)| *k == list_keys[i]) {
                v.lists.push((list_keys[i], items));
            }
        }
        v
    })
}

impl Values {
    /// (key, value) pairs, lists one pair per item.
    fn pairs(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self.nodes.map(|n| ("nodes".into(), n.to_string())).into_iter().collect();
        out.extend(self.ints.iter().map(|(k, n)| (k.to_string(), n.to_string())));
        out.extend(self.strings.iter().map(|(k, s)| (k.to_string(), s.clone())));
        for (k, items) in &self.lists {
            out.extend(items.iter().map(|i| (k.to_string(), i.clone())));
        }
        out
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn any_flag_value_round_trips_through_a_pool_item(v in values()) {
        let mut flags: Vec<String> = vec!["--backend".into(), "slurm".into()];
        let mut item = vec!["p".to_string()];
        for (k, value) in v.pairs() {
            // As a user would type it: `--key value`, or `--key=value` for a value like an option.
            if value.starts_with('-') {
                flags.push(format!("--{k}={value}"));
            } else {
                flags.push(format!("--{k}"));
                flags.push(value.clone());
            }
            item.push(shlex::try_quote(&format!("{k}={value}")).unwrap().into_owned());
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let main = spec(&flags).unwrap().pools[0].clone();
        let item = item.join(" ");
        let pooled = spec(&["--backend", "slurm", "--pool", &item]).unwrap();
        prop_assert_eq!(pooled.pools.len(), 2);
        let mut want = main.clone();
        want.name = "p".into();
        if want.params.job_name.is_none() {
            want.params.job_name = Some("rdask-p".into());
        }
        prop_assert_eq!(&pooled.pools[1], &want, "item {}", item);
    }
}

#[test]
fn the_pool_keys_are_the_long_options_of_a_pool() {
    // Every one is generated by the property test above: a new key belongs there too.
    let mut keys = pool_keys();
    keys.sort();
    let mut want = [
        "nodes",
        "cores",
        "processes",
        "gpus",
        "nodes-per-job",
        "account",
        "queue",
        "project",
        "walltime",
        "memory",
        "job-name",
        "local-directory",
        "log-directory",
        "shebang",
        "resource-spec",
        "job-extra-directives",
        "job-directives-skip",
        "job-script-prologue",
        "job-script-epilogue",
        "worker-extra-args",
        "env",
    ];
    want.sort();
    assert_eq!(keys, want);
}

#[test]
fn planned_workers_count_what_the_scheduler_must_hold_connections_for() {
    assert_eq!(spec(&["--workers", "500"]).unwrap().planned_workers(), 500);
    // Adapting locally: up to --adapt-max workers, even when starting with fewer.
    assert_eq!(spec(&["--workers", "3", "--adapt-max", "40"]).unwrap().planned_workers(), 40);
    // Batch: every job's workers (nodes x processes), or --adapt-max jobs of that shape.
    let s = spec(&["--backend", "slurm", "--nodes", "4", "--processes", "8", "--cores", "8"]).unwrap();
    assert_eq!(s.planned_workers(), 32);
    let s = spec(&["--backend", "slurm", "--nodes", "1", "--processes", "8", "--cores", "8", "--adapt-max", "10"]);
    assert_eq!(s.unwrap().planned_workers(), 80);
}
