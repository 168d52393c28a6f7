//! Golden tests of the batch job scripts. `RDASK_BLESS=1 cargo test -p rdask-jobqueue --test golden`
//! rewrites the files in `tests/golden/`; dask-jobqueue's own scripts, which they are compared
//! with, are kept unchanged in `tests/golden/dask-jobqueue/` (see its README).

use std::path::{Path, PathBuf};

use rdask_jobqueue::batch::{render, render_file, JobParams, RenderError, System};
use serde_json::Value;

/// The batch system named `name`.
fn sys(name: &str) -> System {
    name.parse().unwrap()
}

const EXE: &str = "/opt/rdask/bin/rdask-jobqueue";

fn worker() -> Vec<String> {
    let args = ["--name", "dummy-name", "worker", "--scheduler", "tcp://10.0.0.1:8786,tcp://[fd00::1]:8786"];
    let secret = ["--secret-file", "/home/user/.local/state/rdask/dummy-name/secret"];
    std::iter::once(EXE).chain(args).chain(secret).map(String::from).collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Compares `script` with `tests/golden/<name>`, or rewrites it under `RDASK_BLESS=1`.
fn check_golden(name: &str, script: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("RDASK_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, script).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with RDASK_BLESS=1 to create it", path.display()));
    assert_eq!(script, expected, "{} differs; if the change is intended, run with RDASK_BLESS=1", path.display());
}

fn dask_golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/dask-jobqueue")
}

/// The lines before the worker command (shebang, directives, prologue, exports).
fn before_worker<'a>(script: &'a str, worker_marker: &str) -> Vec<&'a str> {
    script.lines().take_while(|l| !l.contains(worker_marker)).collect()
}

#[test]
fn same_directives_as_dask_jobqueue() {
    let dir = dask_golden_dir();
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let mut checked = Vec::new();
    for (case, keywords) in cases["cases"].as_object().unwrap() {
        // dask-jobqueue's class is its system's name in capitals, then `Job`.
        let class = keywords["_class"].as_str().unwrap();
        let Some(system) = class.strip_suffix("Job").and_then(|s| s.parse::<System>().ok()) else { continue };
        // dask-jobqueue's keywords, in kebab-case: the names of our configuration keys.
        let mut params = serde_json::Map::new();
        for (key, value) in keywords.as_object().unwrap() {
            if !key.starts_with('_') && key != "python" && key != "nanny" {
                params.insert(key.replace('_', "-"), value.clone());
            }
        }
        params.entry("job-name").or_insert("dask-worker".into());
        let params: JobParams = serde_json::from_value(Value::Object(params)).unwrap();
        let script = render(system, &params, &worker(), None).unwrap_or_else(|e| panic!("{case}: {e}"));
        let theirs = std::fs::read_to_string(dir.join(format!("{case}.sh"))).unwrap();
        let (ours, theirs_head) = (before_worker(&script, EXE), before_worker(&theirs, "/usr/bin/python3"));
        assert_eq!(ours, theirs_head, "{case}: lines before the worker command differ from dask-jobqueue's");
        assert!(theirs_head.len() >= 5, "{case}: {theirs_head:?}");
        check_golden(&format!("{case}.sh"), &script);
        checked.push(case.clone());
    }
    for case in
        ["slurm-default", "slurm-custom", "pbs-default", "pbs-custom", "sge-default", "sge-custom", "lsf-default"]
    {
        assert!(checked.iter().any(|c| c == case), "case {case} not checked: {checked:?}");
    }
}

