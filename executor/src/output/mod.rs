//! A job's output, each byte on the stream it was written to: one append-only file per
//! stream, an index of the order in which the streams wrote (see [`index`]), a size cap,
//! and followers that each read it from their own offset.
//!
//! The writer (the job's supervisor, draining the job's pipes) moves each pipe's bytes
//! into its stream's file with `splice`, records the run in the index and publishes the
//! new [`Progress`] on a `watch` channel. A follower sends the files' bytes to its socket
//! with `sendfile` up to the published length, one run at a time, each chunk tagged with
//! its stream, and, when it has caught up, waits for the next publication or for the end
//! of the job: no timer, no polling, no buffer shared between followers. The output's
//! bytes never pass through the daemon's memory; a slow follower only delays itself; the
//! writer never waits for anyone.
//!
//! Offsets count the output's bytes of both streams in the order they arrived, so a
//! follower that resumes at an offset gets exactly what followed it. A job recorded by an
//! earlier release has one file, `output`, of both streams merged: it reads as one run of
//! stdout.

mod index;
mod reader;
mod writer;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use jobworker_protocol::Stream;
use tokio::sync::watch;

pub use index::{ENTRY_LEN, Record};
pub use reader::{OutputReader, Start};
pub use writer::OutputWriter;

/// The file of each stream, the index, and an earlier release's single file.
pub const STREAM_FILES: [&str; 2] = ["stdout", "stderr"];
pub const INDEX_FILE: &str = "index";
pub const LEGACY_FILE: &str = "output";

/// What followers need to know about the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Output bytes kept, of both streams.
    pub len: u64,
    /// The cap was reached and later bytes were dropped.
    pub truncated: bool,
    /// No more bytes will ever be appended.
    pub finished: bool,
    /// Records in the index file.
    pub records: u64,
    /// The record after them, still growing, kept in memory until it is complete.
    pub last: Option<Record>,
}

impl Progress {
    /// How many records there are in all.
    pub fn record_count(&self) -> u64 {
        self.records + u64::from(self.last.is_some())
    }
}

/// The output of a job that has ended, as its directory holds it: its progress, with the
/// tail of a job that ended without its last record written (the executor died) put back
/// into the index first.
pub fn load(dir: &Path, truncated: bool) -> io::Result<Progress> {
    let index_path = dir.join(INDEX_FILE);
    if !index_path.exists() {
        // An earlier release's single file: one run of stdout.
        let len = std::fs::metadata(dir.join(LEGACY_FILE)).map_or(0, |m| m.len());
        let last = (len > 0).then_some(Record {
            stream: Stream::Stdout,
            end: len,
            stream_end: len,
        });
        return Ok(Progress {
            len,
            truncated,
            finished: true,
            records: 0,
            last,
        });
    }
    let index = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(&index_path)?;
    let records = index.metadata()?.len() / ENTRY_LEN;
    let mut ends = [0u64; 2];
    let mut len = 0;
    // The stream ends the index knows: the last record of each stream.
    for i in (0..records).rev() {
        let r = read_record(&index, i)?;
        len = len.max(r.end);
        if ends[r.stream.index()] == 0 {
            ends[r.stream.index()] = r.stream_end;
        }
        if ends.iter().all(|&e| e > 0) {
            break;
        }
    }
    let mut records = records;
    for s in Stream::ALL {
        let on_disk = std::fs::metadata(dir.join(STREAM_FILES[s.index()])).map_or(0, |m| m.len());
        if on_disk > ends[s.index()] {
            // Bytes the index never got to: they came last, in an order nobody knows.
            len += on_disk - ends[s.index()];
            let r = Record {
                stream: s,
                end: len,
                stream_end: on_disk,
            };
            use std::io::Write;
            (&index).write_all(&r.encode())?;
            records += 1;
        }
    }
    Ok(Progress {
        len,
        truncated,
        finished: true,
        records,
        last: None,
    })
}

/// A finished job's output channel: a channel that only ever says `progress`.
pub fn finished_channel(progress: Progress) -> watch::Sender<Progress> {
    watch::Sender::new(progress)
}

/// Record `i` of an index file.
fn read_record(index: &File, i: u64) -> io::Result<Record> {
    let mut b = [0u8; ENTRY_LEN as usize];
    index.read_exact_at(&mut b, i * ENTRY_LEN)?;
    Record::decode(&b)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("index record {i}")))
}

#[cfg(test)]
mod tests;
