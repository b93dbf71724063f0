//! gRPC clients of the API server over its own strict TLS client configuration (what
//! jobctl uses), and helpers for the jobs API.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use jobworker_proto::v1 as pb;
use jobworker_proto::v1::job_worker_client::JobWorkerClient;
use jobworker_proto::v1::stream_job_output_response::Event;
use rustls::ClientConfig;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckResponse;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::env::LIMIT;
use crate::pki::Pki;

/// What the client learnt from a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub version: Option<rustls::ProtocolVersion>,
    pub group: Option<rustls::NamedGroup>,
    pub alpn: Option<Vec<u8>>,
    /// How many connections the channel has made so far (1 for the first).
    pub connections: usize,
}

/// A TCP connection to `addr`, from `source` when given (on Linux every address of
/// 127.0.0.0/8 is loopback's, so tests can play clients of different addresses).
pub async fn tcp_from(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(ip) = source else {
        return TcpStream::connect(addr).await;
    };
    let socket = if ip.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(addr).await
}

/// A gRPC channel to `addr` over our own TLS connector (server name `localhost`,
/// `TCP_NODELAY` as jobctl sets it); records what each handshake negotiated.
pub async fn channel(
    addr: SocketAddr,
    config: ClientConfig,
) -> Result<(Channel, Arc<Mutex<Option<Negotiated>>>), tonic::transport::Error> {
    channel_from(addr, config, None).await
}

