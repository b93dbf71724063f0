//! The executor's socket: accepting connections, checking the peer, and one handler per
//! request kind (a dispatch table, in the manner of a privilege-separation monitor).
//!
//! Every connection is checked with `SO_PEERCRED` before a byte of it is decoded; a peer
//! whose uid and gid are both outside the configured lists is logged and dropped. Past
//! the connection cap a connection gets one `ResourceExhausted` frame and is closed. Long
//! calls (output streams, attached runs and execs, waits) also take one of the stream
//! slots, which leave `control_connections` of the cap to short calls: however many
//! streams are open, a start, stop, status or list always finds a connection. The
//! first frame must be `Hello` (the version handshake), and only the first. A malformed
//! or unexpected frame ends that connection only.
//!
//! | request | handler | checks first |
//! |---|---|---|
//! | `Hello` (again) | [`hello_again`] | refused: the connection ends |
//! | `Ping` | [`ping`] | none |
//! | `Start` | [`start`] | owner, spec shape, limits against the ceilings |
//! | `Stop` | [`stop`] | scope |
//! | `Status` | [`status`] | scope |
//! | `List` | [`list`] | scope, page size, filter |
//! | `Resolve` | [`resolve`] | scope, reference |
//! | `Remove` | [`remove`] | scope |
//! | `Output` | [`output`] | a stream slot, scope |
//! | `Quota` | [`quota`] | scope |
//! | `Run` | [`session::run`] | a stream slot, as `Start`; then an attached session |
//! | `Exec` | [`session::exec`] | a stream slot, scope, caller, exec spec; then an attached session |
//! | `Wait` | [`wait`] | a stream slot, scope |
//! | `Input`, `InputEnd`, `Resize` | [`no_session`] | refused: nothing is attached |
//! | `Report` | [`observe::report`] | count and every record's fields, before any is queued |
//! | `Audit` | [`observe::audit`] | the owner filter |
//! | `Events` | [`observe::events`] | scope |
//! | `Usage` | [`observe::usage`] | scope, interval |
//! | `Metrics` | [`observe::metrics`] | none |

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use jobworker_protocol::codec::{self, ServerTransport};
use jobworker_protocol::{
    ErrorKind, JobId, JobSpec, ListFilter, OutputFrom, Request, Response, Scope, Stream, Streams,
    WireError, server_transport, validate,
};
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::{Engine, Refusal, check_start};
use crate::output::OutputReader;

mod observe;
mod session;

/// Who may connect.
#[derive(Debug, Clone)]
pub struct Peers {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl Peers {
    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        self.uids.contains(&uid) || self.gids.contains(&gid)
    }
}

/// The connection caps.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Connections open at once.
    pub connections: usize,
    /// Of those, the ones long calls never take (less than `connections`).
    pub control: usize,
}

/// Serves connections until `shutdown` is cancelled, then waits for open connections to
/// end (they end as their jobs' supervisors finish or their peers leave).
pub async fn serve(
    listener: UnixListener,
    engine: Arc<Engine>,
    peers: Peers,
    caps: Caps,
    shutdown: CancellationToken,
) {
    let max_connections = caps.connections;
    let slots = Arc::new(Semaphore::new(max_connections));
    let long = Arc::new(Semaphore::new(
        caps.connections.saturating_sub(caps.control).max(1),
    ));
    let tasks = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and friends: log and keep serving the connections we have.
                    tracing::error!("accept: {e}");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        if !peer_allowed(&stream, &peers) {
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!("connection cap ({max_connections}) reached; connection refused");
            refuse(stream, max_connections);
            continue;
        };
        let engine = engine.clone();
        let shutdown = shutdown.clone();
        let long = long.clone();
        let open = max_connections - slots.available_permits();
        tracing::debug!(open, "connection accepted");
        tasks.spawn(async move {
            connection(stream, engine, long, shutdown).await;
            let slots = permit.semaphore().clone();
            drop(permit);
            // Each connection is one task: this count is the number of connection tasks
            // left, which nothing outside the process can see otherwise.
            tracing::debug!(
                open = max_connections - slots.available_permits(),
                "connection closed"
            );
        });
    }
    tasks.close();
    tasks.wait().await;
}

