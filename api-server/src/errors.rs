//! The one place where failures become gRPC statuses.
//!
//! Every error a client can see goes through [`to_status`]: executor errors arrive as a
//! [`WireError`] (kind and message), failures to reach the executor are turned into
//! [`ErrorKind::Unavailable`] first, and bad input found at the edge is an
//! [`ErrorKind::InvalidArgument`]. Internal details (paths, OS errors) are logged where
//! they happen and never reach this function's output.

use jobworker_protocol::{ErrorKind, WireError};
use tonic::{Code, Status};

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
        ErrorKind::Unavailable => Status::unavailable(UNAVAILABLE_MESSAGE),
        // A protocol version mismatch is a deployment fault: the caller can do nothing
        // about it, and the versions are in the server's log.
        ErrorKind::VersionMismatch | ErrorKind::Internal => Status::internal(INTERNAL_MESSAGE),
    }
}

/// A [`WireError`] as a gRPC status.
pub fn wire_to_status(e: &WireError) -> Status {
    to_status(e.kind, &e.message)
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

/// tonic refuses a request message over the decoding limit with OUT_OF_RANGE before
/// any handler runs; to clients an oversized request is an invalid argument like any
/// other request out of bounds. No handler of ours answers OUT_OF_RANGE, so the code
/// identifies that case. Applied as a layer to every response.
pub fn oversized_request(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let out_of_range = i32::from(Code::OutOfRange).to_string();
    if headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == out_of_range.as_bytes())
    {
        let status = Status::invalid_argument(format!(
            "request too large: at most {MAX_REQUEST_BYTES} bytes"
        ));
        if let Err(e) = status.add_header(headers) {
            tracing::warn!("rewriting an oversized-request status: {e}");
        }
    }
    response
}

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
