//! Attached sessions: a client that runs a job (`Run`) or a process in a running job
//! (`Exec`) stays on its connection, gets the output as it comes and sends input.
//!
//! While a session lasts, the only frames the client may send are `Input` (bytes for the
//! process's stdin or terminal), `InputEnd` (the end of its stdin) and `Resize` (its
//! terminal's size); anything else ends the connection. Input is written as the process
//! reads it: while one chunk waits, the session reads no more frames, so a process that
//! never reads its stdin holds at most one chunk of it here, and the client's sends wait
//! (the socket's, then the API server's, then the network's flow control). Output keeps
//! going meanwhile.
//!
//! A client that leaves ends the session only: the job runs on (its stdin ends, its
//! terminal stays open, unread); an exec's process gets the end of its stdin, a broken
//! pipe on its output, or its terminal's hang-up, as a process whose ssh session dropped.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use jobworker_protocol::{
    ExecEnd, ExecSpec, JobId, JobSpec, MAX_CHUNK_LEN, OutputFrom, Request, Response, Scope, Stream,
    Streams, TtySize, WireError, validate,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use super::{Conn, Flow, send_chunk};
use crate::engine::{ExecHandle, ExecOutput, Refusal, check_start};
use crate::sys::{self, Exit};

/// Where the client's input goes.
enum Sink {
    /// The process reads no input from the client (or no longer does).
    Closed,
    Pipe(pipe::Sender),
    /// A terminal's master: input is typed at the terminal.
    Terminal(Arc<AsyncFd<OwnedFd>>),
}

/// The client's input on its way to the process: at most one chunk waits.
struct Feed {
    sink: Sink,
    /// The terminal, for `Resize` (also when its input is not taken).
    terminal: Option<Arc<AsyncFd<OwnedFd>>>,
    pending: Bytes,
}

impl Feed {
    fn new(stdin: Option<OwnedFd>, terminal: Option<Arc<AsyncFd<OwnedFd>>>) -> io::Result<Self> {
        let sink = match (&terminal, stdin) {
            (Some(t), _) => Sink::Terminal(t.clone()),
            (None, Some(fd)) => Sink::Pipe(pipe::Sender::from_owned_fd(fd)?),
            (None, None) => Sink::Closed,
        };
        Ok(Feed {
            sink,
            terminal,
            pending: Bytes::new(),
        })
    }

    fn busy(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Waits until the pending input may be written (never, if nothing is pending).
    async fn writable(&self) -> io::Result<()> {
        match &self.sink {
            _ if !self.busy() => std::future::pending().await,
            Sink::Closed => std::future::pending().await,
            Sink::Pipe(p) => p.writable().await,
            Sink::Terminal(t) => t.writable().await.map(|mut g| g.retain_ready()),
        }
    }

    /// Writes what it can of the pending input. A process that closed its stdin takes no
    /// more: the input is dropped from then on, as a pipe's reader that left would.
    fn flush(&mut self) {
        while self.busy() {
            let wrote = match &self.sink {
                Sink::Closed => {
                    self.pending.clear();
                    return;
                }
                Sink::Pipe(p) => p.try_write(&self.pending),
                Sink::Terminal(t) => t.try_io(Interest::WRITABLE, |fd| {
                    sys::write(fd.as_fd(), &self.pending)
                }),
            };
            match wrote {
                Ok(n) => self.pending.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!("writing input: {e}; input closed");
                    self.sink = Sink::Closed;
                }
            }
        }
    }