fn features(system: System) -> JobParams {
    JobParams {
        cores: Some(16),
        memory: Some("64GiB".into()),
        queue: Some("gpu".into()),
        account: Some("proj42".into()),
        walltime: Some("1-12:00:00".into()),
        log_directory: Some("/scratch/logs".into()),
        gpus: Some(2),
        array: Some(10),
        job_directives_skip: strings(&["-A "]),
        job_script_prologue: strings(&["module load gcc", ""]),
        job_script_epilogue: strings(&["echo done", "date"]),
        environment: strings(&["OMP_NUM_THREADS=1", "GREETING=it's $HOME"]),
        worker_extra_args: strings(&["--lifetime", "55m"]),
        interface: Some("ib0".into()),
        local_directory: Some("/tmp/rdask dir".into()),
        death_timeout: Some(120),
        processes: Some(4),
        ..match system.name() {
            "slurm" => JobParams { job_extra_directives: strings(&["--exclusive"]), ..Default::default() },
            "pbs" => JobParams { job_extra_directives: strings(&["-j oe"]), ..Default::default() },
            "sge" => JobParams {
                resource_spec: Some("h_vmem=4G".into()),
                job_extra_directives: strings(&["-pe smp 16"]),
                ..Default::default()
            },
            "lsf" => JobParams {
                project: Some("proj42".into()),
                job_extra_directives: strings(&["-R \"select[mem>4000]\""]),
                ..Default::default()
            },
            other => panic!("no features case for {other}; add one"),
        }
    }
}

#[test]
fn rdask_scripts() {
    for &system in System::ALL {
        let minimal = JobParams { cores: Some(8), ..Default::default() };
        check_golden(&format!("{system}-rdask-default.sh"), &render(system, &minimal, &worker(), None).unwrap());
        check_golden(&format!("{system}-features.sh"), &render(system, &features(system), &worker(), None).unwrap());
    }
    let multi = JobParams {
        cores: Some(32),
        memory: Some("100GB".into()),
        nodes: Some(4),
        gpus: Some(1),
        walltime: Some("90".into()),
        ..Default::default()
    };
    for system in [sys("slurm"), sys("pbs")] {
        check_golden(&format!("{system}-multinode.sh"), &render(system, &multi, &worker(), None).unwrap());
    }
}

#[test]
fn template_override_from_a_string_and_a_file() {
    let params = JobParams { cores: Some(4), memory: Some("1.5 GB".into()), ..Default::default() };
    let template = "#!/bin/sh\n#X {{ cores }} {{ memory.slurm }} {{ memory.bytes }} {{ walltime }} {{ system }}\n\
                    {{ worker_command | shell_quote }}\n";
    let expected =
        format!(
        "#!/bin/sh\n#X 4 2G 1500000000 00:30:00 pbs\n{} --slots 4 --death-timeout 60 --lifetime 1620 --lifetime-stagger 90\n",
        worker().join(" ")
    )
            .replace("tcp://10.0.0.1:8786,tcp://[fd00::1]:8786", "'tcp://10.0.0.1:8786,tcp://[fd00::1]:8786'");
    assert_eq!(render(sys("pbs"), &params, &worker(), Some(template)).unwrap(), expected);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine.sh.tera");
    std::fs::write(&path, template).unwrap();
    assert_eq!(render_file(sys("pbs"), &params, &worker(), &path).unwrap(), expected);
    let missing = render_file(sys("pbs"), &params, &worker(), &dir.path().join("nope.tera")).unwrap_err();
    assert!(matches!(missing, RenderError::Io { .. }) && missing.to_string().contains("nope.tera"), "{missing}");
}

#[test]
fn template_errors_name_the_template_and_line() {
    let params = JobParams { cores: Some(4), ..Default::default() };
    let bad = "#!/bin/sh\n\n{% if cores %}\n{{ worker_command | shell_quote }} {{ cores | }}\n{% endif %}\n";
    let e = render(sys("slurm"), &params, &worker(), Some(bad)).unwrap_err();
    let message = e.to_string();
    assert!(matches!(e, RenderError::Syntax { .. }), "{e:?}");
    assert!(message.contains("custom slurm template") && message.contains("4:"), "{message}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.sh.tera");
    std::fs::write(&path, bad).unwrap();
    let message = render_file(sys("slurm"), &params, &worker(), &path).unwrap_err().to_string();
    assert!(message.contains(&path.display().to_string()) && message.contains("4:"), "{message}");

    let unknown = "#!/bin/sh\n{{ worker_command | shell_quote }} {{ partition }}\n";
    let e = render(sys("sge"), &params, &worker(), Some(unknown)).unwrap_err();
    assert!(matches!(e, RenderError::Render { .. }) && e.to_string().contains("partition"), "{e}");

    let e = render(sys("sge"), &params, &worker(), Some("#!/bin/sh\necho {{ cores }}\n")).unwrap_err();
    assert!(matches!(e, RenderError::NoWorkerCommand { .. }) && e.to_string().contains("worker_command"), "{e}");
}

