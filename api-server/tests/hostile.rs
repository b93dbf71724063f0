//! Hostile clients against the full stack, as root: the real executor, the real API
//! server as `nobody`, and clients over TLS 1.3 on loopback. Each test is one attack
//! from a review of the API server, and asserts what the server answers while it runs
//! and that it keeps serving afterwards. Skipped, visibly, when not root.

use jobworker_proto::v1 as pb;
use jobworker_testkit::grpc::*;
use jobworker_testkit::*;
use tonic::Code;

/// Groups nested past prost's recursion limit (100), in a field no message of the API
/// has (15): decoding has to descend into every one of them to skip it.
fn nested_groups(depth: usize) -> Vec<u8> {
    // Key of field 15, wire type 3 (start group).
    vec![(15 << 3) | 3; depth]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_messages_are_invalid_arguments_and_change_nothing() {
    if skip_unless_root("malformed_request_messages_are_invalid_arguments_and_change_nothing") {
        return;
    }
    let w = Stack::generated("malformed", ApiOptions::default().health_ms(600_000));
    let (channel, _) = channel(w.api.addr, w.pki.client_config("alice"))
        .await
        .unwrap();
    let malformed: [(&str, Vec<u8>, &str); 3] = [
        ("recursion", nested_groups(200), "recursion limit reached"),
        // Field 15, length-delimited: 5 bytes announced, 1 sent.
        (
            "truncated",
            vec![(15 << 3) | 2, 5, b'a'],
            "buffer underflow",
        ),
        // Field 15 with wire type 7, which does not exist.
        (
            "wire type",
            vec![(15 << 3) | 7],
            "invalid wire type value: 7",
        ),
    ];
    let paths = [
        "/jobworker.v1.JobWorker/StartJob",
        "/jobworker.v1.JobWorker/StopJob",
        "/jobworker.v1.JobWorker/GetJobStatus",
        "/jobworker.v1.JobWorker/ListJobs",
        "/jobworker.v1.JobWorker/GetQuota",
        "/jobworker.v1.JobWorker/StreamJobOutput",
        "/grpc.health.v1.Health/Check",
    ];
    for path in paths {
        for (what, bytes, reason) in &malformed {
            let e = raw_call(channel.clone(), path, bytes.clone())
                .await
                .expect_err("a malformed message must be refused");
            assert_eq!(e.code(), Code::InvalidArgument, "{path} {what}: {e:?}");
            assert!(
                e.message()
                    .starts_with("malformed request message: failed to decode Protobuf message")
                    && e.message().contains(reason),
                "{path} {what}: {e:?}"
            );
        }
    }
    // Nothing was started, and the same connection still serves.
    let mut alice = pb::job_worker_client::JobWorkerClient::new(channel);
    let jobs = alice
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(jobs, vec![]);
    let id = start_job(&mut alice, &["echo", "still serving"]).await;
    assert_eq!(finished_output(&mut alice, &id).await.0, b"still serving\n");
    // A handler's own failures are not rewritten: a real internal error would still be
    // INTERNAL (the mapping's unit tests); here the edge's checks answer as before.
    let e = alice
        .get_job_status(pb::GetJobStatusRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("job id:"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_without_the_client_auth_usage_is_refused_whatever_its_name() {
    if skip_unless_root("a_certificate_without_the_client_auth_usage_is_refused_whatever_its_name")
    {
        return;
    }
    let w = Stack::generated("eku", ApiOptions::default().health_ms(600_000));
    let mut alice = w.client("alice").await;
    let id = start_job(&mut alice, &["true"]).await;

    // CN=admin, signed by the right CA, current: without clientAuth it is refused in
    // the handshake, before any role is looked at.
    for who in ["no-eku", "server-eku"] {
        let e = refusal(w.api.addr, w.pki.client_config(who)).await;
        assert!(e.contains("UnsupportedCertificate"), "{who}: {e}");
    }
    // jobctl says what is wrong with the certificate.
    let out = jobctl::outcome(w.jobctl("no-eku").args(["list", "--all"]));
    out.assert_error(4, "it needs the clientAuth extended key usage");
    assert!(out.stdout.is_empty(), "{}", out.stdout_text());

    // The real admin's certificate has the usage, and the admin role.
    let mut admin = w.client("admin").await;
    let all = admin
        .list_jobs(pb::ListJobsRequest {
            all: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(all.iter().map(|j| &j.id).collect::<Vec<_>>(), [&id]);
    let log = w.api.log();
    assert!(
        log.contains(
            "client certificate refused: it has no extended key usage extension \
             (clientAuth is required) (subject CN admin)"
        ),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_not_yet_valid_is_not_reported_as_expired() {
    if skip_unless_root("a_certificate_not_yet_valid_is_not_reported_as_expired") {
        return;
    }
    let w = Stack::generated("notyet", ApiOptions::default().health_ms(600_000));
    let e = refusal(w.api.addr, w.pki.client_config("not-yet-valid")).await;
    // TLS has one alert for both (RFC 8446: "expired or not currently valid").
    assert!(e.contains("CertificateExpired"), "{e}");
    let out = jobctl::outcome(w.jobctl("not-yet-valid").arg("list"));
    out.assert_error(
        4,
        "the server rejected our certificate (certificate expired or not yet valid: check \
         its dates and the clocks)",
    );
    // An expired one, for comparison.
    let out = jobctl::outcome(w.jobctl("expired").arg("list"));
    out.assert_error(4, "(certificate expired or not yet valid");

    // The server's log says which: not valid yet, from when. It logs a refusal once
    // the alert is sent, so it is read once the server has exited.
    let mut w = w;
    assert!(w.api.terminate(LIMIT).success());
    let log = w.api.log();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TLS handshake failed"))
        .collect();
    assert_eq!(refusals.len(), 3, "{log}");
    for line in &refusals[..2] {
        assert!(
            line.contains("the client certificate is not valid yet: it is valid from ")
                && line.contains("check the certificate's dates and both hosts' clocks")
                && !line.contains("expired"),
            "{line}"
        );
    }
    assert!(
        refusals[2].contains("the client certificate has expired: it was valid until "),
        "{}",
        refusals[2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookalike_identities_are_refused_and_widened_ones_are_shown_escaped() {
    if skip_unless_root("lookalike_identities_are_refused_and_widened_ones_are_shown_escaped") {
        return;
    }
    // The default set: ASCII letters, digits, ".-_@".
    let w = Stack::generated("lookalike", ApiOptions::default().health_ms(600_000));
    let mut alice = w.client("alice").await;
    let id = start_job(&mut alice, &["true"]).await;
    for (who, shown, why) in [
        ("zwsp-admin", r#""admin\u{200b}""#, "U+200B (at byte 5)"),
        ("rlo-admin", r#""\u{202e}nimda""#, "it begins with U+202E"),
        ("cyrillic-admin", r#""adm\u{456}n""#, "U+0456 (at byte 3)"),
        ("jose", r#""Jos\u{e9}""#, "U+00E9 (at byte 3)"),
    ] {
        let e = refusal(w.api.addr, w.pki.client_config(who)).await;
        assert!(e.contains("AccessDenied"), "{who}: {e}");
        // Logged before the alert is sent, naming the name unambiguously.
        let log = w.api.log();
        let line = format!(
            "client certificate refused: the certificate's common name {shown} is not a \
             usable identity: {why}"
        );
        assert!(log.contains(&line), "{line}\n{log}");
    }
    // The admin's list shows only real owners.
    let mut admin = w.client("admin").await;
    let all = admin
        .list_jobs(pb::ListJobsRequest {
            all: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(
        all.iter()
            .map(|j| (j.id.as_str(), j.owner.as_str()))
            .collect::<Vec<_>>(),
        [(id.as_str(), "alice")]
    );
    drop(w);

    // Widened for other scripts: José and the Cyrillic name get in, shown escaped in the
    // server's logs and messages; invisible and direction-changing characters still do
    // not.
    let w = Stack::start(
        "widened",
        Pki::generate(),
        ExecutorOptions::behind_api().flags(&["--quota-running-jobs", "1"]),
        ApiOptions::default()
            .health_ms(600_000)
            .toml("[identity]\nunicode_letters = true\n"),
    );
    for who in ["zwsp-admin", "rlo-admin"] {
        let e = refusal(w.api.addr, w.pki.client_config(who)).await;
        assert!(e.contains("AccessDenied"), "{who}: {e}");
    }
    let mut gate = Gate::new();
    let mut jose = w.client("jose").await;
    let script = format!("read x < {}", gate.path.display());
    let running = start_job(&mut jose, &["sh", "-c", &script]).await;
    // A refusal that names the owner names it escaped.
    let e = jose.start_job(start(&["true"])).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message()
            .starts_with(r#""Jos\u{e9}": 1 of 1 running jobs"#),
        "{e:?}"
    );
    let mut lookalike = w.client("cyrillic-admin").await;
    let other = start_job(&mut lookalike, &["true"]).await;
    // Not the admin: the Cyrillic name is an identity of its own, without the role.
    let e = lookalike
        .list_jobs(pb::ListJobsRequest {
            all: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // The API keeps owners as they are (data); the server's log shows them escaped.
    let mut admin = w.client("admin").await;
    let mut owners: Vec<(String, String)> = admin
        .list_jobs(pb::ListJobsRequest {
            all: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs
        .into_iter()
        .map(|j| (j.id, j.owner))
        .collect();
    owners.sort();
    let mut want = vec![
        (running.clone(), "Jos\u{e9}".to_string()),
        (other.clone(), "adm\u{456}n".to_string()),
    ];
    want.sort();
    assert_eq!(owners, want);
    let log = w.api.log();
    for (owner, job) in [(r#""Jos\u{e9}""#, &running), (r#""adm\u{456}n""#, &other)] {
        let line = format!("owner={owner} job={job}");
        assert!(log.contains(&line), "{line}\n{log}");
    }
    assert!(!log.contains('\u{e9}') && !log.contains('\u{456}'), "{log}");
    gate.open();
}
