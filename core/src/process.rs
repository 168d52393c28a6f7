//! Ending processes and process groups the one way rdask does it: SIGTERM, a grace period,
//! then SIGKILL for whatever is left (as cargo-nextest does). A command task, a local worker,
//! a leftover process of a crashed cluster: all end through [`terminate`] (or [`end`], which
//! first gives them time to exit by themselves).
//!
//! These calls block (they poll every few milliseconds): call them from a thread, or from
//! async code through `spawn_blocking`.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// The grace period between SIGTERM and SIGKILL unless a caller has a reason for another:
/// long enough for a worker to hand its results over and for a shell to pass the signal to
/// its children, short enough that `down` does not seem to hang.
pub const GRACE: Duration = Duration::from_secs(3);

/// What to signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// One process, by pid.
    Process(u32),
    /// Every process of a process group, by its id (the leader's pid).
    Group(u32),
}

/// How a [`terminate`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was running: no signal was sent.
    Gone,
    /// It exited after SIGTERM, within the grace period.
    Terminated,
    /// It was still running after the grace period: SIGKILL was sent.
    Killed,
}

/// Whether `target` still runs (a zombie, dead but not yet reaped, does not count).
pub fn alive(target: Target) -> bool {
    let proc_fs = std::path::Path::new("/proc/self").exists();
    match target {
        Target::Process(pid) if proc_fs => state_of(pid).is_some_and(|s| s != 'Z'),
        Target::Process(pid) => kill(pid_of(pid), None).is_ok(),
        Target::Group(pgid) if proc_fs => group_has_live_member(pgid),
        Target::Group(pgid) => killpg(pid_of(pgid), None).is_ok(),
    }
}

/// SIGTERM to `target`, up to `grace` for it to exit, then SIGKILL; returns which it took.
pub fn terminate(target: Target, grace: Duration) -> Outcome {
    terminate_all(&[target], grace)[0]
}

/// [`terminate`] for several targets at once: every SIGTERM first, one grace period for all.
pub fn terminate_all(targets: &[Target], grace: Duration) -> Vec<Outcome> {
    let mut outcomes: Vec<Outcome> = targets
        .iter()
        .map(|&t| if alive(t) && signal(t, Signal::SIGTERM) { Outcome::Terminated } else { Outcome::Gone })
        .collect();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && targets.iter().zip(&outcomes).any(|(&t, &o)| o != Outcome::Gone && alive(t)) {
        std::thread::sleep(Duration::from_millis(10));
    }
    for (&t, o) in targets.iter().zip(&mut outcomes) {
        if *o == Outcome::Terminated && alive(t) && signal(t, Signal::SIGKILL) {
            *o = Outcome::Killed;
        }
    }
    outcomes
}

/// Waits up to `wait` for `target` to exit by itself (it was asked to, some other way), then
/// [`terminate`]s it with `grace`.
pub fn end(target: Target, wait: Duration, grace: Duration) -> Outcome {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline && alive(target) {
        std::thread::sleep(Duration::from_millis(10));
    }
    terminate(target, grace)
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

/// Sends `sig`; false if there was no such process (or group).
fn signal(target: Target, sig: Signal) -> bool {
    match target {
        Target::Process(pid) => kill(pid_of(pid), sig).is_ok(),
        Target::Group(pgid) => killpg(pid_of(pgid), sig).is_ok(),
    }
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `Z`…); `None` if there is no such
/// process (or no `/proc`).
fn state_of(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces and parentheses: the state follows the last `)`.
    stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}

/// Whether some process of group `pgid` is not a zombie, from `/proc`.
fn group_has_live_member(pgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else { return false };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        // After the name: state, ppid, pgrp.
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("Z");
        if fields.nth(1).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) && state != "Z" {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};

    use super::*;

    fn spawn(script: &str) -> Child {
        let mut c = Command::new("sh");
        c.args(["-c", script]).process_group(0);
        c.spawn().expect("sh runs")
    }

    /// Waits until the shell has installed its trap (it prints once it has).
    fn spawn_ready(script: &str) -> Child {
        let dir = tempfile::tempdir().expect("temporary directory");
        let flag = dir.path().join("ready");
        let child = spawn(&format!("{script}; touch {}; while :; do sleep 0.05; done", flag.display()));
        while !flag.exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
        child
    }

    #[test]
    fn a_process_that_exits_on_sigterm_is_not_killed() {
        let mut child = spawn_ready("trap 'exit 7' TERM");
        let outcome = terminate(Target::Process(child.id()), Duration::from_secs(20));
        assert_eq!(outcome, Outcome::Terminated);
        assert_eq!(child.wait().unwrap().code(), Some(7), "it ran its TERM trap");
    }

    #[test]
    fn a_process_that_ignores_sigterm_is_killed_after_the_grace() {
        use std::os::unix::process::ExitStatusExt;
        let mut child = spawn_ready("trap '' TERM");
        let outcome = terminate(Target::Process(child.id()), Duration::from_millis(300));
        assert_eq!(outcome, Outcome::Killed);
        assert_eq!(child.wait().unwrap().signal(), Some(libc_sigkill()));
    }

    #[test]
    fn a_group_is_ended_with_its_grandchildren() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        // The grandchild ignores SIGTERM: only SIGKILL to the group ends it. It says its pid
        // once its trap is set, and the child is ready only then (else a SIGTERM could come first).
        let tmp = dir.path().join("grandchild.tmp");
        let mut child = spawn_ready(&format!(
            "sh -c 'trap \"\" TERM; echo $$ > {tmp}; mv {tmp} {pid}; while :; do sleep 0.05; done' & \
             while [ ! -e {pid} ]; do sleep 0.01; done",
            tmp = tmp.display(),
            pid = pidfile.display()
        ));
        let grandchild: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        assert!(alive(Target::Process(grandchild)));
        let outcome = terminate(Target::Group(child.id()), Duration::from_millis(300));
        assert_eq!(outcome, Outcome::Killed);
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(20);
        while alive(Target::Process(grandchild)) {
            assert!(Instant::now() < deadline, "the grandchild {grandchild} outlived its group");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn nothing_is_signalled_when_nothing_runs() {
        let mut child = spawn("exit 0");
        child.wait().unwrap();
        // Reaped: its pid names no process (or, rarely, a new one: hence a group that cannot exist).
        assert_eq!(terminate(Target::Group(u32::MAX / 2), GRACE), Outcome::Gone);
        assert!(!alive(Target::Group(u32::MAX / 2)));
    }

    fn libc_sigkill() -> i32 {
        Signal::SIGKILL as i32
    }
}
