//! The executor's socket under hostile or excessive use: peers, frames, caps, restarts.

use std::time::Duration;

use jobworker_protocol::codec::HandshakeError;
use jobworker_protocol::*;
use jobworker_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Reads until the executor closes the connection (EOF, or a reset because our bytes
/// were left unread), with a deadline, and returns what arrived.
async fn read_to_eof(s: &mut UnixStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the executor should close the connection");
    match r {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("read: {e}"),
    }
    buf
}

#[tokio::test]
async fn a_peer_that_is_not_allowed_is_dropped_before_its_request_is_read() {
    if skip_unless_root("a_peer_that_is_not_allowed_is_dropped_before_its_request_is_read") {
        return;
    }
    // Only uid 4242 may connect; this test runs as root.
    let exec = Executor::start(ExecutorOptions {
        allow_uids: vec![4242],
        ..Default::default()
    });
    let mut s = UnixStream::connect(&exec.socket).await.unwrap();
    let hello = codec::encode(&Request::Hello {
        version: PROTOCOL_VERSION,
    })
    .unwrap();
    let mut frame = (hello.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&hello);
    let _ = s.write_all(&frame).await;
    assert_eq!(read_to_eof(&mut s).await, b"", "no byte may be answered");
    let line = exec.wait_log("peer not allowed", Duration::from_secs(10));
    assert!(line.contains("uid=0"), "{line}");
}

#[tokio::test]
async fn bad_frames_close_only_their_connection() {
    if skip_unless_root("bad_frames_close_only_their_connection") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default());
    // A well-behaved client, connected before the others misbehave.
    let mut good = exec.client().await;

    // An oversized length prefix (4 GiB) right after a valid handshake.
    let mut big = exec.client().await.into_inner().into_inner().into_inner();
    big.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    assert_eq!(read_to_eof(&mut big).await, b"");
    exec.wait_log("bad frame", Duration::from_secs(10));

    // Garbage instead of a handshake.
    let mut junk = UnixStream::connect(&exec.socket).await.unwrap();
    junk.write_all(&[0, 0, 0, 5, 0xde, 0xad, 0xbe, 0xef, 0x99])
        .await
        .unwrap();
    assert_eq!(read_to_eof(&mut junk).await, b"");
    exec.wait_log("handshake", Duration::from_secs(10));

    // Garbage after a valid handshake.
    let mut junk2 = exec.client().await.into_inner().into_inner().into_inner();
    junk2
        .write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert_eq!(read_to_eof(&mut junk2).await, b"");

    // The good client is still served.
    let id = good.run(&["echo", "still here"]).await.unwrap();
    assert_eq!(good.wait(id).await.0, b"still here\n");
}

#[tokio::test]
async fn a_wrong_protocol_version_is_refused() {
    if skip_unless_root("a_wrong_protocol_version_is_refused") {
        return;
    }
    use futures::{SinkExt, StreamExt};
    let exec = Executor::start(ExecutorOptions::default());
    let s = UnixStream::connect(&exec.socket).await.unwrap();
    let mut t = client_transport(s);
    t.send(Request::Hello {
        version: PROTOCOL_VERSION + 1,
    })
    .await
    .unwrap();
    match t.next().await.unwrap().unwrap() {
        Response::Error(e) => assert_eq!(e.kind, ErrorKind::VersionMismatch),
        other => panic!("{other:?}"),
    }
    assert!(t.next().await.is_none(), "the connection is closed");
}

#[tokio::test]
async fn over_the_running_jobs_cap_start_is_resource_exhausted() {
    if skip_unless_root("over_the_running_jobs_cap_start_is_resource_exhausted") {
        return;
    }
    let exec = Executor::start(ExecutorOptions {
        extra: vec!["--max-running-jobs".into(), "1".into()],
        ..Default::default()
    });
    let mut c = exec.client().await;
    let id = c.run(&["sleep", "1000"]).await.unwrap();
    let e = c.run(&["true"]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::ResourceExhausted);
    assert_eq!(
        e.message,
        "1 jobs are running, the most this executor allows"
    );
    c.stop(id).await.unwrap();
    // The slot is free again once the job has ended.
    let id = c.run(&["true"]).await.unwrap();
    assert_eq!(c.wait(id).await.1.exit_code, Some(0));
}

