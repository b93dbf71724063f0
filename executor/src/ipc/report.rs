//! The report: the tiny one-way protocol from a job's init to the executor, on a pipe.
//!
//! Each message is one `write(2)` of at most `PIPE_BUF` bytes (so it is atomic): a tag
//! byte, a little-endian `u16` payload length, the payload. The executor reads until the
//! pipe closes (the init has exited) and keeps at most [`MAX_REPORT_BYTES`].

use std::io::{self, Write};

use jobworker_sys::Exit;

/// Most bytes the executor keeps from one init.
pub const MAX_REPORT_BYTES: usize = 8 * 1024;
/// Longest failure message sent (fits, with its header, in `PIPE_BUF`).
const MAX_MESSAGE: usize = 3 * 1024;

/// One message from the init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The command was executed.
    Started,
    /// The job could not start; why.
    Failed(String),
    /// The command ended.
    Exited(Exit),
}

/// Writes one message.
pub fn write(w: &mut impl Write, report: &Report) -> io::Result<()> {
    let (tag, payload): (u8, Vec<u8>) = match report {
        Report::Started => (b'S', Vec::new()),
        Report::Failed(msg) => {
            let mut end = msg.len().min(MAX_MESSAGE);
            while !msg.is_char_boundary(end) {
                end -= 1;
            }
            (b'F', msg.as_bytes()[..end].to_vec())
        }
        Report::Exited(exit) => (b'X', exit.to_wait_status().to_le_bytes().to_vec()),
    };
    let mut msg = Vec::with_capacity(3 + payload.len());
    msg.push(tag);
    msg.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    msg.extend_from_slice(&payload);
    w.write_all(&msg)
}

/// Decodes everything an init wrote. Unknown or cut-off messages end the decoding: the init
/// is trusted code, but the executor never panics on what it reads.
pub fn decode(mut bytes: &[u8]) -> Vec<Report> {
    let mut out = Vec::new();
    while bytes.len() >= 3 {
        let tag = bytes[0];
        let len = u16::from_le_bytes([bytes[1], bytes[2]]) as usize;
        let Some(payload) = bytes.get(3..3 + len) else {
            break;
        };
        out.push(match tag {
            b'S' => Report::Started,
            b'F' => Report::Failed(String::from_utf8_lossy(payload).into_owned()),
            b'X' if len == 4 => Report::Exited(Exit::from_wait_status(i32::from_le_bytes([
                payload[0], payload[1], payload[2], payload[3],
            ]))),
            _ => break,
        });
        bytes = &bytes[3 + len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let all = vec![
            Report::Started,
            Report::Failed("mounting /proc: Operation not permitted (os error 1)".into()),
            Report::Exited(Exit::Code(7)),
            Report::Exited(Exit::Signal(9)),
        ];
        let mut buf = Vec::new();
        for r in &all {
            write(&mut buf, r).unwrap();
        }
        assert_eq!(decode(&buf), all);
    }

    #[test]
    fn long_failures_are_cut_to_fit_an_atomic_write() {
        let mut buf = Vec::new();
        write(&mut buf, &Report::Failed("é".repeat(10_000))).unwrap();
        assert!(buf.len() <= libc::PIPE_BUF);
        match &decode(&buf)[..] {
            [Report::Failed(m)] => assert!(m.chars().all(|c| c == 'é')),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_and_truncation_end_the_decoding_without_panicking() {
        assert_eq!(decode(&[]), vec![]);
        assert_eq!(decode(b"S"), vec![]);
        assert_eq!(decode(b"S\0\0Z\0\0S\0\0"), vec![Report::Started]);
        assert_eq!(decode(b"F\xff\xffabc"), vec![]);
        assert_eq!(decode(b"X\x02\0ab"), vec![]);
    }
}
