//! Configuration: TOML files and environment variables for the options of `up`, `scheduler`
//! and `job-script`, and `rdask-jobqueue config`.
//!
//! Sources, highest precedence first:
//!
//! 1. the command line;
//! 2. environment variables `RDASK_<KEY>` (`RDASK_CORES`, `RDASK_JOB_EXTRA_DIRECTIVES`, …);
//! 3. the project file `rdask.toml`, in the current directory or the nearest one above it;
//! 4. the user file `$XDG_CONFIG_HOME/rdask/jobqueue.toml` (default `~/.config/rdask/jobqueue.toml`);
//! 5. the built-in defaults.
//!
//! `--config FILE` (or `RDASK_CONFIG`) replaces both files. A key is the long name of an option
//! of [`SchedulerArgs`] (`cores`, `job-extra-directives`, …), taken from clap's definition so the
//! two cannot drift apart. A file may also have a table per value of `backend` (`[local]`, and
//! one per batch system of [`crate::systems::SYSTEMS`]: `[slurm]`, `[pbs]`, `[sge]`, `[lsf]`)
//! whose keys apply only with that backend and, within that file, replace the top-level ones.
//!
//! How it works ([`parse_cli`]): the command line is parsed as given; for every key it does not
//! set, the value that wins among the environment and the files is appended as `--key=value`,
//! and the result is parsed again. A key given on the command line ignores every other source
//! (a list is replaced, not extended). So whatever reads the parsed arguments sees the merged
//! configuration: [`crate::spec::ClusterSpec::resolve`] turns them into the cluster spec (which
//! `up` hands to the background scheduler), `--pool` items included (a file's `pool = [...]`
//! is injected as `--pool` arguments like any list).

use std::any::TypeId;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, Command, CommandFactory, FromArgMatches};
use thiserror::Error;

use crate::cli::{Cli, Cmd, ConfigAction, ConfigCmd, OutputMode, SchedulerArgs};

/// The project file's name, looked for in the current directory and its ancestors.
pub const PROJECT_FILE: &str = "rdask.toml";
/// The user file, relative to `$XDG_CONFIG_HOME` (default `~/.config`).
pub const USER_FILE: &str = "rdask/jobqueue.toml";
/// Environment variables are this prefix and the key in upper snake case.
pub const ENV_PREFIX: &str = "RDASK_";

/// What a configuration error is. Every message names the key and where it was set.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the configuration file {} does not exist (given with --config or RDASK_CONFIG)", path.display())]
    Missing { path: PathBuf },
    #[error("invalid TOML in {}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("unknown key `{key}` in {origin}; did you mean `{suggestion}`?")]
    UnknownKey { key: String, origin: String, suggestion: String },
    #[error("wrong type for `{key}` in {origin}: expected {expected}, found {found}")]
    WrongType { key: String, origin: String, expected: &'static str, found: String },
    #[error("invalid value `{value}` for `{key}` in {origin}: {reason}")]
    Invalid { key: String, origin: String, value: String, reason: String },
    #[error("`backend` cannot be set in the table [{table}] of {}; set it at the top level", path.display())]
    BackendInTable { table: String, path: PathBuf },
    #[error("`{a}` (set by {a_origin}) and `{b}` (set by {b_origin}) exclude each other; keep one")]
    Conflict { a: String, a_origin: String, b: String, b_origin: String },
}

/// Why the command line could not be turned into a [`Cli`].
#[derive(Debug, Error)]
pub enum CliError {
    /// A command-line error, `--help` or `--version`: clap prints it (`e.exit()`, exit code 2 or 0).
    #[error(transparent)]
    Usage(#[from] clap::Error),
    /// A configuration file or variable is wrong (exit code 2, as for a bad command line).
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The kind of values a key takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A flag: `true` or `false`.
    Flag,
    /// One whole number.
    Integer,
    /// One number.
    Number,
    /// One string.
    Text,
    /// One path; relative ones with a `/` are relative to the file that sets them.
    Path,
    /// Several strings (the option is repeatable).
    List,
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::Flag => "true or false",
            Kind::Integer => "an integer",
            Kind::Number => "a number",
            Kind::Text | Kind::Path => "a string",
            Kind::List => "an array of strings",
        }
    }
}

/// One configuration key: an option of [`SchedulerArgs`].
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// The option's long name, e.g. `job-extra-directives`.
    pub name: String,
    /// clap's id of the option.
    pub id: String,
    pub kind: Kind,
    /// The built-in default, if any.
    pub default: Option<Value>,
}

impl Key {
    /// `RDASK_` and the name in upper snake case: `RDASK_JOB_EXTRA_DIRECTIVES`.
    pub fn env_var(&self) -> String {
        format!("{ENV_PREFIX}{}", self.name.to_uppercase().replace('-', "_"))
    }
}

/// Every key, the backend tables and the pairs of keys that exclude each other.
#[derive(Debug, Clone)]
pub struct Keys {
    pub keys: Vec<Key>,
    /// The possible values of `backend`, each a table name.
    pub tables: Vec<String>,
    /// Pairs of keys that cannot both be given (`host`, `interface`).
    pub conflicts: Vec<(String, String)>,
}

