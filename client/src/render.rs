//! How job statuses are shown: text for people, and the stable JSON shape for scripts.
//!
//! The JSON shape (documented in `jobctl status --help` and `docs/client.md`) is the
//! [`JobJson`] struct: snake_case names, ids as strings, times both as RFC 3339 text
//! (UTC, milliseconds) and as Unix milliseconds, `null` for what is unknown or does
//! not apply. Fields are only ever added, never renamed or repurposed.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jobworker_proto::v1::{self as pb, JobState};
use serde::Serialize;

/// A job's status as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobJson {
    pub id: String,
    pub owner: String,
    pub argv: Vec<String>,
    /// `running`, `exited`, `signaled`, `stopped`, `failed_to_start`, `lost`,
    /// `timed_out` or `unknown`.
    pub state: &'static str,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub error: Option<String>,
    pub started_at: Option<String>,
    pub started_at_unix_ms: Option<i64>,
    pub ended_at: Option<String>,
    pub ended_at_unix_ms: Option<i64>,
    pub cpu_usec: Option<u64>,
    pub peak_memory_bytes: Option<u64>,
    pub output_bytes: u64,
    pub output_truncated: bool,
    pub limits: LimitsJson,
    /// The user id the job ran as (its own); null for jobs from before.
    pub uid: Option<u32>,
    /// Its name, or null.
    pub name: Option<String>,
    /// Its labels, `{"key": "value", ...}`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Why its command could not be started: `not_found`, `not_executable`, `other`, or
    /// null.
    pub start_failure: Option<&'static str>,
}

/// The limits applied to a job; `null` where unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LimitsJson {
    pub cpu_millis: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u32>,
    pub io: Option<IoJson>,
    pub tmp_bytes: Option<u64>,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IoJson {
    pub device: String,
    pub read_bps: Option<u64>,
    pub write_bps: Option<u64>,
    pub read_iops: Option<u64>,
    pub write_iops: Option<u64>,
}

/// The output of `list --output json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListJson {
    pub jobs: Vec<JobJson>,
}

/// The state's JSON name.
pub fn state_name(state: i32) -> &'static str {
    match JobState::try_from(state) {
        Ok(JobState::Running) => "running",
        Ok(JobState::Exited) => "exited",
        Ok(JobState::Signaled) => "signaled",
        Ok(JobState::Stopped) => "stopped",
        Ok(JobState::FailedToStart) => "failed_to_start",
        Ok(JobState::Lost) => "lost",
        Ok(JobState::TimedOut) => "timed_out",
        Ok(JobState::Unspecified) | Err(_) => "unknown",
    }
}

/// A protobuf timestamp as a time, when it is one.
pub fn time_of(ts: &Option<prost_types::Timestamp>) -> Option<SystemTime> {
    ts.as_ref().and_then(|t| SystemTime::try_from(*t).ok())
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn unix_ms(t: SystemTime) -> Option<i64> {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).ok(),
        Err(before) => i64::try_from(before.duration().as_millis())
            .ok()
            .map(|ms| -ms),
    }
}

impl From<&pb::JobStatus> for JobJson {
    fn from(s: &pb::JobStatus) -> Self {
        let started = time_of(&s.started_at);
        let ended = time_of(&s.ended_at);
        JobJson {
            id: s.id.clone(),
            owner: s.owner.clone(),
            argv: s.argv.clone(),
            state: state_name(s.state),
            exit_code: s.exit_code,
            signal: s.signal,
            oom_killed: s.oom_killed,
            error: Some(s.error.clone()).filter(|e| !e.is_empty()),
            started_at: started.map(rfc3339),
            started_at_unix_ms: started.and_then(unix_ms),
            ended_at: ended.map(rfc3339),
            ended_at_unix_ms: ended.and_then(unix_ms),
            cpu_usec: s.cpu_usec,
            peak_memory_bytes: s.peak_memory_bytes,
            output_bytes: s.output_bytes,
            output_truncated: s.output_truncated,
            limits: s.limits.as_ref().map(LimitsJson::from).unwrap_or_default(),
            uid: s.uid,
            name: s.name.clone(),
            labels: s
                .labels
                .iter()
                .map(|l| (l.key.clone(), l.value.clone()))
                .collect(),
            start_failure: match pb::StartFailure::try_from(s.start_failure) {
                Ok(pb::StartFailure::NotFound) => Some("not_found"),
                Ok(pb::StartFailure::NotExecutable) => Some("not_executable"),
                Ok(pb::StartFailure::Other) => Some("other"),
                _ => None,
            },
        }
    }
}