#[test]
fn bad_parameters_are_named() {
    let ok = JobParams { cores: Some(8), ..Default::default() };
    let err = |system, params: JobParams| render(system, &params, &worker(), None).unwrap_err().to_string();
    let memory = JobParams { memory: Some("28 gigs".into()), ..ok.clone() };
    assert_eq!(err(sys("slurm"), memory), "unknown unit `gigs` in memory `28 gigs`; use e.g. 28GB or 28GiB");
    let walltime = JobParams { walltime: Some("2h".into()), ..ok.clone() };
    assert!(err(sys("pbs"), walltime).contains("invalid walltime `2h`"));
    assert_eq!(err(sys("slurm"), JobParams::default()), "`cores` is required, e.g. --cores 8");
    assert!(err(sys("sge"), JobParams { nodes: Some(2), ..ok.clone() }).contains("not supported on sge"));
    assert!(err(sys("slurm"), JobParams { resource_spec: Some("x".into()), ..ok.clone() }).contains("resource-spec"));
    assert!(err(sys("slurm"), JobParams { environment: strings(&["1X=2"]), ..ok.clone() }).contains("`1X=2`"));
    assert!(err(sys("slurm"), JobParams { processes: Some(9), ..ok.clone() }).contains("9 processes for 8 cores"));
    assert!(err(sys("slurm"), JobParams { queue: Some("a\nb".into()), ..ok.clone() }).contains("line break"));
    assert!(render(sys("slurm"), &ok, &[], None).unwrap_err().to_string().contains("worker command"));
    assert!(err(sys("lsf"), JobParams { nodes: Some(2), ..ok.clone() }).contains("nodes > 1 is not supported on lsf"));
    assert!(err(sys("lsf"), JobParams { resource_spec: Some("x".into()), ..ok.clone() }).contains("resource-spec"));
    let unknown = "htcondor".parse::<System>().unwrap_err().to_string();
    let every: Vec<&str> = System::names().collect();
    assert_eq!(unknown, format!("unknown batch system `htcondor`; expected one of {}", every.join(", ")));
    assert_eq!(unknown, "unknown batch system `htcondor`; expected one of slurm, pbs, sge, lsf");
    assert_eq!("SLURM".parse::<System>().unwrap(), sys("slurm"));
    assert_eq!("lsf".parse::<System>().unwrap().name(), "lsf", "LSF is known");
}

/// Runs a rendered script with bash: the worker is a stand-in at a path with a space and a `'`,
/// recording its argv and environment, so the quoting is checked by a real shell.
#[test]
fn worker_path_with_space_and_quote_runs() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("my apps/it's");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("rdask-jobqueue");
    let out = dir.path().join("out");
    let record = format!("#!/bin/sh\nprintf '%s|' \"$GREETING\" \"$@\" > '{}'/$$\n", out.display());
    std::fs::write(&exe, record).unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut argv = vec![exe.display().to_string(), "worker".into(), "--scheduler".into(), "tcp://h:1;x".into()];
    argv.push("$(touch pwned) `id` \"quoted\" *".into());
    let params = JobParams {
        cores: Some(4),
        processes: Some(2),
        environment: strings(&["GREETING=it's $HOME \"x\""]),
        worker_extra_args: strings(&["--extra", "a b"]),
        ..Default::default()
    };
    for &system in System::ALL {
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir(&out).unwrap();
        let script = render(system, &params, &argv, None).unwrap();
        assert!(script.contains(r#"/my apps/it'"'"'s/rdask-jobqueue' worker"#), "{script}");
        let status =
            std::process::Command::new("bash").arg("-c").arg(&script).current_dir(dir.path()).status().unwrap();
        assert!(status.success());
        let expected = "it's $HOME \"x\"|worker|--scheduler|tcp://h:1;x|$(touch pwned) `id` \"quoted\" *|--slots|2|\
                        --death-timeout|60|--extra|a b|--lifetime|1620|--lifetime-stagger|90|";
        let runs: Vec<String> =
            std::fs::read_dir(&out).unwrap().map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap()).collect();
        assert_eq!(runs, [expected, expected], "{system}");
        assert!(!dir.path().join("pwned").exists());
    }
}
