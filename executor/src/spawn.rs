//! The one seam through which jobs are started: the init template (see
//! [`crate::template`]) clones each job init into new namespaces (and, on cgroup v2,
//! straight into the job's group); the init then sets the job up (see [`crate::init`]).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use crate::ipc::fds::InitFds;
use crate::ipc::spec::InitSpec;
use crate::sys;
use crate::template::{CloneError, Template};

/// Capacity asked for the output pipe: fewer wake-ups per byte for chatty jobs.
const OUTPUT_PIPE_SIZE: usize = 1024 * 1024;

/// Namespaces every job gets at clone time.
pub const JOB_NAMESPACES: u64 = sys::CLONE_NEWPID
    | sys::CLONE_NEWNS
    | sys::CLONE_NEWNET
    | sys::CLONE_NEWUTS
    | sys::CLONE_NEWIPC;

/// Long-lived handles the spawn path needs, opened once at start-up.
pub struct Spawner {
    /// This binary, opened at start-up: a replacement template is always the code that
    /// is running, even if the file on disk is replaced by an upgrade.
    exe: File,
    /// Read end of the lifeline pipe, handed to every init.
    lifeline_read: OwnedFd,
    /// Write end of the lifeline pipe: held, never written, until the executor exits.
    _lifeline_write: OwnedFd,
    /// `/dev/null`: the stdin of a job or exec that reads none.
    devnull: File,
    /// The init template; one request at a time. `None` after it failed, until the next
    /// job starts a new one.
    template: Mutex<Option<Template>>,
}

/// A job init that was just cloned.
pub struct Spawned {
    pub pid: sys::pid_t,
    pub pidfd: OwnedFd,
    /// Read ends of the pipes that are the job's stdout and stderr.
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Write end of the job's stdin pipe, when it reads from its client.
    pub stdin: Option<OwnedFd>,
    /// The executor's end of the init's report socket (`SOCK_SEQPACKET`).
    pub report: OwnedFd,
}

