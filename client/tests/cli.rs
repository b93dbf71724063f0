//! jobctl as a subprocess: usage errors, refused TLS, settings, caps, error exit codes,
//! closed pipes, truncated output and paging. Checks that need no server run
//! anywhere; the rest run against the real service as root (the real `jobworker-api`
//! as nobody, the real `jobworker-executor`, real jobs) and print a visible
//! `SKIPPED ...: needs root` line otherwise.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use jobworker_testkit::jobctl::{Outcome, finish, jobctl, jobctl_as, outcome, sha256};
use jobworker_testkit::{Pki, Stack, skip_unless_root};

/// A server address nothing listens on: bound, then released.
fn refused_server() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("https://localhost:{port}")
}

/// jobctl as alice with certificates but no server: for what fails before connecting.
fn offline(pki: &Pki, home: &std::path::Path, args: &[&str]) -> Outcome {
    outcome(jobctl_as(home, pki, "alice", &refused_server()).args(args))
}

fn run(stack: &Stack, args: &[&str]) -> Outcome {
    outcome(stack.jobctl("alice").args(args))
}

fn start(stack: &Stack, argv: &[&str]) -> String {
    let out = outcome(stack.jobctl("alice").arg("start").arg("--").args(argv));
    assert_eq!(out.code, 0, "start: {}", out.stderr);
    out.stdout_text().trim_end().to_string()
}

