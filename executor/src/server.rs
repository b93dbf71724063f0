//! The executor's socket: accepting connections, checking the peer, and one handler per
//! request kind (a dispatch table, in the manner of a privilege-separation monitor).
//!
//! Every connection is checked with `SO_PEERCRED` before a byte of it is decoded; a peer
//! whose uid and gid are both outside the configured lists is logged and dropped. Past
//! the connection cap a connection gets one `ResourceExhausted` frame and is closed. A
//! malformed or unexpected frame ends that connection only.

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use jobworker_protocol::codec::{self, ServerTransport};
use jobworker_protocol::{ErrorKind, Request, Response, WireError, server_transport};
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::Engine;
use crate::output::OutputReader;

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

/// Serves connections until `shutdown` is cancelled, then waits for open connections to
/// end (they end as their jobs' supervisors finish or their peers leave).
pub async fn serve(
    listener: UnixListener,
    engine: Arc<Engine>,
    peers: Peers,
    max_connections: usize,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
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
        let cred = match stream.peer_cred() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("SO_PEERCRED: {e}; connection dropped");
                continue;
            }
        };
        if !peers.allows(cred.uid(), cred.gid()) {
            tracing::warn!(
                uid = cred.uid(),
                gid = cred.gid(),
                pid = ?cred.pid(),
                "peer not allowed; connection dropped"
            );
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!("connection cap ({max_connections}) reached; connection refused");
            refuse(stream, max_connections);
            continue;
        };
        let engine = engine.clone();
        let shutdown = shutdown.clone();
        let open = max_connections - slots.available_permits();
        tracing::debug!(open, "connection accepted");
        tasks.spawn(async move {
            connection(stream, engine, shutdown).await;
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

/// Tells a peer over the cap why it is refused, without a task or a wait: one small
/// frame fits an empty socket buffer, and if it somehow does not, the peer just sees the
/// connection close.
fn refuse(stream: UnixStream, max: usize) {
    let refusal = Response::Error(WireError::exhausted(format!(
        "the executor already has {max} connections, its maximum"
    )));
    if let Ok(body) = codec::encode(&refusal) {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let _ = stream.try_write(&frame);
    }
}

async fn connection(stream: UnixStream, engine: Arc<Engine>, shutdown: CancellationToken) {
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
    loop {
        let req = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = t.next() => r,
        };
        let req = match req {
            None => return,
            Some(Ok(req)) => req,
            Some(Err(e)) => {
                tracing::warn!("bad frame: {e}; connection closed");
                return;
            }
        };
        let keep_going = dispatch(&engine, &mut t, req, &shutdown).await;
        if !keep_going {
            return;
        }
    }
}

/// Handles one request; returns whether the connection may continue.
async fn dispatch(
    engine: &Arc<Engine>,
    t: &mut ServerTransport<UnixStream>,
    req: Request,
    shutdown: &CancellationToken,
) -> bool {
    let resp = match req {
        Request::Hello { .. } => {
            tracing::warn!("second hello on a connection; closed");
            let _ = t
                .send(Response::Error(WireError::invalid(
                    "hello was already sent",
                )))
                .await;
            return false;
        }
        Request::Start { owner, spec } => match engine.start(owner, spec).await {
            Ok(id) => Response::Started { id },
            Err(e) => Response::Error(e),
        },
        Request::Stop { scope, id } => {
            let stop = engine.stop(&scope, &id);
            tokio::select! {
                r = stop => match r {
                    Ok(s) => Response::Status(Box::new(s)),
                    Err(e) => Response::Error(e),
                },
                _ = peer_gone(t) => return false,
            }
        }
        Request::Status { scope, id } => match engine.status(&scope, &id) {
            Ok(s) => Response::Status(Box::new(s)),
            Err(e) => Response::Error(e),
        },
        Request::List {
            scope,
            after,
            limit,
        } => match engine.list(&scope, after.as_ref(), limit) {
            Ok((jobs, next_after)) => Response::Jobs { jobs, next_after },
            Err(e) => Response::Error(e),
        },
        Request::Output {
            scope,
            id,
            offset,
            follow,
        } => return stream_output(engine, t, scope, id, offset, follow, shutdown).await,
        Request::Ping => Response::Pong,
    };
    t.send(resp).await.is_ok()
}

/// Resolves when the peer closes the connection or sends anything (both end a request
/// that is still being answered).
async fn peer_gone(t: &mut ServerTransport<UnixStream>) {
    let _ = t.next().await;
}

async fn stream_output(
    engine: &Arc<Engine>,
    t: &mut ServerTransport<UnixStream>,
    scope: jobworker_protocol::Scope,
    id: jobworker_protocol::JobId,
    offset: u64,
    follow: bool,
    shutdown: &CancellationToken,
) -> bool {
    let (mut reader, id) = match engine.open_output(&scope, &id, offset, follow) {
        Ok(r) => r,
        Err(e) => return t.send(Response::Error(e)).await.is_ok(),
    };
    loop {
        let next = tokio::select! {
            n = reader.next_len() => n,
            // A frame from the peer mid-stream is a protocol violation; EOF means it left.
            _ = t.next() => return false,
            _ = shutdown.cancelled() => return false,
        };
        match next {
            Ok(Some(len)) => {
                let sent = tokio::select! {
                    r = send_chunk(t.get_ref().get_ref(), &mut reader, len) => r,
                    _ = shutdown.cancelled() => return false,
                };
                if let Err(e) = sent {
                    tracing::debug!(job = %id, "sending output: {e}");
                    return false;
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::error!(job = %id, "reading output: {e}");
                let _ = t
                    .send(Response::Error(WireError::new(
                        ErrorKind::Internal,
                        "reading the job's output failed",
                    )))
                    .await;
                return false;
            }
        }
    }
    let Some(status) = engine.status_of(&id) else {
        let _ = t
            .send(Response::Error(WireError::not_found(format!(
                "no job {id}"
            ))))
            .await;
        return false;
    };
    t.send(Response::End(Box::new(status))).await.is_ok()
}

/// Writes one `Response::Chunk` frame of `len` bytes whose data goes from the output file
/// to the socket by `sendfile`, never through this process: the frame's header (exactly
/// what the codec would write before the data), then the data. The codec has nothing
/// buffered here: every earlier frame went out with `send`, which flushes.
async fn send_chunk(sock: &UnixStream, reader: &mut OutputReader, len: usize) -> io::Result<()> {
    let header = jobworker_protocol::chunk_frame_header(len)?;
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
