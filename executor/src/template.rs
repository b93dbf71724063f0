//! The init template: the process every job init is cloned from.
//!
//! At start-up the executor re-executes its own binary once in this mode, with one end
//! of a `SOCK_SEQPACKET` socket pair as fd 6 (the control socket). The template is a
//! fresh, single-threaded process that does nothing but wait for requests on that
//! socket. For each job it receives the init's descriptors (`SCM_RIGHTS`) and the
//! namespaces to create, clones itself into them (`clone3` with `CLONE_PARENT`, so the
//! init is the executor's child and the executor waits for it through the pidfd), and
//! answers with the init's pid and pidfd. The clone puts the descriptors on the init's
//! numbers and runs [`crate::init::main`], which closes everything else (the control
//! socket included) before it does anything.
//!
//! Cloning a single-threaded process is what makes this sound: the clone has a
//! consistent copy of memory (no lock held by another thread), so it may allocate, fork
//! and format like any process, and it needs no `execve` of its own. The executor is
//! multi-threaded and could not clone a child that runs such code; before the template,
//! every job's child re-executed this binary, which cost about 1.5 ms per job (the
//! kernel's `execve`, the dynamic loader and libc's start-up).
//!
//! The template trusts only its control socket, which only the executor holds. A
//! request names at most the job namespaces and the descriptors of one init; anything
//! else is refused. It exits when the executor closes its end or dies, and the executor
//! replaces a template that stops answering.
//!
//! The messages and the descriptors they carry are defined in [`crate::ipc::control`]
//! and [`crate::ipc::fds`].
//!
//! The executor writes the init's spec into the spec pipe only once it has the init's
//! pidfd. A clone it never heard of (the template died or hung after cloning) reads an
//! empty spec and exits without starting anything.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::init::{INIT_ARG, INIT_ARGV0};
use crate::ipc::control::{self, CloneRequest, Reply};
use crate::ipc::fds::{FD_CONTROL, InitFds};
use crate::spawn::JOB_NAMESPACES;
use crate::sys::{self, Cloned};

/// How long the executor waits for any answer of the template.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Entry point of the template mode. Never returns.
pub fn main() -> ! {
    let _ = sys::close_fds_from(FD_CONTROL + 1);
    let Ok(control) = sys::take_inherited_fd(FD_CONTROL) else {
        sys::exit_now(125)
    };
    // Only the executor holds the other end: when it closes it, or dies, the next
    // receive reads the end (or the next reply fails) and the template exits. (No
    // parent-death signal: that follows the thread that started the template, not the
    // executor process.)
    if reply(control.as_fd(), Reply::Ready, &[]).is_err() {
        sys::exit_now(125)
    }
    let mut buf = [0u8; 64];
    loop {
        let (n, fds) = match sys::recv_with_fds(control.as_fd(), &mut buf) {
            Ok((0, _)) => sys::exit_now(0),
            Ok(got) => got,
            // A message that did not fit: refused, its descriptors already closed.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                refuse(control.as_fd(), libc::EINVAL);
                continue;
            }
            Err(_) => sys::exit_now(1),
        };
        let sent = match clone_init(&buf[..n], fds) {
            Ok((pid, pidfd)) => reply(control.as_fd(), Reply::Cloned(pid), &[pidfd.as_fd()]),
            Err(e) => {
                refuse(control.as_fd(), e.raw_os_error().unwrap_or(libc::EINVAL));
                Ok(())
            }
        };
        if sent.is_err() {
            sys::exit_now(1)
        }
    }
}

fn reply(control: BorrowedFd<'_>, reply: Reply, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let (bytes, n) = reply.encode();
    sys::send_with_fds(control, &bytes[..n], fds)
}

fn refuse(control: BorrowedFd<'_>, errno: i32) {
    if reply(control, Reply::Refused(errno), &[]).is_err() {
        sys::exit_now(1)
    }
}

/// Checks one request and clones the init it asks for; in the parent, returns the init's
/// pid and pidfd. The clone never returns from here.
fn clone_init(request: &[u8], fds: Vec<OwnedFd>) -> io::Result<(sys::pid_t, OwnedFd)> {
    let invalid = |_| io::Error::from_raw_os_error(libc::EINVAL);
    let request = CloneRequest::decode(request).map_err(invalid)?;
    let allowed = JOB_NAMESPACES | sys::CLONE_NEWCGROUP;
    let flags = request.ns_flags;
    if flags & JOB_NAMESPACES != JOB_NAMESPACES || flags & !allowed != 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let fds = InitFds::from_vec(fds, request.into_cgroup).map_err(invalid)?;
    match sys::clone_sibling(flags, fds.cgroup.as_ref().map(|c| c.as_fd()))? {
        Cloned::Parent(pid, pidfd) => Ok((pid, pidfd)),
        Cloned::Child => become_init(fds),
    }
}

