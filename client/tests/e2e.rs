//! End to end, as root: jobctl (a subprocess) → the real `jobworker-api` (as nobody)
//! → the real `jobworker-executor` (root) → real jobs, with certificates from the
//! development PKI tool. Each test prints a visible `SKIPPED ...: needs root` line
//! when not root.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use jobworker_testkit::jobctl::{finish, outcome, sha256};
use jobworker_testkit::{Gate, Pki, Stack, signal, skip_unless_root};

fn start(stack: &Stack, user: &str, argv: &[&str]) -> String {
    let out = outcome(stack.jobctl(user).arg("start").arg("--").args(argv));
    assert_eq!(out.code, 0, "start: {}", out.stderr);
    let id = out.stdout_text().trim_end().to_string();
    assert_eq!(id.len(), 32, "{id:?}");
    id
}

#[test]
fn run_exits_with_the_jobs_exit_code() {
    if skip_unless_root("run_exits_with_the_jobs_exit_code") {
        return;
    }
    let stack = Stack::dev("exit");
    let out = outcome(stack.jobctl("alice").args([
        "run",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]));
    assert_eq!(out.code, 7, "stderr: {}", out.stderr);
    // Each stream to its own descriptor; a job's own exit adds nothing.
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, "err\n");
}

#[test]
fn run_of_a_job_killed_by_sigkill_exits_137() {
    if skip_unless_root("run_of_a_job_killed_by_sigkill_exits_137") {
        return;
    }
    let stack = Stack::dev("kill");
    let out = outcome(
        stack
            .jobctl("alice")
            .args(["run", "--", "sh", "-c", "kill -9 $$"]),
    );
    assert_eq!(out.code, 137, "stderr: {}", out.stderr);
    assert_eq!(out.stderr, "");
}

#[test]
fn run_exec_and_wait_exit_125_126_127_when_the_command_did_not_run() {
    if skip_unless_root("run_exec_and_wait_exit_125_126_127_when_the_command_did_not_run") {
        return;
    }
    let stack = Stack::dev("missing");
    let jobctl = |args: &[&str]| outcome(stack.jobctl("alice").args(args));
    jobctl(&["run", "--", "/nonexistent/program"]).assert_error(
        127,
        "failed to start: executing \"/nonexistent/program\": No such file or directory",
    );
    jobctl(&["run", "--", "no-such-command-here"])
        .assert_error(127, "command not found: \"no-such-command-here\"");
    jobctl(&["run", "--", "/etc/passwd"])
        .assert_error(126, "executing \"/etc/passwd\": Permission denied");
    jobctl(&["run", "--workdir", "/nonexistent", "--", "true"]).assert_error(
        126,
        "changing directory to /nonexistent: No such file or directory",
    );
    // The server refuses: 125, whatever the refusal.
    jobctl(&["run", "--timeout", "8d", "--", "true"]).assert_error(125, "invalid argument");
    let missing = "0123456789abcdef0123456789abcdef";
    jobctl(&["wait", missing]).assert_error(125, "not found");
    jobctl(&["exec", missing, "--", "true"]).assert_error(125, "not found");
    // `start` keeps its own table.
    jobctl(&["start", "--", "/nonexistent/program"]).assert_error(9, "failed to start");

    // `wait` exits with the job's own code, and with a failed start's.
    let id = jobctl(&["start", "--", "sh", "-c", "sleep 0.2; exit 3"]).stdout;
    let id = String::from_utf8(id).unwrap();
    let id = id.trim();
    assert_eq!(jobctl(&["wait", id]).code, 3);
    assert_eq!(jobctl(&["wait", id]).code, 3, "again, once it has ended");
    let id = String::from_utf8(jobctl(&["start", "--", "sh", "-c", "kill -9 $$"]).stdout).unwrap();
    assert_eq!(jobctl(&["wait", id.trim()]).code, 137);
}

