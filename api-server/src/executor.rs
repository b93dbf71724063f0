//! Client of the executor's Unix socket.
//!
//! One connection per call: connect (under the connect timeout), protocol handshake,
//! one request, one response (all under the request timeout), close. Output streams get
//! a connection of their own, which [`OutputStream`] owns: dropping it closes the
//! connection, so the executor's follower ends as soon as the gRPC client goes away.
//!
//! Every failure to reach the executor is reported to the [`Health`] tracker, which
//! flips the health service to NOT_SERVING; every successful exchange flips it back.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use jobworker_protocol::codec::{HandshakeError, client_handshake};
use jobworker_protocol::{
    ClientTransport, ErrorKind, JobStatus, Request, Response, Stream, WireError, client_transport,
};
use tokio::net::UnixStream;
use tonic::Status;

use crate::errors::{to_status, wire_to_status};
use crate::health::Health;

/// Why a call to the executor failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The socket could not be reached, or the connection broke.
    #[error("executor unreachable: {0}")]
    Unreachable(io::Error),
    /// No answer within the timeout.
    #[error("executor did not answer within {0:?}")]
    Timeout(Duration),
    /// The executor closed the connection without answering.
    #[error("executor closed the connection")]
    Closed,
    /// The executor answered with an error.
    #[error("{0}")]
    Refused(WireError),
    /// The executor answered something the protocol does not allow here.
    #[error("unexpected {0} response from the executor")]
    Unexpected(&'static str),
}

impl ExecutorError {
    /// Whether the executor itself is unreachable (as opposed to refusing a request).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ExecutorError::Unreachable(_) | ExecutorError::Timeout(_) | ExecutorError::Closed
        ) || matches!(self, ExecutorError::Refused(e) if e.kind == ErrorKind::Unavailable)
    }

    /// The gRPC status for this error (through [`crate::errors::to_status`]).
    pub fn to_status(&self) -> Status {
        match self {
            ExecutorError::Refused(e) => wire_to_status(e),
            ExecutorError::Unreachable(_) | ExecutorError::Timeout(_) | ExecutorError::Closed => {
                to_status(ErrorKind::Unavailable, "")
            }
            ExecutorError::Unexpected(_) => to_status(ErrorKind::Internal, ""),
        }
    }
}

impl From<HandshakeError> for ExecutorError {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::Io(e) => ExecutorError::Unreachable(e),
            HandshakeError::Closed => ExecutorError::Closed,
            HandshakeError::Refused(e) => ExecutorError::Refused(e),
            HandshakeError::Unexpected(what) => ExecutorError::Unexpected(what),
        }
    }
}

fn response_name(r: &Response) -> &'static str {
    match r {
        Response::Hello { .. } => "hello",
        Response::Started { .. } => "started",
        Response::Status(_) => "status",
        Response::Jobs { .. } => "jobs",
        Response::Chunk(..) => "chunk",
        Response::End(_) => "end",
        Response::Pong => "pong",
        Response::Quotas(_) => "quotas",
        Response::ExecStarted => "exec started",
        Response::ExecEnded(_) => "exec ended",
        Response::Resolved { .. } => "resolved",
        Response::Error(_) => "error",
        Response::Reported { .. } => "reported",
        Response::AuditLine(_) => "audit line",
        Response::Event(_) => "event",
        Response::Lost(_) => "lost",
        Response::StreamEnd => "stream end",
        Response::Usage(_) => "usage",
        Response::Metrics(_) => "metrics",
    }
}

/// Timeouts of executor calls.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub request: Duration,
}

/// Connects to the executor for each call.
#[derive(Debug, Clone)]
pub struct ExecutorClient {
    socket: PathBuf,
    timeouts: Timeouts,
    health: Health,
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

impl ExecutorClient {
    pub fn new(socket: PathBuf, timeouts: Timeouts, health: Health) -> Self {
        Self {
            socket,
            timeouts,
            health,
            metrics: None,
        }
    }

