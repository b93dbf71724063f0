//! A job's output: one append-only file per job with a size cap, and followers that each
//! read it from their own offset.
//!
//! The writer (the job's supervisor, draining the job's pipe) moves the pipe's bytes into
//! the file with `splice` and then publishes the new length on a `watch` channel. A
//! follower sends the file's bytes to its socket with `sendfile` up to the published
//! length and, when it has caught up, waits for the next publication or for the end of
//! the job: no timer, no polling, no buffer shared between followers. The output's bytes
//! never pass through the daemon's memory; a slow follower only delays itself; the writer
//! never waits for anyone.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use tokio::sync::watch;

use crate::sys;

/// What followers need to know about the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Bytes in the file.
    pub len: u64,
    /// The cap was reached and later bytes were dropped.
    pub truncated: bool,
    /// No more bytes will ever be appended.
    pub finished: bool,
}

/// The writing side of a job's output.
pub struct OutputWriter {
    file: File,
    cap: u64,
    progress: Progress,
    tx: watch::Sender<Progress>,
}

impl OutputWriter {
    /// Creates (truncating) the output file at `path`, mode 0600.
    pub fn create(path: &Path, cap: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        let progress = Progress::default();
        Ok(Self {
            file,
            cap,
            progress,
            tx: watch::Sender::new(progress),
        })
    }

    /// A channel followers subscribe to.
    pub fn sender(&self) -> &watch::Sender<Progress> {
        &self.tx
    }

    /// Whether the cap leaves room for more bytes.
    pub fn has_room(&self) -> bool {
        self.progress.len < self.cap
    }

    /// Moves up to `max` bytes from `pipe` into the file (never past the cap) without
    /// copying them through this process, and tells followers. Returns how many moved: 0
    /// at the pipe's end (or with no room left); `WouldBlock` when the pipe is empty.
    pub fn splice_from(&mut self, pipe: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        let room = self.cap.saturating_sub(self.progress.len);
        let want = max.min(usize::try_from(room).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = sys::splice_pipe_to_file(pipe, self.file.as_fd(), want)?;
        if n > 0 {
            self.progress.len += n as u64;
            let p = self.progress;
            self.tx.send_replace(p);
        }
        Ok(n)
    }

    /// Appends `data`, dropping whatever would pass the cap, and tells followers.
    pub fn append(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let room = self.cap.saturating_sub(self.progress.len);
        let keep = data.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if keep > 0 {
            self.file.write_all(&data[..keep])?;
            self.progress.len += keep as u64;
        }
        if keep < data.len() {
            self.progress.truncated = true;
        }
        let p = self.progress;
        self.tx.send_replace(p);
        Ok(())
    }

    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// Marks the output complete: followers drain what is left and stop.
    pub fn finish(&mut self) {
        self.progress.finished = true;
        let p = self.progress;
        self.tx.send_replace(p);
    }
}

impl Drop for OutputWriter {
    fn drop(&mut self) {
        // Whatever happens to the job, followers must not wait forever.
        self.finish();
    }
}

/// A finished job's output, loaded after a restart: a channel that says "finished" with
/// the file's length.
pub fn finished_channel(len: u64, truncated: bool) -> watch::Sender<Progress> {
    watch::Sender::new(Progress {
        len,
        truncated,
        finished: true,
    })
}

/// One follower: its own file handle, offset and view of the progress channel.
pub struct OutputReader {
    file: File,
    offset: u64,
    follow: bool,
    rx: watch::Receiver<Progress>,
    chunk: usize,
}

impl OutputReader {
    /// Opens `path` for reading from `offset`. With `follow`, the reader waits for new
    /// output until the job ends; otherwise it stops at what exists when it catches up.
    pub fn open(
        path: &Path,
        rx: watch::Receiver<Progress>,
        offset: u64,
        follow: bool,
        chunk: usize,
    ) -> io::Result<Self> {
        Ok(Self {
            file: File::open(path)?,
            offset,
            follow,
            rx,
            chunk,
        })
    }

