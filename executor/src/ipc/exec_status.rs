//! The exec status: how a command's child (the job's command, or an exec) tells the job
//! init that it could not execute the command. The child holds the write end of a
//! close-on-exec pipe; a successful `execve` closes it with nothing written, a failure
//! writes one message before the child exits: the kind of failure (one byte, as in
//! [`super::report`]: 0 not found, 1 not executable, 2 other) and UTF-8 text ("what was
//! being done: the OS error"), at most [`MAX_EXEC_STATUS`] bytes in all.

use std::io;

use jobworker_protocol::StartFailure;

use super::report::{Failure, kind_byte, kind_of};

/// Longest message, in bytes.
pub const MAX_EXEC_STATUS: usize = 4096;

/// The message for a failed step, cut at a character boundary to fit.
pub fn encode(kind: StartFailure, what: &str, err: &io::Error) -> Vec<u8> {
    let msg = format!("{what}: {err}");
    let mut end = msg.len().min(MAX_EXEC_STATUS - 1);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = vec![kind_byte(kind)];
    out.extend_from_slice(&msg.as_bytes()[..end]);
    out
}

/// What the init read from the pipe: `None` when the command was executed (nothing was
/// written), otherwise why not. Bytes past the maximum are ignored; invalid UTF-8 is
/// replaced and an unknown kind is "other", never an error.
pub fn decode(bytes: &[u8]) -> Option<Failure> {
    let bytes = &bytes[..bytes.len().min(MAX_EXEC_STATUS)];
    let (&kind, message) = bytes.split_first()?;
    Some(Failure {
        kind: kind_of(kind).unwrap_or(StartFailure::Other),
        message: String::from_utf8_lossy(message).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_round_trips() {
        let e = io::Error::from_raw_os_error(libc::ENOENT);
        let b = encode(StartFailure::NotFound, "executing \"/nope\"", &e);
        let f = decode(&b).unwrap();
        assert_eq!(f.kind, StartFailure::NotFound);
        assert_eq!(
            f.message,
            "executing \"/nope\": No such file or directory (os error 2)"
        );
    }

    #[test]
    fn nothing_written_means_the_command_runs() {
        assert_eq!(decode(b""), None);
    }

    #[test]
    fn long_and_broken_messages_are_bounded_and_never_an_error() {
        let e = io::Error::from_raw_os_error(libc::EACCES);
        let b = encode(StartFailure::NotExecutable, &"é".repeat(10_000), &e);
        assert!(b.len() <= MAX_EXEC_STATUS);
        let f = decode(&b).unwrap();
        assert!(f.message.chars().all(|c| c == 'é'));
        assert_eq!(f.kind, StartFailure::NotExecutable);
        let f = decode(b"\x09\xff\xfeok").unwrap();
        assert_eq!(
            (f.kind, f.message.as_str()),
            (StartFailure::Other, "\u{fffd}\u{fffd}ok")
        );
        assert_eq!(
            decode(&[b'x'; MAX_EXEC_STATUS + 10]).unwrap().message.len(),
            MAX_EXEC_STATUS - 1
        );
    }
}
