//! Attached commands: `run` and `exec` stay on one call for the whole life of the
//! command, sending input (jobctl's stdin with `-i`, the terminal's size with `-t`) and
//! writing the output as it comes, each stream to jobctl's descriptor of the same
//! number.
//!
//! With `-it` jobctl's terminal goes to raw mode while attached, so every key (Ctrl-C,
//! Ctrl-Z, Ctrl-D) is a byte typed at the job's terminal; [`RawMode`] restores it when
//! dropped, on every way out of the command.

use std::io::IsTerminal;
use std::os::fd::{AsFd, OwnedFd};

use bytes::Bytes;
use jobworker_proto::v1::{self as pb, JobState};
use rustix::termios::{self, OptionalActions, Termios};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use crate::cli::{AttachArgs, ExecArgs, RunArgs};
use crate::commands::{Sink, note, run_exit_code, start_request};
use crate::connect::Client;
use crate::error::{Class, CliError, exit};
use crate::settings::Settings;

/// Largest input message: the server's limit.
const INPUT_CHUNK: usize = 64 * 1024;
/// A terminal's size when jobctl has none to copy.
const DEFAULT_SIZE: pb::TerminalSize = pb::TerminalSize { rows: 24, cols: 80 };

/// jobctl's terminal in raw mode, restored when dropped.
pub struct RawMode {
    tty: OwnedFd,
    saved: Termios,
}

impl RawMode {
    /// Switches stdin's terminal to raw mode.
    pub fn enter() -> Result<Self, CliError> {
        let failed =
            |e: rustix::io::Errno| CliError::other(format!("cannot set up the terminal: {e}"));
        let tty = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| CliError::other(format!("cannot set up the terminal: {e}")))?;
        let saved = termios::tcgetattr(&tty).map_err(failed)?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(&tty, OptionalActions::Now, &raw).map_err(failed)?;
        Ok(RawMode { tty, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // Whatever was written has been flushed to the terminal by now (every write is).
        let _ = termios::tcsetattr(&self.tty, OptionalActions::Now, &self.saved);
    }
}

/// The size of jobctl's terminal (stdin's, else stdout's), if it has one.
fn window_size() -> Option<pb::TerminalSize> {
    let of = |fd: std::os::fd::BorrowedFd<'_>| {
        let w = termios::tcgetwinsize(fd).ok()?;
        (w.ws_row > 0 && w.ws_col > 0).then_some(pb::TerminalSize {
            rows: u32::from(w.ws_row),
            cols: u32::from(w.ws_col),
        })
    };
    of(std::io::stdin().as_fd()).or_else(|| of(std::io::stdout().as_fd()))
}

/// Checks `-i` and `-t` against jobctl's stdin, as docker does: a terminal to type at
/// needs one.
fn check_attach(a: &AttachArgs) -> Result<(), CliError> {
    if a.interactive && a.tty && !std::io::stdin().is_terminal() {
        return Err(CliError::usage(
            "the input device is not a terminal: use -i without -t, or run from a terminal",
        ));
    }
    Ok(())
}

/// What jobctl sends after the first message of an attached call.
pub enum Up {
    Input(Bytes),
    End,
    Resize(pb::TerminalSize),
}

/// The tasks that feed an attached call: jobctl's stdin with `-i`, the terminal's size
/// with `-t`. Aborted when dropped.
struct Feeders(Vec<JoinHandle<()>>);

impl Drop for Feeders {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn feeders<T: Send + 'static>(
    a: &AttachArgs,
    tx: mpsc::Sender<T>,
    wrap: fn(Up) -> T,
) -> Result<Feeders, CliError> {
    let mut tasks = Vec::new();
    if a.tty {
        let mut winch = signal(SignalKind::window_change())
            .map_err(|e| CliError::other(format!("cannot watch the terminal's size: {e}")))?;
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while winch.recv().await.is_some() {
                if let Some(size) = window_size()
                    && tx.send(wrap(Up::Resize(size))).await.is_err()
                {
                    return;
                }
            }
        }));
    }
    if a.interactive {
        let tty = a.tty;
        tasks.push(tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; INPUT_CHUNK];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let data = Bytes::copy_from_slice(&buf[..n]);
                        // Waits while the job is not reading: nothing piles up here.
                        if tx.send(wrap(Up::Input(data))).await.is_err() {
                            return;
                        }
                    }
                }
            }
            // A terminal's end of input is a key typed at it, not the end of jobctl's.
            if !tty {
                let _ = tx.send(wrap(Up::End)).await;
            }
        }));
    }
    Ok(Feeders(tasks))
}

