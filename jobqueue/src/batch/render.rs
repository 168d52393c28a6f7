//! The template context, the Tera set-up (filters `shell_quote` and `directives`) and rendering.

use std::collections::{BTreeMap, HashMap};
use std::error::Error as _;
use std::path::Path;

use serde::Serialize;
use tera::{Context, Tera, Value};

use super::units::{parse_memory, parse_walltime};
use super::{JobParams, RenderError, System};

/// The embedded default template of `system`.
pub fn default_template(system: System) -> &'static str {
    system.template()
}

/// A job's memory request, pre-formatted for each batch system that has a format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// Bytes, as parsed (`28GB` → 28000000000).
    pub bytes: u64,
    /// By system name, as its directives want it ([`crate::systems::SystemDef::memory`]):
    /// `slurm` `--mem` (`27G`), `pbs` `mem=` (`27GB`), `lsf` `-M` (`28000000`). Templates see
    /// them as `memory.slurm`, `memory.pbs`, `memory.lsf`.
    #[serde(flatten)]
    pub formats: BTreeMap<&'static str, String>,
}

impl Memory {
    /// `bytes`, formatted by every batch system that has a memory format.
    pub fn new(bytes: u64) -> Memory {
        let formats = System::ALL.iter().filter_map(|s| Some((s.name(), s.memory(bytes)?))).collect();
        Memory { bytes, formats }
    }

    /// The request as `system` writes it, if it has a format.
    pub fn format(&self, system: System) -> Option<&str> {
        self.formats.get(system.name()).map(String::as_str)
    }
}

/// One `environment` entry, `NAME=VALUE` split at the first `=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// What a template sees: [`JobParams`] validated, defaulted and converted for one batch system.
/// Every field is a top-level variable (`{{ cores }}`, `{{ memory.slurm }}`). Filters: `shell_quote` (a string, or
/// a list quoted word by word and joined by spaces) and `directives(skip=list)` (a filter section
/// keeping its non-blank lines, trimmed, that contain none of the `skip` strings).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplateContext {
    /// The batch system's name (`slurm`, `pbs`, `sge`, `lsf`).
    pub system: System,
    /// First line (default `#!/usr/bin/env bash`).
    pub shebang: String,
    /// Job name (default `rdask-worker`).
    pub job_name: String,
    /// CPUs per job (per node).
    pub cores: u32,
    /// Worker processes per job (default 1).
    pub processes: u32,
    /// Slots of each worker: `cores / processes`, rounded down.
    pub slots: u32,
    /// Memory per job (per node); absent when not given.
    pub memory: Option<Memory>,
    /// As the system writes it (default 30 minutes): `HH:MM:SS` (`00:30:00`); LSF `HH:MM`.
    pub walltime: String,
    /// The walltime in seconds.
    pub walltime_seconds: u64,
    pub queue: Option<String>,
    /// Slurm/PBS: `account`, else `project`. SGE/LSF: `project`, else `account`.
    pub account: Option<String>,
    /// The same value as `account` (for SGE and LSF templates).
    pub project: Option<String>,
    pub resource_spec: Option<String>,
    pub job_extra_directives: Vec<String>,
    pub job_directives_skip: Vec<String>,
    /// Non-empty prologue lines.
    pub job_script_prologue: Vec<String>,
    /// Non-empty epilogue lines.
    pub job_script_epilogue: Vec<String>,
    pub environment: Vec<EnvVar>,
    pub log_directory: Option<String>,
    /// Nodes per job (default 1).
    pub nodes: u32,
    /// GPUs per job (per node); 0: none.
    pub gpus: u32,
    /// Jobs in the array; 0: no array.
    pub array: u32,
    /// The full worker argv: the caller's command, then `--slots S --death-timeout T`
    /// (`--local-directory D`) `worker_extra_args…` (`--interface I`), the parenthesised ones if set.
    pub worker_command: Vec<String>,
}

fn no_line_break(key: &'static str, value: &str) -> Result<(), RenderError> {
    match value.contains(['\n', '\r']) {
        true => Err(RenderError::invalid(key, format!("{value:?} contains a line break"))),
        false => Ok(()),
    }
}