/// [`channel`], its connections made from `source` ([`tcp_from`]).
pub async fn channel_from(
    addr: SocketAddr,
    config: ClientConfig,
    source: Option<IpAddr>,
) -> Result<(Channel, Arc<Mutex<Option<Negotiated>>>), tonic::transport::Error> {
    let negotiated = Arc::new(Mutex::new(None));
    let seen = negotiated.clone();
    let connector = TlsConnector::from(Arc::new(config));
    let endpoint = Endpoint::from_shared(format!("http://localhost:{}", addr.port()))?
        // jobctl's receive windows (see `client/src/connect.rs`).
        .initial_stream_window_size(Some(2 << 20))
        .initial_connection_window_size(Some(4 << 20));
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_uri| {
            let connector = connector.clone();
            let seen = seen.clone();
            async move {
                let tcp = tcp_from(addr, source).await?;
                tcp.set_nodelay(true)?;
                let name = rustls::pki_types::ServerName::try_from("localhost")
                    .map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
                let conn = tls.get_ref().1;
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                let connections = seen.as_ref().map_or(0, |n: &Negotiated| n.connections) + 1;
                *seen = Some(Negotiated {
                    connections,
                    version: conn.protocol_version(),
                    group: conn.negotiated_key_exchange_group().map(|g| g.name()),
                    alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                });
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await?;
    Ok((channel, negotiated))
}

/// A jobs client as `who` of `pki`, on a connection of its own.
pub async fn job_client(addr: SocketAddr, pki: &Pki, who: &str) -> JobWorkerClient<Channel> {
    let (channel, _) = channel(addr, pki.client_config(who))
        .await
        .expect("connecting to the API server");
    JobWorkerClient::new(channel)
}

/// Handshakes with `config` and then reads; the server's refusal comes back as the
/// error text (the alert). Panics when the server accepts.
pub async fn refusal(addr: SocketAddr, config: ClientConfig) -> String {
    let tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let attempt = async {
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        // TLS 1.3: the client finishes before the server has checked its certificate;
        // a refusal arrives as an alert on the first read.
        let mut buf = [0u8; 1024];
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            return Ok::<_, std::io::Error>("closed without an alert".to_string());
        }
        // Bytes from the server: it accepted us (its HTTP/2 settings).
        Ok(format!("accepted: read {n} bytes"))
    };
    match tokio::time::timeout(Duration::from_secs(20), attempt).await {
        Err(_) => panic!("no answer from the server within 20 s"),
        Ok(Ok(outcome)) => panic!("the server did not refuse: {outcome}"),
        Ok(Err(e)) => e.to_string(),
    }
}

/// A codec that sends and receives message bytes as they are: for requests no client
/// library would encode (malformed protobuf).
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        buf.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// One unary call of `path` (`/package.Service/Method`) with `message` as the request's
/// bytes, exactly; the answer's bytes.
pub async fn raw_call(
    channel: Channel,
    path: &'static str,
    message: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    grpc.unary(
        tonic::Request::new(message),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// A call of `path` whose request message never comes: the client sends the call's
/// headers and then nothing, so the call stays in flight on the server until the server
/// answers it or this future is dropped.
pub async fn call_without_message(
    channel: Channel,
    path: &'static str,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    grpc.client_streaming(
        tonic::Request::new(futures::stream::pending::<Vec<u8>>()),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// The output of `seq FROM TO`.
pub fn seq(from: u64, to: u64) -> Vec<u8> {
    (from..=to)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect()
}

/// A start request for `argv` with the executor's default limits.
pub fn start(argv: &[&str]) -> pb::StartJobRequest {
    pb::StartJobRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        limits: None,
        ..Default::default()
    }
}

/// Starts `argv`; returns the job's id.
pub async fn start_job(c: &mut JobWorkerClient<Channel>, argv: &[&str]) -> String {
    c.start_job(start(argv))
        .await
        .expect("start")
        .into_inner()
        .id
}

pub async fn stream(
    c: &mut JobWorkerClient<Channel>,
    id: &str,
    offset: u64,
    follow: bool,
) -> Result<Streaming<pb::StreamJobOutputResponse>, tonic::Status> {
    c.stream_job_output(pb::StreamJobOutputRequest {
        id: id.into(),
        offset,
        follow,
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

/// Reads a stream to its end: the bytes and the final status. `progress` (if any) is
/// told once `notify_at` bytes have arrived.
pub async fn collect(
    mut s: Streaming<pb::StreamJobOutputResponse>,
    notify_at: usize,
    mut progress: Option<oneshot::Sender<()>>,
) -> Result<(Vec<u8>, pb::JobStatus), tonic::Status> {
    let mut data = Vec::new();
    while let Some(message) = s.message().await? {
        match message.event {
            Some(Event::Data(bytes)) => {
                data.extend_from_slice(&bytes);
                if data.len() >= notify_at
                    && let Some(tx) = progress.take()
                {
                    let _ = tx.send(());
                }
            }
            Some(Event::Status(status)) => {
                assert!(s.message().await?.is_none(), "the status must come last");
                return Ok((data, status));
            }
            None => panic!("empty stream message"),
        }
    }
    panic!("the stream ended without a final status");
}

/// A job's whole output and final status (following it to its end).
pub async fn finished_output(
    c: &mut JobWorkerClient<Channel>,
    id: &str,
) -> (Vec<u8>, pb::JobStatus) {
    collect(stream(c, id, 0, true).await.unwrap(), usize::MAX, None)
        .await
        .unwrap()
}

/// A job's whole output, each stream apart (the order across the two is the order the
/// executor read them in, which the job does not control), and its final status.
pub async fn finished_streams(
    c: &mut JobWorkerClient<Channel>,
    id: &str,
) -> (Vec<u8>, Vec<u8>, pb::JobStatus) {
    let mut s = stream(c, id, 0, true).await.unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(message) = s.message().await.unwrap() {
        match message.event {
            Some(Event::Data(bytes)) if message.stream == pb::OutputStream::Stderr as i32 => {
                err.extend_from_slice(&bytes)
            }
            Some(Event::Data(bytes)) => out.extend_from_slice(&bytes),
            Some(Event::Status(status)) => return (out, err, status),
            None => panic!("empty stream message"),
        }
    }
    panic!("the stream ended without a final status");
}

/// The next status a health watch sends (at most [`LIMIT`] away).
pub async fn next_status(watch: &mut Streaming<HealthCheckResponse>) -> ServingStatus {
    let m = tokio::time::timeout(LIMIT, watch.message())
        .await
        .expect("a health update")
        .unwrap()
        .expect("the watch stream stays open");
    m.status()
}

/// Reads a health watch until it says `want`.
pub async fn wait_for_status(watch: &mut Streaming<HealthCheckResponse>, want: ServingStatus) {
    while next_status(watch).await != want {}
}

/// A watch of the jobs service's health on `channel`, at its first status.
pub async fn watch_health(channel: Channel) -> Streaming<HealthCheckResponse> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "jobworker.v1.JobWorker".into(),
        })
        .await
        .expect("a health watch")
        .into_inner()
}