#[tokio::test]
async fn a_job_seen_to_end_has_already_freed_its_running_slot() {
    if skip_unless_root("a_job_seen_to_end_has_already_freed_its_running_slot") {
        return;
    }
    let exec = Executor::start(ExecutorOptions {
        extra: vec!["--max-running-jobs".into(), "1".into()],
        ..Default::default()
    });
    let mut c = exec.client().await;
    // Each start comes right after the previous job's end frame: never refused.
    for _ in 0..10 {
        let id = c.run(&["true"]).await.unwrap();
        assert_eq!(c.wait(id).await.1.exit_code, Some(0));
    }
    // The same after a stop.
    for _ in 0..3 {
        let id = c.run(&["sleep", "1000"]).await.unwrap();
        assert_eq!(c.stop(id).await.unwrap().state, JobState::Stopped);
    }
    let id = c.run(&["true"]).await.unwrap();
    assert_eq!(c.wait(id).await.1.exit_code, Some(0));
}

#[tokio::test]
async fn over_the_connection_cap_a_client_is_told_so() {
    if skip_unless_root("over_the_connection_cap_a_client_is_told_so") {
        return;
    }
    let exec = Executor::start(ExecutorOptions {
        extra: vec![
            "--max-connections".into(),
            "1".into(),
            "--control-connections".into(),
            "0".into(),
        ],
        ..Default::default()
    });
    let mut first = exec.client().await;
    match ExecClient::connect(&exec.socket).await {
        Err(HandshakeError::Refused(e)) => {
            assert_eq!(e.kind, ErrorKind::ResourceExhausted);
            assert!(e.message.contains("1 connections"), "{}", e.message);
        }
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got a connection"),
    }
    // The first connection still works, and closing it frees the slot.
    let id = first.run(&["true"]).await.unwrap();
    first.wait(id).await;
    drop(first);
    // The executor frees the slot, then logs the close (the only connection closed in
    // this test: the refused one never had a slot).
    exec.wait_log("connection closed", std::time::Duration::from_secs(60));
    let mut again = ExecClient::connect(&exec.socket)
        .await
        .expect("the slot was freed");
    let id = again.run(&["true"]).await.unwrap();
    again.wait(id).await;
}

#[tokio::test]
async fn finished_jobs_survive_an_executor_restart() {
    if skip_unless_root("finished_jobs_survive_an_executor_restart") {
        return;
    }
    let mut exec = Executor::start(ExecutorOptions::default());
    let mut c = exec.client().await;
    let id = c
        .run(&["sh", "-c", "printf 'a\\0b\\377'; exit 3"])
        .await
        .unwrap();
    let (out, before) = c.wait(id).await;
    assert_eq!(out, b"a\0b\xff");
    drop(c);
    exec.restart();
    let mut c = exec.client().await;
    assert_eq!(c.status(id).await.unwrap(), before);
    let (out, after) = c.wait(id).await;
    assert_eq!(out, b"a\0b\xff");
    assert_eq!(after, before);
}

#[tokio::test]
async fn shutdown_stops_running_jobs_and_records_them() {
    if skip_unless_root("shutdown_stops_running_jobs_and_records_them") {
        return;
    }
    let mut exec = Executor::start(ExecutorOptions {
        extra: vec!["--stop-grace-ms".into(), "200".into()],
        ..Default::default()
    });
    let mut c = exec.client().await;
    // Ignores SIGTERM, so the grace period and SIGKILL are exercised too.
    let id = c
        .run(&[
            "sh",
            "-c",
            "trap '' TERM; echo up; while :; do sleep 1; done",
        ])
        .await
        .unwrap();
    // Only once the trap is in place does the job really ignore SIGTERM.
    exec.client().await.wait_for_output(id, b"up").await;
    let status = exec.terminate();
    assert!(status.success(), "{status:?}");
    drop(c);
    exec.restart();
    let mut c = exec.client().await;
    let s = c.status(id).await.unwrap();
    assert_eq!(s.state, JobState::Stopped);
    assert_eq!(s.signal, Some(9));
}

