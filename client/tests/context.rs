//! Contexts, with jobctl as a subprocess: named servers in `client.toml`, chosen by
//! `--context`, `JOBWORKER_CONTEXT` or `current_context`, and `jobctl context list|use|
//! show`. All but the last test need neither a server nor root; the last runs jobs
//! through the real service as root (and prints a visible `SKIPPED ...: needs root` line
//! otherwise).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use jobworker_testkit::jobctl::{Outcome, config_file, jobctl, outcome, write_config};
use jobworker_testkit::{Stack, skip_unless_root};
use serde_json::Value;

/// A configuration with top-level keys, two contexts and a current one.
const FILE: &str = r#"# The top level: no context.
server = "https://top.example:1"
ca = "top/ca.pem"
cert = "top/client.pem"
key = "/abs/top.key"
current_context = "staging"   # chosen by `jobctl context use`

# Production.
[contexts.prod]
server = "https://prod.example:2"
ca = "prod/ca.pem"
cert = "prod/alice.pem"
key = "prod/alice.key"

[contexts.staging]
server = "staging.example"
cert = "/etc/jobworker/staging.pem"
"#;

/// jobctl in `home` with these variables and arguments.
fn ctl(home: &Path, vars: &[(&str, &str)], args: &[&str]) -> Outcome {
    outcome(jobctl(home).envs(vars.iter().copied()).args(args))
}

/// `context show --output json` (with `args` before it).
fn show(home: &Path, vars: &[(&str, &str)], args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["context", "show", "--output", "json"]);
    let out = ctl(home, vars, &all);
    assert_eq!(out.code, 0, "{}", out.stderr);
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// A setting of `show`'s JSON as (value, source, from).
fn setting(shown: &Value, name: &str) -> (String, String, Option<String>) {
    let s = &shown[name];
    (
        s["value"].as_str().expect("value").to_string(),
        s["source"].as_str().expect("source").to_string(),
        s["from"].as_str().map(str::to_string),
    )
}

fn is(value: &str, source: &str, from: Option<&str>) -> (String, String, Option<String>) {
    (
        value.to_string(),
        source.to_string(),
        from.map(str::to_string),
    )
}

/// A server address nothing listens on: bound, then released.
fn refused_server() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("https://localhost:{port}")
}

#[test]
fn the_context_is_the_flag_then_the_environment_then_current_context_then_none() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    write_config(home, FILE);

    let s = show(home, &[], &[]);
    assert_eq!(
        setting(&s, "context"),
        is("staging", "file", Some("current_context"))
    );
    assert_eq!(
        setting(&s, "server"),
        is("https://staging.example:50051", "context", Some("staging"))
    );

    let env = [("JOBWORKER_CONTEXT", "prod")];
    let s = show(home, &env, &[]);
    assert_eq!(
        setting(&s, "context"),
        is("prod", "environment", Some("JOBWORKER_CONTEXT"))
    );
    assert_eq!(
        setting(&s, "server"),
        is("https://prod.example:2", "context", Some("prod"))
    );

    let s = show(home, &env, &["--context", "staging"]);
    assert_eq!(
        setting(&s, "context"),
        is("staging", "flag", Some("--context"))
    );

    // `default` is the top level, chosen over the file's current_context.
    let s = show(home, &env, &["--context", "default"]);
    assert_eq!(
        setting(&s, "context"),
        is("default", "flag", Some("--context"))
    );
    assert_eq!(
        setting(&s, "server"),
        is("https://top.example:1", "file", Some("server"))
    );

    // An empty variable counts as unset.
    let s = show(home, &[("JOBWORKER_CONTEXT", "")], &[]);
    assert_eq!(setting(&s, "context").0, "staging");

    // Without current_context: no context.
    write_config(home, &FILE.replace("current_context", "# current_context"));
    let s = show(home, &[], &[]);
    assert_eq!(setting(&s, "context"), is("default", "default", None));
    assert_eq!(setting(&s, "server").0, "https://top.example:1");
}