#[test]
fn ctrl_c_during_run_stops_the_whole_job() {
    if skip_unless_root("ctrl_c_during_run_stops_the_whole_job") {
        return;
    }
    let stack = Stack::dev("ctrlc");
    let mut child = stack
        .jobctl("alice")
        .args([
            "run",
            "--",
            "sh",
            "-c",
            "echo started; sleep 600; echo never",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 8];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"started\n");
    assert!(signal(child.id(), "INT"), "kill -INT {}", child.id());
    child.stdout = Some(stdout);
    let out = finish(&mut child);
    assert_eq!(out.code, 143, "stopped by SIGTERM; stderr: {}", out.stderr);
    assert_eq!(out.stdout, b"", "nothing after the stop");
    assert!(
        out.stderr.starts_with("jobctl: stopping job "),
        "{}",
        out.stderr
    );

    // The job is over, with the stop recorded.
    let out = outcome(stack.jobctl("alice").args(["list", "--output", "json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["jobs"][0]["state"], "stopped");
    assert_eq!(v["jobs"][0]["signal"], 15);
}

#[test]
fn logs_follow_of_random_binary_output_is_byte_exact() {
    if skip_unless_root("logs_follow_of_random_binary_output_is_byte_exact") {
        return;
    }
    let stack = Stack::dev("logs");
    let mut gate = Gate::new();
    // Random bytes the job reads from the host (its view of it is read-only) and writes
    // out: half before the gate opens, half after, so the follower sees the job running
    // and catches up, then follows to the end.
    let data = stack.scratch.writable("data");
    let random = |name: &str| {
        let mut bytes = Vec::new();
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .take(524_288)
            .read_to_end(&mut bytes)
            .unwrap();
        let path = data.join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    };
    random("1");
    random("2");
    let script = format!(
        "cat {d}/1 && read x < {g} && cat {d}/2",
        d = data.display(),
        g = gate.path.display()
    );
    let id = start(&stack, "alice", &["sh", "-c", &script]);
    let mut follower = stack
        .jobctl("alice")
        .args(["logs", "-f", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = follower.stdout.take().unwrap();
    let mut first_half = vec![0u8; 524_288];
    stdout.read_exact(&mut first_half).unwrap();
    gate.open();
    follower.stdout = Some(stdout);
    let out = finish(&mut follower);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut followed = first_half;
    followed.extend_from_slice(&out.stdout);

    let mut written = std::fs::read(data.join("1")).unwrap();
    written.extend(std::fs::read(data.join("2")).unwrap());
    assert_eq!(written.len(), 1_048_576);
    assert_eq!(followed.len(), written.len());
    assert_eq!(sha256(&followed), sha256(&written));

    // A reader that comes later gets the same bytes, from byte 0.
    let out = outcome(stack.jobctl("alice").args(["logs", &id]));
    assert_eq!(sha256(&out.stdout), sha256(&written));
}

#[test]
fn status_json_has_the_documented_fields() {
    if skip_unless_root("status_json_has_the_documented_fields") {
        return;
    }
    let stack = Stack::dev("json");
    let id = start(&stack, "alice", &["sh", "-c", "echo hi"]);
    // Following the output to its end waits for the job to end.
    let out = outcome(stack.jobctl("alice").args(["logs", "-f", &id]));
    assert_eq!(out.stdout, b"hi\n");

    let out = outcome(
        stack
            .jobctl("alice")
            .args(["status", "--output", "json", &id]),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let documented = BTreeSet::from([
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
        "uid",
        "name",
        "labels",
        "start_failure",
    ]);
    assert_eq!(keys, documented);
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["owner"], "alice");
    assert_eq!(v["argv"], serde_json::json!(["sh", "-c", "echo hi"]));
    assert_eq!(v["state"], "exited");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["signal"], serde_json::Value::Null);
    assert_eq!(v["oom_killed"], false);
    assert_eq!(v["output_bytes"], 3);
    assert!(v["ended_at"].as_str().unwrap().ends_with('Z'));
    assert!(v["ended_at_unix_ms"].as_i64().unwrap() >= v["started_at_unix_ms"].as_i64().unwrap());
    // Unset limits took the executor's ceilings.
    assert!(v["limits"]["memory_bytes"].as_u64().is_some(), "{v}");
}

#[test]
fn list_shows_only_the_callers_jobs() {
    if skip_unless_root("list_shows_only_the_callers_jobs") {
        return;
    }
    let stack = Stack::dev("list");
    let alices = start(&stack, "alice", &["true"]);
    let bobs = start(&stack, "bob", &["true"]);
    let ids = |user: &str, all: bool| -> BTreeSet<String> {
        let mut args = vec!["list", "--output", "json"];
        if all {
            args.push("--all");
        }
        let out = outcome(stack.jobctl(user).args(&args));
        assert_eq!(out.code, 0, "{}", out.stderr);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids("alice", false), BTreeSet::from([alices.clone()]));
    assert_eq!(ids("bob", false), BTreeSet::from([bobs.clone()]));
    assert_eq!(ids("admin", true), BTreeSet::from([alices.clone(), bobs]));
    // Another user's job is not found, exactly like a missing one.
    outcome(stack.jobctl("bob").args(["status", &alices])).assert_error(5, "not found");
    outcome(stack.jobctl("bob").args(["list", "--all"])).assert_error(8, "permission denied");
}

#[test]
fn bad_flags_a_wrong_ca_and_an_unreachable_server_each_give_one_line() {
    if skip_unless_root("bad_flags_a_wrong_ca_and_an_unreachable_server_each_give_one_line") {
        return;
    }
    let stack = Stack::dev("errors");
    outcome(
        stack
            .jobctl("alice")
            .args(["start", "--memory", "lots", "--", "true"]),
    )
    .assert_error(
        2,
        "invalid value 'lots' for '--memory <SIZE>': expected a size like 512M, 2G or 1048576",
    );
    outcome(stack.jobctl("alice").args(["start", "uname", "-a"]))
        .assert_error(2, "the job's command goes after `--`");

    let other = Pki::dev_certs();
    outcome(
        stack
            .jobctl("alice")
            .env("JOBWORKER_CA", other.ca())
            .args(["list"]),
    )
    .assert_error(4, "the server's certificate is not trusted");
    let (cert, key) = other.client("alice");
    outcome(
        stack
            .jobctl("alice")
            .env("JOBWORKER_CERT", cert)
            .env("JOBWORKER_KEY", key)
            .args(["list"]),
    )
    .assert_error(4, "the server rejected our certificate");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    outcome(
        stack
            .jobctl("alice")
            .args(["--server", &format!("https://localhost:{port}"), "list"]),
    )
    .assert_error(3, "cannot reach the server");
}

#[test]
fn a_timeout_stops_the_job_and_run_says_so() {
    if skip_unless_root("a_timeout_stops_the_job_and_run_says_so") {
        return;
    }
    let stack = Stack::dev("timeout");
    let out = outcome(
        stack
            .jobctl("alice")
            .args(["run", "--timeout", "1s", "--", "sleep", "100"]),
    );
    assert_eq!(out.code, 143, "stderr: {}", out.stderr);
    assert!(
        out.stderr.starts_with("jobctl: job ")
            && out
                .stderr
                .ends_with(" timed out after 1.000 s, ended by SIGTERM (15)\n"),
        "{}",
        out.stderr
    );
    // The status says the same, and the deadline it had.
    let id = out.stderr.split_whitespace().nth(2).unwrap().to_string();
    let status = outcome(stack.jobctl("alice").args(["status", "-o", "json", &id]));
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["state"], "timed_out");
    assert_eq!(v["signal"], 15);
    assert_eq!(v["limits"]["timeout_ms"], 1000);
    // A deadline above the server's maximum is refused before anything runs.
    let out = outcome(
        stack
            .jobctl("alice")
            .args(["start", "--timeout", "8d", "--", "true"]),
    );
    out.assert_error(
        6,
        "invalid argument: timeout: 8d is above this executor's maximum of 7d",
    );
}

#[test]
fn quota_shows_each_user_their_own_and_admins_everyone() {
    if skip_unless_root("quota_shows_each_user_their_own_and_admins_everyone") {
        return;
    }
    let stack = Stack::dev_with("quota", &["--quota-running-jobs", "1"], "127.0.0.1:0");
    let id = start(&stack, "alice", &["sleep", "600"]);
    let out = outcome(stack.jobctl("alice").args(["start", "--", "true"]));
    out.assert_error(
        7,
        "resource exhausted: alice: 1 of 1 running jobs (the quota of running jobs)",
    );
    let text = outcome(stack.jobctl("alice").arg("quota"));
    assert_eq!(text.code, 0, "{}", text.stderr);
    let text = text.stdout_text();
    assert!(
        text.starts_with("alice:\n  running jobs  1 of 1\n"),
        "{text}"
    );
    let json = outcome(stack.jobctl("bob").args(["quota", "-o", "json"]));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["quotas"][0]["owner"], "bob");
    assert_eq!(v["quotas"][0]["used"]["running_jobs"], 0);
    assert_eq!(v["quotas"][0]["limits"]["running_jobs"], 1);
    outcome(stack.jobctl("bob").args(["quota", "--all"])).assert_error(
        8,
        "permission denied: everyone's quotas need the admin role",
    );
    let all = outcome(stack.jobctl("admin").args(["quota", "--all", "-o", "json"]));
    let v: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
    let owners: Vec<&str> = v["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["owner"].as_str().unwrap())
        .collect();
    assert_eq!(owners, ["alice"]);
    assert_eq!(outcome(stack.jobctl("alice").args(["stop", &id])).code, 0);
}

#[test]
fn the_server_going_away_mid_run_says_the_job_runs_on_and_how_to_find_it() {
    if skip_unless_root("the_server_going_away_mid_run_says_the_job_runs_on_and_how_to_find_it") {
        return;
    }
    // Root may also talk to the executor, to see the job after the server is gone.
    let mut stack = Stack::dev_with("apigone", &["--allow-uid", "0"], "127.0.0.1:0");
    let mut child = stack
        .jobctl("alice")
        .args(["run", "--", "sh", "-c", "echo started; exec sleep 600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut line = [0u8; 8];
    stdout.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"started\n");
    stack.api.kill();
    child.stdout = Some(stdout);
    let out = finish(&mut child);
    out.assert_error(125, "the connection to");
    out.assert_error(125, "runs on without jobctl");
    let id = out
        .stderr
        .split("jobctl status ")
        .nth(1)
        .and_then(|t| t.get(..32))
        .unwrap_or_else(|| panic!("says how to find it: {}", out.stderr))
        .to_string();
    // And so it does: the executor still runs it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let state = rt.block_on(async {
        let mut c = stack.exec.client().await;
        c.status(id.parse().unwrap()).await.unwrap().state
    });
    assert_eq!(state, jobworker_protocol::JobState::Running);
}