/// The jobs `jobctl list --output json` shows alice, in its order.
fn listed(stack: &Stack) -> Vec<serde_json::Value> {
    let out = run(stack, &["list", "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v["jobs"].as_array().expect("jobs").clone()
}

#[test]
fn bad_values_give_one_line_and_exit_2() {
    let (pki, home) = (Pki::dev_certs(), tempfile::tempdir().unwrap());
    let out = offline(
        &pki,
        home.path(),
        &["start", "--memory", "lots", "--", "true"],
    );
    out.assert_error(
        2,
        "invalid value 'lots' for '--memory <SIZE>': expected a size like 512M, 2G or 1048576",
    );
    // `run`, `exec` and `wait` exit with the job's own code: their own failures are 125.
    let out = offline(&pki, home.path(), &["run", "--cpu", "0.0001", "--", "true"]);
    out.assert_error(125, "at most 3 decimals");
    let out = offline(
        &pki,
        home.path(),
        &["run", "--workdir", "srv", "--", "true"],
    );
    out.assert_error(125, "expected an absolute path in the job");
    let out = offline(
        &pki,
        home.path(),
        &["start", "--io-read-bps", "1M", "--", "true"],
    );
    out.assert_error(2, "--io-device <DEVICE>");
    let out = offline(&pki, home.path(), &["status", "--output", "yaml", "x"]);
    out.assert_error(2, "invalid value 'yaml'");
}

#[test]
fn a_command_without_the_separator_gives_one_line_and_exit_2() {
    let (pki, home) = (Pki::dev_certs(), tempfile::tempdir().unwrap());
    let out = offline(&pki, home.path(), &["start", "sh", "-c", "exit 7"]);
    out.assert_error(2, "the job's command goes after `--`");
    let out = offline(&pki, home.path(), &["start", "--"]);
    out.assert_error(2, "required arguments were not provided");
    let out = offline(&pki, home.path(), &["run", "sh", "-c", "exit 7"]);
    out.assert_error(125, "the job's command goes after `--`");
    let out = offline(&pki, home.path(), &["exec", "0123", "ps"]);
    out.assert_error(125, "the job's command goes after `--`");
}

#[test]
fn an_unreachable_server_exits_3() {
    let (pki, home) = (Pki::dev_certs(), tempfile::tempdir().unwrap());
    let out = offline(&pki, home.path(), &["list"]);
    out.assert_error(3, "cannot reach the server");
    out.assert_error(3, "connection refused");
    // For the commands that exit with the job's code, the same failure is 125.
    for args in [
        &["run", "--", "true"][..],
        &["exec", "0123456789abcdef0123456789abcdef", "--", "true"],
        &["wait", "0123456789abcdef0123456789abcdef"],
    ] {
        offline(&pki, home.path(), args).assert_error(125, "cannot reach the server");
    }
}

#[test]
fn a_key_readable_by_others_is_refused() {
    let (pki, home) = (Pki::dev_certs(), tempfile::tempdir().unwrap());
    let (_, key) = pki.client("alice");
    let loose = home.path().join("loose.key");
    std::fs::copy(&key, &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = offline(
        &pki,
        home.path(),
        &["--key", loose.to_str().unwrap(), "list"],
    );
    out.assert_error(2, "is readable by group or others (mode 0644)");
}

#[test]
fn a_server_not_signed_by_our_ca_exits_4() {
    if skip_unless_root("a_server_not_signed_by_our_ca_exits_4") {
        return;
    }
    let stack = Stack::dev("otherca");
    let other = Pki::dev_certs();
    let out = run(&stack, &["--ca", other.ca().to_str().unwrap(), "list"]);
    out.assert_error(
        4,
        "the server's certificate is not trusted by the CA certificate of --ca",
    );
}

#[test]
fn a_certificate_the_server_does_not_trust_exits_4() {
    if skip_unless_root("a_certificate_the_server_does_not_trust_exits_4") {
        return;
    }
    let stack = Stack::dev("othercert");
    let other = Pki::dev_certs();
    let (cert, key) = other.client("alice");
    let out = run(
        &stack,
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "list",
        ],
    );
    out.assert_error(4, "the server rejected our certificate");
}

#[test]
fn a_server_name_missing_from_its_certificate_exits_4() {
    if skip_unless_root("a_server_name_missing_from_its_certificate_exits_4") {
        return;
    }
    // The development server certificate is for localhost, 127.0.0.1 and ::1 only.
    let stack = Stack::dev_with("name", &[], "127.0.0.2:0");
    let server = format!("https://127.0.0.2:{}", stack.api.port());
    let out = run(&stack, &["--server", &server, "list"]);
    out.assert_error(
        4,
        "the server's certificate is not valid for the name \"127.0.0.2\"",
    );
}

#[test]
fn start_prints_only_the_job_id() {
    if skip_unless_root("start_prints_only_the_job_id") {
        return;
    }
    let stack = Stack::dev("startid");
    let out = run(
        &stack,
        &["start", "--cpu", "0.5", "--memory", "64M", "--", "true"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stderr, "");
    let text = out.stdout_text();
    let id = text.strip_suffix('\n').expect("one line");
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
}

#[test]
fn run_of_an_oom_killed_job_says_so_on_one_line() {
    if skip_unless_root("run_of_an_oom_killed_job_says_so_on_one_line") {
        return;
    }
    let stack = Stack::dev("oom");
    // dd's 256 MiB buffer, filled from /dev/zero, is touched page by page.
    let out = run(
        &stack,
        &[
            "run",
            "--memory",
            "64M",
            "--",
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=256M",
            "count=1",
        ],
    );
    assert_eq!(out.code, 137, "{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{:?}", out.stderr);
    assert!(
        lines[0].starts_with("jobctl: job ")
            && lines[0].ends_with("was killed by the kernel's OOM killer (memory limit 64 MiB)"),
        "{}",
        lines[0]
    );
    // A job whose command goes on after the OOM killer took another of its processes:
    // the command's own exit, and what the OOM killer did.
    let out = run(
        &stack,
        &[
            "run",
            "--memory",
            "64M",
            "--",
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/null bs=256M count=1; echo went on",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout_text(), "went on\n");
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("jobctl:"))
        .collect();
    assert_eq!(lines.len(), 1, "{:?}", out.stderr);
    assert!(
        lines[0].starts_with("jobctl: the kernel's OOM killer killed a process of job ")
            && lines[0].ends_with("(memory limit 64 MiB); its command exited with 0"),
        "{}",
        lines[0]
    );
}

#[test]
fn caps_not_found_and_permissions_have_their_exit_codes() {
    if skip_unless_root("caps_not_found_and_permissions_have_their_exit_codes") {
        return;
    }
    let stack = Stack::dev_with("caps", &["--max-running-jobs", "1"], "127.0.0.1:0");
    let sleeper = start(&stack, &["sleep", "600"]);
    run(&stack, &["start", "--", "true"]).assert_error(
        7,
        "resource exhausted: 1 jobs are running, the most this executor allows",
    );
    let missing = "0123456789abcdef0123456789abcdef";
    run(&stack, &["status", missing]).assert_error(5, &format!("not found: no job {missing}"));
    run(&stack, &["stop", missing]).assert_error(5, "not found");
    run(&stack, &["logs", missing]).assert_error(5, "not found");
    run(&stack, &["list", "--all"]).assert_error(
        8,
        "permission denied: listing every job needs the admin role",
    );
    // Another user's job is not found either, exactly as one that does not exist.
    outcome(stack.jobctl("bob").args(["status", &sleeper]))
        .assert_error(5, &format!("not found: no job {sleeper}"));
    assert_eq!(run(&stack, &["stop", &sleeper]).code, 0);
}

#[test]
fn logs_write_the_exact_bytes() {
    if skip_unless_root("logs_write_the_exact_bytes") {
        return;
    }
    let stack = Stack::dev("logs");
    let id = start(&stack, &["head", "-c", "1000000", "/dev/urandom"]);
    let followed = run(&stack, &["logs", "--follow", &id]);
    assert_eq!(followed.code, 0, "{}", followed.stderr);
    assert_eq!(followed.stdout.len(), 1_000_000);
    let after = run(&stack, &["logs", &id]);
    assert_eq!(after.code, 0, "{}", after.stderr);
    assert_eq!(sha256(&after.stdout), sha256(&followed.stdout));
}

#[test]
fn logs_into_a_closed_pipe_exit_141_quietly() {
    if skip_unless_root("logs_into_a_closed_pipe_exit_141_quietly") {
        return;
    }
    let stack = Stack::dev("logspipe");
    let id = start(&stack, &["head", "-c", "4000000", "/dev/urandom"]);
    assert_eq!(run(&stack, &["logs", "--follow", &id]).code, 0);
    let mut child = stack
        .jobctl("alice")
        .args(["logs", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let out = finish(&mut child);
    assert_eq!(out.code, 141);
    assert_eq!(out.stderr, "", "a closed pipe is quiet");
}

#[test]
fn run_into_a_closed_pipe_stops_the_job_and_exits_141() {
    if skip_unless_root("run_into_a_closed_pipe_stops_the_job_and_exits_141") {
        return;
    }
    let stack = Stack::dev("runpipe");
    let mut child = stack
        .jobctl("alice")
        .args(["run", "--", "yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"y\ny\ny\ny\ny\ny\ny\ny\n");
    drop(stdout);
    let out = finish(&mut child);
    assert_eq!(out.code, 141);
    assert_eq!(out.stderr, "", "a closed pipe is quiet");
    let jobs = listed(&stack);
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        jobs[0]["state"], "stopped",
        "the job was stopped: {}",
        jobs[0]
    );
}

#[test]
fn truncated_output_is_noted_on_stderr() {
    if skip_unless_root("truncated_output_is_noted_on_stderr") {
        return;
    }
    let stack = Stack::dev_with("trunc", &["--max-output-bytes", "4096"], "127.0.0.1:0");
    let out = run(&stack, &["run", "--", "head", "-c", "10000", "/dev/zero"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The cap counts what is stored: the bytes, and 16 for the one run of stdout.
    assert_eq!(out.stdout.len(), 4080);
    assert!(out.stdout.iter().all(|b| *b == 0));
    assert!(
        out.stderr
            .contains("was cut after 4.0 KiB (the server's cap)"),
        "{}",
        out.stderr
    );
}

#[test]
fn list_pages_through_every_job() {
    if skip_unless_root("list_pages_through_every_job") {
        return;
    }
    // One more job than a page holds (the server's default page is 100).
    const JOBS: usize = 101;
    let stack = Stack::dev("pages");
    let ids: Vec<String> = (0..JOBS).map(|_| start(&stack, &["true"])).collect();
    let jobs = listed(&stack);
    let seen: Vec<&str> = jobs.iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(seen, ids.iter().map(String::as_str).collect::<Vec<_>>());
    let human = run(&stack, &["list"]).stdout_text();
    assert_eq!(human.lines().count(), JOBS + 1, "{human}");
    assert!(human.starts_with("ID "));
}

#[test]
fn settings_come_from_flag_then_environment_then_file() {
    if skip_unless_root("settings_come_from_flag_then_environment_then_file") {
        return;
    }
    let stack = Stack::dev("settings");
    let home = &stack.home();
    let config = home.join("config").join("jobworker");
    std::fs::create_dir_all(&config).unwrap();
    let (cert, key) = stack.pki.client("alice");
    std::fs::copy(stack.pki.ca(), config.join("my-ca.pem")).unwrap();
    std::fs::write(
        config.join("client.toml"),
        format!(
            "server = {:?}\nca = \"my-ca.pem\"\ncert = {cert:?}\nkey = {key:?}\n",
            stack.api.url()
        ),
    )
    .unwrap();
    let refused = refused_server();

    // The file alone is enough (its relative CA path is relative to it).
    let out = outcome(jobctl(home).args(["list"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The environment beats the file.
    let out = outcome(
        jobctl(home)
            .env("JOBWORKER_SERVER", &refused)
            .args(["list"]),
    );
    out.assert_error(3, &refused);
    // The flag beats the environment.
    let out = outcome(jobctl(home).env("JOBWORKER_SERVER", &refused).args([
        "--server",
        &stack.api.url(),
        "list",
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    // A bad file is named.
    std::fs::write(config.join("client.toml"), "sever = 1\n").unwrap();
    let out = outcome(jobctl(home).args(["list"]));
    out.assert_error(2, "unknown field `sever`");
}

#[test]
fn help_shows_examples_and_completions_are_printed() {
    let home = tempfile::tempdir().unwrap();
    let out = outcome(jobctl(home.path()).args(["run", "--help"]));
    assert_eq!(out.code, 0);
    let help = out.stdout_text();
    assert!(help.contains("Examples:"), "{help}");
    assert!(help.contains("Ctrl-C"), "{help}");
    for shell in ["bash", "zsh", "fish"] {
        let out = outcome(jobctl(home.path()).args(["completions", shell]));
        assert_eq!(out.code, 0, "{shell}");
        assert!(out.stdout_text().contains("jobctl"), "{shell}");
    }
}
