//! The gRPC health service (`grpc.health.v1.Health`): SERVING only while the executor
//! answers.
//!
//! [`Health`] holds one bit, "the executor answered the last time we asked". Every
//! executor exchange updates it (a failure to connect flips it to unreachable, any
//! answer flips it back), and a background task pings the executor on an interval so
//! the bit also recovers when no client is calling. The same task publishes every
//! change to the health service, for the overall server ("") and for
//! `jobworker.v1.JobWorker`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health as HealthApi, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService, WatchStream};

use crate::errors;
use crate::executor::ExecutorClient;

/// The health service and its reporter.
pub fn service() -> (HealthReporter, HealthServer<Checked>) {
    let reporter = HealthReporter::new();
    let service = Checked(HealthService::from_health_reporter(reporter.clone()));
    (reporter, HealthServer::new(service))
}

/// tonic-health's service, with each request marked as having reached its handler, so
/// that a request that never decodes is answered INVALID_ARGUMENT (see
/// [`errors::StatusLayer`]) as for the jobs service.
#[derive(Debug)]
pub struct Checked(HealthService);

#[tonic::async_trait]
impl HealthApi for Checked {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        errors::reached(&request);
        self.0.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        errors::reached(&request);
        self.0.watch(request).await
    }
}

/// Whether the executor is answering. Cheap to clone; updates are synchronous.
#[derive(Debug, Clone)]
pub struct Health {
    reachable: Arc<watch::Sender<bool>>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Starts as unreachable until the first answer.
    pub fn new() -> Self {
        Self {
            reachable: Arc::new(watch::Sender::new(false)),
        }
    }

    pub fn executor_answered(&self) {
        self.set(true);
    }

    pub fn executor_unreachable(&self) {
        self.set(false);
    }

    fn set(&self, reachable: bool) {
        self.reachable.send_if_modified(|current| {
            let changed = *current != reachable;
            *current = reachable;
            changed
        });
    }

    pub fn is_reachable(&self) -> bool {
        *self.reachable.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.reachable.subscribe()
    }
}

/// Names under which the health service reports.
const SERVICES: [&str; 2] = ["", jobworker_proto::SERVICE_NAME];

async fn publish(reporter: &HealthReporter, reachable: bool) {
    let status = if reachable {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for name in SERVICES {
        reporter.set_service_status(name, status).await;
    }
}

/// Publishes the initial state (NOT_SERVING until the executor answers).
pub async fn init(reporter: &HealthReporter) {
    publish(reporter, false).await;
}

/// Pings the executor every `interval` and publishes every change of reachability,
/// until `shutdown`.
pub async fn run(
    reporter: HealthReporter,
    executor: ExecutorClient,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut changes = executor.health().subscribe();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut published = None;
    loop {
        let reachable = *changes.borrow_and_update();
        if published != Some(reachable) {
            tracing::info!(
                "executor {}",
                if reachable {
                    "reachable"
                } else {
                    "unreachable"
                }
            );
            publish(&reporter, reachable).await;
            published = Some(reachable);
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                publish(&reporter, false).await;
                return;
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = ticks.tick() => {
                // The result reaches `changes` through the client's observation.
                let _ = executor.ping().await;
            }
        }
    }
}
