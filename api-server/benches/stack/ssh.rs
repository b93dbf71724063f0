//! The baseline users would otherwise pick: ssh. A private `sshd` on a loopback port,
//! with a host key and a client key made for the run, so `ssh host CMD` can be measured
//! next to `jobctl run -- CMD` in the same run: a command's round trip, a bulk stream
//! (`head -c N /dev/zero`), and one keystroke through a terminal (`ssh -tt host cat`).
//!
//! Its files live in a scratch directory of the run; it is stopped (by pid) when
//! dropped. It runs as root, with root logging in by key only.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running private sshd and what a client needs to reach it.
pub struct Sshd {
    child: Child,
    port: u16,
    dir: PathBuf,
}

/// Where Debian's openssh-server puts the daemon.
const SSHD: &str = "/usr/sbin/sshd";

impl Sshd {
    /// Starts it; `None` (with the reason printed) when the machine has no sshd.
    pub fn start(dir: &Path) -> anyhow::Result<Option<Sshd>> {
        if !Path::new(SSHD).exists() {
            println!("ssh baseline: {SSHD} is missing (make bench-deps installs openssh-server)");
            return Ok(None);
        }
        std::fs::create_dir_all(dir)?;
        let keygen = |file: &str| -> anyhow::Result<()> {
            let path = dir.join(file);
            let _ = std::fs::remove_file(&path);
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&path)
                .stdout(Stdio::null())
                .status()?;
            if !st.success() {
                bail!("ssh-keygen {file}: {st}");
            }
            Ok(())
        };
        keygen("host_key")?;
        keygen("client_key")?;
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys"))?;
        // A free port on loopback (the listener is closed just before sshd binds it).
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nPidFile {pid}\n\
             AuthorizedKeysFile {keys}\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nPrintMotd no\nPrintLastLog no\nUseDNS no\nSubsystem sftp internal-sftp\n",
            host = dir.join("host_key").display(),
            pid = dir.join("sshd.pid").display(),
            keys = dir.join("authorized_keys").display(),
        );
        std::fs::write(dir.join("sshd_config"), config)?;
        // sshd wants its privilege-separation directory.
        std::fs::create_dir_all("/run/sshd")?;
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("sshd.log"))?))
            .spawn()
            .context("starting sshd")?;
        let sshd = Sshd {
            child,
            port,
            dir: dir.to_owned(),
        };
        // Ready when a connection succeeds (bounded: 100 tries over 10 s).
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Some(sshd));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "sshd did not listen on port {port}: {}",
            std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
        )
    }

    /// `ssh` to it with the run's client key, no host key checking, batch mode.
    pub fn ssh(&self, tty: bool) -> Command {
        let mut c = Command::new("ssh");
        if tty {
            c.arg("-tt");
        } else {
            c.arg("-T");
        }
        c.args(["-i"])
            .arg(self.dir.join("client_key"))
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-p",
            ])
            .arg(self.port.to_string())
            .arg("root@127.0.0.1");
        c
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pause before each keystroke of [`keystrokes`].
const KEYSTROKE_GAP: Duration = Duration::from_millis(10);

/// Keystroke round trips through a terminal: `cmd` runs under a pseudo-terminal of its
/// own (as a person's shell would run it); each round types one byte and waits until
/// the terminal shows it (copied back by the far side's program). Returns each round trip,
/// in milliseconds, after `warmup` rounds.
pub fn keystrokes(cmd: &Command, rounds: usize, warmup: usize) -> anyhow::Result<Vec<f64>> {
    let pty = jobworker_testkit::pty::Pty::unread(24, 80);
    let cooked = pty.settings();
    let mut master = pty.master_file()?;
    let mut child = pty.spawn(cmd);
    let times = type_rounds(&pty, &cooked, &mut master, rounds, warmup);
    // The far side's program ends after the last keystroke, and with it the session.
    if jobworker_testkit::process::wait_child(&mut child, Duration::from_secs(10)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    times.map_err(|e| anyhow::anyhow!("{:?}: {e}", cmd.get_program()))
}

/// The rounds of [`keystrokes`], on a terminal whose client has started.
fn type_rounds(
    pty: &jobworker_testkit::pty::Pty,
    cooked: &str,
    master: &mut std::fs::File,
    rounds: usize,
    warmup: usize,
) -> anyhow::Result<Vec<f64>> {
    use std::io::{Read, Write};
    // Ready when the client has put this terminal in raw mode (before that, the
    // terminal itself would echo): its settings change. Bounded: 30 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pty.settings() == cooked {
        anyhow::ensure!(
            Instant::now() < deadline,
            "never switched the terminal to raw mode"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Each keystroke is echoed by the far side's program (its terminal is raw, without
    // echo: see scenario 8), once the client has made this one raw. Round k types the k-th letter
    // of the alphabet (cycling) and waits for that letter in what arrives after it was
    // typed, so a late or doubled echo of an earlier round is never taken for this
    // one's. Echoes per keystroke are counted and reported when they are not one each.
    let mut buf = [0u8; 4096];
    let mut times = Vec::new();
    let mut letters = 0usize;
    for round in 0..rounds + warmup {
        let key = b'a' + (round % 26) as u8;
        // A keystroke every 10 ms or so (faster than anyone types): each one finds the
        // processes on both sides asleep, as a person's keystrokes do. Typed back to
        // back, the next one would arrive while they still run.
        std::thread::sleep(KEYSTROKE_GAP);
        let t = Instant::now();
        master.write_all(&[key])?;
        let mut seen = Vec::new();
        loop {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(30),
                "no echo of {:?} within 30 s: {:?}",
                key as char,
                String::from_utf8_lossy(&seen)
            );
            let n = master.read(&mut buf)?;
            seen.extend_from_slice(&buf[..n]);
            if seen.contains(&key) {
                break;
            }
        }
        if round >= warmup {
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            letters += seen.iter().filter(|b| b.is_ascii_lowercase()).count();
        }
    }
    if letters != rounds {
        println!("   note: {letters} letters came back for {rounds} keystrokes");
    }
    Ok(times)
}