impl TemplateContext {
    /// Validates `params` for `system` (the shared checks, then [`crate::systems::SystemDef::validate`]);
    /// `worker_command` is the worker's argv before the arguments
    /// derived from `params` (see [`TemplateContext::worker_command`]).
    pub fn new(system: System, params: &JobParams, worker_command: &[String]) -> Result<Self, RenderError> {
        let p = params;
        let positive = |key, n: u32| if n == 0 { Err(RenderError::invalid(key, "must be at least 1")) } else { Ok(n) };
        let cores = positive("cores", p.cores.ok_or(RenderError::Missing { key: "cores", example: "--cores 8" })?)?;
        let processes = positive("processes", p.processes.unwrap_or(1))?;
        let nodes = positive("nodes", p.nodes.unwrap_or(1))?;
        let slots = cores / processes;
        if processes > cores || slots > u32::from(u16::MAX) {
            let reason = format!("{processes} processes for {cores} cores; each needs 1 to {} cores", u16::MAX);
            return Err(RenderError::invalid("processes", reason));
        }
        if nodes > 1 && processes > 1 {
            return Err(RenderError::invalid("processes", "must be 1 when nodes > 1 (one worker per node)"));
        }
        let (gpus, array) = (p.gpus.unwrap_or(0), p.array.unwrap_or(0));
        let account = system.account(p);
        let memory = p.memory.as_deref().map(parse_memory).transpose()?;
        let memory = memory.map(Memory::new);
        let walltime_seconds = parse_walltime(p.walltime.as_deref().unwrap_or(DEFAULT_WALLTIME))?;
        let shebang = p.shebang.clone().unwrap_or_else(|| "#!/usr/bin/env bash".into());
        let job_name = p.job_name.clone().unwrap_or_else(|| "rdask-worker".into());
        let one_line = [
            ("shebang", Some(&shebang)),
            ("job-name", Some(&job_name)),
            ("queue", p.queue.as_ref()),
            ("account", account.as_ref()),
            ("resource-spec", p.resource_spec.as_ref()),
            ("log-directory", p.log_directory.as_ref()),
        ];
        for (key, value) in
            one_line.into_iter().chain(p.job_extra_directives.iter().map(|d| ("job-extra-directives", Some(d))))
        {
            value.map_or(Ok(()), |v| no_line_break(key, v))?;
        }
        let environment = p.environment.iter().map(|e| parse_env(e)).collect::<Result<Vec<_>, _>>()?;
        let mut argv = worker_command.to_vec();
        if argv.first().is_none_or(|program| program.is_empty()) {
            return Err(RenderError::invalid("worker command", "it is empty"));
        }
        let death_timeout = p.death_timeout.unwrap_or(60).to_string();
        argv.extend(["--slots".into(), slots.to_string(), "--death-timeout".into(), death_timeout]);
        if let Some(dir) = &p.local_directory {
            argv.extend(["--local-directory".into(), dir.clone()]);
        }
        argv.extend(p.worker_extra_args.iter().cloned());
        if let Some(interface) = &p.interface {
            argv.extend(["--interface".into(), interface.clone()]);
        }
        // Workers leave before the walltime ends, so that no task dies with the job (a job
        // running the scheduler itself, `up --scheduler-in-job`, has no worker subcommand).
        if argv.iter().any(|a| a == "worker") {
            let (lifetime, stagger) = worker_lifetime(walltime_seconds);
            argv.extend(["--lifetime".into(), lifetime.to_string(), "--lifetime-stagger".into(), stagger.to_string()]);
        }
        let non_empty = |lines: &[String]| lines.iter().filter(|l| !l.is_empty()).cloned().collect();
        let context = TemplateContext {
            system,
            shebang,
            job_name,
            cores,
            processes,
            slots,
            memory,
            walltime: system.walltime(walltime_seconds),
            walltime_seconds,
            queue: p.queue.clone(),
            project: account.clone(),
            account,
            resource_spec: p.resource_spec.clone(),
            job_extra_directives: p.job_extra_directives.clone(),
            job_directives_skip: p.job_directives_skip.clone(),
            job_script_prologue: non_empty(&p.job_script_prologue),
            job_script_epilogue: non_empty(&p.job_script_epilogue),
            environment,
            log_directory: p.log_directory.clone(),
            nodes,
            gpus,
            array,
            worker_command: argv,
        };
        system.validate(&context)?;
        Ok(context)
    }
}

/// The walltime of a job that sets none (dask-jobqueue's default).
pub const DEFAULT_WALLTIME: &str = "00:30:00";

/// A worker's lifetime and stagger (seconds) in a job of `walltime` seconds: it leaves a grace
/// period (a tenth of the walltime, 10 s to 5 min) before the end, and up to a twentieth of the
/// walltime (at most 5 min) earlier still, at random, so that a pool does not leave at once.
pub fn worker_lifetime(walltime: u64) -> (u64, u64) {
    let grace = (walltime / 10).clamp(10, 300);
    let stagger = (walltime / 20).min(300);
    (walltime.saturating_sub(grace).max(1), stagger)
}

fn parse_env(entry: &str) -> Result<EnvVar, RenderError> {
    let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid || !entry.contains('=') {
        let reason =
            format!("`{entry}` is not NAME=VALUE with NAME made of letters, digits and _, e.g. OMP_NUM_THREADS=1");
        return Err(RenderError::invalid("environment", reason));
    }
    Ok(EnvVar { name: name.into(), value: value.into() })
}

/// Quotes `s` as one POSIX shell word (as Python's `shlex.quote`): left alone when made only of
/// letters, digits and `@%+=:,./-_`, otherwise single-quoted with each `'` written `'"'"'`.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./-_".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r#"'"'"'"#))
}

