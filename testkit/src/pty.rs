//! A real pseudo-terminal, to run a client in as a person at a terminal does: the client
//! leads a session of its own with the terminal as its controlling one (`setsid
//! --ctty`), and the test types at the master, reads what appears there, resizes it,
//! and reads the terminal's settings (`stty -g`) before and after.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use jobworker_executor::sys;

/// A terminal of the host's devpts, the test at its master.
pub struct Pty {
    master: File,
    tty: OwnedFd,
    /// `/dev/pts/N`.
    pub path: String,
    seen: Arc<(Mutex<Vec<u8>>, Condvar)>,
}

impl Pty {
    /// A new terminal of `rows` by `cols`; everything that appears on it is kept.
    pub fn new(rows: u16, cols: u16) -> Pty {
        Pty::open(rows, cols, true)
    }

    /// A new terminal nothing reads but the caller, through [`Pty::master_file`] (the
    /// benchmark's keystroke round trips); [`Pty::wait_for`] sees nothing on it.
    pub fn unread(rows: u16, cols: u16) -> Pty {
        Pty::open(rows, cols, false)
    }

    /// The master, to read and write it directly.
    pub fn master_file(&self) -> std::io::Result<File> {
        self.master.try_clone()
    }

    fn open(rows: u16, cols: u16, keep: bool) -> Pty {
        let (master, n) = sys::open_pty("/dev/ptmx").expect("opening a pseudo-terminal");
        sys::set_window_size(master.as_fd(), rows, cols).expect("sizing the terminal");
        let path = format!("/dev/pts/{n}");
        let tty: OwnedFd = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {path}: {e}"))
            .into();
        let master = File::from(master);
        let seen = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let mut reader = master.try_clone().expect("the master");
        let kept = seen.clone();
        std::thread::spawn(move || {
            if !keep {
                return;
            }
            let keep = kept;
            let mut buf = [0u8; 4096];
            // EIO once nothing has the terminal open any more (and the test's copy went).
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                let (lock, cv) = &*keep;
                lock.lock().unwrap().extend_from_slice(&buf[..n]);
                cv.notify_all();
            }
        });
        Pty {
            master,
            tty,
            path,
            seen,
        }
    }

    /// Starts `cmd` with the terminal as its stdin, stdout, stderr and controlling
    /// terminal, in a session of its own.
    pub fn spawn(&self, cmd: &Command) -> Child {
        let mut c = Command::new("setsid");
        c.arg("--ctty")
            .arg("--wait")
            .arg(cmd.get_program())
            .args(cmd.get_args());
        c.env_clear();
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("the terminal"));
        c.stdin(stdio(&self.tty))
            .stdout(stdio(&self.tty))
            .stderr(stdio(&self.tty))
            .spawn()
            .expect("spawning under the terminal")
    }

    /// Types `bytes` at the terminal.
    pub fn type_bytes(&mut self, bytes: &[u8]) {
        self.master
            .write_all(bytes)
            .expect("typing at the terminal");
    }

    /// Resizes the terminal (its foreground process group gets SIGWINCH).
    pub fn resize(&self, rows: u16, cols: u16) {
        sys::set_window_size(self.master.as_fd(), rows, cols).expect("resizing the terminal");
    }

    /// Applies `stty` settings (e.g. `-echo`) to the terminal.
    pub fn stty(&self, settings: &[&str]) {
        let out = Command::new("stty")
            .args(settings)
            .stdin(Stdio::from(self.tty.try_clone().expect("the terminal")))
            .output()
            .expect("running stty");
        assert!(out.status.success(), "stty {settings:?}: {out:?}");
    }

    /// The terminal's settings, as `stty -g` prints them.
    pub fn settings(&self) -> String {
        let out = Command::new("stty")
            .arg("-g")
            .stdin(Stdio::from(self.tty.try_clone().expect("the terminal")))
            .output()
            .expect("running stty");
        assert!(out.status.success(), "stty -g: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Waits (at most `within`) until `needle` has appeared on the terminal; returns
    /// everything seen so far.
    pub fn wait_for(&self, needle: &str, within: Duration) -> String {
        self.wait_for_nth(needle, 1, within)
    }

    /// Waits (at most `within`) until `needle` has appeared on the terminal `n` times (a
    /// prompt, once for each shell); returns everything seen so far.
    pub fn wait_for_nth(&self, needle: &str, n: usize, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let (lock, cv) = &*self.seen;
        let mut seen = lock.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&seen).into_owned();
            if text.matches(needle).count() >= n {
                return text;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{needle:?} did not appear {n} times within {within:?}; seen: {text:?}"
            );
            seen = cv.wait_timeout(seen, left).unwrap().0;
        }
    }

    /// Everything seen on the terminal so far.
    pub fn seen(&self) -> String {
        String::from_utf8_lossy(&self.seen.0.lock().unwrap()).into_owned()
    }
}
