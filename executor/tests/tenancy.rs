//! Tenants who do not trust each other: a user id per job, the job's own view of the file
//! system, per-owner quotas and deadlines, proven through the real executor and, from
//! inside the job, by the probe. Runs on cgroup v1 on the CI hosts and on cgroup v2 in
//! the VM tests (`make test-vm`).

use jobworker_protocol::*;
use jobworker_testkit::*;

fn spec_with(argv: &[&str], limits: Limits) -> JobSpec {
    JobSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        limits,
        ..Default::default()
    }
}

fn is_v2() -> bool {
    std::env::var("JOBWORKER_TEST_CGROUP_BACKEND").as_deref() == Ok("v2")
        || std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// What `jobworker-probe view PATHS...` reports, run as `owner`'s job.
async fn view(c: &mut ExecClient, owner: &str, paths: &[&str]) -> (JobStatus, serde_json::Value) {
    let mut argv = vec![probe(), "view".to_string()];
    argv.extend(paths.iter().map(|p| p.to_string()));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let id = c.start(owner, spec(&argv)).await.unwrap();
    let (out, status) = c.wait(id).await;
    assert_eq!(
        status.exit_code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&out)
    );
    (status, serde_json::from_slice(&out).unwrap())
}

#[tokio::test]
async fn two_jobs_at_once_have_ids_of_their_own_and_can_name_themselves() {
    if skip_unless_root("two_jobs_at_once_have_ids_of_their_own_and_can_name_themselves") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default());
    let mut c = exec.client().await;
    // A job of alice's holds its id while the next two run.
    let mut gate = Gate::new();
    let gate_path = gate.path.display().to_string();
    let held = c
        .run(&["sh", "-c", &format!("read x < {gate_path}")])
        .await
        .unwrap();
    let held_uid = c.status(held).await.unwrap().uid.expect("an id");
    let (a, va) = view(&mut c, "alice", &[]).await;
    let (b, vb) = view(&mut c, "bob", &[]).await;
    let ids = [held_uid, a.uid.unwrap(), b.uid.unwrap()];
    for uid in ids {
        assert!(JOB_IDS.contains(&uid), "{uid} outside the range");
    }
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
    for (status, v) in [(&a, &va), (&b, &vb)] {
        let uid = status.uid.unwrap();
        let name = format!("job-{}", status.id.short());
        // The probe runs as its own id, for its group too, and the job's passwd and group
        // name them, so whoami, id -un and getpass work.
        assert_eq!(
            (v["uid"].as_u64(), v["gid"].as_u64()),
            (Some(uid.into()), Some(uid.into()))
        );
        assert_eq!(v["user_name"], name.as_str());
        assert_eq!(v["group_name"], name.as_str());
    }
    let id = c.run(&["id", "-un"]).await.unwrap();
    let (out, status) = c.wait(id).await;
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("job-{}\n", status.id.short())
    );
    gate.open();
    c.wait(held).await;
}

#[tokio::test]
async fn a_file_in_a_shared_writable_bind_is_its_own_jobs_alone() {
    if skip_unless_root("a_file_in_a_shared_writable_bind_is_its_own_jobs_alone") {
        return;
    }
    let scratch = Scratch::new("shared");
    let shared = scratch.writable("shared");
    // Sticky and world-writable, as the configuration's example says for a shared place.
    let mode = std::process::Command::new("chmod")
        .arg("1777")
        .arg(&shared)
        .status()
        .unwrap();
    assert!(mode.success());
    let exec = Executor::start(ExecutorOptions::default().bind(&shared, true));
    let mut c = exec.client().await;
    let file = shared.join("a.txt").display().to_string();
    // Job A writes its file (readable by others, to show that write access is what
    // stays its own), then waits, so that both jobs are alive at once.
    let mut gate = Gate::new();
    let gate_path = gate.path.display().to_string();
    let a = c
        .run(&[
            "sh",
            "-c",
            &format!("umask 022; echo mine > {file}; echo written; read x < {gate_path}"),
        ])
        .await
        .unwrap();
    exec.client().await.wait_for_output(a, b"written\n").await;
    let b = c
        .run(&[
            "sh",
            "-c",
            &format!(
                "cat {file}; echo theirs >> {file} || echo append refused; \
                 rm -f {file} || echo removal refused; kill -0 {pid} || echo signal refused",
                pid = exec.init_pid(a)
            ),
        ])
        .await
        .unwrap();
    let (out, status) = c.wait(b).await;
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status.exit_code, Some(0), "{out}");
    assert!(out.starts_with("mine\n"), "{out}");
    assert!(out.contains("Permission denied"), "{out}");
    assert!(out.contains("append refused\n"), "{out}");
    assert!(out.contains("removal refused\n"), "{out}");
    assert_eq!(
        std::fs::read_to_string(shared.join("a.txt")).unwrap(),
        "mine\n"
    );
    gate.open();
    c.wait(a).await;
}

