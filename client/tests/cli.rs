//! jobctl as a subprocess against an in-process server with the real server's TLS
//! policy and scripted jobs (see `common/mock.rs`): exit codes, output, error lines,
//! paging, signals and settings. No root needed.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::sync::atomic::Ordering;

use common::mock::{Mock, pseudo_random};
use common::{Outcome, Pki, finish, jobctl, jobctl_as, outcome, send_signal, sha256};

struct World {
    pki: Pki,
    mock: Mock,
    home: tempfile::TempDir,
}

fn world() -> World {
    let pki = Pki::new();
    let mock = Mock::start(&pki);
    World {
        pki,
        mock,
        home: tempfile::tempdir().unwrap(),
    }
}

impl World {
    fn jobctl(&self, args: &[&str]) -> Outcome {
        outcome(jobctl_as(self.home.path(), &self.pki, "alice", &self.mock.url()).args(args))
    }

    fn start(&self, argv: &[&str]) -> String {
        let mut args = vec!["start", "--"];
        args.extend_from_slice(argv);
        let out = self.jobctl(&args);
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.stdout_text().trim_end().to_string()
    }
}

#[test]
fn bad_values_give_one_line_and_exit_2() {
    let w = world();
    let out = w.jobctl(&["run", "--memory", "lots", "--", "true"]);
    out.assert_error(
        2,
        "invalid value 'lots' for '--memory <SIZE>': expected a size like 512M, 2G or 1048576",
    );
    let out = w.jobctl(&["run", "--cpu", "0.0001", "--", "true"]);
    out.assert_error(2, "at most 3 decimals");
    let out = w.jobctl(&["start", "--io-read-bps", "1M", "--", "true"]);
    out.assert_error(2, "--io-device <DEVICE>");
    let out = w.jobctl(&["status", "--output", "yaml", "x"]);
    out.assert_error(2, "invalid value 'yaml'");
}

#[test]
fn a_command_without_the_separator_gives_one_line_and_exit_2() {
    let w = world();
    let out = w.jobctl(&["run", "sh", "-c", "exit 7"]);
    out.assert_error(2, "the job's command goes after `--`");
    let out = w.jobctl(&["run", "--"]);
    out.assert_error(2, "required arguments were not provided");
}

#[test]
fn an_unreachable_server_exits_3() {
    let w = world();
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = w.jobctl(&["--server", &format!("https://localhost:{port}"), "list"]);
    out.assert_error(3, "cannot reach the server");
    out.assert_error(3, "connection refused");
}

#[test]
fn a_server_not_signed_by_our_ca_exits_4() {
    let w = world();
    let other = Pki::new();
    let out = w.jobctl(&["--ca", other.ca().to_str().unwrap(), "list"]);
    out.assert_error(
        4,
        "the server's certificate is not trusted by the CA certificate of --ca",
    );
}

#[test]
fn a_certificate_the_server_does_not_trust_exits_4() {
    let w = world();
    let other = Pki::new();
    let (cert, key) = other.client("alice");
    let out = w.jobctl(&[
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "list",
    ]);
    out.assert_error(4, "the server rejected our certificate");
}

#[test]
fn a_server_name_missing_from_its_certificate_exits_4() {
    let pki = Pki::new();
    // The development server certificate is for localhost, 127.0.0.1 and ::1 only.
    let mock = Mock::start_on(pki.dir.path(), "127.0.0.2:0");
    let home = tempfile::tempdir().unwrap();
    let server = format!("https://127.0.0.2:{}", mock.addr.port());
    let out = outcome(jobctl_as(home.path(), &pki, "alice", &server).arg("list"));
    out.assert_error(
        4,
        "the server's certificate is not valid for the name \"127.0.0.2\"",
    );
}

