//! `jobctl audit`, `jobctl events`, `jobctl stats`, and the live usage `jobctl status`
//! shows for a running job.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use jobworker_proto::v1::{self as pb, job_event::Event, job_usage_response};

use crate::cli::Output;
use crate::commands::print;
use crate::connect::Client;
use crate::error::{CliError, exit};
use crate::render;

pub const AUDIT_EXAMPLES: &str = "\
Examples:
  jobctl audit                          the whole trail the executor keeps, oldest first
  jobctl audit --follow                 ... then each new record as it is written
  jobctl audit --since 1h --owner bob   the last hour, about bob's jobs and calls
  jobctl audit -o json | jq -c 'select(.event == \"job_started\")'

Administrators only. Each record is one JSON object (-o json prints it exactly as the
trail holds it, one per line): seq, time, prev (the SHA-256 of the record before),
source (executor, or api for what the API server reported), event, and its fields.
The executor checks the chain with `jobworker-executor audit verify`.";

pub const EVENTS_EXAMPLES: &str = "\
Examples:
  jobctl events                  recent events of your jobs
  jobctl events --follow         ... and each new one as it happens (Ctrl-C to stop)
  jobctl events -f -o json | jq -r 'select(.event == \"ended\") | .id'

Events: started, exec (by whom, what), stop_requested (by whom), ended (with the final
status). You see your own jobs' events; administrators see everyone's. -o json prints
one object per line: seq, time, id, owner, event, and argv, caller, by or status.";

pub const STATS_EXAMPLES: &str = "\
Examples:
  jobctl stats \"$id\"                 one sample: memory, processes, CPU rate
  jobctl stats --follow \"$id\"        one line a second until the job ends
  jobctl stats -f --interval 250ms -o json \"$id\"

CPU is the rate over the sampling interval, in cores (1.00 is one core busy). A job that
has ended shows its final status instead.";

#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// Keep printing records as they are written
    #[arg(short, long)]
    pub follow: bool,
    /// Only records since TIME: RFC 3339 (2026-01-02T15:04:05Z) or a duration ago (10m, 2h)
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<SystemTime>,
    /// Only records about NAME: its jobs, and the calls, execs and stops it made
    #[arg(long, value_name = "NAME")]
    pub owner: Option<String>,
    /// Output format
    #[arg(short, long, value_enum, default_value_t = Output::Human)]
    pub output: Output,
}

#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// Keep printing events as they happen
    #[arg(short, long)]
    pub follow: bool,
    /// Output format
    #[arg(short, long, value_enum, default_value_t = Output::Human)]
    pub output: Output,
}

#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    /// A sample per interval until the job ends
    #[arg(short, long)]
    pub follow: bool,
    /// Sampling interval, 100ms to 60s
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Output format
    #[arg(short, long, value_enum, default_value_t = Output::Human)]
    pub output: Output,
    /// The running job's id, name, or id prefix
    #[arg(value_name = "ID", add = crate::complete::jobs())]
    pub id: String,
}

fn parse_since(text: &str) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t);
    }
    let ago = humantime::parse_duration(text).map_err(|_| {
        format!("{text:?}: expected a time (2026-01-02T15:04:05Z) or a duration ago (10m, 2h)")
    })?;
    SystemTime::now()
        .checked_sub(ago)
        .ok_or_else(|| format!("{text:?}: too long ago"))
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|_| format!("{text:?}: expected a duration such as 500ms or 2s"))?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(60) {
        return Err(format!("{text:?}: from 100ms to 60s"));
    }
    Ok(d)
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn time_text(ts: &Option<prost_types::Timestamp>) -> String {
    render::time_of(ts).map_or_else(|| "-".into(), render::rfc3339)
}

