//! The scheduler's journal on disk: [`Record`]s as JSON lines, appended by the driver before it
//! acts on what follows them, synced to disk in batches.
//!
//! - **Appending** is one `write` per driver turn (every record the turn produced), so a
//!   scheduler killed with SIGKILL loses nothing it acted on: the kernel has the bytes.
//! - **Syncing** (`fdatasync`) runs on a thread of its own, at most every [`SYNC_EVERY`], so the
//!   scheduler never waits for the disk; what a machine crash can lose is the last
//!   [`SYNC_EVERY`] of records, which the workers that come back report again (see
//!   [`crate::protocol::Resume`]).
//! - **Compaction** happens when the journal is opened: it is folded ([`Restored::fold`]) and
//!   rewritten as the fewest records that say the same ([`Restored::records`]), into a new
//!   file renamed over the old one, so a crash while compacting leaves one or the other.
//! - A line torn by a crash (the last one) is skipped; so is one that does not parse, with a
//!   warning.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::scheduler::{Record, Restored};

/// The longest time between a record's write and its sync to disk.
pub const SYNC_EVERY: Duration = Duration::from_millis(100);

/// An open journal.
#[derive(Debug)]
pub struct JournalFile {
    file: File,
    path: PathBuf,
    sync: Arc<Syncer>,
    thread: Option<std::thread::JoinHandle<()>>,
    buf: Vec<u8>,
}

#[derive(Debug, Default)]
struct Syncer {
    /// (something written since the last sync, closing)
    state: Mutex<(bool, bool)>,
    wake: Condvar,
}

impl JournalFile {
    /// Opens (creating) the journal at `path`, compacted; returns it with what it said.
    pub fn open(path: &Path) -> std::io::Result<(JournalFile, Restored)> {
        let records = read(path)?;
        let restored = Restored::fold(records);
        let tmp = path.with_extension("compacting");
        {
            let mut f = OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp)?;
            let mut buf = Vec::new();
            for r in restored.records() {
                serde_json::to_writer(&mut buf, &r).map_err(std::io::Error::other)?;
                buf.push(b'\n');
            }
            f.write_all(&buf)?;
            f.sync_data()?;
        }
        std::fs::rename(&tmp, path)?;
        let file = OpenOptions::new().append(true).open(path)?;
        let sync = Arc::new(Syncer::default());
        let thread = {
            let (sync, file) = (sync.clone(), file.try_clone()?);
            std::thread::Builder::new().name("rdask-journal-sync".into()).spawn(move || sync_loop(&sync, &file))?
        };
        Ok((JournalFile { file, path: path.to_path_buf(), sync, thread: Some(thread), buf: Vec::new() }, restored))
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
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.buf)?;
        let mut s = self.sync.state.lock().expect("journal lock");
        if !s.0 {
            s.0 = true;
            self.sync.wake.notify_one();
        }
        Ok(())
    }
}

impl Drop for JournalFile {
    fn drop(&mut self) {
        self.sync.state.lock().expect("journal lock").1 = true;
        self.sync.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sync_loop(sync: &Syncer, file: &File) {
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
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let lines: Vec<String> = BufReader::new(f).lines().collect::<Result<_, _>>()?;
    let last = lines.len().saturating_sub(1);
    let mut out = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        match serde_json::from_str(l) {
            Ok(r) => out.push(r),
            // The last line may be torn by a crash mid-write.
            Err(_) if i == last => {}
            Err(e) => tracing::warn!("{}: skipping line {} of the journal: {e}", path.display(), i + 1),
        }
    }
    Ok(out)
}