impl Keys {
    /// Reads the keys off clap's definition of [`SchedulerArgs`].
    pub fn from_clap() -> Keys {
        let mut cmd = SchedulerArgs::augment_args(Command::new("rdask-jobqueue"));
        cmd.build();
        let mut keys = Vec::new();
        let mut tables = Vec::new();
        let mut conflicts = Vec::new();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            let parser = arg.get_value_parser();
            let ty = parser.type_id();
            let kind = match arg.get_action() {
                ArgAction::SetTrue => Kind::Flag,
                ArgAction::Append => Kind::List,
                _ if [TypeId::of::<u8>(), TypeId::of::<u16>(), TypeId::of::<u32>(), TypeId::of::<u64>()]
                    .into_iter()
                    .chain([TypeId::of::<usize>(), TypeId::of::<i64>(), TypeId::of::<i32>()])
                    .any(|t| ty == t) =>
                {
                    Kind::Integer
                }
                _ if ty == TypeId::of::<f64>() || ty == TypeId::of::<f32>() => Kind::Number,
                _ if ty == TypeId::of::<PathBuf>() => Kind::Path,
                _ => Kind::Text,
            };
            let defaults: Vec<String> =
                arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
            let default = match (kind, defaults.first()) {
                (_, None) => None,
                (Kind::Flag, Some(d)) => Some(Value::Flag(d == "true")),
                (Kind::List, Some(_)) => Some(Value::List(defaults.clone())),
                (_, Some(d)) => Some(Value::Scalar(d.clone())),
            };
            if long == "backend" {
                if let Some(values) = parser.possible_values() {
                    tables = values.map(|v| v.get_name().to_string()).collect();
                }
            }
            for other in cmd.get_arg_conflicts_with(arg) {
                if let Some(b) = other.get_long() {
                    conflicts.push((long.to_string(), b.to_string()));
                }
            }
            keys.push(Key { name: long.to_string(), id: arg.get_id().to_string(), kind, default });
        }
        Keys { keys, tables, conflicts }
    }

    pub fn get(&self, name: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.name == name)
    }
}

/// A configuration value, as it is given on the command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Flag(bool),
    Scalar(String),
    List(Vec<String>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Flag(b) => write!(f, "{b}"),
            Value::Scalar(s) => f.write_str(s),
            Value::List(items) => {
                let quoted: Vec<String> =
                    items.iter().map(|s| serde_json::Value::from(s.as_str()).to_string()).collect();
                write!(f, "[{}]", quoted.join(", "))
            }
        }
    }
}

impl Value {
    /// The command-line arguments that give this value to option `name`.
    pub fn to_args(&self, name: &str) -> Vec<String> {
        match self {
            Value::Flag(true) => vec![format!("--{name}")],
            // A flag cannot be set to false on the command line; false is its default.
            Value::Flag(false) => vec![],
            Value::Scalar(s) => vec![format!("--{name}={s}")],
            Value::List(items) => items.iter().map(|s| format!("--{name}={s}")).collect(),
        }
    }

    fn to_json(&self, kind: Kind) -> serde_json::Value {
        match self {
            Value::Flag(b) => (*b).into(),
            Value::Scalar(s) if kind == Kind::Integer => {
                s.parse::<i64>().map(Into::into).unwrap_or_else(|_| s.as_str().into())
            }
            Value::Scalar(s) if kind == Kind::Number => serde_json::Number::from_f64(s.parse().unwrap_or(f64::NAN))
                .map(serde_json::Value::Number)
                .unwrap_or_else(|| s.as_str().into()),
            Value::Scalar(s) => s.as_str().into(),
            Value::List(items) => items.clone().into(),
        }
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    CommandLine,
    /// The environment variable's name.
    Env(String),
    /// A file, and the backend table of it, if the value is in one.
    File {
        path: PathBuf,
        table: Option<String>,
    },
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::CommandLine => f.write_str("command line"),
            Source::Env(var) => write!(f, "env {var}"),
            Source::File { path, table: None } => write!(f, "{}", path.display()),
            Source::File { path, table: Some(t) } => write!(f, "{} [{t}]", path.display()),
            Source::Default => f.write_str("default"),
        }
    }
}

/// One key's merged value and its source.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub key: String,
    pub kind: Kind,
    pub value: Value,
    pub source: Source,
}

/// The values of one configuration file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileLayer {
    pub path: PathBuf,
    /// Top-level keys.
    pub values: BTreeMap<String, Value>,
    /// Backend name → the keys of its table.
    pub tables: BTreeMap<String, BTreeMap<String, Value>>,
}

/// What configuration reads from the process: variables and the current directory.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `RDASK_*`, `HOME` and `XDG_CONFIG_HOME`.
    pub vars: BTreeMap<String, String>,
    pub cwd: PathBuf,
}

impl Environment {
    /// This process's.
    pub fn current() -> Environment {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) || k == "HOME" || k == "XDG_CONFIG_HOME")
            .collect();
        Environment { vars, cwd: std::env::current_dir().unwrap_or_default() }
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }
}

/// The configuration files: the one given with `--config`, else the user's and the project's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// `--config FILE` or `RDASK_CONFIG`: replaces the other two.
    pub explicit: Option<PathBuf>,
    /// The user file's path, whether it exists or not (`None` without `HOME`).
    pub user: Option<PathBuf>,
    /// The nearest `rdask.toml`, if any.
    pub project: Option<PathBuf>,
}

impl Files {
    /// Finds the files (reads nothing).
    pub fn locate(env: &Environment, explicit: Option<&Path>) -> Files {
        let user = match (env.var("XDG_CONFIG_HOME").map(Path::new), env.var("HOME")) {
            (Some(xdg), _) if xdg.is_absolute() => Some(xdg.join(USER_FILE)),
            (_, Some(home)) => Some(Path::new(home).join(".config").join(USER_FILE)),
            _ => None,
        };
        let project = env.cwd.ancestors().map(|d| d.join(PROJECT_FILE)).find(|p| p.is_file());
        Files { explicit: explicit.map(|p| env.cwd.join(p)), user, project }
    }

