//! Attached calls (`RunJob`, `ExecJob`): a gRPC stream each way, joined to one executor
//! session.
//!
//! The first client message starts the job or exec; the executor's first answer is
//! awaited before the call's response stream exists, so a refusal is the call's status,
//! as for `StartJob`. Then two directions run side by side until the session's last
//! frame: the executor's frames go to the client through a small bounded channel (a slow
//! client slows only its own session), and the client's messages go to the executor one
//! at a time, each sent only once the executor took the one before (the executor takes
//! input as the process reads it). A client that ends its half of the call only ends
//! its input; one that goes away ends the session, which leaves the job running.

use std::time::Duration;

use jobworker_proto::v1 as pb;
use jobworker_protocol::{MAX_CHUNK_LEN, Request as ExecRequest, Stream};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use crate::convert;
use crate::errors::{self, invalid};
use crate::executor::{ExecutorError, Session, SessionFrame, SessionReceiver, SessionSender};

/// What a client message of an attached call asks, after its first.
pub enum Input {
    Data(bytes::Bytes),
    End,
    Resize(Option<pb::TerminalSize>),
    /// A second `start`, or a message with no event.
    Misplaced,
}

/// The client messages of one kind of attached call.
pub trait ClientMessage: Send + 'static {
    fn input(self) -> Input;
}

impl ClientMessage for pb::RunJobRequest {
    fn input(self) -> Input {
        use pb::run_job_request::Event;
        match self.event {
            Some(Event::Input(b)) => Input::Data(b),
            Some(Event::InputEnd(_)) => Input::End,
            Some(Event::Resize(size)) => Input::Resize(Some(size)),
            Some(Event::Start(_)) | None => Input::Misplaced,
        }
    }
}

impl ClientMessage for pb::ExecJobRequest {
    fn input(self) -> Input {
        use pb::exec_job_request::Event;
        match self.event {
            Some(Event::Input(b)) => Input::Data(b),
            Some(Event::InputEnd(_)) => Input::End,
            Some(Event::Resize(size)) => Input::Resize(Some(size)),
            Some(Event::Start(_)) | None => Input::Misplaced,
        }
    }
}

/// The responses of one kind of attached call, built from the session's frames.
pub trait ServerMessage: Send + 'static {
    /// `None`: a frame that has no place in this kind of call.
    fn of(frame: SessionFrame) -> Option<Self>
    where
        Self: Sized;

    /// The job this message says was started, for the call's audit record.
    fn started(&self) -> Option<jobworker_protocol::JobId> {
        None
    }
}

fn pb_stream(s: Stream) -> i32 {
    convert::stream_to_pb(s).into()
}

impl ServerMessage for pb::RunJobResponse {
    fn started(&self) -> Option<jobworker_protocol::JobId> {
        match &self.event {
            Some(pb::run_job_response::Event::Started(id)) => id.parse().ok(),
            _ => None,
        }
    }

    fn of(frame: SessionFrame) -> Option<Self> {
        use pb::run_job_response::Event;
        let (event, stream) = match frame {
            SessionFrame::Started(id) => (Event::Started(id.to_string()), Stream::Stdout),
            SessionFrame::Chunk(s, data) => (Event::Data(data), s),
            SessionFrame::End(status) => {
                (Event::Status(convert::job_status(*status)), Stream::Stdout)
            }
            SessionFrame::ExecStarted | SessionFrame::ExecEnded(_) => return None,
        };
        Some(pb::RunJobResponse {
            event: Some(event),
            stream: pb_stream(stream),
        })
    }
}

impl ServerMessage for pb::ExecJobResponse {
    fn of(frame: SessionFrame) -> Option<Self> {
        use pb::exec_job_response::Event;
        let (event, stream) = match frame {
            SessionFrame::ExecStarted => (Event::Started(pb::ExecStarted {}), Stream::Stdout),
            SessionFrame::Chunk(s, data) => (Event::Data(data), s),
            SessionFrame::ExecEnded(end) => (Event::Ended(convert::exec_end(end)), Stream::Stdout),
            SessionFrame::Started(_) | SessionFrame::End(_) => return None,
        };
        Some(pb::ExecJobResponse {
            event: Some(event),
            stream: pb_stream(stream),
        })
    }
}

