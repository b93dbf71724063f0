//! The job engine end to end: a real executor on a real socket running real jobs.

use jobworker_protocol::validate::{MAX_ARGV_BYTES, MAX_ENV_BYTES};
use jobworker_protocol::*;
use jobworker_testkit::procfs::{job_processes, pid_ns, still_alive};
use jobworker_testkit::*;

#[tokio::test]
async fn echo_job_exits_zero_with_exactly_its_output() {
    if skip_unless_root("echo_job_exits_zero_with_exactly_its_output") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default());
    let mut c = exec.client().await;
    let id = c.run(&["echo", "hello", "world"]).await.unwrap();
    let (out, status) = c.wait(id).await;
    assert_eq!(out, b"hello world\n");
    assert_eq!(status.state, JobState::Exited);
    assert_eq!(status.exit_code, Some(0));
    assert_eq!(status.signal, None);
    assert_eq!(status.output_bytes, 12);
    assert!(!status.output_truncated);
    assert!(status.ended_at_ms.is_some());
    assert_eq!(status.owner, "alice");
}

#[tokio::test]
async fn stdout_and_stderr_are_kept_apart_and_exit_codes_are_exact() {
    if skip_unless_root("stdout_and_stderr_are_kept_apart_and_exit_codes_are_exact") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default());
    let mut c = exec.client().await;
    let id = c
        .run(&["sh", "-c", "echo out1; echo err1 >&2; echo out2; exit 7"])
        .await
        .unwrap();
    let got = c.output(id, 0, true).await;
    assert_eq!(got.stdout, b"out1\nout2\n");
    assert_eq!(got.stderr, b"err1\n");
    let status = got.end.unwrap();
    assert_eq!(status.output_bytes, 15);
    assert_eq!(status.state, JobState::Exited);
    assert_eq!(status.exit_code, Some(7));

    let id = c.run(&["sh", "-c", "kill -9 $$"]).await.unwrap();
    let (_, status) = c.wait(id).await;
    assert_eq!(status.state, JobState::Signaled);
    assert_eq!(status.signal, Some(9));
    assert_eq!(status.exit_code, None);
}

#[tokio::test]
async fn a_missing_command_fails_to_start_with_a_clear_message() {
    if skip_unless_root("a_missing_command_fails_to_start_with_a_clear_message") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default());
    let mut c = exec.client().await;
    let e = c.run(&["no-such-command-xyz"]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::FailedToStart);
    assert!(
        e.message
            .contains("command not found: \"no-such-command-xyz\""),
        "{}",
        e.message
    );
    let e = c.run(&["/nonexistent/path/tool"]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::FailedToStart);
    assert!(
        e.message.contains("No such file or directory"),
        "{}",
        e.message
    );
    // The connection and the executor keep serving.
    let id = c.run(&["true"]).await.unwrap();
    assert_eq!(c.wait(id).await.1.exit_code, Some(0));
}

#[tokio::test]
async fn unknown_ids_are_not_found() {
    if skip_unless_root("unknown_ids_are_not_found") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default());
    let mut c = exec.client().await;
    let ghost = JobId::from_bytes([0x42; 16]);
    assert_eq!(c.status(ghost).await.unwrap_err().kind, ErrorKind::NotFound);
    assert_eq!(c.stop(ghost).await.unwrap_err().kind, ErrorKind::NotFound);
    let s = c.output(ghost, 0, true).await;
    assert_eq!(s.end.unwrap_err().kind, ErrorKind::NotFound);
}

