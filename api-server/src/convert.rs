//! Translation between the public API (`jobworker.v1`) and the executor protocol, with
//! the checks done at the network edge: the protocol's own bounds
//! ([`jobworker_protocol::validate`]) plus sanity ranges for limits, so bad input is
//! answered with INVALID_ARGUMENT before the executor is asked.

use jobworker_proto::v1 as pb;
use jobworker_protocol::{
    EnvVar, ExecEnd, ExecSpec, IoLimits, JobId, JobSpec, JobState, JobStatus, Label, Limits,
    ListFilter, OutputFrom, QuotaAmounts, QuotaLimits, QuotaReport, StartFailure, Stream, Streams,
    TtySize, WireError, validate,
};
use tonic::Status;

use crate::errors::{invalid, wire_to_status};

/// Largest CPU limit accepted: 1024 cores, in thousandths of a core.
pub const MAX_CPU_MILLIS: u32 = 1024 * 1024;
/// Largest memory limit accepted: 1 PiB.
pub const MAX_MEMORY_BYTES: u64 = 1 << 50;
/// Largest pids limit accepted: the kernel's own maximum (`PID_MAX_LIMIT`).
pub const MAX_PIDS: u32 = 4 * 1024 * 1024;
/// Largest IO rate accepted (bytes or operations per second): 2^50.
pub const MAX_IO_RATE: u64 = 1 << 50;
/// Largest tmpfs size accepted: 1 PiB, like memory.
pub const MAX_TMP_BYTES: u64 = 1 << 50;
/// Longest deadline accepted: 10 years.
pub const MAX_TIMEOUT_MS: u64 = 10 * 366 * 86_400_000;
/// Page size used when a list request gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 100;

/// Parses a job id given by a client.
pub fn job_id(text: &str) -> Result<JobId, Status> {
    text.parse()
        .map_err(|e| invalid(format!("job id: {e}, got {:?}", Truncated(text))))
}

/// Shows at most 40 characters of a client-supplied string in an error message.
struct Truncated<'a>(&'a str);

impl std::fmt::Debug for Truncated<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.char_indices().nth(40) {
            Some((end, _)) => write!(f, "{:?}...", &self.0[..end]),
            None => write!(f, "{:?}", self.0),
        }
    }
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    name: &str,
    value: Option<T>,
    max: T,
) -> Result<(), Status> {
    match value {
        Some(v) if v > max => Err(invalid(format!("{name}: must be at most {max}"))),
        _ => Ok(()),
    }
}

fn env_from_pb(env: Vec<pb::EnvVar>) -> Vec<EnvVar> {
    env.into_iter()
        .map(|v| EnvVar {
            name: v.name,
            value: v.value,
        })
        .collect()
}

/// A terminal size, checked.
pub fn tty_size(size: Option<pb::TerminalSize>) -> Result<Option<TtySize>, Status> {
    let Some(size) = size else {
        return Ok(None);
    };
    let side = |n: u32| u16::try_from(n).unwrap_or(u16::MAX);
    let t = TtySize {
        rows: side(size.rows),
        cols: side(size.cols),
    };
    validate::tty(Some(t)).map_err(|e| wire_to_status(&e))?;
    Ok(Some(t))
}

/// The job specification of a start request, checked.
pub fn job_spec(request: pb::StartJobRequest) -> Result<JobSpec, Status> {
    let limits = request.limits.map(limits_from_pb).unwrap_or_default();
    let spec = JobSpec {
        argv: request.argv,
        env: env_from_pb(request.env),
        limits,
        workdir: request.workdir,
        stdin: request.stdin,
        tty: tty_size(request.tty)?,
        name: request.name,
        labels: labels_from_pb(request.labels),
    };
    validate::spec(&spec).map_err(|e: WireError| wire_to_status(&e))?;
    let l = &spec.limits;
    in_range("cpu", l.cpu_millis, MAX_CPU_MILLIS)?;
    in_range("memory", l.memory_bytes, MAX_MEMORY_BYTES)?;
    in_range("pids", l.pids, MAX_PIDS)?;
    in_range("tmp size", l.tmp_bytes, MAX_TMP_BYTES)?;
    in_range("timeout", l.timeout_ms, MAX_TIMEOUT_MS)?;
    if let Some(io) = &l.io {
        in_range("io read bps", io.read_bps, MAX_IO_RATE)?;
        in_range("io write bps", io.write_bps, MAX_IO_RATE)?;
        in_range("io read iops", io.read_iops, MAX_IO_RATE)?;
        in_range("io write iops", io.write_iops, MAX_IO_RATE)?;
    }
    Ok(spec)
}

