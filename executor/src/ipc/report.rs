//! The report: what a job's init tells the executor, on its report socket (one
//! `SOCK_SEQPACKET` message per report, at most [`MAX_REPORT_LEN`] bytes, with at most one
//! descriptor attached).
//!
//! A report is a tag byte and a payload:
//!
//! | tag | report | payload | descriptor |
//! |---|---|---|---|
//! | `S` | the command was executed | — | — |
//! | `F` | the command could not start | kind (1 byte: 0 not found, 1 not executable, 2 other), message | — |
//! | `X` | the command ended | wait status (`i32`, little endian) | — |
//! | `T` | the command's terminal is ready | — | the terminal's master |
//! | `t` | exec `n`'s terminal is ready | `n` (`u32`, little endian) | the terminal's master |
//! | `s` | exec `n` was executed | `n` | — |
//! | `f` | exec `n` could not start | `n`, kind, message | — |
//! | `x` | exec `n` ended | `n`, wait status | — |
//!
//! The init runs as the job once it has set the job up, so the executor treats every
//! report as untrusted: a report of the wrong shape is refused, never a panic, and
//! nothing in it is more than one job's word about itself.

use jobworker_protocol::StartFailure;
use jobworker_sys::Exit;

use super::FormatError;

/// Longest report, in bytes.
pub const MAX_REPORT_LEN: usize = 4096;
/// Longest failure message sent.
const MAX_MESSAGE: usize = 3 * 1024;

/// Why something could not start, and what was being done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: StartFailure,
    pub message: String,
}

/// One report of the init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Started,
    Failed(Failure),
    Exited(Exit),
    /// The command's terminal master comes with it.
    Terminal,
    /// The exec's terminal master comes with it.
    ExecTerminal {
        exec: u32,
    },
    ExecStarted {
        exec: u32,
    },
    ExecFailed {
        exec: u32,
        failure: Failure,
    },
    ExecExited {
        exec: u32,
        exit: Exit,
    },
}

fn bad(why: &'static str) -> FormatError {
    FormatError {
        format: "init report",
        why,
    }
}

pub(super) fn kind_byte(k: StartFailure) -> u8 {
    match k {
        StartFailure::NotFound => 0,
        StartFailure::NotExecutable => 1,
        StartFailure::Other => 2,
    }
}

pub(super) fn kind_of(b: u8) -> Result<StartFailure, FormatError> {
    match b {
        0 => Ok(StartFailure::NotFound),
        1 => Ok(StartFailure::NotExecutable),
        2 => Ok(StartFailure::Other),
        _ => Err(bad("unknown failure kind")),
    }
}

fn push_failure(out: &mut Vec<u8>, f: &Failure) {
    out.push(kind_byte(f.kind));
    let mut end = f.message.len().min(MAX_MESSAGE);
    while !f.message.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&f.message.as_bytes()[..end]);
}

fn failure(b: &[u8]) -> Result<Failure, FormatError> {
    let (&kind, message) = b.split_first().ok_or_else(|| bad("a failure has a kind"))?;
    Ok(Failure {
        kind: kind_of(kind)?,
        message: String::from_utf8_lossy(message).into_owned(),
    })
}

fn number(b: &[u8]) -> Result<(u32, &[u8]), FormatError> {
    let n: [u8; 4] = b
        .get(..4)
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| bad("a number is 4 bytes"))?;
    Ok((u32::from_le_bytes(n), &b[4..]))
}

fn status(b: &[u8]) -> Result<Exit, FormatError> {
    let s: [u8; 4] = b.try_into().map_err(|_| bad("a wait status is 4 bytes"))?;
    Ok(Exit::from_wait_status(i32::from_le_bytes(s)))
}

