//! Our own accept loop in front of tonic.
//!
//! Every connection is accepted at once, so that the kernel's accept queue never holds
//! a well-behaved client behind a flood. Then, in two stages with budgets of their own:
//!
//! 1. Before authentication, the connection takes a place in the handshake budget
//!    ([`crate::admission`]: per source and in total, the oldest handshake giving way
//!    when a budget is full), and its TLS handshake runs in its own task under the
//!    handshake deadline.
//! 2. Once the certificate is verified, its identity is admitted against the
//!    connection caps ([`crate::limits`]: per identity and in total). A connection past
//!    a cap is still handed to tonic, marked refused, so that its calls are answered
//!    RESOURCE_EXHAUSTED naming the cap; it is closed at the handshake deadline.
//!
//! The identity reaches handlers through tonic's [`Connected`] mechanism: it is in
//! every request's extensions as [`ConnInfo`]. A connection's place is given back
//! before the client can see the connection end: when the server starts to close it,
//! or when it is dropped.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::admission::{Displaced, HandshakeBudget, HandshakeSlot, Source};
use crate::auth::{IdentityRules, Shown, identity_from_certificate};
use crate::idle::Activity;
use crate::limits::{Admission, Caps, ConnSlot, Limits, Usage};

/// What handlers learn about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The verified identity: the client certificate's subject common name.
    pub identity: Arc<str>,
    pub remote: SocketAddr,
    /// Open calls on this connection, for the idle timeout.
    pub activity: Arc<Activity>,
    /// Whether the connection was admitted, and if so its identity's usage.
    pub access: Access,
    /// The client certificate's serial and fingerprint, for the audit trail.
    pub cert: Arc<crate::observe::CertInfo>,
}

/// A connection's standing against the connection caps.
#[derive(Debug, Clone)]
pub enum Access {
    /// Admitted: its calls count against its identity's usage.
    Admitted(Arc<Usage>),
    /// Past a cap: every call is answered RESOURCE_EXHAUSTED with this message.
    Refused(Arc<str>),
}

/// When the server ends a connection by itself.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// After this long without an open call.
    Idle(Duration),
    /// At the timer's deadline, whatever its calls (a refused connection).
    Deadline,
}

/// An authenticated TLS connection, holding its place among the connections. Its
/// reader reports end-of-stream once the server is done with it (idle long enough, or
/// a refused connection's deadline), which makes the HTTP/2 server close it.
pub struct TlsConn {
    // Dropped first: whoever sees the connection closed finds its place free.
    slot: Option<ConnSlot>,
    io: TlsStream<TcpStream>,
    info: ConnInfo,
    ending: Ending,
    timer: Pin<Box<Sleep>>,
    ended: bool,
}