fn labels_from_pb(labels: Vec<pb::Label>) -> Vec<Label> {
    labels
        .into_iter()
        .map(|l| Label {
            key: l.key,
            value: l.value,
        })
        .collect()
}

fn labels_to_pb(labels: Vec<Label>) -> Vec<pb::Label> {
    labels
        .into_iter()
        .map(|l| pb::Label {
            key: l.key,
            value: l.value,
        })
        .collect()
}

/// The filter of a list request, checked (whether the caller may name an owner is the
/// caller's role's question, answered by the service).
pub fn list_filter(r: &pb::ListJobsRequest) -> Result<ListFilter, Status> {
    let mut states = Vec::new();
    for s in &r.states {
        let state = match pb::JobState::try_from(*s) {
            Ok(pb::JobState::Running) => JobState::Running,
            Ok(pb::JobState::Exited) => JobState::Exited,
            Ok(pb::JobState::Signaled) => JobState::Signaled,
            Ok(pb::JobState::Stopped) => JobState::Stopped,
            Ok(pb::JobState::FailedToStart) => JobState::FailedToStart,
            Ok(pb::JobState::Lost) => JobState::Lost,
            Ok(pb::JobState::TimedOut) => JobState::TimedOut,
            Ok(pb::JobState::Unspecified) | Err(_) => {
                return Err(invalid(format!("states: unknown state {s}")));
            }
        };
        if !states.contains(&state) {
            states.push(state);
        }
    }
    let filter = ListFilter {
        states,
        labels: labels_from_pb(r.labels.clone()),
        name: r.name.clone(),
        owner: r.owner.clone(),
    };
    validate::list_filter(&filter).map_err(|e| wire_to_status(&e))?;
    Ok(filter)
}

/// The reference (id, name or id prefix) and the process of an exec, checked.
pub fn exec_start(start: pb::ExecStart) -> Result<(String, ExecSpec), Status> {
    let id = start.id;
    let spec = ExecSpec {
        argv: start.argv,
        env: env_from_pb(start.env),
        workdir: start.workdir,
        stdin: start.stdin,
        tty: tty_size(start.tty)?,
    };
    validate::exec_spec(&spec).map_err(|e| wire_to_status(&e))?;
    Ok((id, spec))
}

fn start_failure_to_pb(f: Option<StartFailure>) -> pb::StartFailure {
    match f {
        None => pb::StartFailure::Unspecified,
        Some(StartFailure::NotFound) => pb::StartFailure::NotFound,
        Some(StartFailure::NotExecutable) => pb::StartFailure::NotExecutable,
        Some(StartFailure::Other) => pb::StartFailure::Other,
    }
}

/// How an exec ended, for the client.
pub fn exec_end(e: ExecEnd) -> pb::ExecEnded {
    pb::ExecEnded {
        exit_code: e.exit_code,
        signal: e.signal,
        start_failure: start_failure_to_pb(e.failure).into(),
        error: e.error.unwrap_or_default(),
    }
}

fn limits_from_pb(l: pb::Limits) -> Limits {
    Limits {
        cpu_millis: l.cpu_millis,
        memory_bytes: l.memory_bytes,
        pids: l.pids,
        io: l.io.map(|io| IoLimits {
            device: io.device,
            read_bps: io.read_bps,
            write_bps: io.write_bps,
            read_iops: io.read_iops,
            write_iops: io.write_iops,
        }),
        tmp_bytes: l.tmp_bytes,
        timeout_ms: l.timeout_ms,
    }
}

