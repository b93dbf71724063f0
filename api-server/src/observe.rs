//! What the API server tells about its decisions: a record of every call and of failed
//! TLS handshakes, sent to the executor for its audit trail (marked there as this
//! server's claims), and the metrics of the same events.
//!
//! Records wait in a bounded queue ([`QUEUE`]); a full queue drops them and counts the
//! drop (the count is reported with the next batch), so reporting never holds a call
//! back. One task sends them in batches of at most [`MAX_API_RECORDS`] over an executor
//! connection of their own. Failed handshakes are counted per peer address and reason:
//! the first of a pair is reported at once, the rest of the same pair within
//! [`TLS_WINDOW`] together with their count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use jobworker_protocol::observe::MAX_API_RECORDS;
use jobworker_protocol::{ApiCall, ApiEvent, ApiRecord, JobId, Request, Response};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::executor::ExecutorClient;
use crate::listener::ConnInfo;
use crate::metrics::{self, CODES, Metrics};

/// Records waiting for the executor at most.
pub const QUEUE: usize = 4096;
/// Failed handshakes of one peer and reason are reported together within this window.
pub const TLS_WINDOW: Duration = Duration::from_secs(10);
/// Peer and reason pairs tracked at once; beyond, failures are counted under one pair.
const MAX_TLS_PAIRS: usize = 1024;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The client certificate's serial number and SHA-256 fingerprint, hexadecimal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertInfo {
    pub serial: String,
    pub sha256: String,
}

