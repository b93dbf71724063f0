//! Idle connections: a connection on which no call has been open for the idle timeout
//! is closed.
//!
//! Each connection has an [`Activity`] record, shared through its [`ConnInfo`]: a count
//! of open calls and the time of the last change. A tower layer ([`TrackCallsLayer`])
//! holds a [`CallGuard`] for every call until its response body is finished or dropped,
//! so a long output stream counts as open for its whole life. The connection's reader
//! ([`crate::listener::TlsConn`]) checks the record when its idle timer fires and ends
//! the connection if it has been idle long enough. HTTP/2 keepalive pings are not
//! calls: a connection kept alive only by pings still times out.
//!
//! [`ConnInfo`]: crate::listener::ConnInfo

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::listener::ConnInfo;

/// Calls open on one connection and when that last changed.
#[derive(Debug)]
pub struct Activity {
    open: AtomicUsize,
    /// Milliseconds since `base` of the last change.
    last_change_ms: AtomicU64,
    base: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        Self {
            open: AtomicUsize::new(0),
            last_change_ms: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_change_ms.store(now, Ordering::Release);
    }

    /// Marks a call open until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> CallGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.touch();
        CallGuard(self.clone())
    }

    /// How long the connection has had no open call; `None` while a call is open.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_change_ms.load(Ordering::Acquire));
        Some(self.base.elapsed().saturating_sub(last))
    }
}

/// One open call.
#[derive(Debug)]
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Wraps the server's routes so every call is counted on its connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackCallsLayer;

impl<S> Layer<S> for TrackCallsLayer {
    type Service = TrackCalls<S>;

    fn layer(&self, inner: S) -> TrackCalls<S> {
        TrackCalls { inner }
    }
}

#[derive(Debug, Clone)]
pub struct TrackCalls<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for TrackCalls<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let guard = request
            .extensions()
            .get::<ConnInfo>()
            .map(|info| info.activity.begin());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(match guard {
                Some(guard) => response.map(|body| Body::new(GuardedBody::new(body, guard))),
                None => response,
            })
        })
    }
}

/// A response body that holds `G` (a call's place in a count) until it is done or
/// dropped.
pub struct GuardedBody<G> {
    inner: Body,
    _guard: G,
}

impl<G> GuardedBody<G> {
    pub fn new(inner: Body, guard: G) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<G: Unpin> HttpBody for GuardedBody<G> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_idle_only_without_open_calls() {
        let activity = Arc::new(Activity::new());
        assert!(activity.idle_for().is_some());
        let first = activity.begin();
        let second = activity.begin();
        assert_eq!(activity.idle_for(), None);
        drop(first);
        assert_eq!(activity.idle_for(), None);
        drop(second);
        let idle = activity.idle_for().expect("idle again");
        assert!(idle < Duration::from_secs(5));
    }
}
