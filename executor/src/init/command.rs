//! Starting the command: the init forks a child, which executes the command with the
//! privileges the init already dropped and tells the init, through its exec status
//! pipe, if it could not.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};

use super::{Context, Step};
use crate::ipc::exec_status;
use crate::ipc::fds::FD_SPEC;
use crate::ipc::spec::InitSpec;
use crate::sys::{self, Fork};

/// Forks the command's child, which executes the command (see [`exec_command`]). Returns
/// its pid once it has executed the command, or its pid and why it could not (its exec
/// status, read until the close-on-exec pipe closes).
#[allow(clippy::type_complexity)]
pub(super) fn start_command(
    spec: &InitSpec,
) -> Result<Result<sys::pid_t, (sys::pid_t, String)>, Step> {
    let (exec_r, exec_w) = io::pipe().step(|| "creating the exec status pipe".into())?;
    let child = match sys::fork().step(|| "fork of the command".into())? {
        Fork::Child => {
            // Keep only 0, 1, 2 and the close-on-exec status pipe (moved to fd 3): the
            // lifeline and the signalfd are above it and closed with everything else.
            drop(exec_r);
            let mut w = match sys::move_fd_cloexec(exec_w.into(), FD_SPEC) {
                Ok(fd) => File::from(fd),
                Err(_) => sys::exit_now(127),
            };
            let _ = sys::close_fds_from(FD_SPEC + 1);
            let err = exec_command(spec);
            let _ = w.write_all(&exec_status::encode(&err.what, &err.err));
            sys::exit_now(127);
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

/// In the forked child, which inherited the init's dropped privileges and seccomp
/// filter: prepare and execute the command. Returns only on failure.
fn exec_command(spec: &InitSpec) -> Step {
    if let Err(e) = sys::reset_signals() {
        return Step {
            what: "resetting signals".into(),
            err: e,
        };
    }
    if let Err(e) = std::env::set_current_dir(&spec.cwd) {
        return Step {
            what: format!("changing directory to {}", spec.cwd),
            err: e,
        };
    }
    let to_c = |v: &[String]| -> Option<Vec<CString>> {
        v.iter().map(|s| CString::new(s.as_bytes()).ok()).collect()
    };
    let (Some(argv), Some(envp)) = (to_c(&spec.argv), to_c(&spec.env)) else {
        return Step {
            what: "preparing argv".into(),
            err: io::Error::from(io::ErrorKind::InvalidInput),
        };
    };
    let prog = &spec.argv[0];
    if prog.contains('/') {
        let err = sys::execve(&argv[0], &argv, &envp);
        return Step {
            what: format!("executing {prog:?}"),
            err,
        };
    }
    let path = spec
        .env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or("/usr/bin:/bin");
    exec_in_path(prog, path, &argv, &envp)
}

/// Searches `path` for `prog` as execvp does: EACCES from any candidate wins over "not
/// found". Returns only on failure.
fn exec_in_path(prog: &str, path: &str, argv: &[CString], envp: &[CString]) -> Step {
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
                return Step {
                    what: format!("executing {}", candidate.to_string_lossy()),
                    err,
                };
            }
        }
    }
    match denied {
        Some(err) => Step {
            what: format!("executing {prog:?}"),
            err,
        },
        None => Step {
            what: format!("command not found: {prog:?} (searched PATH={path})"),
            err: io::Error::from_raw_os_error(libc::ENOENT),
        },
    }
}
