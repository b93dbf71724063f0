//! End to end, as root: the real `jobworker-executor` (root) on its real socket, the
//! real `jobworker-api` as `nobody` in front of it, and gRPC clients over TLS 1.3 with
//! certificates from a test PKI. Skipped, visibly, when not root.
//!
//! Executor flags these tests rely on: `--socket`, `--socket-group`, `--state-dir`,
//! `--allow-uid`, `--job-user`, `--cgroup-parent`; readiness is the log line
//! "executor ready" on its stderr.

use std::collections::HashSet;

use jobworker_proto::v1 as pb;
use jobworker_proto::v1::job_worker_client::JobWorkerClient;
use jobworker_proto::v1::stream_job_output_response::Event;
use jobworker_testkit::grpc::*;
use jobworker_testkit::*;
use rustls::{NamedGroup, ProtocolVersion};
use tokio::sync::oneshot;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_client_starts_a_job_gets_its_status_and_streams_its_output() {
    if skip_unless_root("valid_client_starts_a_job_gets_its_status_and_streams_its_output") {
        return;
    }
    let w = Stack::generated("e2e", ApiOptions::default().health_ms(200));
    let (channel, negotiated) = channel(w.api.addr, w.pki.client_config("alice"))
        .await
        .unwrap();
    let mut alice = JobWorkerClient::new(channel);
    let id = start_job(
        &mut alice,
        &[
            "sh",
            "-c",
            "printf 'hello\\n'; printf 'to stderr\\n' >&2; exit 3",
        ],
    )
    .await;
    assert_eq!(id.len(), 32);
    let (out, err, end) = finished_streams(&mut alice, &id).await;
    assert_eq!(
        (out.as_slice(), err.as_slice()),
        (&b"hello\n"[..], &b"to stderr\n"[..])
    );
    assert_eq!(end.state(), pb::JobState::Exited);
    assert_eq!(end.exit_code, Some(3));
    assert_eq!(end.output_bytes, (out.len() + err.len()) as u64);

    let status = alice
        .get_job_status(pb::GetJobStatusRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.id, id);
    assert_eq!(status.owner, "alice");
    assert_eq!(status.argv[0], "sh");
    assert_eq!(status.state(), pb::JobState::Exited);
    assert_eq!(status.exit_code, Some(3));
    assert!(status.started_at.is_some() && status.ended_at.is_some());
    assert!(status.limits.is_some(), "effective limits are reported");

    // From an offset, without following. Offsets count both streams in the order their
    // bytes reached the executor, which two pipes do not fix: either line may be first.
    let (all, _) = collect(stream(&mut alice, &id, 0, false).await.unwrap(), 0, None)
        .await
        .unwrap();
    assert!(
        all == b"hello\nto stderr\n" || all == b"to stderr\nhello\n",
        "{all:?}"
    );
    let (tail, _) = collect(stream(&mut alice, &id, 6, false).await.unwrap(), 0, None)
        .await
        .unwrap();
    assert_eq!(tail, all[6..]);

    let seen = negotiated.lock().unwrap().clone().unwrap();
    assert_eq!(seen.version, Some(ProtocolVersion::TLSv1_3));
    assert_eq!(seen.group, Some(NamedGroup::X25519MLKEM768));

    // Stopping a running job returns its status once it has ended.
    let id = start_job(&mut alice, &["sleep", "1000"]).await;
    let stopped = alice
        .stop_job(pb::StopJobRequest { id })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(stopped.state(), pb::JobState::Stopped);
    assert!(stopped.ended_at.is_some());

    // All of the above ran under the server's seccomp allow-list without one refusal.
    let log = w.api.log();
    assert!(log.contains("seccomp allow-list applied"), "{log}");
    assert!(!log.contains("Operation not permitted"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_users_jobs_are_not_found_and_not_listed_but_admins_see_all() {
    if skip_unless_root("other_users_jobs_are_not_found_and_not_listed_but_admins_see_all") {
        return;
    }
    let w = Stack::generated("authz", ApiOptions::default().health_ms(200));
    let gate = Gate::new();
    let gate_arg = format!("read x < {}", gate.path.display());
    let mut alice = w.client("alice").await;
    let mut bob = w.client("bob").await;
    let mut admin = w.client("admin").await;
    let id = start_job(&mut alice, &["sh", "-c", &gate_arg]).await;
    let missing = "0123456789abcdef0123456789abcdef".to_string();

    for target in [&id, &missing] {
        let e = bob
            .get_job_status(pb::GetJobStatusRequest { id: target.clone() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "status {target}");
        let e = bob
            .stop_job(pb::StopJobRequest { id: target.clone() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "stop {target}");
        let e = match stream(&mut bob, target, 0, true).await {
            Err(e) => e,
            Ok(s) => collect(s, 0, None).await.unwrap_err(),
        };
        assert_eq!(e.code(), Code::NotFound, "stream {target}");
        assert!(!e.message().contains("alice"), "{e:?}");
    }
    let bobs = bob
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(bobs.jobs.iter().all(|j| j.id != id && j.owner == "bob"));
    let e = bob
        .list_jobs(pb::ListJobsRequest {
            all: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    let alices = alice
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(alices.jobs.iter().any(|j| j.id == id));

    // The admin sees, lists and stops alice's job.
    let s = admin
        .get_job_status(pb::GetJobStatusRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(s.owner, "alice");
    let all = admin
        .list_jobs(pb::ListJobsRequest {
            all: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(all.jobs.iter().any(|j| j.id == id));
    let own = admin
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(own.jobs.iter().all(|j| j.id != id), "admin's own list");
    let stopped = admin
        .stop_job(pb::StopJobRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(stopped.state(), pb::JobState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_through_every_job_once() {
    if skip_unless_root("list_pages_through_every_job_once") {
        return;
    }
    let w = Stack::generated("pages", ApiOptions::default().health_ms(200));
    let mut carol = w.client("alice").await;
    let mut ids = HashSet::new();
    for _ in 0..5 {
        ids.insert(start_job(&mut carol, &["true"]).await);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = carol
            .list_jobs(pb::ListJobsRequest {
                all: false,
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.jobs.len() <= 2);
        seen.extend(page.jobs.into_iter().map(|j| j.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_streams_started_at_different_moments_get_identical_complete_output() {
    if skip_unless_root("three_streams_started_at_different_moments_get_identical_complete_output")
    {
        return;
    }
    let w = Stack::generated("streams", ApiOptions::default().health_ms(200));
    let mut gate = Gate::new();
    let script = format!(
        "seq 1 100000; read x < {}; seq 100001 200000",
        gate.path.display()
    );
    let first_half: Vec<u8> = (1..=100_000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let expected: Vec<u8> = (1..=200_000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();

    let mut alice = w.client("alice").await;
    let id = start_job(&mut alice, &["sh", "-c", &script]).await;

    // A: from the start, while the job is writing.
    let (a_progress, a_reached_gate) = oneshot::channel();
    let a = tokio::spawn(collect(
        stream(&mut alice, &id, 0, true).await.unwrap(),
        first_half.len(),
        Some(a_progress),
    ));
    // B: mid-way, once the first half exists and the job waits at the gate.
    a_reached_gate
        .await
        .expect("stream A reached the first half");
    let mut other_conn = w.client("alice").await;
    let b = tokio::spawn(collect(
        stream(&mut other_conn, &id, 0, true).await.unwrap(),
        0,
        None,
    ));
    gate.open();
    let (a_data, a_end) = a.await.unwrap().unwrap();
    // C: after the job has ended.
    let (c_data, c_end) = finished_output(&mut alice, &id).await;
    let (b_data, b_end) = b.await.unwrap().unwrap();

    assert_eq!(a_end.state(), pb::JobState::Exited);
    assert_eq!(a_end.exit_code, Some(0));
    assert_eq!(a_end.output_bytes, expected.len() as u64);
    for (name, data, end) in [
        ("A", &a_data, &a_end),
        ("B", &b_data, &b_end),
        ("C", &c_data, &c_end),
    ] {
        assert!(
            data == &expected,
            "stream {name}: {} bytes, differs",
            data.len()
        );
        assert_eq!(end.state(), pb::JobState::Exited, "stream {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_stream_leaves_no_executor_connection_behind() {
    if skip_unless_root("a_client_that_leaves_mid_stream_leaves_no_executor_connection_behind") {
        return;
    }
    // No periodic pings: every executor connection in this test is one we made.
    let w = Stack::generated("leave", ApiOptions::default().health_ms(600_000));
    let mut gate = Gate::new();
    let script = format!("echo ready; read x < {}; echo done", gate.path.display());
    let mut alice = w.client("alice").await;
    let id = start_job(&mut alice, &["sh", "-c", &script]).await;
    // Calls that finished left no connection.
    w.exec.wait_no_connections();

    let (channel, _) = channel(w.api.addr, w.pki.client_config("alice"))
        .await
        .unwrap();
    let mut leaver = JobWorkerClient::new(channel);
    let mut s = stream(&mut leaver, &id, 0, true).await.unwrap();
    let first = s.message().await.unwrap().unwrap();
    assert_eq!(first.event, Some(Event::Data(b"ready\n".to_vec().into())));
    // The stream's executor connection is open while the client reads.
    assert_eq!(w.exec.connections(), 1);

    // The client goes away mid-stream: stream, client and connection dropped.
    drop(s);
    drop(leaver);
    w.exec.wait_no_connections();

    // The job itself is unaffected, and the server still serves.
    let status = alice
        .get_job_status(pb::GetJobStatusRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.state(), pb::JobState::Running);
    gate.open();
    let (data, end) = finished_output(&mut alice, &id).await;
    assert_eq!(data, b"ready\ndone\n");
    assert_eq!(end.exit_code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_down_means_unavailable_and_not_serving_and_both_recover() {
    if skip_unless_root("executor_down_means_unavailable_and_not_serving_and_both_recover") {
        return;
    }
    let mut w = Stack::generated("restart", ApiOptions::default().health_ms(200));
    let (mut alice, mut watch) = w.client_and_health("alice").await;
    let id = start_job(&mut alice, &["echo", "before"]).await;
    // Finished before the executor goes: stopping it would stop a running job.
    let (data, _) = finished_output(&mut alice, &id).await;
    assert_eq!(data, b"before\n");

    w.exec.stop();
    wait_for_status(&mut watch, ServingStatus::NotServing).await;
    let e = alice.start_job(start(&["true"])).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(e.message(), "executor unavailable");
    let e = alice
        .get_job_status(pb::GetJobStatusRequest { id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);

    w.exec.relaunch();
    wait_for_status(&mut watch, ServingStatus::Serving).await;
    let (data, _) = finished_output(&mut alice, &id).await;
    assert_eq!(data, b"before\n", "the finished job survived the restart");
    let id = start_job(&mut alice, &["echo", "after"]).await;
    let (data, end) = finished_output(&mut alice, &id).await;
    assert_eq!(data, b"after\n");
    assert_eq!(end.exit_code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_and_the_next_call_works() {
    if skip_unless_root("bad_input_is_invalid_argument_and_the_next_call_works") {
        return;
    }
    let w = Stack::generated("input", ApiOptions::default().health_ms(200));
    let mut alice = w.client("alice").await;
    let limits = |l: pb::Limits| pb::StartJobRequest {
        argv: vec!["true".into()],
        env: vec![],
        limits: Some(l),
        ..Default::default()
    };
    let cases = [
        ("empty argv", start(&[])),
        ("oversized request", start(&["echo", &"z".repeat(2 << 20)])),
        (
            "zero pids",
            limits(pb::Limits {
                pids: Some(0),
                ..Default::default()
            }),
        ),
        (
            "cpu past the sanity bound",
            limits(pb::Limits {
                cpu_millis: Some(u32::MAX),
                ..Default::default()
            }),
        ),
        (
            "memory over the executor's ceiling",
            limits(pb::Limits {
                memory_bytes: Some(1 << 49),
                ..Default::default()
            }),
        ),
    ];
    for (what, request) in cases {
        let e = alice.start_job(request).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        // The next call still works.
        let id = start_job(&mut alice, &["echo", "ok"]).await;
        let (data, _) = finished_output(&mut alice, &id).await;
        assert_eq!(data, b"ok\n", "after {what}");
    }

    // A command that cannot be started says why.
    match alice.start_job(start(&["/nonexistent/command"])).await {
        Err(e) => {
            assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
            assert!(e.message().starts_with("the job failed to start"), "{e:?}");
        }
        Ok(r) => {
            let (_, end) = finished_output(&mut alice, &r.into_inner().id).await;
            assert_eq!(end.state(), pb::JobState::FailedToStart);
            assert!(!end.error.is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_streams_over_the_cap_are_resource_exhausted() {
    if skip_unless_root("output_streams_over_the_cap_are_resource_exhausted") {
        return;
    }
    let w = Stack::generated(
        "cap",
        ApiOptions::default()
            .health_ms(600_000)
            .toml("[limits]\nmax_streams = 1\n"),
    );
    let mut gate = Gate::new();
    let script = format!("echo ready; read x < {}", gate.path.display());
    let mut alice = w.client("alice").await;
    let id = start_job(&mut alice, &["sh", "-c", &script]).await;

    let mut held = stream(&mut alice, &id, 0, true).await.unwrap();
    assert!(held.message().await.unwrap().is_some());
    let e = match stream(&mut alice, &id, 0, true).await {
        Err(e) => e,
        Ok(s) => collect(s, 0, None).await.unwrap_err(),
    };
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");

    // Once the first stream's client is gone its slot is free again.
    drop(held);
    w.exec.wait_no_connections();
    let mut again = stream(&mut alice, &id, 0, true).await.unwrap();
    assert!(again.message().await.unwrap().is_some());
    drop(again);
    gate.open();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_seen_to_end_has_already_freed_its_slot() {
    if skip_unless_root("a_stream_seen_to_end_has_already_freed_its_slot") {
        return;
    }
    let w = Stack::generated(
        "slot",
        ApiOptions::default()
            .health_ms(600_000)
            .toml("[limits]\nmax_streams = 1\n"),
    );
    let mut alice = w.client("alice").await;
    let id = start_job(&mut alice, &["echo", "hi"]).await;
    // Each stream opens right after the previous one's final status: never refused.
    for _ in 0..20 {
        let (data, end) = finished_output(&mut alice, &id).await;
        assert_eq!(data, b"hi\n");
        assert_eq!(end.exit_code, Some(0));
    }
}
