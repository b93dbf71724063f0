//! The README's commands, as a reader would run them. Every ```` ```sh ```` block of
//! README.md is read line by line (a line ending in `\` goes on), and each command is
//! proven one of four ways:
//!
//! - `make TARGET...` (after `sudo` and `VAR=value` words, as for every `make TARGET`
//!   quoted in the text): each target exists and `make -n` accepts it; what it does is
//!   the rest of `make test`;
//! - `apt install ./PATH`: the package `make deb` builds, installed the way the systemd
//!   check (deploy/systemd-vm) installs it;
//! - `systemctl ...`: the very command the systemd check runs;
//! - anything else is run, block by block, by `sh -e` as an ordinary user (`nobody`, not
//!   root, as `make run` intends), from a directory laid out like the checkout after
//!   `JOBWORKER_DEV_USER=... make run` (`dev-pki/`, given to that user as `make run`
//!   gives it, and `target/debug/jobctl`), against a real stack from the test kit.
//!   Only the server's address changes: the block's `export JOBWORKER_SERVER=...` line
//!   gets this stack's.
//!
//! The last needs root (a visible `SKIPPED ... needs root` otherwise).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use jobworker_testkit::process::wait_child;
use jobworker_testkit::pty::Pty;
use jobworker_testkit::{LIMIT, NOBODY, Stack, note, skip_unless_root};

/// The address of `make run`'s default instance, as the README shows it.
const README_SERVER: &str = "https://localhost:50051";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// One command of a block, with the README line it starts on.
#[derive(Debug, Clone)]
struct Line {
    number: usize,
    text: String,
}

/// The ```` ```sh ```` blocks of `readme`, as commands (continuations joined, blank and
/// comment-only lines dropped).
fn sh_blocks(readme: &str) -> Vec<Vec<Line>> {
    let mut blocks = Vec::new();
    let mut block: Option<Vec<Line>> = None;
    let mut pending: Option<Line> = None;
    for (i, raw) in readme.lines().enumerate() {
        let number = i + 1;
        match &mut block {
            None if raw.trim_start() == "```sh" => block = Some(Vec::new()),
            None => {}
            Some(_) if raw.trim_start().starts_with("```") => {
                assert!(
                    pending.is_none(),
                    "README.md:{number}: a block ends with `\\`"
                );
                blocks.push(block.take().expect("open block"));
            }
            Some(lines) => {
                let (text, more) = match raw.strip_suffix('\\') {
                    Some(head) => (head, true),
                    None => (raw, false),
                };
                let line = match pending.take() {
                    Some(mut l) => {
                        l.text.push(' ');
                        l.text.push_str(text.trim());
                        l
                    }
                    None => Line {
                        number,
                        text: text.trim().to_string(),
                    },
                };
                if more {
                    pending = Some(line);
                } else if !line.text.is_empty() && !line.text.starts_with('#') {
                    lines.push(line);
                }
            }
        }
    }
    assert!(block.is_none(), "README.md: a ```sh block is not closed");
    blocks
}

/// The words of a command up to a comment, without a leading `sudo` and `VAR=value`s.
fn command_words(text: &str) -> Vec<&str> {
    let mut words: Vec<&str> = text
        .split_whitespace()
        .take_while(|w| !w.starts_with('#'))
        .collect();
    if words.first() == Some(&"sudo") {
        words.remove(0);
    }
    let assignments = words
        .iter()
        .take_while(|w| {
            w.split_once('=').is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c == '_' || c.is_ascii_alphanumeric())
            })
        })
        .count();
    // `export X=...` is a command of its own; a bare `X=... make` is not.
    if words.get(assignments).is_some_and(|w| *w == "make") {
        words.drain(..assignments);
    }
    words
}

enum Kind {
    Make(Vec<String>),
    AptInstall(String),
    Systemctl(String),
    Run,
}

