//! An exec request: the executor asks a job's init to start another process in the job,
//! on the init's report socket (one `SOCK_SEQPACKET` message).
//!
//! The message is `E`, the exec's number (`u32`, little endian) and one byte, 1 when the
//! process gets a terminal. Attached: the read end of a pipe that holds the exec's
//! [`ExecSpec`] (JSON, at most [`MAX_EXEC_SPEC_LEN`] bytes, written whole before the
//! request is sent), then, without a terminal, its stdin, stdout and stderr. The init
//! answers with `s`, `f` and later `x` reports (see [`super::report`]).
//!
//! The init decodes these from the executor, the only peer of its socket; it still
//! checks their shape, as every decoder of this module does.

use std::io;

use serde::{Deserialize, Serialize};

use super::FormatError;

/// Length of an exec request.
pub const REQUEST_LEN: usize = 6;
/// Largest exec spec.
pub const MAX_EXEC_SPEC_LEN: usize = 512 * 1024;

/// The request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecRequest {
    pub exec: u32,
    pub tty: bool,
}

fn bad(why: &'static str) -> FormatError {
    FormatError {
        format: "exec request",
        why,
    }
}

impl ExecRequest {
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [b'E', 0, 0, 0, 0, u8::from(self.tty)];
        b[1..5].copy_from_slice(&self.exec.to_le_bytes());
        b
    }

    /// Decodes a request that came with `fds` descriptors: the spec's, and the three of
    /// stdio unless it has a terminal.
    pub fn decode(b: &[u8], fds: usize) -> Result<Self, FormatError> {
        let b: &[u8; REQUEST_LEN] = b.try_into().map_err(|_| bad("a request is 6 bytes"))?;
        if b[0] != b'E' {
            return Err(bad("unknown request"));
        }
        let tty = match b[5] {
            0 => false,
            1 => true,
            _ => return Err(bad("the terminal byte is 0 or 1")),
        };
        let want = if tty { 1 } else { 4 };
        if fds != want {
            return Err(bad("the spec's descriptor, and stdio's without a terminal"));
        }
        let mut n = [0u8; 4];
        n.copy_from_slice(&b[1..5]);
        Ok(ExecRequest {
            exec: u32::from_le_bytes(n),
            tty,
        })
    }
}

/// What the exec runs, prepared and validated by the executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    /// The complete environment, `NAME=value`.
    pub env: Vec<String>,
    pub cwd: String,
    /// The terminal's size `(rows, cols)`, when it has one.
    pub tty: Option<(u16, u16)>,
}

impl ExecSpec {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an ExecSpec always serialises")
    }

    pub fn decode(bytes: &[u8]) -> io::Result<Self> {
        if bytes.len() > MAX_EXEC_SPEC_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the exec spec is larger than its maximum",
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_with_their_descriptors() {
        for (r, fds) in [
            (
                ExecRequest {
                    exec: 0,
                    tty: false,
                },
                4,
            ),
            (
                ExecRequest {
                    exec: 77,
                    tty: true,
                },
                1,
            ),
        ] {
            assert_eq!(ExecRequest::decode(&r.encode(), fds), Ok(r));
            assert!(ExecRequest::decode(&r.encode(), fds - 1).is_err());
        }
    }

    #[test]
    fn malformed_requests_are_refused() {
        let ok = ExecRequest {
            exec: 1,
            tty: false,
        }
        .encode();
        assert!(ExecRequest::decode(&ok[..5], 4).is_err());
        let mut other = ok;
        other[0] = b'X';
        assert!(ExecRequest::decode(&other, 4).is_err());
        let mut two = ok;
        two[5] = 2;
        assert!(ExecRequest::decode(&two, 4).is_err());
    }

    #[test]
    fn a_spec_round_trips_and_garbage_is_refused() {
        let spec = ExecSpec {
            argv: vec!["sh".into(), "-c".into(), "ps".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/tmp".into(),
            tty: Some((24, 80)),
        };
        assert_eq!(ExecSpec::decode(&spec.encode()).unwrap(), spec);
        assert!(ExecSpec::decode(b"{").is_err());
        assert!(ExecSpec::decode(&vec![b' '; MAX_EXEC_SPEC_LEN + 1]).is_err());
    }
}
