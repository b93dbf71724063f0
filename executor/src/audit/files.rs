//! The trail's files: segments `audit-NNNNNNNNNNNNNNNN.jsonl` in the audit directory,
//! numbered from 1, oldest first. Only the writer thread touches them.
//!
//! A commit appends a batch of records to the current segment with one `write` and one
//! `fdatasync`. Once the current segment holds `segment_bytes` or more, the next commit
//! goes to a new segment that begins with a `segment` record (whose `prev` is the hash
//! of the last record of the segment before), and the oldest segments beyond the
//! configured count are deleted. A commit that fails leaves the trail as it was: the
//! segment is cut back to its length before the commit (or a new segment removed), and
//! the sequence numbers and hash go on from the last durable record.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::record::{self, Body, Hash, ZERO_HASH, hex};

/// Longest record looked for at the end of a segment when the trail is opened.
const MAX_TAIL: u64 = 4 << 20;

/// Where the trail is and how it rotates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub dir: PathBuf,
    /// A segment is closed once it holds this many bytes or more.
    pub segment_bytes: u64,
    /// Segments kept; the oldest beyond this are deleted.
    pub segments: usize,
}

/// A record written: its number and its line.
pub struct Written {
    pub seq: u64,
    pub line: String,
}

pub struct Files {
    cfg: AuditConfig,
    /// The current segment (`None` before the first commit of a new trail).
    file: Option<File>,
    number: u64,
    /// Its length after the last durable commit.
    len: u64,
    /// A failed commit left bytes past `len` that could not be cut yet.
    dirty: bool,
    seq: u64,
    head: Hash,
}

/// The name of segment `n`.
pub fn segment_name(n: u64) -> String {
    format!("audit-{n:016}.jsonl")
}

/// The segments in `dir`, oldest first: `(number, path)`.
pub fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("audit-"))
            .and_then(|n| n.strip_suffix(".jsonl"))
            .filter(|n| n.len() == 16 && n.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((n, entry.path()));
    }
    out.sort();
    Ok(out)
}

#[derive(serde::Deserialize)]
struct SeqOnly {
    seq: u64,
}

