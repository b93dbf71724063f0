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

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};

use crate::ipc::fds::{FD_LIFELINE, FD_REPORT, FD_SPEC};
use crate::ipc::report::{self, Report};
use crate::ipc::spec::{InitSpec, MAX_SPEC_LEN};
use crate::seccomp;

mod command;
mod view;

use crate::sys::{self, Exit};
use command::start_command;

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
