//! The executor's private byte formats: everything that crosses between the executor,
//! its init template, a job's init and the command's child, other than the public
//! protocol (the `jobworker-protocol` crate). Each format has typed encode and decode
//! functions, a round-trip unit test, and a fuzz target for its decoder; decoders never
//! panic and never allocate more than their format's bound.
//!
//! | format | from → to | channel | module |
//! |---|---|---|---|
//! | control messages | executor ⇄ init template | `SOCK_SEQPACKET` pair | [`control`] |
//! | the init's descriptors | executor → template → init | `SCM_RIGHTS` with a clone request | [`fds`] |
//! | init spec | executor → job init | a pipe, written once | [`spec`] |
//! | report | job init → executor | a `SOCK_SEQPACKET` pair, one message per report, with a terminal's master attached | [`report`] |
//! | exec request | executor → job init | the same socket, with the exec's spec pipe and stdio attached | [`exec`] |
//! | exec status | command child → job init | a close-on-exec pipe | [`exec_status`] |
//!
//! Trust: the template trusts only the executor (the sole holder of the other end of its
//! socket); the executor checks everything the template and the init send as if it were
//! hostile (a bug in them must not become a panic or an unbounded allocation in the root
//! daemon); the init trusts its spec, which only the executor writes.

pub mod control;
pub mod exec;
pub mod exec_status;
pub mod fds;
pub mod report;
pub mod spec;

/// A message that does not have its format's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed {format}: {why}")]
pub struct FormatError {
    pub format: &'static str,
    pub why: &'static str,
}

impl From<FormatError> for std::io::Error {
    fn from(e: FormatError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}
