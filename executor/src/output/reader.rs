//! One follower of a job's output: its own file handles, position and view of the
//! progress channel; it sends one run of one stream at a time.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

use jobworker_protocol::{Stream, Streams};
use tokio::sync::watch;

use super::{ENTRY_LEN, INDEX_FILE, LEGACY_FILE, Progress, Record, STREAM_FILES};

/// Where a follower starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At this many bytes into the output (both streams, in arrival order).
    Offset(u64),
    /// At the beginning of the last this many lines of the selected streams, as they are
    /// when the follower starts (`tail -n`).
    TailLines(u32),
}

/// Records read from the index at a time.
const INDEX_BLOCK: u64 = 256;
/// Bytes read at a time when counting lines back from the end.
const TAIL_BLOCK: usize = 64 * 1024;

/// The run the follower is in: its number, where it starts, and the run itself.
#[derive(Debug, Clone, Copy)]
struct Current {
    index: u64,
    start: u64,
    run: Record,
}

/// One follower.
pub struct OutputReader {
    /// Each stream's file (for an earlier release's job, its one file as stdout).
    files: [Option<File>; 2],
    /// `None` for an earlier release's job, which has one run.
    index: Option<File>,
    /// A block of index records read together, and the number of its first.
    cache: (u64, Vec<Record>),
    streams: Streams,
    pos: u64,
    current: Option<Current>,
    follow: bool,
    rx: watch::Receiver<Progress>,
    chunk: usize,
}

