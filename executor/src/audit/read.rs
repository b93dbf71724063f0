//! Reading the trail's files for `Audit` requests: every record from a sequence number
//! on, oldest first, that passes a filter.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use jobworker_protocol::AuditLine;
use jobworker_protocol::observe::MAX_AUDIT_LINE;
use serde::Deserialize;

use super::files;
use super::record::parse_rfc3339_ms;

/// Longest line read from a segment; a longer one (only a changed file has one) is
/// skipped with a log line.
const MAX_LINE: u64 = 8 << 20;

/// Which records a reader wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub since_ms: Option<u64>,
    pub identity: Option<String>,
}

impl Filter {
    pub fn matches(&self, time_ms: u64, identities: &[&str]) -> bool {
        self.since_ms.is_none_or(|s| time_ms >= s)
            && self
                .identity
                .as_deref()
                .is_none_or(|who| identities.contains(&who))
    }
}

#[derive(Deserialize)]
struct Fields<'a> {
    seq: u64,
    #[serde(borrow)]
    time: &'a str,
    #[serde(borrow, default)]
    owner: Option<&'a str>,
    #[serde(borrow, default)]
    caller: Option<&'a str>,
    #[serde(borrow, default)]
    by: Option<&'a str>,
    #[serde(borrow, default)]
    identity: Option<&'a str>,
}

/// A line as it is sent: cut at [`MAX_AUDIT_LINE`] (at a character boundary).
pub fn audit_line(seq: u64, line: &str) -> AuditLine {
    if line.len() <= MAX_AUDIT_LINE {
        return AuditLine {
            seq,
            line: line.to_owned(),
            truncated: false,
        };
    }
    let mut end = MAX_AUDIT_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    AuditLine {
        seq,
        line: line[..end].to_owned(),
        truncated: true,
    }
}

/// Reads records numbered `from` to `until` (exclusive; `None`: to the end) from the
/// segments in `dir`, and gives `each` those that pass `filter`, until it returns false.
/// Returns the number after the last record read.
pub fn read_files(
    dir: &Path,
    from: u64,
    until: Option<u64>,
    filter: &Filter,
    mut each: impl FnMut(AuditLine) -> bool,
) -> io::Result<u64> {
    let mut next = from;
    for (_, path) in files::list(dir)? {
        let file = match File::open(&path) {
            Ok(f) => f,
            // Rotated away meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut reader = BufReader::new(file);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut buf)?;
            if n == 0 {
                break;
            }
            if buf.last() != Some(&b'\n') {
                if n as u64 == MAX_LINE {
                    tracing::warn!(segment = %path.display(), "skipping an audit line longer than {MAX_LINE} bytes");
                    // Skip the rest of that line.
                    let mut sink = Vec::new();
                    reader.read_until(b'\n', &mut sink)?;
                    continue;
                }
                // A commit being written: the rest comes through memory.
                break;
            }
            let line = &buf[..buf.len() - 1];
            let Ok(text) = std::str::from_utf8(line) else {
                continue;
            };
            let Ok(f) = serde_json::from_str::<Fields<'_>>(text) else {
                continue;
            };
            if f.seq < from {
                continue;
            }
            if until.is_some_and(|u| f.seq >= u) {
                return Ok(next);
            }
            next = f.seq + 1;
            let time_ms = parse_rfc3339_ms(f.time).unwrap_or(0);
            let ids: Vec<&str> = [f.owner, f.caller, f.by, f.identity]
                .into_iter()
                .flatten()
                .collect();
            if filter.matches(time_ms, &ids) && !each(audit_line(f.seq, text)) {
                return Ok(next);
            }
        }
    }
    Ok(next)
}