    /// Takes one frame of the client's. `Err`: a frame that has no place in a session.
    fn take(&mut self, req: Request) -> Result<(), WireError> {
        match req {
            Request::Input(b) if b.len() > MAX_CHUNK_LEN => Err(WireError::invalid(format!(
                "input: at most {MAX_CHUNK_LEN} bytes a frame"
            ))),
            Request::Input(b) => {
                self.pending = b;
                self.flush();
                Ok(())
            }
            // A terminal has no end of input but the one typed at it (its EOF character).
            Request::InputEnd => {
                if let Sink::Pipe(_) = self.sink {
                    self.sink = Sink::Closed;
                }
                Ok(())
            }
            Request::Resize(size) => {
                validate::tty(Some(size))?;
                match &self.terminal {
                    Some(t) => set_size(t, size),
                    None => Err(WireError::invalid("resize: there is no terminal")),
                }
            }
            other => Err(WireError::invalid(format!(
                "{} in an attached session",
                other.name()
            ))),
        }
    }
}

fn set_size(t: &AsyncFd<OwnedFd>, size: TtySize) -> Result<(), WireError> {
    sys::set_window_size(t.get_ref().as_fd(), size.rows, size.cols).map_err(|e| {
        tracing::debug!("resizing a terminal: {e}");
        WireError::internal("resizing the terminal failed")
    })
}

/// The client's next frame; `None` when it left (or sent a frame that does not decode,
/// which ends the connection).
async fn next_frame(conn: &mut Conn) -> Option<Request> {
    match conn.t.next().await {
        Some(Ok(req)) => Some(req),
        Some(Err(e)) => {
            tracing::warn!("bad frame: {e}; connection closed");
            None
        }
        None => None,
    }
}

/// `Run`: starts the job, answers `Started`, streams its output from the first byte and
/// ends with `End` (its final status), taking input meanwhile.
pub(super) async fn run(conn: &mut Conn, owner: String, spec: JobSpec) -> Flow {
    let who = owner.clone();
    let checked = match check_start(owner, spec, conn.engine.ceilings(), conn.engine.defaults()) {
        Ok(c) => c,
        Err(e) => {
            let reason = Refusal::of_check(&e);
            let e = conn.engine.refused("run", &who, None, reason, e);
            return conn.reply(Response::Error(e)).await;
        }
    };
    let (id, attached) = match conn.engine.run(checked).await {
        Ok(r) => r,
        Err(e) => return conn.reply(Response::Error(e)).await,
    };
    if conn.reply(Response::Started { id }).await == Flow::Close {
        return Flow::Close;
    }
    let terminal = match attached.terminal.map(|t| t.try_clone()).transpose() {
        Ok(t) => t,
        Err(e) => return internal(conn, &id, "taking the terminal", e).await,
    };
    let feed = terminal
        .map(sys::async_fd)
        .transpose()
        .map(|t| t.map(Arc::new))
        .and_then(|t| Feed::new(attached.stdin, t));
    let mut feed = match feed {
        Ok(f) => f,
        Err(e) => return internal(conn, &id, "attaching to the job", e).await,
    };
    let opened =
        conn.engine
            .open_output(&Scope::Any, &id, OutputFrom::Offset(0), Streams::BOTH, true);
    let mut reader = match opened {
        Ok((r, _)) => r,
        Err(e) => return conn.reply(Response::Error(e)).await,
    };
    let shutdown = conn.shutdown.clone();
    loop {
        tokio::select! {
            next = reader.next_chunk() => match next {
                Ok(Some((stream, len))) => {
                    let sock = conn.t.get_ref().get_ref();
                    if let Err(e) = send_chunk(sock, &mut reader, stream, len).await {
                        tracing::debug!(job = %id, "sending output: {e}");
                        return Flow::Close;
                    }
                }
                Ok(None) => break,
                Err(e) => return internal(conn, &id, "reading the output", e).await,
            },
            r = feed.writable() => match r {
                Ok(()) => feed.flush(),
                Err(_) => feed.sink = Sink::Closed,
            },
            from = next_frame(conn), if !feed.busy() => match from {
                None => return Flow::Close,
                Some(req) => {
                    if let Err(e) = feed.take(req) {
                        let _ = conn.reply(Response::Error(e)).await;
                        return Flow::Close;
                    }
                }
            },
            _ = shutdown.cancelled() => return Flow::Close,
        }
    }
    drop(feed);
    match conn.engine.status_of(&id) {
        Some(status) => conn.reply(Response::End(Box::new(status))).await,
        None => {
            let gone = WireError::not_found(format!("no job {id}"));
            let _ = conn.reply(Response::Error(gone)).await;
            Flow::Close
        }
    }
}

