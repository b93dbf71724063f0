//! The output store against a temporary directory, with every follower reading through a
//! real socket pair, as the server does.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;

use jobworker_protocol::{Stream, Streams};

use super::*;

/// What a follower sends, read back from the other end of a real socket pair: each chunk
/// announced by `next_chunk` is sent with `sendfile` and must arrive whole.
async fn drain(r: &mut OutputReader, chunk: usize) -> Vec<(Stream, Vec<u8>)> {
    let (tx, mut rx) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut out: Vec<(Stream, Vec<u8>)> = Vec::new();
    while let Some((stream, len)) = r.next_chunk().await.unwrap() {
        assert!(len > 0, "an empty chunk");
        assert!(len <= chunk, "a chunk over the limit");
        let mut left = len;
        while left > 0 {
            let n = r.send_to(tx.as_fd(), left).unwrap();
            assert!(n > 0 && n <= left);
            let mut got = vec![0u8; n];
            rx.read_exact(&mut got).unwrap();
            match out.last_mut() {
                Some((s, bytes)) if *s == stream => bytes.extend_from_slice(&got),
                _ => out.push((stream, got)),
            }
            left -= n;
        }
    }
    out
}

/// The bytes of one stream in what a follower received.
fn of(got: &[(Stream, Vec<u8>)], stream: Stream) -> Vec<u8> {
    got.iter()
        .filter(|(s, _)| *s == stream)
        .flat_map(|(_, b)| b.clone())
        .collect()
}

fn reader(
    dir: &Path,
    w: &OutputWriter,
    start: Start,
    streams: Streams,
    chunk: usize,
) -> OutputReader {
    OutputReader::open(dir, w.sender().subscribe(), start, streams, true, chunk).unwrap()
}

const OUT: Stream = Stream::Stdout;
const ERR: Stream = Stream::Stderr;

#[tokio::test]
async fn each_byte_stays_on_its_stream_in_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = OutputWriter::create(dir.path(), 1 << 20).unwrap();
    let mut early = reader(dir.path(), &w, Start::Offset(0), Streams::BOTH, 4096);
    let task = tokio::spawn(async move { drain(&mut early, 4096).await });
    w.append(OUT, b"one\n").unwrap();
    w.append(OUT, b"two\n").unwrap();
    w.append(ERR, b"oops\n").unwrap();
    w.append(OUT, b"three\n").unwrap();
    w.finish();
    let want = vec![
        (OUT, b"one\ntwo\n".to_vec()),
        (ERR, b"oops\n".to_vec()),
        (OUT, b"three\n".to_vec()),
    ];
    assert_eq!(task.await.unwrap(), want);
    // Three runs: two records in the index file, and the last, written at the finish.
    let p = w.progress();
    assert_eq!((p.len, p.records, p.last), (19, 3, None));
    assert_eq!(
        std::fs::read(dir.path().join("stdout")).unwrap(),
        b"one\ntwo\nthree\n"
    );
    assert_eq!(std::fs::read(dir.path().join("stderr")).unwrap(), b"oops\n");
    // A reader after the end, from an offset inside a run, and of one stream only.
    let mut mid = reader(dir.path(), &w, Start::Offset(6), Streams::BOTH, 3);
    assert_eq!(
        drain(&mut mid, 3).await,
        vec![
            (OUT, b"o\n".to_vec()),
            (ERR, b"oops\n".to_vec()),
            (OUT, b"three\n".to_vec())
        ]
    );
    let only_err = Streams {
        stdout: false,
        stderr: true,
    };
    let mut err = reader(dir.path(), &w, Start::Offset(0), only_err, 64);
    assert_eq!(drain(&mut err, 64).await, vec![(ERR, b"oops\n".to_vec())]);
    let mut past = reader(dir.path(), &w, Start::Offset(1 << 30), Streams::BOTH, 10);
    assert_eq!(drain(&mut past, 10).await, vec![]);
}