fn open_if_there(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl OutputReader {
    /// Opens the output in `dir` for reading `streams` from `start`. With `follow`, the
    /// reader waits for new output until the job ends; otherwise it stops at what exists
    /// when it catches up. Chunks are at most `chunk` bytes.
    pub fn open(
        dir: &Path,
        rx: watch::Receiver<Progress>,
        start: Start,
        streams: Streams,
        follow: bool,
        chunk: usize,
    ) -> io::Result<Self> {
        let index = open_if_there(&dir.join(INDEX_FILE))?;
        let files = if index.is_some() {
            [
                Some(File::open(dir.join(STREAM_FILES[0]))?),
                Some(File::open(dir.join(STREAM_FILES[1]))?),
            ]
        } else {
            [open_if_there(&dir.join(LEGACY_FILE))?, None]
        };
        let mut r = Self {
            files,
            index,
            cache: (0, Vec::new()),
            streams,
            pos: 0,
            current: None,
            follow,
            rx,
            chunk,
        };
        r.pos = match start {
            Start::Offset(o) => o,
            Start::TailLines(n) => r.tail_start(n)?,
        };
        Ok(r)
    }

    /// Record `i`, as of progress `p`; `None` past the last.
    fn record(&mut self, i: u64, p: &Progress) -> io::Result<Option<Record>> {
        if i >= p.records {
            return Ok((i == p.records).then_some(p.last).flatten());
        }
        let (first, block) = &self.cache;
        if i >= *first && i < first + block.len() as u64 {
            return Ok(Some(block[(i - first) as usize]));
        }
        let Some(index) = &self.index else {
            return Ok(None);
        };
        let first = i - i % INDEX_BLOCK;
        let count = INDEX_BLOCK.min(p.records - first);
        let mut bytes = vec![0u8; (count * ENTRY_LEN) as usize];
        index.read_exact_at(&mut bytes, first * ENTRY_LEN)?;
        let block = bytes
            .chunks_exact(ENTRY_LEN as usize)
            .enumerate()
            .map(|(k, b)| {
                Record::decode(b.try_into().expect("chunks of ENTRY_LEN")).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("index record {}", first + k as u64),
                    )
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let r = block[(i - first) as usize];
        self.cache = (first, block);
        Ok(Some(r))
    }

    /// The run that holds byte `pos`: the current one, the next, or found by bisection.
    fn locate(&mut self, pos: u64, p: &Progress) -> io::Result<Current> {
        if let Some(c) = self.current {
            // The current run may have grown (it was the last); read it again.
            if let Some(run) = self.record(c.index, p)?
                && c.start <= pos
            {
                if pos < run.end {
                    return Ok(Current { run, ..c });
                }
                if let Some(next) = self.record(c.index + 1, p)?
                    && pos < next.end
                {
                    return Ok(Current {
                        index: c.index + 1,
                        start: run.end,
                        run: next,
                    });
                }
            }
        }
        // The first run that ends after `pos`.
        let (mut lo, mut hi) = (0, p.record_count());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.record(mid, p)? {
                Some(r) if r.end <= pos => lo = mid + 1,
                _ => hi = mid,
            }
        }
        let run = self.record(lo, p)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "no run holds a published byte")
        })?;
        let start = match lo {
            0 => 0,
            _ => self.record(lo - 1, p)?.map_or(0, |r| r.end),
        };
        Ok(Current {
            index: lo,
            start,
            run,
        })
    }

    /// Waits until there are bytes of the selected streams past the position and returns
    /// their stream and how many to send next (at most one chunk, within one run), or
    /// `None` at the end. Checks that the stream's file holds them, so a file cut under
    /// us is an error before anything of the chunk is sent.
    pub async fn next_chunk(&mut self) -> io::Result<Option<(Stream, usize)>> {
        loop {
            let p = *self.rx.borrow_and_update();
            while self.pos < p.len {
                let c = self.locate(self.pos, &p)?;
                self.current = Some(c);
                if !self.streams.has(c.run.stream) {
                    self.pos = c.run.end;
                    continue;
                }
                let want = (c.run.end - self.pos).min(self.chunk as u64);
                let file_len = match &self.files[c.run.stream.index()] {
                    Some(f) => f.metadata()?.len(),
                    None => 0,
                };
                if file_len < self.stream_offset(&c) + want {
                    // The file is shorter than published: it was removed or cut under us.
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "output file shorter than recorded",
                    ));
                }
                return Ok(Some((c.run.stream, want as usize)));
            }
            if p.finished || !self.follow {
                return Ok(None);
            }
            if self.rx.changed().await.is_err() {
                // The writer is gone: whatever was published last is all there is.
                let p = *self.rx.borrow();
                if self.pos >= p.len {
                    return Ok(None);
                }
            }
        }
    }

    /// Where the position is in its stream's file.
    fn stream_offset(&self, c: &Current) -> u64 {
        c.run.stream_end - (c.run.end - c.start) + (self.pos - c.start)
    }

    /// Sends up to `len` bytes from the position (of the chunk [`next_chunk`] announced)
    /// to `socket` with `sendfile` and advances past them; returns how many were sent.
    /// `WouldBlock` when the socket is full.
    ///
    /// [`next_chunk`]: OutputReader::next_chunk
    pub fn send_to(&mut self, socket: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
        let c = self
            .current
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no chunk was announced"))?;
        let Some(file) = &self.files[c.run.stream.index()] else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "output file missing",
            ));
        };
        let n = crate::sys::sendfile(socket, file.as_fd(), self.stream_offset(&c), len)?;
        if n == 0 && len > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "output file shorter than recorded",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }

    /// The position, in bytes of both streams.
    pub fn offset(&self) -> u64 {
        self.pos
    }

    /// Where the last `lines` lines of the selected streams begin, as the output is now:
    /// runs are walked back from the end, their bytes read back a block at a time, and
    /// newlines counted (a newline that ends the output ends its last line, it does not
    /// start another).
    fn tail_start(&mut self, lines: u32) -> io::Result<u64> {
        let p = *self.rx.borrow();
        if lines == 0 {
            return Ok(p.len);
        }
        let mut seen = 0u64;
        let mut last_byte = true;
        let mut i = p.record_count();
        while i > 0 {
            i -= 1;
            let Some(run) = self.record(i, &p)? else {
                break;
            };
            if !self.streams.has(run.stream) {
                continue;
            }
            let start = match i {
                0 => 0,
                _ => self.record(i - 1, &p)?.map_or(0, |r| r.end),
            };
            let Some(file) = &self.files[run.stream.index()] else {
                continue;
            };
            let file_start = run.stream_end - (run.end - start);
            let mut hi = run.stream_end;
            let mut buf = vec![0u8; TAIL_BLOCK];
            while hi > file_start {
                let lo = hi.saturating_sub(TAIL_BLOCK as u64).max(file_start);
                let block = &mut buf[..(hi - lo) as usize];
                file.read_exact_at(block, lo)?;
                for (k, &b) in block.iter().enumerate().rev() {
                    if b != b'\n' {
                        last_byte = false;
                        continue;
                    }
                    if last_byte {
                        // The newline that ends the output.
                        last_byte = false;
                        continue;
                    }
                    seen += 1;
                    if seen == u64::from(lines) {
                        // The line starts right after this newline.
                        return Ok(start + (lo + k as u64 + 1 - file_start));
                    }
                }
                hi = lo;
            }
        }
        Ok(0)
    }
}