async fn internal(conn: &mut Conn, id: &JobId, what: &str, e: io::Error) -> Flow {
    tracing::error!(job = %id, "{what}: {e}");
    let _ = conn
        .reply(Response::Error(WireError::internal(format!(
            "{what} failed"
        ))))
        .await;
    Flow::Close
}

/// The output of an exec: its two pipes, or its terminal.
struct ExecReader {
    pipes: [Option<(Stream, pipe::Receiver)>; 2],
    terminal: Option<Arc<AsyncFd<OwnedFd>>>,
    buf: BytesMut,
}

impl ExecReader {
    fn open(&self) -> bool {
        self.terminal.is_some() || self.pipes.iter().any(Option::is_some)
    }

    /// The next chunk of output; `None` when every source has ended.
    async fn next(&mut self) -> io::Result<Option<(Stream, Bytes)>> {
        loop {
            if !self.open() {
                return Ok(None);
            }
            self.buf.reserve(MAX_CHUNK_LEN);
            let spare = MAX_CHUNK_LEN.min(self.buf.capacity());
            self.buf.resize(spare, 0);
            let (stream, n) = tokio::select! {
                r = readable_pipe(&self.pipes[0]) => (Stream::Stdout, r.and_then(|()| read_pipe(&mut self.pipes[0], &mut self.buf))),
                r = readable_pipe(&self.pipes[1]) => (Stream::Stderr, r.and_then(|()| read_pipe(&mut self.pipes[1], &mut self.buf))),
                r = readable_terminal(self.terminal.as_deref()) => (Stream::Stdout, r.and_then(|()| read_terminal(&mut self.terminal, &mut self.buf))),
            };
            match n {
                Ok(Some(n)) => {
                    let chunk = self.buf.split_to(n).freeze();
                    self.buf.clear();
                    return Ok(Some((stream, chunk)));
                }
                Ok(None) => self.buf.clear(),
                Err(e) => return Err(e),
            }
        }
    }
}

async fn readable_pipe(p: &Option<(Stream, pipe::Receiver)>) -> io::Result<()> {
    match p {
        Some((_, rx)) => rx.readable().await,
        None => std::future::pending().await,
    }
}

async fn readable_terminal(t: Option<&AsyncFd<OwnedFd>>) -> io::Result<()> {
    match t {
        Some(t) => t.readable().await.map(|mut g| g.retain_ready()),
        None => std::future::pending().await,
    }
}