/// The session's first frame, as the call's first response; a refusal is the call's
/// status.
pub async fn first<M: ServerMessage>(
    session: &mut Session,
    timeout: Duration,
) -> Result<M, Status> {
    let frame = match tokio::time::timeout(timeout, session.rx.next()).await {
        Err(_) => return Err(ExecutorError::Timeout(timeout).to_status()),
        Ok(None) => return Err(ExecutorError::Closed.to_status()),
        Ok(Some(Err(e))) => return Err(e.to_status()),
        Ok(Some(Ok(frame))) => frame,
    };
    tracing::debug!(?frame, "session's first frame");
    M::of(frame).ok_or_else(|| ExecutorError::Unexpected("first session").to_status())
}

/// Runs the rest of the session (see the module documentation); returning closes the
/// executor connection and frees the call's slot.
pub async fn pump<C: ClientMessage, M: ServerMessage>(
    session: Session,
    inbound: Streaming<C>,
    tx: mpsc::Sender<Result<M, Status>>,
    slot: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    let Session {
        tx: executor_tx,
        rx: executor_rx,
    } = session;
    let mut slot = Some(slot);
    let input = async {
        if let Err(status) = forward_input(inbound, executor_tx).await {
            // Bad input ends the call with its reason; the output side sees the channel
            // closed... once the client took the status.
            let _ = tx.send(Err(status)).await;
            return;
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = forward_output(executor_rx, &tx, &mut slot, &shutdown) => {}
        _ = input => {}
    }
    drop(slot);
}

/// Client messages to the executor, until the client ends its half of the call (or goes
/// away). `Err`: a message that has no place here, which ends the call.
async fn forward_input<C: ClientMessage>(
    mut inbound: Streaming<C>,
    mut executor: SessionSender,
) -> Result<(), Status> {
    loop {
        let msg = match inbound.message().await {
            Ok(Some(m)) => m,
            // The client ended its half, or went away: the output side notices the
            // latter.
            Ok(None) => return Ok(()),
            Err(s) if matches!(s.code(), tonic::Code::Internal | tonic::Code::OutOfRange) => {
                return Err(errors::inbound(s));
            }
            Err(_) => return Ok(()),
        };
        let request = match msg.input() {
            Input::Data(b) if b.len() > MAX_CHUNK_LEN => {
                return Err(invalid(format!(
                    "input: at most {MAX_CHUNK_LEN} bytes a message"
                )));
            }
            Input::Data(b) => ExecRequest::Input(b),
            Input::End => ExecRequest::InputEnd,
            Input::Resize(size) => match convert::tty_size(size)? {
                Some(size) => ExecRequest::Resize(size),
                None => return Err(invalid("resize: no size")),
            },
            Input::Misplaced => {
                return Err(invalid(
                    "after the first message: only input, input_end and resize",
                ));
            }
        };
        if executor.send(&request).await.is_err() {
            // The session is over; the output side says how.
            return Ok(());
        }
    }
}

/// Session frames to the client, until the last one, an error, the client's leaving or
/// the server's shutdown.
async fn forward_output<M: ServerMessage>(
    mut rx: SessionReceiver,
    tx: &mpsc::Sender<Result<M, Status>>,
    slot: &mut Option<OwnedSemaphorePermit>,
    shutdown: &CancellationToken,
) {
    loop {
        let frame = tokio::select! {
            _ = tx.closed() => return,
            _ = shutdown.cancelled() => {
                let _ = tx.try_send(Err(errors::shutting_down()));
                return;
            }
            frame = rx.next() => frame,
        };
        let (message, last) = match frame {
            None => return,
            Some(Ok(frame)) => {
                let last = frame.is_last();
                match M::of(frame) {
                    Some(m) => (Ok(m), last),
                    None => (Err(ExecutorError::Unexpected("session").to_status()), true),
                }
            }
            Some(Err(e)) => (Err(e.to_status()), true),
        };
        if last {
            // Freed before the client can see the end, as for output streams.
            slot.take();
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            sent = tx.send(message) => if sent.is_err() { return },
        }
        if last {
            return;
        }
    }
}