    /// Reads and checks the files that apply, lowest precedence first.
    pub fn load(&self, keys: &Keys) -> Result<Vec<FileLayer>, ConfigError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })
        };
        if let Some(path) = &self.explicit {
            if !path.exists() {
                return Err(ConfigError::Missing { path: path.clone() });
            }
            return Ok(vec![parse_file(keys, path, &read(path)?)?]);
        }
        let mut layers = Vec::new();
        for path in [&self.user, &self.project].into_iter().flatten() {
            if path.is_file() {
                layers.push(parse_file(keys, path, &read(path)?)?);
            }
        }
        Ok(layers)
    }
}

/// The name among `candidates` closest to `word` (for "did you mean"): a candidate that
/// `word` starts, else the one fewest edits away (`_` counted as `-`), the first on ties.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let w = word.to_lowercase().replace('_', "-");
    let candidates: Vec<&str> = candidates.into_iter().collect();
    if w.chars().count() >= 3 {
        if let Some(c) = candidates.iter().find(|c| c.starts_with(&w)) {
            return Some(c);
        }
    }
    candidates.into_iter().min_by_key(|c| strsim::damerau_levenshtein(&w, c))
}

/// Parses and checks one file's text: every key known, every value of the right type and valid.
pub fn parse_file(keys: &Keys, path: &Path, text: &str) -> Result<FileLayer, ConfigError> {
    let table: toml::Table =
        text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax { path: path.into(), message: e.to_string() })?;
    let base = path.parent().unwrap_or(Path::new(""));
    let origin = |table: Option<&str>| Source::File { path: path.into(), table: table.map(Into::into) }.to_string();
    let mut layer = FileLayer { path: path.into(), ..FileLayer::default() };
    for (name, value) in &table {
        if keys.tables.contains(name) {
            let toml::Value::Table(t) = value else {
                return Err(ConfigError::WrongType {
                    key: name.clone(),
                    origin: origin(None),
                    expected: "a table of options for that backend",
                    found: value.type_str().into(),
                });
            };
            let mut values = BTreeMap::new();
            for (k, v) in t {
                if k == "backend" {
                    return Err(ConfigError::BackendInTable { table: name.clone(), path: path.into() });
                }
                let Some(key) = keys.get(k) else {
                    let names = keys.keys.iter().map(|k| k.name.as_str()).filter(|n| *n != "backend");
                    return Err(unknown(k, origin(Some(name)), names));
                };
                values.insert(k.clone(), from_toml(key, v, &origin(Some(name)), base)?);
            }
            layer.tables.insert(name.clone(), values);
        } else {
            let Some(key) = keys.get(name) else {
                let names = keys.keys.iter().map(|k| k.name.as_str()).chain(keys.tables.iter().map(String::as_str));
                return Err(unknown(name, origin(None), names));
            };
            layer.values.insert(name.clone(), from_toml(key, value, &origin(None), base)?);
        }
    }
    Ok(layer)
}

fn unknown<'a>(key: &str, origin: String, names: impl IntoIterator<Item = &'a str>) -> ConfigError {
    let suggestion = closest(key, names).unwrap_or_default().to_string();
    ConfigError::UnknownKey { key: key.into(), origin, suggestion }
}

/// A TOML value as a [`Value`] of `key`'s kind, checked with the option's own parser.
fn from_toml(key: &Key, v: &toml::Value, origin: &str, base: &Path) -> Result<Value, ConfigError> {
    use toml::Value as T;
    let wrong = || ConfigError::WrongType {
        key: key.name.clone(),
        origin: origin.into(),
        expected: key.kind.expected(),
        found: describe(v),
    };
    let value = match (key.kind, v) {
        (Kind::Flag, T::Boolean(b)) => Value::Flag(*b),
        (Kind::Integer, T::Integer(i)) => Value::Scalar(i.to_string()),
        (Kind::Number, T::Integer(i)) => Value::Scalar(i.to_string()),
        (Kind::Number, T::Float(x)) => Value::Scalar(x.to_string()),
        (Kind::Text, T::String(s)) => Value::Scalar(s.clone()),
        // Walltimes in minutes, numeric job names, …
        (Kind::Text, T::Integer(i)) => Value::Scalar(i.to_string()),
        (Kind::Text, T::Float(x)) => Value::Scalar(x.to_string()),
        (Kind::Path, T::String(s)) => {
            // With a `/`, a path; without, a command looked up on PATH (or a file in the
            // current directory, as on the command line).
            let p = Path::new(s);
            if s.contains('/') && p.is_relative() {
                Value::Scalar(base.join(p).to_string_lossy().into_owned())
            } else {
                Value::Scalar(s.clone())
            }
        }
        (Kind::List, T::String(s)) => Value::List(vec![s.clone()]),
        (Kind::List, T::Array(items)) => Value::List(
            items
                .iter()
                .map(|i| match i {
                    T::String(s) => Ok(s.clone()),
                    T::Integer(n) => Ok(n.to_string()),
                    T::Float(x) => Ok(x.to_string()),
                    _ => Err(wrong()),
                })
                .collect::<Result<_, _>>()?,
        ),
        _ => return Err(wrong()),
    };
    check(key, value, origin)
}