#[tokio::test]
async fn tail_starts_at_the_last_lines_of_the_chosen_streams() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = OutputWriter::create(dir.path(), 1 << 20).unwrap();
    w.append(OUT, b"a1\na2\n").unwrap();
    w.append(ERR, b"e1\n").unwrap();
    w.append(OUT, b"a3\na4").unwrap();
    w.finish();
    let tail = |n, streams| {
        let mut r = reader(dir.path(), &w, Start::TailLines(n), streams, 100);
        async move { drain(&mut r, 100).await }
    };
    // The last line has no newline: it is one of the lines.
    assert_eq!(tail(1, Streams::BOTH).await, vec![(OUT, b"a4".to_vec())]);
    assert_eq!(
        tail(3, Streams::BOTH).await,
        vec![(ERR, b"e1\n".to_vec()), (OUT, b"a3\na4".to_vec())]
    );
    let only_out = Streams {
        stdout: true,
        stderr: false,
    };
    assert_eq!(tail(3, only_out).await, vec![(OUT, b"a2\na3\na4".to_vec())]);
    assert_eq!(tail(0, Streams::BOTH).await, vec![]);
    assert_eq!(of(&tail(100, Streams::BOTH).await, OUT), b"a1\na2\na3\na4");
    // A trailing newline ends the last line rather than starting another.
    let dir2 = tempfile::tempdir().unwrap();
    let mut w2 = OutputWriter::create(dir2.path(), 1 << 20).unwrap();
    w2.append(OUT, b"x\ny\nz\n").unwrap();
    let mut r = reader(dir2.path(), &w2, Start::TailLines(2), Streams::BOTH, 100);
    w2.finish();
    assert_eq!(drain(&mut r, 100).await, vec![(OUT, b"y\nz\n".to_vec())]);
}

#[tokio::test]
async fn the_cap_counts_the_index_and_drops_later_bytes() {
    let dir = tempfile::tempdir().unwrap();
    // Room for two runs' records and 8 bytes of data.
    let cap = 2 * ENTRY_LEN + 8;
    let mut w = OutputWriter::create(dir.path(), cap).unwrap();
    w.append(OUT, b"0123").unwrap();
    w.append(ERR, b"ab").unwrap();
    assert!(!w.progress().truncated);
    // A third run would need a record: only what fits in the second's stream goes on.
    assert_eq!(w.room(OUT), 0);
    assert_eq!(w.room(ERR), 2);
    w.append(ERR, b"cdef").unwrap();
    w.append(OUT, b"more").unwrap();
    let p = w.progress();
    assert_eq!((p.len, p.truncated), (8, true));
    assert_eq!(std::fs::read(dir.path().join("stdout")).unwrap(), b"0123");
    assert_eq!(std::fs::read(dir.path().join("stderr")).unwrap(), b"abcd");
}

#[test]
fn splicing_from_a_pipe_keeps_its_bytes_up_to_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = OutputWriter::create(dir.path(), ENTRY_LEN + 10).unwrap();
    let (r, mut tx) = std::io::pipe().unwrap();
    let e = w.splice_from(OUT, r.as_fd(), 1 << 20).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "an empty pipe");
    tx.write_all(b"0123").unwrap();
    assert_eq!(w.splice_from(OUT, r.as_fd(), 1 << 20).unwrap(), 4);
    tx.write_all(b"456789abcdef").unwrap();
    assert_eq!(w.splice_from(OUT, r.as_fd(), 3).unwrap(), 3, "at most max");
    assert_eq!(
        w.splice_from(OUT, r.as_fd(), 1 << 20).unwrap(),
        3,
        "up to the cap"
    );
    assert_eq!(w.room(OUT), 0);
    assert_eq!(
        w.splice_from(OUT, r.as_fd(), 1 << 20).unwrap(),
        0,
        "no room"
    );
    let p = w.progress();
    assert_eq!((p.len, p.truncated, p.finished), (10, false, false));
    assert_eq!(
        std::fs::read(dir.path().join("stdout")).unwrap(),
        b"0123456789"
    );
    drop(tx);
    // What the cap refused is still in the pipe, for the caller to drop.
    let mut rest = Vec::new();
    std::fs::File::from(std::os::fd::OwnedFd::from(r))
        .read_to_end(&mut rest)
        .unwrap();
    assert_eq!(rest, b"abcdef");
}

