//! Batch job scripts, rendered from Tera templates.
//!
//! The default templates (`templates/*.sh.tera` at the workspace root, one per batch system in
//! [`crate::systems`]) are embedded in the binary; any of them can be replaced by a template given at run time ([`render`] with
//! `Some(text)`, [`render_file`]). Parameters keep dask-jobqueue's names ([`JobParams`]) and,
//! given the same values, the default templates render the same directive lines. What is
//! rendered, value by value, is documented in `templates/README.md`.

mod render;
pub mod units;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use crate::systems::{System, UnknownSystem};
pub use render::{default_template, render, render_file, shell_quote, EnvVar, Memory, TemplateContext};
pub use units::UnitError;

/// Parameters of one worker job, named as dask-jobqueue's (kebab-case in configuration files:
/// `job-extra-directives`, …). `None` and empty lists mean what they mean in dask-jobqueue,
/// except where noted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, rename_all = "kebab-case")]
pub struct JobParams {
    /// CPUs per job (per node with `nodes` > 1). Required.
    #[arg(long, help_heading = "Batch jobs")]
    pub cores: Option<u32>,
    /// Memory per job (per node), e.g. `28GB`, `28GiB`, `1.5 GB` (see [`units::parse_memory`]).
    /// `None`: no memory request (dask-jobqueue requires it).
    #[arg(long, help_heading = "Batch jobs")]
    pub memory: Option<String>,
    /// Worker processes per job, each with `cores / processes` slots. `None`: 1 (rdask's workers
    /// are multi-threaded; dask-jobqueue picks about √cores).
    #[arg(long, help_heading = "Batch jobs")]
    pub processes: Option<u32>,
    /// Queue (Slurm partition).
    #[arg(long, short = 'q', help_heading = "Batch jobs")]
    pub queue: Option<String>,
    /// Account (Slurm `-A`, PBS `-A`); SGE and LSF use `project`, falling back to this.
    #[arg(long, help_heading = "Batch jobs")]
    pub account: Option<String>,
    /// Project (SGE and LSF `-P`); on Slurm and PBS a fallback for `account`, as in dask-jobqueue.
    #[arg(long, help_heading = "Batch jobs")]
    pub project: Option<String>,
    /// `HH:MM:SS`, `D-HH:MM:SS` or minutes. `None`: `00:30:00` (dask-jobqueue's default).
    #[arg(long, help_heading = "Batch jobs")]
    pub walltime: Option<String>,
    /// `None`: `rdask-worker`.
    #[arg(long, help_heading = "Batch jobs")]
    pub job_name: Option<String>,
    /// Extra directive lines, prefixed with `#SBATCH` / `#PBS` / `#$` / `#BSUB`, inserted verbatim after
    /// the generated ones and never skipped.
    #[arg(long, help_heading = "Batch jobs", allow_hyphen_values = true)]
    pub job_extra_directives: Vec<String>,
    /// Generated directive lines containing any of these strings are dropped.
    #[arg(long, help_heading = "Batch jobs", allow_hyphen_values = true)]
    pub job_directives_skip: Vec<String>,
    /// Shell lines before the worker command (verbatim).
    #[arg(long, help_heading = "Batch jobs", allow_hyphen_values = true)]
    pub job_script_prologue: Vec<String>,
    /// Shell lines after the worker command (verbatim).
    #[arg(long, help_heading = "Batch jobs", allow_hyphen_values = true)]
    pub job_script_epilogue: Vec<String>,
    /// PBS: replaces the generated `select=…` (`-l`); SGE: `-l` line. Refused for Slurm and LSF.
    #[arg(long, help_heading = "Batch jobs")]
    pub resource_spec: Option<String>,
    /// Appended to the worker command, each argument shell-quoted.
    #[arg(long, help_heading = "Batch jobs", allow_hyphen_values = true)]
    pub worker_extra_args: Vec<String>,
    /// Appended to the worker command as `--interface X`.
    #[arg(skip)]
    pub interface: Option<String>,
    /// Worker `--death-timeout` in seconds. `None`: 60.
    #[arg(skip)]
    pub death_timeout: Option<u64>,
    /// Appended to the worker command as `--local-directory D` (quoted: `$VARS` are not expanded).
    #[arg(long, help_heading = "Batch jobs")]
    pub local_directory: Option<String>,
    /// Directory for the job's stdout and stderr files.
    #[arg(long, help_heading = "Batch jobs")]
    pub log_directory: Option<String>,
    /// First line. `None`: `#!/usr/bin/env bash`.
    #[arg(long, help_heading = "Batch jobs")]
    pub shebang: Option<String>,
    /// `NAME=VALUE` pairs, exported after the prologue (rdask addition).
    #[arg(long = "env", help_heading = "Batch jobs", value_name = "NAME=VALUE")]
    pub environment: Vec<String>,
    /// Nodes per job, one worker per node (rdask addition). `None`: 1. SGE and LSF: only 1.
    #[arg(long = "nodes-per-job", id = "nodes_per_job", help_heading = "Batch jobs")]
    pub nodes: Option<u32>,
    /// GPUs per job (per node) (rdask addition). `None` or 0: no request.
    #[arg(long, help_heading = "Batch jobs")]
    pub gpus: Option<u32>,
    /// Submit a job array of this many jobs (rdask addition). `None` or 0: no array.
    #[arg(skip)]
    pub array: Option<u32>,
}

/// Why a job script cannot be rendered. Messages name the offending value or template.
#[derive(Debug, Error)]
pub enum RenderError {
    #[error(transparent)]
    Unit(#[from] UnitError),
    #[error("`{key}` is required, e.g. {example}")]
    Missing { key: &'static str, example: &'static str },
    #[error("invalid `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("{what} is not supported on {system}: {hint}")]
    Unsupported { system: System, what: &'static str, hint: &'static str },
    #[error("syntax error in template `{name}`:\n{message}")]
    Syntax { name: String, message: String },
    #[error("cannot render template `{name}`: {message}")]
    Render { name: String, message: String },
    #[error("template `{name}` does not run the worker command; add `{{{{ worker_command | shell_quote }}}}`")]
    NoWorkerCommand { name: String },
    #[error("cannot read template {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl RenderError {
    pub(crate) fn invalid(key: &'static str, reason: impl Into<String>) -> Self {
        RenderError::Invalid { key, reason: reason.into() }
    }
}
