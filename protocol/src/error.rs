//! Errors that cross the executor socket: a kind the API server maps to a gRPC status in
//! one place, and a message meant for the user.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest message carried by a [`WireError`]; longer ones are cut at a character
/// boundary so an error can never grow a frame past its bound.
pub const MAX_ERROR_MESSAGE_LEN: usize = 4096;

/// What went wrong, in terms a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request is malformed or a value is out of range. Retrying will not help.
    InvalidArgument,
    /// No such job (or not one the caller may see).
    NotFound,
    /// A configured cap was reached (running jobs, connections, followers).
    ResourceExhausted,
    /// The peer is not allowed to make this request.
    PermissionDenied,
    /// The job's command could not be started; the message says which step failed.
    FailedToStart,
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// The executor is shutting down or cannot serve now.
    Unavailable,
    /// A fault inside the executor; details are in its log.
    Internal,
    /// The job is not in a state the request needs (an exec into a job that has ended).
    FailedPrecondition,
    /// A job of that name already exists (among the owner's jobs that are kept).
    AlreadyExists,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::NotFound => "not found",
            ErrorKind::ResourceExhausted => "resource exhausted",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::FailedToStart => "failed to start",
            ErrorKind::VersionMismatch => "protocol version mismatch",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal error",
            ErrorKind::FailedPrecondition => "failed precondition",
            ErrorKind::AlreadyExists => "already exists",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as sent over the socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct WireError {
    pub kind: ErrorKind,
    pub message: String,
}

impl WireError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE_LEN {
            let mut end = MAX_ERROR_MESSAGE_LEN;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Self { kind, message }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn exhausted(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ResourceExhausted, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_ERROR_MESSAGE_LEN);
        let e = WireError::new(ErrorKind::Internal, long);
        assert!(e.message.len() <= MAX_ERROR_MESSAGE_LEN);
        assert!(e.message.len() >= MAX_ERROR_MESSAGE_LEN - 1);
        assert!(e.message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn display_names_kind_and_message() {
        let e = WireError::not_found("job 00 does not exist");
        assert_eq!(e.to_string(), "not found: job 00 does not exist");
    }
}