fn kind(line: &Line) -> Kind {
    let words = command_words(&line.text);
    match words.first().copied() {
        Some("make") => Kind::Make(
            words[1..]
                .iter()
                .filter(|w| !w.starts_with('-') && !w.contains('='))
                .map(|w| w.to_string())
                .collect(),
        ),
        Some("apt") | Some("apt-get") if words.get(1) == Some(&"install") => Kind::AptInstall(
            words[2..]
                .iter()
                .find(|w| !w.starts_with('-'))
                .unwrap_or_else(|| panic!("README.md:{}: apt install of nothing", line.number))
                .to_string(),
        ),
        Some("systemctl") => Kind::Systemctl(words.join(" ")),
        _ => Kind::Run,
    }
}

/// Every `make TARGET` the README names: in its blocks, and quoted in its text.
fn make_targets(readme: &str) -> Vec<(usize, String)> {
    let mut targets = Vec::new();
    for line in sh_blocks(readme).iter().flatten() {
        if let Kind::Make(t) = kind(line) {
            assert!(
                !t.is_empty(),
                "README.md:{}: make without a target",
                line.number
            );
            targets.extend(t.into_iter().map(|t| (line.number, t)));
        }
    }
    for (i, text) in readme.lines().enumerate() {
        for quoted in text.split('`').skip(1).step_by(2) {
            let words = command_words(quoted);
            if words.first() == Some(&"make") {
                for w in &words[1..] {
                    if !w.starts_with('-') && !w.contains('=') {
                        targets.push((i + 1, w.to_string()));
                    }
                }
            }
        }
    }
    targets
}

