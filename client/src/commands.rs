//! What each subcommand does, once the command line is parsed.

use std::io::Write;
use std::sync::Arc;

use jobworker_proto::v1::{self as pb, JobState, stream_job_output_response::Event};
use tokio::task::JoinHandle;

use crate::attach;
use crate::cli::{
    Command, IdArgs, JobArgs, ListArgs, LogStream, LogsArgs, Output, QuotaArgs, RmArgs,
};
use crate::connect::{self, Client};
use crate::error::{Class, CliError, exit};
use crate::render;
use crate::settings::{self, Settings};

/// Runs a parsed command that talks to the server; returns the exit code.
pub async fn execute(command: Command, settings: Settings) -> Result<u8, CliError> {
    let client = connect::connect(&settings).await?;
    match command {
        Command::Start(job) => start(&client, &job).await,
        Command::Run(args) => attach::run(&client, &settings, &args).await,
        Command::Exec(args) => attach::exec(&client, &args).await,
        Command::Wait(args) => attach::wait(&client, &args.id).await,
        Command::Logs(args) => logs(&client, &args).await,
        Command::Status(args) => status(&client, &args).await,
        Command::List(args) => list(&client, &args).await,
        Command::Stop(args) => stop(&client, &args).await,
        Command::Quota(args) => quota(&client, &args).await,
        Command::Rm(args) => rm(&client, &args).await,
        Command::Audit(args) => crate::observe::audit(&client, &args).await,
        Command::Events(args) => crate::observe::events(&client, &args).await,
        Command::Stats(args) => crate::observe::stats(&client, &args).await,
        // Handled before connecting; see `crate::main_with_args`.
        Command::Completions { .. } => Ok(exit::OK),
        // Handled without a server; see `crate::context`.
        Command::Context(_) => Ok(exit::OK),
    }
}

/// Resolves the connection settings of a command line.
pub fn settings(flags: &settings::Flags) -> Result<Settings, CliError> {
    settings::load(flags)
}