#[tokio::test]
async fn the_job_sees_its_own_view_of_the_file_system() {
    if skip_unless_root("the_job_sees_its_own_view_of_the_file_system") {
        return;
    }
    let scratch = Scratch::new("view");
    // A world-writable host directory, a read-only bind and a writable one.
    let open_dir = scratch.writable("world-writable");
    let ro = scratch.writable("ro");
    let rw = scratch.writable("rw");
    let exec = Executor::start(ExecutorOptions::default().bind(&ro, false).bind(&rw, true));
    let mut c = exec.client().await;
    let open_dir = open_dir.display().to_string();
    let (ro, rw) = (ro.display().to_string(), rw.display().to_string());
    let paths = [
        "/tmp", "/var/tmp", "/dev/shm", "/etc", "/usr", "/var", "/", &open_dir, &ro, &rw, "/run",
        "/dev",
    ];
    let (_, v) = view(&mut c, "alice", &paths).await;
    let writes = &v["writes"];
    for ok in ["/tmp", "/dev/shm", &rw] {
        assert_eq!(writes[ok], "ok", "{ok}: {v}");
    }
    // /var/tmp is the job's own tmpfs where the host has one (the VM guest has none).
    if std::path::Path::new("/var/tmp").is_dir() {
        assert_eq!(writes["/var/tmp"], "ok", "{v}");
    } else {
        assert_eq!(writes["/var/tmp"], "ENOENT", "{v}");
    }
    for refused in ["/etc", "/usr", "/var", "/", &open_dir, &ro] {
        assert_eq!(writes[refused], "EROFS", "{refused}: {v}");
    }
    // /run and /dev are the job's own, and root's: not writable for the job either.
    for own in ["/run", "/dev"] {
        let r = writes[own].as_str().unwrap();
        assert!(r == "EROFS" || r == "EACCES", "{own}: {r}");
    }
    assert_eq!(v["ls /sys/class/net"], serde_json::json!(["lo"]));
    assert_eq!(
        v["ls /dev"],
        serde_json::json!([
            "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout",
            "tty", "urandom", "zero"
        ])
    );
    assert_eq!(v["ls /run"], serde_json::json!([]));
    assert_eq!(v["ls /dev/pts"], serde_json::json!(["ptmx"]));
    for hidden in ["/home", "/root"] {
        let l = &v[format!("ls {hidden}")];
        assert!(
            l == &serde_json::json!([]) || l == "NotFound",
            "{hidden}: {l}"
        );
    }
    // No other job's group is visible: on v2 the job's own group is the root of what it
    // sees, with files only; on v1 there is nothing.
    let cgroup = v["ls /sys/fs/cgroup"].as_array().unwrap().clone();
    if is_v2() {
        assert!(cgroup.iter().any(|f| f == "memory.max"), "{cgroup:?}");
        assert!(
            cgroup.iter().all(|f| f.as_str().unwrap().contains('.')),
            "only control files, no other group: {cgroup:?}"
        );
    } else {
        assert!(cgroup.is_empty(), "{cgroup:?}");
    }
}

#[tokio::test]
async fn a_terminal_comes_from_the_jobs_own_devpts() {
    if skip_unless_root("a_terminal_comes_from_the_jobs_own_devpts") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default());
    let mut c = exec.client().await;
    // The probe opens /dev/ptmx, which is the job's own devpts instance: its first
    // terminal is /dev/pts/0 whatever the host has open, on a device that is not the
    // host's /dev/pts.
    let id = c.run(&[&probe(), "pty"]).await.unwrap();
    let (out, status) = c.wait(id).await;
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status.exit_code, Some(0), "{out}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("/dev/pts/0"), "{out}");
    use std::os::unix::fs::MetadataExt;
    let host = std::fs::metadata("/dev/pts").unwrap().dev().to_string();
    assert_ne!(
        lines.next(),
        Some(host.as_str()),
        "the host's devpts: {out}"
    );
}

fn exhausted(e: WireError) -> String {
    assert_eq!(e.kind, ErrorKind::ResourceExhausted, "{e:?}");
    e.message
}