/// Completes when SIGINT, SIGTERM or SIGHUP arrives.
pub async fn any_signal(signals: &mut [Signal; 3]) {
    let [int, term, hup] = signals;
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
}

/// SIGINT, SIGTERM and SIGHUP, taken over from their default (exiting).
pub fn take_signals() -> Result<[Signal; 3], CliError> {
    let handle = |kind: SignalKind| {
        signal(kind).map_err(|e| CliError::other(format!("cannot handle signals: {e}")))
    };
    Ok([
        handle(SignalKind::interrupt())?,
        handle(SignalKind::terminate())?,
        handle(SignalKind::hangup())?,
    ])
}

fn run_message(up: Up) -> pb::RunJobRequest {
    use pb::run_job_request::Event;
    pb::RunJobRequest {
        event: Some(match up {
            Up::Input(b) => Event::Input(b),
            Up::End => Event::InputEnd(true),
            Up::Resize(s) => Event::Resize(s),
        }),
    }
}

fn exec_message(up: Up) -> pb::ExecJobRequest {
    use pb::exec_job_request::Event;
    pb::ExecJobRequest {
        event: Some(match up {
            Up::Input(b) => Event::Input(b),
            Up::End => Event::InputEnd(true),
            Up::Resize(s) => Event::Resize(s),
        }),
    }
}

/// Messages queued for the server at most: the stdin reader waits beyond that.
const UP_QUEUE: usize = 2;

/// `jobctl run`: starts the job attached; its exit status is jobctl's.
pub async fn run(client: &Client, settings: &Settings, args: &RunArgs) -> Result<u8, CliError> {
    check_attach(&args.attach)?;
    // Input the job does not read holds back the call that carries it, and with it its
    // HTTP/2 connection's flow-control window: a stop must not wait behind it, so with
    // -i the job runs on a connection of its own.
    let session = match args.attach.interactive {
        true => crate::connect::connect(settings).await?,
        false => client.clone(),
    };
    // Taken over before the job exists, so an early Ctrl-C still stops it.
    let mut signals = take_signals()?;
    let mut start = start_request(&args.job);
    start.stdin = args.attach.interactive;
    start.tty = args
        .attach
        .tty
        .then(|| window_size().unwrap_or(DEFAULT_SIZE));
    let (tx, rx) = mpsc::channel(UP_QUEUE);
    let first = pb::RunJobRequest {
        event: Some(pb::run_job_request::Event::Start(start)),
    };
    tx.try_send(first).expect("an empty channel has room");
    let mut stream = session
        .api
        .clone()
        .run_job(ReceiverStream::new(rx))
        .await
        .map_err(|s| client.error(&s))?
        .into_inner();
    let id = match stream.message().await {
        Ok(Some(pb::RunJobResponse {
            event: Some(pb::run_job_response::Event::Started(id)),
            ..
        })) => id,
        Ok(_) => return Err(CliError::other("the server did not say the job started")),
        Err(s) => return Err(client.error(&s)),
    };
    let shown = crate::error::one_line(&id);
    let lost = |e: CliError| {
        if e.class == Class::Unavailable {
            e.context(format!(
                "job {shown} runs on without jobctl (see `jobctl status {shown}`, `jobctl logs -f {shown}`)"
            ))
        } else {
            e.context(format!("job {shown}"))
        }
    };
    let raw = match args.attach.interactive && args.attach.tty {
        true => Some(RawMode::enter()?),
        false => None,
    };
    let feeding = feeders(&args.attach, tx, run_message)?;
    let mut out = Sink::new();
    let mut stopping = crate::commands::Stopping::default();
    let final_status = loop {
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(pb::RunJobResponse { event: Some(event), stream })) => {
                    use pb::run_job_response::Event;
                    match event {
                        Event::Data(bytes) => {
                            if let Err(error) = out.write(stream, bytes).await {
                                // Nobody reads the output any more: the job goes too.
                                stopping.stop_now(client, &id).await;
                                return Err(error);
                            }
                        }
                        Event::Status(s) => break s,
                        Event::Started(_) => {}
                    }
                }
                Ok(Some(pb::RunJobResponse { event: None, .. })) => {}
                Ok(None) => {
                    return Err(lost(CliError::new(Class::Unavailable, "the server ended the call without the job's final status")));
                }
                Err(status) => return Err(lost(client.error(&status))),
            },
            () = any_signal(&mut signals) => {
                if stopping.interrupted(client, &id) {
                    drop(raw);
                    note(&format!("not waiting for job {shown} to stop"));
                    return Ok(exit::INTERRUPTED);
                }
            }
            result = stopping.done(client) => {
                // Stopped: the call brings the rest of the output and the final status.
                result.map_err(|e| e.context(format!("cannot stop job {shown}")))?;
            }
        }
    };
    drop(feeding);
    drop(raw);
    run_exit_code(&final_status)
}

