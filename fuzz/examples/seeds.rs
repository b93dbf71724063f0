//! Writes the seed corpus of `executor_request` (one well-formed frame sequence per
//! request kind, and a few responses) into `fuzz/corpus/executor_request/`. The other
//! targets' seeds are plain text files, written by hand.
//!
//! `cargo +nightly run --manifest-path fuzz/Cargo.toml --example seeds`

use jobworker_protocol::*;

/// Length-prefixed frames, as the codec writes them.
fn frames(bodies: impl IntoIterator<Item = Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for body in bodies {
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
    }
    out
}

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/executor_request");
    std::fs::create_dir_all(&dir).unwrap();
    let hello = Request::Hello {
        version: PROTOCOL_VERSION,
    };
    let id = JobId::from_bytes(*b"0123456789abcdef");
    let alice = Scope::Owner("alice".into());
    let spec = JobSpec {
        argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
        env: vec![EnvVar {
            name: "LANG".into(),
            value: "C.UTF-8".into(),
        }],
        limits: Limits {
            cpu_millis: Some(500),
            memory_bytes: Some(64 << 20),
            pids: Some(32),
            io: Some(IoLimits {
                device: "/dev/vda".into(),
                read_bps: Some(1 << 20),
                write_bps: None,
                read_iops: None,
                write_iops: Some(100),
            }),
            ..Default::default()
        },
        workdir: Some("/srv".into()),
        name: Some("nightly".into()),
        labels: vec![Label {
            key: "team".into(),
            value: "infra".into(),
        }],
        ..Default::default()
    };
    let requests: Vec<(&str, Vec<Request>)> = vec![
        ("hello", vec![hello.clone()]),
        (
            "start",
            vec![
                hello.clone(),
                Request::Start {
                    owner: "alice".into(),
                    spec,
                },
            ],
        ),
        (
            "stop-status",
            vec![
                hello.clone(),
                Request::Stop {
                    scope: alice.clone(),
                    id,
                    caller: "alice".into(),
                },
                Request::Status {
                    scope: Scope::Any,
                    id,
                },
            ],
        ),
        (
            "list",
            vec![
                hello.clone(),
                Request::List {
                    scope: alice.clone(),
                    after: Some(id),
                    limit: 100,
                    filter: Default::default(),
                },
            ],
        ),
        (
            "run-attached",
            vec![
                hello.clone(),
                Request::Run {
                    owner: "alice".into(),
                    spec: JobSpec {
                        argv: vec!["sh".into()],
                        stdin: true,
                        tty: Some(TtySize { rows: 24, cols: 80 }),
                        ..Default::default()
                    },
                },
                Request::Input(bytes::Bytes::from_static(b"ls\r")),
                Request::Resize(TtySize { rows: 50, cols: 132 }),
                Request::InputEnd,
            ],
        ),
        (
            "resolve-remove",
            vec![
                hello.clone(),
                Request::Resolve {
                    scope: alice.clone(),
                    reference: "nightly".into(),
                },
                Request::List {
                    scope: Scope::Any,
                    after: None,
                    limit: 10,
                    filter: ListFilter {
                        states: vec![JobState::Running, JobState::Exited],
                        labels: vec![Label {
                            key: "team".into(),
                            value: "infra".into(),
                        }],
                        name: Some("nightly".into()),
                        owner: Some("alice".into()),
                    },
                },
                Request::Remove {
                    scope: alice.clone(),
                    id,
                    force: true,
                    caller: "alice".into(),
                },
            ],
        ),
        (
            "exec-wait",
            vec![
                hello.clone(),
                Request::Exec {
                    scope: alice.clone(),
                    id,
                    caller: "alice".into(),
                    spec: ExecSpec {
                        argv: vec!["ps".into(), "-ef".into()],
                        stdin: true,
                        ..Default::default()
                    },
                },
                Request::Wait {
                    scope: alice.clone(),
                    id,
                },
            ],
        ),
        (
            "observe",
            vec![
                hello.clone(),
                Request::Report(vec![
                    ApiRecord {
                        time_ms: 1_800_000_000_000,
                        event: ApiEvent::Call(ApiCall {
                            identity: "alice".into(),
                            cert_serial: "01".into(),
                            cert_sha256: "ab".repeat(32),
                            peer: "127.0.0.1:40000".into(),
                            method: "StartJob".into(),
                            job: Some(id),
                            code: "OK".into(),
                            duration_us: 1234,
                        }),
                    },
                    ApiRecord {
                        time_ms: 1_800_000_000_001,
                        event: ApiEvent::TlsFailure {
                            peer: "127.0.0.1:40001".into(),
                            reason: "unknown issuer".into(),
                            count: 3,
                        },
                    },
                ]),
                Request::Audit(AuditQuery {
                    since_ms: Some(1_800_000_000_000),
                    owner: Some("alice".into()),
                    follow: true,
                }),
                Request::Events {
                    scope: alice.clone(),
                    follow: true,
                },
                Request::Usage {
                    scope: alice.clone(),
                    id,
                    interval_ms: 1000,
                    follow: false,
                },
                Request::Metrics,
            ],
        ),
        (
            "output-ping",
            vec![
                hello,
                Request::Output {
                    scope: alice,
                    id,
                    from: OutputFrom::Offset(12345),
                    streams: Streams::BOTH,
                    follow: true,
                },
                Request::Ping,
            ],
        ),
    ];
    for (name, items) in requests {
        std::fs::write(
            dir.join(name),
            frames(items.iter().map(|r| codec::encode(r).unwrap())),
        )
        .unwrap();
    }
    let responses = vec![
        Response::Hello {
            version: PROTOCOL_VERSION,
        },
        Response::Chunk(Stream::Stdout, bytes::Bytes::from_static(b"some output\n")),
        Response::Chunk(Stream::Stderr, bytes::Bytes::from_static(b"an error\n")),
        Response::Error(WireError::not_found("no job 0123")),
        Response::Pong,
        Response::ExecStarted,
        Response::ExecEnded(ExecEnd {
            exit_code: None,
            signal: None,
            failure: Some(StartFailure::NotFound),
            error: Some("command not found".into()),
        }),
        Response::Reported { accepted: 2 },
        Response::AuditLine(AuditLine {
            seq: 7,
            line: "{\"seq\":7}".into(),
            truncated: false,
        }),
        Response::Lost(3),
        Response::StreamEnd,
        Response::Usage(JobUsage {
            memory_bytes: Some(1 << 20),
            pids: Some(2),
            cpu_usec: Some(1000),
            cpu_millis: Some(500),
            window_ms: 1000,
            at_ms: 1_800_000_000_000,
        }),
        Response::Metrics(Box::default()),
    ];
    std::fs::write(
        dir.join("responses"),
        frames(responses.iter().map(|r| codec::encode(r).unwrap())),
    )
    .unwrap();
}
