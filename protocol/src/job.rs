//! Jobs as the protocol sees them: identifiers, what to run, limits, and status.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A job identifier: 128 random bits chosen by the executor, never by a client.
///
/// Rendered as 32 lowercase hexadecimal digits. Because the text form is exactly that,
/// a parsed id is always safe to use as a file name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId([u8; 16]);

impl JobId {
    /// Length of the text form.
    pub const TEXT_LEN: usize = 32;

    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// A short prefix of the text form, used for host names and log lines.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(12);
        s
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({self})")
    }
}

/// The text was not 32 lowercase hexadecimal digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a job id is 32 lowercase hexadecimal digits")]
pub struct ParseJobIdError;

impl FromStr for JobId {
    type Err = ParseJobIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.as_bytes();
        if s.len() != Self::TEXT_LEN {
            return Err(ParseJobIdError);
        }
        let mut out = [0u8; 16];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            let hi = hex_digit(pair[0]).ok_or(ParseJobIdError)?;
            let lo = hex_digit(pair[1]).ok_or(ParseJobIdError)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Self(out))
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// One environment variable for the job, on top of the executor's fixed minimal
/// environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// A label on a job, `key=value`: for people and scripts to find jobs by (`list
/// --label`); the executor only checks its shape and stores it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Label {
    pub key: String,
    pub value: String,
}

/// Which jobs a list shows; an empty field matches every job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListFilter {
    /// Jobs in one of these states.
    pub states: Vec<JobState>,
    /// Jobs that carry every one of these labels.
    pub labels: Vec<Label>,
    /// The job of this name.
    pub name: Option<String>,
    /// Jobs of this owner (useful with `Scope::Any`).
    pub owner: Option<String>,
}

impl ListFilter {
    pub fn matches(&self, s: &JobStatus) -> bool {
        (self.states.is_empty() || self.states.contains(&s.state))
            && self.labels.iter().all(|l| s.labels.contains(l))
            && self
                .name
                .as_ref()
                .is_none_or(|n| s.name.as_ref() == Some(n))
            && self.owner.as_ref().is_none_or(|o| &s.owner == o)
    }
}

/// Disk IO limits on one block device. Each rate is optional; at least one must be set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoLimits {
    /// Path of the block device, e.g. `/dev/vda`. Must be under `/dev/`.
    pub device: String,
    /// Bytes per second read from the device.
    pub read_bps: Option<u64>,
    /// Bytes per second written to the device.
    pub write_bps: Option<u64>,
    /// Read operations per second.
    pub read_iops: Option<u64>,
    /// Write operations per second.
    pub write_iops: Option<u64>,
}

/// Resource limits of one job. Each is optional in a request; the executor fills what
/// is missing from its own configured ceilings, so a job never runs unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// CPU bandwidth in thousandths of one core: 500 is half a core, 2000 two cores.
    pub cpu_millis: Option<u32>,
    /// Memory in bytes; swap is off for the job.
    pub memory_bytes: Option<u64>,
    /// Maximum number of processes and threads in the job.
    pub pids: Option<u32>,
    /// Disk IO limits on one block device.
    pub io: Option<IoLimits>,
    /// Size of each of the job's private tmpfs (`/tmp`, `/var/tmp`, `/dev/shm`), in
    /// bytes. Missing: the executor's default size; never above its ceiling.
    #[serde(default)]
    pub tmp_bytes: Option<u64>,
    /// Wall-clock time the job may run, in milliseconds; at the deadline it is stopped
    /// like `Stop` does and ends `TimedOut`. Missing: the executor's default deadline;
    /// never above its maximum.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// What to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Program and arguments; `argv[0]` is resolved through the job's `PATH` when it
    /// holds no `/`.
    pub argv: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<EnvVar>,
    pub limits: Limits,
    /// The command's working directory, absolute; `None`: `/tmp`.
    #[serde(default)]
    pub workdir: Option<String>,
    /// The command reads its stdin from the client that runs it (`Request::Run` only);
    /// otherwise its stdin is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// The command gets a terminal of this size (its stdin, stdout and stderr), from a
    /// devpts instance of the job's own.
    #[serde(default)]
    pub tty: Option<TtySize>,
    /// A name for the job, unique among its owner's jobs that are kept.
    #[serde(default)]
    pub name: Option<String>,
    /// Labels, keys unique.
    #[serde(default)]
    pub labels: Vec<Label>,
}

/// A terminal's size, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// Another process to run inside a running job: in its namespaces and cgroup, as its
/// user, under its seccomp filter, with the job's environment rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    pub env: Vec<EnvVar>,
    /// Absolute; `None`: `/tmp`.
    pub workdir: Option<String>,
    /// The process reads its stdin from the client; otherwise `/dev/null`.
    pub stdin: bool,
    pub tty: Option<TtySize>,
}

/// How an exec ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecEnd {
    /// Its exit code, when it exited by itself.
    pub exit_code: Option<i32>,
    /// The signal that killed it (also when its job ended under it: the job's end kills
    /// every process of the job).
    pub signal: Option<i32>,
    /// It could not be started: why.
    pub failure: Option<StartFailure>,
    pub error: Option<String>,
}

/// Why a command could not be started, as a shell tells it by its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartFailure {
    /// No such program (in the job's `PATH`): a shell's 127.
    NotFound,
    /// The program exists but cannot be executed (permissions, format): a shell's 126.
    NotExecutable,
    /// Something else: the job's setup, its working directory, ...
    Other,
}