fn limits_to_pb(l: Limits) -> pb::Limits {
    pb::Limits {
        cpu_millis: l.cpu_millis,
        memory_bytes: l.memory_bytes,
        pids: l.pids,
        io: l.io.map(|io| pb::IoLimits {
            device: io.device,
            read_bps: io.read_bps,
            write_bps: io.write_bps,
            read_iops: io.read_iops,
            write_iops: io.write_iops,
        }),
        tmp_bytes: l.tmp_bytes,
        timeout_ms: l.timeout_ms,
    }
}

/// Where an output request starts and which streams it wants.
pub fn output_selection(r: &pb::StreamJobOutputRequest) -> Result<(OutputFrom, Streams), Status> {
    let from = match r.tail_lines {
        Some(_) if r.offset != 0 => {
            return Err(invalid(
                "tail_lines: give an offset or a number of lines, not both",
            ));
        }
        Some(n) => OutputFrom::TailLines(n),
        None => OutputFrom::Offset(r.offset),
    };
    let mut streams = Streams {
        stdout: r.streams.is_empty(),
        stderr: r.streams.is_empty(),
    };
    for s in &r.streams {
        match pb::OutputStream::try_from(*s) {
            Ok(pb::OutputStream::Stdout) => streams.stdout = true,
            Ok(pb::OutputStream::Stderr) => streams.stderr = true,
            Err(_) => return Err(invalid(format!("streams: unknown stream {s}"))),
        }
    }
    Ok((from, streams))
}

pub fn stream_to_pb(s: Stream) -> pb::OutputStream {
    match s {
        Stream::Stdout => pb::OutputStream::Stdout,
        Stream::Stderr => pb::OutputStream::Stderr,
    }
}

/// The page size of a list request: 0 means the default, else 1 to the protocol's
/// maximum.
pub fn page_size(requested: u32) -> Result<u32, Status> {
    let size = if requested == 0 {
        DEFAULT_PAGE_SIZE
    } else {
        requested
    };
    validate::list_limit(size).map_err(|e| wire_to_status(&e))?;
    Ok(size)
}

/// The position a page token stands for. Tokens are opaque to clients; they are the id
/// of the last job of the previous page.
pub fn page_token(token: &str) -> Result<Option<JobId>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .parse()
        .map(Some)
        .map_err(|_| invalid("page token: not a token from a previous response"))
}

fn state_to_pb(state: JobState) -> pb::JobState {
    match state {
        JobState::Running => pb::JobState::Running,
        JobState::Exited => pb::JobState::Exited,
        JobState::Signaled => pb::JobState::Signaled,
        JobState::Stopped => pb::JobState::Stopped,
        JobState::FailedToStart => pb::JobState::FailedToStart,
        JobState::Lost => pb::JobState::Lost,
        JobState::TimedOut => pb::JobState::TimedOut,
    }
}

/// Milliseconds since the Unix epoch as a protobuf timestamp.
pub fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        // u64 milliseconds / 1000 always fits in i64.
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        // Below 10^9, so it fits in i32.
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// A job status for the client.
pub fn job_status(s: JobStatus) -> pb::JobStatus {
    pb::JobStatus {
        id: s.id.to_string(),
        owner: s.owner,
        argv: s.argv,
        limits: Some(limits_to_pb(s.limits)),
        state: state_to_pb(s.state).into(),
        exit_code: s.exit_code,
        signal: s.signal,
        oom_killed: s.oom_killed,
        error: s.error.unwrap_or_default(),
        started_at: Some(timestamp(s.started_at_ms)),
        ended_at: s.ended_at_ms.map(timestamp),
        cpu_usec: s.cpu_usec,
        peak_memory_bytes: s.peak_memory_bytes,
        output_bytes: s.output_bytes,
        output_truncated: s.output_truncated,
        uid: s.uid,
        start_failure: start_failure_to_pb(s.start_failure).into(),
        name: s.name,
        labels: labels_to_pb(s.labels),
    }
}

