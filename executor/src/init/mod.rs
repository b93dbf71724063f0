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

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use jobworker_protocol::StartFailure;

use crate::ipc::exec;
use crate::ipc::fds::{FD_LIFELINE, FD_REPORT, FD_SPEC};
use crate::ipc::report::{Failure, Report};
use crate::ipc::spec::{InitSpec, MAX_SPEC_LEN};
use crate::seccomp;

mod command;
mod view;

use crate::sys::{self, Exit};
use command::{Command, Stdio};

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
    let report = match sys::take_inherited_fd(FD_REPORT) {
        Ok(fd) => fd,
        Err(_) => sys::exit_now(125),
    };
    let code = match run(&report) {
        Ok(code) => code,
        Err(Step { what, err }) => {
            let failure = Failure {
                kind: StartFailure::Other,
                message: format!("{what}: {err}"),
            };
            send(&report, &Report::Failed(failure), None);
            127
        }
    };
    sys::exit_now(code)
}

/// Sends one report, with `fd` attached. A report the executor cannot take (it is gone)
/// changes nothing here: the lifeline says when it is gone.
fn send(report: &OwnedFd, r: &Report, fd: Option<BorrowedFd<'_>>) {
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    let _ = sys::send_with_fds(report.as_fd(), &r.encode(), &fds);
}

