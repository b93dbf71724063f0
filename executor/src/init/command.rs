//! Starting a process: the job's command, or an exec. The init forks a child, which
//! executes it with the privileges the init already dropped and tells the init, through
//! its exec status pipe, if it could not.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use jobworker_protocol::StartFailure;

use super::{Context, Step};
use crate::ipc::exec_status;
use crate::ipc::fds::FD_SPEC;
use crate::ipc::report::Failure;
use crate::sys::{self, Fork};

/// Where a process's stdin, stdout and stderr come from.
pub(super) enum Stdio {
    /// Already on 0, 1 and 2 (the job's command without a terminal).
    Inherit,
    /// These three, in order (an exec without a terminal).
    Fds([OwnedFd; 3]),
    /// A terminal of the job's devpts instance, already open: the process leads a
    /// session of its own with it as its controlling terminal.
    Terminal(OwnedFd),
}

/// A process to start.
pub(super) struct Command<'a> {
    pub argv: &'a [String],
    /// The complete environment, `NAME=value`.
    pub env: &'a [String],
    pub cwd: &'a str,
    pub stdio: Stdio,
}

/// Forks the process's child, which executes it (see [`exec`]). Returns its pid once it
/// has executed it, or its pid and why it could not (its exec status, read until the
/// close-on-exec pipe closes).
#[allow(clippy::type_complexity)]
pub(super) fn launch(cmd: Command<'_>) -> Result<Result<sys::pid_t, (sys::pid_t, Failure)>, Step> {
    let (exec_r, exec_w) = io::pipe().step(|| "creating the exec status pipe".into())?;
    let child = match sys::fork().step(|| "fork of the command".into())? {
        Fork::Child => {
            drop(exec_r);
            let Command {
                argv,
                env,
                cwd,
                stdio,
            } = cmd;
            let (mut w, (kind, err)) = match child_setup(stdio, exec_w.into()) {
                Ok(w) => (Some(w), exec(argv, env, cwd)),
                Err((w, e)) => (w, (StartFailure::Other, e)),
            };
            if let Some(w) = w.as_mut() {
                let _ = w.write_all(&exec_status::encode(kind, &err.what, &err.err));
            }
            sys::exit_now(if kind == StartFailure::NotFound {
                127
            } else {
                126
            });
        }
        Fork::Parent(pid) => pid,
    };
    drop(exec_w);
    let mut status = Vec::new();
    (&exec_r)
        .take(exec_status::MAX_EXEC_STATUS as u64)
        .read_to_end(&mut status)
        .step(|| "reading the exec status".into())?;
    Ok(match exec_status::decode(&status) {
        None => Ok(child),
        Some(failure) => Err((child, failure)),
    })
}

/// In the child: puts its stdio on 0, 1 and 2, the exec status pipe on 3 (close-on-exec,
/// so the command never inherits it), and closes every other descriptor: the lifeline,
/// the signalfd, the report socket and any pipe of the init's go. Returns the status
/// pipe, or it (if it got that far) with the failed step.
fn child_setup(stdio: Stdio, status: OwnedFd) -> Result<File, (Option<File>, Step)> {
    let fail = |w: Option<&OwnedFd>, step: Step| {
        (w.and_then(|w| w.try_clone().ok()).map(File::from), step)
    };
    // Everything this child moves is first put above every number it moves things to.
    // Every descriptor this child owns is closed (dropped) before `close_fds_from`, which
    // would otherwise close it under its owner.
    let high = sys::dup_above(status.as_fd(), 16)
        .step(|| "setting up the exec status".into())
        .map_err(|e| fail(Some(&status), e))?;
    drop(status);
    let status = high;
    match stdio {
        Stdio::Inherit => {}
        Stdio::Fds(fds) => {
            let high = fds
                .iter()
                .map(|fd| sys::dup_above(fd.as_fd(), 16))
                .collect::<io::Result<Vec<_>>>()
                .step(|| "setting up the exec's stdio".into())
                .map_err(|e| fail(Some(&status), e))?;
            drop(fds);
            for (fd, n) in high.iter().zip(0..) {
                sys::dup2(fd.as_fd(), n)
                    .step(|| "setting up the exec's stdio".into())
                    .map_err(|e| fail(Some(&status), e))?;
            }
        }
        Stdio::Terminal(tty) => {
            terminal(tty).map_err(|e| fail(Some(&status), e))?;
        }
    }
    let status = sys::move_fd_cloexec(status, FD_SPEC)
        .step(|| "setting up the exec status".into())
        .map_err(|e| fail(None, e))?;
    if let Err(e) = sys::close_fds_from(FD_SPEC + 1) {
        return Err(fail(
            Some(&status),
            Step {
                what: "closing the init's descriptors".into(),
                err: e,
            },
        ));
    }
    Ok(File::from(status))
}

