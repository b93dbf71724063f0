//! Metrics in the Prometheus text exposition format, on a listener of their own.
//!
//! Counters, gauges and histograms are plain atomics, updated where things happen: RPCs
//! (by method and code, with latency histograms by method) by [`crate::observe`]'s
//! layer, TLS handshake failures (by reason) by the listener, executor requests by the
//! executor client, output bytes and open streams by the service. At each scrape the
//! executor is asked for its own figures (`Metrics` request): running jobs, jobs started
//! and ended by state, refused starts by reason, output bytes on disk, the audit trail's
//! sequence number. Every label takes values from a fixed list: no job id, identity or
//! address is ever a label.
//!
//! The listener speaks just enough HTTP/1.1: `GET /metrics` answers the page, anything
//! else 404 or 405; one request per connection, a few connections at once, each with a
//! deadline. It is meant for loopback or a scraper's network only (see the deployment
//! notes): the page tells load and health, not secrets.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use jobworker_protocol::observe::{ENDED_STATES, REFUSAL_REASONS};
use jobworker_protocol::{ExecutorMetrics, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::executor::ExecutorClient;

/// Latency buckets, in seconds.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The RPC methods metrics name; any other path is `other`.
pub const METHODS: [&str; 17] = [
    "StartJob",
    "StopJob",
    "GetJobStatus",
    "ListJobs",
    "StreamJobOutput",
    "GetQuota",
    "RunJob",
    "ExecJob",
    "WaitJob",
    "StreamAudit",
    "StreamEvents",
    "StreamJobUsage",
    "Health/Check",
    "Health/Watch",
    "ServerReflectionInfo",
    "other",
    "(unknown)",
];

/// gRPC codes, by number.
pub const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Reasons a TLS handshake fails, as metrics name them.
pub const TLS_REASONS: [&str; 8] = [
    "timeout",
    "expired",
    "not_yet_valid",
    "untrusted",
    "revoked",
    "no_certificate",
    "rejected",
    "protocol",
];

/// Executor requests, as metrics name them.
pub const EXECUTOR_REQUESTS: [&str; 19] = [
    "hello",
    "start",
    "stop",
    "status",
    "list",
    "output",
    "ping",
    "quota",
    "run",
    "exec",
    "wait",
    "input",
    "input end",
    "resize",
    "report",
    "audit",
    "events",
    "usage",
    "metrics",
];

/// A histogram: counts per bucket (not cumulative), sum in microseconds.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(
            d.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// The API server's own figures.
pub struct Metrics {
    rpcs: Vec<[AtomicU64; CODES.len()]>,
    rpc_latency: Vec<Histogram>,
    tls_failures: [AtomicU64; TLS_REASONS.len()],
    executor_latency: Vec<Histogram>,
    output_bytes: AtomicU64,
    /// The service's stream slots and their number, for the open streams gauge.
    streams: OnceLock<(Arc<Semaphore>, u32)>,
    audit_records_dropped: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            rpcs: (0..METHODS.len())
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            rpc_latency: (0..METHODS.len()).map(|_| Histogram::default()).collect(),
            tls_failures: std::array::from_fn(|_| AtomicU64::new(0)),
            executor_latency: (0..EXECUTOR_REQUESTS.len())
                .map(|_| Histogram::default())
                .collect(),
            output_bytes: AtomicU64::new(0),
            streams: OnceLock::new(),
            audit_records_dropped: AtomicU64::new(0),
        }
    }
}

/// The index of an RPC's method in [`METHODS`], from its path.
pub fn method_index(path: &str) -> usize {
    let name = match path.rsplit_once('/') {
        Some((service, method)) => match service {
            "/jobworker.v1.JobWorker" => method,
            "/grpc.health.v1.Health" => match method {
                "Check" => "Health/Check",
                "Watch" => "Health/Watch",
                _ => "other",
            },
            "/grpc.reflection.v1.ServerReflection"
            | "/grpc.reflection.v1alpha.ServerReflection" => method,
            _ => "other",
        },
        None => "other",
    };
    METHODS
        .iter()
        .position(|m| *m == name)
        .unwrap_or(METHODS.len() - 2)
}

impl Metrics {
    pub fn rpc(&self, method: usize, code: usize, took: Duration) {
        let method = method.min(METHODS.len() - 1);
        self.rpcs[method][code.min(CODES.len() - 1)].fetch_add(1, Ordering::Relaxed);
        self.rpc_latency[method].observe(took);
    }