#[test]
fn each_setting_is_the_flag_then_the_environment_then_the_context_then_the_top_level() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let dir = write_config(home, FILE).parent().unwrap().to_path_buf();
    let in_dir = |p: &str| dir.join(p).to_str().unwrap().to_string();

    let env = [("JOBWORKER_CA", "/env/ca.pem")];
    let s = show(
        home,
        &env,
        &["--context", "prod", "--server", "flag.example:3"],
    );
    assert_eq!(
        setting(&s, "server"),
        is("https://flag.example:3", "flag", Some("--server"))
    );
    assert_eq!(
        setting(&s, "ca"),
        is("/env/ca.pem", "environment", Some("JOBWORKER_CA"))
    );
    assert_eq!(
        setting(&s, "cert"),
        is(&in_dir("prod/alice.pem"), "context", Some("prod"))
    );

    // staging has no CA or key of its own: the top level's.
    let s = show(home, &[], &[]);
    assert_eq!(
        setting(&s, "cert"),
        is("/etc/jobworker/staging.pem", "context", Some("staging"))
    );
    assert_eq!(
        setting(&s, "ca"),
        is(&in_dir("top/ca.pem"), "file", Some("ca"))
    );
    assert_eq!(setting(&s, "key"), is("/abs/top.key", "file", Some("key")));

    // Neither the context nor the top level: the default.
    write_config(
        home,
        "current_context = \"bare\"\n[contexts.bare]\nserver = \"bare.example\"\n",
    );
    let s = show(home, &[], &[]);
    assert_eq!(
        setting(&s, "key"),
        is(&in_dir("client.key"), "default", None)
    );

    // The same for people: one row per setting, its source last.
    write_config(home, FILE);
    let out = ctl(
        home,
        &env,
        &["--server", "flag.example:3", "context", "show"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = out.stdout_text();
    // Each row's words.
    let row = |name: &str| {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} row in {text}"));
        line.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    assert!(text.starts_with("SETTING "), "{text}");
    assert_eq!(row("context"), "context staging file (current_context)");
    assert_eq!(row("server"), "server https://flag.example:3 flag --server");
    assert_eq!(row("ca"), "ca /env/ca.pem environment JOBWORKER_CA");
    assert_eq!(
        row("cert"),
        "cert /etc/jobworker/staging.pem context staging"
    );
    assert_eq!(row("key"), "key /abs/top.key file");
    assert_eq!(row("file"), format!("file {}", config_file(home).display()));
}

#[test]
fn relative_paths_are_relative_to_the_files_directory() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let dir = write_config(home, FILE).parent().unwrap().to_path_buf();
    let out = ctl(home, &[], &["context", "list", "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let contexts = v["contexts"].as_array().unwrap();
    let names: Vec<&str> = contexts
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "prod", "staging"]);
    let path = |i: usize, key: &str| contexts[i][key].as_str().unwrap().to_string();
    let in_dir = |p: &str| dir.join(p).to_str().unwrap().to_string();
    assert_eq!(path(0, "ca"), in_dir("top/ca.pem"));
    assert_eq!(path(1, "ca"), in_dir("prod/ca.pem"));
    assert_eq!(path(1, "key"), in_dir("prod/alice.key"));
    assert_eq!(path(2, "ca"), in_dir("top/ca.pem"));
    assert_eq!(path(2, "cert"), "/etc/jobworker/staging.pem");
    assert_eq!(path(2, "key"), "/abs/top.key");
}

#[test]
fn list_marks_the_context_in_use() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    write_config(home, FILE);
    let out = ctl(home, &[], &["context", "list"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout_text(),
        "CURRENT  NAME     SERVER\n\
         \x20        default  https://top.example:1\n\
         \x20        prod     https://prod.example:2\n\
         *        staging  https://staging.example:50051\n"
    );
    let list = |vars: &[(&str, &str)], args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["context", "list", "-o", "json"]);
        let out = ctl(home, vars, &all);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let marked: Vec<&str> = v["contexts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["current"] == true)
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(marked, [v["current"].as_str().unwrap()]);
        v["current"].as_str().unwrap().to_string()
    };
    assert_eq!(list(&[], &[]), "staging");
    assert_eq!(list(&[("JOBWORKER_CONTEXT", "prod")], &[]), "prod");
    assert_eq!(
        list(&[("JOBWORKER_CONTEXT", "prod")], &["--context", "default"]),
        "default"
    );

    // A file without contexts works as before: only `default`, the top level.
    write_config(home, "server = \"https://top.example:1\"\n");
    let out = ctl(home, &[], &["context", "list"]);
    assert_eq!(
        out.stdout_text(),
        "CURRENT  NAME     SERVER\n*        default  https://top.example:1\n"
    );
}

