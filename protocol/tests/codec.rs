//! Codec behaviour over a real in-memory byte stream: every message round-trips, and
//! hostile bytes end in a clean error, never a panic or a large allocation.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use jobworker_protocol::codec::{self, HandshakeError, client_handshake, server_handshake};
use jobworker_protocol::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

fn status() -> JobStatus {
    JobStatus {
        id: JobId::from_bytes([7; 16]),
        owner: "alice".into(),
        argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
        limits: Limits {
            cpu_millis: Some(500),
            memory_bytes: Some(256 << 20),
            pids: Some(100),
            io: Some(IoLimits {
                device: "/dev/vda".into(),
                read_bps: Some(10 << 20),
                write_bps: None,
                read_iops: Some(100),
                write_iops: Some(200),
            }),
            tmp_bytes: Some(64 << 20),
            timeout_ms: Some(3_600_000),
        },
        state: JobState::Signaled,
        exit_code: None,
        signal: Some(9),
        oom_killed: true,
        error: None,
        started_at_ms: 1_700_000_000_000,
        ended_at_ms: Some(1_700_000_000_123),
        cpu_usec: Some(42),
        peak_memory_bytes: Some(1 << 20),
        output_bytes: 12,
        output_truncated: false,
        uid: Some(600_123),
        start_failure: None,
        name: None,
        labels: vec![],
    }
}

fn quota_report(owner: &str) -> QuotaReport {
    QuotaReport {
        owner: owner.into(),
        used: QuotaAmounts {
            running_jobs: 3,
            memory_bytes: u64::MAX,
            cpu_millis: 1500,
            pids: 300,
        },
        limits: QuotaLimits {
            running_jobs: Some(4),
            memory_bytes: None,
            cpu_millis: Some(u64::MAX),
            pids: Some(8192),
        },
    }
}

fn every_request() -> Vec<Request> {
    let id = JobId::from_bytes([0xab; 16]);
    vec![
        Request::Hello {
            version: PROTOCOL_VERSION,
        },
        Request::Start {
            owner: "alice".into(),
            spec: JobSpec {
                argv: vec!["echo".into(), "ünïcode".into()],
                env: vec![EnvVar {
                    name: "FOO".into(),
                    value: "bar".into(),
                }],
                limits: status().limits,
                ..Default::default()
            },
        },
        Request::Stop {
            scope: Scope::Owner("bob".into()),
            id,
            caller: "bob".into(),
        },
        Request::Metrics,
        Request::Events {
            scope: Scope::Owner("bob".into()),
            follow: true,
        },
        Request::Audit(jobworker_protocol::AuditQuery {
            since_ms: Some(1),
            owner: Some("alice".into()),
            follow: false,
        }),
        Request::Usage {
            scope: Scope::Any,
            id,
            interval_ms: 1000,
            follow: true,
        },
        Request::Status {
            scope: Scope::Any,
            id,
        },
        Request::List {
            scope: Scope::Any,
            after: Some(id),
            limit: 50,
            filter: Default::default(),
        },
        Request::Output {
            scope: Scope::Owner("alice".into()),
            id,
            from: OutputFrom::Offset(12345),
            streams: Streams::BOTH,
            follow: true,
        },
        Request::Ping,
        Request::Quota {
            scope: Scope::Owner("alice".into()),
        },
        Request::Quota { scope: Scope::Any },
    ]
}

fn every_response() -> Vec<Response> {
    let all_bytes: Vec<u8> = (0..=255u8).cycle().take(MAX_CHUNK_LEN).collect();
    vec![
        Response::Hello {
            version: PROTOCOL_VERSION,
        },
        Response::Started {
            id: JobId::from_bytes([1; 16]),
        },
        Response::Status(Box::new(status())),
        Response::Jobs {
            jobs: vec![status(), status()],
            next_after: Some(JobId::from_bytes([2; 16])),
        },
        Response::Chunk(Stream::Stdout, Bytes::from(all_bytes)),
        Response::Chunk(Stream::Stderr, Bytes::new()),
        Response::End(Box::new(status())),
        Response::Pong,
        Response::Quotas(vec![quota_report("alice"), quota_report("bob")]),
        Response::Quotas(vec![]),
        Response::Error(WireError::new(ErrorKind::FailedToStart, "execve: ENOENT")),
    ]
}

