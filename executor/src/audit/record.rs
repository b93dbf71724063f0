//! One record of the audit trail: what it says ([`Body`]), and its line in the trail
//! (`seq`, `time`, `prev`, `source`, then the body's fields), hashed into the chain.
//!
//! A line is a JSON object on one line, ending with `\n`. Its `prev` is the SHA-256 of
//! the previous record's line (without its `\n`), in lowercase hexadecimal; the first
//! record of a trail has 64 zeros. So the hash of the last line covers everything before
//! it: changing, removing or reordering any record breaks the chain at that record.

use jobworker_protocol::{JobEvent, JobEventKind, JobId, JobStatus, Limits};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The `prev` of a trail's very first record.
pub const ZERO_HASH: Hash = [0; 32];

/// A job id as records write it: its 32 hexadecimal digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Id(pub JobId);

impl Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// Who observed what a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The executor itself: what it did.
    Executor,
    /// The API server, which reported it: its claim, not the executor's observation.
    Api,
}

/// What a record says. Serialized with its kind as `event`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Body {
    /// The first record of every segment file: the chain goes on from the last record
    /// of the segment before (its `prev`).
    Segment { segment: u64 },
    /// The executor started serving.
    ExecutorStarted {
        version: String,
        pid: u32,
        cgroup_backend: String,
    },
    /// The executor is stopping (its running jobs are stopped next).
    ExecutorStopping { running_jobs: u64 },
    /// A request the executor refused.
    Refused {
        request: String,
        /// Who asked (the owner of a start, the caller of an exec or a stop).
        identity: Option<String>,
        job: Option<Id>,
        /// One of [`jobworker_protocol::observe::REFUSAL_REASONS`] for starts; for other
        /// requests the error kind.
        reason: String,
        message: String,
    },
    /// A job's command is about to run: this record is durable before it does.
    JobStarted(Box<JobStarted>),
    /// Another process is about to run in a job.
    Exec {
        job: Id,
        owner: String,
        caller: String,
        argv: Vec<String>,
        /// Names of the variables it set, never their values.
        env: Vec<String>,
        tty: bool,
        stdin: bool,
    },
    /// A stop of a running job was asked for.
    StopRequested { job: Id, owner: String, by: String },
    /// A job ended.
    JobEnded(Box<JobEnded>),
    /// A job that was running when the executor last stopped (crash or kill): found at
    /// start-up, killed, recorded as lost.
    JobLost { job: Id, owner: String },
    /// A call the API server reports.
    ApiCall {
        reported_at: String,
        identity: String,
        cert_serial: String,
        cert_sha256: String,
        peer: String,
        method: String,
        job: Option<Id>,
        code: String,
        duration_us: u64,
    },
    /// Failed TLS handshakes the API server reports.
    ApiTlsFailure {
        reported_at: String,
        peer: String,
        reason: String,
        count: u64,
    },
    /// Records of the API server that were dropped, by the API server (`api`) or by the
    /// executor (`executor`), because a queue was full.
    ApiRecordsDropped { count: u64 },
}

/// The fields of a `job_started` record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobStarted {
    pub job: Id,
    pub owner: String,
    /// The job's name, and its labels (`key=value`), as the owner gave them.
    pub name: Option<String>,
    pub labels: Vec<String>,
    pub argv: Vec<String>,
    /// Names of the variables the request set, never their values.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub tty: bool,
    pub stdin: bool,
    /// The limits in effect (the request's, filled from the ceilings).
    pub limits: Limits,
    /// When the job is stopped if it still runs.
    pub deadline: String,
    pub uid: u32,
    /// The host pid of the job's init.
    pub pid: i32,
}

/// The fields of a `job_ended` record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobEnded {
    pub job: Id,
    pub owner: String,
    pub state: &'static str,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    /// Stopped at its deadline.
    pub timed_out: bool,
    pub cpu_usec: Option<u64>,
    pub peak_memory_bytes: Option<u64>,
    pub output_bytes: u64,
    pub output_truncated: bool,
    pub error: Option<String>,
    pub duration_ms: Option<u64>,
    /// The whole final status, for job events (not written: the fields above are).
    #[serde(skip)]
    pub status: Box<JobStatus>,
}

impl JobEnded {
    pub fn of(status: JobStatus) -> Self {
        JobEnded {
            job: Id(status.id),
            owner: status.owner.clone(),
            state: status.state.as_str(),
            exit_code: status.exit_code,
            signal: status.signal,
            oom_killed: status.oom_killed,
            timed_out: status.state == jobworker_protocol::JobState::TimedOut,
            cpu_usec: status.cpu_usec,
            peak_memory_bytes: status.peak_memory_bytes,
            output_bytes: status.output_bytes,
            output_truncated: status.output_truncated,
            error: status.error.clone(),
            duration_ms: status
                .ended_at_ms
                .map(|e| e.saturating_sub(status.started_at_ms)),
            status: Box::new(status),
        }
    }
}

