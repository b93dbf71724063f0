//! Isolation and limits, proven from inside the job by the probe and from outside by the
//! kernel's own counters. Runs on cgroup v1 on the CI hosts and on cgroup v2 in the VM
//! tests (`make test-vm`).

use std::time::Duration;

use jobworker_protocol::*;
use jobworker_testkit::cgroup::{cgroup_stat, io_disk};
use jobworker_testkit::procfs::{job_processes, pid_ns, still_alive};
use jobworker_testkit::*;

fn limits(cpu_millis: Option<u32>, memory_bytes: Option<u64>, pids: Option<u32>) -> Limits {
    Limits {
        cpu_millis,
        memory_bytes,
        pids,
        ..Default::default()
    }
}

fn spec_with(argv: &[&str], l: Limits) -> JobSpec {
    JobSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        limits: l,
        ..Default::default()
    }
}

fn is_v2() -> bool {
    std::env::var("JOBWORKER_TEST_CGROUP_BACKEND").as_deref() == Ok("v2")
        || std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

#[tokio::test]
async fn the_probe_sees_a_sandbox_from_inside() {
    if skip_unless_root("the_probe_sees_a_sandbox_from_inside") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default());
    let mut c = exec.client().await;
    let mut spec = spec_with(
        &[&probe(), "inspect"],
        limits(Some(500), Some(64 << 20), Some(50)),
    );
    spec.env = vec![EnvVar {
        name: "GREETING".into(),
        value: "hello there".into(),
    }];
    let id = c.start("alice", spec).await.unwrap();
    let (out, status) = c.wait(id).await;
    assert_eq!(
        status.exit_code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let f: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let s = |k: &str| {
        f[k].as_str()
            .unwrap_or_else(|| panic!("{k}: {f}"))
            .to_owned()
    };

    // PID namespace: the init is pid 1, the probe pid 2, and nothing of the host shows.
    assert_eq!(f["pid"], 2);
    assert_eq!(f["visible_pids"], serde_json::json!([1, 2]));
    assert_eq!(s("pid1_cmdline"), "jobworker-init --job-init");
    assert_eq!(s("pid1_maps"), "PermissionDenied");
    // The init leads its own session: no terminal signal aimed at the executor reaches it.
    assert_eq!(f["session"], 1);
    // Network: only lo, and it is up.
    assert_eq!(f["interfaces"], serde_json::json!(["lo"]));
    assert_eq!(f["lo_up"], true);
    // UTS.
    assert_eq!(s("hostname"), format!("job-{}", id.short()));
    // Credentials: an id of the job's own (the same for its group), no supplementary
    // groups, no capabilities at all.
    let uid = status.uid.expect("the job's id in its status");
    assert!(JOB_IDS.contains(&uid), "{uid}");
    let gid = uid;
    assert_eq!(s("uid"), format!("{uid}\t{uid}\t{uid}\t{uid}"));
    assert_eq!(s("gid"), format!("{gid}\t{gid}\t{gid}\t{gid}"));
    assert_eq!(s("groups"), "");
    for cap in ["cap_eff", "cap_prm", "cap_inh", "cap_bnd", "cap_amb"] {
        assert_eq!(s(cap), "0000000000000000", "{cap}");
    }
    assert_eq!(s("no_new_privs"), "1");
    assert_eq!(s("seccomp"), "2");
    // The seccomp filter denies mounting and new namespaces with EPERM.
    assert_eq!(s("mount"), "EPERM");
    assert_eq!(s("unshare_user"), "EPERM");
    assert_eq!(s("unshare_net"), "EPERM");
    // Only the families a job needs: vsock reaches past the network namespace, and
    // netlink's uevents are the host's.
    assert_eq!(s("socket_inet"), "ok");
    assert_eq!(s("socket_netlink_route"), "ok");
    assert_eq!(s("socket_vsock"), "EAFNOSUPPORT");
    assert_eq!(s("socket_packet"), "EAFNOSUPPORT");
    assert_eq!(s("socket_uevent"), "EAFNOSUPPORT");
    // A private tmpfs on /tmp, the working directory.
    let tmp = s("tmp_mount");
    assert!(tmp.contains(" /tmp ") && tmp.contains(" - tmpfs "), "{tmp}");
    assert!(
        tmp.contains(",size=65536k"),
        "the job's own, size-capped tmpfs: {tmp}"
    );
    assert_eq!(f["tmp_writable"], true);
    assert_eq!(s("cwd"), "/tmp");
    // Only stdin, stdout, stderr (and the probe's own directory handle for the listing).
    assert_eq!(f["fds"], serde_json::json!(["0", "1", "2", "3"]));
    // The fixed environment plus the user's variable.
    let user = format!("job-{}", id.short());
    let mut env: Vec<String> = f["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    env.sort();
    let mut expected = vec![
        "GREETING=hello there".to_string(),
        "HOME=/tmp".into(),
        format!("JOBWORKER_JOB_ID={id}"),
        format!("LOGNAME={user}"),
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        format!("USER={user}"),
    ];
    expected.sort();
    assert_eq!(env, expected);
    // The job's cgroup namespace is rooted at its own group.
    let cgroup = s("cgroup");
    if is_v2() {
        assert_eq!(cgroup, "0::/\n");
        assert_eq!(s("cg_memory_max"), (64u64 << 20).to_string());
        assert_eq!(s("cg_memory_swap_max"), "0");
        assert_eq!(s("cg_pids_max"), "50");
        assert_eq!(s("cg_cpu_max"), "50000 100000");
    } else {
        for line in cgroup.lines() {
            let ctrl = line.split(':').nth(1).unwrap();
            if ["cpu", "cpuacct", "memory", "blkio", "pids", "freezer"].contains(&ctrl) {
                assert!(line.ends_with(":/"), "{line}");
            }
        }
    }
}

#[tokio::test]
async fn limits_are_in_the_jobs_cgroup_while_it_runs_and_the_group_goes_after() {
    if skip_unless_root("limits_are_in_the_jobs_cgroup_while_it_runs_and_the_group_goes_after") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default());
    let mut c = exec.client().await;
    let mut gate = Gate::new();
    let gate_path = gate.path.to_string_lossy().into_owned();
    let id = c
        .start(
            "alice",
            spec_with(
                &[&probe(), "spin", "0", &gate_path],
                limits(Some(250), Some(48 << 20), Some(20)),
            ),
        )
        .await
        .unwrap();
    exec.client().await.wait_for_output(id, b"spun").await;
    let read = |f: &str| {
        std::fs::read_to_string(exec.job_cgroup_file(id, f))
            .unwrap()
            .trim()
            .to_owned()
    };
    if is_v2() {
        assert_eq!(read("memory.max"), (48u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("pids.max"), "20");
        assert_eq!(read("cpu.max"), "25000 100000");
    } else {
        assert_eq!(read("memory.limit_in_bytes"), (48u64 << 20).to_string());
        assert_eq!(read("pids.max"), "20");
        assert_eq!(read("cpu.cfs_quota_us"), "25000");
        assert_eq!(read("cpu.cfs_period_us"), "100000");
    }
    gate.open();
    let (_, status) = c.wait(id).await;
    assert_eq!(status.exit_code, Some(0));
    assert_eq!(status.limits.cpu_millis, Some(250));
    assert!(status.cpu_usec.is_some(), "{status:?}");
    assert!(
        status.peak_memory_bytes.is_some_and(|m| m > 0),
        "{status:?}"
    );
    assert_eq!(
        exec.job_groups_left_after(id),
        Vec::<std::path::PathBuf>::new()
    );
}

#[tokio::test]
async fn a_memory_hog_over_its_limit_is_oom_killed() {
    if skip_unless_root("a_memory_hog_over_its_limit_is_oom_killed") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default());
    let mut c = exec.client().await;
    let id = c
        .start(
            "alice",
            spec_with(
                &[&probe(), "hog", "512"],
                limits(None, Some(32 << 20), None),
            ),
        )
        .await
        .unwrap();
    let (out, status) = c.wait(id).await;
    assert!(!out.ends_with(b"survived\n"), "the hog survived");
    assert_eq!(status.state, JobState::Signaled, "{status:?}");
    assert_eq!(status.signal, Some(9));
    assert!(status.oom_killed, "{status:?}");
    assert!(
        status.peak_memory_bytes.is_some_and(|m| m <= 32 << 20),
        "{status:?}"
    );
    assert_unaffected(&exec).await;
}

#[tokio::test]
async fn a_fork_bomb_is_contained_and_can_be_stopped() {
    if skip_unless_root("a_fork_bomb_is_contained_and_can_be_stopped") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default());
    let mut c = exec.client().await;
    let id = c
        .start(
            "alice",
            spec_with(&[&probe(), "forkbomb"], limits(None, None, Some(32))),
        )
        .await
        .unwrap();
    let ns = pid_ns(exec.init_pid(id));
    let out = exec
        .client()
        .await
        .wait_for_output(id, b"limit reached")
        .await;
    let text = String::from_utf8_lossy(&out);
    // The init and the probe count too: at most 30 children fit under 32.
    let n: u32 = text
        .split_whitespace()
        .nth(3)
        .and_then(|n| n.trim_end_matches(':').parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(n <= 30, "{text}");
    let procs = job_processes(&ns);
    assert!(procs.len() <= 32 && procs.len() as u32 >= n, "{procs:?}");
    // The host can still fork.
    assert!(
        std::process::Command::new("true")
            .status()
            .unwrap()
            .success()
    );
    let s = c.stop(id).await.unwrap();
    assert_eq!(s.state, JobState::Stopped);
    assert_eq!(still_alive(&procs), vec![]);
    assert_eq!(
        exec.job_groups_left_after(id),
        Vec::<std::path::PathBuf>::new()
    );
    assert_unaffected(&exec).await;
}

#[tokio::test]
async fn a_cpu_hog_is_throttled_to_its_quota() {
    if skip_unless_root("a_cpu_hog_is_throttled_to_its_quota") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default());
    let mut c = exec.client().await;
    let mut gate = Gate::new();
    let gate_path = gate.path.to_string_lossy().into_owned();
    let id = c
        .start(
            "alice",
            spec_with(
                &[&probe(), "spin", "2000", &gate_path],
                limits(Some(200), None, None),
            ),
        )
        .await
        .unwrap();
    exec.client().await.wait_for_output(id, b"spun").await;
    let stat = exec.job_cgroup_file(id, "cpu.stat");
    let throttled = cgroup_stat(&stat, "nr_throttled ");
    assert!(throttled > 0, "nr_throttled = {throttled}");
    gate.open();
    let (_, status) = c.wait(id).await;
    let wall_us = (status.ended_at_ms.unwrap() - status.started_at_ms) * 1000;
    let cpu_us = status.cpu_usec.unwrap();
    // At most about 0.2 of the wall time, with room for the period granularity.
    assert!(
        cpu_us <= wall_us / 5 + wall_us / 10 + 50_000,
        "cpu {cpu_us} us in {wall_us} us of wall time"
    );
}

