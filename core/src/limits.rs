//! The open-file limit (`RLIMIT_NOFILE`) of a process that holds many connections.
//!
//! Every connection a scheduler holds is one descriptor. Many systems start processes with a
//! soft limit of 1024 and a far higher hard limit, so a scheduler raises its soft limit to the
//! hard one when it starts ([`raise`]); where even the hard limit cannot hold what it is asked
//! to hold, [`ensure`] says so, naming the limit and how to raise it, before anything fails
//! with `EMFILE` half-way.

use std::fmt;

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// Descriptors a process needs besides its connections: standard streams, the listener,
/// the journal, the runtime's own (epoll, eventfd), log files, a dashboard's sockets.
pub const RESERVE: u64 = 64;

/// What a scheduler needs to hold `connections` connections at once.
pub fn needed_for(connections: u64) -> u64 {
    connections.saturating_add(RESERVE)
}

/// The process's open-file limits after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    /// The soft limit: descriptors this process may hold now.
    pub soft: u64,
    /// The hard limit: as far as this process may raise `soft` by itself.
    pub hard: u64,
}

/// Why a process cannot hold the descriptors it is asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Even at the hard limit there are fewer descriptors than needed.
    #[error(
        "this process may hold only {soft} open files (RLIMIT_NOFILE, hard limit {hard}), and {what} needs about \
         {needed}: raise the hard limit before starting it (`ulimit -Hn {needed}; ulimit -n {needed}` in the shell \
         that starts it, as root or within the limit it may raise; a `nofile` line in \
         /etc/security/limits.conf for logins; `LimitNOFILE=` for a systemd unit)"
    )]
    TooLow {
        /// What asked (e.g. "a scheduler for 500 workers").
        what: String,
        /// Descriptors needed.
        needed: u64,
        /// The soft limit after raising it.
        soft: u64,
        /// The hard limit.
        hard: u64,
    },
    /// The limits could not be read or set.
    #[error("cannot {action} the open-file limit (RLIMIT_NOFILE): {errno}")]
    Sys {
        /// "read" or "raise".
        action: &'static str,
        /// The system's error.
        errno: nix::errno::Errno,
    },
}

/// The soft limit to ask for, given the hard limit and the kernel's ceiling (`fs.nr_open`):
/// an "unlimited" hard limit still cannot be exceeded by a soft limit above `nr_open`.
pub fn target_soft(hard: u64, nr_open: Option<u64>) -> u64 {
    match nr_open {
        Some(n) if hard == RLIM_INFINITY || hard > n => n,
        _ => hard,
    }
}

fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open").ok()?.trim().parse().ok()
}

/// Reads the limits.
pub fn current() -> Result<NoFile, LimitError> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|errno| LimitError::Sys { action: "read", errno })?;
    Ok(NoFile { soft, hard })
}

/// Raises the soft limit to the hard limit (never lowers it); the limits after. Idempotent.
pub fn raise() -> Result<NoFile, LimitError> {
    let now = current()?;
    let want = target_soft(now.hard, nr_open());
    if now.soft >= want {
        return Ok(now);
    }
    setrlimit(Resource::RLIMIT_NOFILE, want, now.hard).map_err(|errno| LimitError::Sys { action: "raise", errno })?;
    current()
}

/// Raises the limit ([`raise`]) and checks that `needed` descriptors fit; `what` names the
/// asker in the error.
pub fn ensure(needed: u64, what: impl fmt::Display) -> Result<NoFile, LimitError> {
    let l = raise()?;
    check(l, needed, what)
}

/// Whether `needed` descriptors fit in the limits `l`.
pub fn check(l: NoFile, needed: u64, what: impl fmt::Display) -> Result<NoFile, LimitError> {
    if l.soft >= needed {
        Ok(l)
    } else {
        Err(LimitError::TooLow { what: what.to_string(), needed, soft: l.soft, hard: l.hard })
    }
}

/// What to log, once per run of failures, when accepting a connection fails because the
/// process is out of descriptors: the limit and how to raise it.
pub fn exhausted_message(connections: usize) -> String {
    let l = current().map(|l| format!("{} (hard limit {})", l.soft, l.hard)).unwrap_or_else(|e| e.to_string());
    format!(
        "out of file descriptors with {connections} workers and clients connected, and connections in their \
         handshake (RLIMIT_NOFILE {l}): new connections wait until some close; raise the limit before starting \
         the scheduler (`ulimit -n`, a `nofile` line in /etc/security/limits.conf, `LimitNOFILE=` for a \
         systemd unit)"
    )
}

/// Whether an `accept` error means this process (or the system) is out of descriptors.
pub fn is_exhausted(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unlimited_hard_limit_is_capped_at_nr_open() {
        assert_eq!(target_soft(RLIM_INFINITY, Some(1_048_576)), 1_048_576);
        assert_eq!(target_soft(4096, Some(1_048_576)), 4096);
        assert_eq!(target_soft(4096, None), 4096);
    }

    #[test]
    fn too_low_names_the_limit_and_the_remedy() {
        let e = check(NoFile { soft: 256, hard: 256 }, needed_for(500), "a cluster of 500 workers").unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, LimitError::TooLow { needed: 564, soft: 256, hard: 256, .. }), "{e:?}");
        for part in ["RLIMIT_NOFILE", "hard limit 256", "500 workers", "ulimit -Hn 564", "limits.conf"] {
            assert!(text.contains(part), "{part:?} missing from: {text}");
        }
        assert!(check(NoFile { soft: 564, hard: 564 }, 564, "x").is_ok());
    }

    #[test]
    fn raise_reaches_the_hard_limit_and_is_idempotent() {
        let l = raise().unwrap();
        assert_eq!(l.soft, target_soft(l.hard, nr_open()));
        assert_eq!(raise().unwrap(), l);
    }

    #[test]
    fn emfile_and_enfile_are_exhaustion_and_nothing_else_is() {
        assert!(is_exhausted(&std::io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(is_exhausted(&std::io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!is_exhausted(&std::io::Error::from_raw_os_error(libc::ECONNABORTED)));
        assert!(!is_exhausted(&std::io::Error::other("x")));
    }
}
