//! Our own accept loop in front of tonic.
//!
//! For each connection: a slot of the connection cap is taken *before* the TCP accept
//! (so a flood of half-open handshakes cannot exceed the cap), the TLS handshake runs
//! under a timeout in its own task, the caller's identity is read from the verified
//! certificate, and only then is the stream handed to tonic. The slot is released when
//! tonic drops the connection. The identity reaches handlers through tonic's
//! [`Connected`] mechanism: it is in every request's extensions as [`ConnInfo`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::auth::{IdentityRules, Shown, identity_from_certificate};
use crate::idle::Activity;

/// What handlers learn about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The verified identity: the client certificate's subject common name.
    pub identity: Arc<str>,
    pub remote: SocketAddr,
    /// Open calls on this connection, for the idle timeout.
    pub activity: Arc<Activity>,
}

/// An authenticated TLS connection, holding its slot of the connection cap. Its reader
/// reports end-of-stream once no call has been open for the idle timeout, which makes
/// the HTTP/2 server close the connection.
pub struct TlsConn {
    io: TlsStream<TcpStream>,
    info: ConnInfo,
    idle_timeout: Duration,
    idle_timer: Pin<Box<Sleep>>,
    idled_out: bool,
    _slot: OwnedSemaphorePermit,
}

impl TlsConn {
    /// Polls the idle timer; true once the connection has been idle long enough.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        while self.idle_timer.as_mut().poll(cx).is_ready() {
            let wait = match self.info.activity.idle_for() {
                Some(idle) if idle >= self.idle_timeout => return true,
                Some(idle) => self.idle_timeout - idle,
                None => self.idle_timeout,
            };
            // Re-armed; the loop polls it once more to register the waker.
            self.idle_timer.as_mut().reset(Instant::now() + wait);
        }
        false
    }
}

impl Connected for TlsConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.idled_out || self.poll_idle(cx) {
            if !self.idled_out {
                tracing::debug!(remote = %self.info.remote, "closing an idle connection");
                self.idled_out = true;
            }
            // End of stream: the HTTP/2 server closes the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Settings of the accept loop.
#[derive(Debug, Clone)]
pub struct AcceptSettings {
    pub max_connections: u32,
    pub handshake_timeout: Duration,
    /// A connection without an open call for this long is closed.
    pub idle_timeout: Duration,
    /// Which common names are identities (the TLS verifier has checked already).
    pub identity: Arc<IdentityRules>,
}

/// Starts the accept loop. Returns the stream of authenticated connections to give to
/// tonic and the loop's task, which ends when `shutdown` is cancelled or tonic drops
/// the stream.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    settings: AcceptSettings,
    shutdown: CancellationToken,
) -> (ReceiverStream<io::Result<TlsConn>>, JoinHandle<()>) {
    // Connections wait here only while tonic takes them; a handful is plenty.
    let (tx, rx) = mpsc::channel(16);
    let slots = Arc::new(Semaphore::new(settings.max_connections as usize));
    let task = tokio::spawn(accept_loop(
        listener, acceptor, settings, slots, tx, shutdown,
    ));
    (ReceiverStream::new(rx), task)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    settings: AcceptSettings,
    slots: Arc<Semaphore>,
    tx: mpsc::Sender<io::Result<TlsConn>>,
    shutdown: CancellationToken,
) {
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: the error is transient,
                    // and retrying at once would spin. Back off briefly.
                    tracing::warn!("accept failed: {e}");
                    drop(slot);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let settings = settings.clone();
        // The handshake task ends by the timeout at the latest.
        tokio::spawn(async move {
            if let Some(conn) = handshake(acceptor, tcp, remote, settings, slot).await {
                // Fails only when tonic stopped taking connections (shutdown).
                let _ = tx.send(Ok(conn)).await;
            }
        });
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    settings: AcceptSettings,
    slot: OwnedSemaphorePermit,
) -> Option<TlsConn> {
    let timeout = settings.handshake_timeout;
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(%remote, "TCP_NODELAY: {e}");
    }
    let io = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Err(_) => {
            tracing::info!(%remote, "TLS handshake timed out");
            return None;
        }
        Ok(Err(e)) => {
            tracing::info!(
                %remote,
                "TLS handshake failed: {}",
                crate::tls::describe_handshake_error(&e)
            );
            return None;
        }
        Ok(Ok(io)) => io,
    };
    // The verifier already refused certificates without a usable identity; this only
    // reads it again from the verified leaf.
    let identity = match io
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| identity_from_certificate(leaf, &settings.identity))
    {
        Some(Ok(identity)) => identity,
        Some(Err(e)) => {
            tracing::info!(%remote, "connection refused: {e}");
            return None;
        }
        None => {
            tracing::info!(%remote, "connection refused: no client certificate");
            return None;
        }
    };
    tracing::debug!(%remote, identity = %Shown(&identity), "client authenticated");
    Some(TlsConn {
        io,
        info: ConnInfo {
            identity: identity.into(),
            remote,
            activity: Arc::new(Activity::new()),
        },
        idle_timeout: settings.idle_timeout,
        idle_timer: Box::pin(tokio::time::sleep(settings.idle_timeout)),
        idled_out: false,
        _slot: slot,
    })
}