/// "a string (\"eight\")", "an array containing a boolean", …
fn describe(v: &toml::Value) -> String {
    use toml::Value as T;
    let kind = |v: &T| match v {
        T::Integer(_) | T::Array(_) => format!("an {}", v.type_str()),
        _ => format!("a {}", v.type_str()),
    };
    match v {
        T::String(s) => format!("{} ({})", kind(v), serde_json::Value::from(s.as_str())),
        T::Integer(i) => format!("{} ({i})", kind(v)),
        T::Float(x) => format!("{} ({x})", kind(v)),
        T::Boolean(b) => format!("{} ({b})", kind(v)),
        T::Datetime(d) => format!("{} ({d})", kind(v)),
        T::Array(items) => match items.iter().find(|i| !matches!(i, T::String(_) | T::Integer(_) | T::Float(_))) {
            Some(i) => format!("an array containing {}", kind(i)),
            None => kind(v),
        },
        T::Table(_) => kind(v),
    }
}

/// Checks `value` with clap's own parser of the option (ranges, possible values, numbers).
fn check(key: &Key, value: Value, origin: &str) -> Result<Value, ConfigError> {
    let args = value.to_args(&key.name);
    if args.is_empty() {
        return Ok(value);
    }
    let cmd = SchedulerArgs::augment_args(Command::new("rdask-jobqueue")).no_binary_name(true);
    match cmd.try_get_matches_from(&args) {
        Ok(_) => Ok(value),
        Err(e) => {
            use clap::error::{ContextKind, ContextValue};
            let reason = match (std::error::Error::source(&e), e.get(ContextKind::ValidValue)) {
                (Some(source), _) => source.to_string(),
                (None, Some(ContextValue::Strings(valid))) => format!("expected one of {}", valid.join(", ")),
                _ => e.to_string().lines().next().unwrap_or_default().trim_start_matches("error: ").to_string(),
            };
            Err(ConfigError::Invalid { key: key.name.clone(), origin: origin.into(), value: value.to_string(), reason })
        }
    }
}

/// The keys set by environment variables, with each variable's name.
///
/// Flags take `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`). Lists take a TOML array
/// (`RDASK_JOB_EXTRA_DIRECTIVES='["--exclusive", "-C gpu"]'`) or lines, one item each (a value
/// without a newline is one item). An empty variable is ignored, as if it were unset.
pub fn env_values(keys: &Keys, env: &Environment) -> Result<BTreeMap<String, (Value, String)>, ConfigError> {
    let mut out = BTreeMap::new();
    for key in &keys.keys {
        let var = key.env_var();
        let Some(raw) = env.var(&var) else { continue };
        let origin = format!("env {var}");
        let invalid = |reason: &str| ConfigError::Invalid {
            key: key.name.clone(),
            origin: origin.clone(),
            value: raw.into(),
            reason: reason.into(),
        };
        let value = match key.kind {
            Kind::Flag => match raw.trim().to_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Value::Flag(true),
                "false" | "0" | "no" | "off" => Value::Flag(false),
                _ => return Err(invalid("expected true or false")),
            },
            Kind::List if raw.trim_start().starts_with('[') => {
                let parsed: Result<toml::Table, _> = format!("v = {raw}").parse();
                let items = parsed.ok().and_then(|mut t| t.remove("v")).and_then(|v| match v {
                    toml::Value::Array(items) => {
                        items.into_iter().map(|i| i.as_str().map(str::to_string)).collect::<Option<Vec<_>>>()
                    }
                    _ => None,
                });
                match items {
                    Some(items) => Value::List(items),
                    None => {
                        return Err(invalid(
                            "a value starting with `[` must be a TOML array of strings, e.g. '[\"a\", \"b c\"]'",
                        ))
                    }
                }
            }
            Kind::List => Value::List(raw.lines().map(str::to_string).collect()),
            _ => Value::Scalar(raw.to_string()),
        };
        out.insert(key.name.clone(), (check(key, value, &origin)?, var));
    }
    Ok(out)
}

/// A key's value, its source, and the source's rank (higher wins).
type Candidate = (Value, Source, usize);

/// Merges the sources into one setting per key that has a value, in the options' order.
///
/// `files` are lowest precedence first; `command_line` holds the keys given on the command line.
/// A file's `[backend]` table (for the backend that wins) beats its top level. Of two keys that
/// exclude each other (`host`, `interface`), the one from the higher source wins and the other
/// falls back to its default; set by the same source, they are an error.
pub fn resolve(
    keys: &Keys,
    command_line: &BTreeMap<String, Value>,
    env: &BTreeMap<String, (Value, String)>,
    files: &[FileLayer],
) -> Result<Vec<Setting>, ConfigError> {
    const TOP: usize = usize::MAX;
    let find = |key: &Key, backend: Option<&str>| -> Option<Candidate> {
        if let Some(v) = command_line.get(&key.name) {
            return Some((v.clone(), Source::CommandLine, TOP));
        }
        if let Some((v, var)) = env.get(&key.name) {
            return Some((v.clone(), Source::Env(var.clone()), TOP - 1));
        }
        for (i, f) in files.iter().enumerate().rev() {
            if let Some(b) = backend {
                if let Some(v) = f.tables.get(b).and_then(|t| t.get(&key.name)) {
                    let source = Source::File { path: f.path.clone(), table: Some(b.into()) };
                    return Some((v.clone(), source, 2 * i + 2));
                }
            }
            if let Some(v) = f.values.get(&key.name) {
                return Some((v.clone(), Source::File { path: f.path.clone(), table: None }, 2 * i + 1));
            }
        }
        key.default.clone().map(|v| (v, Source::Default, 0))
    };
    let backend = keys.get("backend").and_then(|k| find(k, None)).and_then(|(v, _, _)| match v {
        Value::Scalar(b) => Some(b),
        _ => None,
    });
    let mut found: Vec<(&Key, Option<Candidate>)> =
        keys.keys.iter().map(|k| (k, find(k, backend.as_deref()))).collect();
    for (a, b) in &keys.conflicts {
        let rank = |name: &str, found: &[(&Key, Option<Candidate>)]| {
            found.iter().find(|(k, _)| k.name == name).and_then(|(_, v)| v.as_ref()).map_or(0, |v| v.2)
        };
        let (ra, rb) = (rank(a, &found), rank(b, &found));
        if ra == 0 || rb == 0 {
            continue;
        }
        if ra == rb {
            let origin = |name: &str| {
                let found = found.iter().find(|(k, _)| k.name == name).and_then(|(_, v)| v.as_ref());
                found.map(|v| v.1.to_string()).unwrap_or_default()
            };
            return Err(ConfigError::Conflict { a: a.clone(), a_origin: origin(a), b: b.clone(), b_origin: origin(b) });
        }
        let loser = if ra > rb { b } else { a };
        for (k, v) in &mut found {
            if k.name == *loser {
                *v = k.default.clone().map(|d| (d, Source::Default, 0));
            }
        }
    }
    Ok(found
        .into_iter()
        .filter_map(|(k, v)| v.map(|(value, source, _)| (k, value, source)))
        .filter(|(_, value, _)| !matches!(value, Value::List(items) if items.is_empty()))
        .map(|(k, value, source)| Setting { key: k.name.clone(), kind: k.kind, value, source })
        .collect())
}

