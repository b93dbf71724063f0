//! An in-process `jobworker.v1.JobWorker` server behind the real server's TLS policy
//! (`jobworker_api::tls::server_config`), whose jobs are scripted by their argv. It
//! lets jobctl's own behaviour (exit codes, output, errors, paging, signals) be tested
//! without root, an executor or real processes.
//!
//! | argv | the job |
//! |---|---|
//! | `exit N` | writes `exit N\n`, exits with N |
//! | `signal N` | killed by signal N |
//! | `oom` | killed by SIGKILL, OOM-killed, memory limit 64 MiB |
//! | `bytes N` | writes N pseudo-random bytes, exits with 0 |
//! | `wait` | writes `started\n`, runs until stopped, then is stopped by SIGTERM |
//! | `spew` | writes 4 MB of pseudo-random bytes, runs until stopped |
//! | `truncated` | writes `x`, its output marked truncated, exits with 0 |
//! | `fail` | StartJob answers FAILED_PRECONDITION |
//! | `busy` | StartJob answers RESOURCE_EXHAUSTED |
//! | anything else | exits with 0 without output |

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use jobworker_api::config::TlsPaths;
use jobworker_proto::v1 as pb;
use jobworker_proto::v1::job_worker_server::{JobWorker, JobWorkerServer};
use jobworker_proto::v1::stream_job_output_response::Event;
use pb::JobState;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};

use super::Pki;

/// Jobs per page of ListJobs, small so that paging is exercised.
pub const PAGE_SIZE: usize = 2;

struct Job {
    status: pb::JobStatus,
    output: Vec<u8>,
    /// Output written once the job is stopped (for `wait`).
    stopped: watch::Sender<bool>,
}

#[derive(Default)]
pub struct State {
    jobs: Mutex<BTreeMap<String, Job>>,
    next: AtomicUsize,
    /// StopJob calls received.
    pub stops: AtomicUsize,
    /// ListJobs calls received.
    pub list_calls: AtomicUsize,
}

impl State {
    /// Adds a finished job without output (for listing).
    pub fn add_finished(&self, owner: &str) -> String {
        let id = self.new_id();
        let (stopped, _) = watch::channel(true);
        let status = pb::JobStatus {
            id: id.clone(),
            owner: owner.to_string(),
            argv: vec!["true".into()],
            state: JobState::Exited as i32,
            exit_code: Some(0),
            ..Default::default()
        };
        self.jobs.lock().unwrap().insert(
            id.clone(),
            Job {
                status,
                output: Vec::new(),
                stopped,
            },
        );
        id
    }

