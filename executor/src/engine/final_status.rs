//! The final-status rule: how a job's end is told from what its init reported, how the
//! init itself ended, whether a stop was asked for, and the cgroup's usage figures. Pure
//! (no I/O, no clock), so every combination is a row of the table below.

use jobworker_protocol::{JobState, JobStatus, StartFailure};

use crate::cgroup::Usage;
use crate::ipc::report::{Failure, Report};
use crate::sys::Exit;

/// What the supervisor knows once everything of a job has ended.
#[derive(Debug, Clone, Default)]
pub struct Ending {
    /// Everything the init reported, in order.
    pub reports: Vec<Report>,
    /// How the init ended (`None`: it could not be supervised to its end).
    pub init_exit: Option<Exit>,
    /// A stop (or the executor's shutdown) asked the job to end.
    pub stop_requested: bool,
    /// The job's deadline passed and ended it.
    pub timed_out: bool,
}

impl Ending {
    /// The first failure the init reported.
    fn failure(&self) -> Option<&Failure> {
        self.reports.iter().find_map(|r| match r {
            Report::Failed(why) => Some(why),
            _ => None,
        })
    }

    fn started(&self) -> bool {
        self.reports.contains(&Report::Started)
    }

    /// The command's exit as the init reported it, or else the init's own.
    fn command_exit(&self) -> Option<Exit> {
        self.reports
            .iter()
            .find_map(|r| match r {
                Report::Exited(e) => Some(*e),
                _ => None,
            })
            .or(self.init_exit)
    }
}

/// The answer a waiting `start` gets when the job ended before the init said whether the
/// command started: `Ok` if it did, otherwise why not.
pub fn start_result(end: &Ending) -> Result<(), Failure> {
    if end.started() {
        return Ok(());
    }
    if let Some(why) = end.failure() {
        return Err(why.clone());
    }
    let message = match end.init_exit {
        Some(Exit::Code(c)) => {
            format!("the job init exited with status {c} before starting the command")
        }
        Some(Exit::Signal(s)) => {
            format!("the job init was killed by signal {s} before starting the command")
        }
        None => "the job init could not be supervised".into(),
    };
    Err(Failure {
        kind: StartFailure::Other,
        message,
    })
}