/// Reads a chunk of a pipe: `Some(n)` bytes, or `None` (nothing yet, or its end, which
/// closes it).
fn read_pipe(
    p: &mut Option<(Stream, pipe::Receiver)>,
    buf: &mut [u8],
) -> io::Result<Option<usize>> {
    let Some((_, rx)) = p else {
        return Ok(None);
    };
    match rx.try_read(buf) {
        Ok(0) => {
            *p = None;
            Ok(None)
        }
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads a chunk of a terminal; `EIO` is its end (every process that had it has closed
/// it).
fn read_terminal(
    t: &mut Option<Arc<AsyncFd<OwnedFd>>>,
    buf: &mut [u8],
) -> io::Result<Option<usize>> {
    let Some(fd) = t else {
        return Ok(None);
    };
    match fd.try_io(Interest::READABLE, |fd| sys::read(fd.as_fd(), buf)) {
        Ok(0) => {
            *t = None;
            Ok(None)
        }
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EIO) => {
            *t = None;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// `Exec`: starts the process in the job, answers `ExecStarted`, streams its output and
/// ends with `ExecEnded`, taking input meanwhile. A process that could not start ends
/// the exec at once, with why.
pub(super) async fn exec(
    conn: &mut Conn,
    scope: Scope,
    id: JobId,
    caller: String,
    spec: ExecSpec,
) -> Flow {
    let checked = validate::scope(&scope)
        .and_then(|()| validate::owner(&caller))
        .and_then(|()| validate::exec_spec(&spec));
    if let Err(e) = checked {
        let e = conn
            .engine
            .refused("exec", &caller, Some(id), Refusal::Invalid, e);
        return conn.reply(Response::Error(e)).await;
    }
    let argv0 = spec.argv[0].clone();
    let handle = match conn.engine.exec(&scope, &id, &caller, spec).await {
        Ok(Ok(h)) => h,
        Ok(Err(failure)) => {
            tracing::info!(job = %id, %caller, %argv0, "exec failed to start: {}", failure.message);
            let end = ExecEnd {
                exit_code: None,
                signal: None,
                failure: Some(failure.kind),
                error: Some(failure.message),
            };
            return conn.reply(Response::ExecEnded(end)).await;
        }
        Err(e) => return conn.reply(Response::Error(e)).await,
    };
    tracing::info!(job = %id, %caller, %argv0, "exec started");
    if conn.reply(Response::ExecStarted).await == Flow::Close {
        return Flow::Close;
    }
    let ExecHandle {
        stdin,
        output,
        mut ended,
        ..
    } = handle;
    let attached = attach_exec(stdin, output);
    let (mut feed, mut reader) = match attached {
        Ok(a) => a,
        Err(e) => return internal(conn, &id, "attaching to the exec", e).await,
    };
    let mut exit: Option<Exit> = None;
    let shutdown = conn.shutdown.clone();
    while exit.is_none() || reader.open() {
        tokio::select! {
            r = &mut ended, if exit.is_none() => {
                // The job ended first: its end killed every process in it.
                exit = Some(r.unwrap_or(Exit::Signal(libc::SIGKILL)));
            }
            next = reader.next(), if reader.open() => match next {
                Ok(Some((stream, bytes))) => {
                    if conn.reply(Response::Chunk(stream, bytes)).await == Flow::Close {
                        return Flow::Close;
                    }
                }
                Ok(None) => {}
                Err(e) => return internal(conn, &id, "reading the exec's output", e).await,
            },
            r = feed.writable() => match r {
                Ok(()) => feed.flush(),
                Err(_) => feed.sink = Sink::Closed,
            },
            from = next_frame(conn), if !feed.busy() => match from {
                None => return Flow::Close,
                Some(req) => {
                    if let Err(e) = feed.take(req) {
                        let _ = conn.reply(Response::Error(e)).await;
                        return Flow::Close;
                    }
                }
            },
            _ = shutdown.cancelled() => return Flow::Close,
        }
    }
    let (exit_code, signal) = match exit {
        Some(Exit::Code(c)) => (Some(c), None),
        Some(Exit::Signal(s)) => (None, Some(s)),
        None => (None, None),
    };
    tracing::info!(job = %id, %caller, %argv0, ?exit_code, ?signal, "exec ended");
    let end = ExecEnd {
        exit_code,
        signal,
        failure: None,
        error: None,
    };
    conn.reply(Response::ExecEnded(end)).await
}

fn attach_exec(stdin: Option<OwnedFd>, output: ExecOutput) -> io::Result<(Feed, ExecReader)> {
    let (pipes, terminal) = match output {
        ExecOutput::Pipes { stdout, stderr } => (
            [
                Some((Stream::Stdout, pipe::Receiver::from_owned_fd(stdout)?)),
                Some((Stream::Stderr, pipe::Receiver::from_owned_fd(stderr)?)),
            ],
            None,
        ),
        ExecOutput::Terminal(master) => ([None, None], Some(Arc::new(sys::async_fd(master)?))),
    };
    let feed = Feed::new(stdin, terminal.clone())?;
    let reader = ExecReader {
        pipes,
        terminal,
        buf: BytesMut::new(),
    };
    Ok((feed, reader))
}
