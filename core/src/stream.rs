//! Streamed task output: the standard output and error of all of a job's command tasks that
//! one worker runs, appended to one file of that worker's (`<host>-<pid>.stream` in the job's
//! output directory) instead of two files per task, which parallel file systems bear badly at
//! a million tasks.
//!
//! A file is a sequence of frames, one per non-empty output of a task:
//!
//! ```text
//! rdask-frame <task> <out|err> <length>\n<length bytes>\n
//! ```
//!
//! The header is text so that `less` shows where a task's output starts; the length makes the
//! content binary-safe. Only one process writes a file (its name has the pid), and only under
//! its lock, so frames never interleave; a worker killed mid-frame leaves a truncated last
//! frame, which [`index`] reports as such and skips.

use std::io::{BufRead, Seek, SeekFrom};

/// The extension of stream files.
pub const EXT: &str = "stream";

/// Which output of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// Standard output.
    Out,
    /// Standard error.
    Err,
}

impl Which {
    fn word(self) -> &'static str {
        match self {
            Which::Out => "out",
            Which::Err => "err",
        }
    }
}

/// The header of a frame of `len` bytes.
pub fn header(task: u32, which: Which, len: u64) -> String {
    format!("rdask-frame {task} {} {len}\n", which.word())
}

/// Where one frame's content lies in a stream file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The task (its array index).
    pub task: u32,
    /// Which output.
    pub which: Which,
    /// Offset of the content in the file.
    pub offset: u64,
    /// Its length.
    pub len: u64,
}

/// What is wrong with a stream file.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading it failed.
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    /// A header is not one.
    #[error("byte {offset}: `{line}` is not a frame header (`rdask-frame TASK out|err LENGTH`)")]
    BadHeader {
        /// Where.
        offset: u64,
        /// What was there (at most 80 characters).
        line: String,
    },
}

/// The frames of a stream file, in file order, and whether its last frame was cut short (its
/// worker was killed while writing it; that frame is left out).
pub fn index(mut r: impl BufRead + Seek) -> Result<(Vec<Entry>, bool), StreamError> {
    let mut entries = Vec::new();
    let end = r.seek(SeekFrom::End(0))?;
    let mut at = r.seek(SeekFrom::Start(0))?;
    let mut line = Vec::new();
    while at < end {
        line.clear();
        let n = r.read_until(b'\n', &mut line)? as u64;
        if line.last() != Some(&b'\n') {
            return Ok((entries, true));
        }
        let bad =
            || StreamError::BadHeader { offset: at, line: String::from_utf8_lossy(&line).chars().take(80).collect() };
        let text = std::str::from_utf8(&line[..line.len() - 1]).map_err(|_| bad())?;
        let mut words = text.split(' ');
        let (Some("rdask-frame"), Some(task), Some(which), Some(len), None) =
            (words.next(), words.next(), words.next(), words.next(), words.next())
        else {
            return Err(bad());
        };
        let task: u32 = task.parse().map_err(|_| bad())?;
        let which = match which {
            "out" => Which::Out,
            "err" => Which::Err,
            _ => return Err(bad()),
        };
        let len: u64 = len.parse().map_err(|_| bad())?;
        let offset = at + n;
        // The content and its closing newline.
        if offset.saturating_add(len).saturating_add(1) > end {
            return Ok((entries, true));
        }
        entries.push(Entry { task, which, offset, len });
        at = r.seek(SeekFrom::Start(offset + len + 1))?;
    }
    Ok((entries, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    fn write(frames: &[(u32, Which, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (t, w, d) in frames {
            out.extend_from_slice(header(*t, *w, d.len() as u64).as_bytes());
            out.extend_from_slice(d);
            out.push(b'\n');
        }
        out
    }

    fn which() -> impl Strategy<Value = Which> {
        prop_oneof![Just(Which::Out), Just(Which::Err)]
    }

    proptest! {
        #[test]
        fn frames_come_back_whole_whatever_their_bytes(
            frames in proptest::collection::vec((any::<u32>(), which(), proptest::collection::vec(any::<u8>(), 0..300)), 0..20)
        ) {
            let file = write(&frames);
            let (entries, cut) = index(Cursor::new(&file)).unwrap();
            prop_assert!(!cut);
            prop_assert_eq!(entries.len(), frames.len());
            for (e, (t, w, d)) in entries.iter().zip(&frames) {
                prop_assert_eq!((e.task, e.which), (*t, *w));
                prop_assert_eq!(&file[e.offset as usize..(e.offset + e.len) as usize], &d[..]);
            }
        }

        #[test]
        fn a_file_cut_anywhere_keeps_its_whole_frames(
            frames in proptest::collection::vec((0u32..100, which(), proptest::collection::vec(any::<u8>(), 0..50)), 1..10),
            cut in any::<prop::sample::Index>(),
        ) {
            let file = write(&frames);
            let at = cut.index(file.len());
            let (entries, truncated) = index(Cursor::new(&file[..at])).unwrap();
            let whole = index(Cursor::new(&file)).unwrap().0;
            prop_assert!(entries.len() <= whole.len());
            prop_assert_eq!(&entries[..], &whole[..entries.len()]);
            prop_assert_eq!(truncated, entries.len() < whole.len() && at > 0 && !whole.iter().any(|e| e.offset + e.len + 1 == at as u64));
        }
    }

    #[test]
    fn a_header_that_is_not_one_is_named() {
        let e = index(Cursor::new(b"hello world\n".to_vec())).unwrap_err();
        assert!(e.to_string().contains("`hello world\n` is not a frame header"), "{e}");
        assert!(index(Cursor::new(b"rdask-frame 1 both 3\nabc\n".to_vec())).is_err());
    }
}