    /// With each request's latency in `metrics`.
    pub fn with_metrics(mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Connects and completes the protocol handshake, within the timeouts.
    async fn connect(&self) -> Result<ClientTransport<UnixStream>, ExecutorError> {
        let stream =
            match tokio::time::timeout(self.timeouts.connect, UnixStream::connect(&self.socket))
                .await
            {
                Err(_) => return Err(ExecutorError::Timeout(self.timeouts.connect)),
                Ok(Err(e)) => return Err(ExecutorError::Unreachable(e)),
                Ok(Ok(stream)) => stream,
            };
        let mut transport = client_transport(stream);
        match tokio::time::timeout(self.timeouts.request, client_handshake(&mut transport)).await {
            Err(_) => Err(ExecutorError::Timeout(self.timeouts.request)),
            Ok(result) => {
                result?;
                Ok(transport)
            }
        }
    }

    /// Records the outcome of an exchange for the health service and logs failures
    /// with their details (which clients never see).
    fn observe<T>(&self, what: &'static str, result: &Result<T, ExecutorError>) {
        match result {
            Ok(_) => self.health.executor_answered(),
            Err(e) if e.is_unavailable() => {
                // Loud once when the executor goes away, quiet while it stays away.
                if self.health.is_reachable() {
                    tracing::warn!(socket = %self.socket.display(), "{what}: {e}");
                } else {
                    tracing::debug!(socket = %self.socket.display(), "{what}: {e}");
                }
                self.health.executor_unreachable();
            }
            Err(ExecutorError::Refused(e)) => {
                // The executor answered, so it is up.
                self.health.executor_answered();
                match e.kind {
                    ErrorKind::Internal | ErrorKind::VersionMismatch => {
                        tracing::error!("{what}: executor error: {e}")
                    }
                    _ => tracing::debug!("{what}: {e}"),
                }
            }
            Err(e) => tracing::error!("{what}: {e}"),
        }
    }

    /// Sends one request and returns its one response, with a request timeout of
    /// `timeout` (or the configured one).
    pub async fn call(
        &self,
        request: Request,
        timeout: Option<Duration>,
    ) -> Result<Response, ExecutorError> {
        let what = request.name();
        let started = std::time::Instant::now();
        let result = self.call_inner(request, timeout).await;
        if let Some(m) = &self.metrics {
            m.executor_request(what, started.elapsed());
        }
        self.observe(what, &result);
        result
    }

    /// Opens a stream of response frames (`Audit`, `Events`, `Usage`): its own
    /// connection, on which `request` is sent; frames then come without a timeout until
    /// the stream's last one. Dropping it closes the connection.
    pub async fn stream(&self, request: Request) -> Result<ResponseStream, ExecutorError> {
        let what = request.name();
        let result = async {
            let mut transport = self.connect().await?;
            match tokio::time::timeout(self.timeouts.request, transport.send(request)).await {
                Err(_) => Err(ExecutorError::Timeout(self.timeouts.request)),
                Ok(Err(e)) => Err(ExecutorError::Unreachable(e)),
                Ok(Ok(())) => Ok(transport),
            }
        }
        .await;
        self.observe(what, &result);
        Ok(ResponseStream {
            transport: result?,
            client: self.clone(),
            done: false,
        })
    }

    async fn call_inner(
        &self,
        request: Request,
        timeout: Option<Duration>,
    ) -> Result<Response, ExecutorError> {
        let mut transport = self.connect().await?;
        let timeout = timeout.unwrap_or(self.timeouts.request);
        let exchange = async {
            transport
                .send(request)
                .await
                .map_err(ExecutorError::Unreachable)?;
            match transport.next().await {
                None => Err(ExecutorError::Closed),
                Some(Err(e)) => Err(ExecutorError::Unreachable(e)),
                Some(Ok(Response::Error(e))) => Err(ExecutorError::Refused(e)),
                Some(Ok(response)) => Ok(response),
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Err(ExecutorError::Timeout(timeout)),
            Ok(result) => result,
        }
    }

    /// Liveness check.
    pub async fn ping(&self) -> Result<(), ExecutorError> {
        match self.call(Request::Ping, None).await? {
            Response::Pong => Ok(()),
            other => Err(ExecutorError::Unexpected(response_name(&other))),
        }
    }

    /// Opens an output stream: its own connection, on which `request` (an
    /// [`Request::Output`]) is sent. Connecting and sending are under the timeouts;
    /// the frames then come as the job writes, without a timeout.
    pub async fn output(&self, request: Request) -> Result<OutputStream, ExecutorError> {
        let result = async {
            let mut transport = self.connect().await?;
            match tokio::time::timeout(self.timeouts.request, transport.send(request)).await {
                Err(_) => Err(ExecutorError::Timeout(self.timeouts.request)),
                Ok(Err(e)) => Err(ExecutorError::Unreachable(e)),
                Ok(Ok(())) => Ok(transport),
            }
        }
        .await;
        self.observe("output", &result);
        Ok(OutputStream {
            transport: result?,
            client: self.clone(),
            done: false,
        })
    }
}

impl ExecutorClient {
    /// Opens an attached session (`Run` or `Exec`): its own connection, on which
    /// `request` is sent, then frames both ways without a timeout.
    pub async fn attach(&self, request: Request) -> Result<Session, ExecutorError> {
        let what = request.name();
        let result = async {
            let mut transport = self.connect().await?;
            match tokio::time::timeout(self.timeouts.request, transport.send(request)).await {
                Err(_) => Err(ExecutorError::Timeout(self.timeouts.request)),
                Ok(Err(e)) => Err(ExecutorError::Unreachable(e)),
                Ok(Ok(())) => Ok(transport),
            }
        }
        .await;
        self.observe(what, &result);
        let (tx, rx) = result?.into_inner().split();
        Ok(Session {
            tx: SessionSender { tx },
            rx: SessionReceiver {
                rx,
                client: self.clone(),
                done: false,
            },
        })
    }
}

/// One frame of an attached session, from the executor.
#[derive(Debug)]
pub enum SessionFrame {
    Started(jobworker_protocol::JobId),
    Chunk(Stream, Bytes),
    End(Box<JobStatus>),
    ExecStarted,
    ExecEnded(jobworker_protocol::ExecEnd),
}

impl SessionFrame {
    /// The last frame of a session.
    pub fn is_last(&self) -> bool {
        matches!(self, SessionFrame::End(_) | SessionFrame::ExecEnded(_))
    }
}

type Frames = tokio_util::codec::Framed<UnixStream, tokio_util::codec::LengthDelimitedCodec>;

/// An attached session's connection, in its two directions.
pub struct Session {
    pub tx: SessionSender,
    pub rx: SessionReceiver,
}

/// Sends the client's input to the executor.
pub struct SessionSender {
    tx: futures::stream::SplitSink<Frames, Bytes>,
}

impl SessionSender {
    /// Sends `Input`, `InputEnd` or `Resize`; waits while the executor is not taking
    /// input (the process is not reading it).
    pub async fn send(&mut self, request: &Request) -> Result<(), ExecutorError> {
        let frame =
            jobworker_protocol::codec::encode(request).map_err(ExecutorError::Unreachable)?;
        self.tx
            .send(Bytes::from(frame))
            .await
            .map_err(ExecutorError::Unreachable)
    }
}

/// Receives the session's frames.
pub struct SessionReceiver {
    rx: futures::stream::SplitStream<Frames>,
    client: ExecutorClient,
    done: bool,
}

impl SessionReceiver {
    /// The next frame; `None` after the last one or an error.
    pub async fn next(&mut self) -> Option<Result<SessionFrame, ExecutorError>> {
        if self.done {
            return None;
        }
        let frame = self.rx.next().await;
        let result = match frame.map(|f| f.and_then(jobworker_protocol::decode_response)) {
            None => Err(ExecutorError::Closed),
            Some(Err(e)) => Err(ExecutorError::Unreachable(e)),
            Some(Ok(Response::Started { id })) => Ok(SessionFrame::Started(id)),
            Some(Ok(Response::Chunk(stream, bytes))) => Ok(SessionFrame::Chunk(stream, bytes)),
            Some(Ok(Response::End(status))) => Ok(SessionFrame::End(status)),
            Some(Ok(Response::ExecStarted)) => Ok(SessionFrame::ExecStarted),
            Some(Ok(Response::ExecEnded(end))) => Ok(SessionFrame::ExecEnded(end)),
            Some(Ok(Response::Error(e))) => Err(ExecutorError::Refused(e)),
            Some(Ok(other)) => Err(ExecutorError::Unexpected(response_name(&other))),
        };
        match &result {
            Ok(f) if f.is_last() => {
                self.done = true;
                self.client.health.executor_answered();
            }
            Ok(_) => {}
            Err(_) => {
                self.done = true;
                self.client.observe("session", &result);
            }
        }
        Some(result)
    }
}

/// One frame of an output stream.
#[derive(Debug)]
pub enum OutputFrame {
    Chunk(Stream, Bytes),
    End(Box<JobStatus>),
}

/// An executor connection carrying one job's output. Dropping it closes the
/// connection.
pub struct OutputStream {
    transport: ClientTransport<UnixStream>,
    client: ExecutorClient,
    done: bool,
}

impl OutputStream {
    /// The next frame; `None` after the final status.
    pub async fn next(&mut self) -> Option<Result<OutputFrame, ExecutorError>> {
        if self.done {
            return None;
        }
        // Frames are read below the serde layer and decoded by `decode_response`, which
        // is the codec's decoding except that a chunk's data stays in the frame's buffer
        // instead of being copied out of it.
        let frame = self.transport.get_mut().next().await;
        let result = match frame.map(|f| f.and_then(jobworker_protocol::decode_response)) {
            None => Err(ExecutorError::Closed),
            Some(Err(e)) => Err(ExecutorError::Unreachable(e)),
            Some(Ok(Response::Chunk(stream, bytes))) => Ok(OutputFrame::Chunk(stream, bytes)),
            Some(Ok(Response::End(status))) => Ok(OutputFrame::End(status)),
            Some(Ok(Response::Error(e))) => Err(ExecutorError::Refused(e)),
            Some(Ok(other)) => Err(ExecutorError::Unexpected(response_name(&other))),
        };
        match &result {
            Ok(OutputFrame::Chunk(..)) => {}
            Ok(OutputFrame::End(_)) => {
                self.done = true;
                self.client.health.executor_answered();
            }
            Err(_) => {
                self.done = true;
                self.client.observe("output", &result);
            }
        }
        Some(result)
    }
}

/// An executor connection answering one request with many frames. Dropping it closes
/// the connection.
pub struct ResponseStream {
    transport: ClientTransport<UnixStream>,
    client: ExecutorClient,
    done: bool,
}

impl ResponseStream {
    /// The next frame; `None` after an error or once the caller said the stream is done.
    /// An `Error` frame comes as `Err`.
    pub async fn next(&mut self) -> Option<Result<Response, ExecutorError>> {
        if self.done {
            return None;
        }
        let result = match self.transport.next().await {
            None => Err(ExecutorError::Closed),
            Some(Err(e)) => Err(ExecutorError::Unreachable(e)),
            Some(Ok(Response::Error(e))) => Err(ExecutorError::Refused(e)),
            Some(Ok(r)) => Ok(r),
        };
        if result.is_err() {
            self.done = true;
            self.client.observe("stream", &result);
        }
        Some(result)
    }

    /// Marks the stream as ended by its last frame.
    pub fn finish(&mut self) {
        self.done = true;
        self.client.health.executor_answered();
    }
}