/// Makes `tty` the caller's controlling terminal, in a new session, and its stdin,
/// stdout and stderr.
fn terminal(tty: OwnedFd) -> Result<(), Step> {
    sys::setsid().step(|| "a session for the terminal".into())?;
    sys::set_controlling_tty(tty.as_fd())
        .step(|| "making the terminal the controlling one".into())?;
    for n in 0..3 {
        sys::dup2(tty.as_fd(), n).step(|| "setting up the terminal as stdio".into())?;
    }
    Ok(())
}

/// In the forked child, which inherited the init's dropped privileges and seccomp
/// filter: prepare and execute the process. Returns only on failure, with its kind.
fn exec(argv: &[String], env: &[String], cwd: &str) -> (StartFailure, Step) {
    let other = |what: String, err| (StartFailure::Other, Step { what, err });
    if let Err(e) = sys::reset_signals() {
        return other("resetting signals".into(), e);
    }
    if let Err(e) = std::env::set_current_dir(cwd) {
        return other(format!("changing directory to {cwd}"), e);
    }
    let to_c = |v: &[String]| -> Option<Vec<CString>> {
        v.iter().map(|s| CString::new(s.as_bytes()).ok()).collect()
    };
    let prog = &argv[0];
    let path = env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or("/usr/bin:/bin");
    let (Some(argv), Some(envp)) = (to_c(argv), to_c(env)) else {
        return other(
            "preparing argv".into(),
            io::Error::from(io::ErrorKind::InvalidInput),
        );
    };
    if prog.contains('/') {
        let err = sys::execve(&argv[0], &argv, &envp);
        return (
            kind_of(&err),
            Step {
                what: format!("executing {prog:?}"),
                err,
            },
        );
    }
    exec_in_path(prog, path, &argv, &envp)
}

/// What a failed `execve` means, as a shell's exit status says it.
fn kind_of(err: &io::Error) -> StartFailure {
    match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => StartFailure::NotFound,
        _ => StartFailure::NotExecutable,
    }
}

/// Searches `path` for `prog` as execvp does: EACCES from any candidate wins over "not
/// found". Returns only on failure.
fn exec_in_path(
    prog: &str,
    path: &str,
    argv: &[CString],
    envp: &[CString],
) -> (StartFailure, Step) {
    let mut denied = None;
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let Ok(candidate) = CString::new(format!("{dir}/{prog}")) else {
            continue;
        };
        let err = sys::execve(&candidate, argv, envp);
        match err.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => {}
            Some(libc::EACCES) => denied = Some(err),
            _ => {
                return (
                    StartFailure::NotExecutable,
                    Step {
                        what: format!("executing {}", candidate.to_string_lossy()),
                        err,
                    },
                );
            }
        }
    }
    match denied {
        Some(err) => (
            StartFailure::NotExecutable,
            Step {
                what: format!("executing {prog:?}"),
                err,
            },
        ),
        None => (
            StartFailure::NotFound,
            Step {
                what: format!("command not found: {prog:?} (searched PATH={path})"),
                err: io::Error::from_raw_os_error(libc::ENOENT),
            },
        ),
    }
}