#[tokio::test]
async fn another_owners_job_is_not_found() {
    if skip_unless_root("another_owners_job_is_not_found") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default());
    let mut c = exec.client().await;
    let id = c.start("alice", spec(&["true"])).await.unwrap();
    c.wait(id).await;
    let bob = Scope::Owner("bob".into());
    match c
        .call(Request::Status {
            scope: bob.clone(),
            id,
        })
        .await
    {
        Response::Error(e) => {
            assert_eq!(e.kind, ErrorKind::NotFound);
            assert_eq!(e.message, format!("no job {id}"));
        }
        other => panic!("{other:?}"),
    }
    match c
        .call(Request::List {
            scope: bob,
            after: None,
            limit: 10,
            filter: Default::default(),
        })
        .await
    {
        Response::Jobs { jobs, next_after } => {
            assert!(jobs.is_empty());
            assert_eq!(next_after, None);
        }
        other => panic!("{other:?}"),
    }
    match c
        .call(Request::List {
            scope: Scope::Owner("alice".into()),
            after: None,
            limit: 10,
            filter: Default::default(),
        })
        .await
    {
        Response::Jobs { jobs, .. } => {
            assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id])
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn list_pages_in_start_order() {
    if skip_unless_root("list_pages_in_start_order") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default());
    let mut c = exec.client().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let id = c.run(&["true"]).await.unwrap();
        c.wait(id).await;
        ids.push(id);
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        match c
            .call(Request::List {
                scope: Scope::Any,
                after,
                limit: 2,
                filter: Default::default(),
            })
            .await
        {
            Response::Jobs { jobs, next_after } => {
                assert!(jobs.len() <= 2);
                seen.extend(jobs.iter().map(|j| j.id));
                match next_after {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, ids);
}

#[tokio::test]
async fn three_followers_started_at_different_moments_get_identical_output() {
    if skip_unless_root("three_followers_started_at_different_moments_get_identical_output") {
        return;
    }
    const LEN: usize = 10 * 1024 * 1024;
    let exec = Executor::start(ExecutorOptions::default());
    let mut gate = Gate::new();
    let mut c = exec.client().await;
    let gate_path = gate.path.to_string_lossy().into_owned();
    let id = c
        .run(&[&probe(), "pattern", &LEN.to_string(), &gate_path])
        .await
        .unwrap();

    // Follower 1 starts before the job has written anything.
    let (half_tx, half_rx) = tokio::sync::oneshot::channel();
    let mut f1 = exec.client().await.into_inner();
    let first = tokio::spawn(async move {
        use futures::{SinkExt, StreamExt};
        f1.send(Request::Output {
            scope: Scope::Any,
            id,
            from: OutputFrom::Offset(0),
            streams: Streams::BOTH,
            follow: true,
        })
        .await
        .unwrap();
        let mut bytes = Vec::new();
        let mut half_tx = Some(half_tx);
        loop {
            match f1.next().await.unwrap().unwrap() {
                Response::Chunk(_, c) => {
                    bytes.extend_from_slice(&c);
                    if bytes.len() >= LEN / 2
                        && let Some(tx) = half_tx.take()
                    {
                        let _ = tx.send(());
                    }
                }
                Response::End(s) => return (bytes, *s),
                other => panic!("{other:?}"),
            }
        }
    });
    gate.open(); // first half
    half_rx.await.unwrap();
    // Follower 2 starts mid-way: the job is blocked after exactly half.
    let mut f2 = exec.client().await;
    let second = tokio::spawn(async move { f2.wait(id).await });
    gate.open(); // second half
    let (b1, s1) = first.await.unwrap();
    let (b2, s2) = second.await.unwrap();
    // Follower 3 starts after the job ended.
    let (b3, s3) = c.wait(id).await;
    let expected = pattern(LEN);
    for (n, b) in [(1, &b1), (2, &b2), (3, &b3)] {
        assert_eq!(b.len(), LEN, "follower {n} length");
        assert!(b == &expected, "follower {n} bytes differ");
    }
    for s in [&s1, &s2, &s3] {
        assert_eq!(s.state, JobState::Exited);
        assert_eq!(s.exit_code, Some(0));
        assert_eq!(s.output_bytes, LEN as u64);
    }
    // Non-following readers from arbitrary offsets see the same bytes.
    let part = c.output(id, 1_000_003, false).await;
    assert!(part.bytes == expected[1_000_003..]);
}

#[tokio::test]
async fn stop_kills_the_whole_process_tree() {
    if skip_unless_root("stop_kills_the_whole_process_tree") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default());
    let mut c = exec.client().await;
    let id = c
        .run(&["sh", "-c", "sleep 1000 & sleep 1000 & echo ready; wait"])
        .await
        .unwrap();
    let ns = pid_ns(exec.init_pid(id));
    exec.client().await.wait_for_output(id, b"ready").await;
    // The init, the shell and both sleeps.
    let procs = job_processes(&ns);
    assert_eq!(procs.len(), 4, "{procs:?}");
    let s = c.stop(id).await.unwrap();
    assert_eq!(s.state, JobState::Stopped);
    assert_eq!(s.signal, Some(15));
    assert_eq!(
        still_alive(&procs),
        vec![],
        "no process of the job survives"
    );
    // Stop is idempotent and reports the same final status.
    let again = c.stop(id).await.unwrap();
    assert_eq!(again, s);
}

#[tokio::test]
async fn the_largest_arguments_and_environment_allowed_reach_the_command_intact() {
    if skip_unless_root("the_largest_arguments_and_environment_allowed_reach_the_command_intact") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default());
    let mut c = exec.client().await;
    // Close to both caps, so the init's spec (JSON) is several times a pipe's default
    // 64 KiB; each byte is checked, not only the lengths.
    let script = "printf %s \"$1\" | tr -d a | wc -c; printf %s \"$1\" | wc -c; \
                  printf %s \"$BIG\" | tr -d b | wc -c; printf %s \"$BIG\" | wc -c";
    let arg = "a".repeat(MAX_ARGV_BYTES - script.len() - 64);
    let big = "b".repeat(MAX_ENV_BYTES - 64);
    let spec = JobSpec {
        argv: vec![
            "sh".into(),
            "-c".into(),
            script.into(),
            "x".into(),
            arg.clone(),
        ],
        env: vec![EnvVar {
            name: "BIG".into(),
            value: big.clone(),
        }],
        ..Default::default()
    };
    let id = c.start("alice", spec).await.unwrap();
    let (out, status) = c.wait(id).await;
    assert_eq!(status.exit_code, Some(0), "{status:?}");
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("0\n{}\n0\n{}\n", arg.len(), big.len())
    );
}