fn run(report: &OwnedFd) -> Result<i32, Step> {
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
    let stdio = match spec.tty {
        // The terminal comes from the job's own devpts, opened as the job's user, so its
        // terminal is the job's; the executor gets the master.
        Some(size) => Stdio::Terminal(open_terminal(report, size, &Report::Terminal)?),
        None => Stdio::Inherit,
    };
    let command = Command {
        argv: &spec.argv,
        env: &spec.env,
        cwd: &spec.cwd,
        stdio,
    };
    let child = match command::launch(command)? {
        Ok(child) => child,
        Err((child, failure)) => {
            // The command never ran: report why and wait for the child to be gone.
            send(report, &Report::Failed(failure), None);
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
    send(report, &Report::Started, None);
    // The init keeps no handle on the job's stdio.
    let _ = sys::redirect_to_devnull(&[0, 1, 2]);
    supervise(child, &signals, &lifeline, report)
}

/// Opens a terminal from the job's devpts and sizes it; sends its master to the
/// executor with `report` (once the terminal is open, so the master never sees a
/// terminal that nobody has opened yet) and returns the terminal.
fn open_terminal(
    sock: &OwnedFd,
    (rows, cols): (u16, u16),
    report: &Report,
) -> Result<OwnedFd, Step> {
    let (master, n) = sys::open_pty("/dev/ptmx").step(|| "opening a terminal".into())?;
    sys::set_window_size(master.as_fd(), rows, cols).step(|| "sizing the terminal".into())?;
    let path = format!("/dev/pts/{n}");
    let tty = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&path)
        .step(|| format!("opening {path}"))?;
    send(sock, report, Some(master.as_fd()));
    Ok(tty.into())
}

fn read_spec() -> io::Result<InitSpec> {
    let file = File::from(sys::take_inherited_fd(FD_SPEC)?);
    let mut bytes = Vec::new();
    (&file).take(MAX_SPEC_LEN as u64).read_to_end(&mut bytes)?;
    InitSpec::decode(&bytes)
}

/// Joins the job's cgroup (v1), builds its file-system view, brings up `lo` and sets the
/// host name: everything that needs root inside the new namespaces.
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
    view::build(spec)?;
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

/// Most execs alive in one job at once; the executor has a lower cap of its own.
const MAX_EXECS: usize = 64;

/// The init's main loop: reap, forward signals, start the execs the executor asks for,
/// report every exit.
fn supervise(
    child: sys::pid_t,
    signals: &OwnedFd,
    lifeline: &OwnedFd,
    report: &OwnedFd,
) -> Result<i32, Step> {
    // Live execs by pid, and their numbers.
    let mut execs: HashMap<sys::pid_t, u32> = HashMap::new();
    loop {
        let [sig_ready, lifeline_ready, asked] =
            sys::poll_readable([signals.as_fd(), lifeline.as_fd(), report.as_fd()], None)
                .step(|| "job init: poll".into())?;
        if lifeline_ready {
            // The executor is gone: the job goes with it.
            let _ = sys::kill(-1, libc::SIGKILL);
            return Ok(128 + libc::SIGKILL);
        }
        if asked {
            exec_asked(report, &mut execs);
        }
        if !sig_ready {
            continue;
        }
        match sys::read_signalfd(signals.as_fd()).step(|| "job init: signalfd".into())? {
            libc::SIGCHLD => {
                while let Some((pid, exit)) = sys::reap_any().step(|| "job init: wait".into())? {
                    if pid == child {
                        send(report, &Report::Exited(exit), None);
                        return Ok(match exit {
                            Exit::Code(c) => c,
                            Exit::Signal(s) => 128 + s,
                        });
                    }
                    if let Some(exec) = execs.remove(&pid) {
                        send(report, &Report::ExecExited { exec, exit }, None);
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

/// Takes one message from the report socket: an exec request, started if it is well
/// formed. A message of the wrong shape is dropped (its descriptors closed).
fn exec_asked(report: &OwnedFd, execs: &mut HashMap<sys::pid_t, u32>) {
    let mut buf = [0u8; exec::REQUEST_LEN + 1];
    let Ok((n, mut fds)) = sys::recv_with_fds(report.as_fd(), &mut buf) else {
        return;
    };
    if n == 0 {
        // The executor closed its end: it is going, and the lifeline will say so.
        return;
    }
    let Ok(req) = exec::ExecRequest::decode(&buf[..n], fds.len()) else {
        return;
    };
    let spec_fd = fds.remove(0);
    let failed = |message: String| Report::ExecFailed {
        exec: req.exec,
        failure: Failure {
            kind: StartFailure::Other,
            message,
        },
    };
    if execs.len() >= MAX_EXECS {
        send(
            report,
            &failed(format!("the job already runs {MAX_EXECS} execs")),
            None,
        );
        return;
    }
    let spec = match read_exec_spec(spec_fd) {
        Ok(s) => s,
        Err(e) => {
            send(report, &failed(format!("reading the exec spec: {e}")), None);
            return;
        }
    };
    match start_exec(report, req, &spec, fds) {
        Ok(Ok(pid)) => {
            execs.insert(pid, req.exec);
        }
        // The child exits at once; it is reaped with the others, and reported as failed
        // only, never as an exec that ended.
        Ok(Err(failure)) => send(
            report,
            &Report::ExecFailed {
                exec: req.exec,
                failure,
            },
            None,
        ),
        Err(Step { what, err }) => send(report, &failed(format!("{what}: {err}")), None),
    }
}

fn read_exec_spec(fd: OwnedFd) -> io::Result<exec::ExecSpec> {
    let mut bytes = Vec::new();
    File::from(fd)
        .take(exec::MAX_EXEC_SPEC_LEN as u64 + 1)
        .read_to_end(&mut bytes)?;
    exec::ExecSpec::decode(&bytes)
}

/// Starts one exec; reports `ExecStarted` (with its terminal's master) once it runs.
fn start_exec(
    report: &OwnedFd,
    req: exec::ExecRequest,
    spec: &exec::ExecSpec,
    fds: Vec<OwnedFd>,
) -> Result<Result<sys::pid_t, Failure>, Step> {
    let stdio = match (req.tty, spec.tty) {
        (true, Some(size)) => Stdio::Terminal(open_terminal(
            report,
            size,
            &Report::ExecTerminal { exec: req.exec },
        )?),
        (false, _) => {
            let [a, b, c]: [OwnedFd; 3] = fds
                .try_into()
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
                .step(|| "the exec's stdio".into())?;
            Stdio::Fds([a, b, c])
        }
        (true, None) => {
            return Err(Step {
                what: "an exec with a terminal of no size".into(),
                err: io::Error::from(io::ErrorKind::InvalidInput),
            });
        }
    };
    let command = Command {
        argv: &spec.argv,
        env: &spec.env,
        cwd: &spec.cwd,
        stdio,
    };
    Ok(match command::launch(command)? {
        Ok(pid) => {
            send(report, &Report::ExecStarted { exec: req.exec }, None);
            Ok(pid)
        }
        Err((_, failure)) => Err(failure),
    })
}