#[test]
fn the_largest_quota_report_fits_in_a_frame() {
    let owner = "o".repeat(validate::MAX_OWNER_LEN);
    let all = Response::Quotas(vec![quota_report(&owner); MAX_QUOTA_REPORTS]);
    let len = codec::encode(&all).unwrap().len();
    assert!(len <= MAX_FRAME_LEN, "{len}");
}

#[tokio::test]
async fn every_request_and_response_round_trips() {
    let (a, b) = duplex(4 * MAX_FRAME_LEN);
    let mut client = client_transport(a);
    let mut server = server_transport(b);
    for req in every_request() {
        client.send(req.clone()).await.unwrap();
        assert_eq!(server.next().await.unwrap().unwrap(), req);
    }
    for resp in every_response() {
        server.send(resp.clone()).await.unwrap();
        assert_eq!(client.next().await.unwrap().unwrap(), resp);
    }
}

#[test]
fn the_largest_possible_status_fits_in_a_list_page_budget() {
    let mut big = status();
    big.owner = "o".repeat(validate::MAX_OWNER_LEN);
    big.error = Some("e".repeat(jobworker_protocol::error::MAX_ERROR_MESSAGE_LEN));
    // The most argv bytes a spec may have, split into the most arguments.
    big.argv =
        vec!["a".repeat(validate::MAX_ARGV_BYTES / validate::MAX_ARGS - 1); validate::MAX_ARGS];
    let one = codec::encode(&big).unwrap().len();
    assert!(one <= LIST_PAGE_BYTES, "{one}");
    // A page of up to LIST_PAGE_BYTES of statuses plus one more still fits in a frame.
    assert!(LIST_PAGE_BYTES + one + 64 <= MAX_FRAME_LEN);
    let page = Response::Jobs {
        jobs: vec![big],
        next_after: Some(JobId::from_bytes([9; 16])),
    };
    assert!(codec::encode(&page).unwrap().len() <= one + 64);
}

/// Writes raw bytes as the client and returns what the server's transport yields.
async fn server_reads(raw: &[u8], close_after: bool) -> Option<std::io::Result<Request>> {
    let (mut a, b) = duplex(64 * 1024);
    let mut server = server_transport(b);
    a.write_all(raw).await.unwrap();
    if close_after {
        drop(a);
        server.next().await
    } else {
        // Keep the writer open: the decoder must fail on what it has, not wait.
        let r = server.next().await;
        drop(a);
        r
    }
}