/// The arguments that give the settings from the environment and files to clap.
pub fn injected_args(settings: &[Setting]) -> Vec<String> {
    settings
        .iter()
        .filter(|s| matches!(s.source, Source::Env(_) | Source::File { .. }))
        .flat_map(|s| s.value.to_args(&s.key))
        .collect()
}

/// The keys set on the command line, read from clap's matches of the subcommand.
fn command_line_values(keys: &Keys, m: &ArgMatches) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for key in &keys.keys {
        if m.value_source(&key.id) != Some(ValueSource::CommandLine) {
            continue;
        }
        let raw: Vec<String> =
            m.get_raw(&key.id).map(|r| r.map(|v| v.to_string_lossy().into_owned()).collect()).unwrap_or_default();
        let value = match key.kind {
            Kind::Flag => Value::Flag(m.get_flag(&key.id)),
            Kind::List => Value::List(raw),
            _ => Value::Scalar(raw.into_iter().next().unwrap_or_default()),
        };
        out.insert(key.name.clone(), value);
    }
    out
}

/// What `config` shows: the files, the variables and the merged options.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub files: Option<Files>,
    /// The `RDASK_<KEY>` variables that are set.
    pub env_vars: Vec<String>,
    /// The merged options (`config show` only).
    pub settings: Vec<Setting>,
}

/// The matches of the subcommand whose options configuration supplies, if any: `up`,
/// `job-script`, `scheduler` (unless it reads a spec with `--spec-file`) and `config show`.
fn configured(m: &ArgMatches) -> Option<&ArgMatches> {
    match m.subcommand()? {
        ("up" | "job-script", sm) => Some(sm),
        ("scheduler", sm) if sm.get_one::<PathBuf>("spec_file").is_none() => Some(sm),
        ("config", cm) => match cm.subcommand()? {
            ("show", sm) => Some(sm),
            _ => None,
        },
        _ => None,
    }
}

/// Parses the command line (`args` with the program name first) with the configuration of
/// `env` merged in; `config`'s [`ConfigCmd::resolved`] is filled in.
pub fn parse_cli<I, T>(args: I, env: &Environment) -> Result<Cli, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let m = Cli::command().try_get_matches_from(&args)?;
    let mut resolved = None;
    let sub = configured(&m);
    if sub.is_some() || m.subcommand_name() == Some("config") {
        let explicit = sub.and_then(|sm| sm.get_one::<PathBuf>("config")).or_else(|| m.get_one::<PathBuf>("config"));
        let keys = Keys::from_clap();
        let files = Files::locate(env, explicit.map(PathBuf::as_path));
        let env_vars = keys.keys.iter().map(Key::env_var).filter(|v| env.var(v).is_some()).collect();
        let mut r = Resolved { files: Some(files), env_vars, settings: Vec::new() };
        if let Some(sm) = sub {
            let layers = r.files.as_ref().map(|f| f.load(&keys)).transpose()?.unwrap_or_default();
            let from_env = env_values(&keys, env)?;
            r.settings = resolve(&keys, &command_line_values(&keys, sm), &from_env, &layers)?;
            // After the user's own arguments (which never name an injected key), before any `--`.
            let at = args.iter().position(|a| a == "--").unwrap_or(args.len());
            args.splice(at..at, injected_args(&r.settings).into_iter().map(OsString::from));
        }
        resolved = Some(r);
    }
    let m = Cli::command().try_get_matches_from(&args)?;
    let mut cli = Cli::from_arg_matches(&m)?;
    if let Cmd::Config(c) = &mut cli.command {
        c.resolved = resolved;
    }
    Ok(cli)
}

