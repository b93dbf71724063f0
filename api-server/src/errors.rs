//! The one place where failures become gRPC statuses.
//!
//! Every error a client can see goes through [`to_status`]: executor errors arrive as a
//! [`WireError`] (kind and message), failures to reach the executor are turned into
//! [`ErrorKind::Unavailable`] first, and bad input found at the edge is an
//! [`ErrorKind::InvalidArgument`]. Internal details (paths, OS errors) are logged where
//! they happen and never reach this function's output.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use jobworker_protocol::{ErrorKind, WireError};
use tonic::{Code, Status};
use tower::{Layer, Service};

/// What a client sees when the executor cannot be reached or does not answer in time.
pub const UNAVAILABLE_MESSAGE: &str = "executor unavailable";

/// What a client sees for a fault inside the server or the executor.
pub const INTERNAL_MESSAGE: &str = "internal error";

/// Maps an error kind and its user-facing message to a gRPC status.
///
/// | kind | code |
/// |---|---|
/// | `InvalidArgument` | `INVALID_ARGUMENT` |
/// | `NotFound` | `NOT_FOUND` |
/// | `ResourceExhausted` | `RESOURCE_EXHAUSTED` |
/// | `PermissionDenied` | `PERMISSION_DENIED` |
/// | `FailedToStart` | `FAILED_PRECONDITION` (the message says why) |
/// | `FailedPrecondition` | `FAILED_PRECONDITION` |
/// | `AlreadyExists` | `ALREADY_EXISTS` |
/// | `Unavailable` | `UNAVAILABLE` ("executor unavailable") |
/// | `VersionMismatch`, `Internal` | `INTERNAL` ("internal error") |
pub fn to_status(kind: ErrorKind, message: &str) -> Status {
    match kind {
        ErrorKind::InvalidArgument => Status::invalid_argument(message),
        ErrorKind::NotFound => Status::not_found(message),
        ErrorKind::ResourceExhausted => Status::resource_exhausted(message),
        ErrorKind::PermissionDenied => Status::permission_denied(message),
        ErrorKind::FailedToStart => {
            Status::failed_precondition(format!("the job failed to start: {message}"))
        }
        ErrorKind::FailedPrecondition => Status::failed_precondition(message),
        ErrorKind::AlreadyExists => Status::already_exists(message),
        ErrorKind::Unavailable => Status::unavailable(UNAVAILABLE_MESSAGE),
        // A protocol version mismatch is a deployment fault: the caller can do nothing
        // about it, and the versions are in the server's log.
        ErrorKind::VersionMismatch | ErrorKind::Internal => Status::internal(INTERNAL_MESSAGE),
    }
}

/// A [`WireError`] as a gRPC status. The executor's own messages are meant for users,
/// so an executor that answers UNAVAILABLE (shutting down, its audit trail unavailable)
/// is quoted; failing to reach it at all is "executor unavailable".
pub fn wire_to_status(e: &WireError) -> Status {
    match e.kind {
        ErrorKind::Unavailable if !e.message.is_empty() => Status::unavailable(&e.message),
        _ => to_status(e.kind, &e.message),
    }
}

/// Bad input found at the edge, before the executor is asked.
pub fn invalid(message: impl AsRef<str>) -> Status {
    to_status(ErrorKind::InvalidArgument, message.as_ref())
}

/// A request that arrived without a verified identity (cannot happen with the
/// listener, which refuses such connections; kept as a safe default).
pub fn unauthenticated() -> Status {
    Status::unauthenticated("no verified client identity")
}

/// Streams still open when the server shuts down end with this.
pub fn shutting_down() -> Status {
    Status::unavailable("the server is shutting down")
}

/// Largest request message accepted, in bytes (tonic's decoding limit). The largest
/// valid request (argv and environment at their bounds) is well under half of it.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Marks that a request reached one of our handlers, which then owns every status it
/// answers. Inserted into each request's extensions by [`StatusLayer`]; a handler calls
/// [`reached`] first.
#[derive(Debug, Clone, Default)]
pub struct Reached(Arc<AtomicBool>);

/// Records that `request` reached its handler (see [`Reached`]).
pub fn reached<T>(request: &tonic::Request<T>) {
    if let Some(r) = request.extensions().get::<Reached>() {
        r.0.store(true, Ordering::Release);
    }
}

/// The longest part of tonic's own message kept when a malformed request is reported.
const MAX_DECODE_DETAIL: usize = 200;

/// Rewrites the two statuses tonic answers by itself, before any handler of ours runs,
/// for a request the client got wrong. Applied as a layer to every call.
///
/// - A request message over the decoding limit: tonic answers OUT_OF_RANGE; to clients
///   it is an invalid argument like any other request out of bounds (no handler of ours
///   answers OUT_OF_RANGE, so the code identifies that case).
/// - A request message that does not decode (bad wire types, truncated fields, groups
///   nested past prost's recursion limit, a compressed flag without an encoding, no
///   message at all): tonic's protobuf codec answers INTERNAL, as if the server had
///   failed. A call that never reached a handler cannot have failed inside the server,
///   so INTERNAL there is the request's fault: INVALID_ARGUMENT, with tonic's reason.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusLayer;

impl<S> Layer<S> for StatusLayer {
    type Service = StatusService<S>;