    pub fn tls_failure(&self, reason: usize) {
        self.tls_failures[reason.min(TLS_REASONS.len() - 1)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn executor_request(&self, name: &str, took: Duration) {
        if let Some(i) = EXECUTOR_REQUESTS.iter().position(|r| *r == name) {
            self.executor_latency[i].observe(took);
        }
    }

    pub fn output_bytes(&self, n: u64) {
        self.output_bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub fn audit_dropped(&self, n: u64) {
        self.audit_records_dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Tells the metrics where the service's stream slots are.
    pub fn set_streams(&self, slots: Arc<Semaphore>, max: u32) {
        let _ = self.streams.set((slots, max));
    }

    /// The page: the API server's figures and, when it answered, the executor's.
    pub fn render(&self, executor: Option<&ExecutorMetrics>) -> String {
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        head(
            &mut out,
            "jobworker_rpc_requests_total",
            "counter",
            "gRPC calls that ended, by method and status code.",
        );
        for (m, codes) in self.rpcs.iter().enumerate() {
            for (c, n) in codes.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "jobworker_rpc_requests_total{{method=\"{}\",code=\"{}\"}} {n}",
                        METHODS[m], CODES[c]
                    );
                }
            }
        }
        head(
            &mut out,
            "jobworker_rpc_duration_seconds",
            "histogram",
            "Time from a call's arrival to the end of its response, by method.",
        );
        for (m, h) in self.rpc_latency.iter().enumerate() {
            if h.count.load(Ordering::Relaxed) > 0 {
                h.render(
                    &mut out,
                    "jobworker_rpc_duration_seconds",
                    &format!("method=\"{}\"", METHODS[m]),
                );
            }
        }
        head(
            &mut out,
            "jobworker_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed, by reason.",
        );
        for (r, n) in self.tls_failures.iter().enumerate() {
            let _ = writeln!(
                out,
                "jobworker_tls_handshake_failures_total{{reason=\"{}\"}} {}",
                TLS_REASONS[r],
                n.load(Ordering::Relaxed)
            );
        }
        head(
            &mut out,
            "jobworker_output_bytes_sent_total",
            "counter",
            "Bytes of job output sent to clients.",
        );
        let _ = writeln!(
            out,
            "jobworker_output_bytes_sent_total {}",
            self.output_bytes.load(Ordering::Relaxed)
        );
        head(
            &mut out,
            "jobworker_open_streams",
            "gauge",
            "Output streams, attached sessions and waits open now.",
        );
        let open = self.streams.get().map_or(0, |(s, max)| {
            (*max as usize).saturating_sub(s.available_permits())
        });
        let _ = writeln!(out, "jobworker_open_streams {open}");
        head(
            &mut out,
            "jobworker_audit_records_dropped_total",
            "counter",
            "Records of this server for the audit trail dropped because its queue to the executor was full.",
        );
        let _ = writeln!(
            out,
            "jobworker_audit_records_dropped_total {}",
            self.audit_records_dropped.load(Ordering::Relaxed)
        );
        head(
            &mut out,
            "jobworker_executor_request_duration_seconds",
            "histogram",
            "Executor requests from sending to the answer, by request.",
        );
        for (i, h) in self.executor_latency.iter().enumerate() {
            if h.count.load(Ordering::Relaxed) > 0 {
                h.render(
                    &mut out,
                    "jobworker_executor_request_duration_seconds",
                    &format!("request=\"{}\"", EXECUTOR_REQUESTS[i]),
                );
            }
        }
        head(
            &mut out,
            "jobworker_executor_up",
            "gauge",
            "Whether the executor answered this scrape's request.",
        );
        let _ = writeln!(
            out,
            "jobworker_executor_up {}",
            u8::from(executor.is_some())
        );
        if let Some(e) = executor {
            render_executor(&mut out, e, head);
        }
        out
    }
}

fn render_executor(
    out: &mut String,
    e: &ExecutorMetrics,
    head: impl Fn(&mut String, &str, &str, &str),
) {
    head(
        out,
        "jobworker_executor_info",
        "gauge",
        "The executor's cgroup backend.",
    );
    let backend: String = e
        .cgroup_backend
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == ' ')
        .collect();
    let _ = writeln!(
        out,
        "jobworker_executor_info{{cgroup_backend=\"{backend}\"}} 1"
    );
    head(out, "jobworker_running_jobs", "gauge", "Jobs running now.");
    let _ = writeln!(out, "jobworker_running_jobs {}", e.running_jobs);
    head(
        out,
        "jobworker_known_jobs",
        "gauge",
        "Jobs the executor keeps, running or finished.",
    );
    let _ = writeln!(out, "jobworker_known_jobs {}", e.known_jobs);
    head(
        out,
        "jobworker_jobs_started_total",
        "counter",
        "Jobs started since the executor started.",
    );
    let _ = writeln!(out, "jobworker_jobs_started_total {}", e.jobs_started);
    head(
        out,
        "jobworker_jobs_ended_total",
        "counter",
        "Jobs ended since the executor started, by final state.",
    );
    for (i, s) in ENDED_STATES.iter().enumerate() {
        let _ = writeln!(
            out,
            "jobworker_jobs_ended_total{{state=\"{s}\"}} {}",
            e.jobs_ended.get(i).copied().unwrap_or(0)
        );
    }
    head(
        out,
        "jobworker_starts_refused_total",
        "counter",
        "Starts the executor refused, by reason.",
    );
    for (i, r) in REFUSAL_REASONS.iter().enumerate() {
        let _ = writeln!(
            out,
            "jobworker_starts_refused_total{{reason=\"{r}\"}} {}",
            e.starts_refused.get(i).copied().unwrap_or(0)
        );
    }
    head(
        out,
        "jobworker_output_bytes_on_disk",
        "gauge",
        "Bytes of job output the executor keeps on disk.",
    );
    let _ = writeln!(
        out,
        "jobworker_output_bytes_on_disk {}",
        e.output_bytes_on_disk
    );
    head(
        out,
        "jobworker_output_bytes_total",
        "counter",
        "Bytes of output written by jobs that ended since the executor started.",
    );
    let _ = writeln!(out, "jobworker_output_bytes_total {}", e.output_bytes_total);
    head(
        out,
        "jobworker_audit_sequence",
        "gauge",
        "Sequence number of the audit trail's last durable record.",
    );
    let _ = writeln!(out, "jobworker_audit_sequence {}", e.audit_seq);
    head(
        out,
        "jobworker_audit_commit_failures_total",
        "counter",
        "Audit trail commits that failed (what waited for them was refused).",
    );
    let _ = writeln!(
        out,
        "jobworker_audit_commit_failures_total {}",
        e.audit_failures
    );
    head(
        out,
        "jobworker_audit_commits_total",
        "counter",
        "Audit trail commits (one fsync each).",
    );
    let _ = writeln!(out, "jobworker_audit_commits_total {}", e.audit_commits);
    head(
        out,
        "jobworker_audit_records_total",
        "counter",
        "Audit records written.",
    );
    let _ = writeln!(out, "jobworker_audit_records_total {}", e.audit_records);
    head(
        out,
        "jobworker_audit_api_records_dropped_total",
        "counter",
        "API server records the executor dropped (its queue for them was full).",
    );
    let _ = writeln!(
        out,
        "jobworker_audit_api_records_dropped_total {}",
        e.audit_api_dropped
    );
}

