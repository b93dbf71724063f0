//! Jobs that misbehave and output that overflows: each ends as documented, and neither
//! the executor nor the host is affected. (Ignoring SIGTERM, exhausting pids and memory,
//! and the executor killed under its jobs are in `isolation.rs`.) Also: the init template
//! killed, or outliving its executor.

use std::path::PathBuf;
use std::time::Duration;

use jobworker_protocol::*;
use jobworker_testkit::procfs::{job_processes, parent_pid, pid_ns, status_kb, still_alive};
use jobworker_testkit::*;

fn output_files(exec: &Executor, id: &JobId) -> Vec<PathBuf> {
    let dir = exec.state.join("jobs").join(id.to_string());
    ["stdout", "stderr", "index"].map(|f| dir.join(f)).to_vec()
}

/// The job's output files (each stream and the index of their runs): their length and
/// the bytes the file system holds for them.
fn disk_use(exec: &Executor, id: &JobId) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    output_files(exec, id)
        .iter()
        .fold((0, 0), |(len, blocks), f| {
            let m = std::fs::metadata(f).unwrap();
            (len + m.len(), blocks + m.blocks() * 512)
        })
}

/// What a cap of `cap` keeps of a job that writes to one stream: the cap counts the
/// index, one record of 16 bytes for the one run.
fn kept(cap: u64) -> u64 {
    cap - 16
}

#[tokio::test]
async fn output_past_the_cap_is_dropped_and_the_job_keeps_running() {
    if skip_unless_root("output_past_the_cap_is_dropped_and_the_job_keeps_running") {
        return;
    }
    const CAP: u64 = 1 << 20;
    let exec = Executor::start(ExecutorOptions {
        extra: vec!["--max-output-bytes".into(), CAP.to_string()],
        ..Default::default()
    });
    let mut c = exec.client().await;
    // First 3 MiB, three times the cap; then the job says so at a checkpoint and waits at
    // its gate, still running; then 1 MiB more (the pattern goes on: 3 MiB is a multiple
    // of 256).
    let mut written = Checkpoint::new();
    let mut gate = Gate::new();
    let script = format!(
        "{probe} pattern {first} && echo written > {checkpoint} && read x < {gate} && \
         {probe} pattern {rest}",
        probe = probe(),
        first = 3 << 20,
        rest = 1 << 20,
        checkpoint = written.path.display(),
        gate = gate.path.display(),
    );
    let id = c.run(&["sh", "-c", &script]).await.unwrap();
    // Follow until the cap is reached: the output stops growing there.
    let mut t = exec.client().await.into_inner();
    {
        use futures::{SinkExt, StreamExt};
        t.send(Request::Output {
            scope: Scope::Any,
            id,
            from: OutputFrom::Offset(0),
            streams: Streams::BOTH,
            follow: true,
        })
        .await
        .unwrap();
        let mut got = 0u64;
        while got < kept(CAP) {
            match t.next().await.unwrap().unwrap() {
                Response::Chunk(_, b) => got += b.len() as u64,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, kept(CAP));
    }
    // The probe's writes of 3 MiB have returned: the executor has read all of it but
    // what the job's output pipe still holds (1 MiB at most), so at least 1 MiB past the
    // cap, in reads of at most 256 KiB, each recorded (the truncation with it) before
    // the next is made. The status says so at once.
    assert_eq!(written.reached(LIMIT).await, "written");
    let s = c.status(id).await.unwrap();
    assert_eq!(s.state, JobState::Running, "{s:?}");
    assert_eq!(s.output_bytes, kept(CAP));
    assert!(s.output_truncated, "{s:?}");
    // The run still growing has its record in memory; the files hold the bytes.
    let (len, bytes_on_disk) = disk_use(&exec, &id);
    assert_eq!(len, kept(CAP), "the files stop at the cap");
    assert!(
        bytes_on_disk <= CAP + (64 << 10),
        "{bytes_on_disk} bytes on disk"
    );
    // The last 1 MiB, all dropped, and the job exits normally.
    gate.open();
    let (out, end) = c.wait(id).await;
    assert_eq!(end.state, JobState::Exited);
    assert_eq!(end.exit_code, Some(0));
    assert_eq!(end.output_bytes, kept(CAP));
    assert!(end.output_truncated);
    assert!(
        out == pattern(kept(CAP) as usize),
        "the kept bytes are the first ones"
    );
    assert_eq!(disk_use(&exec, &id).0, CAP);
    assert_unaffected(&exec).await;
    drop(t);
}

#[tokio::test]
async fn a_job_writing_100_mb_without_a_newline_costs_the_executor_no_memory() {
    if skip_unless_root("a_job_writing_100_mb_without_a_newline_costs_the_executor_no_memory") {
        return;
    }
    const CAP: u64 = 8 << 20;
    let exec = Executor::start(ExecutorOptions {
        extra: vec!["--max-output-bytes".into(), CAP.to_string()],
        ..Default::default()
    });
    let mut c = exec.client().await;
    // Warm up, so that the baseline includes the runtime's and the allocator's start.
    let id = c.run(&["true"]).await.unwrap();
    c.wait(id).await;
    let before = status_kb(exec.pid(), "VmRSS");
    let id = c
        .run(&["head", "-c", "104857600", "/dev/zero"])
        .await
        .unwrap();
    let (out, end) = c.wait(id).await;
    assert_eq!(end.state, JobState::Exited, "{end:?}");
    assert_eq!(end.exit_code, Some(0));
    assert_eq!(end.output_bytes, kept(CAP));
    assert!(end.output_truncated);
    assert_eq!(out.len() as u64, kept(CAP));
    assert!(out.iter().all(|b| *b == 0));
    assert_eq!(disk_use(&exec, &id).0, CAP);
    // The 100 MB went through a fixed buffer: the executor's peak memory stays small.
    let peak = status_kb(exec.pid(), "VmHWM");
    let after = status_kb(exec.pid(), "VmRSS");
    note(&format!(
        "executor memory: VmRSS {before} kB before, {after} kB after, VmHWM {peak} kB"
    ));
    assert!(peak < 64 * 1024, "executor peak RSS {peak} kB");
    assert!(
        after < before + 16 * 1024,
        "executor RSS {before} -> {after} kB"
    );
    assert_unaffected(&exec).await;
}

#[tokio::test]
async fn a_double_forked_process_dies_when_its_command_exits() {
    if skip_unless_root("a_double_forked_process_dies_when_its_command_exits") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default());
    let mut c = exec.client().await;
    let mut gate = Gate::new();
    // The grandchild is re-parented to the job's init and keeps the output pipe open.
    let script = format!(
        "(setsid sleep 1000 &); echo forked; read x < {}; exit 5",
        gate.path.display()
    );
    let id = c.run(&["sh", "-c", &script]).await.unwrap();
    let ns = pid_ns(exec.init_pid(id));
    exec.client().await.wait_for_output(id, b"forked").await;
    let procs = job_processes(&ns);
    // The init, the shell and the orphaned sleep.
    assert_eq!(procs.len(), 3, "{procs:?}");
    gate.open();
    let (out, end) = c.wait(id).await;
    assert_eq!(out, b"forked\n");
    assert_eq!(end.state, JobState::Exited);
    assert_eq!(end.exit_code, Some(5));
    assert_eq!(still_alive(&procs), vec![], "nothing of the job survives");
    assert_eq!(exec.job_groups_left_after(id), Vec::<PathBuf>::new());
    assert_unaffected(&exec).await;
}