#[test]
fn use_rewrites_current_context_and_keeps_the_rest_of_the_file() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let path = write_config(home, FILE);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let read = || std::fs::read_to_string(&path).unwrap();

    let out = ctl(home, &[], &["context", "use", "prod"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout_text(), "Switched to context \"prod\".\n");
    assert_eq!(out.stderr, "");
    // Only the value changed: its comment, the others and the layout are kept.
    assert_eq!(
        read(),
        FILE.replace(
            "current_context = \"staging\"",
            "current_context = \"prod\""
        )
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the mode is kept");
    let entries: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["client.toml"], "no file left behind");
    assert_eq!(show(home, &[], &[])["context"]["value"], "prod");

    // `default`: the top level applies again.
    let out = ctl(home, &[], &["context", "use", "default"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        read(),
        FILE.replace(
            "current_context = \"staging\"",
            "current_context = \"default\""
        )
    );
    assert_eq!(show(home, &[], &[])["context"]["value"], "default");

    // Without current_context, a new key goes after the other top-level keys.
    let without = FILE.replace(
        "current_context = \"staging\"   # chosen by `jobctl context use`\n",
        "",
    );
    write_config(home, &without);
    let out = ctl(home, &[], &["context", "use", "staging"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        read(),
        without.replace(
            "key = \"/abs/top.key\"\n",
            "key = \"/abs/top.key\"\ncurrent_context = \"staging\"\n"
        )
    );
    // And `default` with no current_context leaves the file alone.
    write_config(home, &without);
    assert_eq!(ctl(home, &[], &["context", "use", "default"]).code, 0);
    assert_eq!(read(), without);
    write_config(home, FILE);

    // The environment still wins, and a note says so.
    let out = ctl(
        home,
        &[("JOBWORKER_CONTEXT", "staging")],
        &["context", "use", "prod"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.starts_with(
            "jobctl: $JOBWORKER_CONTEXT=staging still chooses context \"staging\" over \
             current_context in "
        ),
        "{}",
        out.stderr
    );

    // As root, another user's file stays theirs.
    if jobworker_testkit::is_root() {
        let nobody = jobworker_testkit::NOBODY;
        std::os::unix::fs::chown(&path, Some(nobody), Some(nobody)).unwrap();
        assert_eq!(ctl(home, &[], &["context", "use", "staging"]).code, 0);
        assert!(read().contains("current_context = \"staging\""));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (nobody, nobody));
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    // A symbolic link stays one; the file it points to is rewritten.
    let real = home.join("dotfiles-client.toml");
    std::fs::write(&real, FILE).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&real, &path).unwrap();
    let out = ctl(home, &[], &["context", "use", "prod"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(std::fs::symlink_metadata(&path).unwrap().is_symlink());
    assert!(
        std::fs::read_to_string(&real)
            .unwrap()
            .contains("current_context = \"prod\"")
    );

    // Without a file there is only `default`, and using it writes nothing.
    let empty = tempfile::tempdir().unwrap();
    let out = ctl(empty.path(), &[], &["context", "use", "default"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!config_file(empty.path()).exists());
}

#[test]
fn an_unknown_context_exits_2_and_lists_the_known_ones() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let path = write_config(home, FILE);
    let file = path.to_str().unwrap();
    let known = format!("the contexts in {file} are: default, prod, staging");

    ctl(home, &[], &["--context", "nope", "list"]).assert_error(
        2,
        &format!("context \"nope\" (from --context) does not exist; {known}"),
    );
    ctl(home, &[("JOBWORKER_CONTEXT", "nope")], &["status", "x"]).assert_error(
        2,
        &format!("context \"nope\" (from $JOBWORKER_CONTEXT) does not exist; {known}"),
    );
    ctl(home, &[], &["context", "show", "nope"])
        .assert_error(2, &format!("context \"nope\" does not exist; {known}"));
    ctl(home, &[], &["context", "use", "nope"])
        .assert_error(2, &format!("context \"nope\" does not exist; {known}"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), FILE, "unchanged");

    // A current_context that names no context fails every command but `use`.
    write_config(home, &FILE.replace("\"staging\"   #", "\"gone\"   #"));
    ctl(home, &[], &["list"]).assert_error(
        2,
        &format!(
            "context \"gone\" (from `current_context` in {file}) does not exist; {known}; \
             `jobctl context use NAME` chooses another"
        ),
    );
    ctl(home, &[], &["context", "list"]).assert_error(2, "\"gone\"");
    assert_eq!(ctl(home, &[], &["context", "use", "prod"]).code, 0);
    assert_eq!(show(home, &[], &[])["context"]["value"], "prod");

    // Without a file, `default` is the only context.
    let empty = tempfile::tempdir().unwrap();
    ctl(empty.path(), &[], &["--context", "prod", "list"]).assert_error(
        2,
        &format!(
            "context \"prod\" (from --context) does not exist; there is no configuration \
             file {}, so the only context is default",
            config_file(empty.path()).display()
        ),
    );
}

#[test]
fn bad_context_tables_are_errors_that_name_the_key() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    write_config(home, "[contexts.prod]\nserver = \"a\"\nsever = \"b\"\n");
    ctl(home, &[], &["context", "list"]).assert_error(2, "line 3: unknown field `sever`");
    write_config(home, "[contexts.default]\nserver = \"a\"\n");
    ctl(home, &[], &["context", "list"]).assert_error(
        2,
        "the name \"default\" is reserved for the top-level settings",
    );
    write_config(home, "[contexts.prod]\nserver = \"http://a\"\n");
    ctl(home, &[], &["--context", "prod", "list"])
        .assert_error(2, "(from `server` of context \"prod\" in ");
}

#[test]
fn context_help_shows_the_file_and_examples() {
    let home = tempfile::tempdir().unwrap();
    let out = ctl(home.path(), &[], &["context", "--help"]);
    assert_eq!(out.code, 0);
    let help = out.stdout_text();
    for text in [
        "[contexts.prod]",
        "current_context",
        "Examples:",
        "jobctl context use dev",
    ] {
        assert!(help.contains(text), "{text}: {help}");
    }
    let out = ctl(home.path(), &[], &["--help"]);
    assert!(out.stdout_text().contains("--context <NAME>"));
}

#[test]
fn a_job_runs_through_the_context_chosen_by_flag_or_environment() {
    if skip_unless_root("a_job_runs_through_the_context_chosen_by_flag_or_environment") {
        return;
    }
    let stack = Stack::dev("context");
    let home = stack.home();
    let refused = refused_server();
    let (cert, key) = stack.pki.client("alice");
    // The top level and `nowhere` (with the top level's certificates) name a server
    // that is not there; `here` is the stack.
    write_config(
        &home,
        &format!(
            "server = {refused:?}\nca = {:?}\ncert = {cert:?}\nkey = {key:?}\n\
             current_context = \"nowhere\"\n\n{}\n[contexts.nowhere]\nserver = {refused:?}\n",
            stack.pki.ca(),
            stack.context_table("here", "alice"),
        ),
    );
    let run = |vars: &[(&str, &str)], args: &[&str], word: &str| {
        let mut all = args.to_vec();
        all.extend(["run", "--", "echo", word]);
        ctl(&home, vars, &all)
    };

    let out = run(&[], &["--context", "here"], "flag");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout_text(), "flag\n");

    let out = run(&[("JOBWORKER_CONTEXT", "here")], &[], "environment");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout_text(), "environment\n");

    // The flag beats the variable, which beats current_context.
    let out = run(
        &[("JOBWORKER_CONTEXT", "nowhere")],
        &["--context", "here"],
        "both",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout_text(), "both\n");
    // `run` exits with the job's code, so its own failures are 125.
    run(&[], &[], "none").assert_error(125, &format!("cannot reach the server at {refused}"));
    run(&[], &["--context", "default"], "top")
        .assert_error(125, &format!("cannot reach the server at {refused}"));

    // `context use` makes it the one without a flag or variable.
    assert_eq!(ctl(&home, &[], &["context", "use", "here"]).code, 0);
    let out = run(&[], &[], "file");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout_text(), "file\n");
    let jobs = ctl(&home, &[], &["list", "--output", "json"]);
    let v: Value = serde_json::from_slice(&jobs.stdout).unwrap();
    assert_eq!(v["jobs"].as_array().unwrap().len(), 4, "{v}");
}
