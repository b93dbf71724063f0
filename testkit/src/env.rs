//! Who runs the tests, and what a test may print while it passes.

use std::io::Write;
use std::time::Duration;

/// The failure bound of every wait: a deadline that only ends a test that has already
/// failed, never a pause a passing test sits through.
pub const LIMIT: Duration = Duration::from_secs(60);

/// The unprivileged account the API server runs as when the tests run as root (and the
/// default job user, `nobody`).
pub const NOBODY: u32 = 65534;

/// Whether this process runs with effective uid 0 (from `/proc/self/status`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Prints a line the test harness does not capture, so that it shows in a passing run
/// too: one write to the stderr handle (not `eprintln!`, which the harness captures), so
/// that parallel tests' lines do not interleave.
pub fn note(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// True, after printing a visible `SKIPPED <test>: needs root` line, when the test needs
/// root and this process is not root. Use as `if skip_unless_root("name") { return; }`.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    note(&format!("SKIPPED {test}: needs root"));
    true
}

/// The user jobs run as: `JOBWORKER_TEST_JOB_USER`, default `nobody`.
pub fn job_user() -> String {
    std::env::var("JOBWORKER_TEST_JOB_USER").unwrap_or_else(|_| "nobody".into())
}

/// The numeric uid and gid of the job user, from `/etc/passwd`.
pub fn job_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("reading /etc/passwd");
    let user = job_user();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == user).then(|| (f[2].parse().unwrap(), f[3].parse().unwrap()))
        })
        .unwrap_or_else(|| panic!("no user {user} in /etc/passwd"))
}
