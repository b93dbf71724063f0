//! A job's input and output as a local process has them, end to end as root: jobctl (a
//! subprocess, under a real pseudo-terminal where it needs one) → the real API server →
//! the real executor → real jobs.
//!
//! - stdout and stderr apart, byte-exact, for followers started before, during and
//!   after the job; a job that opens its own stdout and stderr again;
//! - stdin streamed from jobctl, and bounded when the job does not read it;
//! - terminals: the job's own, its size and resizes, Ctrl-C as a key, jobctl's terminal
//!   restored;
//! - exec: a process in a running job, its namespaces, cgroup and credentials; only
//!   its owner may.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jobworker_testkit::jobctl::{code_of, finish, outcome, sha256};
use jobworker_testkit::process::wait_child;
use jobworker_testkit::pty::Pty;
use jobworker_testkit::{Gate, LIMIT, Stack, noise, probe, skip_unless_root};

fn start(stack: &Stack, user: &str, argv: &[&str]) -> String {
    let out = outcome(stack.jobctl(user).arg("start").arg("--").args(argv));
    assert_eq!(out.code, 0, "start: {}", out.stderr);
    let id = out.stdout_text().trim_end().to_string();
    assert_eq!(id.len(), 32, "{id:?}");
    id
}

/// Runs `cmd` with its stdout and stderr into files of `dir` named after `name`; returns
/// its exit code and both files' bytes.
fn run_to_files(cmd: &mut Command, dir: &Path, name: &str) -> (i32, Vec<u8>, Vec<u8>) {
    let out = dir.join(format!("{name}.out"));
    let err = dir.join(format!("{name}.err"));
    let mut child = cmd
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let status = wait_child(&mut child, LIMIT).expect("jobctl ended in time");
    (
        code_of(status),
        std::fs::read(out).unwrap(),
        std::fs::read(err).unwrap(),
    )
}

const TEN_MIB: usize = 10 << 20;

