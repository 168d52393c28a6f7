//! The scheduler's journal on disk: [`Record`]s as JSON lines, appended by the driver before it
//! acts on what follows them, synced to disk in batches.
//!
//! - **Appending** is one `write` per driver turn (every record the turn produced), so a
//!   scheduler killed with SIGKILL loses nothing it acted on: the kernel has the bytes.
//! - **Syncing** (`fdatasync`) runs on a thread of its own, at most every [`SYNC_EVERY`], so the
//!   scheduler never waits for the disk; what a machine crash can lose is the last
//!   [`SYNC_EVERY`] of records, which the workers that come back report again (see
//!   [`crate::protocol::Resume`]).
//! - **Compaction** happens when the journal is opened, and again while the scheduler runs
//!   whenever the journal has grown to [`COMPACT_GROWTH`] times its last compacted size (and
//!   at least [`COMPACT_MIN`]): it is folded ([`Restored::fold`]) and rewritten as the fewest
//!   records that say the same ([`Restored::records`]), into a new file renamed over the old
//!   one, so a crash while compacting leaves one or the other. While running, the fold and the
//!   rewrite happen on a thread of their own, from the bytes written so far; the driver then
//!   appends what it wrote meanwhile to the new file, syncs it and renames it over the old one
//!   (in one turn: nothing is appended between the copy and the rename). Folding a prefix and
//!   appending the rest says the same as folding all, as when a journal is opened.
//! - A line torn by a crash (the last one) is skipped; so is one that does not parse, with a
//!   warning.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::scheduler::{Record, Restored};

/// The longest time between a record's write and its sync to disk.
pub const SYNC_EVERY: Duration = Duration::from_millis(100);

/// A running scheduler compacts its journal once it is this many times its compacted size…
pub const COMPACT_GROWTH: u64 = 4;
/// …and at least this large.
pub const COMPACT_MIN: u64 = 64 << 20;

/// An open journal.
#[derive(Debug)]
pub struct JournalFile {
    file: Arc<File>,
    path: PathBuf,
    sync: Arc<Syncer>,
    thread: Option<std::thread::JoinHandle<()>>,
    buf: Vec<u8>,
    /// Bytes in the file now, and after its last compaction.
    len: u64,
    compacted_len: u64,
    /// The smallest size that starts a compaction ([`COMPACT_MIN`]; smaller in tests).
    compact_min: u64,
    /// A compaction under way: the thread writing the compacted prefix.
    compacting: Option<std::thread::JoinHandle<std::io::Result<Compacted>>>,
}

/// The compacted journal's prefix, written and synced to `tmp`: what the first `upto` bytes said.
#[derive(Debug)]
struct Compacted {
    tmp: PathBuf,
    upto: u64,
}

#[derive(Debug)]
struct Syncer {
    /// (something written since the last sync, closing)
    state: Mutex<(bool, bool)>,
    wake: Condvar,
    /// The file to sync (replaced when a compacted file takes the old one's place).
    file: Mutex<Arc<File>>,
}

impl JournalFile {
    /// Opens (creating) the journal at `path`, compacted; returns it with what it said.
    pub fn open(path: &Path) -> std::io::Result<(JournalFile, Restored)> {
        let restored = Restored::fold(read(path)?);
        let tmp = path.with_extension("compacting");
        let len = write_compacted(&restored, &tmp)?;
        std::fs::rename(&tmp, path)?;
        let file = Arc::new(OpenOptions::new().read(true).append(true).open(path)?);
        let sync = Arc::new(Syncer {
            state: Mutex::new((false, false)),
            wake: Condvar::new(),
            file: Mutex::new(file.clone()),
        });
        let thread = {
            let sync = sync.clone();
            std::thread::Builder::new().name("rdask-journal-sync".into()).spawn(move || sync_loop(&sync))?
        };
        let journal = JournalFile {
            file,
            path: path.to_path_buf(),
            sync,
            thread: Some(thread),
            buf: Vec::new(),
            len,
            compacted_len: len,
            compact_min: COMPACT_MIN,
            compacting: None,
        };
        Ok((journal, restored))
    }

    /// Sets the smallest size that starts a compaction while running (tests).
    #[doc(hidden)]
    pub fn compact_from(&mut self, bytes: u64) {
        self.compact_min = bytes;
    }

