//! The audit trail with a real executor: fail closed when it cannot be written, and
//! rotation that keeps the configured segments and a chain that verifies across them.

use std::path::{Path, PathBuf};
use std::process::Command;

use jobworker_protocol::*;
use jobworker_testkit::*;

/// A small tmpfs of the test's own, unmounted (lazily, in case something still holds
/// it) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("running mount")
            .success();
        assert!(ok, "mounting a tmpfs on {}", dir.display());
        Tmpfs(dir.to_owned())
    }

    /// Writes into it until it is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        // Bounded: the tmpfs holds at most its size.
        for _ in 0..1_000_000 {
            if f.write_all(&chunk).is_err() {
                return path;
            }
        }
        panic!("the tmpfs never filled up");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn with_the_trail_unwritable_a_start_is_unavailable_and_nothing_of_the_job_runs() {
    if skip_unless_root(
        "with_the_trail_unwritable_a_start_is_unavailable_and_nothing_of_the_job_runs",
    ) {
        return;
    }
    let scratch = Scratch::new("audit-full");
    let marks = scratch.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    std::fs::set_permissions(&marks, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    // Declared before the executor: unmounted after it stopped.
    let tmpfs = Tmpfs::mount(&scratch.join("audit"), "256k");
    let audit_dir = tmpfs.0.join("trail");
    let exec = Executor::start(
        ExecutorOptions::default()
            .bind(&marks, true)
            .flags(&["--audit-dir", audit_dir.to_str().unwrap()]),
    );
    let mut c = exec.client().await;
    let touch = |name: &str| format!("touch {}/{name}", marks.display());

    // Writable: the job runs.
    let id = c.run(&["sh", "-c", &touch("first")]).await.unwrap();
    assert_eq!(c.wait(id).await.1.exit_code, Some(0));
    assert!(marks.join("first").exists());

    let filler = tmpfs.fill();
    // The segment's last page may still have room for a few records (a file system
    // gives space by the page): starts succeed until it is used up, at most a page.
    let mut ran = 1;
    let refused = loop {
        assert!(
            ran < 64,
            "starts never failed with the trail's file system full"
        );
        let mark = format!("try-{ran}");
        match c.run(&["sh", "-c", &touch(&mark)]).await {
            Ok(id) => {
                assert_eq!(c.wait(id).await.1.exit_code, Some(0));
                ran += 1;
            }
            Err(e) => break (e, mark),
        }
    };
    let (e, mark) = refused;
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert_eq!(e.message, "the audit trail is unavailable");
    exec.wait_log("job not started: its start could not be recorded", LIMIT);
    // The init was killed before it had its spec: no command, no group, no job.
    assert!(!marks.join(&mark).exists(), "the refused job's command ran");
    assert_eq!(exec.job_groups_left(), Vec::<PathBuf>::new());
    let listed = c
        .call(Request::List {
            scope: Scope::Any,
            after: None,
            limit: 100,
            filter: Default::default(),
        })
        .await;
    match listed {
        Response::Jobs { jobs, .. } => assert_eq!(jobs.len(), ran, "{jobs:?}"),
        other => panic!("unexpected {other:?}"),
    }

    // With room again, starts go on, and the trail is intact.
    std::fs::remove_file(filler).unwrap();
    let id = c.run(&["sh", "-c", &touch("again")]).await.unwrap();
    assert_eq!(c.wait(id).await.1.exit_code, Some(0));
    assert!(marks.join("again").exists());
    exec.wait_log("audit trail writable again", LIMIT);
    let (ok, text) = audit_verify(&audit_dir);
    assert!(ok, "{text}");
    let started: Vec<_> = audit_records(&audit_dir)
        .into_iter()
        .filter(|r| r["event"] == "job_started")
        .collect();
    assert_eq!(
        started.len(),
        ran + 1,
        "only the jobs that ran were started"
    );
}

#[tokio::test]
async fn rotation_keeps_the_configured_segments_and_the_chain_verifies_across_them() {
    if skip_unless_root("rotation_keeps_the_configured_segments_and_the_chain_verifies_across_them")
    {
        return;
    }
    let exec = Executor::start(ExecutorOptions::default().flags(&[
        "--audit-segment-bytes",
        "1024",
        "--audit-segments",
        "3",
    ]));
    let mut c = exec.client().await;
    let mut last = None;
    for _ in 0..12 {
        let id = c.run(&["true"]).await.unwrap();
        c.wait(id).await;
        last = Some(id);
    }
    // Each job's end is appended after its final status is published: follow the trail
    // until the last job's end is durable. Nothing is appended after it, so the segments
    // stay as they are while they are checked.
    use futures::{SinkExt, StreamExt};
    let last = format!("\"job\":\"{}\"", last.unwrap());
    let mut t = exec.client().await.into_inner();
    t.send(Request::Audit(AuditQuery {
        since_ms: None,
        owner: None,
        follow: true,
    }))
    .await
    .unwrap();
    loop {
        let next = tokio::time::timeout(LIMIT, t.next())
            .await
            .expect("the last job's end within the limit");
        match next {
            Some(Ok(Response::AuditLine(l))) => {
                if l.line.contains("\"event\":\"job_ended\"") && l.line.contains(&last) {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(t);
    let dir = exec.audit_dir();
    exec.wait_log("audit segment deleted", LIMIT);
    let segments: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jsonl"))
        .collect();
    assert!(segments.len() <= 3, "{segments:?}");
    let (ok, text) = audit_verify(&dir);
    assert!(ok, "{text}");
    assert!(text.contains("in 3 segments"), "{text}");
    // Every kept segment begins with its segment record, whose prev is the last hash of
    // the segment before.
    let records = audit_records(&dir);
    assert_eq!(records[0]["event"], "segment");
    assert!(
        records[0]["seq"].as_u64().unwrap() > 1,
        "the oldest segments were deleted"
    );
    // The executor's log has the head of every closed segment.
    let log = std::fs::read_to_string(exec.dir.join("executor.log")).unwrap();
    assert!(log.contains("audit segment closed"), "no rotation logged");
}

#[tokio::test]
async fn records_name_who_did_what_and_a_restart_records_lost_jobs() {
    if skip_unless_root("records_name_who_did_what_and_a_restart_records_lost_jobs") {
        return;
    }
    let mut exec = Executor::start(ExecutorOptions::default());
    let mut c = exec.client().await;
    let spec = JobSpec {
        argv: vec!["sleep".into(), "1000".into()],
        env: vec![EnvVar {
            name: "SECRET".into(),
            value: "hunter2".into(),
        }],
        ..Default::default()
    };
    let id = c.start("alice", spec).await.unwrap();
    exec.kill9();
    exec.relaunch();
    let records = audit_records(&exec.audit_dir());
    let started = records
        .iter()
        .find(|r| r["event"] == "job_started")
        .unwrap();
    assert_eq!(started["job"], id.to_string());
    assert_eq!(started["owner"], "alice");
    assert_eq!(started["env"], serde_json::json!(["SECRET"]));
    assert!(
        !serde_json::to_string(&records).unwrap().contains("hunter2"),
        "an environment value in the trail"
    );
    assert!(started["pid"].as_u64().unwrap() > 0 && started["uid"].as_u64().unwrap() >= 600_000);
    let events: Vec<&str> = records
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "segment",
            "executor_started",
            "job_started",
            "executor_started",
            "job_lost"
        ],
        "{records:?}"
    );
    let lost = records.last().unwrap();
    assert_eq!(lost["job"], id.to_string());
    let (ok, text) = audit_verify(&exec.audit_dir());
    assert!(ok, "{text}");
}
