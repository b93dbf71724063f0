//! The exec status: how the command's child tells the job init that it could not execute
//! the command. The child holds the write end of a close-on-exec pipe; a successful
//! `execve` closes it with nothing written, a failure writes one UTF-8 message of at most
//! [`MAX_EXEC_STATUS`] bytes ("what was being done: the OS error") before the child
//! exits.

use std::io;

/// Longest message, in bytes.
pub const MAX_EXEC_STATUS: usize = 4096;

/// The message for a failed step, cut at a character boundary to fit.
pub fn encode(what: &str, err: &io::Error) -> Vec<u8> {
    let msg = format!("{what}: {err}");
    let mut end = msg.len().min(MAX_EXEC_STATUS);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    msg.as_bytes()[..end].to_vec()
}

/// What the init read from the pipe: `None` when the command was executed (nothing was
/// written), otherwise why not. Bytes past the maximum are ignored; invalid UTF-8 is
/// replaced, never an error.
pub fn decode(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() {
        return None;
    }
    let bytes = &bytes[..bytes.len().min(MAX_EXEC_STATUS)];
    Some(String::from_utf8_lossy(bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_round_trips() {
        let e = io::Error::from_raw_os_error(libc::ENOENT);
        let b = encode("executing \"/nope\"", &e);
        assert_eq!(
            decode(&b).unwrap(),
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
        let b = encode(&"é".repeat(10_000), &e);
        assert!(b.len() <= MAX_EXEC_STATUS);
        assert!(decode(&b).unwrap().chars().all(|c| c == 'é'));
        assert_eq!(decode(b"\xff\xfeok").unwrap(), "\u{fffd}\u{fffd}ok");
        assert_eq!(
            decode(&[b'x'; MAX_EXEC_STATUS + 10]).unwrap().len(),
            MAX_EXEC_STATUS
        );
    }
}
