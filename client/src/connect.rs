//! The gRPC channel to the API server, over jobctl's own TLS connector.
//!
//! tonic is given a connector (`Endpoint::connect_with_connector`) that opens the TCP
//! connection and runs the TLS handshake with [`crate::tls::client_config`], so the
//! policy is exactly ours and not tonic's defaults. The connection is made eagerly,
//! so an unreachable server or a refused certificate is reported before any call.
//!
//! In TLS 1.3 the server judges our certificate only after our side of the handshake
//! is done; its refusal is an alert that follows. Left to HTTP/2, that alert is often
//! lost behind a write error ("broken pipe"). So the connector waits for the server's
//! first bytes (its HTTP/2 SETTINGS, which it sends at once) before handing the
//! connection over: a refusal then surfaces as the TLS alert it is, and the bytes
//! read are replayed to HTTP/2 by [`Replay`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use jobworker_proto::v1::job_worker_client::JobWorkerClient;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{CliError, Context};
use crate::settings::Settings;

/// Time allowed for the TCP connection and the TLS handshake together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings on an otherwise quiet connection (a long `logs -f`), so a server that
/// vanished without closing the connection is noticed.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2 receive window of a stream, and of the whole connection.
pub const STREAM_WINDOW: u32 = 2 << 20;
pub const CONNECTION_WINDOW: u32 = 4 << 20;

/// A connected client and what its error messages may say about the connection.
#[derive(Clone)]
pub struct Client {
    pub api: JobWorkerClient<Channel>,
    pub ctx: Arc<Context>,
}

impl Client {
    /// Turns a failed call's status into jobctl's error.
    pub fn error(&self, status: &tonic::Status) -> CliError {
        CliError::from_status(status, &self.ctx)
    }
}

/// The error context of these settings.
pub fn context(settings: &Settings) -> Context {
    Context {
        server: settings.server.value.to_string(),
        host: settings.server.value.host.clone(),
        ca: settings.ca.describe(),
    }
}

/// Loads the TLS material and connects.
pub async fn connect(settings: &Settings) -> Result<Client, CliError> {
    let config = crate::tls::client_config(settings)?;
    let ctx = Arc::new(context(settings));
    let server = settings.server.value.clone();
    let name = server.server_name()?;
    let authority = server.authority();

    // The URI only names the authority: the connector below ignores it and does the
    // TLS itself. Its scheme is `http` so that tonic never adds a TLS layer of its own;
    // the requests' origin says `https`, which is what they travel over.
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| CliError::usage(format!("invalid server {server}: {e}")))?
        .origin(
            format!("https://{authority}")
                .parse::<Uri>()
                .map_err(|e| CliError::usage(format!("invalid server {server}: {e}")))?,
        )
        .connect_timeout(CONNECT_TIMEOUT)
        // Receive windows: how much output the server may send ahead of what jobctl has
        // written out. HTTP/2's default (64 KiB) makes a bulk stream wait for a window
        // update every 64 KiB; 2 MiB a stream (4 MiB the connection) is what jobctl may
        // hold in memory at most for it.
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .tcp_nodelay(true);

    let connector = TlsConnector::from(Arc::new(config));
    let host = server.host.clone();
    let port = server.port;
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let name = name.clone();
            let host = host.clone();
            async move {
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                let mut tls = connector.connect(name, tcp).await?;
                let mut first = vec![0u8; 16 * 1024];
                let n = tls.read(&mut first).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection right after the TLS handshake",
                    ));
                }
                first.truncate(n);
                Ok::<_, io::Error>(TokioIo::new(Replay::new(first, tls)))
            }
        }))
        .await
        .map_err(|e| CliError::from_transport(&e, &ctx))?;
    Ok(Client {
        api: JobWorkerClient::new(channel),
        ctx,
    })
}

/// A connection whose first bytes were already read: they are returned by the first
/// reads, then the connection's own.
pub struct Replay<S> {
    first: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Replay<S> {
    pub fn new(first: Vec<u8>, inner: S) -> Self {
        Self {
            first,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.first.len() {
            let n = buf.remaining().min(this.first.len() - this.pos);
            buf.put_slice(&this.first[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.first.len() {
                this.first = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn replay_returns_the_first_bytes_then_the_rest() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut replay = Replay::new(b"hello ".to_vec(), b);
        a.write_all(b"world").await.unwrap();
        drop(a);
        let mut all = Vec::new();
        let mut small = [0u8; 4];
        loop {
            let n = replay.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            all.extend_from_slice(&small[..n]);
        }
        assert_eq!(all, b"hello world");
    }
}
