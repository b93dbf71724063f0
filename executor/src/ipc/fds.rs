//! The init's descriptors: which descriptors a clone request carries (`SCM_RIGHTS`), in
//! which order, and the numbers they take in the job init.
//!
//! A request carries, in this order: the job's stdin (`/dev/null`, or the read end of a
//! pipe), the write ends of its stdout and stderr pipes, the read end of the spec pipe,
//! the init's end of its report socket, the read end of the lifeline pipe, and, when the
//! request says so, the job's cgroup v2 directory (last). In the init they become 0, 1,
//! 2, [`FD_SPEC`], [`FD_REPORT`] and [`FD_LIFELINE`]; the cgroup directory is only used
//! by `clone3`.

use std::os::fd::RawFd;

use super::FormatError;

/// The spec pipe in the init (read once, then closed).
pub const FD_SPEC: RawFd = 3;
/// The report pipe in the init.
pub const FD_REPORT: RawFd = 4;
/// The lifeline pipe in the init: it hangs up when the executor is gone.
pub const FD_LIFELINE: RawFd = 5;
/// The control socket in the template: above every number the init uses, so the init
/// closes it first thing.
pub const FD_CONTROL: RawFd = FD_LIFELINE + 1;

/// Descriptors of one init, without the cgroup's.
pub const INIT_FDS: usize = 6;

/// One init's descriptors (`T` is a borrowed or owned descriptor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitFds<T> {
    pub stdin: T,
    pub stdout: T,
    pub stderr: T,
    pub spec: T,
    pub report: T,
    pub lifeline: T,
    /// cgroup v2: the job's group, to clone into.
    pub cgroup: Option<T>,
}

impl<T> InitFds<T> {
    /// In the order a request carries them.
    pub fn into_vec(self) -> Vec<T> {
        let mut v = vec![
            self.stdin,
            self.stdout,
            self.stderr,
            self.spec,
            self.report,
            self.lifeline,
        ];
        v.extend(self.cgroup);
        v
    }

    /// Descriptors as received with a request that says whether a cgroup comes last.
    pub fn from_vec(v: Vec<T>, into_cgroup: bool) -> Result<Self, FormatError> {
        if v.len() != INIT_FDS + usize::from(into_cgroup) {
            return Err(FormatError {
                format: "init descriptors",
                why: "six descriptors, and the cgroup's when the request names one",
            });
        }
        let mut it = v.into_iter();
        let mut next = || it.next().expect("length checked");
        Ok(InitFds {
            stdin: next(),
            stdout: next(),
            stderr: next(),
            spec: next(),
            report: next(),
            lifeline: next(),
            cgroup: into_cgroup.then(next),
        })
    }

    /// The same descriptors, borrowed.
    pub fn clone_refs(&self) -> InitFds<&T> {
        InitFds {
            stdin: &self.stdin,
            stdout: &self.stdout,
            stderr: &self.stderr,
            spec: &self.spec,
            report: &self.report,
            lifeline: &self.lifeline,
            cgroup: self.cgroup.as_ref(),
        }
    }

    /// Applies `f` to every descriptor, stopping at the first error.
    pub fn try_map<U, E>(&self, mut f: impl FnMut(&T) -> Result<U, E>) -> Result<InitFds<U>, E> {
        Ok(InitFds {
            stdin: f(&self.stdin)?,
            stdout: f(&self.stdout)?,
            stderr: f(&self.stderr)?,
            spec: f(&self.spec)?,
            report: f(&self.report)?,
            lifeline: f(&self.lifeline)?,
            cgroup: self.cgroup.as_ref().map(f).transpose()?,
        })
    }

    /// Where each descriptor goes in the init: `(descriptor, number)`, in an order that is
    /// safe to apply with `dup2` when every source number is above every target.
    pub fn placement(&self) -> [(&T, RawFd); 6] {
        [
            (&self.stdin, 0),
            (&self.stdout, 1),
            (&self.stderr, 2),
            (&self.spec, FD_SPEC),
            (&self.report, FD_REPORT),
            (&self.lifeline, FD_LIFELINE),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_round_trip_in_request_order() {
        for cgroup in [None, Some(7)] {
            let fds = InitFds {
                stdin: 1,
                stdout: 2,
                stderr: 3,
                spec: 4,
                report: 5,
                lifeline: 6,
                cgroup,
            };
            let v = fds.clone().into_vec();
            assert_eq!(v[..6], [1, 2, 3, 4, 5, 6]);
            assert_eq!(InitFds::from_vec(v, cgroup.is_some()), Ok(fds));
        }
    }

    #[test]
    fn a_wrong_count_is_refused() {
        for (n, cg) in [(0, false), (5, false), (7, false), (6, true), (8, true)] {
            assert!(InitFds::from_vec(vec![0u8; n], cg).is_err(), "{n} {cg}");
        }
    }

    #[test]
    fn the_init_gets_its_fixed_numbers() {
        let fds = InitFds {
            stdin: "in",
            stdout: "out",
            stderr: "err",
            spec: "spec",
            report: "report",
            lifeline: "life",
            cgroup: None,
        };
        let placed: Vec<(&str, RawFd)> = fds.placement().iter().map(|(f, n)| (**f, *n)).collect();
        assert_eq!(
            placed,
            [
                ("in", 0),
                ("out", 1),
                ("err", 2),
                ("spec", 3),
                ("report", 4),
                ("life", 5)
            ]
        );
    }
}
