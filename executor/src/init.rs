//! The job init: PID 1 of every job's namespaces.
//!
//! The init template (see [`crate::template`]) clones itself into the job's new
//! namespaces and the clone runs [`main`]: a copy of a single-threaded process, where
//! allocating, forking and formatting are all safe. The init:
//!
//! 1. reads its [`InitSpec`] from fd 3 (a pipe the executor writes once it holds the
//!    init's pidfd, so an init it never heard of reads nothing and exits);
//! 2. joins the job's cgroup v1 hierarchies (cgroup v2 jobs were cloned straight into
//!    their group), makes every mount private, mounts a fresh `/proc` and private
//!    size-capped tmpfs on `/tmp` (and `/var/tmp`, `/dev/shm`), brings `lo` up and sets
//!    the host name;
//! 3. drops every privilege once, for itself and the command alike: clears its groups,
//!    switches to the job user, drops every capability (bounding and ambient sets too),
//!    sets `no_new_privs` and installs the seccomp filter;
//! 4. forks the command, which inherits all of that, resets its signals and executes the
//!    command with only fds 0, 1 and 2 open;
//! 5. tells the executor on fd 4 whether the command started or why it did not, and then
//!    waits: it reaps orphans, forwards SIGTERM/SIGINT/SIGHUP to every process of the
//!    namespace, reports the command's exit status and exits, which makes the kernel kill
//!    whatever else is left in the PID namespace.
//!
//! Dropping privileges before the fork, rather than in the command and again in the
//! init, builds and installs the seccomp filter once per job instead of twice (the kernel
//! converts and compiles it on every install) and keeps the fork-to-exec path short; the
//! init needs no privilege after its namespaces are set up.
//!
//! fd 5 is the read end of a "lifeline" pipe whose write end only the executor holds: if
//! the executor dies, the pipe hangs up and the init kills the job, so no job outlives
//! its executor.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use crate::ipc::exec_status;
use crate::ipc::fds::{FD_LIFELINE, FD_REPORT, FD_SPEC};
use crate::ipc::report::{self, Report};
use crate::ipc::spec::{InitSpec, MAX_SPEC_LEN};
use crate::seccomp;
use crate::sys::{self, Exit, Fork};

/// Argument that selects the init template (argv[1]); argv[0] is [`INIT_ARGV0`]. Job
/// inits are clones of the template, so `ps` shows them with the same command line.
pub const INIT_ARG: &str = "--job-init";
/// argv[0] of the init template and of job inits, as `ps` shows them.
pub const INIT_ARGV0: &str = "jobworker-init";

/// A failed step: what was being done, and the OS error.
struct Step {
    what: String,
    err: io::Error,
}

trait Context<T> {
    fn step(self, what: impl FnOnce() -> String) -> Result<T, Step>;
}

impl<T> Context<T> for io::Result<T> {
    fn step(self, what: impl FnOnce() -> String) -> Result<T, Step> {
        self.map_err(|err| Step { what: what(), err })
    }
}

/// Entry point of a job init, in a clone of the template with its descriptors on
/// [`FD_SPEC`], [`FD_REPORT`], [`FD_LIFELINE`] and 0-2. Never returns.
pub fn main() -> ! {
    // Nothing but fds 0-5 may survive into the job (the template's control socket is
    // among those closed here).
    if sys::close_fds_from(FD_LIFELINE + 1).is_err() {
        sys::exit_now(125)
    }
    let mut report = match sys::take_inherited_fd(FD_REPORT) {
        Ok(fd) => File::from(fd),
        Err(_) => sys::exit_now(125),
    };
    let code = match run(&mut report) {
        Ok(code) => code,
        Err(Step { what, err }) => {
            let _ = report::write(&mut report, &Report::Failed(format!("{what}: {err}")));
            127
        }
    };
    sys::exit_now(code)
}

