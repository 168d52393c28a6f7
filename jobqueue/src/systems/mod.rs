//! The batch systems rdask can submit worker jobs to: one module each, registered in one table.
//!
//! A batch system is described by a [`SystemDef`]: its name (the `--backend` value, the
//! configuration table, the name in specs and journals), its default commands, its job script
//! template (`templates/<name>.sh.tera`), what it refuses in [`JobParams`], how it wants memory
//! and walltime written, the names of its jobs' stderr files, what its job ids look like, and
//! its [`BatchSystem`] (submit, status, cancel). [`SYSTEMS`] lists them; everything else (the
//! [`System`] handle's names and parsing, the CLI's `--backend` values, the configuration's
//! backend tables, the memory formats templates see) is derived from it.
//!
//! Adding a batch system is one module here (its `SystemDef`, its `BatchSystem`, its parsers
//! and their tests), one template and one entry in [`SYSTEMS`].

pub mod lsf;
pub mod pbs;
pub mod sge;
pub mod slurm;

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::batch::units::format_walltime;
use crate::batch::{JobParams, RenderError, TemplateContext};
use crate::jobs::{BatchSystem, Commands};

/// Every batch system, in the order they are listed (`--help`, errors).
pub const SYSTEMS: &[System] = &[slurm::SYSTEM, pbs::SYSTEM, sge::SYSTEM, lsf::SYSTEM];

/// What rdask knows of one batch system. Implemented once per module of [`crate::systems`].
pub trait SystemDef: Sync {
    /// The lowercase name: `--backend` value, configuration table, name in specs and journals.
    fn name(&self) -> &'static str;
    /// One line for `--help`: the system and its commands.
    fn description(&self) -> &'static str;
    /// What to install when one of its commands is missing (named by the error).
    fn package(&self) -> &'static str;
    /// Its submit, status and cancel commands by name.
    fn default_commands(&self) -> Commands;
    /// The text of its default template (`templates/<name>.sh.tera`, embedded).
    fn template(&self) -> &'static str;
    /// The value its directives use for the account: `account`, else `project` (the template
    /// variables `account` and `project` both hold it).
    fn account(&self, params: &JobParams) -> Option<String> {
        params.account.clone().or_else(|| params.project.clone())
    }
    /// Refuses what this system cannot do with the job, once the shared checks passed; the
    /// error says what to do instead.
    fn validate(&self, _job: &TemplateContext) -> Result<(), RenderError> {
        Ok(())
    }
    /// A memory request of `bytes`, written as its directives want it (`memory.<name>` in
    /// templates); `None`: it has no memory format.
    fn memory(&self, _bytes: u64) -> Option<String> {
        None
    }
    /// A walltime of `seconds`, as its directives want it (`walltime` in templates); default
    /// `HH:MM:SS`.
    fn walltime(&self, seconds: u64) -> String {
        format_walltime(seconds)
    }
    /// Whether `file_name`, in a log directory, is the stderr file of its job `id`.
    fn is_stderr_file(&self, file_name: &str, id: &str) -> bool;
    /// Whether `id` is a job id it could have given (ids are checked before they reach a command).
    fn is_job_id(&self, id: &str) -> bool;
    /// Its submit, status and cancel, run with `commands`.
    fn connect(&self, commands: Commands) -> Box<dyn BatchSystem>;
}

/// A batch system: a handle on its entry in [`SYSTEMS`]. Compared, hashed, printed and
/// (de)serialized by name (`"slurm"`), so specs and journals hold plain names.
#[derive(Clone, Copy)]
pub struct System(&'static dyn SystemDef);

impl System {
    /// The handle of `def` (each module's `SYSTEM` constant).
    pub const fn new(def: &'static dyn SystemDef) -> System {
        System(def)
    }

    /// Every batch system ([`SYSTEMS`]).
    pub const ALL: &'static [System] = SYSTEMS;

    /// The name of every batch system, in order.
    pub fn names() -> impl Iterator<Item = &'static str> {
        SYSTEMS.iter().map(|s| s.name())
    }

    /// The names joined by `separator`: `slurm|pbs|sge|lsf`.
    pub fn list(separator: &str) -> String {
        Self::names().collect::<Vec<_>>().join(separator)
    }
}

impl std::ops::Deref for System {
    type Target = dyn SystemDef;
    fn deref(&self) -> &Self::Target {
        self.0
    }
}

impl PartialEq for System {
    fn eq(&self, other: &System) -> bool {
        self.name() == other.name()
    }
}

impl Eq for System {}

impl Hash for System {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name().hash(state);
    }
}

impl fmt::Debug for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("System").field(&self.name()).finish()
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A batch system name that is none of [`SYSTEMS`]; the message lists them.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown batch system `{0}`; expected one of {names}", names = System::list(", "))]
pub struct UnknownSystem(pub String);

impl FromStr for System {
    type Err = UnknownSystem;
    /// A name, in any case, surrounding spaces ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SYSTEMS.iter().copied().find(|b| b.name().eq_ignore_ascii_case(s.trim())).ok_or_else(|| UnknownSystem(s.into()))
    }
}

impl Serialize for System {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for System {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_lowercase_and_parse_back() {
        let names: Vec<&str> = System::names().collect();
        assert_eq!(names, ["slurm", "pbs", "sge", "lsf"]);
        for s in System::ALL {
            assert_eq!(s.name().parse::<System>().unwrap(), *s);
            assert_eq!(s.name().to_uppercase().parse::<System>().unwrap(), *s);
            assert_eq!(s.name(), s.name().to_lowercase());
            assert_eq!(names.iter().filter(|n| **n == s.name()).count(), 1, "{s} listed twice");
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<System>(&format!("\"{s}\"")).unwrap(), *s);
            assert!(!s.description().is_empty() && !s.package().is_empty());
            assert!(s.template().contains("worker_command | shell_quote"), "{s}: the template runs no worker");
        }
    }

    #[test]
    fn an_unknown_name_lists_every_system() {
        let e = "condor".parse::<System>().unwrap_err().to_string();
        assert_eq!(e, "unknown batch system `condor`; expected one of slurm, pbs, sge, lsf");
        let e = serde_json::from_str::<System>("\"torque\"").unwrap_err().to_string();
        assert!(e.contains("unknown batch system `torque`"), "{e}");
    }

    #[test]
    fn no_system_takes_an_option_or_a_list_for_a_job_id() {
        for s in System::ALL {
            for bad in ["", "-1", "-u", "1 2", "1,2", "all", "1;rm", "\n1", "1\n"] {
                assert!(!s.is_job_id(bad), "{s} takes {bad:?}");
            }
            assert!(s.is_job_id("123"), "{s}");
        }
    }
}