#[tokio::test]
async fn a_job_that_closes_its_output_keeps_running_until_it_exits() {
    if skip_unless_root("a_job_that_closes_its_output_keeps_running_until_it_exits") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default());
    let mut c = exec.client().await;
    let mut gate = Gate::new();
    let g = gate.path.display().to_string();
    // The gate is opened once: reopening it between the reads would leave a moment
    // without a reader, in which the test's second write would fail.
    let script = format!("echo before; exec >&- 2>&-; exec 3< {g}; read x <&3; read y <&3; exit 3");
    let id = c.run(&["sh", "-c", &script]).await.unwrap();
    // A follower from the start: it gets "before" and then waits for the job's end.
    let mut f = exec.client().await;
    let follower = tokio::spawn(async move { f.wait(id).await });
    // The job opens the gate only after closing stdout and stderr.
    gate.open();
    exec.client().await.wait_for_len(id, 7).await;
    let s = c.status(id).await.unwrap();
    assert_eq!(s.state, JobState::Running, "{s:?}");
    assert_eq!(s.output_bytes, 7);
    assert!(
        !follower.is_finished(),
        "the stream ended before the job did"
    );
    assert_eq!(c.output(id, 0, false).await.bytes, b"before\n");
    gate.open();
    let (out, end) = follower.await.unwrap();
    assert_eq!(out, b"before\n");
    assert_eq!(end.state, JobState::Exited);
    assert_eq!(end.exit_code, Some(3));
    assert_unaffected(&exec).await;
}

#[tokio::test]
async fn a_killed_init_template_is_reaped_and_replaced_and_jobs_still_start() {
    if skip_unless_root("a_killed_init_template_is_reaped_and_replaced_and_jobs_still_start") {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default());
    let old = exec.template_pid();
    signal(old, "KILL");
    assert!(wait_exit(old, Duration::from_secs(10)));
    // The next start finds the template gone, reaps it, starts a new one and uses it.
    let mut c = exec.client().await;
    let id = c.run(&["echo", "after the template"]).await.unwrap();
    assert_eq!(c.wait(id).await.0, b"after the template\n");
    exec.wait_log("started a new init template", Duration::from_secs(10));
    let new = exec.template_pid();
    assert_ne!(new, old);
    assert_eq!(parent_pid(old), None, "the killed template was reaped");
    assert_unaffected(&exec).await;
}

#[tokio::test]
async fn the_init_template_ends_with_its_executor() {
    if skip_unless_root("the_init_template_ends_with_its_executor") {
        return;
    }
    let mut exec = Executor::start(ExecutorOptions::default());
    let template = exec.template_pid();
    exec.kill9();
    assert!(
        wait_exit(template, Duration::from_secs(10)),
        "the init template outlived its executor"
    );
}