    /// Its size in bytes now.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether a compaction is under way.
    pub fn compacting(&self) -> bool {
        self.compacting.is_some()
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `records` in one write; they reach the disk within [`SYNC_EVERY`].
    pub fn append<'a>(&mut self, records: impl IntoIterator<Item = &'a Record>) -> std::io::Result<()> {
        self.buf.clear();
        for r in records {
            serde_json::to_writer(&mut self.buf, r).map_err(std::io::Error::other)?;
            self.buf.push(b'\n');
        }
        if !self.buf.is_empty() {
            (&*self.file).write_all(&self.buf)?;
            self.len += self.buf.len() as u64;
            let mut s = self.sync.state.lock().expect("journal lock");
            if !s.0 {
                s.0 = true;
                self.sync.wake.notify_one();
            }
        }
        self.compact_if_due();
        Ok(())
    }

    /// Starts a compaction when the journal has grown enough; puts a finished one in place.
    /// A compaction that fails is logged and the journal goes on as it was.
    fn compact_if_due(&mut self) {
        if self.compacting.as_ref().is_some_and(|t| t.is_finished()) {
            let thread = self.compacting.take().expect("checked");
            let done = thread.join().unwrap_or_else(|_| Err(std::io::Error::other("the compacting thread panicked")));
            match done.and_then(|c| self.put_in_place(c)) {
                Ok(()) => tracing::debug!("compacted the journal {} to {} bytes", self.path.display(), self.len),
                Err(e) => {
                    tracing::warn!("cannot compact the journal {}: {e}; it goes on uncompacted", self.path.display());
                    // Try again only once it has grown as much again.
                    self.compacted_len = self.len;
                }
            }
        }
        let due = self.len >= self.compact_min.max(self.compacted_len.saturating_mul(COMPACT_GROWTH));
        if due && self.compacting.is_none() {
            let (path, upto) = (self.path.clone(), self.len);
            let spawned = std::thread::Builder::new().name("rdask-journal-compact".into()).spawn(move || {
                let restored = Restored::fold(parse(&path, &read_prefix(&path, upto)?));
                let tmp = path.with_extension("compacting");
                write_compacted(&restored, &tmp)?;
                Ok(Compacted { tmp, upto })
            });
            match spawned {
                Ok(t) => self.compacting = Some(t),
                Err(e) => {
                    tracing::warn!("cannot start compacting the journal: {e}");
                    self.compacted_len = self.len;
                }
            }
        }
    }

    /// Appends what was written since `c.upto` to the compacted file, syncs it and renames it
    /// over the journal, which it then is.
    fn put_in_place(&mut self, c: Compacted) -> std::io::Result<()> {
        let mut tail = vec![0; (self.len - c.upto) as usize];
        self.file.read_exact_at(&mut tail, c.upto)?;
        let file = OpenOptions::new().read(true).append(true).open(&c.tmp)?;
        (&file).write_all(&tail)?;
        file.sync_data()?;
        let len = file.metadata()?.len();
        std::fs::rename(&c.tmp, &self.path)?;
        self.file = Arc::new(file);
        *self.sync.file.lock().expect("journal lock") = self.file.clone();
        self.len = len;
        self.compacted_len = len - tail.len() as u64;
        Ok(())
    }
}

/// Writes `restored` as its fewest records to `tmp` (created or truncated, mode 0600), synced;
/// returns its size.
fn write_compacted(restored: &Restored, tmp: &Path) -> std::io::Result<u64> {
    let mut f = OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(tmp)?;
    let mut buf = Vec::new();
    for r in restored.records() {
        serde_json::to_writer(&mut buf, &r).map_err(std::io::Error::other)?;
        buf.push(b'\n');
    }
    f.write_all(&buf)?;
    f.sync_data()?;
    Ok(buf.len() as u64)
}