#[tokio::test]
async fn the_oldest_finished_jobs_are_deleted_beyond_the_retention_cap() {
    if skip_unless_root("the_oldest_finished_jobs_are_deleted_beyond_the_retention_cap") {
        return;
    }
    let exec = Executor::start(ExecutorOptions {
        extra: vec!["--max-finished-jobs".into(), "2".into()],
        ..Default::default()
    });
    let mut c = exec.client().await;
    let dir = |id: JobId| exec.state.join("jobs").join(id.to_string());
    // Deletion follows the end of the job that went over the cap, shortly after its
    // followers have seen that end; the executor logs it (at debug level).
    async fn gone(exec: &Executor, c: &mut ExecClient, id: JobId) {
        exec.wait_log(
            &format!("deleted a finished job beyond the retention cap job={id}"),
            Duration::from_secs(10),
        );
        assert_eq!(c.status(id).await.unwrap_err().kind, ErrorKind::NotFound);
        let dir = exec.state.join("jobs").join(id.to_string());
        assert!(!dir.exists(), "{}", dir.display());
    }

    // The oldest job is still running while three newer ones end.
    let long = c
        .run(&["sh", "-c", "echo up; exec sleep 60"])
        .await
        .unwrap();
    exec.client().await.wait_for_output(long, b"up").await;
    let mut ended = Vec::new();
    for i in 0..3 {
        let id = c.run(&["sh", "-c", &format!("echo {i}")]).await.unwrap();
        let (out, s) = c.wait(id).await;
        assert_eq!(out, format!("{i}\n").as_bytes());
        assert_eq!(s.state, JobState::Exited);
        ended.push(id);
    }
    // Three finished, two kept: the oldest finished one goes, the running one stays.
    gone(&exec, &mut c, ended[0]).await;
    for id in [long, ended[1], ended[2]] {
        c.status(id).await.unwrap();
        assert!(dir(id).join("status.json").is_file(), "{id}");
    }
    assert_eq!(c.status(long).await.unwrap().state, JobState::Running);

    // Once it ends, the formerly running job is the oldest finished one.
    assert_eq!(c.stop(long).await.unwrap().state, JobState::Stopped);
    gone(&exec, &mut c, long).await;
    for id in [ended[1], ended[2]] {
        assert_eq!(c.status(id).await.unwrap().state, JobState::Exited);
        let (out, _) = c.wait(id).await;
        assert!(!out.is_empty(), "{id}");
    }
}

#[tokio::test]
async fn streams_never_take_the_connections_kept_for_short_calls() {
    if skip_unless_root("streams_never_take_the_connections_kept_for_short_calls") {
        return;
    }
    // 10 connections, 4 of them kept for short calls: at most 6 streams.
    let exec = Executor::start(ExecutorOptions {
        extra: vec![
            "--max-connections".into(),
            "10".into(),
            "--control-connections".into(),
            "4".into(),
        ],
        ..Default::default()
    });
    let mut c = exec.client().await;
    let id = c
        .run(&["sh", "-c", "echo up; exec sleep 600"])
        .await
        .unwrap();
    // Nine followers try; six hold a stream, three are told why and leave.
    let mut followers = Vec::new();
    let mut refused = 0;
    for _ in 0..9 {
        let mut f = exec.client().await;
        f.request_output(id, OutputFrom::Offset(0), Streams::BOTH, true)
            .await;
        match f.next_chunk().await {
            Ok((Stream::Stdout, chunk)) => {
                assert_eq!(&chunk[..], b"up\n");
                followers.push(f);
            }
            Err(Response::Error(e)) => {
                assert_eq!(e.kind, ErrorKind::ResourceExhausted);
                assert!(e.message.contains("kept for short calls"), "{}", e.message);
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((followers.len(), refused), (6, 3));
    // Short calls still find a connection, however many streams are open: without the
    // reserve, the nine followers and the first client held all ten.
    let mut short = exec.client().await;
    assert_eq!(short.status(id).await.unwrap().state, JobState::Running);
    let stopped = short.stop(id).await.unwrap();
    assert_eq!(stopped.state, JobState::Stopped);
    // The followers see the end and give their slots back: a new stream is served.
    for mut f in followers {
        loop {
            match f.next_chunk().await {
                Ok(_) => {}
                Err(Response::End(s)) => {
                    assert_eq!(s.state, JobState::Stopped);
                    break;
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
    }
    let mut again = exec.client().await;
    let (out, end) = again.wait(id).await;
    assert_eq!(
        (out.as_slice(), end.state),
        (&b"up\n"[..], JobState::Stopped)
    );
}