impl Body {
    /// Who made the record: the executor, or the API server that reported it.
    pub fn source(&self) -> Source {
        match self {
            Body::ApiCall { .. } | Body::ApiTlsFailure { .. } => Source::Api,
            _ => Source::Executor,
        }
    }

    /// The identities the record is about (owner, caller, stopper, API caller), for
    /// `--owner` filters.
    pub fn identities(&self) -> Vec<&str> {
        match self {
            Body::Refused { identity, .. } => identity.iter().map(String::as_str).collect(),
            Body::JobStarted(s) => vec![&s.owner],
            Body::Exec { owner, caller, .. } => vec![owner, caller],
            Body::StopRequested { owner, by, .. } => vec![owner, by],
            Body::JobEnded(e) => vec![&e.owner],
            Body::JobLost { owner, .. } => vec![owner],
            Body::ApiCall { identity, .. } => vec![identity],
            _ => Vec::new(),
        }
    }

    /// The job event this record is, if it is one.
    pub fn job_event(&self, seq: u64, time_ms: u64) -> Option<JobEvent> {
        let (id, owner, kind) = match self {
            Body::JobStarted(s) => (
                s.job.0,
                s.owner.clone(),
                JobEventKind::Started {
                    argv: s.argv.clone(),
                },
            ),
            Body::Exec {
                job,
                owner,
                caller,
                argv,
                ..
            } => (
                job.0,
                owner.clone(),
                JobEventKind::Exec {
                    caller: caller.clone(),
                    argv: argv.clone(),
                },
            ),
            Body::StopRequested { job, owner, by } => (
                job.0,
                owner.clone(),
                JobEventKind::StopRequested { by: by.clone() },
            ),
            Body::JobEnded(e) => (
                e.job.0,
                e.owner.clone(),
                JobEventKind::Ended(e.status.clone()),
            ),
            _ => return None,
        };
        Some(JobEvent {
            seq,
            time_ms,
            id,
            owner,
            kind,
        })
    }
}

/// A record's line: the fields every record has, then its body's.
#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    time: &'a str,
    prev: &'a str,
    source: Source,
    #[serde(flatten)]
    body: &'a Body,
}

/// The line of record `seq` (without its `\n`), made at `time_ms`, after the record
/// whose hash is `prev`.
pub fn line(seq: u64, time_ms: u64, prev: &Hash, body: &Body) -> String {
    let time = rfc3339_ms(time_ms);
    let prev = hex(prev);
    let line = Line {
        seq,
        time: &time,
        prev: &prev,
        source: body.source(),
        body,
    };
    // Serializing these types cannot fail: every map key is a string.
    serde_json::to_string(&line).unwrap_or_else(|e| {
        format!(r#"{{"seq":{seq},"time":"{time}","prev":"{prev}","source":"executor","event":"unserializable","error":{:?}}}"#, e.to_string())
    })
}

/// SHA-256 of a line (without its `\n`).
pub fn hash(line: &[u8]) -> Hash {
    Sha256::digest(line).into()
}

/// Lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A hash from 64 lowercase hexadecimal digits.
pub fn parse_hash(s: &str) -> Option<Hash> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// `2026-01-02T03:04:05.678Z` for milliseconds since the Unix epoch.
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// Milliseconds since the Unix epoch of a time in exactly the form [`rfc3339_ms`]
/// writes.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 24 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || b[19] != b'.' || b[23] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(y as i64, mo as u32, d as u32);
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + mi * 60 + sec;
    Some(secs * 1000 + ms)
}

/// Howard Hinnant's `civil_from_days`: the proleptic Gregorian date of a day count.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_in_utc_with_milliseconds_and_read_back() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(1_798_761_599_999), "2026-12-31T23:59:59.999Z");
        for ms in [0, 951_782_400_123, 1_798_761_599_999, 4_102_444_800_000] {
            assert_eq!(parse_rfc3339_ms(&rfc3339_ms(ms)), Some(ms));
        }
        for bad in [
            "",
            "2026-12-31 23:59:59.999Z",
            "2026-13-01T00:00:00.000Z",
            "2026-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_line_begins_with_its_place_in_the_chain() {
        let body = Body::StopRequested {
            job: Id(JobId::from_bytes([0xab; 16])),
            owner: "alice".into(),
            by: "admin".into(),
        };
        let l = line(7, 1_000, &ZERO_HASH, &body);
        assert_eq!(
            l,
            format!(
                r#"{{"seq":7,"time":"1970-01-01T00:00:01.000Z","prev":"{}","source":"executor","event":"stop_requested","job":"{}","owner":"alice","by":"admin"}}"#,
                "0".repeat(64),
                "ab".repeat(16)
            )
        );
        assert_eq!(
            parse_hash(&hex(&hash(l.as_bytes()))),
            Some(hash(l.as_bytes()))
        );
        assert_eq!(parse_hash("AB"), None);
    }
}
