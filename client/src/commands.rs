//! What each subcommand does, once the command line is parsed.

use std::io::Write;

use jobworker_proto::v1::{self as pb, JobState, stream_job_output_response::Event};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinHandle;

use crate::cli::{Command, IdArgs, JobArgs, ListArgs, LogsArgs, Output, QuotaArgs};
use crate::connect::{self, Client};
use crate::error::{Class, CliError, exit};
use crate::render;
use crate::settings::{self, Settings};

/// Runs a parsed command that talks to the server; returns the exit code.
pub async fn execute(command: Command, settings: Settings) -> Result<u8, CliError> {
    let client = connect::connect(&settings).await?;
    match command {
        Command::Start(job) => start(&client, &job).await,
        Command::Run(job) => run(&client, &job).await,
        Command::Logs(args) => logs(&client, &args).await,
        Command::Status(args) => status(&client, &args).await,
        Command::List(args) => list(&client, &args).await,
        Command::Stop(args) => stop(&client, &args).await,
        Command::Quota(args) => quota(&client, &args).await,
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

/// The StartJob request for a job's arguments.
pub fn start_request(job: &JobArgs) -> pb::StartJobRequest {
    let l = &job.limits;
    pb::StartJobRequest {
        argv: job.command.clone(),
        env: job
            .env
            .iter()
            .map(|(name, value)| pb::EnvVar {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
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
        note(&format!(
            "job {id} was killed by the kernel's OOM killer{limit}"
        ));
    }
    if s.output_truncated {
        note(&format!(
            "the output of job {id} was truncated at the server's cap ({})",
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
            Class::FailedToStart,
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

fn exit_byte(code: i32) -> u8 {
    (code & 0xff) as u8
}

/// Completes when SIGINT, SIGTERM or SIGHUP arrives.
async fn any_signal(signals: &mut [Signal; 3]) {
    let [int, term, hup] = signals;
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
}

type StopTask = JoinHandle<Result<tonic::Response<pb::StopJobResponse>, tonic::Status>>;

/// Waits for the stop request, or forever when none was sent.
async fn stop_done(client: &Client, task: &mut Option<StopTask>) -> Result<(), CliError> {
    match task {
        Some(handle) => match handle.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(client.error(&status)),
            Err(e) => Err(CliError::other(format!("stop request: {e}"))),
        },
        None => std::future::pending().await,
    }
}

fn spawn_stop(client: &Client, id: &str) -> StopTask {
    let mut api = client.api.clone();
    let request = pb::StopJobRequest { id: id.to_string() };
    tokio::spawn(async move { api.stop_job(request).await })
}

async fn run(client: &Client, job: &JobArgs) -> Result<u8, CliError> {
    // Taken over before the job exists, so an early Ctrl-C still stops it.
    let handle = |kind: SignalKind| {
        signal(kind).map_err(|e| CliError::other(format!("cannot handle signals: {e}")))
    };
    let mut signals = [
        handle(SignalKind::interrupt())?,
        handle(SignalKind::terminate())?,
        handle(SignalKind::hangup())?,
    ];

    let id = start_job(client, job).await?;
    let shown = crate::error::one_line(&id);
    let mut stream = client
        .api
        .clone()
        .stream_job_output(pb::StreamJobOutputRequest {
            id: id.clone(),
            offset: 0,
            follow: true,
        })
        .await
        .map_err(|s| {
            client
                .error(&s)
                .context(format!("job {shown} started, but its output"))
        })?
        .into_inner();

    let mut stdout = tokio::io::stdout();
    let mut stopping: Option<StopTask> = None;
    let mut stop_sent = false;
    let final_status = loop {
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(pb::StreamJobOutputResponse { event: Some(Event::Data(bytes)) })) => {
                    let written = async {
                        stdout.write_all(&bytes).await?;
                        stdout.flush().await
                    };
                    if let Err(e) = written.await {
                        let error = CliError::stdout(&e);
                        // Nobody reads the output any more: the job goes too.
                        if !stop_sent {
                            let _ = spawn_stop(client, &id).await;
                        }
                        return Err(error);
                    }
                }
                Ok(Some(pb::StreamJobOutputResponse { event: Some(Event::Status(s)) })) => break s,
                Ok(Some(pb::StreamJobOutputResponse { event: None })) => {}
                Ok(None) => {
                    return Err(CliError::other(format!(
                        "the server ended the output of job {shown} without its final status; \
                         see `jobctl status {shown}`"
                    )));
                }
                Err(status) => return Err(client.error(&status).context(format!("job {shown}"))),
            },
            () = any_signal(&mut signals) => {
                if stop_sent {
                    note(&format!("not waiting for job {shown} to stop"));
                    return Ok(exit::INTERRUPTED);
                }
                note(&format!(
                    "stopping job {shown}; interrupt again to exit without waiting"
                ));
                stopping = Some(spawn_stop(client, &id));
                stop_sent = true;
            }
            result = stop_done(client, &mut stopping) => {
                stopping = None;
                // Stopped: the stream brings the rest of the output and the final status.
                result.map_err(|e| e.context(format!("cannot stop job {shown}")))?;
            }
        }
    };
    run_exit_code(&final_status)
}

async fn logs(client: &Client, args: &LogsArgs) -> Result<u8, CliError> {
    let shown = crate::error::one_line(&args.id);
    let mut stream = client
        .api
        .clone()
        .stream_job_output(pb::StreamJobOutputRequest {
            id: args.id.clone(),
            offset: 0,
            follow: args.follow,
        })
        .await
        .map_err(|s| client.error(&s))?
        .into_inner();
    let mut stdout = tokio::io::stdout();
    loop {
        match stream.message().await {
            Ok(Some(pb::StreamJobOutputResponse {
                event: Some(Event::Data(bytes)),
            })) => {
                stdout
                    .write_all(&bytes)
                    .await
                    .map_err(|e| CliError::stdout(&e))?;
                stdout.flush().await.map_err(|e| CliError::stdout(&e))?;
            }
            Ok(Some(pb::StreamJobOutputResponse {
                event: Some(Event::Status(s)),
            })) => {
                if s.output_truncated {
                    note(&format!(
                        "the output of job {shown} was truncated at the server's cap ({})",
                        render::bytes(s.output_bytes)
                    ));
                }
                return Ok(exit::OK);
            }
            Ok(Some(pb::StreamJobOutputResponse { event: None })) => {}
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
    match args.output {
        Output::Human => print(&render::job_text(&s))?,
        Output::Json => print(&render::job_json(&s))?,
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
                all: args.all,
                page_size: 0,
                page_token: page_token.clone(),
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
