//! Configuration files and RDASK_<OPTION> variables, through the real binary: each test has its
//! own home, user configuration directory, project directory and environment.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A sandbox: `home` (also RDASK_HOME's parent), `xdg` (XDG_CONFIG_HOME), `project` (holding
/// `rdask.toml`) and `cwd`, a directory below the project's that the commands run in.
struct Sandbox {
    _dir: tempfile::TempDir,
    home: PathBuf,
    xdg: PathBuf,
    project: PathBuf,
    cwd: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (home, xdg, project) = (root.join("home"), root.join("xdg"), root.join("project"));
        let cwd = project.join("sub").join("dir");
        for d in [&home, &xdg, &cwd] {
            std::fs::create_dir_all(d).unwrap();
        }
        Sandbox { _dir: dir, home, xdg, project, cwd }
    }

    fn user_file(&self) -> PathBuf {
        self.xdg.join("rdask/jobqueue.toml")
    }

    fn project_file(&self) -> PathBuf {
        self.project.join("rdask.toml")
    }

    fn write(&self, path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Runs the binary with a clean environment, plus `env`.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rdask-jobqueue"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", &self.xdg)
            .env("RDASK_HOME", self.home.join(".rdask"))
            .current_dir(&self.cwd)
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("rdask-jobqueue runs")
    }

    fn ok(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let o = self.run(args, env);
        assert!(o.status.success(), "{args:?} failed: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs a command that must fail as a bad configuration does (exit code 2); returns its stderr.
    fn fails(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let o = self.run(args, env);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    fn show(&self, args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
        let mut all = vec!["config", "show", "--output", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all, env)).unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn command_line_beats_env_beats_project_file_beats_user_file_beats_default() {
    let s = Sandbox::new();
    s.write(&s.user_file(), "cores = 1\nmemory = \"1GB\"\nqueue = \"user\"\nwalltime = \"01:00:00\"\n");
    s.write(&s.project_file(), "cores = 2\nmemory = \"2GB\"\nqueue = \"project\"\n");
    let env = [("RDASK_CORES", "3"), ("RDASK_MEMORY", "3GB")];
    let v = s.show(&["--cores", "4"], &env);
    let user = s.user_file().display().to_string();
    let project = s.project_file().display().to_string();
    assert_eq!(v["cores"], serde_json::json!({"value": 4, "source": "command line"}), "{v:#}");
    assert_eq!(v["memory"], serde_json::json!({"value": "3GB", "source": "env RDASK_MEMORY"}), "{v:#}");
    assert_eq!(v["queue"], serde_json::json!({"value": "project", "source": project}), "{v:#}");
    assert_eq!(v["walltime"], serde_json::json!({"value": "01:00:00", "source": user}), "{v:#}");
    assert_eq!(v["workers"], serde_json::json!({"value": 2, "source": "default"}), "{v:#}");
    assert_eq!(v["backend"], serde_json::json!({"value": "local", "source": "default"}), "{v:#}");
    assert!(v.get("account").is_none(), "a key without a value is not shown: {v:#}");
    // Without the command line and the environment, the files show through.
    let v = s.show(&[], &[]);
    assert_eq!(v["cores"]["value"], 2);
    assert_eq!(v["memory"]["source"], project.as_str());
    // The text form has the same rows.
    let t = s.ok(&["config", "show"], &env);
    assert!(t.lines().any(|l| l.starts_with("memory ") && l.contains("3GB") && l.ends_with("env RDASK_MEMORY")), "{t}");
    let p = s.ok(&["config", "path"], &env);
    assert!(p.contains(&user) && p.contains(&project) && p.contains("RDASK_CORES, RDASK_MEMORY"), "{p}");
}

#[test]
fn job_script_takes_its_options_from_the_project_file() {
    let s = Sandbox::new();
    s.write(
        &s.project_file(),
        "cores = 8\nmemory = \"28GB\"\njob-extra-directives = [\"--exclusive\", \"-C gpu\"]\n\
         [slurm]\nqueue = \"regular\"\n[pbs]\nqueue = \"workq\"\n",
    );
    let script = s.ok(&["job-script", "--backend", "slurm"], &[]);
    for line in ["#SBATCH -p regular", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=27G", "#SBATCH --exclusive"] {
        assert!(script.lines().any(|l| l == line), "no `{line}` in:\n{script}");
    }
    assert!(script.lines().any(|l| l == "#SBATCH -C gpu"), "{script}");
    assert!(script.contains("--slots 8"), "{script}");
    // The backend's table applies to its backend only; the command line replaces a list.
    let script = s.ok(&["job-script", "--backend", "pbs", "--job-extra-directives", "-V"], &[]);
    assert!(script.lines().any(|l| l == "#PBS -q workq"), "{script}");
    assert!(script.lines().any(|l| l == "#PBS -V"), "{script}");
    assert!(!script.contains("--exclusive") && !script.contains("regular"), "{script}");
    // The backend itself can come from the file.
    s.write(&s.project_file(), "backend = \"sge\"\ncores = 4\nqueue = \"all.q\"\n");
    let script = s.ok(&["job-script"], &[]);
    assert!(script.lines().any(|l| l == "#$ -q all.q"), "{script}");
}

#[test]
fn an_unknown_key_names_the_file_and_the_closest_key() {
    let s = Sandbox::new();
    s.write(&s.project_file(), "coers = 8\n");
    let err = s.fails(&["job-script", "--backend", "slurm"], &[]);
    let want = format!("error: unknown key `coers` in {}; did you mean `cores`?", s.project_file().display());
    assert_eq!(err.trim_end(), want);
    assert_eq!(s.fails(&["up", "--dry-run"], &[]).trim_end(), want);
    // Commands that take no options from the configuration do not read it.
    let o = s.run(&["config", "path"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    s.write(&s.project_file(), "[slurm]\nmemroy = \"1GB\"\n");
    let err = s.fails(&["config", "show"], &[]);
    assert!(err.contains("unknown key `memroy`") && err.contains("[slurm]; did you mean `memory`?"), "{err}");
}

#[test]
fn a_value_of_the_wrong_type_names_the_key_the_file_and_the_expected_type() {
    let s = Sandbox::new();
    s.write(&s.user_file(), "cores = \"eight\"\n");
    let err = s.fails(&["config", "show"], &[]);
    let file = s.user_file().display().to_string();
    assert!(err.contains(&format!("wrong type for `cores` in {file}: expected an integer")), "{err}");
    s.write(&s.user_file(), "job-extra-directives = [\"--exclusive\", { a = 1 }]\n");
    let err = s.fails(&["config", "show"], &[]);
    assert!(err.contains("`job-extra-directives`") && err.contains("expected an array of strings"), "{err}");
    s.write(&s.user_file(), "slots = 0\n");
    let err = s.fails(&["config", "show"], &[]);
    assert!(err.contains(&format!("invalid value `0` for `slots` in {file}")), "{err}");
    s.write(&s.user_file(), "");
    let err = s.fails(&["config", "show"], &[("RDASK_WORKERS", "two")]);
    assert!(err.contains("invalid value `two` for `workers` in env RDASK_WORKERS"), "{err}");
}

#[test]
fn a_toml_syntax_error_names_the_file_line_and_column() {
    let s = Sandbox::new();
    s.write(&s.project_file(), "cores = 8\nmemory = \"28GB\nqueue = \"x\"\n");
    let err = s.fails(&["job-script", "--backend", "slurm"], &[]);
    assert!(err.contains(&format!("invalid TOML in {}", s.project_file().display())), "{err}");
    assert!(err.contains("line 2, column"), "{err}");
}

#[test]
fn config_flag_and_variable_replace_both_files() {
    let s = Sandbox::new();
    s.write(&s.user_file(), "cores = 1\nqueue = \"user\"\n");
    s.write(&s.project_file(), "cores = 2\naccount = \"project\"\n");
    let other = s.home.join("other.toml");
    s.write(&other, "cores = 5\n");
    let v = s.show(&["--config", other.to_str().unwrap()], &[]);
    assert_eq!(v["cores"], serde_json::json!({"value": 5, "source": other.display().to_string()}));
    assert!(v.get("queue").is_none() && v.get("account").is_none(), "{v:#}");
    let v = s.show(&[], &[("RDASK_CONFIG", other.to_str().unwrap())]);
    assert_eq!(v["cores"]["value"], 5);
    assert!(v.get("queue").is_none(), "{v:#}");
    let p = s.ok(&["--config", other.to_str().unwrap(), "config", "path"], &[]);
    assert!(p.contains(&other.display().to_string()) && p.contains("not read"), "{p}");
    // A named file must exist.
    let err = s.fails(&["job-script", "--backend", "slurm", "--config", "/nonexistent/x.toml"], &[]);
    assert!(err.contains("/nonexistent/x.toml does not exist"), "{err}");
}

#[test]
fn list_options_from_the_environment() {
    let s = Sandbox::new();
    s.write(&s.project_file(), "cores = 4\njob-extra-directives = [\"--from-file\"]\n");
    let env = [("RDASK_JOB_EXTRA_DIRECTIVES", "[\"--exclusive\", \"--constraint=a b\"]"), ("RDASK_QUEUE", "")];
    let v = s.show(&[], &env);
    assert_eq!(
        v["job-extra-directives"],
        serde_json::json!({"value": ["--exclusive", "--constraint=a b"], "source": "env RDASK_JOB_EXTRA_DIRECTIVES"})
    );
    assert!(v.get("queue").is_none(), "an empty variable is unset: {v:#}");
    let script = s.ok(&["job-script", "--backend", "slurm"], &env);
    assert!(script.lines().any(|l| l == "#SBATCH --constraint=a b"), "{script}");
    assert!(!script.contains("--from-file"), "{script}");
    // One item per line.
    let env = [("RDASK_JOB_SCRIPT_PROLOGUE", "module load a; module load b\nexport X=1")];
    let script = s.ok(&["job-script", "--backend", "slurm"], &env);
    assert!(script.lines().any(|l| l == "module load a; module load b"), "{script}");
    assert!(script.lines().any(|l| l == "export X=1"), "{script}");
}

#[test]
fn up_hands_the_merged_configuration_to_the_background_scheduler() {
    let s = Sandbox::new();
    s.write(&s.project_file(), "workers = 1\nslots = 3\nheartbeat-ms = 200\n");
    let out = s.ok(&["up"], &[]);
    let down = || s.ok(&["down"], &[]);
    if !out.contains("1 workers, 3 slots") {
        down();
        panic!("{out}");
    }
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.home.join(".rdask/default/spec.json")).unwrap()).unwrap();
    down();
    assert_eq!(written["version"], 1, "{written:#}");
    assert_eq!(written["workers"]["slots"], 3, "{written:#}");
    assert_eq!(written["scheduler"]["heartbeat-ms"], 200, "{written:#}");
}

#[test]
fn pools_from_the_command_line_and_the_project_file_are_parsed_as_the_flags_are() {
    let s = Sandbox::new();
    let flags =
        s.ok(&["up", "--dry-run", "--backend", "slurm", "--nodes", "2", "--account", "12345", "--walltime", "90"], &[]);
    let pooled =
        s.ok(&["up", "--dry-run", "--backend", "slurm", "--pool", "gpu nodes=2 account=12345 walltime=90"], &[]);
    let script = |out: &str, pool: &str| {
        let start = out.find(&format!("--- pool `{pool}`")).unwrap_or_else(|| panic!("no pool `{pool}` in:\n{out}"));
        let rest = &out[start..];
        let end = rest[1..].find("--- pool").map_or(rest.len(), |e| e + 1);
        rest[..end].replace("rdask-gpu", "rdask-worker").replacen(&format!("`{pool}`"), "`default`", 1)
    };
    assert!(pooled.contains("--- pool `gpu`: 2 job(s)"), "{pooled}");
    assert!(script(&pooled, "gpu").lines().any(|l| l == "#SBATCH -A 12345"), "{pooled}");
    assert_eq!(script(&pooled, "gpu"), script(&flags, "default"));
    // A file's pools (a list, like any repeatable option) take the same path.
    s.write(&s.project_file(), "backend = \"slurm\"\npool = [\"gpu nodes=2 account=12345 walltime=90\"]\n");
    assert_eq!(s.ok(&["up", "--dry-run"], &[]), pooled);
    s.write(&s.project_file(), "[slurm]\npool = [\"gpu acount=12345\"]\n");
    let err = s.fails(&["up", "--dry-run", "--backend", "slurm"], &[]);
    assert!(err.contains("--pool gpu: unknown key \"acount\"; did you mean \"account\"? Valid keys: nodes,"), "{err}");
    let shown = s.ok(&["config", "show", "--backend", "slurm"], &[]);
    assert!(shown.lines().any(|l| l.starts_with("pool ") && l.contains("gpu acount=12345")), "{shown}");
}

#[test]
fn adaptive_scaling_can_be_configured_in_the_project_file() {
    let s = Sandbox::new();
    s.write(&s.project_file(), "adapt-max = 2\ntarget-duration = 30.0\n");
    let shown = s.ok(&["config", "show"], &[]);
    assert!(shown.contains("adapt-max") && shown.contains("rdask.toml"), "{shown}");
    let out = s.ok(&["up"], &[]);
    let first = s.ok(&["status"], &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        let status = s.ok(&["status"], &[]);
        if status.contains("target") || std::time::Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    s.ok(&["down"], &[]);
    assert!(out.contains("0 workers"), "an adaptive cluster starts at --adapt-min: {out}");
    assert!(first.contains("adaptive: 0..2"), "{first}");
    assert!(status.contains("adaptive: 0..2 local workers, target 0"), "{status}");
    assert!(status.contains("within 30 s"), "target-duration from the file: {status}");
    let out = s.ok(&["up"], &[("RDASK_ADAPT_MIN", "1")]);
    s.ok(&["down"], &[]);
    assert!(out.contains("1 workers"), "RDASK_ADAPT_MIN=1: {out}");
    let o = s.run(&["up"], &[("RDASK_ADAPT_MIN", "3")]);
    assert!(!o.status.success() && text(&o).contains("--adapt-min 3 is above --adapt-max 2"), "{}", text(&o));
}
