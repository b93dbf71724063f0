//! Load on the full stack, as root: many clients running many jobs against tight caps,
//! and a thousand idle or slow connections against the connection cap and timeouts.
//! Every output must arrive complete, the only error allowed is RESOURCE_EXHAUSTED past
//! a cap, and both daemons must still answer afterwards. Skipped, visibly, when not
//! root.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use jobworker_proto::v1 as pb;
use jobworker_proto::v1::job_worker_client::JobWorkerClient;
use jobworker_testkit::grpc::*;
use jobworker_testkit::process::poll_until;
use jobworker_testkit::procfs::{fd_count, raise_fd_limit};
use jobworker_testkit::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Counts of what the clients met.
#[derive(Default)]
struct Tally {
    jobs: AtomicUsize,
    bytes: AtomicUsize,
    start_refused: AtomicUsize,
    stream_refused: AtomicUsize,
}

/// Runs `f` until it is not refused for a cap. Refusals wait for the next end of a
/// job (any client's), which frees a slot of both caps.
async fn past_the_caps<T, F, Fut>(ended: &Notify, refused: &AtomicUsize, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    loop {
        let next_end = ended.notified();
        tokio::pin!(next_end);
        next_end.as_mut().enable();
        match f().await {
            Ok(v) => return v,
            Err(e) if e.code() == Code::ResourceExhausted => {
                refused.fetch_add(1, Ordering::Relaxed);
                next_end.await;
            }
            Err(e) => panic!("an error other than RESOURCE_EXHAUSTED: {e:?}"),
        }
    }
}