impl Drop for JournalFile {
    fn drop(&mut self) {
        // A compaction still under way is of no use now: the next open compacts anyway.
        if let Some(t) = self.compacting.take() {
            if let Ok(Ok(c)) = t.join() {
                let _ = std::fs::remove_file(c.tmp);
            }
        }
        self.sync.state.lock().expect("journal lock").1 = true;
        self.sync.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sync_loop(sync: &Syncer) {
    loop {
        let mut s = sync.state.lock().expect("journal lock");
        while !s.0 && !s.1 {
            s = sync.wake.wait(s).expect("journal lock");
        }
        let closing = s.1;
        drop(s);
        if !closing {
            // Let the writes of this batch gather: one sync for all of them.
            std::thread::sleep(SYNC_EVERY);
        }
        sync.state.lock().expect("journal lock").0 = false;
        let file = sync.file.lock().expect("journal lock").clone();
        if let Err(e) = file.sync_data() {
            tracing::error!("cannot sync the scheduler's journal to disk: {e}");
        }
        if closing {
            return;
        }
    }
}

/// The records of the journal at `path` (none if it does not exist).
pub fn read(path: &Path) -> std::io::Result<Vec<Record>> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(f) => BufReader::new(f).read_to_end(&mut bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(parse(path, &bytes))
}

/// The first `upto` bytes of the journal at `path`.
fn read_prefix(path: &Path, upto: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(upto as usize);
    File::open(path)?.take(upto).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The records of a journal's bytes (`path` names it in warnings). A last line without its
/// newline may be torn by a crash mid-write: skipped if it does not parse.
fn parse(path: &Path, bytes: &[u8]) -> Vec<Record> {
    let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    let last = lines.len().saturating_sub(1);
    let mut out = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        if l.is_empty() {
            continue;
        }
        match serde_json::from_slice(l) {
            Ok(r) => out.push(r),
            Err(_) if i == last => {}
            Err(e) => tracing::warn!("{}: skipping line {} of the journal: {e}", path.display(), i + 1),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{JobId, JobSpec, JobTasks, TaskId, WorkerId};
    use crate::scheduler::EncodedSpec;

    /// A running scheduler's journal is compacted on a thread while records keep coming, and
    /// says afterwards exactly what it said before: what a restart would restore.
    #[test]
    fn a_growing_journal_is_compacted_while_it_is_written_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scheduler.journal");
        let (mut j, _) = JournalFile::open(&path).unwrap();
        j.compact_from(16 << 10);
        let spec = JobSpec {
            name: "kept".into(),
            functions: vec![],
            command: None,
            tasks: JobTasks::Graph(vec![]),
            max_attempts: 1,
            release_on_disconnect: false,
        };
        let accepted = Record::Accepted { job: JobId(7), spec: EncodedSpec::encode(&spec) };
        j.append([&accepted]).unwrap();
        let mut all = vec![accepted];
        let mut compactions = 0;
        for worker in 1..=2_000u32 {
            // Workers that come and go: a compacted journal keeps only the last one's id.
            let turn =
                [Record::WorkerJoined { worker: WorkerId(worker) }, Record::WorkerLeft { worker: WorkerId(worker) }];
            let ended = Record::Ended { task: TaskId { job: JobId(7), index: worker }, error: None };
            let was = j.compacting();
            j.append(turn.iter().chain([&ended])).unwrap();
            all.extend(turn);
            all.push(ended);
            compactions += usize::from(was && !j.compacting());
        }
        // Writing outran the compacting thread: the next compactions catch up.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let due = |j: &JournalFile| j.len() >= j.compact_min.max(j.compacted_len * COMPACT_GROWTH);
        while j.compacting() || due(&j) {
            assert!(std::time::Instant::now() < deadline, "compactions never caught up: {} bytes", j.len());
            std::thread::sleep(Duration::from_millis(5));
            let was = j.compacting();
            j.append([]).unwrap();
            compactions += usize::from(was && !j.compacting());
        }
        assert!(compactions >= 1, "{compactions} compactions");
        let on_disk = std::fs::metadata(&path).unwrap().len();
        assert_eq!(on_disk, j.len());
        // What is left is at most the records that matter (about 12 KiB) four times over.
        let written: usize = all.iter().map(|r| serde_json::to_vec(r).unwrap().len() + 1).sum();
        assert!(on_disk < 64 << 10 && (on_disk as usize) < written / 3, "{on_disk} of {written} bytes left");
        let (now, then) = (Restored::fold(read(&path).unwrap()).records(), Restored::fold(all).records());
        assert_eq!(now, then);
        assert!(
            matches!(&now[..], [Record::Accepted { .. }, Record::Finished { tasks, .. }, ..] if tasks.len() == 2_000)
        );
        assert!(!path.with_extension("compacting").exists());
    }
}