#[test]
fn stdout_and_stderr_stay_apart_byte_exact_for_every_follower() {
    if skip_unless_root("stdout_and_stderr_stay_apart_byte_exact_for_every_follower") {
        return;
    }
    let stack = Stack::dev("streams");
    let dir = stack.scratch.writable("out");
    let (want_out, want_err) = (noise(1, TEN_MIB), noise(2, TEN_MIB));
    let mut gate = Gate::new();
    let total = TEN_MIB.to_string();
    let id = start(
        &stack,
        "alice",
        &[&probe(), "streams", &total, &gate.path.to_string_lossy()],
    );
    let follow = |name: &str| {
        let mut cmd = stack.jobctl("alice");
        cmd.args(["logs", "-f", &id])
            .stdout(File::create(dir.join(format!("{name}.out"))).unwrap())
            .stderr(File::create(dir.join(format!("{name}.err"))).unwrap());
        cmd.spawn().unwrap()
    };
    // Before: the job has written nothing yet.
    let before = follow("before");
    gate.open();
    // During: once the first half of both streams is stored.
    let status = || {
        let out = outcome(stack.jobctl("alice").args(["status", "-o", "json", &id]));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let half = TEN_MIB as u64; // half of each of the two streams
    let reached = jobworker_testkit::process::poll_until(LIMIT, || {
        status()["output_bytes"].as_u64().unwrap_or(0) >= half
    });
    assert!(reached, "the job's first half did not arrive");
    let during = follow("during");
    gate.open();
    for (name, mut child) in [("before", before), ("during", during)] {
        let st = wait_child(&mut child, LIMIT).expect("the follower ended");
        assert_eq!(code_of(st), 0, "{name}");
    }
    // After: the job has ended.
    let (code, _, _) = run_to_files(stack.jobctl("alice").args(["logs", &id]), &dir, "after");
    assert_eq!(code, 0);
    for name in ["before", "during", "after"] {
        let out = std::fs::read(dir.join(format!("{name}.out"))).unwrap();
        let err = std::fs::read(dir.join(format!("{name}.err"))).unwrap();
        assert_eq!(out.len(), TEN_MIB, "{name}: stdout");
        assert!(out == want_out, "{name}: stdout differs");
        assert_eq!(err.len(), TEN_MIB, "{name}: stderr");
        assert!(err == want_err, "{name}: stderr differs");
    }
    // One stream alone, and the last lines of one.
    let (_, out, err) = run_to_files(
        stack
            .jobctl("alice")
            .args(["logs", "--stream", "stderr", &id]),
        &dir,
        "stderr-only",
    );
    assert!(out.is_empty() && err == want_err);

    // `run`, its stderr thrown away: only stderr goes.
    let small = (256 * 1024).to_string();
    let (code, out, err) = run_to_files(
        stack
            .jobctl("alice")
            .args(["run", "--", &probe(), "streams", &small])
            .stderr(Stdio::null()),
        &dir,
        "run",
    );
    assert_eq!(code, 0);
    assert!(out == noise(1, 256 * 1024), "run: stdout");
    let _ = err;
    let out =
        outcome(
            stack
                .jobctl("alice")
                .args(["run", "--", "sh", "-c", "echo out; echo err >&2"]),
        );
    assert_eq!((out.code, out.stdout_text().as_str()), (0, "out\n"));
    assert_eq!(out.stderr, "err\n");
}

#[test]
fn a_job_opens_its_own_stdout_and_stderr_again() {
    if skip_unless_root("a_job_opens_its_own_stdout_and_stderr_again") {
        return;
    }
    let stack = Stack::dev("reopen");
    let script = "echo out > /dev/stdout && echo err > /dev/stderr \
                  && echo fd1 > /proc/self/fd/1 && echo both | tee /dev/stderr";
    let out = outcome(
        stack
            .jobctl("alice")
            .args(["run", "--", "sh", "-c", script]),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout_text(), "out\nfd1\nboth\n");
    assert_eq!(out.stderr, "err\nboth\n");
    // And its stdin, when it reads one.
    let mut child = stack
        .jobctl("alice")
        .args(["run", "-i", "--", "sh", "-c", "cat /dev/stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"typed\n").unwrap();
    let out = finish(&mut child);
    assert_eq!(
        (out.code, out.stdout_text().as_str()),
        (0, "typed\n"),
        "{}",
        out.stderr
    );
}

#[test]
fn stdin_streams_100_mib_and_a_job_that_never_reads_it_holds_it_back() {
    if skip_unless_root("stdin_streams_100_mib_and_a_job_that_never_reads_it_holds_it_back") {
        return;
    }
    let stack = Stack::dev("stdin");
    let dir = stack.scratch.writable("in");
    let input = dir.join("input");
    let mut data = Vec::new();
    File::open("/dev/urandom")
        .unwrap()
        .take(100 << 20)
        .read_to_end(&mut data)
        .unwrap();
    std::fs::write(&input, &data).unwrap();
    let out = outcome(
        stack
            .jobctl("alice")
            .args(["run", "-i", "--", "sha256sum"])
            .stdin(File::open(&input).unwrap()),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout_text(), format!("{}  -\n", sha256(&data)));

    // Without -i, the job's stdin is /dev/null, whatever jobctl's is.
    let out = outcome(
        stack
            .jobctl("alice")
            .args(["run", "--", "wc", "-c"])
            .stdin(File::open(&input).unwrap()),
    );
    assert_eq!(out.stdout_text(), "0\n");

    // A job that never reads: what jobctl can push stops at the buffers on the way (a
    // few MiB), and the daemons' memory does not grow with what is offered.
    let rss = |pid: u32| jobworker_testkit::procfs::rss(pid).0 >> 10;
    let (api0, exec0) = (rss(stack.api.pid()), rss(stack.exec.pid()));
    let mut child = stack
        .jobctl("alice")
        .args(["run", "-i", "--", "sleep", "600"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let offered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = offered.clone();
    let writer = std::thread::spawn(move || {
        let block = vec![7u8; 64 * 1024];
        // Up to 256 MiB; it blocks long before that if nothing piles up.
        for _ in 0..4096 {
            if stdin.write_all(&block).is_err() {
                return;
            }
            count.fetch_add(block.len(), std::sync::atomic::Ordering::SeqCst);
        }
    });
    // The writer either finishes (everything piled up somewhere: the failure) or
    // blocks; give it the time it would need to push 256 MiB through loopback.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !writer.is_finished() && Instant::now() < deadline {
        std::thread::park_timeout(Duration::from_millis(50));
    }
    let pushed = offered.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        !writer.is_finished(),
        "jobctl took all 256 MiB from a job that reads nothing"
    );
    assert!(pushed < 32 << 20, "{} MiB went in", pushed >> 20);
    let (api1, exec1) = (rss(stack.api.pid()), rss(stack.exec.pid()));
    assert!(
        api1 < api0 + 16 * 1024,
        "API server RSS {api0} -> {api1} KiB"
    );
    assert!(
        exec1 < exec0 + 16 * 1024,
        "executor RSS {exec0} -> {exec1} KiB"
    );
    jobworker_testkit::signal(child.id(), "TERM");
    let st = wait_child(&mut child, LIMIT).expect("jobctl ended");
    assert_eq!(code_of(st), 143, "stopped by SIGTERM");
    drop(writer);
}

fn jobctl_line(stack: &Stack, user: &str) -> Command {
    stack.jobctl(user)
}

#[test]
fn run_it_gives_the_job_a_terminal_of_its_own_sized_and_raw() {
    if skip_unless_root("run_it_gives_the_job_a_terminal_of_its_own_sized_and_raw") {
        return;
    }
    let stack = Stack::dev("tty");
    let mut pty = Pty::new(31, 97);
    let before = pty.settings();
    let script = "tty; stty size; trap 'stty size' WINCH; \
                  trap 'echo interrupted; exit 5' INT; \
                  echo ready; while :; do sleep 0.05; done";
    let mut cmd = jobctl_line(&stack, "alice");
    cmd.args(["run", "-it", "--", "sh", "-c", script]);
    let mut child = pty.spawn(&cmd);
    let seen = pty.wait_for("ready", LIMIT);
    // The job's own devpts: numbered from 0, and not the host's terminal.
    assert!(seen.contains("/dev/pts/0\r\n"), "{seen:?}");
    assert!(seen.contains("31 97\r\n"), "{seen:?}");
    // Raw while attached: the job's terminal echoes, jobctl's does not.
    assert_ne!(pty.settings(), before);
    pty.resize(40, 120);
    pty.wait_for("40 120\r\n", LIMIT);
    // Ctrl-C is a key typed at the job's terminal: the job gets SIGINT, jobctl does not.
    pty.type_bytes(b"\x03");
    pty.wait_for("interrupted", LIMIT);
    let st = wait_child(&mut child, LIMIT).expect("jobctl ended");
    assert_eq!(code_of(st), 5, "{}", pty.seen());
    assert!(!pty.seen().contains("stopping job"), "{}", pty.seen());
    assert_eq!(pty.settings(), before, "the terminal was restored");

    // An interactive shell, as at a local terminal.
    let mut pty = Pty::new(24, 80);
    let before = pty.settings();
    let mut cmd = jobctl_line(&stack, "alice");
    cmd.args(["run", "-it", "--", "sh"]);
    let mut child = pty.spawn(&cmd);
    pty.wait_for("$ ", LIMIT);
    pty.type_bytes(b"echo $((6*7))\r");
    pty.wait_for("42", LIMIT);
    pty.type_bytes(b"exit 3\r");
    let st = wait_child(&mut child, LIMIT).expect("jobctl ended");
    assert_eq!(code_of(st), 3, "{}", pty.seen());
    assert_eq!(pty.settings(), before, "the terminal was restored");

    // -it without a terminal to type at is refused, as docker does.
    let out = outcome(
        stack
            .jobctl("alice")
            .args(["run", "-it", "--", "sh"])
            .stdin(Stdio::piped()),
    );
    out.assert_error(125, "the input device is not a terminal");
}

#[test]
fn exec_runs_in_the_jobs_namespaces_cgroup_and_user_and_only_for_its_owner() {
    if skip_unless_root("exec_runs_in_the_jobs_namespaces_cgroup_and_user_and_only_for_its_owner") {
        return;
    }
    let stack = Stack::dev("exec");
    let dir = stack.scratch.writable("exec");
    // The job prints what it sees of itself, then waits.
    let id = start(
        &stack,
        "alice",
        &["sh", "-c", &format!("{} inspect; exec sleep 600", probe())],
    );
    let job_view: serde_json::Value = {
        let mut child = stack
            .jobctl("alice")
            .args(["logs", "-f", &id])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        serde_json::from_str(&line).unwrap()
    };
    let (code, out, err) = run_to_files(
        stack
            .jobctl("alice")
            .args(["exec", &id, "--", &probe(), "inspect"]),
        &dir,
        "inspect",
    );
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    let exec_view: serde_json::Value = serde_json::from_slice(&out).unwrap();
    for key in ["namespaces", "cgroup", "uid", "gid", "hostname"] {
        assert_eq!(exec_view[key], job_view[key], "{key}");
    }
    assert_eq!(exec_view["cap_eff"], "0000000000000000");
    assert_eq!(exec_view["no_new_privs"], "1");
    assert_eq!(exec_view["seccomp"], "2");
    // It sees the job's processes: its init is 1 and its command is there.
    let out = outcome(stack.jobctl("alice").args([
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "tr '\\0' ' ' < /proc/1/cmdline; echo; pgrep -x sleep",
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout_text(), "jobworker-init --job-init \n2\n");
    // stdin, and the exit code.
    let mut child = stack
        .jobctl("alice")
        .args(["exec", "-i", &id, "--", "sh", "-c", "cat; exit 4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"in the job\n")
        .unwrap();
    let out = finish(&mut child);
    assert_eq!((out.code, out.stdout_text().as_str()), (4, "in the job\n"));
    // A terminal of the job's devpts.
    let pty = Pty::new(24, 80);
    let mut cmd = stack.jobctl("alice");
    cmd.args(["exec", "-it", &id, "--", "sh", "-c", "tty; stty size"]);
    let mut exec = pty.spawn(&cmd);
    let seen = pty.wait_for("24 80", LIMIT);
    assert!(seen.contains("/dev/pts/"), "{seen:?}");
    assert_eq!(code_of(wait_child(&mut exec, LIMIT).unwrap()), 0);
    // Not found, not executable.
    stack_error(
        &stack,
        "alice",
        &["exec", &id, "--", "no-such-command"],
        127,
        "command not found",
    );
    stack_error(
        &stack,
        "alice",
        &["exec", &id, "--", "/etc/passwd"],
        126,
        "Permission denied",
    );
    // Someone else's job does not exist for bob; an administrator may.
    stack_error(
        &stack,
        "bob",
        &["exec", &id, "--", "true"],
        125,
        &format!("not found: no job {id}"),
    );
    let out = outcome(stack.jobctl("admin").args(["exec", &id, "--", "true"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Once the job has ended, there is nothing to exec in.
    assert_eq!(outcome(stack.jobctl("alice").args(["stop", &id])).code, 0);
    stack_error(
        &stack,
        "alice",
        &["exec", &id, "--", "true"],
        125,
        "is not running",
    );
}

fn stack_error(stack: &Stack, user: &str, args: &[&str], code: i32, text: &str) {
    outcome(stack.jobctl(user).args(args)).assert_error(code, text);
}