impl Report {
    /// The report's bytes (at most [`MAX_REPORT_LEN`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Report::Started => out.push(b'S'),
            Report::Failed(f) => {
                out.push(b'F');
                push_failure(&mut out, f);
            }
            Report::Exited(e) => {
                out.push(b'X');
                out.extend_from_slice(&e.to_wait_status().to_le_bytes());
            }
            Report::Terminal => out.push(b'T'),
            Report::ExecTerminal { exec } => {
                out.push(b't');
                out.extend_from_slice(&exec.to_le_bytes());
            }
            Report::ExecStarted { exec } => {
                out.push(b's');
                out.extend_from_slice(&exec.to_le_bytes());
            }
            Report::ExecFailed { exec, failure } => {
                out.push(b'f');
                out.extend_from_slice(&exec.to_le_bytes());
                push_failure(&mut out, failure);
            }
            Report::ExecExited { exec, exit } => {
                out.push(b'x');
                out.extend_from_slice(&exec.to_le_bytes());
                out.extend_from_slice(&exit.to_wait_status().to_le_bytes());
            }
        }
        out
    }

    /// Decodes one report that came with `fds` descriptors.
    pub fn decode(b: &[u8], fds: usize) -> Result<Report, FormatError> {
        if b.len() > MAX_REPORT_LEN {
            return Err(bad("too long"));
        }
        let (&tag, rest) = b.split_first().ok_or_else(|| bad("empty"))?;
        let report = match tag {
            b'S' if rest.is_empty() => Report::Started,
            b'F' => Report::Failed(failure(rest)?),
            b'X' => Report::Exited(status(rest)?),
            b'T' if rest.is_empty() => Report::Terminal,
            b't' => match number(rest)? {
                (exec, []) => Report::ExecTerminal { exec },
                _ => return Err(bad("trailing bytes")),
            },
            b's' => match number(rest)? {
                (exec, []) => Report::ExecStarted { exec },
                _ => return Err(bad("trailing bytes")),
            },
            b'f' => {
                let (exec, rest) = number(rest)?;
                Report::ExecFailed {
                    exec,
                    failure: failure(rest)?,
                }
            }
            b'x' => {
                let (exec, rest) = number(rest)?;
                Report::ExecExited {
                    exec,
                    exit: status(rest)?,
                }
            }
            _ => return Err(bad("unknown report")),
        };
        let fds_ok = match report {
            Report::Terminal | Report::ExecTerminal { .. } => fds == 1,
            _ => fds == 0,
        };
        if !fds_ok {
            return Err(bad(
                "a descriptor where none belongs, or none where one does",
            ));
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(kind: StartFailure, m: &str) -> Failure {
        Failure {
            kind,
            message: m.into(),
        }
    }

    #[test]
    fn reports_round_trip_with_their_descriptors() {
        let all = [
            (Report::Started, 0),
            (
                Report::Failed(fail(StartFailure::NotFound, "command not found: \"x\"")),
                0,
            ),
            (Report::Failed(fail(StartFailure::Other, "")), 0),
            (Report::Exited(Exit::Code(7)), 0),
            (Report::Exited(Exit::Signal(9)), 0),
            (Report::Terminal, 1),
            (Report::ExecTerminal { exec: 3 }, 1),
            (Report::ExecStarted { exec: u32::MAX }, 0),
            (
                Report::ExecFailed {
                    exec: 1,
                    failure: fail(StartFailure::NotExecutable, "Permission denied"),
                },
                0,
            ),
            (
                Report::ExecExited {
                    exec: 2,
                    exit: Exit::Code(0),
                },
                0,
            ),
        ];
        for (r, fds) in all {
            assert_eq!(Report::decode(&r.encode(), fds), Ok(r.clone()));
            assert!(Report::decode(&r.encode(), fds + 1).is_err(), "{r:?}");
        }
    }

    #[test]
    fn long_failures_are_cut_to_fit() {
        let r = Report::Failed(fail(StartFailure::Other, &"é".repeat(10_000)));
        let b = r.encode();
        assert!(b.len() <= MAX_REPORT_LEN);
        match Report::decode(&b, 0).unwrap() {
            Report::Failed(f) => assert!(f.message.chars().all(|c| c == 'é')),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_reports_are_refused() {
        for b in [
            &b""[..],
            b"Z",
            b"S\0",
            b"F",
            b"F\x09oops",
            b"X\x01\0",
            b"s\x01\0\0",
            b"t\x01\0\0\0",
            b"s\x01\0\0\0\0",
            b"f\x01\0\0\0",
            b"x\x01\0\0\0\x01",
        ] {
            assert!(Report::decode(b, 0).is_err(), "{b:?}");
        }
        assert!(Report::decode(&vec![b'F'; MAX_REPORT_LEN + 1], 0).is_err());
    }
}