/// Checks the peer's uid and gid (`SO_PEERCRED`) before a byte of it is read; logs why
/// one is dropped.
fn peer_allowed(stream: &UnixStream, peers: &Peers) -> bool {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("SO_PEERCRED: {e}; connection dropped");
            return false;
        }
    };
    let allowed = peers.allows(cred.uid(), cred.gid());
    if !allowed {
        tracing::warn!(
            uid = cred.uid(),
            gid = cred.gid(),
            pid = ?cred.pid(),
            "peer not allowed; connection dropped"
        );
    }
    allowed
}

/// Tells a peer over the cap why it is refused, without a task or a wait: one small
/// frame fits an empty socket buffer, and if it somehow does not, the peer just sees the
/// connection close.
fn refuse(stream: UnixStream, max: usize) {
    let refusal = Response::Error(WireError::exhausted(format!(
        "the executor already has {max} connections, its maximum"
    )));
    if let Ok(frame) = codec::response_frame(&refusal) {
        let _ = stream.try_write(&frame);
    }
}

async fn connection(
    stream: UnixStream,
    engine: Arc<Engine>,
    long: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let mut t = server_transport(stream);
    let handshake = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = tokio::time::timeout(std::time::Duration::from_secs(10), codec::server_handshake(&mut t)) => r,
    };
    match handshake {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!("handshake: {e}; connection closed");
            return;
        }
        Err(_) => {
            tracing::warn!("handshake timed out; connection closed");
            return;
        }
    }
    let mut conn = Conn {
        engine,
        t,
        long,
        shutdown,
    };
    loop {
        let req = tokio::select! {
            _ = conn.shutdown.cancelled() => return,
            r = conn.t.next() => r,
        };
        let req = match req {
            None => return,
            Some(Ok(req)) => req,
            Some(Err(e)) => {
                tracing::warn!("bad frame: {e}; connection closed");
                return;
            }
        };
        if dispatch(&mut conn, req).await == Flow::Close {
            return;
        }
    }
}

/// One connection after its handshake.
struct Conn {
    engine: Arc<Engine>,
    t: ServerTransport<UnixStream>,
    /// The stream slots, one per long call in progress.
    long: Arc<Semaphore>,
    shutdown: CancellationToken,
}

/// Whether a connection may take another request.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

impl Conn {
    /// A stream slot for a long call, held until the call ends.
    fn long_call(&self) -> Result<OwnedSemaphorePermit, WireError> {
        self.long.clone().try_acquire_owned().map_err(|_| {
            WireError::exhausted(
                "the executor has as many output streams, attached calls and waits open as it \
                 allows (the rest of its connections are kept for short calls)",
            )
        })
    }