#[test]
fn a_key_readable_by_others_is_refused() {
    let w = world();
    let (_, key) = w.pki.client("alice");
    let loose = w.home.path().join("loose.key");
    std::fs::copy(&key, &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = w.jobctl(&["--key", loose.to_str().unwrap(), "list"]);
    out.assert_error(2, "is readable by group or others (mode 0644)");
}

#[test]
fn start_prints_only_the_job_id() {
    let w = world();
    let out = w.jobctl(&[
        "start", "--cpu", "0.5", "--memory", "64M", "--", "exit", "0",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stderr, "");
    let text = out.stdout_text();
    let id = text.strip_suffix('\n').expect("one line");
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
}

#[test]
fn run_exits_with_the_jobs_exit_code() {
    let w = world();
    let out = w.jobctl(&["run", "--", "exit", "7"]);
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert_eq!(out.stdout, b"exit 7\n");
    assert_eq!(out.stderr, "", "a job's own exit prints nothing");
}

#[test]
fn run_of_a_signalled_job_exits_128_plus_the_signal() {
    let w = world();
    let out = w.jobctl(&["run", "--", "signal", "9"]);
    assert_eq!(out.code, 137, "{}", out.stderr);
    assert_eq!(out.stderr, "");
}

#[test]
fn run_of_an_oom_killed_job_says_so_on_one_line() {
    let w = world();
    let out = w.jobctl(&["run", "--memory", "64M", "--", "oom"]);
    assert_eq!(out.code, 137);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{:?}", out.stderr);
    assert!(
        lines[0].starts_with("jobctl: job ")
            && lines[0].ends_with("was killed by the kernel's OOM killer (memory limit 64 MiB)"),
        "{}",
        lines[0]
    );
}

#[test]
fn run_of_a_command_that_cannot_start_exits_9() {
    let w = world();
    let out = w.jobctl(&["run", "--", "fail"]);
    out.assert_error(
        9,
        "the job failed to start: exec fail: no such file or directory",
    );
}

#[test]
fn caps_not_found_and_permissions_have_their_exit_codes() {
    let w = world();
    w.jobctl(&["start", "--", "busy"])
        .assert_error(7, "resource exhausted: too many running jobs");
    w.jobctl(&["status", "0123456789abcdef0123456789abcdef"])
        .assert_error(5, "not found: no job 0123456789abcdef0123456789abcdef");
    w.jobctl(&["stop", "0123456789abcdef0123456789abcdef"])
        .assert_error(5, "not found");
    w.jobctl(&["logs", "0123456789abcdef0123456789abcdef"])
        .assert_error(5, "not found");
    w.jobctl(&["list", "--all"])
        .assert_error(8, "permission denied: only administrators");
}

#[test]
fn logs_write_the_exact_bytes() {
    let w = world();
    let id = w.start(&["bytes", "1000000"]);
    let out = w.jobctl(&["logs", &id]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.len(), 1_000_000);
    assert_eq!(sha256(&out.stdout), sha256(&pseudo_random(1_000_000)));
    let out = w.jobctl(&["logs", "--follow", &id]);
    assert_eq!(sha256(&out.stdout), sha256(&pseudo_random(1_000_000)));
}

#[test]
fn logs_into_a_closed_pipe_exit_141_quietly() {
    let w = world();
    let id = w.start(&["bytes", "4000000"]);
    let mut child = jobctl_as(w.home.path(), &w.pki, "alice", &w.mock.url())
        .args(["logs", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first[..], &pseudo_random(16)[..]);
    drop(stdout);
    let out = finish(&mut child);
    assert_eq!(out.code, 141);
    assert_eq!(out.stderr, "", "a closed pipe is quiet");
}

#[test]
fn run_into_a_closed_pipe_stops_the_job_and_exits_141() {
    let w = world();
    let mut child = jobctl_as(w.home.path(), &w.pki, "alice", &w.mock.url())
        .args(["run", "--", "spew"])
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
    assert_eq!(
        w.mock.state.stops.load(Ordering::SeqCst),
        1,
        "the job was stopped"
    );
}

#[test]
fn truncated_output_is_noted_on_stderr() {
    let w = world();
    let out = w.jobctl(&["run", "--", "truncated"]);
    assert_eq!(out.code, 0);
    assert_eq!(out.stdout, b"x");
    assert!(
        out.stderr.contains("was truncated at the server's cap"),
        "{}",
        out.stderr
    );
}

/// The documented fields of a job in JSON.
const JOB_FIELDS: [&str; 17] = [
    "id",
    "owner",
    "argv",
    "state",
    "exit_code",
    "signal",
    "oom_killed",
    "error",
    "started_at",
    "started_at_unix_ms",
    "ended_at",
    "ended_at_unix_ms",
    "cpu_usec",
    "peak_memory_bytes",
    "output_bytes",
    "output_truncated",
    "limits",
];

#[test]
fn status_json_has_the_documented_fields() {
    let w = world();
    let id = w.start(&["exit", "7"]);
    let out = w.jobctl(&["status", "--output", "json", &id]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(JOB_FIELDS));
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["state"], "exited");
    assert_eq!(v["exit_code"], 7);
    assert_eq!(v["argv"], serde_json::json!(["exit", "7"]));
    assert_eq!(v["output_bytes"], 7);
    let limits: BTreeSet<&str> = v["limits"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        limits,
        BTreeSet::from(["cpu_millis", "memory_bytes", "pids", "io"])
    );
    assert!(v["started_at"].as_str().unwrap().ends_with('Z'));
    assert!(v["started_at_unix_ms"].as_i64().unwrap() > 1_600_000_000_000);

    let human = w.jobctl(&["status", &id]);
    assert!(
        human
            .stdout_text()
            .contains("state:       exited with code 7\n")
    );
}

#[test]
fn list_pages_through_every_job() {
    let w = world();
    let ids: Vec<String> = (0..5).map(|_| w.mock.state.add_finished("alice")).collect();
    let out = w.jobctl(&["list", "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<&str> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect::<Vec<_>>());
    // Five jobs, two per page.
    assert_eq!(w.mock.state.list_calls.load(Ordering::SeqCst), 3);
    let human = w.jobctl(&["list"]).stdout_text();
    assert_eq!(human.lines().count(), 6, "{human}");
    assert!(human.starts_with("ID "));
}

#[test]
fn ctrl_c_during_run_stops_the_job_and_exits_with_its_status() {
    let w = world();
    let mut child = jobctl_as(w.home.path(), &w.pki, "alice", &w.mock.url())
        .args(["run", "--", "wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    send_signal(child.id(), "INT");
    child.stdout = Some(stdout.into_inner());
    let out = finish(&mut child);
    assert_eq!(out.code, 143, "stopped by SIGTERM; stderr: {}", out.stderr);
    assert_eq!(
        out.stdout, b"stopping\n",
        "the rest of the output is written"
    );
    assert!(
        out.stderr.contains("jobctl: stopping job "),
        "{}",
        out.stderr
    );
    assert_eq!(w.mock.state.stops.load(Ordering::SeqCst), 1);
}

#[test]
fn settings_come_from_flag_then_environment_then_file() {
    let w = world();
    let config = w.home.path().join("config").join("jobworker");
    std::fs::create_dir_all(&config).unwrap();
    let (cert, key) = w.pki.client("alice");
    std::fs::copy(w.pki.ca(), config.join("my-ca.pem")).unwrap();
    std::fs::write(
        config.join("client.toml"),
        format!(
            "server = {:?}\nca = \"my-ca.pem\"\ncert = {cert:?}\nkey = {key:?}\n",
            w.mock.url()
        ),
    )
    .unwrap();
    let refused = format!(
        "https://localhost:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );

    // The file alone is enough (its relative CA path is relative to it).
    let out = outcome(jobctl(w.home.path()).args(["list"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The environment beats the file.
    let out = outcome(
        jobctl(w.home.path())
            .env("JOBWORKER_SERVER", &refused)
            .args(["list"]),
    );
    out.assert_error(3, &refused);
    // The flag beats the environment.
    let out = outcome(
        jobctl(w.home.path())
            .env("JOBWORKER_SERVER", &refused)
            .args(["--server", &w.mock.url(), "list"]),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    // A bad file is named.
    std::fs::write(config.join("client.toml"), "sever = 1\n").unwrap();
    let out = outcome(jobctl(w.home.path()).args(["list"]));
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