/// In the clone: puts the descriptors on the init's numbers and runs the init.
fn become_init(fds: InitFds<OwnedFd>) -> ! {
    // Sources above every target first, so no step overwrites a source still needed.
    let high = InitFds {
        cgroup: None,
        ..fds.clone_refs()
    }
    .try_map(|fd| sys::dup_above(fd.as_fd(), 16));
    let Ok(high) = high else { sys::exit_now(126) };
    for (src, dst) in high.placement() {
        if sys::dup2(src.as_fd(), dst).is_err() {
            sys::exit_now(126)
        }
    }
    // The received numbers may now be the init's own (dup2 replaced them), and the init
    // closes every descriptor above its own first thing: nothing here may close them.
    std::mem::forget(high);
    std::mem::forget(fds);
    crate::init::main()
}

/// The executor's handle on its template.
pub struct Template {
    control: OwnedFd,
    pid: sys::pid_t,
    pidfd: OwnedFd,
}

/// Why a clone failed.
#[derive(Debug)]
pub enum CloneError {
    /// The template answered: `clone3` failed (for example `EAGAIN` at a pids limit).
    Refused(io::Error),
    /// The request could not be sent: the template was gone before it, so nothing was
    /// cloned. It should be replaced, and the request may be sent to the new one.
    Gone(io::Error),
    /// The template took the request but did not answer properly (it exited, hung or
    /// said something else), so a clone may exist that nobody tracks: it should be
    /// replaced, and the request must not be sent again.
    Broken(io::Error),
}

impl Template {
    /// Re-executes `exe` (this binary) as the template and waits until it is ready.
    pub fn start(exe: BorrowedFd<'_>, devnull: BorrowedFd<'_>) -> io::Result<Self> {
        let (ours, theirs) = sys::seqpacket_pair()?;
        sys::set_recv_timeout(ours.as_fd(), REPLY_TIMEOUT)?;
        // Sources above every target number (see `sys::ChildFds`).
        const ABOVE: RawFd = 16;
        let null = sys::dup_above(devnull, ABOVE)?;
        let stderr = sys::dup_above(io::stderr().as_fd(), ABOVE)?;
        let control = sys::dup_above(theirs.as_fd(), ABOVE)?;
        drop(theirs);
        let moves = [
            (null.as_fd(), 0),
            (null.as_fd(), 1),
            (stderr.as_fd(), 2),
            (control.as_fd(), FD_CONTROL),
        ];
        let argv0 = std::ffi::CString::new(INIT_ARGV0).expect("no NUL in a constant");
        let arg1 = std::ffi::CString::new(INIT_ARG).expect("no NUL in a constant");
        let (pid, pidfd) = sys::spawn_reexec(
            exe,
            &[&argv0, &arg1],
            &sys::ChildFds {
                moves: &moves,
                report: FD_CONTROL,
                report_tag: control::START_FAILED_TAG,
            },
        )?;
        // From here on, dropping `template` kills and reaps the process.
        let template = Template {
            control: ours,
            pid,
            pidfd,
        };
        drop(control);
        let mut buf = [0u8; control::MAX_REPLY_LEN];
        let (n, fds) = sys::recv_with_fds(template.control.as_fd(), &mut buf)?;
        match Reply::decode(&buf[..n], fds.len()) {
            Ok(Reply::Ready) => Ok(template),
            Ok(Reply::StartFailed(errno)) => Err(io::Error::other(format!(
                "the init template did not start: re-executing this binary failed: {}",
                io::Error::from_raw_os_error(errno)
            ))),
            _ => Err(io::Error::other("the init template did not start")),
        }
    }

    pub fn pid(&self) -> sys::pid_t {
        self.pid
    }

    /// Has the template clone a job init into `ns_flags` (and into `fds.cgroup`, if
    /// any) with `fds` as its descriptors. The init is this process's child; returns its
    /// pid and a pidfd for it. Blocks for the answer (at most [`REPLY_TIMEOUT`]).
    pub fn clone_init(
        &self,
        ns_flags: u64,
        fds: InitFds<BorrowedFd<'_>>,
    ) -> Result<(sys::pid_t, OwnedFd), CloneError> {
        let request = CloneRequest {
            ns_flags,
            into_cgroup: fds.cgroup.is_some(),
        };
        sys::send_with_fds(self.control.as_fd(), &request.encode(), &fds.into_vec())
            .map_err(CloneError::Gone)?;
        let mut buf = [0u8; control::MAX_REPLY_LEN];
        let (n, mut got) =
            sys::recv_with_fds(self.control.as_fd(), &mut buf).map_err(CloneError::Broken)?;
        match Reply::decode(&buf[..n], got.len()) {
            Ok(Reply::Cloned(pid)) => Ok((pid, got.pop().expect("checked: one descriptor"))),
            Ok(Reply::Refused(errno)) => {
                Err(CloneError::Refused(io::Error::from_raw_os_error(errno)))
            }
            _ if n == 0 => Err(CloneError::Broken(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the init template exited",
            ))),
            _ => Err(CloneError::Broken(io::Error::new(
                io::ErrorKind::InvalidData,
                "the init template answered something else",
            ))),
        }
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        // It may already be gone; either way it is reaped here, never left a zombie.
        let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
        let _ = sys::wait_pidfd(self.pidfd.as_fd());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fds(n: usize) -> Vec<OwnedFd> {
        (0..n)
            .map(|_| {
                let (r, _w) = io::pipe().unwrap();
                OwnedFd::from(r)
            })
            .collect()
    }