/// Makes `uid` (and its group, of the same number) the owner of each pipe end of `fds`.
pub fn give_to<const N: usize>(uid: u32, fds: [Option<BorrowedFd<'_>>; N]) -> io::Result<()> {
    for fd in fds.into_iter().flatten() {
        std::os::unix::fs::fchown(fd, Some(uid), Some(uid))?;
    }
    Ok(())
}

/// A cloned init's spec, not yet handed over: the init waits for it before doing
/// anything. Dropped without [`SpecHandover::give`], the init reads an empty spec and
/// exits without starting anything.
pub struct SpecHandover {
    spec: Vec<u8>,
    pipe: io::PipeWriter,
    pid: sys::pid_t,
}

impl SpecHandover {
    /// Writes the spec into the init's pipe and closes it: from here on the init sets
    /// the job up and runs its command. May block while a large spec fills the pipe.
    pub fn give(mut self) {
        if let Err(e) = self.pipe.write_all(&self.spec) {
            tracing::warn!(pid = self.pid, "handing the job init its spec: {e}");
        }
    }
}

/// Where the job joins its cgroup.
pub enum CgroupJoin<'a> {
    /// cgroup v2: clone directly into the group (`CLONE_INTO_CGROUP`) and into a new
    /// cgroup namespace rooted there.
    CloneInto(BorrowedFd<'a>),
    /// cgroup v1: the init writes itself into each hierarchy listed in its spec, then
    /// unshares its cgroup namespace.
    InitJoins,
}

impl Spawner {
    /// Opens what every spawn needs and starts the init template.
    pub fn new() -> io::Result<Self> {
        let exe = File::open("/proc/self/exe")?;
        let (r, w) = io::pipe()?;
        let devnull = File::options().read(true).write(true).open("/dev/null")?;
        let template = Template::start(exe.as_fd(), devnull.as_fd())
            .map_err(|e| io::Error::new(e.kind(), format!("starting the init template: {e}")))?;
        tracing::debug!(pid = template.pid(), "init template started");
        Ok(Self {
            exe,
            lifeline_read: r.into(),
            _lifeline_write: w.into(),
            devnull,
            template: Mutex::new(Some(template)),
        })
    }

    /// Clones the job init, which waits for its spec: [`SpecHandover::give`] hands it
    /// over (after the job's start is recorded), and dropping the handover instead makes
    /// the init exit without starting anything. The returned pipes are close-on-exec
    /// in this process. Blocks for the template's answer; call it off the async runtime's
    /// worker threads.
    pub fn spawn(
        &self,
        spec: &InitSpec,
        cgroup: CgroupJoin<'_>,
        stdin: bool,
    ) -> io::Result<(Spawned, SpecHandover)> {
        let uid = spec.uid;
        let spec = spec.encode();
        let (spec_r, spec_w) = io::pipe()?;
        // Room for the whole spec, so writing it never waits for the init (a pipe holds
        // 64 KiB unless told otherwise; best effort: a larger spec is written as the
        // init reads it).
        if spec.len() > 64 * 1024 {
            let _ = sys::set_pipe_size(spec_w.as_fd(), spec.len());
        }

        let (out_r, out_w) = io::pipe()?;
        let (err_r, err_w) = io::pipe()?;
        // Best effort: a smaller pipe only costs wake-ups.
        let _ = sys::set_pipe_size(out_r.as_fd(), OUTPUT_PIPE_SIZE);
        let (report, init_report) = sys::seqpacket_pair()?;
        let stdin = stdin.then(io::pipe).transpose()?;
        // The job's ends belong to the job's user, so it may open them again by name
        // (`/dev/stdout`, `/proc/self/fd/1`), as any process may its own pipes.
        give_to(
            uid,
            [
                Some(out_w.as_fd()),
                Some(err_w.as_fd()),
                stdin.as_ref().map(|(r, _)| r.as_fd()),
            ],
        )?;

        let (ns, cg) = match cgroup {
            CgroupJoin::CloneInto(fd) => (JOB_NAMESPACES | sys::CLONE_NEWCGROUP, Some(fd)),
            CgroupJoin::InitJoins => (JOB_NAMESPACES, None),
        };
        let fds = InitFds {
            stdin: match &stdin {
                Some((r, _)) => r.as_fd(),
                None => self.devnull.as_fd(),
            },
            stdout: out_w.as_fd(),
            stderr: err_w.as_fd(),
            spec: spec_r.as_fd(),
            report: init_report.as_fd(),
            lifeline: self.lifeline_read.as_fd(),
            cgroup: cg,
        };
        let (pid, pidfd) = self.clone_init(ns, fds)?;
        // Only an init whose pidfd this process holds gets its spec; if the write fails
        // (the init is already gone), the init's supervisor reports how it ended.
        let handover = SpecHandover {
            spec,
            pipe: spec_w,
            pid,
        };
        Ok((
            Spawned {
                pid,
                pidfd,
                stdout: out_r.into(),
                stderr: err_r.into(),
                stdin: stdin.map(|(_, w)| w.into()),
                report,
            },
            handover,
        ))
    }

    /// `/dev/null`, for an exec's stdin.
    pub fn devnull(&self) -> BorrowedFd<'_> {
        self.devnull.as_fd()
    }

    /// Asks the template for a clone. A template found gone before the request is
    /// replaced and asked again, once; one that fails after taking the request is
    /// replaced and the job fails (the request is never sent twice).
    fn clone_init(
        &self,
        ns: u64,
        fds: InitFds<BorrowedFd<'_>>,
    ) -> io::Result<(sys::pid_t, OwnedFd)> {
        let mut slot = match self.template.lock() {
            Ok(slot) => slot,
            Err(poisoned) => {
                // A panic mid-request may have left its answer unread: never reuse it.
                let mut slot = poisoned.into_inner();
                *slot = None;
                self.template.clear_poison();
                slot
            }
        };
        for attempt in 0..2 {
            if slot.is_none() {
                let t = Template::start(self.exe.as_fd(), self.devnull.as_fd())?;
                tracing::warn!(pid = t.pid(), "started a new init template");
                *slot = Some(t);
            }
            let template = slot.as_ref().expect("just set");
            let pid = template.pid();
            match template.clone_init(ns, fds.clone()) {
                Ok(cloned) => return Ok(cloned),
                Err(CloneError::Refused(e)) => return Err(e),
                Err(CloneError::Gone(e)) if attempt == 0 => {
                    tracing::error!(pid, "the init template is gone: {e}");
                    // Killed (if need be) and reaped here.
                    *slot = None;
                }
                Err(CloneError::Gone(e) | CloneError::Broken(e)) => {
                    tracing::error!(pid, "the init template failed: {e}");
                    *slot = None;
                    return Err(e);
                }
            }
        }
        unreachable!("the second attempt returns")
    }
}