impl TlsConn {
    /// Polls the timer; true once the server is done with the connection.
    fn poll_end(&mut self, cx: &mut Context<'_>) -> bool {
        while self.timer.as_mut().poll(cx).is_ready() {
            let idle_timeout = match self.ending {
                Ending::Deadline => return true,
                Ending::Idle(timeout) => timeout,
            };
            let wait = match self.info.activity.idle_for() {
                Some(idle) if idle >= idle_timeout => return true,
                Some(idle) => idle_timeout - idle,
                None => idle_timeout,
            };
            // Re-armed; the loop polls it once more to register the waker.
            self.timer.as_mut().reset(Instant::now() + wait);
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
        if self.ended || self.poll_end(cx) {
            if !self.ended {
                match self.ending {
                    Ending::Idle(_) => {
                        tracing::debug!(remote = %self.info.remote, "closing an idle connection");
                    }
                    Ending::Deadline => {
                        tracing::debug!(remote = %self.info.remote, "closing a refused connection");
                    }
                }
                self.ended = true;
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
        // The connection is ending: its place is free before the peer can see the end.
        self.slot = None;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Settings of the accept loop.
#[derive(Debug, Clone)]
pub struct AcceptSettings {
    /// Connections in their TLS handshake, all sources.
    pub max_handshakes: u32,
    /// Connections in their TLS handshake from one source.
    pub max_handshakes_per_source: u32,
    /// Time allowed for the handshake; also how long a refused connection stays open.
    pub handshake_timeout: Duration,
    /// A connection without an open call for this long is closed.
    pub idle_timeout: Duration,
    /// Which common names are identities (the TLS verifier has checked already).
    pub identity: Arc<IdentityRules>,
    /// The caps of authenticated connections and their calls.
    pub caps: Caps,
    /// Where failed handshakes are counted and reported.
    pub observer: Option<Arc<crate::observe::Observer>>,
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
    let budget = HandshakeBudget::new(
        settings.max_handshakes as usize,
        settings.max_handshakes_per_source as usize,
    );
    let limits = Limits::new(settings.caps);
    let task = tokio::spawn(accept_loop(
        listener, acceptor, settings, budget, limits, tx, shutdown,
    ));
    (ReceiverStream::new(rx), task)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    settings: AcceptSettings,
    budget: Arc<HandshakeBudget>,
    limits: Arc<Limits>,
    tx: mpsc::Sender<io::Result<TlsConn>>,
    shutdown: CancellationToken,
) {
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            permit = budget.socket() => permit,
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
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let source = Source::of(remote.ip());
        let (slot, displaced) = budget.admit(source);
        match displaced {
            None => {}
            Some(Displaced::SameSource) => tracing::debug!(
                %remote,
                "{source} has {} handshakes in progress: its oldest gives way",
                settings.max_handshakes_per_source
            ),
            Some(Displaced::Total) => tracing::debug!(
                %remote,
                "{} handshakes in progress: the oldest gives way",
                settings.max_handshakes
            ),
        }
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let settings = settings.clone();
        let limits = limits.clone();
        // The handshake task ends by the deadline at the latest, or sooner if displaced.
        tokio::spawn(async move {
            let conn = handshake(acceptor, tcp, remote, &settings, slot, &limits).await;
            // From here on the connection is counted among the authenticated ones.
            drop(permit);
            if let Some(conn) = conn {
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
    settings: &AcceptSettings,
    slot: HandshakeSlot,
    limits: &Arc<Limits>,
) -> Option<TlsConn> {
    let timeout = settings.handshake_timeout;
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(%remote, "TCP_NODELAY: {e}");
    }
    let accepted = tokio::select! {
        biased;
        _ = slot.displaced() => {
            tracing::debug!(%remote, "TLS handshake dropped for a newer connection");
            return None;
        }
        accepted = tokio::time::timeout(timeout, acceptor.accept(tcp)) => accepted,
    };
    drop(slot);
    let io = match accepted {
        Err(_) => {
            tracing::info!(%remote, "TLS handshake timed out");
            if let Some(o) = &settings.observer {
                o.tls_failure(remote, 0, "the handshake timed out");
            }
            return None;
        }
        Ok(Err(e)) => {
            let why = crate::tls::describe_handshake_error(&e);
            tracing::info!(%remote, "TLS handshake failed: {why}");
            if let Some(o) = &settings.observer {
                o.tls_failure(remote, crate::observe::tls_class(&e), &why);
            }
            return None;
        }
        Ok(Ok(io)) => io,
    };
    // The verifier already refused certificates without a usable identity; this only
    // reads it again from the verified leaf.
    let leaf = io
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first());
    let cert = Arc::new(
        leaf.map(|l| crate::observe::CertInfo::of(l))
            .unwrap_or_default(),
    );
    let identity = match leaf.map(|leaf| identity_from_certificate(leaf, &settings.identity)) {
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
    let shown = Shown(&identity);
    let (slot, access, ending) = match limits.admit(&identity) {
        Admission::Admitted(slot) => {
            tracing::debug!(%remote, identity = %shown, "client authenticated");
            let access = Access::Admitted(slot.usage().clone());
            (slot, access, Ending::Idle(settings.idle_timeout))
        }
        Admission::Refused(slot, message) => {
            tracing::info!(%remote, identity = %shown, "connection refused: {message}");
            (slot, Access::Refused(message.into()), Ending::Deadline)
        }
        Admission::Closed(message) => {
            tracing::info!(%remote, identity = %shown, "connection closed: {message}");
            return None;
        }
    };
    // A refused connection stays open for one more handshake timeout: long enough to
    // answer the call its client makes at once.
    let timer = match ending {
        Ending::Idle(idle) => tokio::time::sleep(idle),
        Ending::Deadline => tokio::time::sleep(timeout),
    };
    Some(TlsConn {
        slot: Some(slot),
        io,
        info: ConnInfo {
            identity: identity.into(),
            remote,
            activity: Arc::new(Activity::new()),
            access,
            cert,
        },
        ending,
        timer: Box::pin(timer),
        ended: false,
    })
}
