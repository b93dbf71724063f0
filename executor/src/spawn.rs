//! The one seam through which jobs are started: clone3 into new namespaces (and, on
//! cgroup v2, straight into the job's group), then re-execute this binary as the job
//! init (see [`crate::init`]).

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::init::{FD_LIFELINE, FD_REPORT, FD_SPEC, INIT_ARG, InitSpec};
use crate::sys;

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
    /// This binary, opened at start-up: the job init is always the code that is running,
    /// even if the file on disk is replaced by an upgrade.
    exe: File,
    /// Read end of the lifeline pipe, handed to every init.
    lifeline_read: OwnedFd,
    /// Write end of the lifeline pipe: held, never written, until the executor exits.
    _lifeline_write: OwnedFd,
    devnull: File,
}

/// A job init that was just cloned.
pub struct Spawned {
    pub pid: sys::pid_t,
    pub pidfd: OwnedFd,
    /// Read end of the pipe that is the job's stdout and stderr.
    pub output: OwnedFd,
    /// Read end of the init's report pipe.
    pub report: OwnedFd,
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
    pub fn new() -> io::Result<Self> {
        let exe = File::open("/proc/self/exe")?;
        let (r, w) = io::pipe()?;
        Ok(Self {
            exe,
            lifeline_read: r.into(),
            _lifeline_write: w.into(),
            devnull: File::options().read(true).write(true).open("/dev/null")?,
        })
    }

    /// Clones the job init. The returned pipes are close-on-exec in this process.
    pub fn spawn(&self, spec: &InitSpec, cgroup: CgroupJoin<'_>) -> io::Result<Spawned> {
        let mut spec_file = sys::memfd("jobworker-spec")?;
        spec_file.write_all(&spec.encode())?;
        spec_file.rewind()?;

        let (out_r, out_w) = io::pipe()?;
        // Best effort: a smaller pipe only costs wake-ups.
        let _ = sys::set_pipe_size(out_r.as_fd(), OUTPUT_PIPE_SIZE);
        let (rep_r, rep_w) = io::pipe()?;

        // Sources above every target number, so the child's dup2 sequence cannot
        // overwrite a source it still needs.
        const ABOVE: i32 = 16;
        let null = sys::dup_above(self.devnull.as_fd(), ABOVE)?;
        let out = sys::dup_above(out_w.as_fd(), ABOVE)?;
        let spec_fd = sys::dup_above(spec_file.as_fd(), ABOVE)?;
        let rep = sys::dup_above(rep_w.as_fd(), ABOVE)?;
        let life = sys::dup_above(self.lifeline_read.as_fd(), ABOVE)?;
        let moves = [
            (null.as_fd(), 0),
            (out.as_fd(), 1),
            (out.as_fd(), 2),
            (spec_fd.as_fd(), FD_SPEC),
            (rep.as_fd(), FD_REPORT),
            (life.as_fd(), FD_LIFELINE),
        ];
        let argv0: &CStr = c"jobworker-init";
        let arg1 = std::ffi::CString::new(INIT_ARG).expect("no NUL in a constant");
        let (ns, cg) = match cgroup {
            CgroupJoin::CloneInto(fd) => (JOB_NAMESPACES | sys::CLONE_NEWCGROUP, Some(fd)),
            CgroupJoin::InitJoins => (JOB_NAMESPACES, None),
        };
        let (pid, pidfd) = sys::spawn_reexec(
            self.exe.as_fd(),
            &[argv0, &arg1],
            ns,
            cg,
            &sys::ChildFds {
                moves: &moves,
                report: FD_REPORT,
            },
        )?;
        // Our copies of the child's ends close here, so the pipes see EOF exactly when
        // the job's processes (output) or its init (report) are gone.
        Ok(Spawned {
            pid,
            pidfd,
            output: out_r.into(),
            report: rep_r.into(),
        })
    }
}