#[tokio::test]
async fn direct_io_writes_are_held_to_the_write_limit() {
    if skip_unless_root("direct_io_writes_are_held_to_the_write_limit") {
        return;
    }
    let Some(device) = io_disk() else {
        return;
    };
    // Where the job writes: the VM tests give a raw scratch disk; on a host, a file in a
    // scratch directory on the disk holding /.
    // Where the job writes: a file on the disk (the VM tests give a scratch disk with a
    // file system, `JOBWORKER_TEST_IO_TARGET`; on a host, a scratch directory on the disk
    // holding /), in a directory bound writable into the jobs, which see the host
    // read-only.
    let scratch = Scratch::new("io");
    let target = match std::env::var("JOBWORKER_TEST_IO_TARGET") {
        Ok(t) => std::path::PathBuf::from(t),
        Err(_) => scratch.writable("w").join("file"),
    };
    let dir = target.parent().expect("a file in a directory").to_owned();
    let target = target.to_string_lossy().into_owned();
    const MIB: u64 = 4;
    const BPS: u64 = 1 << 20;
    let exec = Executor::start(ExecutorOptions::default().bind(&dir, true));
    let mut c = exec.client().await;
    let mut l = limits(None, None, None);
    l.io = Some(IoLimits {
        device: device.clone(),
        write_bps: Some(BPS),
        ..Default::default()
    });
    let id = c
        .start(
            "alice",
            spec_with(&[&probe(), "direct-write", &target, &MIB.to_string()], l),
        )
        .await
        .unwrap();
    let (out, status) = c.wait(id).await;
    assert_eq!(
        status.exit_code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let ms: u64 = String::from_utf8_lossy(&out).trim().parse().unwrap();
    // A lower bound only: N MiB at 1 MiB/s take at least N-1 s (the throttle lets the
    // first slice through at once).
    assert!(
        ms >= (MIB - 1) * 1000,
        "{MIB} MiB at {BPS} B/s took only {ms} ms on {device}"
    );
}

#[tokio::test]
async fn stop_ends_a_job_that_ignores_sigterm_and_forks() {
    if skip_unless_root("stop_ends_a_job_that_ignores_sigterm_and_forks") {
        return;
    }
    let exec = Executor::start(ExecutorOptions {
        extra: vec!["--stop-grace-ms".into(), "300".into()],
        ..Default::default()
    });
    let mut c = exec.client().await;
    let script = "trap '' TERM; (trap '' TERM; while :; do sleep 1; done) & (trap '' TERM; sleep 1000) & echo ready; while :; do sleep 1; done";
    let id = c.run(&["sh", "-c", script]).await.unwrap();
    let ns = pid_ns(exec.init_pid(id));
    exec.client().await.wait_for_output(id, b"ready").await;
    let procs = job_processes(&ns);
    assert!(procs.len() >= 4, "{procs:?}");
    let s = c.stop(id).await.unwrap();
    assert_eq!(s.state, JobState::Stopped);
    assert_eq!(
        s.signal,
        Some(9),
        "SIGTERM was ignored, so SIGKILL ended it"
    );
    assert_eq!(still_alive(&procs), vec![]);
    assert_eq!(
        exec.job_groups_left_after(id),
        Vec::<std::path::PathBuf>::new()
    );
    assert_unaffected(&exec).await;
}

#[tokio::test]
async fn a_limit_above_a_ceiling_is_refused_naming_it() {
    if skip_unless_root("a_limit_above_a_ceiling_is_refused_naming_it") {
        return;
    }
    let exec = Executor::start(ExecutorOptions {
        extra: vec!["--ceiling-memory-bytes".into(), (64u64 << 20).to_string()],
        ..Default::default()
    });
    let mut c = exec.client().await;
    let e = c
        .start(
            "alice",
            spec_with(&["true"], limits(None, Some(65 << 20), None)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert_eq!(
        e.message,
        "memory: 68157440 bytes is above this executor's ceiling of 67108864 bytes"
    );
    assert_eq!(exec.job_groups_left(), Vec::<std::path::PathBuf>::new());
}

#[tokio::test]
async fn an_io_limit_on_something_that_is_not_a_block_device_fails_to_start() {
    if skip_unless_root("an_io_limit_on_something_that_is_not_a_block_device_fails_to_start") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default());
    let mut c = exec.client().await;
    let mut l = limits(None, None, None);
    l.io = Some(IoLimits {
        device: "/dev/null".into(),
        read_bps: Some(1000),
        ..Default::default()
    });
    let e = c.start("alice", spec_with(&["true"], l)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::FailedToStart);
    assert!(e.message.contains("/dev/null"), "{}", e.message);
    // The group was refused while it was being made, and removed before the answer.
    assert_eq!(exec.job_groups_left(), Vec::<std::path::PathBuf>::new());
}

#[tokio::test]
async fn a_killed_executor_takes_its_jobs_with_it_and_records_them_as_lost() {
    if skip_unless_root("a_killed_executor_takes_its_jobs_with_it_and_records_them_as_lost") {
        return;
    }
    let mut exec = Executor::start(ExecutorOptions::default());
    let mut c = exec.client().await;
    let done = c.run(&["echo", "finished"]).await.unwrap();
    let (_, done_status) = c.wait(done).await;
    // Three running jobs: a plain one, one with a daemon that left its session (and
    // still holds the output pipe), and one blocked half-way through 1 MiB of output.
    let plain = c
        .run(&["sh", "-c", "echo partial; exec sleep 1000"])
        .await
        .unwrap();
    let daemon = c
        .run(&[
            "sh",
            "-c",
            "(setsid sleep 1000 &); echo daemonized; exec sleep 1000",
        ])
        .await
        .unwrap();
    let gate = Gate::new();
    let gate_path = gate.path.to_string_lossy().into_owned();
    let half = c
        .run(&[&probe(), "pattern", &(1 << 20).to_string(), &gate_path])
        .await
        .unwrap();
    let mut gate = gate;
    gate.open();
    let mut inits = Vec::new();
    let mut procs = Vec::new();
    for (id, len) in [(plain, 8), (daemon, 11), (half, 1 << 19)] {
        let init = exec.init_pid(id);
        inits.push(init);
        let ns = pid_ns(init);
        // Once the executor has stored all the job will write for now.
        exec.client().await.wait_for_len(id, len).await;
        procs.extend(job_processes(&ns));
    }
    // Each job's init, then: a sleep; the daemon's sleep and a sleep; the probe.
    assert_eq!(procs.len(), 2 + 3 + 2, "{procs:?}");
    drop(c);
    exec.kill9();
    // The lifeline pipe hangs up: each job's init kills its job and exits.
    for init in inits {
        assert!(
            wait_exit(init, Duration::from_secs(10)),
            "a job outlived its executor"
        );
    }
    assert_eq!(
        still_alive(&procs),
        vec![],
        "a process of a job was orphaned"
    );
    exec.restart();
    assert_eq!(exec.job_groups_left(), Vec::<std::path::PathBuf>::new());
    let mut c = exec.client().await;
    for (id, expected) in [
        (plain, b"partial\n".to_vec()),
        (daemon, b"daemonized\n".to_vec()),
        (half, pattern(1 << 19)),
    ] {
        let s = c.status(id).await.unwrap();
        assert_eq!(s.state, JobState::Lost);
        assert!(
            s.error.as_deref().unwrap_or("").contains("restarted"),
            "{s:?}"
        );
        assert!(s.ended_at_ms.is_some());
        assert_eq!(s.output_bytes, expected.len() as u64);
        let (out, end) = c.wait(id).await;
        assert!(out == expected, "job {id}: {} bytes of output", out.len());
        assert_eq!(end, s);
    }
    assert_eq!(c.status(done).await.unwrap(), done_status);
    assert_eq!(c.wait(done).await.0, b"finished\n");
    assert_unaffected(&exec).await;
}