    fn new_id(&self) -> String {
        format!("{:032x}", self.next.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

/// Deterministic pseudo-random bytes (xorshift), every byte value included.
pub fn pseudo_random(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn now() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: (d.subsec_millis() * 1_000_000) as i32,
    }
}

struct Service {
    state: Arc<State>,
}

fn not_found(id: &str) -> Status {
    Status::not_found(format!("no job {id}"))
}

#[tonic::async_trait]
impl JobWorker for Service {
    async fn start_job(
        &self,
        request: Request<pb::StartJobRequest>,
    ) -> Result<Response<pb::StartJobResponse>, Status> {
        let r = request.into_inner();
        let argv = r.argv.clone();
        let word = |i: usize| argv.get(i).map(String::as_str).unwrap_or("");
        let number = |i: usize| word(i).parse::<i64>().unwrap_or(0);
        let mut status = pb::JobStatus {
            owner: "alice".into(),
            argv: argv.clone(),
            limits: r.limits.clone(),
            started_at: Some(now()),
            ended_at: Some(now()),
            state: JobState::Exited as i32,
            exit_code: Some(0),
            ..Default::default()
        };
        let mut output = Vec::new();
        match word(0) {
            "fail" => {
                return Err(Status::failed_precondition(
                    "the job failed to start: exec fail: no such file or directory",
                ));
            }
            "busy" => return Err(Status::resource_exhausted("too many running jobs")),
            "exit" => {
                output = format!("exit {}\n", number(1)).into_bytes();
                status.exit_code = Some(number(1) as i32);
            }
            "signal" => {
                status.state = JobState::Signaled as i32;
                status.exit_code = None;
                status.signal = Some(number(1) as i32);
            }
            "oom" => {
                status.state = JobState::Signaled as i32;
                status.exit_code = None;
                status.signal = Some(9);
                status.oom_killed = true;
                status.limits = Some(pb::Limits {
                    memory_bytes: Some(64 << 20),
                    ..Default::default()
                });
            }
            "bytes" => output = pseudo_random(number(1) as usize),
            "truncated" => {
                output = b"x".to_vec();
                status.output_truncated = true;
            }
            "wait" | "spew" => {
                output = if word(0) == "wait" {
                    b"started\n".to_vec()
                } else {
                    pseudo_random(4_000_000)
                };
                status.state = JobState::Running as i32;
                status.exit_code = None;
                status.ended_at = None;
            }
            _ => {}
        }
        let id = self.state.new_id();
        status.id = id.clone();
        status.output_bytes = output.len() as u64;
        let (stopped, _) = watch::channel(!matches!(word(0), "wait" | "spew"));
        self.state.jobs.lock().unwrap().insert(
            id.clone(),
            Job {
                status,
                output,
                stopped,
            },
        );
        Ok(Response::new(pb::StartJobResponse { id }))
    }

    async fn stop_job(
        &self,
        request: Request<pb::StopJobRequest>,
    ) -> Result<Response<pb::StopJobResponse>, Status> {
        let id = request.into_inner().id;
        self.state.stops.fetch_add(1, Ordering::SeqCst);
        let mut jobs = self.state.jobs.lock().unwrap();
        let job = jobs.get_mut(&id).ok_or_else(|| not_found(&id))?;
        if job.status.state == JobState::Running as i32 {
            job.status.state = JobState::Stopped as i32;
            job.status.signal = Some(15);
            job.status.ended_at = Some(now());
            job.output.extend_from_slice(b"stopping\n");
            job.status.output_bytes = job.output.len() as u64;
            job.stopped.send_replace(true);
        }
        Ok(Response::new(pb::StopJobResponse {
            status: Some(job.status.clone()),
        }))
    }

    async fn get_job_status(
        &self,
        request: Request<pb::GetJobStatusRequest>,
    ) -> Result<Response<pb::GetJobStatusResponse>, Status> {
        let id = request.into_inner().id;
        let jobs = self.state.jobs.lock().unwrap();
        let job = jobs.get(&id).ok_or_else(|| not_found(&id))?;
        Ok(Response::new(pb::GetJobStatusResponse {
            status: Some(job.status.clone()),
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        self.state.list_calls.fetch_add(1, Ordering::SeqCst);
        let r = request.into_inner();
        if r.all {
            return Err(Status::permission_denied(
                "only administrators may list all jobs",
            ));
        }
        let start: usize = if r.page_token.is_empty() {
            0
        } else {
            r.page_token
                .parse()
                .map_err(|_| Status::invalid_argument("bad page token"))?
        };
        let jobs = self.state.jobs.lock().unwrap();
        let all: Vec<pb::JobStatus> = jobs.values().map(|j| j.status.clone()).collect();
        let page: Vec<pb::JobStatus> = all.iter().skip(start).take(PAGE_SIZE).cloned().collect();
        let next = start + page.len();
        Ok(Response::new(pb::ListJobsResponse {
            jobs: page,
            next_page_token: if next < all.len() {
                next.to_string()
            } else {
                String::new()
            },
        }))
    }

    type StreamJobOutputStream = ReceiverStream<Result<pb::StreamJobOutputResponse, Status>>;

    async fn stream_job_output(
        &self,
        request: Request<pb::StreamJobOutputRequest>,
    ) -> Result<Response<Self::StreamJobOutputStream>, Status> {
        let r = request.into_inner();
        let mut stopped = {
            let jobs = self.state.jobs.lock().unwrap();
            let job = jobs.get(&r.id).ok_or_else(|| not_found(&r.id))?;
            job.stopped.subscribe()
        };
        let (tx, rx) = mpsc::channel(4);
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut offset = r.offset as usize;
            loop {
                let (data, status, ended) = {
                    let jobs = state.jobs.lock().unwrap();
                    let Some(job) = jobs.get(&r.id) else { return };
                    let data = job.output.get(offset..).unwrap_or_default().to_vec();
                    (data, job.status.clone(), *job.stopped.borrow())
                };
                for chunk in data.chunks(64 * 1024) {
                    let message = pb::StreamJobOutputResponse {
                        event: Some(Event::Data(chunk.to_vec().into())),
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                offset += data.len();
                if ended || !r.follow {
                    let _ = tx
                        .send(Ok(pb::StreamJobOutputResponse {
                            event: Some(Event::Status(status)),
                        }))
                        .await;
                    return;
                }
                if stopped.wait_for(|s| *s).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A TLS connection for tonic.
struct Conn(TlsStream<TcpStream>);

impl Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A running mock server; stops when dropped.
pub struct Mock {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Mock {
    /// Serves on 127.0.0.1 with the server certificate and client CA of `pki`.
    pub fn start(pki: &Pki) -> Mock {
        Self::start_on(pki.dir.path(), "127.0.0.1:0")
    }

    /// Serves on `bind` (a loopback address) with the files in `dir`.
    pub fn start_on(dir: &Path, bind: &'static str) -> Mock {
        let tls = jobworker_api::tls::server_config(&TlsPaths {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_ca: dir.join("ca.pem"),
            crl: None,
        })
        .expect("server TLS configuration");
        let state = Arc::new(State::default());
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let service_state = state.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = TcpListener::bind(bind).await.expect("bind");
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let acceptor = TlsAcceptor::from(tls);
                let (conn_tx, conn_rx) = mpsc::channel::<io::Result<Conn>>(16);
                tokio::spawn(async move {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            return;
                        };
                        let acceptor = acceptor.clone();
                        let conn_tx = conn_tx.clone();
                        tokio::spawn(async move {
                            // Refused handshakes are the client's to report.
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                let _ = conn_tx.send(Ok(Conn(tls))).await;
                            }
                        });
                    }
                });
                let _ = tonic::transport::Server::builder()
                    .add_service(JobWorkerServer::new(Service {
                        state: service_state,
                    }))
                    .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), async {
                        let _ = shutdown_rx.await;
                    })
                    .await;
            });
        });
        let addr = addr_rx.recv().expect("mock server address");
        Mock {
            addr,
            state,
            shutdown: Some(shutdown_tx),
        }
    }

    /// `https://localhost:PORT`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