/// One client: runs its share of jobs, `in_flight` at a time, following each to its end.
async fn client(
    c: JobWorkerClient<Channel>,
    first: u64,
    jobs: u64,
    in_flight: usize,
    ended: Arc<Notify>,
    tally: Arc<Tally>,
) {
    let mut running = tokio::task::JoinSet::new();
    for n in first..first + jobs {
        if running.len() == in_flight {
            running.join_next().await.unwrap().unwrap();
        }
        // Job n prints its own numbers, a different length for each.
        let (from, to) = (n * 1_000_000 + 1, n * 1_000_000 + 1000 + (n % 7) * 700);
        let argv = ["seq".to_string(), from.to_string(), to.to_string()];
        let id = past_the_caps(&ended, &tally.start_refused, || {
            let mut c = c.clone();
            let request = pb::StartJobRequest {
                argv: argv.to_vec(),
                env: vec![],
                limits: None,
                ..Default::default()
            };
            async move { c.start_job(request).await }
        })
        .await
        .into_inner()
        .id;
        let (c, ended, tally) = (c.clone(), ended.clone(), tally.clone());
        running.spawn(async move {
            let s = past_the_caps(&ended, &tally.stream_refused, || {
                let (mut c, id) = (c.clone(), id.clone());
                async move { stream(&mut c, &id, 0, true).await }
            })
            .await;
            let result = collect(s, 0, None).await;
            let (data, end) = result.expect("a stream that started ends with a status");
            assert!(
                data == seq(from, to),
                "job {n}: {} bytes differ",
                data.len()
            );
            assert_eq!(end.exit_code, Some(0), "job {n}");
            tally.jobs.fetch_add(1, Ordering::Relaxed);
            tally.bytes.fetch_add(data.len(), Ordering::Relaxed);
            ended.notify_waiters();
        });
    }
    while let Some(r) = running.join_next().await {
        r.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_clients_run_500_jobs_past_the_caps_and_every_output_is_complete() {
    if skip_unless_root("ten_clients_run_500_jobs_past_the_caps_and_every_output_is_complete") {
        return;
    }
    const CLIENTS: u64 = 10;
    const JOBS: u64 = 500;
    const IN_FLIGHT: usize = 4;
    // 40 jobs in flight against caps of 6 running jobs and 3 streams.
    let stack = Stack::start(
        "load",
        Pki::generate(),
        ExecutorOptions::behind_api().flags(&["--max-running-jobs", "6"]),
        ApiOptions::default()
            .health_ms(600_000)
            .toml("[limits]\nmax_streams = 3\n"),
    );
    let (exec, api, pki) = (&stack.exec, &stack.api, &stack.pki);
    let ended = Arc::new(Notify::new());
    let tally = Arc::new(Tally::default());
    let began = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let (channel, _) = channel(
            api.addr,
            pki.client_config(["alice", "bob"][i as usize % 2]),
        )
        .await
        .unwrap();
        let share = JOBS / CLIENTS;
        clients.spawn(client(
            JobWorkerClient::new(channel),
            i * share,
            share,
            IN_FLIGHT,
            ended.clone(),
            tally.clone(),
        ));
    }
    let all = async {
        while let Some(r) = clients.join_next().await {
            r.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(600), all)
        .await
        .expect("500 jobs within 10 minutes");
    let took = began.elapsed();
    assert_eq!(tally.jobs.load(Ordering::Relaxed), JOBS as usize);
    note(&format!(
        "load: {JOBS} jobs by {CLIENTS} clients, {} bytes of output, all complete, in {:.1} s; \
         refused past the caps: {} starts, {} streams",
        tally.bytes.load(Ordering::Relaxed),
        took.as_secs_f64(),
        tally.start_refused.load(Ordering::Relaxed),
        tally.stream_refused.load(Ordering::Relaxed)
    ));

    // Both daemons still answer: the health service, and a call through to the executor.
    let (channel, _) = channel(api.addr, pki.client_config("admin")).await.unwrap();
    let health = HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
    let mut admin = JobWorkerClient::new(channel);
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_jobs(pb::ListJobsRequest {
                all: true,
                page_size: 500,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.jobs.iter().all(|j| j.state() == pb::JobState::Exited));
        listed.extend(page.jobs.into_iter().map(|j| j.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(listed.len(), JOBS as usize);
    let id = start_job(&mut admin, &["echo", "after the load"]).await;
    assert_eq!(
        finished_output(&mut admin, &id).await.0,
        b"after the load\n"
    );
    exec.wait_no_connections();
    // Each group is removed right after its job's end is published.
    listed.push(id);
    assert_eq!(
        exec.job_groups_left_after_all(&listed),
        Vec::<std::path::PathBuf>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_silent_connections_meet_their_budgets_and_a_good_client_is_served() {
    if skip_unless_root(
        "idle_and_silent_connections_meet_their_budgets_and_a_good_client_is_served",
    ) {
        return;
    }
    const IDLE: usize = 1000;
    const SILENT: usize = 200;
    const CONNECTIONS: usize = 100;
    const PER_IDENTITY: usize = 32;
    const HANDSHAKES: usize = 100;
    let fd_limit = raise_fd_limit();
    assert!(
        fd_limit as usize > IDLE + SILENT + 200,
        "this test holds {} connections; the open-files limit is {fd_limit}",
        IDLE + SILENT
    );
    // Every client of the crowd is on 127.0.0.1, so its budget of handshakes is the
    // server's whole budget.
    let stack = Stack::generated(
        "idle",
        ApiOptions {
            tls_extra: "handshake_timeout_ms = 3000\n".into(),
            ..ApiOptions::default().health_ms(600_000).toml(&format!(
                "[limits]\nmax_connections = {CONNECTIONS}\n\
                 max_connections_per_identity = {PER_IDENTITY}\n\
                 max_handshakes = {HANDSHAKES}\nmax_handshakes_per_source = {HANDSHAKES}\n\
                 [http2]\nidle_timeout_ms = 2000\n"
            ))
        },
    );
    let (api, pki) = (&stack.api, &stack.pki);
    let api_pid = api.pid();
    let base = fd_count(api_pid);
    let began = Instant::now();

    // 1,000 clients as bob that finish the TLS handshake (or are displaced during it)
    // and then send nothing, and 200 that connect and never even start it; each waits
    // for the server to close it. At most OUTSTANDING are connected at a time.
    const OUTSTANDING: usize = 400;
    let outstanding = Arc::new(tokio::sync::Semaphore::new(OUTSTANDING));
    let config = Arc::new(pki.client_config("bob"));
    let closed_idle = Arc::new(AtomicUsize::new(0));
    let refused_handshakes = Arc::new(AtomicUsize::new(0));
    let closed_silent = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(Notify::new());
    let most_fds = Arc::new(AtomicUsize::new(0));
    let mut crowd = tokio::task::JoinSet::new();
    for n in 0..IDLE + SILENT {
        let (config, outstanding, progress) =
            (config.clone(), outstanding.clone(), progress.clone());
        let (closed_idle, refused, closed_silent, most) = (
            closed_idle.clone(),
            refused_handshakes.clone(),
            closed_silent.clone(),
            most_fds.clone(),
        );
        let addr = api.addr;
        crowd.spawn(async move {
            let _turn = outstanding.acquire_owned().await.unwrap();
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let mut buf = [0u8; 4096];
            if n % 6 == 5 {
                // Silent: closed by the deadline, or sooner for a newer connection.
                let n = tcp.read(&mut buf).await.unwrap_or(0);
                assert_eq!(n, 0, "the server sent something to a silent client");
                closed_silent.fetch_add(1, Ordering::Relaxed);
            } else {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                match tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                {
                    Ok(mut tls) => {
                        most.fetch_max(fd_count(api_pid), Ordering::Relaxed);
                        // The server's HTTP/2 settings, then the close: of an idle
                        // connection, or of one past bob's cap at the deadline.
                        while !matches!(tls.read(&mut buf).await, Ok(0) | Err(_)) {}
                        closed_idle.fetch_add(1, Ordering::Relaxed);
                    }
                    // Displaced by newer connections before it was done.
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            progress.notify_waiters();
        });
    }

    // A well-behaved client arrives once 300 of the crowd have been served.
    let served = || {
        closed_idle.load(Ordering::Relaxed)
            + refused_handshakes.load(Ordering::Relaxed)
            + closed_silent.load(Ordering::Relaxed)
    };
    loop {
        let next = progress.notified();
        tokio::pin!(next);
        next.as_mut().enable();
        if served() >= 300 {
            break;
        }
        tokio::time::timeout(LIMIT, next)
            .await
            .expect("the crowd makes progress");
    }
    // It comes from another address than the crowd's (its budget of handshakes is its
    // own) and another identity (so are its connection caps).
    let arrived = Instant::now();
    let source = Some(std::net::Ipv4Addr::new(127, 0, 0, 2).into());
    let (channel, _) = channel_from(api.addr, pki.client_config("alice"), source)
        .await
        .expect("the good client connects");
    let mut alice = JobWorkerClient::new(channel.clone());
    let id = start_job(&mut alice, &["echo", "served"]).await;
    assert_eq!(finished_output(&mut alice, &id).await.0, b"served\n");
    let served_in = arrived.elapsed();

    let all = async {
        while let Some(r) = crowd.join_next().await {
            r.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(300), all)
        .await
        .expect("the server closes the whole crowd");
    assert_eq!(
        closed_idle.load(Ordering::Relaxed) + refused_handshakes.load(Ordering::Relaxed),
        IDLE
    );
    assert_eq!(closed_silent.load(Ordering::Relaxed), SILENT);
    let most = most_fds.load(Ordering::Relaxed);
    // The budgets held: sockets before authentication (twice the handshakes: those in
    // progress, and those displaced or finished and being closed), bob's admitted
    // connections, his refused ones still open, the good client's, and its calls to the
    // executor.
    let bound =
        base + 2 * HANDSHAKES + PER_IDENTITY + jobworker_api::limits::REFUSED_PER_IDENTITY + 4;
    assert!(
        most <= bound,
        "the server held {most} fds, baseline {base}, bound {bound}"
    );
    // The good client is still connected and still served after the crowd left.
    HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    drop(alice);
    // Re-checked, not awaited: the server logs nothing when it closes a connection.
    let back = poll_until(LIMIT, || fd_count(api_pid) <= base);
    let after = fd_count(api_pid);
    assert!(back, "the server holds {after} fds, baseline {base}");
    note(&format!(
        "idle/silent: {IDLE} idle TLS clients as one identity ({} of them displaced during \
         the handshake) and {SILENT} silent ones, {OUTSTANDING} at a time, against {HANDSHAKES} \
         handshakes and {PER_IDENTITY} connections per identity: all closed by the server; \
         its fds {base} before, at most {most} during, {after} after; a good client was \
         served in {:.2} s; {:.1} s in all",
        refused_handshakes.load(Ordering::Relaxed),
        served_in.as_secs_f64(),
        began.elapsed().as_secs_f64()
    ));
}