#[tokio::test]
async fn quotas_hold_an_owner_and_not_the_others() {
    if skip_unless_root("quotas_hold_an_owner_and_not_the_others") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default().flags(&[
        "--quota-running-jobs",
        "2",
        "--quota-memory-bytes",
        &(100u64 << 20).to_string(),
    ]));
    let mut c = exec.client().await;
    let mem = |mib: u64| Limits {
        memory_bytes: Some(mib << 20),
        ..Default::default()
    };
    let sleep = |mib| spec_with(&["sleep", "600"], mem(mib));
    let a1 = c.start("alice", sleep(40)).await.unwrap();
    let a2 = c.start("alice", sleep(40)).await.unwrap();
    assert_eq!(
        exhausted(c.start("alice", sleep(1)).await.unwrap_err()),
        "alice: 2 of 2 running jobs (the quota of running jobs)"
    );
    // Bob is not held by alice's use.
    let b1 = c.start("bob", sleep(64)).await.unwrap();
    assert_eq!(
        exhausted(c.start("bob", sleep(64)).await.unwrap_err()),
        "bob: 64 MiB of 100 MiB memory in use by running jobs, and this job asks for 64 MiB (the memory quota)"
    );
    // What each holds, as `Quota` reports it.
    let Response::Quotas(q) = c.call(Request::Quota { scope: Scope::Any }).await else {
        panic!("no quota report")
    };
    let held: Vec<(&str, u64, u64)> = q
        .iter()
        .map(|r| {
            (
                r.owner.as_str(),
                r.used.running_jobs,
                r.used.memory_bytes >> 20,
            )
        })
        .collect();
    assert_eq!(held, [("alice", 2, 80), ("bob", 1, 64)]);
    assert_eq!(q[0].limits.running_jobs, Some(2));
    // A stopped job gives its share back at once.
    c.stop(a1).await.unwrap();
    let a3 = c.start("alice", sleep(40)).await.unwrap();
    let Response::Quotas(q) = c
        .call(Request::Quota {
            scope: Scope::Owner("alice".into()),
        })
        .await
    else {
        panic!("no quota report")
    };
    assert_eq!(q.len(), 1);
    assert_eq!(
        (q[0].used.running_jobs, q[0].used.memory_bytes),
        (2, 80 << 20)
    );
    for id in [a2, a3, b1] {
        c.stop(id).await.unwrap();
    }
}

#[tokio::test]
async fn a_job_past_its_deadline_is_stopped_and_says_it_timed_out() {
    if skip_unless_root("a_job_past_its_deadline_is_stopped_and_says_it_timed_out") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default().flags(&[
        "--default-timeout-ms",
        "600000",
        "--max-timeout-ms",
        "3600000",
    ]));
    let mut c = exec.client().await;
    let limits = Limits {
        timeout_ms: Some(1000),
        ..Default::default()
    };
    let id = c
        .start("alice", spec_with(&["sleep", "100"], limits))
        .await
        .unwrap();
    // Nobody is connected while the deadline passes: the executor keeps it on its own.
    drop(c);
    exec.wait_log(
        &format!("deadline reached: stopping the job job={id}"),
        LIMIT,
    );
    let mut c = exec.client().await;
    let (_, status) = c.wait(id).await;
    assert_eq!(status.state, JobState::TimedOut);
    assert_eq!(
        (status.exit_code, status.signal),
        (None, Some(libc::SIGTERM))
    );
    assert_eq!(status.limits.timeout_ms, Some(1000));
    let ran = status.ended_at_ms.unwrap() - status.started_at_ms;
    assert!(ran >= 1000, "stopped after {ran} ms, before its deadline");

    // A job that asks for none gets the configured default.
    let id = c.run(&["true"]).await.unwrap();
    assert_eq!(c.wait(id).await.1.limits.timeout_ms, Some(600_000));
    // Above the maximum is refused, naming it.
    let limits = Limits {
        timeout_ms: Some(3_600_001),
        ..Default::default()
    };
    let e = c
        .start("alice", spec_with(&["true"], limits))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert_eq!(
        e.message,
        "timeout: 3600001ms is above this executor's maximum of 1h"
    );
    // A stop before the deadline is a stop.
    let limits = Limits {
        timeout_ms: Some(600_000),
        ..Default::default()
    };
    let id = c
        .start("alice", spec_with(&["sleep", "100"], limits))
        .await
        .unwrap();
    assert_eq!(c.stop(id).await.unwrap().state, JobState::Stopped);
}

