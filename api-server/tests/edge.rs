//! Behaviour of the real server binary that does not depend on a running executor:
//! identity and roles, input validation at the edge, error mapping when the executor is
//! unreachable, health, reflection, root refusal, shutdown, and the seccomp filter.

use std::process::{Command, Stdio};
use std::time::Duration;

use jobworker_proto::v1 as pb;
use jobworker_proto::v1::job_worker_client::JobWorkerClient;
use jobworker_testkit::api::{as_nobody, write_for_nobody};
use jobworker_testkit::grpc::channel;
use jobworker_testkit::{Api, ApiOptions, Pki, Scratch, bins, skip_unless_root};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn client(api: &Api, pki: &Pki, who: &str) -> JobWorkerClient<Channel> {
    let (channel, _) = channel(api.addr, pki.client_config(who))
        .await
        .expect("connect");
    JobWorkerClient::new(channel).max_encoding_message_size(16 * 1024 * 1024)
}

fn start(argv: &[&str], limits: Option<pb::Limits>) -> pb::StartJobRequest {
    pb::StartJobRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        limits,
        ..Default::default()
    }
}

#[tokio::test]
async fn identity_comes_from_the_certificate_and_admins_come_from_the_config() {
    let pki = Pki::generate();
    let api = Api::spawn(&pki, &ApiOptions::no_executor());
    let all = pb::ListJobsRequest {
        all: true,
        ..Default::default()
    };
    // alice is no admin: refused before the executor is asked.
    let e = client(&api, &pki, "alice")
        .await
        .list_jobs(all.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // admin passes authorization and reaches the (absent) executor.
    let e = client(&api, &pki, "admin")
        .await
        .list_jobs(all)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
}

#[tokio::test]
async fn unreachable_executor_is_unavailable_without_internal_details() {
    let pki = Pki::generate();
    let api = Api::spawn(&pki, &ApiOptions::no_executor());
    let mut alice = client(&api, &pki, "alice").await;
    let e = alice.start_job(start(&["true"], None)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(e.message(), "executor unavailable");
    let e = alice
        .get_job_status(pb::GetJobStatusRequest {
            id: "0123456789abcdef0123456789abcdef".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(!e.message().contains("nonexistent"), "{e:?}");
    let mut stream = alice
        .stream_job_output(pb::StreamJobOutputRequest {
            id: "0123456789abcdef0123456789abcdef".into(),
            offset: 0,
            follow: true,
            ..Default::default()
        })
        .await;
    if let Ok(s) = &mut stream {
        let e = s.get_mut().message().await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
    } else {
        assert_eq!(stream.unwrap_err().code(), Code::Unavailable);
    }
}

#[tokio::test]
async fn health_is_not_serving_without_an_executor() {
    let pki = Pki::generate();
    let api = Api::spawn(&pki, &ApiOptions::no_executor());
    let (channel, _) = channel(api.addr, pki.client_config("alice")).await.unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "jobworker.v1.JobWorker"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::NotServing, "{service:?}");
    }
}

#[tokio::test]
async fn bad_input_is_invalid_argument_and_the_server_keeps_serving() {
    let pki = Pki::generate();
    let api = Api::spawn(&pki, &ApiOptions::no_executor());
    let mut alice = client(&api, &pki, "alice").await;
    let invalid = |r: Result<_, tonic::Status>| {
        let e = r.expect_err("should be refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        e.message().to_string()
    };
    // Empty argv.
    let m = invalid(alice.start_job(start(&[], None)).await.map(drop));
    assert!(m.starts_with("argv:"), "{m}");
    // Out-of-range limits: zero, and past the sanity bound.
    let zero = pb::Limits {
        cpu_millis: Some(0),
        ..Default::default()
    };
    let m = invalid(
        alice
            .start_job(start(&["true"], Some(zero)))
            .await
            .map(drop),
    );
    assert!(m.starts_with("cpu:"), "{m}");
    let huge = pb::Limits {
        memory_bytes: Some(u64::MAX),
        ..Default::default()
    };
    let m = invalid(
        alice
            .start_job(start(&["true"], Some(huge)))
            .await
            .map(drop),
    );
    assert!(m.starts_with("memory:"), "{m}");
    // Over the protocol's argv bound, under the message limit.
    let big = "x".repeat(200 * 1024);
    let m = invalid(
        alice
            .start_job(start(&["echo", &big], None))
            .await
            .map(drop),
    );
    assert!(m.contains("bytes in all"), "{m}");
    // Over the message limit itself.
    let huge_arg = "y".repeat(2 * 1024 * 1024);
    let m = invalid(
        alice
            .start_job(start(&["echo", &huge_arg], None))
            .await
            .map(drop),
    );
    assert!(m.starts_with("request too large"), "{m}");
    // A malformed job id.
    let m = invalid(
        alice
            .stop_job(pb::StopJobRequest {
                id: "../../etc".into(),
            })
            .await
            .map(drop),
    );
    assert!(m.starts_with("job id:"), "{m}");
    // The same connection still serves: the next call reaches the executor stage.
    let e = alice.start_job(start(&["true"], None)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
}

#[tokio::test]
async fn reflection_describes_the_api() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let pki = Pki::generate();
    let api = Api::spawn(&pki, &ApiOptions::no_executor());
    let (channel, _) = channel(api.addr, pki.client_config("bob")).await.unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().expect("a response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"jobworker.v1.JobWorker"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
}

// Multi-threaded so the client keeps answering the server's HTTP/2 shutdown
// handshake while this thread waits for the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly() {
    let pki = Pki::generate();
    let mut api = Api::spawn(&pki, &ApiOptions::no_executor());
    // An open connection does not hold the shutdown past the drain.
    let _alice = client(&api, &pki, "alice").await;
    let status = api.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", api.log());
    // The idle connection closed at once: the drain deadline did not have to cut it.
    assert!(
        !api.log().contains("drain deadline passed"),
        "{}",
        api.log()
    );
    assert!(api.log().contains("SIGTERM received"), "{}", api.log());
}

#[test]
fn refuses_to_run_as_root() {
    if skip_unless_root("refuses_to_run_as_root") {
        return;
    }
    let out = Command::new(bins::path("jobworker-api"))
        .args([
            "--tls-cert",
            "/x",
            "--tls-key",
            "/y",
            "--tls-client-ca",
            "/z",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to run as root (uid 0)"),
        "{stderr}"
    );
}

#[test]
fn seccomp_filter_denies_calls_outside_the_allow_list() {
    let out = Command::new(bins::path("jobworker-api"))
        .arg("--seccomp-self-test")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for check in ["open /etc/hostname", "tcp socket", "spawn /bin/true"] {
        assert!(
            stdout.contains(&format!("{check}: denied (EPERM)")),
            "{stdout}"
        );
    }
}

#[test]
fn configuration_errors_name_the_key() {
    let dir = Scratch::new("config");
    let path = write_for_nobody(
        &dir.path,
        "api.toml",
        b"[tls]\ncert = \"/c\"\nkey = \"/k\"\nclient_ca = \"/ca\"\n[limits]\nmax_streams = 0\n",
        0o644,
    );
    // As root it must run as nobody (it refuses root), from a copy nobody can reach.
    let out = as_nobody(&mut Command::new(bins::installed("jobworker-api")))
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("limits.max_streams: must be 1 to"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_but_open_calls_keep_theirs() {
    use tokio::io::AsyncReadExt;
    let pki = Pki::generate();
    let api = Api::spawn(
        &pki,
        &ApiOptions {
            // Long enough that the first connection surely carries its call before it
            // could count as idle, even on a loaded machine.
            extra_toml: "[http2]\nidle_timeout_ms = 2000\n".into(),
            ..ApiOptions::no_executor()
        },
    );
    // A connection with an open call: a health watch stream.
    let (channel, negotiated) = channel(api.addr, pki.client_config("alice")).await.unwrap();
    let mut health = HealthClient::new(channel);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());

    // A connection without calls, opened later, is closed by the server.
    let tcp = tokio::net::TcpStream::connect(api.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut idle = tokio_rustls::TlsConnector::from(std::sync::Arc::new(pki.client_config("bob")))
        .connect(name, tcp)
        .await
        .unwrap();
    let closed = async {
        let mut buf = [0u8; 4096];
        // The server's HTTP/2 settings may come first; then the end of the stream.
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), closed)
        .await
        .expect("the idle connection should be closed");

    // The older connection, busy with its watch, is still the one in use.
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(negotiated.lock().unwrap().as_ref().unwrap().connections, 1);
}

/// A health check on `channel`: `Ok` or the status the server answered.
async fn health_check(channel: Channel) -> Result<(), tonic::Status> {
    HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_caps_are_told_which_cap_and_a_freed_place_is_taken_again() {
    use tokio::io::AsyncReadExt;
    let pki = Pki::generate();
    let api = Api::spawn(
        &pki,
        &ApiOptions {
            extra_toml: "[limits]\nmax_connections = 2\nmax_connections_per_identity = 1\n\
                         [http2]\nidle_timeout_ms = 1000\n"
                .into(),
            ..ApiOptions::no_executor()
        },
    );
    // alice's first connection: a raw TLS connection that makes no call, admitted.
    let tcp = tokio::net::TcpStream::connect(api.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut first =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(pki.client_config("alice")))
            .connect(name, tcp)
            .await
            .unwrap();
    // bob's: admitted (a call on it proves it, and that alice's connection came first).
    let (bob, _) = channel(api.addr, pki.client_config("bob")).await.unwrap();
    health_check(bob.clone()).await.unwrap();

    // alice's second: past her own cap. Every call on it says so.
    let (second, _) = channel(api.addr, pki.client_config("alice")).await.unwrap();
    let e = health_check(second.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(
        e.message(),
        "too many connections for alice: at most 1 at once \
         (limits.max_connections_per_identity)"
    );
    // admin's: past the server's cap (alice's and bob's hold both places).
    let (admin, _) = channel(api.addr, pki.client_config("admin")).await.unwrap();
    let e = health_check(admin).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(
        e.message(),
        "too many connections to this server: at most 2 at once (limits.max_connections); \
         try again later"
    );

    // The server closes alice's idle first connection; its place is free before she
    // can see the close, so her next connection is admitted.
    let mut buf = [0u8; 4096];
    let closed = async { while !matches!(first.read(&mut buf).await, Ok(0) | Err(_)) {} };
    tokio::time::timeout(Duration::from_secs(20), closed)
        .await
        .expect("the idle connection should be closed");
    let (again, _) = channel(api.addr, pki.client_config("alice")).await.unwrap();
    health_check(again).await.unwrap();
    drop((bob, second));
}