    /// Waits until there are bytes past the offset and returns how many to send next (at
    /// most one chunk), or `None` at the end. Checks that the file holds them, so a file
    /// cut under us is an error before anything of the chunk is sent.
    pub async fn next_len(&mut self) -> io::Result<Option<usize>> {
        loop {
            let p = *self.rx.borrow_and_update();
            if self.offset < p.len {
                let want = (p.len - self.offset).min(self.chunk as u64);
                if self.file.metadata()?.len() < self.offset + want {
                    // The file is shorter than published: it was removed or cut under us.
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "output file shorter than recorded",
                    ));
                }
                return Ok(Some(want as usize));
            }
            if p.finished || !self.follow {
                return Ok(None);
            }
            if self.rx.changed().await.is_err() {
                // The writer is gone: whatever was published last is all there is.
                let p = *self.rx.borrow();
                if self.offset >= p.len {
                    return Ok(None);
                }
            }
        }
    }

    /// Sends up to `len` bytes from the offset to `socket` with `sendfile` and advances
    /// past them; returns how many were sent. `WouldBlock` when the socket is full.
    pub fn send_to(&mut self, socket: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
        let n = sys::sendfile(socket, self.file.as_fd(), self.offset, len)?;
        if n == 0 && len > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "output file shorter than recorded",
            ));
        }
        self.offset += n as u64;
        Ok(n)
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// What a follower sends, read back from the other end of a real socket pair: each chunk
/// announced by `next_len` is sent with `sendfile` and must arrive whole.
#[cfg(test)]
async fn drain_through_socket(r: &mut OutputReader) -> Vec<u8> {
    use std::io::Read;
    let (tx, mut rx) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut out = Vec::new();
    while let Some(len) = r.next_len().await.unwrap() {
        assert!(len > 0, "an empty chunk");
        assert!(len <= r.chunk, "a chunk over the limit");
        let mut left = len;
        while left > 0 {
            let n = r.send_to(tx.as_fd(), left).unwrap();
            assert!(n > 0 && n <= left);
            let mut got = vec![0u8; n];
            rx.read_exact(&mut got).unwrap();
            out.extend_from_slice(&got);
            left -= n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn drain(r: &mut OutputReader) -> Vec<u8> {
        drain_through_socket(r).await
    }

    #[tokio::test]
    async fn followers_from_any_offset_get_exactly_the_bytes_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut w = OutputWriter::create(&path, 1 << 20).unwrap();
        let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        let mut early = OutputReader::open(&path, w.sender().subscribe(), 0, true, 4096).unwrap();
        let task = tokio::spawn(async move { drain(&mut early).await });
        for part in data.chunks(7777) {
            w.append(part).unwrap();
        }
        let mut mid =
            OutputReader::open(&path, w.sender().subscribe(), 123_457, true, 65536).unwrap();
        w.finish();
        assert_eq!(task.await.unwrap(), data);
        assert_eq!(drain(&mut mid).await, &data[123_457..]);
        let mut past =
            OutputReader::open(&path, w.sender().subscribe(), 1 << 30, true, 10).unwrap();
        assert_eq!(drain(&mut past).await, b"");
    }

    #[tokio::test]
    async fn the_cap_drops_later_bytes_and_marks_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut w = OutputWriter::create(&path, 10).unwrap();
        w.append(b"0123456").unwrap();
        assert!(!w.progress().truncated);
        w.append(b"789abc").unwrap();
        w.append(b"more").unwrap();
        assert_eq!(
            w.progress(),
            Progress {
                len: 10,
                truncated: true,
                finished: false
            }
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789");
    }

    #[test]
    fn splicing_from_a_pipe_keeps_its_bytes_up_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut w = OutputWriter::create(&path, 10).unwrap();
        let (r, mut tx) = std::io::pipe().unwrap();
        let e = w.splice_from(r.as_fd(), 1 << 20).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "an empty pipe");
        tx.write_all(b"0123").unwrap();
        assert_eq!(w.splice_from(r.as_fd(), 1 << 20).unwrap(), 4);
        tx.write_all(b"456789abcdef").unwrap();
        assert_eq!(w.splice_from(r.as_fd(), 3).unwrap(), 3, "at most max");
        assert_eq!(
            w.splice_from(r.as_fd(), 1 << 20).unwrap(),
            3,
            "up to the cap"
        );
        assert!(!w.has_room());
        assert_eq!(w.splice_from(r.as_fd(), 1 << 20).unwrap(), 0, "no room");
        assert_eq!(
            w.progress(),
            Progress {
                len: 10,
                truncated: false,
                finished: false
            }
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789");
        // What the cap refused is still in the pipe, for the caller to drop.
        w.append(b"abcdef").unwrap();
        assert!(w.progress().truncated);

        let mut w = OutputWriter::create(&path, 100).unwrap();
        tx.write_all(b"xyz").unwrap();
        drop(tx);
        assert_eq!(
            w.splice_from(r.as_fd(), 1 << 20).unwrap(),
            9,
            "the rest, then..."
        );
        assert_eq!(
            w.splice_from(r.as_fd(), 1 << 20).unwrap(),
            0,
            "...the pipe's end"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdefxyz");
    }

    #[tokio::test]
    async fn a_file_cut_under_a_follower_is_an_error_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut w = OutputWriter::create(&path, 100).unwrap();
        w.append(b"abcdef").unwrap();
        let mut r = OutputReader::open(&path, w.sender().subscribe(), 2, true, 64).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(3)
            .unwrap();
        let e = r.next_len().await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(r.offset(), 2);
    }

    #[tokio::test]
    async fn without_follow_a_reader_stops_at_what_exists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut w = OutputWriter::create(&path, 100).unwrap();
        w.append(b"hello").unwrap();
        let mut r = OutputReader::open(&path, w.sender().subscribe(), 1, false, 2).unwrap();
        assert_eq!(drain(&mut r).await, b"ello");
    }

    #[tokio::test]
    async fn dropping_the_writer_ends_followers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut w = OutputWriter::create(&path, 100).unwrap();
        w.append(b"abc").unwrap();
        let mut r = OutputReader::open(&path, w.sender().subscribe(), 0, true, 64).unwrap();
        let task = tokio::spawn(async move { drain(&mut r).await });
        drop(w);
        assert_eq!(task.await.unwrap(), b"abc");
    }
}