#[tokio::test]
async fn the_tmp_size_is_the_jobs_within_its_ceiling() {
    if skip_unless_root("the_tmp_size_is_the_jobs_within_its_ceiling") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default().flags(&[
        "--tmp-size-bytes",
        &(8u64 << 20).to_string(),
        "--ceiling-tmp-bytes",
        &(32u64 << 20).to_string(),
    ]));
    let mut c = exec.client().await;
    let df = ["sh", "-c", "df -k /tmp | tail -n 1"];
    let total_kib = |out: &[u8]| -> u64 {
        String::from_utf8_lossy(out)
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let id = c.run(&df).await.unwrap();
    let (out, _) = c.wait(id).await;
    assert_eq!(
        total_kib(&out),
        8 << 10,
        "{}",
        String::from_utf8_lossy(&out)
    );
    let asked = Limits {
        tmp_bytes: Some(16 << 20),
        ..Default::default()
    };
    let id = c.start("alice", spec_with(&df, asked)).await.unwrap();
    let (out, status) = c.wait(id).await;
    assert_eq!(
        total_kib(&out),
        16 << 10,
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(status.limits.tmp_bytes, Some(16 << 20));
    let too_big = Limits {
        tmp_bytes: Some((32 << 20) + 1),
        ..Default::default()
    };
    let e = c.start("alice", spec_with(&df, too_big)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert_eq!(
        e.message,
        "tmp size: 33554433 bytes is above this executor's ceiling of 33554432 bytes"
    );
}

#[tokio::test]
async fn all_jobs_together_are_held_to_the_totals_on_their_parent_group() {
    if skip_unless_root("all_jobs_together_are_held_to_the_totals_on_their_parent_group") {
        return;
    }
    let exec = Executor::start(ExecutorOptions {
        extra: [
            "--total-memory-bytes",
            "805306368",
            "--total-pids",
            "300",
            "--total-cpu-millis",
            "1500",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    });
    let parent = exec.cgroup_parent();
    let read = |file: &str| {
        let path = parent
            .jobs_file(file)
            .unwrap_or_else(|| panic!("no {file} above the jobs"));
        std::fs::read_to_string(path).unwrap().trim().to_string()
    };
    if is_v2() {
        assert_eq!(read("memory.max"), "805306368");
        assert_eq!(read("pids.max"), "300");
        assert_eq!(read("cpu.max"), "150000 100000");
    } else {
        assert_eq!(read("memory.limit_in_bytes"), "805306368");
        assert_eq!(read("pids.max"), "300");
        assert_eq!(read("cpu.cfs_quota_us"), "150000");
    }
    let mut c = exec.client().await;
    // No job may ask for more than all jobs together: the ceilings came down.
    let id = c.run(&["true"]).await.unwrap();
    let (_, s) = c.wait(id).await;
    assert_eq!(s.limits.cpu_millis, Some(1500));
    assert_eq!(s.limits.pids, Some(300));
    // The kernel holds the sum: one job holds 200 processes, and another, whose own
    // limit is 300, can fork only what the total leaves.
    let holder = c
        .run(&[
            "sh",
            "-c",
            "i=0; while [ $i -lt 200 ]; do sleep 600 & i=$((i+1)); done; echo held; wait",
        ])
        .await
        .unwrap();
    exec.client().await.wait_for_output(holder, b"held").await;
    let bomb = c.run(&[&probe(), "forkbomb"]).await.unwrap();
    let out = exec
        .client()
        .await
        .wait_for_output(bomb, b"limit reached")
        .await;
    let text = String::from_utf8_lossy(&out);
    let forked: u32 = text
        .split("after ")
        .nth(1)
        .and_then(|t| t.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        forked < 100,
        "the second job forked {forked} under a total of 300"
    );
    c.stop(bomb).await.unwrap();
    c.stop(holder).await.unwrap();
}

#[test]
fn a_total_above_what_the_host_has_stops_the_executor_before_anything_is_created() {
    if skip_unless_root(
        "a_total_above_what_the_host_has_stops_the_executor_before_anything_is_created",
    ) {
        return;
    }
    let dir = scratch::Scratch::new("totals");
    let out = std::process::Command::new(bins::path("jobworker-executor"))
        .args(["--socket"])
        .arg(dir.join("executor.sock"))
        .args(["--state-dir"])
        .arg(dir.join("state"))
        .args(["--allow-uid", "0", "--total-pids", "4194305000"])
        .env("JOBWORKER_LOG", "info")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("totals.pids: 4194305000 is above what this host has"),
        "{stderr}"
    );
    assert!(!dir.join("state").exists(), "nothing was created");
    assert!(!dir.join("executor.sock").exists(), "nothing was created");
}