/// `config show` and `config path`.
pub fn run(a: &ConfigCmd) -> crate::error::Result<i32> {
    let r = a.resolved.clone().unwrap_or_default();
    match &a.action {
        ConfigAction::Show(s) => match s.output {
            OutputMode::Json => {
                let mut map = serde_json::Map::new();
                for st in &r.settings {
                    let entry =
                        serde_json::json!({ "value": st.value.to_json(st.kind), "source": st.source.to_string() });
                    map.insert(st.key.clone(), entry);
                }
                println!("{}", serde_json::to_string_pretty(&map).expect("serialisable"));
            }
            OutputMode::Text => print!("{}", show_text(&r.settings)),
        },
        ConfigAction::Path => {
            let files = r.files.unwrap_or_else(|| Files::locate(&Environment::current(), None));
            print!("{}", path_text(&files, &r.env_vars));
        }
    }
    Ok(0)
}

/// `config show`'s table: key, value, source.
pub fn show_text(settings: &[Setting]) -> String {
    let rows: Vec<[String; 3]> =
        settings.iter().map(|s| [s.key.clone(), s.value.to_string(), s.source.to_string()]).collect();
    let w0 = rows.iter().map(|r| r[0].chars().count()).max().unwrap_or(0).max(3);
    let w1 = rows.iter().map(|r| r[1].chars().count()).max().unwrap_or(0).max(5);
    let mut out = format!("{:w0$}  {:w1$}  SOURCE\n", "KEY", "VALUE");
    for [k, v, s] in rows {
        out.push_str(&format!("{k:w0$}  {v:w1$}  {s}\n"));
    }
    out
}

