//! `output`: a job's task output read back from its output directory, whether each task wrote
//! its own files (`<task>.out`, `<task>.err`) or the workers streamed it (`*.stream`, see
//! [`rdask::stream`]). It reads files only: it works after `down` too.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rdask::stream::{index, Entry, Which, EXT};

use crate::cli::OutputArgs;
use crate::error::{Error, Result};
use crate::state::StateDir;

pub(crate) fn output(state: &StateDir, a: &OutputArgs) -> Result<i32> {
    let dir = state.path.join("jobs").join(a.job.to_string());
    if !dir.is_dir() {
        return Err(Error::Usage(format!(
            "job {} of cluster `{}` has no output directory {} (output sent elsewhere with --stdout/--stderr \
             is where those options said)",
            a.job,
            state.name,
            dir.display()
        )));
    }
    let (ext, which) = if a.stderr { ("err", Which::Err) } else { ("out", Which::Out) };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let copy_err =
        |e: std::io::Error| Error::Io { what: format!("cannot print the output of job {}", a.job), source: e };
    // Per-task files.
    if let Some(t) = a.task {
        let f = dir.join(format!("{t}.{ext}"));
        if f.exists() {
            let mut file = File::open(&f).map_err(Error::io(format!("cannot read {}", f.display())))?;
            std::io::copy(&mut file, &mut out).map_err(copy_err)?;
            return Ok(0);
        }
    } else {
        let mut files: BTreeMap<u32, PathBuf> = BTreeMap::new();
        for e in read_dir(&dir)? {
            let name = e.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if let Some(t) = name.strip_suffix(&format!(".{ext}")).and_then(|t| t.parse().ok()) {
                files.insert(t, e);
            }
        }
        for f in files.values() {
            let mut file = File::open(f).map_err(Error::io(format!("cannot read {}", f.display())))?;
            std::io::copy(&mut file, &mut out).map_err(copy_err)?;
        }
    }
    // Streamed: every frame of the asked output (and task), in task order; a task run twice
    // (its first worker was lost) shows each run's.
    let mut frames: Vec<(PathBuf, Entry)> = Vec::new();
    for f in read_dir(&dir)?.into_iter().filter(|p| p.extension().and_then(|e| e.to_str()) == Some(EXT)) {
        let file = File::open(&f).map_err(Error::io(format!("cannot read {}", f.display())))?;
        let (entries, cut) = index(BufReader::new(file))
            .map_err(|e| Error::Usage(format!("{} is not a stream file of rdask: {e}", f.display())))?;
        if cut {
            eprintln!("({} ends in a cut frame: its worker was killed while writing it)", f.display());
        }
        frames.extend(
            entries
                .into_iter()
                .filter(|e| e.which == which && a.task.is_none_or(|t| t == e.task))
                .map(|e| (f.clone(), e)),
        );
    }
    frames.sort_by_key(|(_, e)| e.task);
    let mut open: Option<(PathBuf, File)> = None;
    for (path, e) in &frames {
        if open.as_ref().is_none_or(|(p, _)| p != path) {
            open =
                Some((path.clone(), File::open(path).map_err(Error::io(format!("cannot read {}", path.display())))?));
        }
        let (_, file) = open.as_mut().expect("opened above");
        file.seek(SeekFrom::Start(e.offset)).map_err(copy_err)?;
        std::io::copy(&mut file.take(e.len), &mut out).map_err(copy_err)?;
    }
    out.flush().map_err(copy_err)?;
    if let (Some(t), true) = (a.task, frames.is_empty()) {
        let what = if a.stderr { "error" } else { "output" };
        eprintln!("(job {} has no standard {what} of task {t}: it wrote none, or is not one of its tasks)", a.job);
    }
    Ok(0)
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(Error::io(format!("cannot list {}", dir.display())))?;
    Ok(entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
}