/// The stream a job wrote bytes to. A job with a terminal has one stream, its
/// terminal's, reported as `Stdout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub const ALL: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

    /// 0 for stdout, 1 for stderr: the file descriptor minus one.
    pub fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }

    pub fn from_index(i: u8) -> Option<Stream> {
        match i {
            0 => Some(Stream::Stdout),
            1 => Some(Stream::Stderr),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Which streams a reader of a job's output wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Streams {
    pub stdout: bool,
    pub stderr: bool,
}

impl Streams {
    pub const BOTH: Streams = Streams {
        stdout: true,
        stderr: true,
    };

    pub fn has(self, s: Stream) -> bool {
        match s {
            Stream::Stdout => self.stdout,
            Stream::Stderr => self.stderr,
        }
    }
}

impl Default for Streams {
    fn default() -> Self {
        Streams::BOTH
    }
}

/// Whose jobs a request may address. The API server sets it from the caller's verified
/// identity; the executor answers "not found" for a job outside the scope, exactly as
/// for a job that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scope {
    /// Only jobs whose recorded owner is this identity.
    Owner(String),
    /// Every job (administrators).
    Any,
}

impl Scope {
    pub fn allows(&self, owner: &str) -> bool {
        match self {
            Scope::Owner(o) => o == owner,
            Scope::Any => true,
        }
    }
}

/// Lifecycle state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// The command is running.
    Running,
    /// The command exited by itself; `exit_code` is set.
    Exited,
    /// The command was killed by a signal it did not ask for; `signal` is set.
    Signaled,
    /// The job ended after a stop request; `exit_code` or `signal` says how.
    Stopped,
    /// The command could not be started; `error` says why.
    FailedToStart,
    /// The executor restarted while the job was running; the job was killed and its
    /// output up to then is kept.
    Lost,
    /// The job ran out of time: it was stopped at its deadline; `exit_code` or `signal`
    /// says how it ended.
    TimedOut,
}

impl JobState {
    pub fn is_finished(self) -> bool {
        self != JobState::Running
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Exited => "exited",
            JobState::Signaled => "signaled",
            JobState::Stopped => "stopped",
            JobState::FailedToStart => "failed_to_start",
            JobState::Lost => "lost",
            JobState::TimedOut => "timed_out",
        }
    }
}

/// Everything known about a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: JobId,
    /// Identity of the user that started the job, as recorded by the executor.
    pub owner: String,
    pub argv: Vec<String>,
    /// The limits actually applied (request merged with the executor's ceilings).
    pub limits: Limits,
    pub state: JobState,
    /// Exit code, when the command exited by itself.
    pub exit_code: Option<i32>,
    /// Signal number, when the command was killed by a signal.
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of the job.
    pub oom_killed: bool,
    /// Why the job failed to start, or was lost.
    pub error: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// Milliseconds since the Unix epoch; set once the job has finished.
    pub ended_at_ms: Option<u64>,
    /// CPU time used by all processes of the job, in microseconds.
    pub cpu_usec: Option<u64>,
    /// Highest memory use of the job's cgroup, in bytes.
    pub peak_memory_bytes: Option<u64>,
    /// Bytes of output stored so far.
    pub output_bytes: u64,
    /// Output reached the per-job cap; bytes past it were dropped.
    pub output_truncated: bool,
    /// The user id the job ran as (its own, allocated by the executor); `None` for jobs
    /// recorded before jobs had one.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Why the command could not be started, when it could not.
    #[serde(default)]
    pub start_failure: Option<StartFailure>,
    /// The job's name, if it was given one.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: Vec<Label>,
}

/// One owner's use of their quotas and the quotas themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaReport {
    pub owner: String,
    /// Held by the owner's running jobs now.
    pub used: QuotaAmounts,
    /// The owner's quotas; `None` is unlimited.
    pub limits: QuotaLimits,
}

/// Amounts counted against a quota: the running jobs and the sums of their limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaAmounts {
    pub running_jobs: u64,
    pub memory_bytes: u64,
    pub cpu_millis: u64,
    pub pids: u64,
}

/// Per-owner quotas; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaLimits {
    pub running_jobs: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u64>,
    pub pids: Option<u64>,
}

/// At most 40 characters of a client's text, for an error message.
pub fn shorten(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_text_round_trips() {
        let id = JobId::from_bytes([
            0x00, 0x01, 0x7f, 0x80, 0xff, 0xab, 0xcd, 0xef, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60,
            0x70, 0x90,
        ]);
        let text = id.to_string();
        assert_eq!(text, "00017f80ffabcdef1020304050607090");
        assert_eq!(text.parse::<JobId>(), Ok(id));
        assert_eq!(id.short(), "00017f80ffab");
    }

    #[test]
    fn job_id_rejects_anything_but_32_lowercase_hex_digits() {
        for bad in [
            "",
            "00",
            "00017f80ffabcdef102030405060709",   // 31
            "00017f80ffabcdef10203040506070900", // 33
            "00017F80FFABCDEF1020304050607090",  // upper case
            "../../../../../../../../etc/pass",  // 32, not hex
            "00017f80ffabcdef10203040506070 g",
            "é0017f80ffabcdef102030405060709",
        ] {
            assert_eq!(bad.parse::<JobId>(), Err(ParseJobIdError), "{bad:?}");
        }
    }

    #[test]
    fn scope_allows_only_its_owner() {
        assert!(Scope::Owner("alice".into()).allows("alice"));
        assert!(!Scope::Owner("alice".into()).allows("bob"));
        assert!(!Scope::Owner("alice".into()).allows("alice "));
        assert!(Scope::Any.allows("bob"));
    }
}