fn shell_quote_filter(value: &Value, _: &HashMap<String, Value>) -> tera::Result<Value> {
    fn word(v: &Value) -> tera::Result<String> {
        match v {
            Value::String(s) => Ok(shell_quote(s)),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => Err(tera::Error::msg(format!("shell_quote: cannot quote {other}"))),
        }
    }
    match value {
        Value::Array(items) => Ok(Value::String(items.iter().map(word).collect::<tera::Result<Vec<_>>>()?.join(" "))),
        v => word(v).map(Value::String),
    }
}

fn directives_filter(value: &Value, args: &HashMap<String, Value>) -> tera::Result<Value> {
    let text = value.as_str().ok_or_else(|| tera::Error::msg("directives: expects text"))?;
    let skip = args.get("skip").map(|v| serde_json::from_value::<Vec<String>>(v.clone())).transpose();
    let skip = skip.map_err(|_| tera::Error::msg("directives: skip must be a list of strings"))?.unwrap_or_default();
    let lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !skip.iter().any(|s| l.contains(s.as_str())));
    Ok(Value::String(lines.map(|l| format!("{l}\n")).collect()))
}

/// The causes of a Tera error (which hold the line and column), else the error itself.
fn describe(e: &tera::Error) -> String {
    let mut causes = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    if causes.is_empty() {
        e.to_string()
    } else {
        causes.join("\n")
    }
}

fn render_named(
    system: System,
    params: &JobParams,
    worker_command: &[String],
    name: &str,
    template: &str,
) -> Result<String, RenderError> {
    let context = TemplateContext::new(system, params, worker_command)?;
    let mut tera = Tera::default();
    tera.autoescape_on(vec![]);
    tera.register_filter("shell_quote", shell_quote_filter);
    tera.register_filter("directives", directives_filter);
    tera.add_raw_template(name, template)
        .map_err(|e| RenderError::Syntax { name: name.into(), message: describe(&e) })?;
    let render_error = |e: tera::Error| RenderError::Render { name: name.into(), message: describe(&e) };
    let script = tera.render(name, &Context::from_serialize(&context).map_err(render_error)?).map_err(render_error)?;
    if !script.contains(&shell_quote(&context.worker_command[0])) {
        return Err(RenderError::NoWorkerCommand { name: name.into() });
    }
    Ok(script)
}

/// Renders the job script of one job: with `system`'s default template, or with `template`
/// (the text of a replacement template, named `custom <system> template` in errors).
/// `worker_command` is the worker's argv (`[exe, "--name", cluster, "worker", "--scheduler", …]`),
/// to which the arguments derived from `params` are appended.
pub fn render(
    system: System,
    params: &JobParams,
    worker_command: &[String],
    template: Option<&str>,
) -> Result<String, RenderError> {
    let (name, text) = match template {
        None => (format!("templates/{system}.sh.tera"), default_template(system)),
        Some(text) => (format!("custom {system} template"), text),
    };
    render_named(system, params, worker_command, &name, text)
}

/// [`render`] with the template read from `path` (named by its path in errors).
pub fn render_file(
    system: System,
    params: &JobParams,
    worker_command: &[String],
    path: &Path,
) -> Result<String, RenderError> {
    render_named(
        system,
        params,
        worker_command,
        &path.display().to_string(),
        &std::fs::read_to_string(path).map_err(|source| RenderError::Io { path: path.into(), source })?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reads back one word in the two forms [`shell_quote`] writes.
    fn unquote(word: &str) -> Option<String> {
        if let Some(inner) = word.strip_prefix('\'').and_then(|w| w.strip_suffix('\'')) {
            let parts: Vec<&str> = inner.split(r#"'"'"'"#).collect();
            return parts.iter().all(|p| !p.contains('\'')).then(|| parts.join("'"));
        }
        let safe = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c);
        (!word.is_empty() && word.chars().all(safe)).then(|| word.to_string())
    }

    #[test]
    fn workers_leave_a_grace_period_and_a_stagger_before_the_walltime() {
        assert_eq!(worker_lifetime(120), (108, 6), "2 minutes: 10 s grace at least");
        assert_eq!(worker_lifetime(1800), (1620, 90), "30 minutes: a tenth, and up to a twentieth more");
        assert_eq!(worker_lifetime(48 * 3600), (48 * 3600 - 300, 300), "long jobs: 5 minutes each at most");
        assert_eq!(worker_lifetime(5), (1, 0), "a walltime shorter than the grace still gives a lifetime");
    }

    #[test]
    fn shell_quote_examples() {
        assert_eq!(shell_quote("/usr/bin/rdask-jobqueue"), "/usr/bin/rdask-jobqueue");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r#"'it'"'"'s'"#);
        assert_eq!(shell_quote("$TMPDIR"), "'$TMPDIR'");
    }

    proptest! {
        #[test]
        fn shell_quote_is_one_literal_word(s in "\\PC*") {
            prop_assert_eq!(unquote(&shell_quote(&s)), Some(s));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn shell_reads_back_what_was_quoted(s in "[^\\x00]{0,40}") {
            let out = std::process::Command::new("sh").arg("-c").arg(format!("printf %s {}", shell_quote(&s))).output().unwrap();
            prop_assert_eq!(String::from_utf8_lossy(&out.stdout), s);
        }
    }
}
