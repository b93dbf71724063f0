//! A daemon's output, line by line: kept in a file (for a failing test's tail and a look
//! afterwards) and offered to waits, which wake on each new line, never on a timer.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, LineWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Lines read so far and not yet passed by a [`Log::wait_for`].
#[derive(Default)]
struct Lines {
    pending: VecDeque<String>,
    /// Every line read so far, consumed or not: what [`Log::wait_until`] watches.
    seen: u64,
    /// The pipe has reached its end (the process closed it or exited).
    ended: bool,
}

#[derive(Default)]
struct Shared {
    lines: Mutex<Lines>,
    more: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Lines> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the next line (or the end of the pipe) until `deadline`; `None` once
    /// the deadline has passed.
    fn wait<'a>(
        &self,
        lines: MutexGuard<'a, Lines>,
        deadline: Instant,
    ) -> Option<MutexGuard<'a, Lines>> {
        let left = deadline.checked_duration_since(Instant::now())?;
        let (lines, timeout) = self
            .more
            .wait_timeout(lines, left)
            .unwrap_or_else(|e| e.into_inner());
        (!timeout.timed_out()).then_some(lines)
    }
}

/// The lines of one pipe of a process (its stderr, say). A thread reads them as they
/// come, so the process never blocks on a full pipe, appends each to a file and queues
/// it for the waits.
pub struct Log {
    name: String,
    path: PathBuf,
    shared: Arc<Shared>,
}

impl Log {
    /// Starts reading `pipe`, appending its lines to `file` (created if missing).
    pub fn tap(name: &str, pipe: impl Read + Send + 'static, file: &Path) -> Log {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .unwrap_or_else(|e| panic!("opening {}: {e}", file.display()));
        let shared = Arc::new(Shared::default());
        let reader = shared.clone();
        std::thread::Builder::new()
            .name(format!("{name} log"))
            .spawn(move || read_lines(pipe, LineWriter::new(out), &reader))
            .expect("starting a log reader");
        Log {
            name: name.to_owned(),
            path: file.to_owned(),
            shared,
        }
    }

    /// The file the lines go to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next line containing `needle`, or `None` if none comes within `within` or the
    /// pipe ends first. Lines before it are passed: a later wait sees only newer ones.
    pub fn next_with(&self, needle: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        let mut lines = self.shared.lock();
        loop {
            while let Some(line) = lines.pending.pop_front() {
                if line.contains(needle) {
                    return Some(line);
                }
            }
            if lines.ended {
                return None;
            }
            lines = self.shared.wait(lines, deadline)?;
        }
    }

    /// The next line containing `needle`; panics if none comes within `within`.
    pub fn wait_for(&self, needle: &str, within: Duration) -> String {
        self.next_with(needle, within).unwrap_or_else(|| {
            panic!(
                "no {} log line containing {needle:?} within {within:?} ({})",
                self.name,
                self.path.display()
            )
        })
    }

    /// Waits until a line containing each of `needles` has come, in any order; panics
    /// if they have not all come within `within`. Lines up to the last of them are
    /// passed.
    pub fn wait_for_all(&self, needles: &[String], within: Duration) {
        let deadline = Instant::now() + within;
        let mut missing: Vec<&String> = needles.iter().collect();
        let mut lines = self.shared.lock();
        while !missing.is_empty() {
            if let Some(line) = lines.pending.pop_front() {
                missing.retain(|n| !line.contains(n.as_str()));
                continue;
            }
            let next = (!lines.ended).then(|| self.shared.wait(lines, deadline));
            lines = next.flatten().unwrap_or_else(|| {
                panic!(
                    "no {} log line containing {} of {needles:?} within {within:?}, e.g. {:?} ({})",
                    self.name,
                    missing.len(),
                    missing[0],
                    self.path.display()
                )
            });
        }
    }

    /// Re-checks `condition` each time a line comes (lines are not passed), until it
    /// holds; false if it still does not when `within` is over or the pipe has ended.
    /// For a state the process changes before it logs that it did: the line is the
    /// event, the check reads the state.
    pub fn wait_until(&self, within: Duration, mut condition: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.shared.lock().seen;
            if condition() {
                return true;
            }
            let mut lines = self.shared.lock();
            while lines.seen == seen {
                if lines.ended {
                    drop(lines);
                    return condition();
                }
                match self.shared.wait(lines, deadline) {
                    Some(more) => lines = more,
                    None => return condition(),
                }
            }
        }
    }

    /// Passes every line read so far: a later wait sees only newer ones.
    pub fn drain(&self) {
        self.shared.lock().pending.clear();
    }
}

fn read_lines(pipe: impl Read, mut out: impl Write, shared: &Shared) {
    let mut pipe = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match pipe.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let _ = out.write_all(&buf);
        let line = String::from_utf8_lossy(&buf)
            .trim_end_matches('\n')
            .to_owned();
        let mut lines = shared.lock();
        lines.pending.push_back(line);
        lines.seen += 1;
        drop(lines);
        shared.more.notify_all();
    }
    let _ = out.flush();
    shared.lock().ended = true;
    shared.more.notify_all();
}

/// The last `n` lines of a file (all of it if shorter; none if it cannot be read).
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::env::LIMIT;
    use crate::scratch::Scratch;

    /// A log of `text`, read to its end.
    fn log_of(text: &'static [u8]) -> (Log, Scratch) {
        let dir = Scratch::new("log-test");
        let log = Log::tap("test", text, &dir.join("test.log"));
        (log, dir)
    }

    #[test]
    fn a_wait_passes_the_lines_before_its_match() {
        let (log, _dir) = log_of(b"a 1\nb 2\na 3\n");
        assert_eq!(log.wait_for("a", LIMIT), "a 1");
        assert_eq!(log.wait_for("a", LIMIT), "a 3");
        assert_eq!(log.next_with("b", LIMIT), None, "b 2 was passed");
    }

    #[test]
    fn lines_awaited_together_may_come_in_any_order() {
        let (log, _dir) = log_of(b"job=2\nother\njob=1\nafter\n");
        log.wait_for_all(&["job=1".into(), "job=2".into()], LIMIT);
        assert_eq!(log.wait_for("", LIMIT), "after");
    }

    #[test]
    fn every_line_reaches_the_file_even_without_a_newline() {
        let (log, dir) = log_of(b"one\n\xfftwo\nthree");
        assert_eq!(log.next_with("nothing like this", LIMIT), None);
        assert_eq!(
            std::fs::read(dir.join("test.log")).unwrap(),
            b"one\n\xfftwo\nthree"
        );
        assert_eq!(tail(&dir.join("test.log"), 2), ["\u{fffd}two", "three"]);
    }

    #[test]
    fn a_condition_is_checked_again_on_each_line() {
        let dir = Scratch::new("log-test");
        let (mut writer, reader) = UnixStream::pair().unwrap();
        let log = Log::tap("test", reader, &dir.join("test.log"));
        let state = std::sync::Arc::new(AtomicUsize::new(0));
        let changer = state.clone();
        let lines = std::thread::spawn(move || {
            for n in 1..=3 {
                // The state changes, then the line says so (as the executor does).
                changer.store(n, Ordering::SeqCst);
                writeln!(writer, "changed to {n}").unwrap();
            }
            writer
        });
        assert!(log.wait_until(LIMIT, || state.load(Ordering::SeqCst) == 3));
        drop(lines.join().unwrap());
        assert!(!log.wait_until(LIMIT, || false), "the pipe ended");
    }
}