/// One owner's quotas and use for the client.
pub fn quota(r: QuotaReport) -> pb::Quota {
    let used = |u: QuotaAmounts| pb::QuotaAmounts {
        running_jobs: Some(u.running_jobs),
        memory_bytes: Some(u.memory_bytes),
        cpu_millis: Some(u.cpu_millis),
        pids: Some(u.pids),
    };
    let limits = |l: QuotaLimits| pb::QuotaAmounts {
        running_jobs: l.running_jobs,
        memory_bytes: l.memory_bytes,
        cpu_millis: l.cpu_millis,
        pids: l.pids,
    };
    pb::Quota {
        owner: r.owner,
        used: Some(used(r.used)),
        limits: Some(limits(r.limits)),
    }
}

/// A job event for the API.
pub fn job_event(e: jobworker_protocol::JobEvent, skipped: u64) -> pb::JobEvent {
    use jobworker_protocol::JobEventKind;
    use pb::job_event::Event;
    let event = match e.kind {
        JobEventKind::Started { argv } => Event::Started(pb::JobStarted { argv }),
        JobEventKind::Exec { caller, argv } => Event::Exec(pb::JobExec { caller, argv }),
        JobEventKind::StopRequested { by } => Event::StopRequested(pb::JobStopRequested { by }),
        JobEventKind::Ended(status) => Event::Ended(job_status(*status)),
    };
    pb::JobEvent {
        seq: e.seq,
        time: Some(timestamp(e.time_ms)),
        id: e.id.to_string(),
        owner: e.owner,
        event: Some(event),
        skipped,
    }
}

/// A job's live usage for the API.
pub fn job_usage(u: jobworker_protocol::JobUsage) -> pb::JobUsage {
    pb::JobUsage {
        memory_bytes: u.memory_bytes,
        pids: u.pids,
        cpu_usec: u.cpu_usec,
        cpu_millis: u.cpu_millis,
        window_ms: u.window_ms,
        sampled_at: Some(timestamp(u.at_ms)),
    }
}

