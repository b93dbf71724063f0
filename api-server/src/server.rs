//! Assembling the server: TLS and listener first ([`prepare`], before the seccomp
//! filter), then serving ([`Prepared::serve`]) until a shutdown signal, then a drain
//! with a deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use jobworker_proto::v1::job_worker_server::JobWorkerServer;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::auth::Authorizer;
use crate::config::Config;
use crate::errors::{self, MAX_REQUEST_BYTES};
use crate::executor::{ExecutorClient, Timeouts};
use crate::health::{self, Health};
use crate::idle::TrackCallsLayer;
use crate::limits::{CallLimitsLayer, Caps};
use crate::listener::{self, AcceptSettings};
use crate::metrics::Metrics;
use crate::observe::{CallRecordLayer, Observer};
use crate::service::JobWorkerService;
use crate::tls;

/// A server with its keys loaded and its listener bound, not yet serving.
pub struct Prepared {
    config: Config,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    tls: Arc<ServerConfig>,
}

/// Loads the TLS material and binds the listener.
pub async fn prepare(config: Config) -> anyhow::Result<Prepared> {
    let tls = tls::server_config(&config.tls, &config.identity)?;
    let listener =
        bind(config.listen).with_context(|| format!("listen: cannot bind {}", config.listen))?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => {
            Some(bind(addr).with_context(|| format!("metrics.listen: cannot bind {addr}"))?)
        }
        None => None,
    };
    Ok(Prepared {
        config,
        listener,
        metrics_listener,
        tls,
    })
}

/// Pending connections the kernel queues before the accept loop takes them. The accept
/// loop itself sheds load past the connection cap; a deep queue keeps a burst of clients
/// (each soon accepted, or refused and closed) from hanging half-open in SYN backlog.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds the listening socket with SO_REUSEADDR and a deep backlog.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Prepared {
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// The metrics listener's address, when there is one.
    pub fn metrics_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        Ok(self
            .metrics_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?)
    }

    /// Serves until `signal` completes, then stops accepting, ends open output streams,
    /// and waits up to the configured grace period for connections to finish.
    pub async fn serve(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        let config = self.config;
        let shutdown = CancellationToken::new();

        let metrics = Arc::new(Metrics::default());
        let executor = ExecutorClient::new(
            config.executor_socket.clone(),
            Timeouts {
                connect: config.connect_timeout,
                request: config.request_timeout,
            },
            Health::new(),
        )
        .with_metrics(metrics.clone());
        // Reports outlive the drain: the calls that end during it are recorded too.
        let reports_end = CancellationToken::new();
        let (observer, report_task) =
            Observer::start(executor.clone(), metrics.clone(), reports_end.clone());
        let metrics_task = self.metrics_listener.map(|l| {
            tokio::spawn(crate::metrics::serve(
                l,
                metrics.clone(),
                executor.clone(),
                shutdown.clone(),
            ))
        });
        let (reporter, health_service) = health::service();
        health::init(&reporter).await;
        let health_task = tokio::spawn(health::run(
            reporter,
            executor.clone(),
            config.health_interval,
            shutdown.clone(),
        ));

        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(jobworker_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building the reflection service")?;

        let service = JobWorkerServer::new(
            JobWorkerService::new(
                executor,
                Authorizer::new(config.admins.iter().cloned()),
                config.max_streams,
                config.stop_timeout,
                shutdown.clone(),
            )
            .with_observer(observer.clone()),
        )
        .max_decoding_message_size(MAX_REQUEST_BYTES);

        let (incoming, accept_task) = listener::incoming(
            self.listener,
            TlsAcceptor::from(self.tls),
            AcceptSettings {
                max_handshakes: config.max_handshakes,
                max_handshakes_per_source: config.max_handshakes_per_source,
                handshake_timeout: config.handshake_timeout,
                idle_timeout: config.idle_timeout,
                identity: Arc::new(config.identity.clone()),
                caps: Caps {
                    max_connections: config.max_connections as usize,
                    connections_per_identity: config.max_connections_per_identity as usize,
                    max_calls: config.max_calls as usize,
                    calls_per_identity: config.max_calls_per_identity as usize,
                    streams_per_identity: config.max_streams_per_identity as usize,
                },
                observer: Some(observer.clone()),
            },
            shutdown.clone(),
        );

        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(config.keepalive_interval))
            .http2_keepalive_timeout(Some(config.keepalive_timeout))
            .max_concurrent_streams(Some(config.max_streams_per_connection))
            .layer(CallRecordLayer::new(observer.clone()))
            .layer(errors::StatusLayer)
            .layer(TrackCallsLayer)
            .layer(CallLimitsLayer)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
        let mut server = std::pin::pin!(server);

        let early = tokio::select! {
            result = &mut server => Some(result),
            () = signal => None,
        };
        shutdown.cancel();
        let result = match early {
            Some(result) => result.context("serving"),
            None => {
                tracing::info!(
                    "shutting down: draining connections for up to {:?}",
                    config.shutdown_grace
                );
                match tokio::time::timeout(config.shutdown_grace, &mut server).await {
                    Ok(result) => result.context("serving"),
                    Err(_) => {
                        tracing::warn!("drain deadline passed; closing remaining connections");
                        Ok(())
                    }
                }
            }
        };
        // Both end on the cancellation.
        let _ = accept_task.await;
        let _ = health_task.await;
        if let Some(t) = metrics_task {
            let _ = t.await;
        }
        // What is queued is sent once more, under the executor's request timeout.
        reports_end.cancel();
        let _ = report_task.await;
        result
    }
}