impl CertInfo {
    pub fn of(der: &[u8]) -> CertInfo {
        use sha2::Digest;
        let serial = x509_parser::parse_x509_certificate(der)
            .map(|(_, c)| hex(c.raw_serial()))
            .unwrap_or_default();
        CertInfo {
            serial,
            sha256: hex(&sha2::Sha256::digest(der)),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Metrics and the reports to the executor, shared by the listener, the call layer and
/// the service.
pub struct Observer {
    pub metrics: Arc<Metrics>,
    queue: mpsc::Sender<ApiRecord>,
    dropped: std::sync::atomic::AtomicU64,
    tls: Mutex<TlsWindow>,
}

#[derive(Default)]
struct TlsWindow {
    started: Option<Instant>,
    /// Failures after the first, per pair, in the current window.
    pending: HashMap<(IpAddr, String), u64>,
}

impl Observer {
    /// An observer and the task that reports to `executor` until `shutdown`.
    pub fn start(
        executor: ExecutorClient,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> (Arc<Observer>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let observer = Arc::new(Observer {
            metrics,
            queue: tx,
            dropped: Default::default(),
            tls: Mutex::new(TlsWindow::default()),
        });
        let task = tokio::spawn(report_loop(observer.clone(), executor, rx, shutdown));
        (observer, task)
    }

    /// Queues a record, or drops and counts it when the queue is full.
    pub fn record(&self, event: ApiEvent) {
        let record = ApiRecord {
            time_ms: now_ms(),
            event,
        };
        if self.queue.try_send(record).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.metrics.audit_dropped(1);
        }
    }

    /// A failed TLS handshake from `peer`: counted in the metrics under its `class`
    /// (an index into [`metrics::TLS_REASONS`]) and reported (see the module).
    pub fn tls_failure(&self, peer: std::net::SocketAddr, class: usize, reason: &str) {
        self.metrics.tls_failure(class);
        let reason: String = reason.chars().take(200).collect();
        let mut w = self.tls.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if w.started
            .is_none_or(|s| now.duration_since(s) >= TLS_WINDOW)
        {
            let flushed = std::mem::take(&mut w.pending);
            w.started = Some(now);
            drop(w);
            self.flush_tls(flushed);
            w = self.tls.lock().unwrap_or_else(|e| e.into_inner());
        }
        let key = (peer.ip(), reason.clone());
        if let Some(n) = w.pending.get_mut(&key) {
            *n += 1;
            return;
        }
        let full = w.pending.len() >= MAX_TLS_PAIRS;
        let key = if full {
            (
                IpAddr::from([0, 0, 0, 0]),
                "(many peers and reasons)".to_string(),
            )
        } else {
            key
        };
        w.pending.entry(key).or_insert(0);
        drop(w);
        if !full {
            self.record(ApiEvent::TlsFailure {
                peer: peer.to_string(),
                reason,
                count: 1,
            });
        }
    }

    fn flush_tls(&self, pending: HashMap<(IpAddr, String), u64>) {
        for ((ip, reason), count) in pending {
            if count > 0 {
                self.record(ApiEvent::TlsFailure {
                    peer: ip.to_string(),
                    reason,
                    count,
                });
            }
        }
    }
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// Sends queued records in batches until shutdown (what is queued then is sent once
/// more).
async fn report_loop(
    observer: Arc<Observer>,
    executor: ExecutorClient,
    mut rx: mpsc::Receiver<ApiRecord>,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    let mut tick = tokio::time::interval(TLS_WINDOW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            n = rx.recv_many(&mut batch, MAX_API_RECORDS) => if n == 0 { return },
            _ = tick.tick() => {
                // Counts of a window that ended without a new failure to flush it.
                let mut w = observer.tls.lock().unwrap_or_else(|e| e.into_inner());
                if w.started.is_some_and(|s| s.elapsed() >= TLS_WINDOW) {
                    let flushed = std::mem::take(&mut w.pending);
                    w.started = None;
                    drop(w);
                    observer.flush_tls(flushed);
                }
                continue;
            }
            _ = shutdown.cancelled() => {
                rx.close();
                let _ = rx.recv_many(&mut batch, MAX_API_RECORDS).await;
                if batch.is_empty() { return }
            }
        }
        let dropped = observer
            .dropped
            .swap(0, std::sync::atomic::Ordering::Relaxed);
        if dropped > 0 && batch.len() < MAX_API_RECORDS {
            batch.push(ApiRecord {
                time_ms: now_ms(),
                event: ApiEvent::Dropped { count: dropped },
            });
        }
        let n = batch.len() as u64;
        match executor.call(Request::Report(batch), None).await {
            Ok(Response::Reported { accepted }) => {
                failing = false;
                if u64::from(accepted) < n {
                    tracing::warn!(
                        sent = n,
                        accepted,
                        "the executor dropped audit records it had no room for"
                    );
                }
            }
            Ok(other) => tracing::error!("audit report: unexpected answer {other:?}"),
            Err(e) => {
                // Loud once per outage: every call of it would say the same.
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(
                        records = n,
                        "audit report: {e}; records are lost until the executor answers"
                    );
                }
                observer.metrics.audit_dropped(n);
            }
        }
        if shutdown.is_cancelled() && rx.is_empty() {
            return;
        }
    }
}

/// Where a handler notes the job its call named or created, for the call's record.
#[derive(Debug, Clone, Default)]
pub struct CallNote(Arc<Mutex<Option<JobId>>>);

/// Notes `id` as the job of `request`'s call.
pub fn note_job<T>(request: &tonic::Request<T>, id: JobId) {
    if let Some(n) = request.extensions().get::<CallNote>() {
        *n.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
    }
}

/// Records every call once its response has ended (or was dropped: the client left):
/// wraps the server's routes.
#[derive(Clone)]
pub struct CallRecordLayer {
    observer: Arc<Observer>,
}

impl CallRecordLayer {
    pub fn new(observer: Arc<Observer>) -> Self {
        Self { observer }
    }
}

impl<S> Layer<S> for CallRecordLayer {
    type Service = CallRecords<S>;

    fn layer(&self, inner: S) -> CallRecords<S> {
        CallRecords {
            inner,
            observer: self.observer.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CallRecords<S> {
    inner: S,
    observer: Arc<Observer>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for CallRecords<S>
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

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let note = CallNote::default();
        request.extensions_mut().insert(note.clone());
        let call = Call {
            observer: self.observer.clone(),
            started: Instant::now(),
            path: request.uri().path().to_owned(),
            conn: request.extensions().get::<ConnInfo>().cloned(),
            note,
            code: None,
            done: false,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut call = call;
            let response = response.await?;
            call.code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            Ok(response.map(|body| Body::new(RecordedBody { inner: body, call })))
        })
    }
}

/// One call being answered.
struct Call {
    observer: Arc<Observer>,
    started: Instant,
    path: String,
    conn: Option<ConnInfo>,
    note: CallNote,
    /// The gRPC status code, once known (response headers or trailers).
    code: Option<usize>,
    done: bool,
}

impl Call {
    fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let took = self.started.elapsed();
        // A response that ended without a status, or was dropped: the client left.
        let code = self.code.unwrap_or(1);
        let method = metrics::method_index(&self.path);
        self.observer.metrics.rpc(method, code, took);
        let Some(conn) = &self.conn else { return };
        let job = *self.note.0.lock().unwrap_or_else(|e| e.into_inner());
        let name = self.path.rsplit('/').next().unwrap_or_default();
        self.observer.record(ApiEvent::Call(ApiCall {
            identity: conn.identity.to_string(),
            cert_serial: conn.cert.serial.clone(),
            cert_sha256: conn.cert.sha256.clone(),
            peer: conn.remote.to_string(),
            method: name.chars().filter(|c| !c.is_control()).take(128).collect(),
            job,
            code: CODES.get(code).copied().unwrap_or("UNKNOWN").to_owned(),
            duration_us: took.as_micros().min(u128::from(u64::MAX)) as u64,
        }));
    }
}

/// A response body that records its call when it ends or is dropped.
struct RecordedBody {
    inner: Body,
    call: Call,
}

impl HttpBody for RecordedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame
                    .trailers_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                {
                    self.call.code = Some(code);
                }
            }
            Poll::Ready(None) => {
                if self.call.code.is_none() {
                    self.call.code = Some(0);
                }
                self.call.finish();
            }
            Poll::Ready(Some(Err(_))) => self.call.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RecordedBody {
    fn drop(&mut self) {
        self.call.finish();
    }
}

/// The class of a failed TLS handshake, an index into [`metrics::TLS_REASONS`].
pub fn tls_class(e: &std::io::Error) -> usize {
    use rustls::{CertificateError, Error};
    let class = match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(Error::InvalidCertificate(c)) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::UnknownIssuer => "untrusted",
            CertificateError::Revoked => "revoked",
            _ => "rejected",
        },
        Some(Error::NoCertificatesPresented) => "no_certificate",
        _ => "protocol",
    };
    metrics::TLS_REASONS
        .iter()
        .position(|r| *r == class)
        .unwrap_or(metrics::TLS_REASONS.len() - 1)
}
