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

/// The range of ids the executor gives jobs (its default, `600000-665535`): every job runs
/// as a user and group id of its own from it.
pub const JOB_IDS: std::ops::RangeInclusive<u32> = 600_000..=665_535;
