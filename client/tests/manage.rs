//! Managing many jobs, end to end as root (jobctl → the real API server → the real
//! executor): names and id prefixes wherever an id goes, labels, list filters applied
//! by the server, removal, and the completion of ids and names.

use jobworker_testkit::jobctl::{Outcome, outcome};
use jobworker_testkit::{Stack, skip_unless_root};

fn jobctl(stack: &Stack, user: &str, args: &[&str]) -> Outcome {
    outcome(stack.jobctl(user).args(args))
}

fn ok(stack: &Stack, user: &str, args: &[&str]) -> String {
    let out = jobctl(stack, user, args);
    assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
    out.stdout_text()
}

fn start(stack: &Stack, user: &str, args: &[&str]) -> String {
    let mut all = vec!["start"];
    all.extend_from_slice(args);
    ok(stack, user, &all).trim().to_string()
}

fn ids(ids: &[&String]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The ids `list` prints with these arguments, in order.
fn listed(stack: &Stack, user: &str, args: &[&str]) -> Vec<String> {
    let mut all = vec!["list", "-o", "json"];
    all.extend_from_slice(args);
    json(&ok(stack, user, &all))["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn names_and_id_prefixes_name_jobs_wherever_an_id_does() {
    if skip_unless_root("names_and_id_prefixes_name_jobs_wherever_an_id_does") {
        return;
    }
    let stack = Stack::dev("names");
    let id = start(&stack, "alice", &["--name", "build", "--", "sleep", "600"]);
    let status = json(&ok(&stack, "alice", &["status", "-o", "json", "build"]));
    assert_eq!(
        (status["id"].as_str(), status["name"].as_str()),
        (Some(id.as_str()), Some("build"))
    );
    // A prefix of at least 6 digits.
    let prefix = &id[..6];
    assert_eq!(
        json(&ok(&stack, "alice", &["status", "-o", "json", prefix]))["id"],
        id.as_str()
    );
    // Shorter is not a prefix: as a name, it names nothing.
    jobctl(&stack, "alice", &["status", &id[..5]]).assert_error(5, "no job named or starting with");
    // The name is the owner's: a second job of alice's cannot have it, one of bob's can.
    jobctl(&stack, "alice", &["start", "--name", "build", "--", "true"])
        .assert_error(10, "alice already has a job named build");
    let bobs = start(&stack, "bob", &["--name", "build", "--", "sleep", "600"]);
    // bob's name names bob's job for bob, and alice's for alice.
    assert_eq!(
        json(&ok(&stack, "bob", &["status", "-o", "json", "build"]))["id"],
        bobs.as_str()
    );
    // An administrator sees both: ambiguous, and told which.
    let e = jobctl(&stack, "admin", &["status", "build"]);
    e.assert_error(6, "the name build is ambiguous");
    assert!(
        e.stderr.contains(&id) && e.stderr.contains(&bobs),
        "{}",
        e.stderr
    );
    // Every command that takes an id takes a name: logs, wait (below), exec, stop.
    let out = ok(
        &stack,
        "alice",
        &["exec", "build", "--", "echo", "in the named job"],
    );
    assert_eq!(out, "in the named job\n");
    ok(&stack, "alice", &["stop", "build"]);
    assert_eq!(jobctl(&stack, "alice", &["wait", "build"]).code, 143);
    // Invalid names are refused before anything runs.
    jobctl(&stack, "alice", &["start", "--name", "a/b", "--", "true"])
        .assert_error(2, "expected 1 to 64 letters");
    ok(&stack, "bob", &["stop", "build"]);
}

#[test]
fn labels_and_filters_are_applied_by_the_server() {
    if skip_unless_root("labels_and_filters_are_applied_by_the_server") {
        return;
    }
    let stack = Stack::dev("filters");
    let a = start(
        &stack,
        "alice",
        &["-l", "team=infra", "-l", "tier=1", "--", "sleep", "600"],
    );
    let b = start(&stack, "alice", &["-l", "team=web", "--", "true"]);
    assert_eq!(jobctl(&stack, "alice", &["wait", &b]).code, 0);
    let c = start(
        &stack,
        "alice",
        &["--name", "nightly", "--", "sh", "-c", "exit 3"],
    );
    assert_eq!(jobctl(&stack, "alice", &["wait", &c]).code, 3);
    let d = start(&stack, "bob", &["-l", "team=infra", "--", "sleep", "600"]);

    assert_eq!(listed(&stack, "alice", &[]), ids(&[&a, &b, &c]));
    assert_eq!(
        listed(&stack, "alice", &["--label", "team=infra"]),
        ids(&[&a])
    );
    assert_eq!(
        listed(&stack, "alice", &["-l", "team=infra", "-l", "tier=1"]),
        ids(&[&a])
    );
    assert_eq!(
        listed(&stack, "alice", &["-l", "team=infra", "-l", "tier=2"]),
        Vec::<String>::new()
    );
    assert_eq!(listed(&stack, "alice", &["--state", "running"]), ids(&[&a]));
    assert_eq!(
        listed(&stack, "alice", &["--state", "exited"]),
        ids(&[&b, &c])
    );
    assert_eq!(
        listed(
            &stack,
            "alice",
            &["--state", "running", "--state", "exited"]
        ),
        ids(&[&a, &b, &c])
    );
    assert_eq!(listed(&stack, "alice", &["--name", "nightly"]), ids(&[&c]));
    // Owners: everyone's for an administrator, one owner's with --owner.
    assert_eq!(
        listed(&stack, "admin", &["--all", "-l", "team=infra"]),
        ids(&[&a, &d])
    );
    assert_eq!(listed(&stack, "admin", &["--owner", "bob"]), ids(&[&d]));
    jobctl(&stack, "alice", &["list", "--owner", "bob"]).assert_error(8, "admin");
    // The labels are the job's, in its status.
    let s = json(&ok(&stack, "alice", &["status", "-o", "json", &a]));
    assert_eq!(
        s["labels"],
        serde_json::json!({"team": "infra", "tier": "1"})
    );
    // Bad labels are refused by the server, naming the label; nothing starts.
    jobctl(&stack, "alice", &["start", "-l", "bad key=x", "--", "true"])
        .assert_error(6, "is not a label key");
    jobctl(
        &stack,
        "alice",
        &["start", "-l", "k=a", "-l", "k=b", "--", "true"],
    )
    .assert_error(6, "\"k\" is given twice");
    let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    let mut args = vec!["start"];
    for l in &many {
        args.extend(["-l", l]);
    }
    args.extend(["--", "true"]);
    jobctl(&stack, "alice", &args).assert_error(6, "labels: at most 32");
    assert_eq!(listed(&stack, "alice", &[]).len(), 3, "nothing started");
    ok(&stack, "alice", &["stop", &a]);
    ok(&stack, "bob", &["stop", &d]);
}

#[test]
fn rm_deletes_a_finished_jobs_record_and_output() {
    if skip_unless_root("rm_deletes_a_finished_jobs_record_and_output") {
        return;
    }
    let stack = Stack::dev("rm");
    let done = start(&stack, "alice", &["--name", "once", "--", "echo", "output"]);
    assert_eq!(jobctl(&stack, "alice", &["wait", "once"]).code, 0);
    let dir = stack.exec.state.join("jobs").join(&done);
    assert!(dir.join("stdout").exists(), "{}", dir.display());
    let running = start(&stack, "alice", &["--", "sleep", "600"]);
    let bobs = start(&stack, "bob", &["--", "true"]);
    assert_eq!(jobctl(&stack, "bob", &["wait", &bobs]).code, 0);

    // A running job is refused; someone else's is not found; the others go on.
    let out = jobctl(&stack, "alice", &["rm", &running, &bobs, "once"]);
    assert_eq!(out.code, 10, "the first failure's code: {}", out.stderr);
    assert_eq!(out.stdout_text(), format!("{done}\n"));
    assert!(
        out.stderr
            .contains(&format!("rm {running}: job {running} is running")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("rm {bobs}: not found")),
        "{}",
        out.stderr
    );
    // Gone: from the server and from its disk; its name is free again.
    jobctl(&stack, "alice", &["status", &done]).assert_error(5, "not found");
    jobctl(&stack, "alice", &["logs", &done]).assert_error(5, "not found");
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert_eq!(listed(&stack, "alice", &[]), ids(&[&running]));
    start(&stack, "alice", &["--name", "once", "--", "true"]);
    // --force stops a running job first.
    let out = jobctl(&stack, "alice", &["rm", "--force", &running]);
    assert_eq!(
        (out.code, out.stdout_text()),
        (0, format!("{running}\n")),
        "{}",
        out.stderr
    );
    assert!(!stack.exec.state.join("jobs").join(&running).exists());
    // bob's job is bob's to remove (or an administrator's).
    assert_eq!(ok(&stack, "admin", &["rm", &bobs]), format!("{bobs}\n"));
}

#[test]
fn completion_offers_your_jobs_ids_and_names_and_stays_quiet_without_a_server() {
    if skip_unless_root(
        "completion_offers_your_jobs_ids_and_names_and_stays_quiet_without_a_server",
    ) {
        return;
    }
    let stack = Stack::dev("complete");
    let id = start(
        &stack,
        "alice",
        &["--name", "nightly", "--", "sleep", "600"],
    );
    let bobs = start(&stack, "bob", &["--name", "nightwatch", "--", "true"]);
    let complete = |user: &str, words: &[&str]| {
        let mut cmd = stack.jobctl(user);
        cmd.env("JOBCTL_COMPLETE", "fish")
            .arg("--")
            .arg("jobctl")
            .args(words);
        let out = outcome(&mut cmd);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(out.stderr, "", "completion prints nothing on stderr");
        out.stdout_text()
    };
    let names = complete("alice", &["status", "nig"]);
    let values: Vec<&str> = names
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(values, ["nightly"], "{names}");
    assert!(names.contains("running"), "with a hint: {names}");
    let ids = complete("alice", &["stop", &id[..3]]);
    assert!(
        ids.lines().any(|l| l.starts_with(&format!("{id}\t"))),
        "{ids}"
    );
    assert!(!ids.contains(&bobs));
    // Subcommands and flags come from the command line itself.
    let subs = complete("alice", &["wa"]);
    assert!(subs.lines().any(|l| l.starts_with("wait")), "{subs}");
    // The registration script names the variable.
    let script = ok(&stack, "alice", &["completions", "bash"]);
    assert!(script.contains("JOBCTL_COMPLETE"), "{script}");
    // No server: no candidates, no message.
    let mut cmd = stack.jobctl("alice");
    cmd.env("JOBWORKER_SERVER", "https://localhost:1")
        .env("JOBCTL_COMPLETE", "fish")
        .args(["--", "jobctl", "status", "nig"]);
    let out = outcome(&mut cmd);
    assert_eq!(
        (out.code, out.stdout_text(), out.stderr.as_str()),
        (0, String::new(), "")
    );
    ok(&stack, "alice", &["stop", &id]);
}