/// Generated sequences of writes and followers: whatever the sizes, the cap, the start
/// offsets and the moment each follower starts, every follower reads exactly the bytes
/// kept from its offset on.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;

    #[derive(Debug, Clone)]
    struct Follower {
        /// Where it starts reading; may lie beyond the end.
        offset: u64,
        /// How many writes have happened when it starts: 0 is before the first, the
        /// number of writes is after the last, and one more is after `finish`.
        start: Index,
        follow: bool,
        chunk: usize,
    }

    fn follower() -> impl Strategy<Value = Follower> {
        (0u64..4000, any::<Index>(), any::<bool>(), 1usize..300).prop_map(
            |(offset, start, follow, chunk)| Follower {
                offset,
                start,
                follow,
                chunk,
            },
        )
    }

    /// Byte `pos` of the output, tagged with the write that produced it so a byte from
    /// the wrong write or the wrong place shows.
    fn byte(pos: usize, write: usize) -> u8 {
        (pos % 251) as u8 ^ ((write as u8) << 4)
    }

    async fn drain(mut r: OutputReader) -> Vec<u8> {
        drain_through_socket(&mut r).await
    }

    fn run(writes: Vec<usize>, cap: Option<u64>, followers: Vec<Follower>, drop_writer: bool) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async move {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("out");
            let cap = cap.unwrap_or(u64::MAX);
            let mut w = Some(OutputWriter::create(&path, cap).unwrap());
            // What the engine keeps per job, and clones for each follower.
            let job_rx = w.as_ref().unwrap().sender().subscribe();
            let phases = writes.len() + 2;
            let mut all = Vec::new();
            let mut tasks = Vec::new();
            for phase in 0..phases {
                for f in followers.iter().filter(|f| f.start.index(phases) == phase) {
                    let r = OutputReader::open(&path, job_rx.clone(), f.offset, f.follow, f.chunk)
                        .unwrap();
                    if f.follow {
                        tasks.push((f.offset, tokio::spawn(drain(r))));
                    } else {
                        // Reads what exists now, right now.
                        let kept = all.len().min(usize::try_from(cap).unwrap_or(usize::MAX));
                        let from = (f.offset as usize).min(kept);
                        assert_eq!(drain(r).await, &all[from..kept], "{f:?} at {phase}");
                    }
                }
                if phase < writes.len() {
                    let data: Vec<u8> = (all.len()..all.len() + writes[phase])
                        .map(|pos| byte(pos, phase))
                        .collect();
                    w.as_mut().unwrap().append(&data).unwrap();
                    all.extend_from_slice(&data);
                } else if phase == writes.len() {
                    let mut writer = w.take().unwrap();
                    let p = writer.progress();
                    let kept = (all.len() as u64).min(cap);
                    assert_eq!(p.len, kept);
                    assert_eq!(p.truncated, all.len() as u64 > cap);
                    assert_eq!(std::fs::metadata(&path).unwrap().len(), kept);
                    if drop_writer {
                        drop(writer);
                    } else {
                        writer.finish();
                    }
                }
                // Let the followers that started run a little between writes.
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
            }
            let kept = all.len().min(usize::try_from(cap).unwrap_or(usize::MAX));
            for (offset, task) in tasks {
                let from = (offset as usize).min(kept);
                let got = task.await.unwrap();
                assert!(
                    got == all[from..kept],
                    "follower from {offset}: {} bytes, expected {}",
                    got.len(),
                    kept - from
                );
            }
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn every_follower_reads_exactly_the_bytes_kept_from_its_offset(
            writes in prop::collection::vec(prop_oneof![Just(0usize), 1usize..700], 0..12),
            cap in prop::option::of(1u64..3000),
            followers in prop::collection::vec(follower(), 0..6),
            drop_writer in any::<bool>(),
        ) {
            run(writes, cap, followers, drop_writer);
        }
    }
}