/// The job's final status: `running` (its status while it ran) with the end filled in.
pub fn final_status(
    mut running: JobStatus,
    end: &Ending,
    usage: &Usage,
    ended_at_ms: u64,
) -> JobStatus {
    let s = &mut running;
    s.ended_at_ms = Some(ended_at_ms);
    s.cpu_usec = usage.cpu_usec;
    s.peak_memory_bytes = usage.peak_memory_bytes;
    s.oom_killed = usage.oom_killed;
    if let Some(why) = end.failure() {
        s.state = JobState::FailedToStart;
        s.error = Some(why.message.clone());
        s.start_failure = Some(why.kind);
        return running;
    }
    if !end.started() {
        s.state = JobState::FailedToStart;
        s.error = Some("the job init ended before starting the command".into());
        s.start_failure = Some(StartFailure::Other);
        return running;
    }
    let exit = end.command_exit();
    s.state = match exit {
        _ if end.timed_out => JobState::TimedOut,
        _ if end.stop_requested => JobState::Stopped,
        Some(Exit::Code(_)) => JobState::Exited,
        _ => JobState::Signaled,
    };
    match exit {
        Some(Exit::Code(c)) => s.exit_code = Some(c),
        Some(Exit::Signal(sig)) => s.signal = Some(sig),
        None => {}
    }
    running
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobworker_protocol::{JobId, Limits};

    fn running() -> JobStatus {
        JobStatus {
            id: JobId::from_bytes([7; 16]),
            owner: "alice".into(),
            argv: vec!["true".into()],
            limits: Limits::default(),
            state: JobState::Running,
            exit_code: None,
            signal: None,
            oom_killed: false,
            error: None,
            started_at_ms: 1,
            ended_at_ms: None,
            cpu_usec: None,
            peak_memory_bytes: None,
            output_bytes: 5,
            output_truncated: false,
            uid: Some(600_001),
            start_failure: None,
            name: None,
            labels: vec![],
        }
    }

    const STARTED: Report = Report::Started;

    fn exited(c: i32) -> Report {
        Report::Exited(Exit::Code(c))
    }

    fn killed(s: i32) -> Report {
        Report::Exited(Exit::Signal(s))
    }

    fn failed(why: &str) -> Report {
        Report::Failed(failure(why))
    }

    fn failure(why: &str) -> Failure {
        let kind = if why.starts_with("command not found") {
            StartFailure::NotFound
        } else {
            StartFailure::Other
        };
        Failure {
            kind,
            message: why.into(),
        }
    }

    /// (what, reports, init exit, stop requested, timed out) → (state, exit code, signal,
    /// error).
    #[test]
    fn every_ending_has_one_final_state() {
        use JobState::*;
        let not_started = "the job init ended before starting the command";
        type Row<'a> = (
            &'a str,
            Vec<Report>,
            Option<Exit>,
            (bool, bool),
            (JobState, Option<i32>, Option<i32>, Option<&'a str>),
        );
        #[rustfmt::skip]
        let rows: Vec<Row<'_>> = vec![
            ("exit 0", vec![STARTED, exited(0)], Some(Exit::Code(0)), (false, false), (Exited, Some(0), None, None)),
            ("exit 3", vec![STARTED, exited(3)], Some(Exit::Code(3)), (false, false), (Exited, Some(3), None, None)),
            ("killed by a signal", vec![STARTED, killed(9)], Some(Exit::Code(137)), (false, false), (Signaled, None, Some(9), None)),
            // The init's own exit stands in when the command's was never reported.
            ("init exit only", vec![STARTED], Some(Exit::Code(4)), (false, false), (Exited, Some(4), None, None)),
            ("init killed, no report", vec![STARTED], Some(Exit::Signal(9)), (false, false), (Signaled, None, Some(9), None)),
            ("nothing known after the start", vec![STARTED], None, (false, false), (Signaled, None, None, None)),
            ("stopped, command exited", vec![STARTED, exited(0)], Some(Exit::Code(0)), (true, false), (Stopped, Some(0), None, None)),
            ("stopped by SIGTERM", vec![STARTED, killed(15)], Some(Exit::Code(143)), (true, false), (Stopped, None, Some(15), None)),
            ("stopped, init killed", vec![STARTED], Some(Exit::Signal(9)), (true, false), (Stopped, None, Some(9), None)),
            ("stopped, nothing known", vec![STARTED], None, (true, false), (Stopped, None, None, None)),
            ("timed out, ended by SIGTERM", vec![STARTED, killed(15)], Some(Exit::Code(143)), (false, true), (TimedOut, None, Some(15), None)),
            ("timed out, exited on SIGTERM", vec![STARTED, exited(0)], Some(Exit::Code(0)), (false, true), (TimedOut, Some(0), None, None)),
            ("timed out, then stopped too", vec![STARTED, killed(9)], Some(Exit::Signal(9)), (true, true), (TimedOut, None, Some(9), None)),
            ("command not found", vec![failed("command not found: \"nope\"")], Some(Exit::Code(127)), (false, false), (FailedToStart, None, None, Some("command not found: \"nope\""))),
            ("a failure wins over a start", vec![STARTED, failed("late")], Some(Exit::Code(127)), (false, false), (FailedToStart, None, None, Some("late"))),
            ("the first failure is kept", vec![failed("one"), failed("two")], Some(Exit::Code(127)), (true, false), (FailedToStart, None, None, Some("one"))),
            ("init ended before the start", vec![], Some(Exit::Code(125)), (false, false), (FailedToStart, None, None, Some(not_started))),
            ("init killed before the start", vec![], Some(Exit::Signal(9)), (true, false), (FailedToStart, None, None, Some(not_started))),
            ("timed out before the start", vec![], Some(Exit::Signal(9)), (false, true), (FailedToStart, None, None, Some(not_started))),
            ("init never supervised", vec![], None, (false, false), (FailedToStart, None, None, Some(not_started))),
        ];
        for (what, reports, init_exit, (stop_requested, timed_out), (state, code, signal, error)) in
            rows
        {
            let end = Ending {
                reports,
                init_exit,
                stop_requested,
                timed_out,
            };
            let s = final_status(running(), &end, &Usage::default(), 9);
            assert_eq!(
                (s.state, s.exit_code, s.signal, s.error.as_deref()),
                (state, code, signal, error),
                "{what}"
            );
            assert_eq!(s.ended_at_ms, Some(9), "{what}");
            assert_eq!(s.output_bytes, 5, "{what}: the running figures are kept");
            let kind = error.map(|e| failure(e).kind);
            assert_eq!(s.start_failure, kind, "{what}");
        }
    }

    #[test]
    fn usage_is_carried_whatever_the_state() {
        let usage = Usage {
            cpu_usec: Some(1500),
            peak_memory_bytes: Some(4096),
            oom_killed: true,
        };
        for reports in [vec![STARTED, killed(9)], vec![failed("no")], vec![]] {
            let end = Ending {
                reports,
                ..Default::default()
            };
            let s = final_status(running(), &end, &usage, 2);
            assert_eq!(
                (s.cpu_usec, s.peak_memory_bytes, s.oom_killed),
                (Some(1500), Some(4096), true)
            );
        }
    }

    #[test]
    fn a_start_that_never_happened_says_why() {
        let cases = [
            (vec![STARTED], Some(Exit::Code(1)), Ok(())),
            (
                vec![failed("mounting /proc: EPERM")],
                Some(Exit::Code(127)),
                Err(failure("mounting /proc: EPERM")),
            ),
            (
                vec![],
                Some(Exit::Code(125)),
                Err(failure(
                    "the job init exited with status 125 before starting the command",
                )),
            ),
            (
                vec![],
                Some(Exit::Signal(9)),
                Err(failure(
                    "the job init was killed by signal 9 before starting the command",
                )),
            ),
            (
                vec![],
                None,
                Err(failure("the job init could not be supervised")),
            ),
        ];
        for (reports, init_exit, want) in cases {
            let end = Ending {
                reports,
                init_exit,
                ..Default::default()
            };
            assert_eq!(start_result(&end), want);
        }
    }
}