#[tokio::test]
async fn a_file_cut_under_a_follower_is_an_error_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = OutputWriter::create(dir.path(), 100).unwrap();
    w.append(OUT, b"abcdef").unwrap();
    let mut r = reader(dir.path(), &w, Start::Offset(2), Streams::BOTH, 64);
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("stdout"))
        .unwrap()
        .set_len(3)
        .unwrap();
    let e = r.next_chunk().await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    assert_eq!(r.offset(), 2);
}

#[tokio::test]
async fn without_follow_a_reader_stops_at_what_exists() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = OutputWriter::create(dir.path(), 100).unwrap();
    w.append(OUT, b"hello").unwrap();
    let mut r = OutputReader::open(
        dir.path(),
        w.sender().subscribe(),
        Start::Offset(1),
        Streams::BOTH,
        false,
        2,
    )
    .unwrap();
    assert_eq!(drain(&mut r, 2).await, vec![(OUT, b"ello".to_vec())]);
}

#[tokio::test]
async fn dropping_the_writer_ends_followers() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = OutputWriter::create(dir.path(), 100).unwrap();
    w.append(ERR, b"abc").unwrap();
    let mut r = reader(dir.path(), &w, Start::Offset(0), Streams::BOTH, 64);
    let task = tokio::spawn(async move { drain(&mut r, 64).await });
    drop(w);
    assert_eq!(task.await.unwrap(), vec![(ERR, b"abc".to_vec())]);
}

#[tokio::test]
async fn a_job_recorded_by_an_earlier_release_reads_as_stdout() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(LEGACY_FILE), b"out and err, merged\n").unwrap();
    let p = load(dir.path(), false).unwrap();
    assert_eq!((p.len, p.finished, p.records), (20, true, 0));
    let tx = finished_channel(p);
    let mut r = OutputReader::open(
        dir.path(),
        tx.subscribe(),
        Start::Offset(4),
        Streams::BOTH,
        true,
        8,
    )
    .unwrap();
    assert_eq!(
        drain(&mut r, 8).await,
        vec![(OUT, b"and err, merged\n".to_vec())]
    );
    let mut t = OutputReader::open(
        dir.path(),
        tx.subscribe(),
        Start::TailLines(1),
        Streams::BOTH,
        true,
        64,
    )
    .unwrap();
    assert_eq!(
        drain(&mut t, 64).await,
        vec![(OUT, b"out and err, merged\n".to_vec())]
    );
    // An earlier release's job with no output at all.
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join(LEGACY_FILE), b"").unwrap();
    assert_eq!(load(empty.path(), false).unwrap().len, 0);
}

#[tokio::test]
async fn a_job_that_ended_without_its_last_record_is_rebuilt_from_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = OutputWriter::create(dir.path(), 1 << 20).unwrap();
    w.append(OUT, b"first\n").unwrap();
    w.append(ERR, b"second\n").unwrap();
    // The executor dies here: the index holds the stdout run only.
    std::mem::forget(w);
    let p = load(dir.path(), false).unwrap();
    assert_eq!((p.len, p.records, p.last, p.finished), (13, 2, None, true));
    let tx = finished_channel(p);
    let mut r = OutputReader::open(
        dir.path(),
        tx.subscribe(),
        Start::Offset(0),
        Streams::BOTH,
        true,
        64,
    )
    .unwrap();
    assert_eq!(
        drain(&mut r, 64).await,
        vec![(OUT, b"first\n".to_vec()), (ERR, b"second\n".to_vec())]
    );
    // Loading again finds nothing more to add.
    assert_eq!(load(dir.path(), false).unwrap().records, 2);
}

/// Generated sequences of writes to both streams and followers: whatever the sizes, the
/// cap, the start offsets, the streams chosen and the moment each follower starts, every
/// follower reads exactly the bytes kept from its offset on, each on its own stream.
mod props {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;

    #[derive(Debug, Clone)]
    struct Follower {
        offset: u64,
        /// How many writes have happened when it starts (one more: after `finish`).
        start: Index,
        follow: bool,
        chunk: usize,
        streams: (bool, bool),
    }

