//! `jobctl`, the command-line client of jobworker.
//!
//! The binary (`main.rs`) only calls [`main_with_args`]; everything else lives here so
//! that it can be tested. Modules, in the order a command meets them:
//!
//! - [`cli`]: the command line (clap derive), help texts and examples;
//! - [`parse`]: value parsers for sizes, CPU shares, counts, environment variables;
//! - [`settings`]: connection settings, flag > environment > the chosen context >
//!   the config file's top level > default;
//! - [`context`]: `jobctl context list|use|show`, which need no server;
//! - [`tls`]: the client's TLS policy (TLS 1.3 only, chosen suites and groups) and the
//!   loading of the CA, certificate and key;
//! - [`connect`]: the gRPC channel over jobctl's own TLS connector;
//! - [`commands`]: what each subcommand does;
//! - [`attach`]: `run` and `exec`, attached: input, terminals, raw mode;
//! - [`render`]: human-readable text and the stable JSON shape;
//! - [`error`]: error classes, their exit codes, and one-line messages.
//!
//! [`devpki`] is the development PKI behind the separate `jobworker-dev-certs` binary.

pub mod attach;
pub mod cli;
pub mod commands;
pub mod complete;
pub mod connect;
pub mod context;
pub mod devpki;
pub mod error;
pub mod observe;
pub mod parse;
pub mod render;
pub mod settings;
pub mod tls;

use std::ffi::OsString;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command};
use crate::commands::note;
use crate::error::{CliError, exit};

/// Runs jobctl with these arguments (the first is the program name) and returns the
/// exit code.
pub fn main_with_args<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    // A shell asking for completions (see `complete`): answered, nothing else runs.
    if complete::complete_if_asked(&args) {
        return exit::OK;
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e, &args),
    };
    // These exit with the job's own status, so their failures use codes a job's rarely
    // are (see `exit::ATTACHED_ERROR`).
    let attached = matches!(
        cli.command,
        Command::Run(_) | Command::Exec(_) | Command::Wait(_)
    );
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if !e.is_quiet() {
                note(&e.to_string());
            }
            if attached {
                e.attached_exit_code()
            } else {
                e.exit_code()
            }
        }
    }
}

fn run(cli: Cli) -> Result<u8, CliError> {
    if let Command::Completions { shell } = &cli.command {
        let name = shell.to_string();
        let script = complete::registration(&name)
            .ok_or_else(|| CliError::usage(format!("no completion for the shell {name}")))?;
        commands::print(&String::from_utf8_lossy(&script))?;
        return Ok(exit::OK);
    }
    if let Command::Context(args) = &cli.command {
        return context::run(args, &cli.connection.flags());
    }
    let settings = commands::settings(&cli.connection.flags())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::other(format!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(commands::execute(cli.command, settings));
    // Output is flushed by then; a blocking write still stuck on a stalled stdout (or
    // a slow name lookup) must not hold the exit.
    runtime.shutdown_background();
    result
}

/// Prints a command-line error as one line (help and version as they are) and returns
/// the exit code.
fn usage_error(e: &clap::Error, args: &[OsString]) -> u8 {
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return u8::try_from(e.exit_code()).unwrap_or(exit::USAGE);
        }
        _ => {}
    }
    note(&usage_line(e, args));
    match subcommand(args).as_deref() {
        Some("run" | "exec" | "wait") => exit::ATTACHED_ERROR,
        _ => exit::USAGE,
    }
}

/// The subcommand named on a command line, if any.
fn subcommand(args: &[OsString]) -> Option<String> {
    args.iter().skip(1).find_map(|a| {
        let a = a.to_str()?;
        Cli::command()
            .get_subcommands()
            .any(|s| s.get_name() == a)
            .then(|| a.to_string())
    })
}

/// clap's error as one line, with a pointer to the right help. `args` is the command
/// line, to name the subcommand when clap's message does not.
pub fn usage_line(e: &clap::Error, args: &[OsString]) -> String {
    let rendered = e.render().to_string();
    // The message: the first line and its indented continuation (a list of missing
    // arguments), without tips.
    let mut message = Vec::new();
    for (i, line) in rendered.lines().enumerate() {
        let line = if i == 0 {
            line.strip_prefix("error: ").unwrap_or(line)
        } else if line.starts_with("  ") && !line.trim_start().starts_with("tip:") {
            line.trim()
        } else {
            break;
        };
        message.push(line);
    }
    let mut line = message.join(" ");
    if line.is_empty() {
        line = "invalid command line".to_string();
    }
    let subcommand = subcommand(args);
    let command = match &subcommand {
        Some(sub) => format!("jobctl {sub}"),
        None => "jobctl".to_string(),
    };
    let takes_command = matches!(subcommand.as_deref(), Some("run" | "start" | "exec"));
    if e.kind() == ErrorKind::UnknownArgument && takes_command {
        line.push_str(&format!(
            "; the job's command goes after `--`, as in `{command} -- sh -c 'echo hi'`"
        ));
    } else {
        line.push_str(&format!("; see `{command} --help`"));
    }
    line
}
