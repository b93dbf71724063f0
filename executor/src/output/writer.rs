//! The writing side of a job's output: the job's supervisor moves each pipe's bytes into
//! its stream's file, records the run, and tells followers.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use jobworker_protocol::Stream;
use tokio::sync::watch;

use super::{ENTRY_LEN, INDEX_FILE, Progress, Record, STREAM_FILES};
use crate::sys;

/// The writing side of a job's output.
pub struct OutputWriter {
    files: [File; 2],
    index: File,
    /// Most bytes stored, the index's records included: one record costs [`ENTRY_LEN`],
    /// so a job that switches streams at every byte cannot make the index outgrow it.
    cap: u64,
    /// Each stream's own length.
    stream_len: [u64; 2],
    progress: Progress,
    tx: watch::Sender<Progress>,
}

fn create(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

impl OutputWriter {
    /// Creates (truncating) the output files in `dir`, mode 0600.
    pub fn create(dir: &Path, cap: u64) -> io::Result<Self> {
        let files = [
            create(&dir.join(STREAM_FILES[0]))?,
            create(&dir.join(STREAM_FILES[1]))?,
        ];
        let index = create(&dir.join(INDEX_FILE))?;
        let progress = Progress::default();
        Ok(Self {
            files,
            index,
            cap,
            stream_len: [0; 2],
            progress,
            tx: watch::Sender::new(progress),
        })
    }

    /// A channel followers subscribe to.
    pub fn sender(&self) -> &watch::Sender<Progress> {
        &self.tx
    }

    /// Bytes stored so far, data and index.
    fn stored(&self) -> u64 {
        self.progress.len + ENTRY_LEN * self.progress.record_count()
    }

    /// How many more bytes of `stream` the cap leaves room for (a new run costs a record).
    pub fn room(&self, stream: Stream) -> u64 {
        let continues = self.progress.last.is_some_and(|l| l.stream == stream);
        let entry = if continues { 0 } else { ENTRY_LEN };
        self.cap.saturating_sub(self.stored() + entry)
    }

    /// Moves up to `max` bytes from `pipe` into `stream`'s file (never past the cap)
    /// without copying them through this process, and tells followers. Returns how many
    /// moved: 0 at the pipe's end (or with no room left); `WouldBlock` when the pipe is
    /// empty.
    pub fn splice_from(
        &mut self,
        stream: Stream,
        pipe: BorrowedFd<'_>,
        max: usize,
    ) -> io::Result<usize> {
        let room = self.room(stream);
        let want = max.min(usize::try_from(room).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = sys::splice_pipe_to_file(pipe, self.files[stream.index()].as_fd(), want)?;
        if n > 0 {
            self.record(stream, n as u64)?;
        }
        Ok(n)
    }

    /// Appends `data` to `stream`, dropping whatever would pass the cap, and tells
    /// followers.
    pub fn append(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let room = self.room(stream);
        let keep = data.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if keep > 0 {
            self.files[stream.index()].write_all(&data[..keep])?;
            self.record(stream, keep as u64)?;
        }
        if keep < data.len() {
            self.progress.truncated = true;
            self.tx.send_replace(self.progress);
        }
        Ok(())
    }

    /// Counts `n` new bytes of `stream`: the run goes on, or the previous one is written
    /// to the index and a new one starts.
    fn record(&mut self, stream: Stream, n: u64) -> io::Result<()> {
        self.progress.len += n;
        self.stream_len[stream.index()] += n;
        let run = Record {
            stream,
            end: self.progress.len,
            stream_end: self.stream_len[stream.index()],
        };
        match self.progress.last {
            Some(last) if last.stream == stream => {}
            Some(last) => {
                // The index file only ever holds complete runs, written before followers
                // learn of them.
                self.index.write_all(&last.encode())?;
                self.progress.records += 1;
            }
            None => {}
        }
        self.progress.last = Some(run);
        self.tx.send_replace(self.progress);
        Ok(())
    }

    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// Marks the output complete: the last run goes into the index (kept in memory if
    /// that write fails; a restart rebuilds it from the streams' files), and followers
    /// drain what is left and stop.
    pub fn finish(&mut self) {
        if let Some(last) = self.progress.last {
            match self.index.write_all(&last.encode()) {
                Ok(()) => {
                    self.progress.records += 1;
                    self.progress.last = None;
                }
                Err(e) => tracing::warn!("writing the output's last index record: {e}"),
            }
        }
        self.progress.finished = true;
        self.tx.send_replace(self.progress);
    }
}

impl Drop for OutputWriter {
    fn drop(&mut self) {
        // Whatever happens to the job, followers must not wait forever.
        if !self.progress.finished {
            self.finish();
        }
    }
}