/// Milliseconds since the Unix epoch of a timestamp (before 1970: 0).
pub fn timestamp_ms(t: &prost_types::Timestamp) -> u64 {
    let secs = u64::try_from(t.seconds).unwrap_or(0);
    let ms = u64::try_from(t.nanos / 1_000_000).unwrap_or(0);
    secs.saturating_mul(1000).saturating_add(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn start(argv: &[&str], limits: Option<pb::Limits>) -> pb::StartJobRequest {
        pb::StartJobRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            limits,
            ..Default::default()
        }
    }

    fn refused(request: pb::StartJobRequest) -> String {
        let s = job_spec(request).expect_err("should be refused");
        assert_eq!(s.code(), Code::InvalidArgument);
        s.message().to_string()
    }

    #[test]
    fn a_plain_request_converts() {
        let spec = job_spec(pb::StartJobRequest {
            argv: vec!["echo".into(), "hi".into()],
            env: vec![pb::EnvVar {
                name: "A".into(),
                value: "b".into(),
            }],
            limits: Some(pb::Limits {
                cpu_millis: Some(500),
                memory_bytes: Some(1 << 20),
                pids: Some(10),
                io: Some(pb::IoLimits {
                    device: "/dev/vda".into(),
                    read_bps: Some(1),
                    ..Default::default()
                }),
                tmp_bytes: Some(1 << 30),
                timeout_ms: Some(90_000),
            }),
            workdir: Some("/srv".into()),
            stdin: true,
            tty: Some(pb::TerminalSize { rows: 24, cols: 80 }),
            name: Some("nightly".into()),
            labels: vec![pb::Label {
                key: "team".into(),
                value: "infra".into(),
            }],
        })
        .unwrap();
        assert_eq!(spec.name.as_deref(), Some("nightly"));
        assert_eq!(spec.labels[0].key, "team");
        assert_eq!(spec.workdir.as_deref(), Some("/srv"));
        assert!(spec.stdin);
        assert_eq!(spec.tty, Some(TtySize { rows: 24, cols: 80 }));
        assert_eq!(spec.argv, ["echo", "hi"]);
        assert_eq!(spec.env[0].name, "A");
        assert_eq!(spec.limits.cpu_millis, Some(500));
        assert_eq!(spec.limits.io.unwrap().read_bps, Some(1));
        assert_eq!(spec.limits.tmp_bytes, Some(1 << 30));
        assert_eq!(spec.limits.timeout_ms, Some(90_000));
    }

    #[test]
    fn bad_requests_are_invalid_arguments_naming_the_field() {
        assert!(refused(start(&[], None)).starts_with("argv:"));
        let zero_cpu = pb::Limits {
            cpu_millis: Some(0),
            ..Default::default()
        };
        assert!(refused(start(&["true"], Some(zero_cpu))).starts_with("cpu:"));
        let huge_memory = pb::Limits {
            memory_bytes: Some(MAX_MEMORY_BYTES + 1),
            ..Default::default()
        };
        assert_eq!(
            refused(start(&["true"], Some(huge_memory))),
            format!("memory: must be at most {MAX_MEMORY_BYTES}")
        );
        let many_pids = pb::Limits {
            pids: Some(MAX_PIDS + 1),
            ..Default::default()
        };
        assert!(refused(start(&["true"], Some(many_pids))).starts_with("pids:"));
        let bad_device = pb::Limits {
            io: Some(pb::IoLimits {
                device: "/etc/passwd".into(),
                write_iops: Some(5),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(refused(start(&["true"], Some(bad_device))).contains("not a device path"));
        let relative = pb::StartJobRequest {
            workdir: Some("srv".into()),
            ..start(&["true"], None)
        };
        assert!(refused(relative).starts_with("workdir:"));
        for (rows, cols) in [(0, 80), (24, 0), (70_000, 80), (24, 10_001)] {
            let tty = pb::StartJobRequest {
                tty: Some(pb::TerminalSize { rows, cols }),
                ..start(&["true"], None)
            };
            assert!(refused(tty).starts_with("terminal size:"), "{rows}x{cols}");
        }
    }

    #[test]
    fn execs_are_checked() {
        let ok = pb::ExecStart {
            id: "0123456789abcdef0123456789abcdef".into(),
            argv: vec!["ps".into()],
            ..Default::default()
        };
        let (_, spec) = exec_start(ok.clone()).unwrap();
        assert_eq!(spec.argv, ["ps"]);
        let no_argv = pb::ExecStart {
            argv: vec![],
            ..ok.clone()
        };
        assert_eq!(
            exec_start(no_argv).unwrap_err().code(),
            Code::InvalidArgument
        );
        // The job may be named by its id, a prefix or a name: the service resolves it.
        let (reference, _) = exec_start(pb::ExecStart {
            id: "build".into(),
            ..ok
        })
        .unwrap();
        assert_eq!(reference, "build");
    }

    #[test]
    fn job_ids_and_tokens_are_checked() {
        assert!(job_id("0123456789abcdef0123456789abcdef").is_ok());
        let e = job_id("../../etc/passwd").unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("job id:"), "{}", e.message());
        let long = "x".repeat(10_000);
        assert!(job_id(&long).unwrap_err().message().len() < 200);
        assert_eq!(page_token("").unwrap(), None);
        assert!(
            page_token("0123456789abcdef0123456789abcdef")
                .unwrap()
                .is_some()
        );
        assert_eq!(
            page_token("nope").unwrap_err().code(),
            Code::InvalidArgument
        );
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(501).unwrap_err().code(), Code::InvalidArgument);
    }

    #[test]
    fn timestamps_keep_milliseconds() {
        let t = timestamp(1_700_000_000_123);
        assert_eq!(t.seconds, 1_700_000_000);
        assert_eq!(t.nanos, 123_000_000);
    }
}
