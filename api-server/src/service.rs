//! The `jobworker.v1.JobWorker` service: authorization, edge validation, and one
//! executor request per call.
//!
//! The owner of a new job and the scope of every other request come from the caller's
//! verified identity ([`ConnInfo`]), never from the request. Output streams each get
//! their own executor connection and a small bounded channel; the task that moves
//! frames from one to the other ends, closing the executor connection, as soon as the
//! client goes away, the job's output ends, or the server shuts down.

use std::sync::Arc;
use std::time::Duration;

use jobworker_proto::v1 as pb;
use jobworker_proto::v1::stream_job_output_response::Event;
use jobworker_protocol::{
    ErrorKind, JobId, Request as ExecRequest, Response as ExecResponse, validate,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::attach;
use crate::auth::{Authorizer, Caller, Shown};
use crate::convert;
use crate::errors::{self, to_status};
use crate::executor::{ExecutorClient, ExecutorError, OutputFrame, OutputStream};
use crate::listener::ConnInfo;

/// Messages buffered per output stream between the executor and the client: enough to
/// keep both busy, small enough that a stalled client costs at most this many chunks.
pub const STREAM_BUFFER: usize = 4;

pub struct JobWorkerService {
    /// Metrics of output bytes and streams, when the server keeps them.
    observer: Option<Arc<crate::observe::Observer>>,
    executor: ExecutorClient,
    auth: Authorizer,
    streams: Arc<Semaphore>,
    max_streams: u32,
    stop_timeout: Duration,
    shutdown: CancellationToken,
}

impl JobWorkerService {
    pub fn new(
        executor: ExecutorClient,
        auth: Authorizer,
        max_streams: u32,
        stop_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            observer: None,
            executor,
            auth,
            streams: Arc::new(Semaphore::new(max_streams as usize)),
            max_streams,
            stop_timeout,
            shutdown,
        }
    }

    /// With metrics of output bytes and open streams in `observer`.
    pub fn with_observer(mut self, observer: Arc<crate::observe::Observer>) -> Self {
        observer
            .metrics
            .set_streams(self.streams.clone(), self.max_streams);
        self.observer = Some(observer);
        self
    }

    /// The caller of a request; also marks the request as having reached its handler
    /// (see [`errors::reached`]). Every handler calls it first.
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        errors::reached(request);
        request
            .extensions()
            .get::<ConnInfo>()
            .map(|info| self.auth.caller(&info.identity))
            .ok_or_else(errors::unauthenticated)
    }

    /// One of the slots that bound long calls (output streams, attached sessions, waits).
    fn slot(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            to_status(
                ErrorKind::ResourceExhausted,
                &format!(
                    "too many output streams open on this server: at most {} at once \
                     (limits.max_streams); try again later",
                    self.max_streams
                ),
            )
        })
    }

    /// Opens an executor session for `request`, waits for its first frame and hands the
    /// rest to [`attach::pump`].
    async fn attached<C: attach::ClientMessage, M: attach::ServerMessage>(
        &self,
        caller: &Caller,
        request: ExecRequest,
        inbound: Streaming<C>,
        slot: OwnedSemaphorePermit,
        note: &Request<()>,
    ) -> Result<Response<ReceiverStream<Result<M, Status>>>, Status> {
        let shown = |s: Status| shown_in(s, &caller.identity);
        let mut session = self
            .executor
            .attach(request)
            .await
            .map_err(|e| shown(e.to_status()))?;
        // Starting a job or an exec waits for its command: the stop timeout bounds it.
        let first: M = attach::first(&mut session, self.stop_timeout)
            .await
            .map_err(shown)?;
        if let Some(id) = first.started() {
            crate::observe::note_job(note, id);
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let _ = tx.try_send(Ok(first));
        tokio::spawn(attach::pump(
            session,
            inbound,
            tx,
            slot,
            self.shutdown.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    /// One executor request for `caller`.
    async fn call(
        &self,
        caller: &Caller,
        request: ExecRequest,
        timeout: Option<Duration>,
    ) -> Result<ExecResponse, Status> {
        self.executor
            .call(request, timeout)
            .await
            .map_err(|e| shown_in(e.to_status(), &caller.identity))
    }
}

/// An executor's refusal as the caller sees it. The executor names owners as they are
/// (a quota refusal begins with the owner); an identity outside the plain set is shown
/// the way [`Shown`] renders it, as everywhere else.
fn shown_in(status: Status, identity: &str) -> Status {
    let shown = Shown(identity).to_string();
    if shown == identity || !status.message().contains(identity) {
        return status;
    }
    Status::new(status.code(), status.message().replace(identity, &shown))
}

impl JobWorkerService {
    /// The job a request names: its id, or (through the executor, which knows names and
    /// ids) its name or an id prefix, among the jobs `caller` may see. The call's record
    /// (`note`, the request or what carries its note) names the job.
    async fn job<T>(
        &self,
        caller: &Caller,
        note: &Request<T>,
        reference: &str,
    ) -> Result<JobId, Status> {
        let id = match reference.parse::<JobId>() {
            Ok(id) => id,
            Err(_) => {
                validate::reference(reference).map_err(|e| errors::wire_to_status(&e))?;
                let resolve = ExecRequest::Resolve {
                    scope: caller.scope(),
                    reference: reference.to_string(),
                };
                match self.call(caller, resolve, None).await? {
                    ExecResponse::Resolved { id } => id,
                    other => return Err(unexpected("resolve", &other)),
                }
            }
        };
        crate::observe::note_job(note, id);
        Ok(id)
    }
}

fn unexpected(what: &'static str, response: &ExecResponse) -> Status {
    tracing::error!("{what}: unexpected executor response {response:?}");
    to_status(ErrorKind::Internal, "")
}

#[tonic::async_trait]
impl pb::job_worker_server::JobWorker for JobWorkerService {
    async fn start_job(
        &self,
        request: Request<pb::StartJobRequest>,
    ) -> Result<Response<pb::StartJobResponse>, Status> {
        let caller = self.caller(&request)?;
        let request_note = tonic::Request::new(());
        let request_note = with_note(&request, request_note);
        let spec = convert::job_spec(request.into_inner())?;
        let response = self
            .call(
                &caller,
                ExecRequest::Start {
                    owner: caller.identity.clone(),
                    spec,
                },
                None,
            )
            .await?;
        match response {
            ExecResponse::Started { id } => {
                crate::observe::note_job(&request_note, id);
                tracing::info!(owner = %Shown(&caller.identity), job = %id, "job started");
                Ok(Response::new(pb::StartJobResponse { id: id.to_string() }))
            }
            other => Err(unexpected("start", &other)),
        }
    }

    async fn stop_job(
        &self,
        request: Request<pb::StopJobRequest>,
    ) -> Result<Response<pb::StopJobResponse>, Status> {
        let caller = self.caller(&request)?;
        let id = self.job(&caller, &request, &request.get_ref().id).await?;
        let response = self
            .call(
                &caller,
                ExecRequest::Stop {
                    scope: caller.scope(),
                    id,
                    caller: caller.identity.clone(),
                },
                Some(self.stop_timeout),
            )
            .await?;
        match response {
            ExecResponse::Status(status) => {
                tracing::info!(caller = %Shown(&caller.identity), job = %id, "job stopped");
                Ok(Response::new(pb::StopJobResponse {
                    status: Some(convert::job_status(*status)),
                }))
            }
            other => Err(unexpected("stop", &other)),
        }
    }

    async fn get_job_status(
        &self,
        request: Request<pb::GetJobStatusRequest>,
    ) -> Result<Response<pb::GetJobStatusResponse>, Status> {
        let caller = self.caller(&request)?;
        let id = self.job(&caller, &request, &request.get_ref().id).await?;
        let response = self
            .call(
                &caller,
                ExecRequest::Status {
                    scope: caller.scope(),
                    id,
                },
                None,
            )
            .await?;
        match response {
            ExecResponse::Status(status) => Ok(Response::new(pb::GetJobStatusResponse {
                status: Some(convert::job_status(*status)),
            })),
            other => Err(unexpected("status", &other)),
        }
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let scope = caller.list_scope(r.all).ok_or_else(|| {
            to_status(
                ErrorKind::PermissionDenied,
                "listing every job needs the admin role",
            )
        })?;
        let limit = convert::page_size(r.page_size)?;
        let after = convert::page_token(&r.page_token)?;
        let filter = convert::list_filter(&r)?;
        if filter.owner.as_ref().is_some_and(|o| *o != caller.identity) && !r.all {
            return Err(to_status(
                ErrorKind::PermissionDenied,
                "another owner's jobs need the admin role and `all`",
            ));
        }
        let response = self
            .call(
                &caller,
                ExecRequest::List {
                    scope,
                    after,
                    limit,
                    filter,
                },
                None,
            )
            .await?;
        match response {
            ExecResponse::Jobs { jobs, next_after } => Ok(Response::new(pb::ListJobsResponse {
                jobs: jobs.into_iter().map(convert::job_status).collect(),
                next_page_token: next_after.map(|id| id.to_string()).unwrap_or_default(),
            })),
            other => Err(unexpected("list", &other)),
        }
    }

    async fn get_quota(
        &self,
        request: Request<pb::GetQuotaRequest>,
    ) -> Result<Response<pb::GetQuotaResponse>, Status> {
        let caller = self.caller(&request)?;
        let scope = caller.list_scope(request.get_ref().all).ok_or_else(|| {
            to_status(
                ErrorKind::PermissionDenied,
                "everyone's quotas need the admin role",
            )
        })?;
        match self
            .call(&caller, ExecRequest::Quota { scope }, None)
            .await?
        {
            ExecResponse::Quotas(quotas) => Ok(Response::new(pb::GetQuotaResponse {
                quotas: quotas.into_iter().map(convert::quota).collect(),
            })),
            other => Err(unexpected("quota", &other)),
        }
    }

    type StreamJobOutputStream = ReceiverStream<Result<pb::StreamJobOutputResponse, Status>>;

    async fn stream_job_output(
        &self,
        request: Request<pb::StreamJobOutputRequest>,
    ) -> Result<Response<Self::StreamJobOutputStream>, Status> {
        let caller = self.caller(&request)?;
        let note = with_note(&request, tonic::Request::new(()));
        let r = request.into_inner();
        let id = self.job(&caller, &note, &r.id).await?;
        let slot = self.slot()?;
        let (from, streams) = convert::output_selection(&r)?;
        let output = self
            .executor
            .output(ExecRequest::Output {
                scope: caller.scope(),
                id,
                from,
                streams,
                follow: r.follow,
            })
            .await
            .map_err(|e| shown_in(e.to_status(), &caller.identity))?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(pump(
            output,
            tx,
            slot,
            self.shutdown.clone(),
            self.observer.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type RunJobStream = ReceiverStream<Result<pb::RunJobResponse, Status>>;

    async fn run_job(
        &self,
        request: Request<Streaming<pb::RunJobRequest>>,
    ) -> Result<Response<Self::RunJobStream>, Status> {
        let caller = self.caller(&request)?;
        let note = with_note(&request, tonic::Request::new(()));
        let mut inbound = request.into_inner();
        let start = match inbound.message().await.map_err(errors::inbound)? {
            Some(pb::RunJobRequest {
                event: Some(pb::run_job_request::Event::Start(start)),
            }) => start,
            _ => return Err(errors::invalid("the first message of a run is its start")),
        };
        let spec = convert::job_spec(start)?;
        let slot = self.slot()?;
        let request = ExecRequest::Run {
            owner: caller.identity.clone(),
            spec,
        };
        let response = self
            .attached(&caller, request, inbound, slot, &note)
            .await?;
        tracing::info!(owner = %Shown(&caller.identity), "job run, attached");
        Ok(response)
    }

    type ExecJobStream = ReceiverStream<Result<pb::ExecJobResponse, Status>>;

    async fn exec_job(
        &self,
        request: Request<Streaming<pb::ExecJobRequest>>,
    ) -> Result<Response<Self::ExecJobStream>, Status> {
        let caller = self.caller(&request)?;
        let note = with_note(&request, tonic::Request::new(()));
        let mut inbound = request.into_inner();
        let start = match inbound.message().await.map_err(errors::inbound)? {
            Some(pb::ExecJobRequest {
                event: Some(pb::exec_job_request::Event::Start(start)),
            }) => start,
            _ => return Err(errors::invalid("the first message of an exec is its start")),
        };
        let (reference, spec) = convert::exec_start(start)?;
        let id = self.job(&caller, &note, &reference).await?;
        let slot = self.slot()?;
        let request = ExecRequest::Exec {
            scope: caller.scope(),
            id,
            caller: caller.identity.clone(),
            spec,
        };
        let response = self
            .attached(&caller, request, inbound, slot, &note)
            .await?;
        tracing::info!(caller = %Shown(&caller.identity), job = %id, "exec attached");
        Ok(response)
    }

    async fn remove_job(
        &self,
        request: Request<pb::RemoveJobRequest>,
    ) -> Result<Response<pb::RemoveJobResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.get_ref();
        let id = self.job(&caller, &request, &r.id).await?;
        let remove = ExecRequest::Remove {
            scope: caller.scope(),
            id,
            force: r.force,
            caller: caller.identity.clone(),
        };
        match self.call(&caller, remove, Some(self.stop_timeout)).await? {
            ExecResponse::Status(status) => {
                tracing::info!(caller = %Shown(&caller.identity), job = %id, "job removed");
                Ok(Response::new(pb::RemoveJobResponse {
                    status: Some(convert::job_status(*status)),
                }))
            }
            other => Err(unexpected("remove", &other)),
        }
    }

    async fn wait_job(
        &self,
        request: Request<pb::WaitJobRequest>,
    ) -> Result<Response<pb::WaitJobResponse>, Status> {
        let caller = self.caller(&request)?;
        let id = self.job(&caller, &request, &request.get_ref().id).await?;
        let _slot = self.slot()?;
        let wait = ExecRequest::Wait {
            scope: caller.scope(),
            id,
        };
        // No deadline: a job may run for days. The call ends with the client's.
        let response = tokio::select! {
            r = self.call(&caller, wait, Some(Duration::MAX)) => r?,
            _ = self.shutdown.cancelled() => return Err(errors::shutting_down()),
        };
        match response {
            ExecResponse::Status(status) => Ok(Response::new(pb::WaitJobResponse {
                status: Some(convert::job_status(*status)),
            })),
            other => Err(unexpected("wait", &other)),
        }
    }

    type StreamAuditStream = ReceiverStream<Result<pb::AuditRecord, Status>>;

    async fn stream_audit(
        &self,
        request: Request<pb::StreamAuditRequest>,
    ) -> Result<Response<Self::StreamAuditStream>, Status> {
        let caller = self.caller(&request)?;
        if !caller.admin {
            return Err(to_status(
                ErrorKind::PermissionDenied,
                "the audit trail needs the admin role",
            ));
        }
        let r = request.into_inner();
        let owner = (!r.owner.is_empty()).then_some(r.owner);
        if let Some(o) = &owner {
            jobworker_protocol::validate::owner(o).map_err(|e| errors::invalid(e.message))?;
        }
        let query = jobworker_protocol::AuditQuery {
            since_ms: r.since.as_ref().map(convert::timestamp_ms),
            owner,
            follow: r.follow,
        };
        let slot = self.slot()?;
        let stream = self
            .executor
            .stream(ExecRequest::Audit(query))
            .await
            .map_err(|e| e.to_status())?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(relay(
            stream,
            tx,
            slot,
            self.shutdown.clone(),
            |frame| match frame {
                ExecResponse::AuditLine(l) => Relay::Send(pb::AuditRecord {
                    seq: l.seq,
                    json: l.line,
                    truncated: l.truncated,
                }),
                ExecResponse::StreamEnd => Relay::End,
                _ => Relay::Unexpected,
            },
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type StreamEventsStream = ReceiverStream<Result<pb::JobEvent, Status>>;

    async fn stream_events(
        &self,
        request: Request<pb::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let caller = self.caller(&request)?;
        let follow = request.get_ref().follow;
        let slot = self.slot()?;
        let stream = self
            .executor
            .stream(ExecRequest::Events {
                scope: caller.scope(),
                follow,
            })
            .await
            .map_err(|e| shown_in(e.to_status(), &caller.identity))?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let mut skipped = 0;
        tokio::spawn(relay(
            stream,
            tx,
            slot,
            self.shutdown.clone(),
            move |frame| match frame {
                ExecResponse::Event(e) => {
                    Relay::Send(convert::job_event(e, std::mem::take(&mut skipped)))
                }
                ExecResponse::Lost(n) => {
                    skipped += n;
                    Relay::Skip
                }
                ExecResponse::StreamEnd => Relay::End,
                _ => Relay::Unexpected,
            },
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type StreamJobUsageStream = ReceiverStream<Result<pb::JobUsageResponse, Status>>;

    async fn stream_job_usage(
        &self,
        request: Request<pb::StreamJobUsageRequest>,
    ) -> Result<Response<Self::StreamJobUsageStream>, Status> {
        let caller = self.caller(&request)?;
        let id = self.job(&caller, &request, &request.get_ref().id).await?;
        let r = request.into_inner();
        let interval_ms = if r.interval_ms == 0 {
            1000
        } else {
            r.interval_ms
        };
        let bounds = jobworker_protocol::observe::MIN_USAGE_INTERVAL_MS
            ..=jobworker_protocol::observe::MAX_USAGE_INTERVAL_MS;
        if !bounds.contains(&interval_ms) {
            return Err(errors::invalid(format!(
                "interval_ms: {} to {} (0 means 1000)",
                bounds.start(),
                bounds.end()
            )));
        }
        let slot = self.slot()?;
        let stream = self
            .executor
            .stream(ExecRequest::Usage {
                scope: caller.scope(),
                id,
                interval_ms,
                follow: r.follow,
            })
            .await
            .map_err(|e| shown_in(e.to_status(), &caller.identity))?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        use pb::job_usage_response::Event as UsageEvent;
        tokio::spawn(relay(
            stream,
            tx,
            slot,
            self.shutdown.clone(),
            |frame| match frame {
                ExecResponse::Usage(u) => Relay::Send(pb::JobUsageResponse {
                    event: Some(UsageEvent::Usage(convert::job_usage(u))),
                }),
                // Without `follow`, a running job's stream ends after its sample.
                ExecResponse::End(status) if !status.state.is_finished() => Relay::End,
                ExecResponse::End(status) => Relay::Last(pb::JobUsageResponse {
                    event: Some(UsageEvent::Ended(convert::job_status(*status))),
                }),
                _ => Relay::Unexpected,
            },
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A request carrying `from`'s call note, so a handler that consumes its request can
/// still note the call's job.
fn with_note<T>(from: &Request<T>, mut to: Request<()>) -> Request<()> {
    if let Some(n) = from.extensions().get::<crate::observe::CallNote>() {
        to.extensions_mut().insert(n.clone());
    }
    to
}

/// What [`relay`] does with an executor frame.
enum Relay<M> {
    Send(M),
    /// Send it, and it is the last.
    Last(M),
    Skip,
    End,
    Unexpected,
}

/// Moves an executor stream's frames to the client, turned into messages by `map`,
/// until its end, the client's leaving or shutdown; the slot and the executor
/// connection go when it returns.
async fn relay<M: Send + 'static>(
    mut stream: crate::executor::ResponseStream,
    tx: mpsc::Sender<Result<M, Status>>,
    slot: OwnedSemaphorePermit,
    shutdown: CancellationToken,
    mut map: impl FnMut(ExecResponse) -> Relay<M> + Send + 'static,
) {
    loop {
        let frame = tokio::select! {
            _ = tx.closed() => break,
            _ = shutdown.cancelled() => {
                let _ = tx.try_send(Err(errors::shutting_down()));
                break;
            }
            f = stream.next() => f,
        };
        let (message, last) = match frame {
            None => break,
            Some(Err(e)) => (Err(e.to_status()), true),
            Some(Ok(frame)) => match map(frame) {
                Relay::Send(m) => (Ok(m), false),
                Relay::Last(m) => {
                    stream.finish();
                    (Ok(m), true)
                }
                Relay::Skip => continue,
                Relay::End => {
                    stream.finish();
                    break;
                }
                Relay::Unexpected => {
                    tracing::error!("unexpected executor frame in a stream");
                    (Err(to_status(ErrorKind::Internal, "")), true)
                }
            },
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            sent = tx.send(message) => if sent.is_err() { break },
        }
        if last {
            break;
        }
    }
    drop(slot);
    drop(stream);
}

/// Moves frames from the executor to the client until the output ends, the client goes
/// away (its receiver is dropped), or the server shuts down. Returning drops the
/// executor connection and the stream's slot.
async fn pump(
    mut output: OutputStream,
    tx: mpsc::Sender<Result<pb::StreamJobOutputResponse, Status>>,
    slot: OwnedSemaphorePermit,
    shutdown: CancellationToken,
    observer: Option<Arc<crate::observe::Observer>>,
) {
    let mut slot = Some(slot);
    pump_frames(&mut output, &tx, &mut slot, &shutdown, observer.as_deref()).await;
    // The slot first, then the executor connection: whoever sees the connection gone
    // can open a new stream at once.
    drop(slot);
    drop(output);
}

async fn pump_frames(
    output: &mut OutputStream,
    tx: &mpsc::Sender<Result<pb::StreamJobOutputResponse, Status>>,
    slot: &mut Option<OwnedSemaphorePermit>,
    shutdown: &CancellationToken,
    observer: Option<&crate::observe::Observer>,
) {
    loop {
        let frame = tokio::select! {
            _ = tx.closed() => return,
            _ = shutdown.cancelled() => {
                let _ = tx.try_send(Err(errors::shutting_down()));
                return;
            }
            frame = output.next() => frame,
        };
        let (message, last) = match frame {
            None => return,
            Some(Ok(OutputFrame::Chunk(stream, data))) => {
                if let Some(o) = observer {
                    o.metrics.output_bytes(data.len() as u64);
                }
                (Ok(chunk(stream, data)), false)
            }
            Some(Ok(OutputFrame::End(status))) => {
                (Ok(event(Event::Status(convert::job_status(*status)))), true)
            }
            Some(Err(e)) => (Err(stream_error(&e)), true),
        };
        if last {
            // Freed before the client can see the end of its stream: a client that
            // opens its next stream on seeing it must not find the cap still taken.
            slot.take();
        }
        // Waits while the client is slow (the channel is full), which in turn stops
        // reading from the executor: a slow reader slows only itself.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            sent = tx.send(message) => if sent.is_err() { return },
        }
        if last {
            return;
        }
    }
}

fn event(e: Event) -> pb::StreamJobOutputResponse {
    pb::StreamJobOutputResponse {
        event: Some(e),
        stream: pb::OutputStream::Stdout.into(),
    }
}

fn chunk(stream: jobworker_protocol::Stream, data: bytes::Bytes) -> pb::StreamJobOutputResponse {
    pb::StreamJobOutputResponse {
        event: Some(Event::Data(data)),
        stream: convert::stream_to_pb(stream).into(),
    }
}

fn stream_error(e: &ExecutorError) -> Status {
    e.to_status()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executor_messages_show_identities_as_everywhere_else() {
        let quota = Status::resource_exhausted("José: 1 of 1 running jobs (the quota)");
        let s = shown_in(quota, "José");
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            s.message(),
            r#""Jos\u{e9}": 1 of 1 running jobs (the quota)"#
        );
        let plain = shown_in(Status::resource_exhausted("alice: 1 of 1"), "alice");
        assert_eq!(plain.message(), "alice: 1 of 1");
        let unrelated = shown_in(Status::not_found("no job 00"), "José");
        assert_eq!(unrelated.message(), "no job 00");
    }
}