    fn request(flags: u64, cgroup: u8) -> Vec<u8> {
        let mut r = flags.to_le_bytes().to_vec();
        r.push(cgroup);
        r
    }

    fn errno(r: io::Result<(sys::pid_t, OwnedFd)>) -> Option<i32> {
        r.err().and_then(|e| e.raw_os_error())
    }

    #[test]
    fn requests_beyond_one_init_in_the_job_namespaces_are_refused_before_any_clone() {
        let all = JOB_NAMESPACES | sys::CLONE_NEWCGROUP;
        let cases: Vec<(&str, Vec<u8>, usize)> = vec![
            ("empty", vec![], 6),
            ("short", request(JOB_NAMESPACES, 0)[..8].to_vec(), 6),
            ("long", [request(JOB_NAMESPACES, 0), vec![0]].concat(), 6),
            (
                "no network namespace",
                request(JOB_NAMESPACES & !sys::CLONE_NEWNET, 0),
                6,
            ),
            ("no namespaces", request(0, 0), 6),
            (
                "a user namespace",
                request(JOB_NAMESPACES | 0x1000_0000, 0),
                6,
            ),
            ("CLONE_VM", request(JOB_NAMESPACES | 0x100, 0), 6),
            (
                "CLONE_PARENT asked for",
                request(JOB_NAMESPACES | 0x8000, 0),
                6,
            ),
            ("cgroup byte 2", request(all, 2), 7),
            ("too few descriptors", request(JOB_NAMESPACES, 0), 5),
            ("one descriptor too many", request(JOB_NAMESPACES, 0), 7),
            ("a cgroup without its descriptor", request(all, 1), 6),
        ];
        for (what, req, n) in cases {
            assert_eq!(
                errno(clone_init(&req, fds(n))),
                Some(libc::EINVAL),
                "{what}"
            );
        }
    }

    #[test]
    fn a_valid_request_in_a_multi_threaded_process_gets_an_error_not_a_clone() {
        // The test harness runs tests on threads: cloning it would copy a process whose
        // other threads may hold locks, so clone_sibling refuses.
        let _other = std::thread::spawn(|| std::thread::sleep(Duration::from_secs(1)));
        let e = clone_init(&request(JOB_NAMESPACES, 0), fds(6)).unwrap_err();
        assert!(e.to_string().contains("single-threaded"), "{e}");
    }

    #[test]
    fn descriptors_and_messages_cross_the_control_socket_whole() {
        use std::io::{Read, Write};
        let (a, b) = sys::seqpacket_pair().unwrap();
        let (r, mut w) = io::pipe().unwrap();
        sys::send_with_fds(a.as_fd(), b"first", &[r.as_fd()]).unwrap();
        sys::send_with_fds(a.as_fd(), b"second", &[]).unwrap();
        drop(r);
        let mut buf = [0u8; 16];
        let (n, mut got) = sys::recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"first");
        assert_eq!(got.len(), 1);
        // The received descriptor is the pipe's read end.
        w.write_all(b"through").unwrap();
        drop(w);
        let mut s = String::new();
        std::fs::File::from(got.pop().unwrap())
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "through");
        let (n, got) = sys::recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!((&buf[..n], got.len()), (&b"second"[..], 0));
        // A message longer than the buffer is an error, not a silently cut request.
        sys::send_with_fds(a.as_fd(), &[7u8; 32], &[]).unwrap();
        let e = sys::recv_with_fds(b.as_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // The peer closing its end reads as an empty message.
        drop(a);
        assert_eq!(sys::recv_with_fds(b.as_fd(), &mut buf).unwrap().0, 0);
    }

    #[test]
    fn more_descriptors_than_a_message_carries_are_refused() {
        let (a, _b) = sys::seqpacket_pair().unwrap();
        let many = fds(sys::MAX_PASSED_FDS + 1);
        let borrowed: Vec<BorrowedFd<'_>> = many.iter().map(|f| f.as_fd()).collect();
        let e = sys::send_with_fds(a.as_fd(), b"x", &borrowed).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