impl From<&pb::Limits> for LimitsJson {
    fn from(l: &pb::Limits) -> Self {
        LimitsJson {
            cpu_millis: l.cpu_millis,
            memory_bytes: l.memory_bytes,
            pids: l.pids,
            io: l.io.as_ref().map(|io| IoJson {
                device: io.device.clone(),
                read_bps: io.read_bps,
                write_bps: io.write_bps,
                read_iops: io.read_iops,
                write_iops: io.write_iops,
            }),
            tmp_bytes: l.tmp_bytes,
            timeout_ms: l.timeout_ms,
        }
    }
}

/// One job as a JSON document (pretty-printed, ending with a newline).
pub fn job_json(s: &pb::JobStatus) -> String {
    let mut text = serde_json::to_string_pretty(&JobJson::from(s))
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// Jobs as the JSON document of `list`.
pub fn list_json(jobs: &[pb::JobStatus]) -> String {
    let list = ListJson {
        jobs: jobs.iter().map(JobJson::from).collect(),
    };
    let mut text =
        serde_json::to_string_pretty(&list).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// The name of a Linux signal (x86-64 and arm64 numbering).
pub fn signal_name(n: i32) -> Option<&'static str> {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(n)
        .ok()
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| NAMES.get(i).copied())
}

fn signal_text(n: i32) -> String {
    match signal_name(n) {
        Some(name) => format!("{name} ({n})"),
        None => format!("signal {n}"),
    }
}

/// A short description of how a job ended (or that it runs).
pub fn outcome(s: &pb::JobStatus) -> String {
    let mut text = match JobState::try_from(s.state) {
        Ok(JobState::Running) => "running".to_string(),
        Ok(JobState::Exited) => format!("exited with code {}", s.exit_code.unwrap_or(-1)),
        Ok(JobState::Signaled) => match s.signal {
            Some(n) => format!("killed by {}", signal_text(n)),
            None => "killed by a signal".to_string(),
        },
        Ok(JobState::Stopped) => match (s.exit_code, s.signal) {
            (Some(code), _) => format!("stopped, exited with code {code}"),
            (None, Some(n)) => format!("stopped by {}", signal_text(n)),
            (None, None) => "stopped".to_string(),
        },
        Ok(JobState::FailedToStart) => "failed to start".to_string(),
        Ok(JobState::Lost) => "lost".to_string(),
        Ok(JobState::TimedOut) => {
            let limit = s
                .limits
                .as_ref()
                .and_then(|l| l.timeout_ms)
                .map(|ms| format!(" after {}", duration_text(Duration::from_millis(ms))))
                .unwrap_or_default();
            match (s.exit_code, s.signal) {
                (Some(code), _) => format!("timed out{limit}, exited with code {code}"),
                (None, Some(n)) => format!("timed out{limit}, ended by {}", signal_text(n)),
                (None, None) => format!("timed out{limit}"),
            }
        }
        Ok(JobState::Unspecified) | Err(_) => "unknown".to_string(),
    };
    if s.oom_killed {
        text.push_str(", OOM-killed");
    }
    text
}

/// Quotas for people: one line per owner, each quota as `used/limit`.
pub fn quota_text(quotas: &[pb::Quota]) -> String {
    let mut out = String::new();
    for q in quotas {
        let zero = pb::QuotaAmounts::default();
        let used = q.used.as_ref().unwrap_or(&zero);
        let limits = q.limits.as_ref().unwrap_or(&zero);
        let of = |u: Option<u64>, l: Option<u64>, show: &dyn Fn(u64) -> String| {
            let u = show(u.unwrap_or(0));
            match l {
                Some(l) => format!("{u} of {}", show(l)),
                None => format!("{u} (unlimited)"),
            }
        };
        let count = |n: u64| n.to_string();
        let cores = |m: u64| format!("{} cores", m as f64 / 1000.0);
        let _ = writeln!(out, "{}:", identity(&q.owner));
        let _ = writeln!(
            out,
            "  running jobs  {}",
            of(used.running_jobs, limits.running_jobs, &count)
        );
        let _ = writeln!(
            out,
            "  memory        {}",
            of(used.memory_bytes, limits.memory_bytes, &bytes)
        );
        let _ = writeln!(
            out,
            "  cpu           {}",
            of(used.cpu_millis, limits.cpu_millis, &cores)
        );
        let _ = writeln!(
            out,
            "  pids          {}",
            of(used.pids, limits.pids, &count)
        );
    }
    out
}

