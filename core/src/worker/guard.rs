//! The process groups of a worker's running command tasks, and their guardian: a small shell,
//! leader of its own process group, that ends every group still listed once the worker's end
//! of a pipe closes. A worker that exits ends its commands itself ([`Children::end_all`]); one
//! killed with SIGKILL cannot, and its guardian does it instead (SIGTERM, then SIGKILL
//! [`crate::process::GRACE`] later), grandchildren included, since it signals whole groups.
//!
//! The list is a table in an unlinked file shared with the guardian (its standard output, opened
//! for reading too): one fixed-width record per slot, written in place (`pwrite`) when a command
//! starts and ends. A task costs two system calls and wakes nobody; the guardian reads the
//! table only once the pipe closes. It is a shell, not [`crate::process::terminate`], because it
//! must act after this process died, and the worker binary may be any user's program, which
//! cannot be re-executed as something else. The guardian starts with the first command task: a
//! worker that runs only functions starts none.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::Mutex;

/// Running command tasks' process groups (their leaders' pids), and the guardian.
pub(super) struct Children {
    inner: Mutex<Inner>,
}

struct Inner {
    /// One record per slot: the group of the command running there.
    records: Vec<Option<i32>>,
    /// `None` until the first command task; `Some(None)` when the guardian could not start.
    guardian: Option<Option<Guardian>>,
}

struct Guardian {
    table: File,
    /// Closing it (on drop, or when this process dies) is the guardian's signal.
    _pipe: ChildStdin,
}

/// A record: the group id right-aligned in 10 characters, or blanks; then a newline.
const RECORD: usize = 11;

fn record(pgid: Option<i32>) -> [u8; RECORD] {
    let mut r = [b' '; RECORD];
    r[RECORD - 1] = b'\n';
    if let Some(g) = pgid {
        let s = format!("{g:>10}");
        r[..10].copy_from_slice(&s.as_bytes()[s.len() - 10..]);
    }
    r
}

/// Waits for the pipe to close, then ends the groups the table (its standard output) lists.
fn script() -> String {
    let grace = crate::process::GRACE.as_secs().max(1);
    format!(
        r#"trap '' TERM INT HUP
cat >/dev/null
left=
while read -r g; do [ -n "$g" ] && left="$left $g"; done <&1
[ -n "$left" ] || exit 0
for g in $left; do kill -s TERM -- "-$g" 2>/dev/null; done
sleep {grace}
for g in $left; do kill -s KILL -- "-$g" 2>/dev/null; done
exit 0"#
    )
}

fn start_guardian(slots: usize) -> std::io::Result<Guardian> {
    let path = std::env::temp_dir().join(format!(
        "rdask-guardian-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
    ));
    let table = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    // Only the two open descriptions keep it: nothing is left behind, however both end.
    std::fs::remove_file(&path)?;
    let blank: Vec<u8> = (0..slots).flat_map(|_| record(None)).collect();
    table.write_all_at(&blank, 0)?;
    let mut sh = Command::new("sh")
        .args(["-c", &script()])
        .stdin(Stdio::piped())
        .stdout(Stdio::from(table.try_clone()?))
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let pipe = sh.stdin.take().expect("piped stdin");
    // Reap it when it ends, so that it leaves no zombie behind while this process lives.
    std::thread::Builder::new().name("rdask-guardian".into()).spawn(move || sh.wait())?;
    Ok(Guardian { table, _pipe: pipe })
}

impl Inner {
    fn write(&mut self, slot: usize) {
        let slots = self.records.len();
        let guardian = self.guardian.get_or_insert_with(|| {
            start_guardian(slots)
                .map_err(|e| {
                    tracing::warn!(
                        "cannot start the command tasks' guardian (sh): {e}; a worker killed with SIGKILL \
                         would leave its commands running"
                    )
                })
                .ok()
        });
        if let Some(g) = guardian {
            if let Err(e) = g.table.write_all_at(&record(self.records[slot]), (slot * RECORD) as u64) {
                tracing::warn!("cannot update the command tasks' guardian: {e}");
                *guardian = None;
            }
        }
    }
}

impl Children {
    /// For a worker with `slots` slots (at most that many commands run at once).
    pub fn new(slots: usize) -> Children {
        Children { inner: Mutex::new(Inner { records: vec![None; slots.max(1)], guardian: None }) }
    }

    /// A command task's process group started.
    pub fn add(&self, pgid: i32) {
        let mut i = self.inner.lock().expect("children lock");
        let slot = match i.records.iter().position(Option::is_none) {
            Some(s) => s,
            None => {
                // Not expected (a command holds at least one slot), but never lose one: a record
                // past the table's end grows the file, which the guardian reads to its end.
                i.records.push(None);
                i.records.len() - 1
            }
        };
        i.records[slot] = Some(pgid);
        i.write(slot);
    }

    /// A command task's process group ended.
    pub fn remove(&self, pgid: i32) {
        let mut i = self.inner.lock().expect("children lock");
        if let Some(slot) = i.records.iter().position(|r| *r == Some(pgid)) {
            i.records[slot] = None;
            i.write(slot);
        }
    }

    /// Ends every running command task's group: SIGTERM, [`crate::process::GRACE`], SIGKILL.
    pub fn end_all(&self) {
        use crate::process::{terminate_all, Target, GRACE};
        let groups: Vec<i32> = self.inner.lock().expect("children lock").records.iter().flatten().copied().collect();
        let targets: Vec<Target> = groups.iter().filter_map(|&p| u32::try_from(p).ok()).map(Target::Group).collect();
        terminate_all(&targets, GRACE);
        for g in groups {
            self.remove(g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::record;

    #[test]
    fn records_have_one_width() {
        assert_eq!(&record(Some(4242)), b"      4242\n");
        assert_eq!(&record(None), b"          \n");
        assert_eq!(&record(Some(i32::MAX)), b"2147483647\n");
    }
}