fn run(report: &mut File) -> Result<i32, Step> {
    sys::setsid().step(|| "job init: new session".into())?;
    let lifeline = sys::take_inherited_fd(FD_LIFELINE).step(|| "job init: lifeline".into())?;
    let spec = read_spec().step(|| "job init: reading the job spec".into())?;
    if sys::poll_readable([lifeline.as_fd()], Some(0)).step(|| "poll".into())?[0] {
        // The executor is already gone.
        return Ok(128 + libc::SIGKILL);
    }
    setup_namespaces(&spec)?;

    // Signals are taken through a signalfd from here on; blocked before the fork so no
    // SIGCHLD can be missed. The command unblocks them before exec.
    let signals =
        sys::block_into_signalfd(&[libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
            .step(|| "blocking signals".into())?;
    // From here on nothing the init or the command does needs a privilege.
    drop_privileges(&spec)?;
    // Before the command exists: the uid change just set "dumpable" to the host's
    // fs.suid_dumpable, and the job (same uid) must never trace the init or read its
    // memory map, which is its init template's. The command's execve makes the command
    // itself dumpable again.
    sys::set_non_dumpable().step(|| "job init: non-dumpable".into())?;
    let child = match start_command(&spec)? {
        Ok(child) => child,
        Err((child, failure)) => {
            // The command never ran: report why and wait for the child to be gone.
            let _ = report::write(report, &Report::Failed(failure));
            loop {
                if let Ok(Some((pid, _))) = sys::reap_any() {
                    if pid == child {
                        return Ok(127);
                    }
                } else {
                    let _ = sys::read_signalfd(signals.as_fd());
                }
            }
        }
    };
    let _ = report::write(report, &Report::Started);

    // The init keeps no handle on the job's output.
    let _ = sys::redirect_to_devnull(&[1, 2]);

    supervise(child, &signals, &lifeline, report)
}

/// Forks the command's child, which executes the command (see [`exec_command`]). Returns
/// its pid once it has executed the command, or its pid and why it could not (its exec
/// status, read until the close-on-exec pipe closes).
#[allow(clippy::type_complexity)]
fn start_command(spec: &InitSpec) -> Result<Result<sys::pid_t, (sys::pid_t, String)>, Step> {
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

fn read_spec() -> io::Result<InitSpec> {
    let file = File::from(sys::take_inherited_fd(FD_SPEC)?);
    let mut bytes = Vec::new();
    (&file).take(MAX_SPEC_LEN as u64).read_to_end(&mut bytes)?;
    InitSpec::decode(&bytes)
}

fn setup_namespaces(spec: &InitSpec) -> Result<(), Step> {
    if let Some((soft, hard)) = spec.nofile {
        sys::set_nofile(soft, hard).step(|| "restoring the open file limit".into())?;
    }
    for procs in &spec.cgroup_join {
        std::fs::write(procs, "0").step(|| format!("joining cgroup {}", procs.display()))?;
    }
    if spec.unshare_cgroupns {
        sys::unshare(sys::CLONE_NEWCGROUP).step(|| "unsharing the cgroup namespace".into())?;
    }
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    sys::mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None)
        .step(|| "making all mounts private".into())?;
    sys::mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        nosuid_nodev | libc::MS_NOEXEC,
        None,
    )
    .step(|| "mounting /proc".into())?;
    let tmpfs_opts = format!("size={},mode=1777", spec.tmp_size_bytes);
    for dir in ["/tmp", "/var/tmp", "/dev/shm"] {
        // /tmp must exist; the others only when the host has them.
        if dir != "/tmp" && !std::path::Path::new(dir).is_dir() {
            continue;
        }
        sys::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nosuid_nodev,
            Some(&tmpfs_opts),
        )
        .step(|| format!("mounting a private tmpfs on {dir}"))?;
    }
    if spec.mount_cgroup2 {
        // The host's cgroup2 mount is the same file system: mounting it again on the same
        // place is EBUSY. Detach the inherited one (in this private mount namespace only)
        // and mount a fresh view rooted at the job's cgroup namespace.
        sys::umount_detach("/sys/fs/cgroup")
            .step(|| "detaching the host's /sys/fs/cgroup in the job".into())?;
        sys::mount(
            Some("cgroup2"),
            "/sys/fs/cgroup",
            Some("cgroup2"),
            nosuid_nodev | libc::MS_NOEXEC | libc::MS_RDONLY,
            None,
        )
        .step(|| "mounting the job's cgroup on /sys/fs/cgroup".into())?;
    }
    sys::loopback_up().step(|| "bringing up lo".into())?;
    sys::sethostname(&spec.hostname).step(|| "setting the host name".into())?;
    Ok(())
}

/// Drops every privilege, in this order: supplementary groups, gid and uid, every
/// capability (effective, permitted, inheritable, bounding, ambient), then sets
/// `no_new_privs` and installs the seccomp filter.
fn drop_privileges(spec: &InitSpec) -> Result<(), Step> {
    if spec.uid == 0 || spec.gid == 0 {
        return Err(Step {
            what: "refusing to run a job as root".into(),
            err: io::Error::from(io::ErrorKind::PermissionDenied),
        });
    }
    let filter = seccomp::job_filter().map_err(|e| Step {
        what: "building the seccomp filter".into(),
        err: io::Error::other(e.to_string()),
    })?;
    sys::clear_groups().step(|| "clearing supplementary groups".into())?;
    sys::set_gid(spec.gid).step(|| format!("setgid {}", spec.gid))?;
    sys::set_keep_caps(true).step(|| "keeping capabilities across setuid".into())?;
    sys::set_uid(spec.uid).step(|| format!("setuid {}", spec.uid))?;
    sys::keep_only_setpcap().step(|| "reducing capabilities to CAP_SETPCAP".into())?;
    sys::drop_bounding_set().step(|| "dropping the capability bounding set".into())?;
    sys::clear_ambient_caps().step(|| "clearing ambient capabilities".into())?;
    sys::clear_caps().step(|| "clearing all capabilities".into())?;
    sys::set_keep_caps(false).step(|| "resetting keep-caps".into())?;
    sys::set_no_new_privs().step(|| "setting no_new_privs".into())?;
    seccomp::apply(&filter).map_err(|e| Step {
        what: "installing the seccomp filter".into(),
        err: io::Error::other(e.to_string()),
    })?;
    Ok(())
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

/// The init's main loop: reap, forward signals, report the command's exit.
fn supervise(
    child: sys::pid_t,
    signals: &OwnedFd,
    lifeline: &OwnedFd,
    report: &mut File,
) -> Result<i32, Step> {
    loop {
        let [sig_ready, lifeline_ready] =
            sys::poll_readable([signals.as_fd(), lifeline.as_fd()], None)
                .step(|| "job init: poll".into())?;
        if lifeline_ready {
            // The executor is gone: the job goes with it.
            let _ = sys::kill(-1, libc::SIGKILL);
            return Ok(128 + libc::SIGKILL);
        }
        if !sig_ready {
            continue;
        }
        match sys::read_signalfd(signals.as_fd()).step(|| "job init: signalfd".into())? {
            libc::SIGCHLD => {
                while let Some((pid, exit)) = sys::reap_any().step(|| "job init: wait".into())? {
                    if pid == child {
                        let _ = report::write(report, &Report::Exited(exit));
                        return Ok(match exit {
                            Exit::Code(c) => c,
                            Exit::Signal(s) => 128 + s,
                        });
                    }
                }
            }
            sig => {
                // SIGTERM, SIGINT, SIGHUP: to every process of the namespace but us.
                let _ = sys::kill(-1, sig);
            }
        }
    }
}
