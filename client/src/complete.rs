//! Shell completion, including the ids and names of your jobs, asked of the server as
//! you press Tab.
//!
//! `jobctl completions SHELL` prints a script that registers jobctl with the shell; at
//! each Tab the shell runs `JOBCTL_COMPLETE=SHELL jobctl -- <the words so far>`, which
//! [`complete_if_asked`] answers before anything else runs. Subcommands and flags come
//! from the command line's definition; a job's ID comes from the server (`ListJobs`, with
//! the settings of the environment and configuration file), in under
//! [`ASK_TIMEOUT`]: an unreachable server, a missing key, anything that fails, gives no
//! candidates and no message, so Tab never prints errors into the command line.

use std::ffi::{OsStr, OsString};
use std::time::Duration;

use clap::CommandFactory;
use clap_complete::engine::{ArgValueCompleter, CompletionCandidate, ValueCompleter};
use clap_complete::env::{CompleteEnv, Shells};
use jobworker_proto::v1 as pb;

use crate::cli::Cli;

/// The environment variable the registration scripts set.
pub const VAR: &str = "JOBCTL_COMPLETE";
/// How long a Tab may wait for the server.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Most jobs offered.
const MAX_CANDIDATES: usize = 500;

/// Answers a shell's completion request (when [`VAR`] is set) and returns `true`;
/// otherwise does nothing and returns `false`.
pub fn complete_if_asked(args: &[OsString]) -> bool {
    let cwd = std::env::current_dir().ok();
    CompleteEnv::with_factory(Cli::command)
        .var(VAR)
        .try_complete(args.iter().cloned(), cwd.as_deref())
        .unwrap_or(true)
}

/// The registration script for `shell` (`bash`, `zsh`, `fish`, `elvish`,
/// `powershell`).
pub fn registration(shell: &str) -> Option<Vec<u8>> {
    let shells = Shells::builtins();
    let completer = shells.completer(shell)?;
    let mut buf = Vec::new();
    completer
        .write_registration(VAR, "jobctl", "jobctl", "jobctl", &mut buf)
        .ok()?;
    Some(buf)
}

/// The completer of every argument that names a job.
pub fn jobs() -> ArgValueCompleter {
    ArgValueCompleter::new(Jobs)
}

struct Jobs;

impl ValueCompleter for Jobs {
    fn complete(&self, current: &OsStr) -> Vec<CompletionCandidate> {
        let current = current.to_string_lossy();
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return Vec::new();
        };
        let jobs = runtime
            .block_on(async { tokio::time::timeout(ASK_TIMEOUT, your_jobs()).await })
            .ok()
            .flatten()
            .unwrap_or_default();
        runtime.shutdown_background();
        candidates(&jobs, &current)
    }
}

/// Your jobs, newest last, from the server the environment and configuration name.
async fn your_jobs() -> Option<Vec<pb::JobStatus>> {
    let settings = crate::settings::load(&crate::settings::Flags::default()).ok()?;
    let client = crate::connect::connect(&settings).await.ok()?;
    let page = client
        .api
        .clone()
        .list_jobs(pb::ListJobsRequest {
            page_size: 500,
            ..Default::default()
        })
        .await
        .ok()?;
    Some(page.into_inner().jobs)
}

/// The ids and names of `jobs` that start with `current`, each with a hint.
pub fn candidates(jobs: &[pb::JobStatus], current: &str) -> Vec<CompletionCandidate> {
    let mut out = Vec::new();
    for s in jobs.iter().rev() {
        let hint = format!(
            "{} {}",
            crate::render::outcome(s),
            crate::render::command_line(&s.argv)
        );
        let hint = crate::error::one_line(&hint);
        if let Some(name) = &s.name
            && name.starts_with(current)
        {
            out.push(CompletionCandidate::new(name).help(Some(hint.clone().into())));
        }
        if s.id.starts_with(current) {
            out.push(CompletionCandidate::new(&s.id).help(Some(hint.into())));
        }
        if out.len() >= MAX_CANDIDATES {
            break;
        }
    }
    out
}