pub async fn audit(client: &Client, args: &AuditArgs) -> Result<u8, CliError> {
    let mut stream = client
        .api
        .clone()
        .stream_audit(pb::StreamAuditRequest {
            follow: args.follow,
            since: args.since.map(timestamp),
            owner: args.owner.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| client.error(&s))?
        .into_inner();
    loop {
        match stream.message().await {
            Ok(Some(r)) => {
                if r.truncated {
                    crate::commands::note(&format!(
                        "record {} is longer than the server sends; cut",
                        r.seq
                    ));
                }
                match args.output {
                    Output::Json => print(&format!("{}\n", r.json))?,
                    Output::Human => print(&audit_text(&r.json))?,
                }
            }
            Ok(None) => return Ok(exit::OK),
            Err(status) => return Err(client.error(&status).context("audit")),
        }
    }
}

/// One record on one line: its number, time, source and event, then its other fields
/// as `key=value` (strings escaped as JSON, so nothing in one can change the line).
pub fn audit_text(json: &str) -> String {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(json) else {
        return format!("{}\n", crate::error::one_line(json));
    };
    let field = |k: &str| {
        map.get(k)
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default()
    };
    let mut out = format!(
        "{:>6} {} {:<8} {:<15}",
        field("seq"),
        field("time"),
        field("source"),
        field("event")
    );
    for (k, v) in &map {
        if matches!(k.as_str(), "seq" | "time" | "source" | "event" | "prev") || v.is_null() {
            continue;
        }
        out.push_str(&format!(" {k}={v}"));
    }
    out.push('\n');
    out
}

pub async fn events(client: &Client, args: &EventsArgs) -> Result<u8, CliError> {
    let mut stream = client
        .api
        .clone()
        .stream_events(pb::StreamEventsRequest {
            follow: args.follow,
        })
        .await
        .map_err(|s| client.error(&s))?
        .into_inner();
    loop {
        match stream.message().await {
            Ok(Some(e)) => {
                if e.skipped > 0 {
                    crate::commands::note(&format!(
                        "{} events were skipped: the server no longer kept them",
                        e.skipped
                    ));
                }
                match args.output {
                    Output::Json => print(&format!("{}\n", event_json(&e)))?,
                    Output::Human => print(&event_text(&e))?,
                }
            }
            Ok(None) => return Ok(exit::OK),
            Err(status) => return Err(client.error(&status).context("events")),
        }
    }
}

/// An event as one line of JSON.
pub fn event_json(e: &pb::JobEvent) -> String {
    let mut v = serde_json::json!({
        "seq": e.seq,
        "time": time_text(&e.time),
        "id": e.id,
        "owner": e.owner,
    });
    let extra = match &e.event {
        Some(Event::Started(s)) => serde_json::json!({"event": "started", "argv": s.argv}),
        Some(Event::Exec(x)) => {
            serde_json::json!({"event": "exec", "caller": x.caller, "argv": x.argv})
        }
        Some(Event::StopRequested(s)) => serde_json::json!({"event": "stop_requested", "by": s.by}),
        Some(Event::Ended(s)) => {
            let status: serde_json::Value =
                serde_json::from_str(&render::job_json(s)).unwrap_or_default();
            serde_json::json!({"event": "ended", "status": status})
        }
        None => serde_json::json!({"event": "unknown"}),
    };
    if let (Some(v), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
        v.extend(extra);
    }
    v.to_string()
}

/// An event as one human line.
pub fn event_text(e: &pb::JobEvent) -> String {
    let what = match &e.event {
        Some(Event::Started(s)) => format!("started: {}", render::command_line(&s.argv)),
        Some(Event::Exec(x)) => format!(
            "exec by {}: {}",
            render::identity(&x.caller),
            render::command_line(&x.argv)
        ),
        Some(Event::StopRequested(s)) => format!("stop requested by {}", render::identity(&s.by)),
        Some(Event::Ended(s)) => format!("ended: {}", render::outcome(s)),
        None => "unknown event".into(),
    };
    format!(
        "{} {} {} {}\n",
        time_text(&e.time),
        crate::error::one_line(&e.id),
        render::identity(&e.owner),
        what
    )
}

pub async fn stats(client: &Client, args: &StatsArgs) -> Result<u8, CliError> {
    let shown = crate::error::one_line(&args.id);
    let mut stream = client
        .api
        .clone()
        .stream_job_usage(pb::StreamJobUsageRequest {
            id: args.id.clone(),
            follow: args.follow,
            interval_ms: args.interval.as_millis() as u32,
        })
        .await
        .map_err(|s| client.error(&s))?
        .into_inner();
    let mut header = args.output == Output::Human;
    loop {
        match stream.message().await {
            Ok(Some(pb::JobUsageResponse {
                event: Some(job_usage_response::Event::Usage(u)),
            })) => match args.output {
                Output::Json => print(&format!("{}\n", usage_json(&u)))?,
                Output::Human => {
                    if std::mem::take(&mut header) {
                        print(&format!(
                            "{:<24} {:>12} {:>6} {:>7}\n",
                            "TIME", "MEMORY", "PIDS", "CPU"
                        ))?;
                    }
                    print(&format!(
                        "{:<24} {:>12} {:>6} {:>7}\n",
                        time_text(&u.sampled_at),
                        u.memory_bytes.map_or_else(|| "-".into(), render::bytes),
                        u.pids.map_or_else(|| "-".into(), |p| p.to_string()),
                        cores(u.cpu_millis),
                    ))?;
                }
            },
            Ok(Some(pb::JobUsageResponse {
                event: Some(job_usage_response::Event::Ended(s)),
            })) => {
                match args.output {
                    Output::Json => print(&format!(
                        "{}\n",
                        serde_json::json!({"ended": serde_json::from_str::<serde_json::Value>(&render::job_json(&s)).unwrap_or_default()})
                    ))?,
                    Output::Human => {
                        print(&format!("job {shown} ended: {}\n", render::outcome(&s)))?
                    }
                }
                return Ok(exit::OK);
            }
            Ok(Some(_)) => {}
            Ok(None) => return Ok(exit::OK),
            Err(status) => return Err(client.error(&status).context(format!("job {shown}"))),
        }
    }
}

/// A CPU rate in cores, `0.52`.
fn cores(millis: Option<u64>) -> String {
    millis.map_or_else(|| "-".into(), |m| format!("{:.2}", m as f64 / 1000.0))
}

/// A usage sample as JSON.
pub fn usage_value(u: &pb::JobUsage) -> serde_json::Value {
    serde_json::json!({
        "time": time_text(&u.sampled_at),
        "memory_bytes": u.memory_bytes,
        "pids": u.pids,
        "cpu_usec": u.cpu_usec,
        "cpu_cores": u.cpu_millis.map(|m| m as f64 / 1000.0),
        "window_ms": u.window_ms,
    })
}

fn usage_json(u: &pb::JobUsage) -> String {
    usage_value(u).to_string()
}

/// Live usage of a running job for `status`: one sample over a short window; `None` when
/// it has ended meanwhile or the server cannot tell.
pub async fn live_usage(client: &Client, id: &str) -> Option<pb::JobUsage> {
    let mut stream = client
        .api
        .clone()
        .stream_job_usage(pb::StreamJobUsageRequest {
            id: id.to_owned(),
            follow: false,
            interval_ms: 250,
        })
        .await
        .ok()?
        .into_inner();
    match stream.message().await {
        Ok(Some(pb::JobUsageResponse {
            event: Some(job_usage_response::Event::Usage(u)),
        })) => Some(u),
        _ => None,
    }
}

/// The usage lines `status` adds for a running job.
pub fn usage_text(u: &pb::JobUsage) -> String {
    let mut out = String::new();
    if let Some(m) = u.memory_bytes {
        out.push_str(&format!("{:<12} {}\n", "memory now:", render::bytes(m)));
    }
    if let Some(p) = u.pids {
        out.push_str(&format!("{:<12} {}\n", "pids now:", p));
    }
    if u.cpu_millis.is_some() {
        out.push_str(&format!(
            "{:<12} {} cores\n",
            "cpu now:",
            cores(u.cpu_millis)
        ));
    }
    out
}