/// Quotas as JSON: `{"quotas": [{"owner", "used": {...}, "limits": {...}}]}`, a limit
/// `null` when unlimited.
pub fn quota_json(quotas: &[pb::Quota]) -> String {
    let amounts = |a: &Option<pb::QuotaAmounts>, zero_is_unset: bool| {
        let a = a.unwrap_or_default();
        let v = |x: Option<u64>| match (x, zero_is_unset) {
            (None, true) => serde_json::Value::from(0u64),
            (x, _) => serde_json::to_value(x).unwrap_or_default(),
        };
        serde_json::json!({
            "running_jobs": v(a.running_jobs),
            "memory_bytes": v(a.memory_bytes),
            "cpu_millis": v(a.cpu_millis),
            "pids": v(a.pids),
        })
    };
    let list: Vec<serde_json::Value> = quotas
        .iter()
        .map(|q| {
            serde_json::json!({
                "owner": q.owner,
                "used": amounts(&q.used, true),
                "limits": amounts(&q.limits, false),
            })
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&serde_json::json!({ "quotas": list }))
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// A size in bytes with a binary unit: `512 B`, `1.5 KiB`, `256 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The command as a shell would read it back: words quoted where needed, control
/// characters escaped so nothing the job's argv holds can drive the terminal.
pub fn command_line(argv: &[String]) -> String {
    argv.iter()
        .map(|word| quote(word))
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
    if plain {
        return word.to_string();
    }
    if word.chars().any(char::is_control) {
        // $'...' with escapes.
        let mut out = String::from("$'");
        for c in word.chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '\\' => out.push_str("\\\\"),
                '\'' => out.push_str("\\'"),
                c if c.is_control() => {
                    let _ = write!(out, "\\x{:02x}", u32::from(c) & 0xff);
                }
                c => out.push(c),
            }
        }
        out.push('\'');
        return out;
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms} ms");
    }
    let secs = d.as_secs();
    if secs < 60 {
        return format!("{}.{:03} s", secs, d.subsec_millis());
    }
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

fn limits_text(l: &Option<pb::Limits>) -> String {
    let Some(l) = l else {
        return "unknown".to_string();
    };
    let mut parts = Vec::new();
    if let Some(c) = l.cpu_millis {
        parts.push(format!("cpu {} cores", f64::from(c) / 1000.0));
    }
    if let Some(m) = l.memory_bytes {
        parts.push(format!("memory {}", bytes(m)));
    }
    if let Some(p) = l.pids {
        parts.push(format!("pids {p}"));
    }
    if let Some(io) = &l.io {
        let mut io_parts = vec![format!("io {}", crate::error::one_line(&io.device))];
        if let Some(v) = io.read_bps {
            io_parts.push(format!("read {}/s", bytes(v)));
        }
        if let Some(v) = io.write_bps {
            io_parts.push(format!("write {}/s", bytes(v)));
        }
        if let Some(v) = io.read_iops {
            io_parts.push(format!("read {v} ops/s"));
        }
        if let Some(v) = io.write_iops {
            io_parts.push(format!("write {v} ops/s"));
        }
        parts.push(io_parts.join(" "));
    }
    if let Some(t) = l.tmp_bytes {
        parts.push(format!("tmp {}", bytes(t)));
    }
    if let Some(ms) = l.timeout_ms {
        parts.push(format!(
            "timeout {}",
            duration_text(Duration::from_millis(ms))
        ));
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

/// The human-readable status of one job.
pub fn job_text(s: &pb::JobStatus) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "{label:<12} {value}");
    };
    line("id:", crate::error::one_line(&s.id));
    if let Some(name) = &s.name {
        line("name:", crate::error::one_line(name));
    }
    line("owner:", identity(&s.owner));
    if !s.labels.is_empty() {
        let labels: Vec<String> = s
            .labels
            .iter()
            .map(|l| crate::error::one_line(&format!("{}={}", l.key, l.value)))
            .collect();
        line("labels:", labels.join(", "));
    }
    line("command:", command_line(&s.argv));
    line("state:", outcome(s));
    if !s.error.is_empty() {
        line("error:", crate::error::one_line(&s.error));
    }
    let started = time_of(&s.started_at);
    let ended = time_of(&s.ended_at);
    if let Some(t) = started {
        line("started:", rfc3339(t));
    }
    if let Some(t) = ended {
        line("ended:", rfc3339(t));
    }
    if let (Some(a), Some(b)) = (started, ended)
        && let Ok(d) = b.duration_since(a)
    {
        line("duration:", duration_text(d));
    }
    if let Some(us) = s.cpu_usec {
        line("cpu time:", duration_text(Duration::from_micros(us)));
    }
    if let Some(m) = s.peak_memory_bytes {
        line("peak memory:", bytes(m));
    }
    let mut output = bytes(s.output_bytes);
    if s.output_truncated {
        output.push_str(" (truncated at the server's cap)");
    }
    line("output:", output);
    line("limits:", limits_text(&s.limits));
    if let Some(uid) = s.uid {
        line("uid:", uid.to_string());
    }
    out
}