/// Scrapes served at once; more wait in the kernel's queue.
const MAX_SCRAPES: usize = 4;
/// Time for a scraper to send its request and take the answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time the executor has to answer a scrape's request.
const EXECUTOR_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head read.
const MAX_HEAD: usize = 8192;

/// Serves the page until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    executor: ExecutorClient,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("metrics: accept: {e}");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let (metrics, executor) = (metrics.clone(), executor.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, scrape(stream, &metrics, &executor)).await;
            drop(permit);
        });
    }
}

async fn scrape(mut stream: TcpStream, metrics: &Metrics, executor: &ExecutorClient) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_HEAD {
            let _ = respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too large\n",
            )
            .await;
            return;
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        let _ = respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n",
        )
        .await;
        return;
    }
    if path != "/metrics" && !path.starts_with("/metrics?") {
        let _ = respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            "the metrics are at /metrics\n",
        )
        .await;
        return;
    }
    let figures = match executor
        .call(Request::Metrics, Some(EXECUTOR_TIMEOUT))
        .await
    {
        Ok(Response::Metrics(m)) => Some(m),
        _ => None,
    };
    let body = metrics.render(figures.as_deref());
    let body = if method == "HEAD" {
        String::new()
    } else {
        body
    };
    let _ = respond(
        &mut stream,
        "200 OK",
        "text/plain; version=0.0.4; charset=utf-8",
        &body,
    )
    .await;
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_come_from_a_fixed_list() {
        assert_eq!(
            METHODS[method_index("/jobworker.v1.JobWorker/StartJob")],
            "StartJob"
        );
        assert_eq!(
            METHODS[method_index("/grpc.health.v1.Health/Check")],
            "Health/Check"
        );
        assert_eq!(
            METHODS[method_index("/jobworker.v1.JobWorker/Nope")],
            "other"
        );
        assert_eq!(METHODS[method_index("/x.y/StartJob")], "other");
        assert_eq!(METHODS[method_index("garbage")], "other");
    }

    #[test]
    fn histograms_are_cumulative() {
        let m = Metrics::default();
        m.rpc(0, 0, Duration::from_micros(300));
        m.rpc(0, 5, Duration::from_secs(60));
        let page = m.render(None);
        assert!(
            page.contains("jobworker_rpc_requests_total{method=\"StartJob\",code=\"OK\"} 1"),
            "{page}"
        );
        assert!(
            page.contains("jobworker_rpc_requests_total{method=\"StartJob\",code=\"NOT_FOUND\"} 1"),
            "{page}"
        );
        assert!(
            page.contains(
                "jobworker_rpc_duration_seconds_bucket{method=\"StartJob\",le=\"0.0005\"} 1"
            ),
            "{page}"
        );
        assert!(
            page.contains(
                "jobworker_rpc_duration_seconds_bucket{method=\"StartJob\",le=\"+Inf\"} 2"
            ),
            "{page}"
        );
        assert!(page.contains("jobworker_executor_up 0"), "{page}");
    }
}
