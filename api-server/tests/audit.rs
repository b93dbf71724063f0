//! Accountability through the whole stack, as root: the audit trail of a scripted
//! session (who did what, in order, with the API server's own records marked as its
//! claims), its verification and the tampering it catches; job events as they happen,
//! each user seeing only their own; the metrics page, parsed by a real Prometheus
//! parser, moving as jobs run.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use jobworker_proto::v1 as pb;
use jobworker_proto::v1::job_event::Event;
use jobworker_testkit::grpc::*;
use jobworker_testkit::*;
use serde_json::Value;
use tonic::Code;

/// Reads the trail through the API (admin, following) until `done` holds for what came,
/// bounded by the kit's limit.
async fn audit_until(
    admin: &mut pb::job_worker_client::JobWorkerClient<tonic::transport::Channel>,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let mut stream = admin
        .stream_audit(pb::StreamAuditRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .expect("StreamAudit")
        .into_inner();
    let mut records: Vec<Value> = Vec::new();
    let read = async {
        while !done(&records) {
            let r = stream
                .message()
                .await
                .expect("a record")
                .expect("the stream goes on");
            assert!(!r.truncated);
            let v: Value = serde_json::from_str(&r.json).expect("a JSON record");
            assert_eq!(v["seq"].as_u64(), Some(r.seq));
            records.push(v);
        }
    };
    tokio::time::timeout(LIMIT, read)
        .await
        .unwrap_or_else(|_| panic!("the trail never had what the test waits for"));
    records
}

fn event(r: &Value) -> &str {
    r["event"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_session_leaves_exactly_its_records_in_order_and_tampering_is_named() {
    if skip_unless_root(
        "a_scripted_session_leaves_exactly_its_records_in_order_and_tampering_is_named",
    ) {
        return;
    }
    let w = Stack::generated("audit", ApiOptions::default());
    let mut alice = w.client("alice").await;
    let mut admin = w.client("admin").await;

    // The script: alice starts a job and runs a process in it; a start of hers over a
    // ceiling is refused; an administrator stops her job; a client of another CA fails
    // its handshake.
    let id = start_job(&mut alice, &["sleep", "1000"]).await;
    let exec = w
        .jobctl("alice")
        .args(["exec", &id, "--", "true"])
        .stdin(Stdio::null())
        .output()
        .expect("jobctl exec");
    assert!(exec.status.success(), "{exec:?}");
    let mut over = start(&["true"]);
    over.limits = Some(pb::Limits {
        pids: Some(4_000_000),
        ..Default::default()
    });
    let refused = alice.start_job(over).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let stopped = admin
        .stop_job(pb::StopJobRequest { id: id.clone() })
        .await
        .expect("stop")
        .into_inner()
        .status
        .unwrap();
    assert_eq!(stopped.state, pb::JobState::Stopped as i32);
    let alert = refusal(w.api.addr, w.pki.client_config("other-ca")).await;
    assert!(!alert.is_empty());

    // The executor appends its own records as things happen, and the API server's
    // reports as they come: wait until both are in.
    let records = audit_until(&mut admin, |rs| {
        rs.iter().any(|r| event(r) == "job_ended")
            && rs.iter().any(|r| event(r) == "api_tls_failure")
            && rs
                .iter()
                .any(|r| event(r) == "api_call" && r["method"] == "StopJob")
    })
    .await;

    // The executor's own records, after its start, in order.
    let own: Vec<&Value> = records
        .iter()
        .filter(|r| r["source"] == "executor")
        .skip_while(|r| event(r) != "executor_started")
        .skip(1)
        .collect();
    let kinds: Vec<&str> = own.iter().map(|r| event(r)).collect();
    assert_eq!(
        kinds,
        [
            "job_started",
            "exec",
            "refused",
            "stop_requested",
            "job_ended"
        ],
        "{own:#?}"
    );
    let (started, exec, refusal_r, stop, ended) = (own[0], own[1], own[2], own[3], own[4]);
    assert_eq!(started["job"], id.as_str());
    assert_eq!(started["owner"], "alice");
    assert_eq!(started["argv"], serde_json::json!(["sleep", "1000"]));
    assert!(started["pid"].as_u64().is_some() && started["uid"].as_u64().is_some());
    assert!(started["deadline"].as_str().is_some() && started["limits"]["pids"].as_u64().is_some());
    assert_eq!(exec["job"], id.as_str());
    assert_eq!(
        (&exec["owner"], &exec["caller"]),
        (&Value::from("alice"), &Value::from("alice"))
    );
    assert_eq!(exec["argv"], serde_json::json!(["true"]));
    assert_eq!(refusal_r["request"], "start");
    assert_eq!(refusal_r["identity"], "alice");
    assert_eq!(refusal_r["reason"], "ceiling");
    assert_eq!(
        (&stop["job"], &stop["owner"], &stop["by"]),
        (
            &Value::from(id.as_str()),
            &Value::from("alice"),
            &Value::from("admin")
        )
    );
    assert_eq!(ended["job"], id.as_str());
    assert_eq!(ended["state"], "stopped");
    assert_eq!(ended["signal"], 15);
    assert!(ended["cpu_usec"].as_u64().is_some());

    // The API server's claims, marked as its own: each call with the certificate that
    // made it, and the failed handshake.
    let calls: Vec<&Value> = records
        .iter()
        .filter(|r| event(r) == "api_call" && r["source"] == "api")
        .collect();
    let call = |method: &str, who: &str, code: &str| {
        calls
            .iter()
            .find(|c| c["method"] == method && c["identity"] == who && c["code"] == code)
            .unwrap_or_else(|| panic!("no {method} {who} {code} in {calls:#?}"))
    };
    let start_call = call("StartJob", "alice", "OK");
    assert_eq!(start_call["job"], id.as_str());
    assert_eq!(start_call["cert_serial"], "01");
    assert_eq!(start_call["cert_sha256"].as_str().map(str::len), Some(64));
    assert!(
        start_call["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    call("StartJob", "alice", "INVALID_ARGUMENT");
    call("ExecJob", "alice", "OK");
    let stop_call = call("StopJob", "admin", "OK");
    assert_eq!(stop_call["job"], id.as_str());
    assert_eq!(stop_call["cert_serial"], "03");
    let tls = records
        .iter()
        .find(|r| event(r) == "api_tls_failure")
        .unwrap();
    assert_eq!(tls["source"], "api");
    assert_eq!(tls["count"], 1);
    assert!(tls["peer"].as_str().unwrap().starts_with("127.0.0.1"));

    // A user may not read the trail.
    let denied = alice
        .stream_audit(pb::StreamAuditRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // The trail verifies; a copy with one byte changed, one record removed, or two
    // swapped does not, and the record named is the one at fault.
    let dir = w.exec.audit_dir();
    let (ok, text) = audit_verify(&dir);
    assert!(ok, "{text}");
    let k = started["seq"].as_u64().unwrap();
    let segment = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .unwrap();
    let text_of = std::fs::read_to_string(&segment).unwrap();
    let lines: Vec<&str> = text_of.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with(&format!("{{\"seq\":{k},")))
        .unwrap();
    let tampered = |name: &str, lines: Vec<String>| {
        let copy = w.scratch.join(name);
        std::fs::create_dir_all(&copy).unwrap();
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(copy.join(segment.file_name().unwrap()), text).unwrap();
        let (ok, out) = audit_verify(&copy);
        assert!(!ok, "{name}: verify passed: {out}");
        out
    };
    let owned = || lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    let mut edited = owned();
    edited[at] = edited[at].replace("\"owner\":\"alice\"", "\"owner\":\"alicf\"");
    let out = tampered("edited", edited);
    assert!(out.contains(&format!("record {k}: changed")), "{out}");
    let mut removed = owned();
    removed.remove(at);
    let out = tampered("removed", removed);
    assert!(out.contains(&format!("record {k}: missing")), "{out}");
    let mut swapped = owned();
    swapped.swap(at, at + 1);
    let out = tampered("swapped", swapped);
    assert!(out.contains(&format!("record {k}: missing")), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_a_job_from_start_to_end_and_bob_sees_none_of_alices() {
    if skip_unless_root("events_follow_a_job_from_start_to_end_and_bob_sees_none_of_alices") {
        return;
    }
    let w = Stack::generated("events", ApiOptions::default());
    let mut bob = w.client("bob").await;
    let mut bob_events = bob
        .stream_events(pb::StreamEventsRequest { follow: true })
        .await
        .expect("bob's events")
        .into_inner();
    // alice follows with jobctl, as a script would.
    let mut follow = w
        .jobctl("alice")
        .args(["events", "--follow", "-o", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("jobctl events --follow");
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut alice = w.client("alice").await;
    let id = start_job(&mut alice, &["sh", "-c", "exit 3"]).await;
    let seen = tokio::task::spawn_blocking(move || {
        let mut seen: Vec<Value> = Vec::new();
        while !seen.iter().any(|e| e["event"] == "ended") {
            let line = lines.next().expect("jobctl events ended early").unwrap();
            seen.push(serde_json::from_str(&line).unwrap());
        }
        seen
    });
    let seen = tokio::time::timeout(LIMIT, seen)
        .await
        .expect("alice saw her job end")
        .unwrap();
    let _ = follow.kill();
    let _ = follow.wait();
    let mine: Vec<&Value> = seen.iter().filter(|e| e["id"] == id.as_str()).collect();
    let kinds: Vec<&str> = mine.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["started", "ended"], "{seen:?}");
    assert_eq!(mine[1]["status"]["state"], "exited");
    assert_eq!(mine[1]["status"]["exit_code"], 3);

    // bob's stream: his own job's events arrive, and nothing of alice's came before.
    let own = start_job(&mut bob, &["true"]).await;
    let read = async {
        let mut got = Vec::new();
        loop {
            let e = bob_events.message().await.unwrap().unwrap();
            assert_eq!(e.owner, "bob", "bob saw {e:?}");
            assert_ne!(e.id, id);
            let end = matches!(e.event, Some(Event::Ended(_)));
            got.push(e);
            if end {
                return got;
            }
        }
    };
    let got = tokio::time::timeout(LIMIT, read)
        .await
        .expect("bob's job ended");
    assert!(got.iter().all(|e| e.id == own), "{got:?}");
}

/// The value of one sample of a metric with these labels.
fn sample(page: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    page.samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

fn scrape(w: &Stack) -> prometheus_parse::Scrape {
    let (status, body) = w.api.scrape();
    assert_eq!(status, "HTTP/1.1 200 OK");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("a page in the Prometheus text format")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_page_parses_and_its_counters_move_as_jobs_run() {
    if skip_unless_root("the_metrics_page_parses_and_its_counters_move_as_jobs_run") {
        return;
    }
    let w = Stack::generated("metrics", ApiOptions::default());
    let mut alice = w.client("alice").await;
    let before = scrape(&w);
    assert_eq!(sample(&before, "jobworker_executor_up", &[]), 1.0);
    let started = sample(&before, "jobworker_jobs_started_total", &[]);
    let exited = sample(
        &before,
        "jobworker_jobs_ended_total",
        &[("state", "exited")],
    );
    let seq = sample(&before, "jobworker_audit_sequence", &[]);

    let id = start_job(&mut alice, &["sh", "-c", "echo hello"]).await;
    let out = finished_output(&mut alice, &id).await;
    assert_eq!(out.0, b"hello\n");
    // The job's end is counted once its supervisor is done with it: wait for its
    // record, an event, not a time.
    let mut events = alice
        .stream_events(pb::StreamEventsRequest { follow: true })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(LIMIT, async {
        loop {
            let e = events.message().await.unwrap().unwrap();
            if e.id == id && matches!(e.event, Some(Event::Ended(_))) {
                return;
            }
        }
    })
    .await
    .expect("the job's end");

    let after = scrape(&w);
    assert_eq!(
        sample(&after, "jobworker_jobs_started_total", &[]),
        started + 1.0
    );
    assert_eq!(
        sample(&after, "jobworker_jobs_ended_total", &[("state", "exited")]),
        exited + 1.0
    );
    assert!(sample(&after, "jobworker_audit_sequence", &[]) > seq);
    assert!(
        sample(
            &after,
            "jobworker_rpc_requests_total",
            &[("method", "StartJob"), ("code", "OK")]
        ) >= 1.0
    );
    assert!(sample(&after, "jobworker_output_bytes_sent_total", &[]) >= 6.0);
    assert_eq!(sample(&after, "jobworker_executor_info", &[]), 1.0);
    // Histograms have their buckets, ending at +Inf with the count.
    let hist = after
        .samples
        .iter()
        .find(|s| {
            s.metric == "jobworker_rpc_duration_seconds"
                && s.labels.get("method") == Some("StartJob")
        })
        .expect("the StartJob latency histogram");
    match &hist.value {
        prometheus_parse::Value::Histogram(buckets) => {
            assert!(
                buckets
                    .iter()
                    .any(|b| b.less_than.is_infinite() && b.count >= 1.0),
                "{buckets:?}"
            );
        }
        other => panic!("not a histogram: {other:?}"),
    }
    // No label holds a job id or an identity.
    let keys: std::collections::BTreeSet<&str> = after
        .samples
        .iter()
        .flat_map(|s| s.labels.keys().map(String::as_str).collect::<Vec<_>>())
        .collect();
    assert_eq!(
        keys.into_iter().collect::<Vec<_>>(),
        [
            "cgroup_backend",
            "code",
            "method",
            "reason",
            "request",
            "state"
        ]
    );
    assert!(
        !after
            .samples
            .iter()
            .any(|s| s.labels.values().any(|v| *v == id || v == "alice"))
    );

    // A refused start is counted by its reason; anything but /metrics is not served.
    let refused = sample(
        &after,
        "jobworker_starts_refused_total",
        &[("reason", "ceiling")],
    );
    let mut over = start(&["true"]);
    over.limits = Some(pb::Limits {
        pids: Some(4_000_000),
        ..Default::default()
    });
    alice.start_job(over).await.unwrap_err();
    let last = scrape(&w);
    assert_eq!(
        sample(
            &last,
            "jobworker_starts_refused_total",
            &[("reason", "ceiling")]
        ),
        refused + 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_stats_show_a_running_jobs_live_usage_and_stats_follow_ends_with_the_job() {
    if skip_unless_root(
        "status_and_stats_show_a_running_jobs_live_usage_and_stats_follow_ends_with_the_job",
    ) {
        return;
    }
    let w = Stack::generated("usage", ApiOptions::default());
    let mut alice = w.client("alice").await;
    let id = start_job(&mut alice, &["sh", "-c", "while :; do :; done"]).await;
    let jobctl = |args: &[&str]| {
        let out = w
            .jobctl("alice")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let status = jobctl(&["status", &id]);
    for line in ["memory now:", "pids now:", "cpu now:"] {
        assert!(status.contains(line), "{status}");
    }
    let json: Value = serde_json::from_str(&jobctl(&["status", "-o", "json", &id])).unwrap();
    assert!(
        json["usage"]["memory_bytes"].as_u64().unwrap() > 0,
        "{json}"
    );
    assert!(json["usage"]["pids"].as_u64().unwrap() >= 1, "{json}");
    // A busy loop under the default CPU ceiling uses a good part of a core.
    assert!(json["usage"]["cpu_cores"].as_f64().unwrap() > 0.1, "{json}");
    let stats = jobctl(&["stats", "--interval", "100ms", "-o", "json", &id]);
    let sample: Value = serde_json::from_str(stats.trim()).unwrap();
    assert!(sample["memory_bytes"].as_u64().is_some(), "{stats}");

    // Someone else's job is not found, as everywhere.
    let mut bob = w.client("bob").await;
    let hidden = bob
        .stream_job_usage(pb::StreamJobUsageRequest {
            id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    let follow = w
        .jobctl("alice")
        .args(["stats", "--follow", "--interval", "100ms", &id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Followed, the samples end with the job.
    alice
        .stop_job(pb::StopJobRequest { id: id.clone() })
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking(move || follow.wait_with_output().unwrap());
    let out = tokio::time::timeout(LIMIT, out)
        .await
        .expect("stats --follow ended")
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines().last().unwrap().contains("ended: stopped"),
        "{text}"
    );
}