/// The human-readable list: one line per job under a header.
pub fn list_text(jobs: &[pb::JobStatus]) -> String {
    if jobs.is_empty() {
        return "no jobs\n".to_string();
    }
    let rows: Vec<[String; 6]> = jobs
        .iter()
        .map(|s| {
            [
                crate::error::one_line(&s.id),
                s.name
                    .as_deref()
                    .map(crate::error::one_line)
                    .unwrap_or_default(),
                identity(&s.owner),
                outcome(s),
                time_of(&s.started_at)
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                    .unwrap_or_default(),
                command_line(&s.argv),
            ]
        })
        .collect();
    let header = ["ID", "NAME", "OWNER", "STATE", "STARTED", "COMMAND"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut push_row = |cells: [&str; 6]| {
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push('\n');
    };
    push_row(header);
    for row in &rows {
        push_row([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]]);
    }
    out
}

/// An identity (a job's owner) for people, as the server shows it: as it is when it is
/// plain (`[A-Za-z0-9._@-]`), otherwise quoted, with `"` and `\` escaped and every
/// character outside printable ASCII as `\u{hex}`, so that `admin` and `admin` with an
/// invisible character never look alike. JSON keeps the raw string.
pub fn identity(id: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-');
    if !id.is_empty() && id.chars().all(plain) {
        return id.to_string();
    }
    let mut out = String::from("\"");
    for c in id.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_that_could_look_alike_are_shown_apart() {
        assert_eq!(identity("alice"), "alice");
        assert_eq!(identity("build-bot@ci.example"), "build-bot@ci.example");
        assert_eq!(identity("Jos\u{e9}"), r#""Jos\u{e9}""#);
        assert_eq!(identity("admin\u{200b}"), r#""admin\u{200b}""#);
        assert_eq!(identity("\u{202e}nimda"), r#""\u{202e}nimda""#);
        assert_eq!(identity("a \"b\"\\"), r#""a \"b\"\\""#);
        assert_eq!(identity(""), r#""""#);
    }

    fn sample() -> pb::JobStatus {
        pb::JobStatus {
            id: "0123456789abcdef0123456789abcdef".into(),
            owner: "alice".into(),
            argv: vec!["sh".into(), "-c".into(), "exit 7".into()],
            limits: Some(pb::Limits {
                cpu_millis: Some(500),
                memory_bytes: Some(256 << 20),
                pids: Some(100),
                io: Some(pb::IoLimits {
                    device: "/dev/vda".into(),
                    read_bps: Some(10 << 20),
                    write_bps: None,
                    read_iops: None,
                    write_iops: Some(50),
                }),
                tmp_bytes: Some(64 << 20),
                timeout_ms: Some(90_000),
            }),
            state: JobState::Exited as i32,
            exit_code: Some(7),
            signal: None,
            oom_killed: false,
            error: String::new(),
            started_at: Some(prost_types::Timestamp {
                seconds: 1_738_324_800,
                nanos: 123_000_000,
            }),
            ended_at: Some(prost_types::Timestamp {
                seconds: 1_738_324_801,
                nanos: 500_000_000,
            }),
            cpu_usec: Some(1520),
            peak_memory_bytes: None,
            output_bytes: 42,
            output_truncated: false,
            uid: Some(600_123),
            start_failure: 0,
            name: None,
            labels: vec![],
        }
    }

    #[test]
    fn json_shape_is_the_documented_one() {
        let value: serde_json::Value = serde_json::from_str(&job_json(&sample())).unwrap();
        let expected = serde_json::json!({
            "id": "0123456789abcdef0123456789abcdef",
            "owner": "alice",
            "argv": ["sh", "-c", "exit 7"],
            "state": "exited",
            "exit_code": 7,
            "signal": null,
            "oom_killed": false,
            "error": null,
            "started_at": "2025-01-31T12:00:00.123Z",
            "started_at_unix_ms": 1_738_324_800_123i64,
            "ended_at": "2025-01-31T12:00:01.500Z",
            "ended_at_unix_ms": 1_738_324_801_500i64,
            "cpu_usec": 1520,
            "peak_memory_bytes": null,
            "output_bytes": 42,
            "output_truncated": false,
            "limits": {
                "cpu_millis": 500,
                "memory_bytes": 268435456,
                "pids": 100,
                "io": {
                    "device": "/dev/vda",
                    "read_bps": 10485760,
                    "write_bps": null,
                    "read_iops": null,
                    "write_iops": 50
                },
                "tmp_bytes": 67108864,
                "timeout_ms": 90000
            },
            "uid": 600123,
            "name": null,
            "labels": {},
            "start_failure": null
        });
        assert_eq!(value, expected);
    }

    #[test]
    fn list_json_wraps_jobs() {
        let value: serde_json::Value =
            serde_json::from_str(&list_json(&[sample(), sample()])).unwrap();
        assert_eq!(value["jobs"].as_array().unwrap().len(), 2);
        assert_eq!(value["jobs"][1]["state"], "exited");
        let value: serde_json::Value = serde_json::from_str(&list_json(&[])).unwrap();
        assert_eq!(value, serde_json::json!({"jobs": []}));
    }

    #[test]
    fn running_jobs_have_null_end_and_unknown_states_are_named() {
        let mut s = sample();
        s.state = JobState::Running as i32;
        s.exit_code = None;
        s.ended_at = None;
        s.limits = None;
        let j = JobJson::from(&s);
        assert_eq!(j.state, "running");
        assert_eq!(j.ended_at, None);
        assert_eq!(j.ended_at_unix_ms, None);
        assert_eq!(j.limits, LimitsJson::default());
        s.state = 99;
        assert_eq!(JobJson::from(&s).state, "unknown");
    }

    #[test]
    fn outcomes_read_well() {
        let mut s = sample();
        assert_eq!(outcome(&s), "exited with code 7");
        s.state = JobState::Signaled as i32;
        s.exit_code = None;
        s.signal = Some(9);
        s.oom_killed = true;
        assert_eq!(outcome(&s), "killed by SIGKILL (9), OOM-killed");
        s.state = JobState::Stopped as i32;
        s.oom_killed = false;
        s.signal = Some(15);
        assert_eq!(outcome(&s), "stopped by SIGTERM (15)");
        s.signal = Some(64);
        assert_eq!(outcome(&s), "stopped by signal 64");
        s.state = JobState::TimedOut as i32;
        s.signal = Some(15);
        assert_eq!(outcome(&s), "timed out after 1m 30s, ended by SIGTERM (15)");
        s.signal = None;
        s.exit_code = Some(0);
        assert_eq!(outcome(&s), "timed out after 1m 30s, exited with code 0");
    }

    #[test]
    fn commands_are_quoted_and_escaped() {
        let argv = ["sh", "-c", "echo 'hi' there", "", "a\x1b[2Jb\n"].map(String::from);
        assert_eq!(
            command_line(&argv),
            r#"sh -c 'echo '\''hi'\'' there' '' $'a\x1b[2Jb\n'"#
        );
    }

    #[test]
    fn sizes_are_readable() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(256 << 20), "256 MiB");
    }

    #[test]
    fn human_status_and_list() {
        let text = job_text(&sample());
        assert!(text.contains("state:       exited with code 7\n"), "{text}");
        assert!(text.contains("duration:    1.377 s\n"), "{text}");
        assert!(
            text.contains("limits:      cpu 0.5 cores, memory 256 MiB, pids 100, io /dev/vda read 10 MiB/s write 50 ops/s, tmp 64 MiB, timeout 1m 30s\n"),
            "{text}"
        );
        assert!(text.contains("uid:         600123\n"), "{text}");
        let list = list_text(&[sample()]);
        let mut lines = list.lines();
        assert!(lines.next().unwrap().starts_with("ID  "));
        assert!(
            lines
                .next()
                .unwrap()
                .starts_with("0123456789abcdef0123456789abcdef        alice  ")
        );
        let named = pb::JobStatus {
            name: Some("nightly".into()),
            labels: vec![pb::Label {
                key: "team".into(),
                value: "infra".into(),
            }],
            ..sample()
        };
        let text = job_text(&named);
        assert!(text.contains("name:        nightly\n"), "{text}");
        assert!(text.contains("labels:      team=infra\n"), "{text}");
        let list = list_text(&[named]);
        assert!(
            list.lines()
                .nth(1)
                .unwrap()
                .starts_with("0123456789abcdef0123456789abcdef  nightly  alice  "),
            "{list}"
        );
        assert_eq!(list_text(&[]), "no jobs\n");
    }
}