/// `jobctl exec`: runs the process attached; its exit status is jobctl's.
pub async fn exec(client: &Client, args: &ExecArgs) -> Result<u8, CliError> {
    check_attach(&args.attach)?;
    let mut signals = take_signals()?;
    let start = pb::ExecStart {
        id: args.id.clone(),
        argv: args.command.clone(),
        env: crate::commands::env_to_pb(&args.env),
        workdir: args.workdir.clone(),
        stdin: args.attach.interactive,
        tty: args
            .attach
            .tty
            .then(|| window_size().unwrap_or(DEFAULT_SIZE)),
    };
    let (tx, rx) = mpsc::channel(UP_QUEUE);
    let first = pb::ExecJobRequest {
        event: Some(pb::exec_job_request::Event::Start(start)),
    };
    tx.try_send(first).expect("an empty channel has room");
    let shown = crate::error::one_line(&args.id);
    let mut stream = client
        .api
        .clone()
        .exec_job(ReceiverStream::new(rx))
        .await
        .map_err(|s| client.error(&s).context(format!("exec in job {shown}")))?
        .into_inner();
    let raw = match args.attach.interactive && args.attach.tty {
        true => Some(RawMode::enter()?),
        false => None,
    };
    let feeding = feeders(&args.attach, tx, exec_message)?;
    let mut out = Sink::new();
    let ended = loop {
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(pb::ExecJobResponse { event: Some(event), stream })) => {
                    use pb::exec_job_response::Event;
                    match event {
                        Event::Data(bytes) => out.write(stream, bytes).await?,
                        Event::Ended(end) => break end,
                        Event::Started(_) => {}
                    }
                }
                Ok(Some(pb::ExecJobResponse { event: None, .. })) => {}
                Ok(None) => {
                    return Err(CliError::new(Class::Unavailable, format!(
                        "exec in job {shown}: the server ended the call without how the process ended"
                    )));
                }
                Err(status) => return Err(client.error(&status).context(format!("exec in job {shown}"))),
            },
            () = any_signal(&mut signals) => {
                drop(raw);
                note(&format!("left the process in job {shown}: it loses its input and output"));
                return Ok(exit::INTERRUPTED);
            }
        }
    };
    drop(feeding);
    drop(raw);
    exec_exit_code(&shown, &ended)
}

/// How `exec` ends for how its process ended.
pub fn exec_exit_code(job: &str, e: &pb::ExecEnded) -> Result<u8, CliError> {
    match pb::StartFailure::try_from(e.start_failure) {
        Ok(pb::StartFailure::Unspecified) | Err(_) => {}
        Ok(pb::StartFailure::NotFound) => {
            return Err(CliError::new(
                Class::CommandNotFound,
                format!("exec in job {job}: {}", e.error),
            ));
        }
        Ok(pb::StartFailure::NotExecutable | pb::StartFailure::Other) => {
            return Err(CliError::new(
                Class::NotExecutable,
                format!("exec in job {job}: {}", e.error),
            ));
        }
    }
    Ok(match (e.exit_code, e.signal) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(n)) => 128u8.saturating_add(u8::try_from(n.clamp(0, 127)).unwrap_or(127)),
        (None, None) => exit::ATTACHED_ERROR,
    })
}

/// `jobctl wait`: the job's final status, as `run` exits with it.
pub async fn wait(client: &Client, id: &str) -> Result<u8, CliError> {
    let response = client
        .api
        .clone()
        .wait_job(pb::WaitJobRequest { id: id.to_string() })
        .await
        .map_err(|s| client.error(&s))?
        .into_inner();
    let s = response
        .status
        .ok_or_else(|| CliError::other("the server's answer has no status"))?;
    if JobState::try_from(s.state) == Ok(JobState::Running) {
        return Err(CliError::other(
            "the server answered the wait before the job ended",
        ));
    }
    run_exit_code(&s)
}
