//! The init template's control messages, on its `SOCK_SEQPACKET` socket (one message per
//! `send`, boundaries kept).
//!
//! Executor → template, a clone request (9 bytes): the namespace flags (`u64`, little
//! endian) and one byte, 1 when the last descriptor attached is the cgroup v2 directory
//! to clone into, 0 otherwise. The descriptors attached are those of [`super::fds`].
//!
//! Template → executor, a reply (1 or 5 bytes):
//! - `R`: ready, sent once at start-up;
//! - `C` and the init's pid (`i32`, little endian), with the init's pidfd attached;
//! - `E` and an errno (`i32`, little endian): the request was refused or `clone3` failed;
//! - `F` and an errno: the template's own start failed (its `execveat`); written by the
//!   re-executed child before it exits (see `jobworker_sys::spawn_reexec`).

use super::FormatError;

/// Length of a clone request.
pub const REQUEST_LEN: usize = 9;
/// Length of the longest reply.
pub const MAX_REPLY_LEN: usize = 5;
/// Tag of the start failure, written by the re-executed child itself.
pub const START_FAILED_TAG: u8 = b'F';

const fn bad(why: &'static str) -> FormatError {
    FormatError {
        format: "init template message",
        why,
    }
}

/// A request for one job init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloneRequest {
    /// `CLONE_NEW*` flags of the namespaces to create.
    pub ns_flags: u64,
    /// The last attached descriptor is the cgroup v2 directory to clone into.
    pub into_cgroup: bool,
}

impl CloneRequest {
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[..8].copy_from_slice(&self.ns_flags.to_le_bytes());
        b[8] = u8::from(self.into_cgroup);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let b: &[u8; REQUEST_LEN] = b.try_into().map_err(|_| bad("a request is 9 bytes"))?;
        let into_cgroup = match b[8] {
            0 => false,
            1 => true,
            _ => return Err(bad("the cgroup byte is 0 or 1")),
        };
        let mut flags = [0u8; 8];
        flags.copy_from_slice(&b[..8]);
        Ok(CloneRequest {
            ns_flags: u64::from_le_bytes(flags),
            into_cgroup,
        })
    }
}

/// The template's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Ready,
    /// The init's pid; its pidfd is attached.
    Cloned(i32),
    /// The request was refused, or `clone3` failed, with this errno.
    Refused(i32),
    /// The template could not start (its `execveat` failed with this errno).
    StartFailed(i32),
}

impl Reply {
    /// The bytes of the reply, and how many of them to send.
    pub fn encode(&self) -> ([u8; MAX_REPLY_LEN], usize) {
        let (tag, n) = match *self {
            Reply::Ready => return ([b'R', 0, 0, 0, 0], 1),
            Reply::Cloned(pid) => (b'C', pid),
            Reply::Refused(errno) => (b'E', errno),
            Reply::StartFailed(errno) => (START_FAILED_TAG, errno),
        };
        let mut b = [tag, 0, 0, 0, 0];
        b[1..].copy_from_slice(&n.to_le_bytes());
        (b, MAX_REPLY_LEN)
    }

    /// Decodes a reply that came with `fds` descriptors: only `Cloned` carries one (its
    /// pidfd), and its pid is positive.
    pub fn decode(b: &[u8], fds: usize) -> Result<Self, FormatError> {
        let number = |rest: &[u8]| -> Result<i32, FormatError> {
            let n: [u8; 4] = rest.try_into().map_err(|_| bad("a number is 4 bytes"))?;
            Ok(i32::from_le_bytes(n))
        };
        let reply = match b {
            [b'R'] => Reply::Ready,
            [b'C', pid @ ..] => match number(pid)? {
                p if p > 0 => Reply::Cloned(p),
                _ => return Err(bad("a pid is positive")),
            },
            [b'E', errno @ ..] => Reply::Refused(number(errno)?),
            [START_FAILED_TAG, errno @ ..] => Reply::StartFailed(number(errno)?),
            [] => return Err(bad("empty")),
            _ => return Err(bad("unknown reply")),
        };
        let want = usize::from(matches!(reply, Reply::Cloned(_)));
        if fds != want {
            return Err(bad(
                "only a clone's reply carries a descriptor, exactly one",
            ));
        }
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            CloneRequest {
                ns_flags: 0x7c02_0000,
                into_cgroup: false,
            },
            CloneRequest {
                ns_flags: u64::MAX,
                into_cgroup: true,
            },
        ] {
            assert_eq!(CloneRequest::decode(&r.encode()), Ok(r));
        }
    }

    #[test]
    fn malformed_requests_are_refused() {
        let ok = CloneRequest {
            ns_flags: 1,
            into_cgroup: false,
        }
        .encode();
        assert!(CloneRequest::decode(&[]).is_err());
        assert!(CloneRequest::decode(&ok[..8]).is_err());
        assert!(CloneRequest::decode(&[&ok[..], &[0]].concat()).is_err());
        let mut two = ok;
        two[8] = 2;
        assert!(CloneRequest::decode(&two).is_err());
    }

    #[test]
    fn replies_round_trip_with_their_descriptors() {
        for (r, fds) in [
            (Reply::Ready, 0),
            (Reply::Cloned(4242), 1),
            (Reply::Refused(11), 0),
            (Reply::StartFailed(2), 0),
        ] {
            let (b, n) = r.encode();
            assert_eq!(Reply::decode(&b[..n], fds), Ok(r));
            assert!(Reply::decode(&b[..n], fds + 1).is_err(), "{r:?}");
        }
    }

    #[test]
    fn malformed_replies_are_refused() {
        for (b, fds) in [
            (&b""[..], 0),
            (b"R\0", 0),
            (b"C\0\0\0\0", 1),
            (b"C\xff\xff\xff\xff", 1),
            (b"C\x01\0\0", 1),
            (b"E\x01\0\0\0\0", 0),
            (b"Z\x01\0\0\0", 0),
        ] {
            assert!(Reply::decode(b, fds).is_err(), "{b:?}");
        }
    }
}