#[test]
fn readme_make_targets_exist() {
    let readme = read(&repo().join("README.md"));
    let targets = make_targets(&readme);
    assert!(
        targets.iter().any(|(_, t)| t == "run") && targets.iter().any(|(_, t)| t == "test"),
        "the README shows make run and make test: {targets:?}"
    );
    for (number, target) in &targets {
        let out = Command::new("make")
            .args(["-n", "-s", target])
            .current_dir(repo())
            .stdin(Stdio::null())
            .output()
            .expect("running make -n");
        assert!(
            out.status.success(),
            "README.md:{number}: `make {target}`: make -n fails: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn readme_package_and_systemd_commands_are_those_the_systemd_check_runs() {
    let readme = read(&repo().join("README.md"));
    let makefile = read(&repo().join("Makefile"));
    let guest = read(&repo().join("deploy/systemd-vm/guest-check.sh"));
    let deb_dir = makefile
        .lines()
        .find_map(|l| l.strip_prefix("DEB_DIR"))
        .and_then(|l| l.split_once("?="))
        .map(|(_, v)| v.trim().to_string())
        .expect("DEB_DIR in the Makefile");
    let mut seen = 0;
    for line in sh_blocks(&readme).iter().flatten() {
        match kind(line) {
            Kind::AptInstall(path) => {
                assert_eq!(
                    path,
                    format!("./{deb_dir}/jobworker_*.deb"),
                    "README.md:{}: apt install of what make deb builds",
                    line.number
                );
                assert!(
                    guest.contains("install -y ./jobworker_*.deb"),
                    "the systemd check installs with apt install ./jobworker_*.deb"
                );
                seen += 1;
            }
            Kind::Systemctl(command) => {
                assert!(
                    guest.contains(&command),
                    "README.md:{}: `{command}` is not what the systemd check runs",
                    line.number
                );
                seen += 1;
            }
            _ => {}
        }
    }
    assert!(
        seen >= 2,
        "the README shows installing the package and enabling the units"
    );
}

/// Copies `src` to `dst` (by cp: no descriptor of this process stays open for writing on
/// a binary another thread's child may execute) and gives it to `nobody`.
fn copy_for_nobody(src: &Path, dst: &Path) {
    let st = Command::new("cp")
        .arg(src)
        .arg(dst)
        .status()
        .expect("running cp");
    assert!(st.success(), "cp {} {}", src.display(), dst.display());
    std::os::unix::fs::chown(dst, Some(NOBODY), Some(NOBODY)).expect("chown");
}

fn dir_for_nobody(path: &Path) {
    std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).expect("chown");
}

/// Whether a command opens a shell at the terminal (`jobctl run -it -- sh`, `jobctl exec
/// -it ID -- sh`): the reader types `exit` at its prompt.
fn opens_a_shell(line: &Line) -> bool {
    let words = command_words(&line.text);
    words.contains(&"-it") && words.ends_with(&["--", "sh"])
}

/// The prompt of a shell in a job (`sh` is dash, and a job is never root).
const PROMPT: &str = "$ ";

#[test]
fn readme_commands_run_as_written() {
    if skip_unless_root("readme_commands_run_as_written") {
        return;
    }
    let readme = read(&repo().join("README.md"));
    let blocks: Vec<Vec<Line>> = sh_blocks(&readme)
        .into_iter()
        .map(|b| {
            b.into_iter()
                .filter(|l| matches!(kind(l), Kind::Run))
                .collect()
        })
        .filter(|b: &Vec<Line>| !b.is_empty())
        .collect();
    assert!(!blocks.is_empty(), "the README has commands to run");

    let stack = Stack::dev("readme");
    // The checkout after `JOBWORKER_DEV_USER=... make run`: dev-pki/ given to the user,
    // and jobctl.
    let checkout = stack.scratch.join("checkout");
    dir_for_nobody(&checkout.join("dev-pki"));
    dir_for_nobody(&checkout.join("target/debug"));
    let home = stack.scratch.join("home-nobody");
    dir_for_nobody(&home);
    for entry in std::fs::read_dir(stack.pki.dir.path.clone()).expect("the PKI") {
        let src = entry.expect("a PKI file").path();
        copy_for_nobody(
            &src,
            &checkout.join("dev-pki").join(src.file_name().unwrap()),
        );
    }
    copy_for_nobody(
        &jobworker_testkit::bins::installed("jobctl"),
        &checkout.join("target/debug/jobctl"),
    );

    for block in &blocks {
        let first = block[0].number;
        let lines: Vec<&str> = block.iter().map(|l| l.text.as_str()).collect();
        let server_line = format!("export JOBWORKER_SERVER={README_SERVER}");
        assert!(
            lines.iter().any(|l| l.starts_with(&server_line)),
            "README.md:{first}: a block of jobctl commands says which server: `{server_line}`"
        );
        let mut script = format!("cd '{}'\n", checkout.display());
        for l in &lines {
            script.push_str(&l.replacen(README_SERVER, &stack.api.url(), 1));
            script.push('\n');
        }
        // At a terminal of its own, as a reader runs them, typing `exit` in each shell.
        let mut pty = Pty::new(24, 80);
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .args(["sh", "-e", "-x", "-c", &script])
            .env("HOME", &home)
            .env("PATH", "/usr/bin:/bin")
            .env("TERM", "xterm");
        let mut child = pty.spawn(&cmd);
        let shells = block.iter().filter(|l| opens_a_shell(l)).count();
        for n in 1..=shells {
            pty.wait_for_nth(PROMPT, n, LIMIT);
            pty.type_bytes(b"exit\r");
        }
        let status = wait_child(&mut child, LIMIT).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "README.md:{first}: the block did not end within {LIMIT:?}:\n{}",
                pty.seen()
            )
        });
        let seen = pty.seen().replace('\r', "");
        assert!(
            status.success(),
            "README.md:{first}: the block failed ({status}) at its last `+` line:\n{seen}"
        );
        assert!(
            !seen.lines().any(|l| l.starts_with("jobctl: ")),
            "README.md:{first}: jobctl complained:\n{seen}"
        );
        if script.contains("echo hello from") {
            assert!(
                seen.contains("hello from"),
                "README.md:{first}: the job's greeting:\n{seen}"
            );
        }
        note(&format!(
            "readme: block at README.md:{first}: {} commands ran, {shells} shells at a terminal",
            lines.len()
        ));
    }
}