fn path_text(files: &Files, env_vars: &[String]) -> String {
    let state = |p: &Path| if p.is_file() { String::new() } else { " (not found)".into() };
    let mut out = String::new();
    if let Some(p) = &files.explicit {
        out.push_str(&format!("config file:  {}{} (from --config or RDASK_CONFIG)\n", p.display(), state(p)));
        out.push_str("user and project files are not read\n");
    } else {
        match &files.user {
            Some(p) => out.push_str(&format!("user file:    {}{}\n", p.display(), state(p))),
            None => out.push_str("user file:    none (neither HOME nor XDG_CONFIG_HOME is set)\n"),
        }
        match &files.project {
            Some(p) => out.push_str(&format!("project file: {}\n", p.display())),
            None => out.push_str(&format!("project file: none ({PROJECT_FILE} in the current directory or above)\n")),
        }
    }
    let vars = if env_vars.is_empty() { "none".to_string() } else { env_vars.join(", ") };
    out.push_str(&format!("environment:  {vars}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn layer(text: &str) -> FileLayer {
        parse_file(&Keys::from_clap(), Path::new("/p/rdask.toml"), text).unwrap()
    }

    fn err(text: &str) -> String {
        parse_file(&Keys::from_clap(), Path::new("/p/rdask.toml"), text).unwrap_err().to_string()
    }

    fn setting<'a>(settings: &'a [Setting], key: &str) -> Option<&'a Setting> {
        settings.iter().find(|s| s.key == key)
    }

    fn env(vars: &[(&str, &str)]) -> Environment {
        Environment { vars: vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), cwd: "/".into() }
    }

    #[test]
    fn keys_are_the_long_options_of_the_scheduler_arguments() {
        let keys = Keys::from_clap();
        let names: Vec<&str> = keys.keys.iter().map(|k| k.name.as_str()).collect();
        for n in ["backend", "cores", "memory", "job-extra-directives", "env", "nodes-per-job", "heartbeat-ms"] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        for n in ["help", "wait", "dry-run", "name", "home", "config", "interface-x"] {
            assert!(!names.contains(&n), "{n} should not be a key");
        }
        assert_eq!(keys.get("job-array").unwrap().kind, Kind::Flag);
        assert_eq!(keys.get("job-extra-directives").unwrap().kind, Kind::List);
        assert_eq!(keys.get("cores").unwrap().kind, Kind::Integer);
        assert_eq!(keys.get("poll-interval").unwrap().kind, Kind::Number);
        assert_eq!(keys.get("template").unwrap().kind, Kind::Path);
        assert_eq!(keys.get("memory").unwrap().kind, Kind::Text);
        assert_eq!(keys.get("workers").unwrap().default, Some(Value::Scalar("2".into())));
        assert_eq!(keys.get("job-array").unwrap().default, Some(Value::Flag(false)));
        assert_eq!(keys.get("env").unwrap().env_var(), "RDASK_ENV");
        assert_eq!(keys.get("job-extra-directives").unwrap().env_var(), "RDASK_JOB_EXTRA_DIRECTIVES");
        let systems = crate::systems::System::names().map(String::from);
        assert_eq!(keys.tables, std::iter::once("local".to_string()).chain(systems).collect::<Vec<_>>());
        assert_eq!(keys.tables, ["local", "slurm", "pbs", "sge", "lsf"]);
        assert!(keys.conflicts.contains(&("host".into(), "interface".into())), "{:?}", keys.conflicts);
    }

    #[test]
    fn suggestions_find_the_nearest_key() {
        let keys = Keys::from_clap();
        let names = || keys.keys.iter().map(|k| k.name.as_str());
        assert_eq!(closest("coers", names()), Some("cores"));
        assert_eq!(closest("memroy", names()), Some("memory"));
        assert_eq!(closest("job_extra_directives", names()), Some("job-extra-directives"));
        assert_eq!(closest("job-extra", names()), Some("job-extra-directives"));
        assert_eq!(closest("Queue", names()), Some("queue"));
        assert_eq!(closest("x", std::iter::empty()), None);
    }

    #[test]
    fn files_give_typed_values_and_backend_tables() {
        let l = layer(
            "cores = 8\nmemory = \"28GB\"\njob-array = true\npoll-interval = 1\nwalltime = 30\n\
             job-extra-directives = [\"--exclusive\", \"-C gpu\"]\nworker-extra-args = \"--x\"\n\
             template = \"t/slurm.sh.tera\"\nsubmit-command = \"sbatch\"\n[slurm]\nqueue = \"regular\"\n",
        );
        assert_eq!(l.values["cores"], Value::Scalar("8".into()));
        assert_eq!(l.values["job-array"], Value::Flag(true));
        assert_eq!(l.values["walltime"], Value::Scalar("30".into()));
        assert_eq!(l.values["job-extra-directives"], Value::List(vec!["--exclusive".into(), "-C gpu".into()]));
        assert_eq!(l.values["worker-extra-args"], Value::List(vec!["--x".into()]));
        assert_eq!(l.values["template"], Value::Scalar("/p/t/slurm.sh.tera".into()), "relative to the file");
        assert_eq!(l.values["submit-command"], Value::Scalar("sbatch".into()), "a bare command stays");
        assert_eq!(l.tables["slurm"]["queue"], Value::Scalar("regular".into()));
    }

    #[test]
    fn file_errors_name_the_key_the_file_and_what_was_expected() {
        assert_eq!(err("coers = 4"), "unknown key `coers` in /p/rdask.toml; did you mean `cores`?");
        assert_eq!(err("[slurm]\nqeue = \"x\""), "unknown key `qeue` in /p/rdask.toml [slurm]; did you mean `queue`?");
        assert_eq!(err("[slrum]\nqueue = \"x\""), "unknown key `slrum` in /p/rdask.toml; did you mean `slurm`?");
        let e = err("cores = \"eight\"");
        assert!(e.contains("wrong type for `cores` in /p/rdask.toml: expected an integer, found a string"), "{e}");
        let e = err("job-array = \"yes\"");
        assert!(e.contains("`job-array`") && e.contains("expected true or false"), "{e}");
        let e = err("job-extra-directives = [1, true]");
        assert!(e.contains("expected an array of strings, found an array containing a boolean"), "{e}");
        let e = err("queue = { a = 1 }");
        assert!(e.contains("`queue`") && e.contains("expected a string, found a table"), "{e}");
        let e = err("slots = 0");
        assert!(e.starts_with("invalid value `0` for `slots` in /p/rdask.toml: "), "{e}");
        let e = err("backend = \"slrm\"");
        assert!(e.contains("expected one of local, slurm, pbs, sge, lsf"), "{e}");
        let e = err("[slurm]\nbackend = \"pbs\"");
        assert!(e.contains("`backend` cannot be set in the table [slurm]"), "{e}");
        let e = err("slurm = 3");
        assert!(e.contains("`slurm`") && e.contains("a table"), "{e}");
        let e = err("cores = 4\ncores = 5");
        assert!(e.starts_with("invalid TOML in /p/rdask.toml: ") && e.contains("line 2, column 1"), "{e}");
    }

    #[test]
    fn environment_values_and_lists() {
        let keys = Keys::from_clap();
        let e = env(&[
            ("RDASK_CORES", "4"),
            ("RDASK_JOB_ARRAY", "yes"),
            ("RDASK_QUEUE", ""),
            ("RDASK_JOB_EXTRA_DIRECTIVES", "[\"--exclusive\", \"-C gpu\"]"),
            ("RDASK_JOB_SCRIPT_PROLOGUE", "module load a; module load b\nsource env.sh"),
            ("RDASK_NOT_A_KEY", "x"),
        ]);
        let v = env_values(&keys, &e).unwrap();
        assert_eq!(v["cores"], (Value::Scalar("4".into()), "RDASK_CORES".into()));
        assert_eq!(v["job-array"].0, Value::Flag(true));
        assert!(!v.contains_key("queue"), "empty is unset");
        assert_eq!(v["job-extra-directives"].0, Value::List(vec!["--exclusive".into(), "-C gpu".into()]));
        assert_eq!(
            v["job-script-prologue"].0,
            Value::List(vec!["module load a; module load b".into(), "source env.sh".into()])
        );
        let bad = env_values(&keys, &env(&[("RDASK_CORES", "many")])).unwrap_err().to_string();
        assert!(bad.starts_with("invalid value `many` for `cores` in env RDASK_CORES"), "{bad}");
        let bad = env_values(&keys, &env(&[("RDASK_ENV", "[A=1")])).unwrap_err().to_string();
        assert!(bad.contains("TOML array"), "{bad}");
    }

    #[test]
    fn precedence_is_command_line_env_project_user_default() {
        let keys = Keys::from_clap();
        let mut user = layer("cores = 1\nmemory = \"1GB\"\nqueue = \"u\"\nwalltime = \"01:00:00\"\n");
        user.path = "/u.toml".into();
        let project = layer("cores = 2\nmemory = \"2GB\"\nqueue = \"p\"\n");
        let e = env_values(&keys, &env(&[("RDASK_CORES", "3"), ("RDASK_MEMORY", "3GB")])).unwrap();
        let cl = BTreeMap::from([("cores".to_string(), Value::Scalar("4".into()))]);
        let s = resolve(&keys, &cl, &e, &[user, project]).unwrap();
        let get = |k: &str| setting(&s, k).map(|s| (s.value.to_string(), s.source.to_string()));
        assert_eq!(get("cores"), Some(("4".into(), "command line".into())));
        assert_eq!(get("memory"), Some(("3GB".into(), "env RDASK_MEMORY".into())));
        assert_eq!(get("queue"), Some(("p".into(), "/p/rdask.toml".into())));
        assert_eq!(get("walltime"), Some(("01:00:00".into(), "/u.toml".into())));
        assert_eq!(get("workers"), Some(("2".into(), "default".into())));
        assert_eq!(get("account"), None, "no value, not shown");
        let args = injected_args(&s);
        assert!(args.contains(&"--memory=3GB".to_string()) && args.contains(&"--queue=p".to_string()), "{args:?}");
        assert!(!args.iter().any(|a| a.starts_with("--cores") || a.starts_with("--workers")), "{args:?}");
    }

    #[test]
    fn backend_tables_apply_to_their_backend_only() {
        let keys = Keys::from_clap();
        let mut user = layer("[slurm]\nqueue = \"user-slurm\"\ncores = 16\n[pbs]\nqueue = \"user-pbs\"\n");
        user.path = "/u.toml".into();
        let project = layer("backend = \"slurm\"\ncores = 8\n");
        let s = resolve(&keys, &BTreeMap::new(), &BTreeMap::new(), &[user.clone(), project.clone()]).unwrap();
        assert_eq!(setting(&s, "queue").unwrap().value, Value::Scalar("user-slurm".into()));
        assert_eq!(setting(&s, "queue").unwrap().source.to_string(), "/u.toml [slurm]");
        assert_eq!(setting(&s, "cores").unwrap().value, Value::Scalar("8".into()), "the project file beats the user's");
        let cl = BTreeMap::from([("backend".to_string(), Value::Scalar("pbs".into()))]);
        let s = resolve(&keys, &cl, &BTreeMap::new(), &[user, project]).unwrap();
        assert_eq!(setting(&s, "queue").unwrap().value, Value::Scalar("user-pbs".into()));
        let only = layer("cores = 4\n[slurm]\ncores = 32\n");
        let cl = BTreeMap::from([("backend".to_string(), Value::Scalar("slurm".into()))]);
        let s = resolve(&keys, &cl, &BTreeMap::new(), &[only]).unwrap();
        assert_eq!(setting(&s, "cores").unwrap().value, Value::Scalar("32".into()), "the table beats its top level");
    }

    #[test]
    fn excluding_keys_from_different_sources_keep_the_higher_one() {
        let keys = Keys::from_clap();
        let l = layer("interface = \"ib0\"\n");
        let cl = BTreeMap::from([("host".to_string(), Value::Scalar("127.0.0.1".into()))]);
        let s = resolve(&keys, &cl, &BTreeMap::new(), std::slice::from_ref(&l)).unwrap();
        assert!(setting(&s, "interface").is_none());
        assert_eq!(setting(&s, "host").unwrap().source, Source::CommandLine);
        let e = env_values(&keys, &env(&[("RDASK_HOST", "10.0.0.1")])).unwrap();
        let s = resolve(&keys, &BTreeMap::new(), &e, &[l]).unwrap();
        assert!(setting(&s, "interface").is_none());
        let both = layer("interface = \"ib0\"\nhost = \"10.0.0.1\"\n");
        let e = resolve(&keys, &BTreeMap::new(), &BTreeMap::new(), &[both]).unwrap_err().to_string();
        assert_eq!(
            e,
            "`host` (set by /p/rdask.toml) and `interface` (set by /p/rdask.toml) exclude each other; keep one"
        );
    }

    #[test]
    fn parse_cli_merges_and_the_command_line_replaces_lists() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(PROJECT_FILE),
            "cores = 8\njob-extra-directives = [\"--a\", \"--b\"]\njob-array = true\n",
        )
        .unwrap();
        let e = Environment { vars: BTreeMap::new(), cwd: dir.path().join("sub/dir") };
        std::fs::create_dir_all(&e.cwd).unwrap();
        let cli = parse_cli(["rdask-jobqueue", "job-script", "--job-extra-directives", "--c"], &e).unwrap();
        let Cmd::JobScript(a) = cli.command else { panic!() };
        assert_eq!(a.main_pool.job.cores, Some(8));
        assert!(a.job_array);
        assert_eq!(a.main_pool.job.job_extra_directives, ["--c"]);
        let cli = parse_cli(["rdask-jobqueue", "job-script", "--"], &e).unwrap();
        let Cmd::JobScript(a) = cli.command else { panic!() };
        assert_eq!(a.main_pool.job.cores, Some(8), "injected before `--`");
        // `scheduler --spec-file` reads nothing else: a broken file does not matter.
        std::fs::write(dir.path().join(PROJECT_FILE), "coers = 8").unwrap();
        let cli = parse_cli(["rdask-jobqueue", "scheduler", "--spec-file", "x.json"], &e).unwrap();
        assert!(matches!(cli.command, Cmd::Scheduler(_)));
        let cli = parse_cli(["rdask-jobqueue", "status"], &e).unwrap();
        assert!(matches!(cli.command, Cmd::Status(_)));
        let Err(CliError::Config(ConfigError::UnknownKey { .. })) = parse_cli(["rdask-jobqueue", "up"], &e) else {
            panic!("expected an unknown key error")
        };
    }

    proptest! {
        #[test]
        fn the_suggester_never_panics(word in "\\PC{0,40}", extra in proptest::collection::vec("\\PC{0,12}", 0..5)) {
            let keys = Keys::from_clap();
            let names: Vec<&str> = keys.keys.iter().map(|k| k.name.as_str()).chain(extra.iter().map(String::as_str)).collect();
            let got = closest(&word, names.iter().copied());
            prop_assert!(got.is_some_and(|g| names.contains(&g)));
            prop_assert_eq!(closest(&word, extra.iter().map(String::as_str)).is_some(), !extra.is_empty());
        }
    }
}