#[tokio::test]
async fn an_oversized_length_prefix_is_refused_before_allocating() {
    // Claims a 4 GiB frame; the decoder must refuse from the prefix alone.
    let e = server_reads(&[0xff, 0xff, 0xff, 0xff, 0, 0], false)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    // One byte over the limit is refused too.
    let over = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
    let e = server_reads(&over, false).await.unwrap().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn a_truncated_frame_is_an_error_at_end_of_stream() {
    let body = codec::encode(&Request::Ping).unwrap();
    let mut raw = ((body.len() + 10) as u32).to_be_bytes().to_vec();
    raw.extend_from_slice(&body);
    let e = server_reads(&raw, true).await.unwrap().unwrap_err();
    assert_eq!(e.to_string(), "bytes remaining on stream");
    // A truncated length prefix too.
    let e = server_reads(&[0, 0], true).await.unwrap().unwrap_err();
    assert_eq!(e.to_string(), "bytes remaining on stream");
}

#[tokio::test]
async fn garbage_bytes_are_invalid_data() {
    for body in [
        vec![0xde, 0xad, 0xbe, 0xef, 0x01],
        vec![0xff; 64],
        // A valid variant index followed by nothing.
        vec![1],
        // Empty frame.
        vec![],
    ] {
        let mut raw = (body.len() as u32).to_be_bytes().to_vec();
        raw.extend_from_slice(&body);
        let e = server_reads(&raw, false).await.unwrap().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{body:?}");
    }
}

#[tokio::test]
async fn trailing_bytes_after_a_message_are_invalid() {
    let mut body = codec::encode(&Request::Ping).unwrap();
    body.push(0);
    let mut raw = (body.len() as u32).to_be_bytes().to_vec();
    raw.extend_from_slice(&body);
    let e = server_reads(&raw, false).await.unwrap().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
}

#[test]
fn a_huge_declared_collection_length_fails_without_allocating_it() {
    // Start { owner: <len = u64::MAX> ... }: the length is read, checked against the byte
    // limit and refused; nothing of that size is allocated.
    let mut body = vec![1u8]; // variant index of Start (varint)
    body.push(0xff); // varint marker for a u64 length
    body.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(codec::decode::<Request>(&body).is_err());
    // Same for a chunk's byte length.
    let mut body = vec![4u8];
    body.push(0xfe); // varint marker for a u32 length
    body.extend_from_slice(&(MAX_FRAME_LEN as u32 * 4).to_le_bytes());
    assert!(codec::decode::<Response>(&body).is_err());
}

#[tokio::test]
async fn handshake_succeeds_with_the_same_version() {
    let (a, b) = duplex(64 * 1024);
    let mut client = client_transport(a);
    let mut server = server_transport(b);
    let (c, s) = tokio::join!(client_handshake(&mut client), server_handshake(&mut server));
    c.unwrap();
    s.unwrap();
}

#[tokio::test]
async fn a_wrong_protocol_version_is_refused_with_a_clear_error() {
    let (a, b) = duplex(64 * 1024);
    let mut client = client_transport(a);
    let mut server = server_transport(b);
    client
        .send(Request::Hello {
            version: PROTOCOL_VERSION + 1,
        })
        .await
        .unwrap();
    match server_handshake(&mut server).await {
        Err(HandshakeError::Refused(e)) => assert_eq!(e.kind, ErrorKind::VersionMismatch),
        other => panic!("expected a refusal, got {other:?}"),
    }
    match client.next().await.unwrap().unwrap() {
        Response::Error(e) => {
            assert_eq!(e.kind, ErrorKind::VersionMismatch);
            let want = format!(
                "peer speaks protocol {}, the executor {PROTOCOL_VERSION}",
                PROTOCOL_VERSION + 1
            );
            assert_eq!(e.message, want);
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test]
async fn a_request_before_the_handshake_is_refused() {
    let (a, b) = duplex(64 * 1024);
    let mut client = client_transport(a);
    let mut server = server_transport(b);
    client.send(Request::Ping).await.unwrap();
    assert!(matches!(
        server_handshake(&mut server).await,
        Err(HandshakeError::Unexpected("ping"))
    ));
}

#[tokio::test]
async fn the_client_sees_a_refusal_at_the_connection_cap() {
    let (a, b) = duplex(64 * 1024);
    let mut client = client_transport(a);
    let mut server = server_transport(b);
    server
        .send(Response::Error(WireError::exhausted(
            "too many connections",
        )))
        .await
        .unwrap();
    match client_handshake(&mut client).await {
        Err(HandshakeError::Refused(e)) => assert_eq!(e.kind, ErrorKind::ResourceExhausted),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn frames_are_length_prefixed_big_endian_u32() {
    let (a, mut b) = duplex(64 * 1024);
    let mut client = client_transport(a);
    client.send(Request::Ping).await.unwrap();
    let body = codec::encode(&Request::Ping).unwrap();
    let mut buf = vec![0u8; 4 + body.len()];
    b.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf[..4], &(body.len() as u32).to_be_bytes());
    assert_eq!(&buf[4..], &body[..]);
}

#[tokio::test]
async fn a_refusal_is_reported_even_when_the_hello_meets_a_closed_socket() {
    let (a, b) = duplex(64 * 1024);
    let mut client = client_transport(a);
    let mut server = server_transport(b);
    server
        .send(Response::Error(WireError::exhausted(
            "too many connections",
        )))
        .await
        .unwrap();
    drop(server);
    match client_handshake(&mut client).await {
        Err(HandshakeError::Refused(e)) => assert_eq!(e.kind, ErrorKind::ResourceExhausted),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_response_frame_is_exactly_what_the_codec_writes_and_a_client_reads() {
    for response in every_response() {
        let (a, mut b) = duplex(2 * MAX_FRAME_LEN);
        let mut server = server_transport(a);
        server.send(response.clone()).await.unwrap();
        drop(server);
        let mut written = Vec::new();
        b.read_to_end(&mut written).await.unwrap();
        assert_eq!(codec::response_frame(&response).unwrap(), written);
    }
    // The refusal a connection over the executor's cap gets, read by a real client.
    let refusal = Response::Error(WireError::exhausted(
        "the executor already has 2 connections",
    ));
    let (a, mut b) = duplex(64 * 1024);
    b.write_all(&codec::response_frame(&refusal).unwrap())
        .await
        .unwrap();
    drop(b);
    let mut client = client_transport(a);
    match client_handshake(&mut client).await {
        Err(HandshakeError::Refused(e)) => {
            assert_eq!(e.kind, ErrorKind::ResourceExhausted);
            assert_eq!(e.message, "the executor already has 2 connections");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Chunk lengths around every change in bincode's length encoding, and the limits.
const CHUNK_LENS: [usize; 9] = [0, 1, 250, 251, 252, 4096, 65535, 65536, MAX_CHUNK_LEN];

#[tokio::test]
async fn a_chunk_header_followed_by_its_data_is_exactly_the_frame_the_codec_writes() {
    for (len, stream) in CHUNK_LENS
        .into_iter()
        .flat_map(|l| Stream::ALL.map(|s| (l, s)))
    {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
        let (a, mut b) = duplex(2 * MAX_FRAME_LEN);
        let mut server = server_transport(a);
        server
            .send(Response::Chunk(stream, Bytes::from(data.clone())))
            .await
            .unwrap();
        drop(server);
        let mut written = Vec::new();
        b.read_to_end(&mut written).await.unwrap();
        let mut ours = codec::chunk_frame_header(stream, len).unwrap();
        ours.extend_from_slice(&data);
        assert_eq!(ours, written, "{stream:?} chunk of {len} bytes");
    }
    let e = codec::chunk_frame_header(Stream::Stdout, MAX_CHUNK_LEN + 1).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn decoding_a_chunk_shares_the_frame_and_agrees_with_the_codec() {
    for (len, stream) in CHUNK_LENS
        .into_iter()
        .flat_map(|l| Stream::ALL.map(|s| (l, s)))
    {
        let data: Vec<u8> = (0..len).map(|i| (i * 13 % 256) as u8).collect();
        let body = codec::encode(&Response::Chunk(stream, Bytes::from(data.clone()))).unwrap();
        let frame = bytes::BytesMut::from(&body[..]);
        let data_at = frame.as_ptr() as usize + body.len() - len;
        match codec::decode_response(frame).unwrap() {
            Response::Chunk(s, got) => {
                assert_eq!(s, stream);
                assert_eq!(got, data, "chunk of {len} bytes");
                if len > 0 {
                    assert_eq!(got.as_ptr() as usize, data_at, "the data was copied");
                }
            }
            other => panic!("expected a chunk, got {other:?}"),
        }
    }
    for resp in every_response() {
        let body = codec::encode(&resp).unwrap();
        let got = codec::decode_response(bytes::BytesMut::from(&body[..])).unwrap();
        assert_eq!(got, resp);
    }
}

#[test]
fn a_malformed_chunk_is_refused_like_the_codec_refuses_it() {
    let body = codec::encode(&Response::Chunk(
        Stream::Stderr,
        Bytes::from(vec![5u8; 300]),
    ))
    .unwrap();
    let short = &body[..body.len() - 1];
    let mut long = body.clone();
    long.push(0);
    let header_only = &body[..body.len() - 300];
    for bad in [short, &long[..], header_only, &body[..1]] {
        let ours = codec::decode_response(bytes::BytesMut::from(bad)).unwrap_err();
        let theirs = codec::decode::<Response>(bad).unwrap_err();
        assert_eq!(ours.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(theirs.kind(), std::io::ErrorKind::InvalidData);
    }
}