    fn follower() -> impl Strategy<Value = Follower> {
        (
            0u64..4000,
            any::<Index>(),
            any::<bool>(),
            1usize..300,
            any::<(bool, bool)>(),
        )
            .prop_map(|(offset, start, follow, chunk, streams)| Follower {
                offset,
                start,
                follow,
                chunk,
                streams,
            })
    }

    /// Byte `pos` of the output, tagged with the write that produced it.
    fn byte(pos: usize, write: usize) -> u8 {
        (pos % 251) as u8 ^ ((write as u8) << 4)
    }

    /// What a follower from `offset` selecting `streams` should get of `kept` (each
    /// byte with its stream, in order).
    fn expected(kept: &[(Stream, u8)], offset: u64, streams: Streams) -> Vec<(Stream, Vec<u8>)> {
        let mut out: Vec<(Stream, Vec<u8>)> = Vec::new();
        for &(s, b) in kept.iter().skip(offset as usize) {
            if !streams.has(s) {
                continue;
            }
            match out.last_mut() {
                Some((last, bytes)) if *last == s => bytes.push(b),
                _ => out.push((s, vec![b])),
            }
        }
        out
    }

    fn run(writes: Vec<(bool, usize)>, cap: Option<u64>, followers: Vec<Follower>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async move {
            let dir = tempfile::tempdir().unwrap();
            let cap = cap.unwrap_or(u64::MAX);
            let mut w = Some(OutputWriter::create(dir.path(), cap).unwrap());
            let job_rx = w.as_ref().unwrap().sender().subscribe();
            let phases = writes.len() + 2;
            // Every byte kept, with its stream.
            let mut kept: Vec<(Stream, u8)> = Vec::new();
            let mut written = 0usize;
            let mut tasks = Vec::new();
            for phase in 0..phases {
                for f in followers.iter().filter(|f| f.start.index(phases) == phase) {
                    let streams = Streams {
                        stdout: f.streams.0,
                        stderr: f.streams.1,
                    };
                    let mut r = OutputReader::open(
                        dir.path(),
                        job_rx.clone(),
                        Start::Offset(f.offset),
                        streams,
                        f.follow,
                        f.chunk,
                    )
                    .unwrap();
                    let chunk = f.chunk;
                    if f.follow {
                        let task = tokio::spawn(async move { drain(&mut r, chunk).await });
                        tasks.push((f.offset, streams, task));
                    } else {
                        let got = drain(&mut r, chunk).await;
                        assert_eq!(got, expected(&kept, f.offset, streams), "{f:?} at {phase}");
                    }
                }
                if phase < writes.len() {
                    let (to_err, len) = writes[phase];
                    let stream = if to_err { ERR } else { OUT };
                    let data: Vec<u8> = (written..written + len).map(|p| byte(p, phase)).collect();
                    written += len;
                    let writer = w.as_mut().unwrap();
                    let room = writer.room(stream) as usize;
                    writer.append(stream, &data).unwrap();
                    kept.extend(data.iter().take(room).map(|&b| (stream, b)));
                } else if phase == writes.len() {
                    let mut writer = w.take().unwrap();
                    let p = writer.progress();
                    assert_eq!(p.len, kept.len() as u64);
                    assert!(p.len + ENTRY_LEN * p.record_count() <= cap);
                    writer.finish();
                }
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
            }
            for (offset, streams, task) in tasks {
                assert_eq!(
                    task.await.unwrap(),
                    expected(&kept, offset, streams),
                    "from {offset}"
                );
            }
            // What a restart loads is what was kept.
            let p = load(dir.path(), false).unwrap();
            assert_eq!(p.len, kept.len() as u64);
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_follower_reads_exactly_the_bytes_kept_on_their_streams(
            writes in prop::collection::vec((any::<bool>(), prop_oneof![Just(0usize), 1usize..700]), 0..12),
            cap in prop::option::of(1u64..3000),
            followers in prop::collection::vec(follower(), 0..6),
        ) {
            run(writes, cap, followers);
        }
    }
}