    fn layer(&self, inner: S) -> StatusService<S> {
        StatusService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct StatusService<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for StatusService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let reached = Reached::default();
        request.extensions_mut().insert(reached.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(rewrite(response, reached.0.load(Ordering::Acquire)))
        })
    }
}

/// The rewriting of [`StatusLayer`], for a response whose call did (or did not) reach
/// its handler.
fn rewrite(
    mut response: http::Response<tonic::body::Body>,
    reached: bool,
) -> http::Response<tonic::body::Body> {
    let Some(code) = response
        .headers()
        .get(GRPC_STATUS)
        .map(|v| Code::from_bytes(v.as_bytes()))
    else {
        return response;
    };
    let status = match code {
        Code::OutOfRange => Status::invalid_argument(format!(
            "request too large: at most {MAX_REQUEST_BYTES} bytes"
        )),
        Code::Internal if !reached => {
            let detail = Status::from_header_map(response.headers())
                .map(|s| s.message().to_string())
                .unwrap_or_default();
            Status::invalid_argument(format!(
                "malformed request message: {}",
                truncate(&detail, MAX_DECODE_DETAIL)
            ))
        }
        _ => return response,
    };
    let headers = response.headers_mut();
    headers.remove(GRPC_MESSAGE);
    if let Err(e) = status.add_header(headers) {
        tracing::warn!("rewriting the status of a refused request: {e}");
    }
    response
}

/// A message of a client's stream that tonic could not decode (a streaming handler reads
/// its messages itself, after it was reached): an invalid argument, like a unary
/// request that does not decode; any other status as it is.
pub fn inbound(status: Status) -> Status {
    match status.code() {
        Code::Internal | Code::OutOfRange => Status::invalid_argument(format!(
            "malformed request message: {}",
            truncate(status.message(), MAX_DECODE_DETAIL)
        )),
        _ => status,
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";

/// The gRPC code a kind maps to (for logs and tests).
pub fn code_of(kind: ErrorKind) -> Code {
    to_status(kind, "").code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_maps_to_its_documented_code() {
        let table = [
            (ErrorKind::InvalidArgument, Code::InvalidArgument),
            (ErrorKind::NotFound, Code::NotFound),
            (ErrorKind::ResourceExhausted, Code::ResourceExhausted),
            (ErrorKind::PermissionDenied, Code::PermissionDenied),
            (ErrorKind::FailedToStart, Code::FailedPrecondition),
            (ErrorKind::FailedPrecondition, Code::FailedPrecondition),
            (ErrorKind::AlreadyExists, Code::AlreadyExists),
            (ErrorKind::Unavailable, Code::Unavailable),
            (ErrorKind::VersionMismatch, Code::Internal),
            (ErrorKind::Internal, Code::Internal),
        ];
        for (kind, code) in table {
            assert_eq!(code_of(kind), code, "{kind:?}");
        }
    }

    #[test]
    fn user_facing_messages_pass_through() {
        let s = wire_to_status(&WireError::not_found("no job 00"));
        assert_eq!(s.message(), "no job 00");
        let s = wire_to_status(&WireError::new(
            ErrorKind::FailedToStart,
            "exec: no such file or directory",
        ));
        assert_eq!(
            s.message(),
            "the job failed to start: exec: no such file or directory"
        );
    }

    fn response(status: Status) -> http::Response<tonic::body::Body> {
        status.into_http()
    }

    fn status_of(response: &http::Response<tonic::body::Body>) -> Status {
        Status::from_header_map(response.headers()).expect("a status")
    }

    #[test]
    fn decoding_failures_before_a_handler_are_invalid_arguments() {
        let decode = Status::internal("failed to decode Protobuf message: recursion limit reached");
        let s = status_of(&rewrite(response(decode.clone()), false));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "malformed request message: failed to decode Protobuf message: recursion limit reached"
        );
        // A handler's own INTERNAL stays what it is.
        let s = status_of(&rewrite(response(Status::internal(INTERNAL_MESSAGE)), true));
        assert_eq!(s.code(), Code::Internal);
        assert_eq!(s.message(), INTERNAL_MESSAGE);
        // Oversized requests, and other codes, as before.
        let s = status_of(&rewrite(response(Status::out_of_range("big")), false));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().starts_with("request too large"), "{s:?}");
        let s = status_of(&rewrite(response(Status::not_found("no job")), false));
        assert_eq!(s.code(), Code::NotFound);
        // A long reason is cut.
        let long = Status::internal("x".repeat(10_000));
        let s = status_of(&rewrite(response(long), false));
        assert!(s.message().len() < 300, "{}", s.message().len());
    }

    #[test]
    fn internal_details_do_not_leak() {
        let s = wire_to_status(&WireError::internal(
            "open /var/lib/jobworker/jobs/x: permission denied (os error 13)",
        ));
        assert_eq!(s.code(), Code::Internal);
        assert_eq!(s.message(), INTERNAL_MESSAGE);
        let s = to_status(ErrorKind::Unavailable, "connect /run/x.sock: ENOENT");
        assert_eq!(s.message(), UNAVAILABLE_MESSAGE);
        let s = to_status(ErrorKind::VersionMismatch, "executor speaks 2");
        assert_eq!(s.message(), INTERNAL_MESSAGE);
    }
}