/// Environment variables as the API has them.
pub fn env_to_pb(env: &[(String, String)]) -> Vec<pb::EnvVar> {
    env.iter()
        .map(|(name, value)| pb::EnvVar {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

fn labels_to_pb(labels: &[(String, String)]) -> Vec<pb::Label> {
    labels
        .iter()
        .map(|(key, value)| pb::Label {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

fn state_to_pb(s: crate::cli::StateArg) -> JobState {
    use crate::cli::StateArg as S;
    match s {
        S::Running => JobState::Running,
        S::Exited => JobState::Exited,
        S::Signaled => JobState::Signaled,
        S::Stopped => JobState::Stopped,
        S::FailedToStart => JobState::FailedToStart,
        S::Lost => JobState::Lost,
        S::TimedOut => JobState::TimedOut,
    }
}

/// The StartJob request for a job's arguments.
pub fn start_request(job: &JobArgs) -> pb::StartJobRequest {
    let l = &job.limits;
    pb::StartJobRequest {
        argv: job.command.clone(),
        env: env_to_pb(&job.env),
        workdir: job.workdir.clone(),
        stdin: false,
        tty: None,
        name: job.name.clone(),
        labels: labels_to_pb(&job.labels),
        limits: Some(pb::Limits {
            cpu_millis: l.cpu,
            memory_bytes: l.memory,
            pids: l.pids,
            io: l.io_device.as_ref().map(|device| pb::IoLimits {
                device: device.clone(),
                read_bps: l.io_read_bps,
                write_bps: l.io_write_bps,
                read_iops: l.io_read_iops,
                write_iops: l.io_write_iops,
            }),
            tmp_bytes: l.tmp_size,
            timeout_ms: l
                .timeout
                .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64),
        }),
    }
}

/// Writes text to stdout; a closed stdout is a quiet broken pipe.
pub fn print(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| CliError::stdout(&e))
}

/// Writes one `jobctl: ...` line to stderr (a closed stderr is ignored).
pub fn note(text: &str) {
    let line = format!("jobctl: {}\n", crate::error::one_line(text));
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

async fn start_job(client: &Client, job: &JobArgs) -> Result<String, CliError> {
    let response = client
        .api
        .clone()
        .start_job(start_request(job))
        .await
        .map_err(|s| client.error(&s))?;
    Ok(response.into_inner().id)
}

async fn start(client: &Client, job: &JobArgs) -> Result<u8, CliError> {
    let id = start_job(client, job).await?;
    print(&format!("{id}\n"))?;
    Ok(exit::OK)
}

/// How `run` ends for a job's final status: the exit code, or jobctl's error when the
/// job did not run to an end of its own. Notes (OOM kill, truncated output) go to
/// stderr.
pub fn run_exit_code(s: &pb::JobStatus) -> Result<u8, CliError> {
    let id = crate::error::one_line(&s.id);
    if s.oom_killed {
        let limit = s
            .limits
            .as_ref()
            .and_then(|l| l.memory_bytes)
            .map(|m| format!(" (memory limit {})", render::bytes(m)))
            .unwrap_or_default();
        // Say exactly what happened: the OOM killer may have killed the command itself,
        // or only another process of the job, after which the command went on.
        let command_killed = s.signal == Some(libc_sigkill()) && s.exit_code.is_none();
        if command_killed {
            note(&format!(
                "job {id} was killed by the kernel's OOM killer{limit}"
            ));
        } else {
            let then = match (s.exit_code, s.signal) {
                (Some(code), _) => format!("its command exited with {code}"),
                (None, Some(n)) => format!("its command was killed by signal {n}"),
                (None, None) => "its command ended".to_string(),
            };
            note(&format!(
                "the kernel's OOM killer killed a process of job {id}{limit}; {then}"
            ));
        }
    }
    if s.output_truncated {
        note(&format!(
            "the output of job {id} was cut after {} (the server's cap)",
            render::bytes(s.output_bytes)
        ));
    }
    let by_signal = |n: i32| 128u8.saturating_add(u8::try_from(n.clamp(0, 127)).unwrap_or(127));
    match JobState::try_from(s.state) {
        Ok(JobState::Exited) => Ok(exit_byte(s.exit_code.unwrap_or(255))),
        Ok(JobState::Signaled) => Ok(s.signal.map(by_signal).unwrap_or(255)),
        Ok(JobState::Stopped) => Ok(match (s.exit_code, s.signal) {
            (Some(code), _) => exit_byte(code),
            (None, Some(n)) => by_signal(n),
            (None, None) => 255,
        }),
        Ok(JobState::FailedToStart) => Err(CliError::new(
            match pb::StartFailure::try_from(s.start_failure) {
                Ok(pb::StartFailure::NotFound) => Class::CommandNotFound,
                Ok(pb::StartFailure::NotExecutable | pb::StartFailure::Other) => {
                    Class::NotExecutable
                }
                _ => Class::FailedToStart,
            },
            format!("job {id} failed to start: {}", s.error),
        )),
        Ok(JobState::Lost) => Err(CliError::other(format!("job {id} was lost: {}", s.error))),
        Ok(JobState::TimedOut) => {
            note(&format!("job {id} {}", render::outcome(s)));
            Ok(match (s.exit_code, s.signal) {
                (Some(code), _) => exit_byte(code),
                (None, Some(n)) => by_signal(n),
                (None, None) => 255,
            })
        }
        Ok(JobState::Running) | Ok(JobState::Unspecified) | Err(_) => Err(CliError::other(
            format!("the output stream of job {id} ended before the job did"),
        )),
    }
}

/// SIGKILL's number (9 on every Linux architecture).
fn libc_sigkill() -> i32 {
    9
}

fn exit_byte(code: i32) -> u8 {
    (code & 0xff) as u8
}

type StopTask = JoinHandle<Result<tonic::Response<pb::StopJobResponse>, tonic::Status>>;

/// `run`'s answer to SIGINT, SIGTERM and SIGHUP: the first stops the job (as `jobctl
/// stop` does) and keeps following it to its end; the next one leaves at once.
#[derive(Default)]
pub struct Stopping {
    task: Option<StopTask>,
    sent: bool,
}

impl Stopping {
    /// A signal arrived: sends the stop, or says (`true`) that jobctl should leave now.
    pub fn interrupted(&mut self, client: &Client, id: &str) -> bool {
        if self.sent {
            return true;
        }
        note(&format!(
            "stopping job {}; interrupt again to exit without waiting",
            crate::error::one_line(id)
        ));
        self.task = Some(spawn_stop(client, id));
        self.sent = true;
        false
    }

    /// Stops the job and waits for the answer, unless a stop was already sent.
    pub async fn stop_now(&mut self, client: &Client, id: &str) {
        if !self.sent {
            self.sent = true;
            let _ = spawn_stop(client, id).await;
        }
    }

    /// Completes when the stop request was answered (never, when none is pending).
    pub async fn done(&mut self, client: &Client) -> Result<(), CliError> {
        let result = match &mut self.task {
            Some(handle) => match handle.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(status)) => Err(client.error(&status)),
                Err(e) => Err(CliError::other(format!("stop request: {e}"))),
            },
            None => std::future::pending().await,
        };
        self.task = None;
        result
    }
}

fn spawn_stop(client: &Client, id: &str) -> StopTask {
    let mut api = client.api.clone();
    let request = pb::StopJobRequest { id: id.to_string() };
    tokio::spawn(async move { api.stop_job(request).await })
}

/// Where a job's output goes: each stream to jobctl's own descriptor of the same number.
///
/// Each chunk is written whole, unbuffered, on a blocking thread, before the next is
/// taken, so the job's streams interleave as they arrived and a reader that stops
/// reading stops the stream. Written through duplicates of descriptors 1 and 2 rather
/// than `std::io::stdout()`, whose line buffering scans every chunk for a newline and
/// whose flush would be a second hand-off per chunk.
pub struct Sink {
    stdout: Result<Arc<std::fs::File>, std::io::ErrorKind>,
    stderr: Result<Arc<std::fs::File>, std::io::ErrorKind>,
}

impl Sink {
    pub fn new() -> Self {
        use std::os::fd::AsFd;
        let dup = |fd: std::os::fd::BorrowedFd<'_>| {
            fd.try_clone_to_owned()
                .map(|fd| Arc::new(std::fs::File::from(fd)))
                .map_err(|e| e.kind())
        };
        Sink {
            stdout: dup(std::io::stdout().as_fd()),
            stderr: dup(std::io::stderr().as_fd()),
        }
    }

    /// Writes `bytes` of `stream` (a `pb::OutputStream`; anything unknown is stdout).
    pub async fn write(&mut self, stream: i32, bytes: bytes::Bytes) -> Result<(), CliError> {
        let file = if stream == pb::OutputStream::Stderr as i32 {
            &self.stderr
        } else {
            &self.stdout
        };
        let file = file
            .clone()
            .map_err(|kind| CliError::stdout(&std::io::Error::from(kind)))?;
        let written = tokio::task::spawn_blocking(move || (&*file).write_all(&bytes))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        written.map_err(|e| CliError::stdout(&e))
    }
}

impl Default for Sink {
    fn default() -> Self {
        Self::new()
    }
}

async fn logs(client: &Client, args: &LogsArgs) -> Result<u8, CliError> {
    let shown = crate::error::one_line(&args.id);
    let streams = match args.stream {
        None => vec![],
        Some(LogStream::Stdout) => vec![pb::OutputStream::Stdout.into()],
        Some(LogStream::Stderr) => vec![pb::OutputStream::Stderr.into()],
    };
    let mut stream = client
        .api
        .clone()
        .stream_job_output(pb::StreamJobOutputRequest {
            id: args.id.clone(),
            offset: 0,
            follow: args.follow,
            streams,
            tail_lines: args.tail,
        })
        .await
        .map_err(|s| client.error(&s))?
        .into_inner();
    let mut out = Sink::new();
    loop {
        match stream.message().await {
            Ok(Some(pb::StreamJobOutputResponse {
                event: Some(Event::Data(bytes)),
                stream,
            })) => out.write(stream, bytes).await?,
            Ok(Some(pb::StreamJobOutputResponse {
                event: Some(Event::Status(s)),
                ..
            })) => {
                if s.output_truncated {
                    note(&format!(
                        "the output of job {shown} was cut after {} (the server's cap)",
                        render::bytes(s.output_bytes)
                    ));
                }
                return Ok(exit::OK);
            }
            Ok(Some(pb::StreamJobOutputResponse { event: None, .. })) => {}
            Ok(None) => return Ok(exit::OK),
            Err(status) => return Err(client.error(&status).context(format!("job {shown}"))),
        }
    }
}

async fn status(client: &Client, args: &IdArgs) -> Result<u8, CliError> {
    let response = client
        .api
        .clone()
        .get_job_status(pb::GetJobStatusRequest {
            id: args.id.clone(),
        })
        .await
        .map_err(|s| client.error(&s))?
        .into_inner();
    let s = response
        .status
        .ok_or_else(|| CliError::other("the server's answer has no status"))?;
    // A running job's use of its resources now, besides its totals.
    let usage = if s.state == JobState::Running as i32 {
        crate::observe::live_usage(client, &args.id).await
    } else {
        None
    };
    match args.output {
        Output::Human => {
            let mut text = render::job_text(&s);
            if let Some(u) = &usage {
                text.push_str(&crate::observe::usage_text(u));
            }
            print(&text)?
        }
        Output::Json => match &usage {
            None => print(&render::job_json(&s))?,
            Some(u) => {
                let mut v: serde_json::Value =
                    serde_json::from_str(&render::job_json(&s)).unwrap_or_default();
                if let Some(m) = v.as_object_mut() {
                    m.insert("usage".into(), crate::observe::usage_value(u));
                }
                let mut text = serde_json::to_string_pretty(&v).unwrap_or_default();
                text.push('\n');
                print(&text)?
            }
        },
    }
    Ok(exit::OK)
}

/// Most pages `list` reads: a bound on a server that keeps answering with a next page.
const MAX_PAGES: usize = 100_000;

async fn list(client: &Client, args: &ListArgs) -> Result<u8, CliError> {
    let mut jobs = Vec::new();
    let mut page_token = String::new();
    for _ in 0..MAX_PAGES {
        let response = client
            .api
            .clone()
            .list_jobs(pb::ListJobsRequest {
                all: args.all || args.owner.is_some(),
                page_size: 0,
                page_token: page_token.clone(),
                states: args.state.iter().map(|s| state_to_pb(*s) as i32).collect(),
                labels: labels_to_pb(&args.labels),
                name: args.name.clone(),
                owner: args.owner.clone(),
            })
            .await
            .map_err(|s| client.error(&s))?
            .into_inner();
        jobs.extend(response.jobs);
        if response.next_page_token.is_empty() {
            match args.output {
                Output::Human => print(&render::list_text(&jobs))?,
                Output::Json => print(&render::list_json(&jobs))?,
            }
            return Ok(exit::OK);
        }
        if response.next_page_token == page_token {
            return Err(CliError::other(
                "the server answered the same page token twice",
            ));
        }
        page_token = response.next_page_token;
    }
    Err(CliError::other("the server's job list does not end"))
}

async fn stop(client: &Client, args: &IdArgs) -> Result<u8, CliError> {
    let response = client
        .api
        .clone()
        .stop_job(pb::StopJobRequest {
            id: args.id.clone(),
        })
        .await
        .map_err(|s| client.error(&s))?
        .into_inner();
    let s = response
        .status
        .ok_or_else(|| CliError::other("the server's answer has no status"))?;
    match args.output {
        Output::Human => print(&format!(
            "job {}: {}\n",
            crate::error::one_line(&s.id),
            render::outcome(&s)
        ))?,
        Output::Json => print(&render::job_json(&s))?,
    }
    Ok(exit::OK)
}

/// Removes each job; reports each failure and goes on; fails with the first one.
async fn rm(client: &Client, args: &RmArgs) -> Result<u8, CliError> {
    let mut first_error: Option<CliError> = None;
    for id in &args.ids {
        let removed = client
            .api
            .clone()
            .remove_job(pb::RemoveJobRequest {
                id: id.clone(),
                force: args.force,
            })
            .await;
        match removed {
            Ok(r) => {
                let shown = r
                    .into_inner()
                    .status
                    .map(|s| s.id)
                    .unwrap_or_else(|| id.clone());
                print(&format!("{}\n", crate::error::one_line(&shown)))?;
            }
            Err(status) => {
                let e = client
                    .error(&status)
                    .context(format!("rm {}", crate::error::one_line(id)));
                note(&e.to_string());
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        // Already printed: exit with its code without printing it again.
        Some(e) => Ok(e.exit_code()),
        None => Ok(exit::OK),
    }
}

async fn quota(client: &Client, args: &QuotaArgs) -> Result<u8, CliError> {
    let response = client
        .api
        .clone()
        .get_quota(pb::GetQuotaRequest { all: args.all })
        .await
        .map_err(|s| client.error(&s))?;
    let quotas = response.into_inner().quotas;
    print(&match args.output {
        Output::Human => render::quota_text(&quotas),
        Output::Json => render::quota_json(&quotas),
    })?;
    Ok(exit::OK)
}