impl Files {
    /// Opens the trail in `cfg.dir` (created, mode 0700, if missing) and finds where it
    /// ends. A partly written last record (a crash during a commit, which nobody was
    /// told had succeeded) is cut off and logged.
    pub fn open(cfg: AuditConfig) -> io::Result<Files> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cfg.dir)
            .map_err(|e| with_path(e, "creating", &cfg.dir))?;
        let mut segments = list(&cfg.dir).map_err(|e| with_path(e, "reading", &cfg.dir))?;
        while let Some((number, path)) = segments.pop() {
            let mut file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .map_err(|e| with_path(e, "opening", &path))?;
            match last_record(&mut file, &path)? {
                Some((len, seq, head)) => {
                    tracing::info!(
                        segment = %path.display(),
                        seq,
                        head = %hex(&head),
                        "audit trail opened"
                    );
                    return Ok(Files {
                        cfg,
                        file: Some(file),
                        number,
                        len,
                        dirty: false,
                        seq,
                        head,
                    });
                }
                None => {
                    // Created by a commit that then failed or was cut short by a crash:
                    // nothing in it was ever durable.
                    tracing::warn!(segment = %path.display(), "removing an audit segment without a complete record");
                    fs::remove_file(&path).map_err(|e| with_path(e, "removing", &path))?;
                }
            }
        }
        tracing::info!(dir = %cfg.dir.display(), "audit trail created");
        Ok(Files {
            cfg,
            file: None,
            number: 0,
            len: 0,
            dirty: false,
            seq: 0,
            head: ZERO_HASH,
        })
    }

    /// The last durable record's number and hash.
    pub fn head(&self) -> (u64, Hash) {
        (self.seq, self.head)
    }

    /// Appends `records` (time and body) durably; on an error nothing of them is in the
    /// trail.
    pub fn commit(&mut self, records: &[(u64, Body)]) -> io::Result<Vec<Written>> {
        if self.dirty {
            let file = self.file.as_ref().expect("a dirty trail has a segment");
            file.set_len(self.len)?;
            file.sync_data()?;
            self.dirty = false;
        }
        let rotate = self.file.is_none() || self.len >= self.cfg.segment_bytes;
        let mut seq = self.seq;
        let mut prev = self.head;
        let mut buf = String::new();
        let mut written = Vec::with_capacity(records.len() + 1);
        let mut push = |time_ms: u64, body: &Body, buf: &mut String| {
            seq += 1;
            let line = record::line(seq, time_ms, &prev, body);
            prev = record::hash(line.as_bytes());
            buf.push_str(&line);
            buf.push('\n');
            written.push(Written { seq, line });
        };
        let new = if rotate {
            let number = self.number + 1;
            let path = self.cfg.dir.join(segment_name(number));
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .read(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| with_path(e, "creating", &path))?;
            let time = records.first().map_or_else(super::now_ms, |r| r.0);
            push(time, &Body::Segment { segment: number }, &mut buf);
            Some((number, path, file))
        } else {
            None
        };
        for (time_ms, body) in records {
            push(*time_ms, body, &mut buf);
        }
        match &new {
            Some((_, path, file)) => {
                let done =
                    write_durably(file, buf.as_bytes()).and_then(|()| sync_dir(&self.cfg.dir));
                if let Err(e) = done {
                    let _ = fs::remove_file(path);
                    return Err(with_path(e, "writing", path));
                }
            }
            None => {
                let file = self.file.as_ref().expect("a segment is open");
                if let Err(e) = write_durably(file, buf.as_bytes()) {
                    if file
                        .set_len(self.len)
                        .and_then(|()| file.sync_data())
                        .is_err()
                    {
                        self.dirty = true;
                    }
                    let path = self.cfg.dir.join(segment_name(self.number));
                    return Err(with_path(e, "writing", &path));
                }
            }
        }
        if let Some((number, path, file)) = new {
            if self.file.is_some() {
                tracing::info!(
                    closed = %segment_name(self.number),
                    seq = self.seq,
                    head = %hex(&self.head),
                    "audit segment closed"
                );
            }
            tracing::info!(segment = %path.display(), "audit segment opened");
            self.file = Some(file);
            self.number = number;
            self.len = 0;
            self.remove_old();
        }
        self.len += buf.len() as u64;
        self.seq = seq;
        self.head = prev;
        Ok(written)
    }

    /// Deletes the oldest segments beyond the configured count.
    fn remove_old(&self) {
        let segments = match list(&self.cfg.dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(dir = %self.cfg.dir.display(), "listing audit segments: {e}");
                return;
            }
        };
        let excess = segments.len().saturating_sub(self.cfg.segments);
        for (_, path) in &segments[..excess] {
            match fs::remove_file(path) {
                Ok(()) => {
                    tracing::info!(segment = %path.display(), "audit segment deleted (beyond the segments kept)")
                }
                Err(e) => {
                    tracing::error!(segment = %path.display(), "deleting an audit segment: {e}")
                }
            }
        }
    }
}

fn write_durably(mut file: &File, bytes: &[u8]) -> io::Result<()> {
    file.write_all(bytes)?;
    file.sync_data()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// The length up to the end of the last complete record of a segment, that record's
/// number and hash; `None` when it has none. A partial record after it is cut off.
fn last_record(file: &mut File, path: &Path) -> io::Result<Option<(u64, u64, Hash)>> {
    let len = file.metadata()?.len();
    let from = len.saturating_sub(MAX_TAIL);
    file.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::with_capacity((len - from) as usize);
    file.take(len - from).read_to_end(&mut tail)?;
    let Some(end) = tail.iter().rposition(|&b| b == b'\n') else {
        if len > MAX_TAIL {
            return Err(io::Error::other(format!(
                "{}: no complete record in its last {MAX_TAIL} bytes",
                path.display()
            )));
        }
        if len > 0 {
            file.set_len(0)?;
        }
        return Ok(None);
    };
    let complete = from + end as u64 + 1;
    if complete < len {
        tracing::warn!(
            segment = %path.display(),
            bytes = len - complete,
            "cutting a partly written audit record (a commit that never finished)"
        );
        file.set_len(complete)?;
        file.sync_data()?;
    }
    let start = tail[..end]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    if start == 0 && from > 0 {
        return Err(io::Error::other(format!(
            "{}: its last record is longer than {MAX_TAIL} bytes",
            path.display()
        )));
    }
    let line = &tail[start..end];
    let seq = serde_json::from_slice::<SeqOnly>(line).map_err(|e| {
        io::Error::other(format!(
            "{}: its last record does not parse ({e}); check the trail with `jobworker-executor audit verify`, and move the segment aside to go on",
            path.display()
        ))
    })?;
    Ok(Some((complete, seq.seq, record::hash(line))))
}
