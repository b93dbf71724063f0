//! The init's descriptors: which descriptors a clone request carries (`SCM_RIGHTS`), in
//! which order, and the numbers they take in the job init.
//!
//! A request carries, in this order: `/dev/null`, the write end of the output pipe, the
//! read end of the spec pipe, the write end of the report pipe, the read end of the
//! lifeline pipe, and, when the request says so, the job's cgroup v2 directory (last).
//! In the init they become 0 (`/dev/null`), 1 and 2 (the output pipe), [`FD_SPEC`],
//! [`FD_REPORT`] and [`FD_LIFELINE`]; the cgroup directory is only used by `clone3`.

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
pub const INIT_FDS: usize = 5;

/// One init's descriptors (`T` is a borrowed or owned descriptor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitFds<T> {
    pub devnull: T,
    pub output: T,
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
            self.devnull,
            self.output,
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
                why: "five descriptors, and the cgroup's when the request names one",
            });
        }
        let mut it = v.into_iter();
        let mut next = || it.next().expect("length checked");
        Ok(InitFds {
            devnull: next(),
            output: next(),
            spec: next(),
            report: next(),
            lifeline: next(),
            cgroup: into_cgroup.then(next),
        })
    }

    /// Applies `f` to every descriptor, stopping at the first error.
    pub fn try_map<U, E>(&self, mut f: impl FnMut(&T) -> Result<U, E>) -> Result<InitFds<U>, E> {
        Ok(InitFds {
            devnull: f(&self.devnull)?,
            output: f(&self.output)?,
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
            (&self.devnull, 0),
            (&self.output, 1),
            (&self.output, 2),
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
        for cgroup in [None, Some(6)] {
            let fds = InitFds {
                devnull: 1,
                output: 2,
                spec: 3,
                report: 4,
                lifeline: 5,
                cgroup,
            };
            let v = fds.clone().into_vec();
            assert_eq!(v[..5], [1, 2, 3, 4, 5]);
            assert_eq!(InitFds::from_vec(v, cgroup.is_some()), Ok(fds));
        }
    }

    #[test]
    fn a_wrong_count_is_refused() {
        for (n, cg) in [(0, false), (4, false), (6, false), (5, true), (7, true)] {
            assert!(InitFds::from_vec(vec![0u8; n], cg).is_err(), "{n} {cg}");
        }
    }

    #[test]
    fn the_init_gets_its_fixed_numbers() {
        let fds = InitFds {
            devnull: "null",
            output: "out",
            spec: "spec",
            report: "report",
            lifeline: "life",
            cgroup: None,
        };
        let placed: Vec<(&str, RawFd)> = fds.placement().iter().map(|(f, n)| (**f, *n)).collect();
        assert_eq!(
            placed,
            [
                ("null", 0),
                ("out", 1),
                ("out", 2),
                ("spec", 3),
                ("report", 4),
                ("life", 5)
            ]
        );
    }
}