    async fn reply(&mut self, resp: Response) -> Flow {
        match self.t.send(resp).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    async fn reply_with<T>(
        &mut self,
        r: Result<T, WireError>,
        ok: impl FnOnce(T) -> Response,
    ) -> Flow {
        let resp = r.map_or_else(Response::Error, ok);
        self.reply(resp).await
    }

    /// Resolves when the peer closes the connection or sends anything (both end a
    /// request that is still being answered).
    async fn peer_gone(&mut self) {
        let _ = self.t.next().await;
    }
}

/// The dispatch table: one handler per request kind.
async fn dispatch(conn: &mut Conn, req: Request) -> Flow {
    match req {
        Request::Hello { .. } => hello_again(conn).await,
        Request::Ping => ping(conn).await,
        Request::Start { owner, spec } => start(conn, owner, spec).await,
        Request::Stop { scope, id, caller } => stop(conn, scope, id, caller).await,
        Request::Status { scope, id } => status(conn, scope, id).await,
        Request::List {
            scope,
            after,
            limit,
            filter,
        } => list(conn, scope, after, limit, filter).await,
        Request::Resolve { scope, reference } => resolve(conn, scope, reference).await,
        Request::Remove {
            scope,
            id,
            force,
            caller,
        } => remove(conn, scope, id, force, caller).await,
        Request::Quota { scope } => quota(conn, scope).await,
        Request::Output { .. }
        | Request::Run { .. }
        | Request::Exec { .. }
        | Request::Wait { .. } => {
            let _slot = match conn.long_call() {
                Ok(slot) => slot,
                Err(e) => return conn.reply(Response::Error(e)).await,
            };
            long_call(conn, req).await
        }
        Request::Input(_) | Request::InputEnd | Request::Resize(_) => no_session(conn).await,
        Request::Report(records) => observe::report(conn, records).await,
        Request::Audit(query) => observe::audit(conn, query).await,
        Request::Events { scope, follow } => observe::events(conn, scope, follow).await,
        Request::Usage {
            scope,
            id,
            interval_ms,
            follow,
        } => observe::usage(conn, scope, id, interval_ms, follow).await,
        Request::Metrics => observe::metrics(conn).await,
    }
}

/// Input, its end or a terminal size outside a session: refused, and nothing changes.
async fn no_session(conn: &mut Conn) -> Flow {
    conn.reply(Response::Error(WireError::invalid(
        "input, its end and terminal sizes belong to a run or an exec this connection is attached to",
    )))
    .await
}

/// Answers with the job's final status once it has ended.
async fn wait(conn: &mut Conn, scope: Scope, id: JobId) -> Flow {
    if let Err(e) = validate::scope(&scope) {
        return conn.reply(Response::Error(e)).await;
    }
    let engine = conn.engine.clone();
    let shutdown = conn.shutdown.clone();
    let ended = tokio::select! {
        r = engine.wait(&scope, &id) => r,
        _ = conn.peer_gone() => return Flow::Close,
        _ = shutdown.cancelled() => return Flow::Close,
    };
    conn.reply_with(ended, |s| Response::Status(Box::new(s)))
        .await
}

/// A long call, holding its stream slot.
async fn long_call(conn: &mut Conn, req: Request) -> Flow {
    match req {
        Request::Output {
            scope,
            id,
            from,
            streams,
            follow,
        } => output(conn, scope, id, from, streams, follow).await,
        Request::Run { owner, spec } => session::run(conn, owner, spec).await,
        Request::Exec {
            scope,
            id,
            caller,
            spec,
        } => session::exec(conn, scope, id, caller, spec).await,
        Request::Wait { scope, id } => wait(conn, scope, id).await,
        other => {
            tracing::error!("{} is not a long call", other.name());
            Flow::Close
        }
    }
}

/// The handshake took the connection's one `Hello`: another is refused, and ends it.
async fn hello_again(conn: &mut Conn) -> Flow {
    tracing::warn!("second hello on a connection; closed");
    let _ = conn
        .reply(Response::Error(WireError::invalid(
            "hello was already sent",
        )))
        .await;
    Flow::Close
}

async fn ping(conn: &mut Conn) -> Flow {
    conn.reply(Response::Pong).await
}

async fn start(conn: &mut Conn, owner: String, spec: JobSpec) -> Flow {
    let who = owner.clone();
    let checked = match check_start(owner, spec, conn.engine.ceilings(), conn.engine.defaults()) {
        Ok(c) => c,
        Err(e) => {
            let reason = Refusal::of_check(&e);
            let e = conn.engine.refused("start", &who, None, reason, e);
            return conn.reply(Response::Error(e)).await;
        }
    };
    let started = conn.engine.start(checked).await;
    conn.reply_with(started, |id| Response::Started { id })
        .await
}

async fn stop(conn: &mut Conn, scope: Scope, id: JobId, caller: String) -> Flow {
    if let Err(e) = validate::scope(&scope).and_then(|()| validate::owner(&caller)) {
        return conn.reply(Response::Error(e)).await;
    }
    let engine = conn.engine.clone();
    let stopped = tokio::select! {
        r = engine.stop(&scope, &id, &caller) => r,
        _ = conn.peer_gone() => return Flow::Close,
    };
    conn.reply_with(stopped, |s| Response::Status(Box::new(s)))
        .await
}

async fn status(conn: &mut Conn, scope: Scope, id: JobId) -> Flow {
    let status = validate::scope(&scope).and_then(|()| conn.engine.status(&scope, &id));
    conn.reply_with(status, |s| Response::Status(Box::new(s)))
        .await
}

async fn list(
    conn: &mut Conn,
    scope: Scope,
    after: Option<JobId>,
    limit: u32,
    filter: ListFilter,
) -> Flow {
    let page = validate::scope(&scope)
        .and_then(|()| validate::list_limit(limit))
        .and_then(|()| validate::list_filter(&filter))
        .and_then(|()| conn.engine.list(&scope, after.as_ref(), limit, &filter));
    conn.reply_with(page, |(jobs, next_after)| Response::Jobs {
        jobs,
        next_after,
    })
    .await
}

async fn resolve(conn: &mut Conn, scope: Scope, reference: String) -> Flow {
    let id = validate::scope(&scope).and_then(|()| conn.engine.resolve(&scope, &reference));
    conn.reply_with(id, |id| Response::Resolved { id }).await
}

/// Deletes an ended job (a running one with `force`, stopping it first); answers with
/// its last status.
async fn remove(conn: &mut Conn, scope: Scope, id: JobId, force: bool, caller: String) -> Flow {
    if let Err(e) = validate::scope(&scope).and_then(|()| validate::owner(&caller)) {
        return conn.reply(Response::Error(e)).await;
    }
    let engine = conn.engine.clone();
    let removed = tokio::select! {
        r = engine.remove(&scope, &id, force, &caller) => r,
        _ = conn.peer_gone() => return Flow::Close,
    };
    conn.reply_with(removed, |s| Response::Status(Box::new(s)))
        .await
}

async fn quota(conn: &mut Conn, scope: Scope) -> Flow {
    let report = validate::scope(&scope).map(|()| conn.engine.quotas(&scope));
    conn.reply_with(report, Response::Quotas).await
}

/// Streams a job's output of `streams` from `from`, then its final status; ends the
/// connection if the peer sends anything mid-stream or leaves.
async fn output(
    conn: &mut Conn,
    scope: Scope,
    id: JobId,
    from: OutputFrom,
    streams: Streams,
    follow: bool,
) -> Flow {
    let opened = validate::scope(&scope)
        .and_then(|()| conn.engine.open_output(&scope, &id, from, streams, follow));
    let (mut reader, id) = match opened {
        Ok(r) => r,
        Err(e) => return conn.reply(Response::Error(e)).await,
    };
    loop {
        let next = tokio::select! {
            n = reader.next_chunk() => n,
            // A frame from the peer mid-stream is a protocol violation; EOF means it left.
            _ = conn.t.next() => return Flow::Close,
            _ = conn.shutdown.cancelled() => return Flow::Close,
        };
        match next {
            Ok(Some((stream, len))) => {
                let sent = tokio::select! {
                    r = send_chunk(conn.t.get_ref().get_ref(), &mut reader, stream, len) => r,
                    _ = conn.shutdown.cancelled() => return Flow::Close,
                };
                if let Err(e) = sent {
                    tracing::debug!(job = %id, "sending output: {e}");
                    return Flow::Close;
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::error!(job = %id, "reading output: {e}");
                let _ = conn
                    .reply(Response::Error(WireError::new(
                        ErrorKind::Internal,
                        "reading the job's output failed",
                    )))
                    .await;
                return Flow::Close;
            }
        }
    }
    let Some(status) = conn.engine.status_of(&id) else {
        let _ = conn
            .reply(Response::Error(WireError::not_found(format!(
                "no job {id}"
            ))))
            .await;
        return Flow::Close;
    };
    conn.reply(Response::End(Box::new(status))).await
}

/// Writes one `Response::Chunk` frame of `len` bytes whose data goes from the output file
/// to the socket by `sendfile`, never through this process: the frame's header (exactly
/// what the codec would write before the data), then the data. The codec has nothing
/// buffered here: every earlier frame went out with `send`, which flushes.
async fn send_chunk(
    sock: &UnixStream,
    reader: &mut OutputReader,
    stream: Stream,
    len: usize,
) -> io::Result<()> {
    let header = jobworker_protocol::chunk_frame_header(stream, len)?;
    let mut done = 0;
    while done < header.len() {
        sock.writable().await?;
        match sock.try_write(&header[done..]) {
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    let mut left = len;
    while left > 0 {
        left -= sock
            .async_io(Interest::WRITABLE, || reader.send_to(sock.as_fd(), left))
            .await?;
    }
    Ok(())
}
