//! The seven scenarios of `docs/benchmarks.md`.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use jobworker_proto::v1 as pb;
use jobworker_proto::v1::stream_job_output_response::Event;
use serde_json::json;

use crate::{GIB, MB, MIB, Sizes};
use crate::{client::*, crun::*, figures::*, machine::*, stack::*};
use jobworker_testkit::procfs::fd_count;

/// 1. Start latency over one warm connection, with the baselines interleaved.
pub async fn scenario_start_latency(
    stack: &Stack,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    println!("1. start latency: {} jobs of /bin/true ...", sizes.starts);
    let mut c = stack.client().await?;
    // Warm the connection and the executor's page cache.
    for _ in 0..5 {
        let id = start(&mut c, &["/bin/true"]).await?;
        follow(&mut c, &id, 0, false).await?;
    }
    let bundle = crun_bundle(&stack.dir.path)?;
    let mut crun = Crun::start(&bundle, &stack.dir.join("crun-root"))?;
    crun.run_once()?;
    let (mut running, mut final_, mut run, mut un, mut bw, mut cr) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..sizes.starts {
        let t = Instant::now();
        let id = start(&mut c, &["/bin/true"]).await?;
        let started = t.elapsed();
        let f = follow(&mut c, &id, 0, false).await?;
        let ended = t.elapsed();
        check_exited_zero(&f.status)?;
        running.push(ms(started));
        final_.push(ms(ended));
        let t = Instant::now();
        check_exited_zero(&run_job(&mut c, &["/bin/true"]).await?)?;
        run.push(ms(t.elapsed()));
        un.push(ms(time_command(unshare_true()).await?));
        bw.push(ms(time_command(bwrap_true()).await?));
        // Blocks this thread for one run: nothing else is in flight meanwhile.
        cr.push(ms(crun.run_once()?));
    }
    drop(crun);
    let (running, final_, run) = (
        Samples::new(running),
        Samples::new(final_),
        Samples::new(run),
    );
    let (un, bw, cr) = (Samples::new(un), Samples::new(bw), Samples::new(cr));
    let s = "1 start latency";
    let f = |x: &Samples| format!("{:.2} / {:.2} ms", x.p50(), x.p99());
    report.row(s, "StartJob -> running, p50/p99", f(&running), "", "");
    report.row(
        s,
        "StartJob -> final status, p50/p99",
        f(&final_),
        &format!("bwrap {}", f(&bw)),
        &ratio(final_.p50(), bw.p50()),
    );
    report.row(
        s,
        "",
        String::new(),
        &format!("crun {}", f(&cr)),
        &ratio(final_.p50(), cr.p50()),
    );
    report.row(
        s,
        "",
        String::new(),
        &format!("unshare {}", f(&un)),
        &ratio(final_.p50(), un.p50()),
    );
    report.row(
        s,
        "RunJob -> final status (one call), p50/p99",
        f(&run),
        &format!("bwrap {}", f(&bw)),
        &ratio(run.p50(), bw.p50()),
    );
    report.json.insert(
        "1_start_latency".into(),
        json!({
            "jobs": sizes.starts,
            "start_to_running": running.json(),
            "start_to_final_status": final_.json(),
            "run_to_final_status": run.json(),
            "run_vs_bwrap_p50": round3(run.p50() / bw.p50()),
            "baseline_unshare": un.json(),
            "baseline_bwrap": bw.json(),
            "baseline_crun": cr.json(),
            "final_vs_bwrap_p50": round3(final_.p50() / bw.p50()),
            "final_vs_crun_p50": round3(final_.p50() / cr.p50()),
            "targets": {
                "final_within_1_5x_bwrap": final_.p50() <= 1.5 * bw.p50(),
                "final_below_crun": final_.p50() < cr.p50(),
            },
        }),
    );
    Ok(())
}

/// 2. Sustained starts by concurrent clients.
pub async fn scenario_sustained(
    stack: &Stack,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    println!(
        "2. sustained starts: {} clients for {:?} ...",
        sizes.clients, sizes.sustained
    );
    let mut clients = Vec::new();
    for _ in 0..sizes.clients {
        clients.push(stack.client().await?);
    }
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let (cpu0, machine0, jobs0) = (stack.cpu(), machine_cpu(), stack.jobs_cpu());
    let t = Instant::now();
    let deadline = t + sizes.sustained;
    let mut tasks = Vec::new();
    for mut c in clients {
        let (ok, errors, first_error) = (ok.clone(), errors.clone(), first_error.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let s = Instant::now();
                match start(&mut c, &["/bin/true"]).await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        latencies.push(ms(s.elapsed()));
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap()
                            .get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    let elapsed = t.elapsed().as_secs_f64();
    let machine1 = machine_cpu();
    let cpu = stack.cpu().since(&cpu0);
    let (exec_cpu, api_cpu, client_cpu) = (cpu.exec, cpu.api, cpu.client);
    // The last jobs may still be ending; their share is small against thousands.
    let jobs_cpu = match (jobs0, stack.jobs_cpu()) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    let busy = (machine1.0 - machine0.0) / (machine1.1 - machine0.1);
    let (ok, errors) = (ok.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    let rate = ok as f64 / elapsed;
    let lat = Samples::new(latencies);
    if let Some(e) = first_error.lock().unwrap().as_ref() {
        eprintln!("bench: sustained starts: first error: {e}");
    }
    let s = "2 sustained starts";
    report.row(
        s,
        &format!("jobs/s, {} clients, {:.0} s", sizes.clients, elapsed),
        format!("{rate:.1}"),
        "",
        "",
    );
    report.row(s, "errors", errors.to_string(), "must be 0", "");
    report.row(
        s,
        "StartJob p50/p99 under load",
        format!("{:.1} / {:.1} ms", lat.p50(), lat.p99()),
        "",
        "",
    );
    report.row(
        s,
        "CPU ms per job: executor, API, client, job",
        format!(
            "{:.2}, {:.2}, {:.2}, {:.2}",
            exec_cpu * 1000.0 / ok as f64,
            api_cpu * 1000.0 / ok as f64,
            client_cpu * 1000.0 / ok as f64,
            jobs_cpu * 1000.0 / ok as f64
        ),
        &format!("machine busy {:.0}%", busy * 100.0),
        "",
    );
    report.json.insert(
        "2_sustained_starts".into(),
        json!({
            "clients": sizes.clients,
            "seconds": round3(elapsed),
            "jobs": ok,
            "jobs_per_second": round3(rate),
            "errors": errors,
            "start_latency": lat.json(),
            "machine_cpu_busy_fraction": round3(busy),
            "executor_cpu_seconds_per_second": round3(exec_cpu / elapsed),
            "api_cpu_seconds_per_second": round3(api_cpu / elapsed),
            "cpu_ms_per_job": {
                "executor": round3(exec_cpu * 1000.0 / ok as f64),
                "api": round3(api_cpu * 1000.0 / ok as f64),
                "client": round3(client_cpu * 1000.0 / ok as f64),
                "job_init_and_command": round3(jobs_cpu * 1000.0 / ok as f64),
            },
        }),
    );
    Ok(())
}

/// 3. One follower streaming a large output from offset 0.
pub async fn scenario_throughput(
    stack: &Stack,
    sizes: &Sizes,
    report: &mut Report,
    sshd: Option<&crate::ssh::Sshd>,
) -> anyhow::Result<()> {
    let n = sizes.throughput_bytes;
    println!(
        "3. output throughput: {} MiB through one follower ...",
        n / MIB
    );
    let mut c = stack.client().await?;
    stack.reset_peaks();
    let count = n.to_string();
    let cpu0 = stack.cpu();
    let t = Instant::now();
    let id = start(&mut c, &["head", "-c", &count, "/dev/zero"]).await?;
    let f = follow(&mut c, &id, 0, false).await?;
    let d = t.elapsed();
    let cpu = stack.cpu().since(&cpu0);
    check_exited_zero(&f.status)?;
    if f.bytes != n {
        bail!("the follower received {} bytes, not {n}", f.bytes);
    }
    let (exec_peak, api_peak) = stack.peaks();
    let job_cpu = f.status.cpu_usec.unwrap_or(0) as f64 / 1e6;
    let gib = n as f64 / GIB as f64;
    let pipe = time_command({
        let mut c = Command::new("sh");
        c.args(["-c", &format!("head -c {n} /dev/zero | cat >/dev/null")]);
        c
    })
    .await?;
    let rate = n as f64 / d.as_secs_f64() / MB;
    let pipe_rate = n as f64 / pipe.as_secs_f64() / MB;
    let ssh_rate = match sshd {
        Some(sshd) => {
            let mut c = sshd.ssh(false);
            c.args(["head", "-c", &count, "/dev/zero"]);
            Some(n as f64 / time_command(c).await?.as_secs_f64() / MB)
        }
        None => None,
    };
    // What a user sees: jobctl itself, writing the job's output to /dev/null as a
    // command does, against ssh doing the same.
    let jobctl_rate = {
        let mut c = Command::new(jobctl());
        c.args(["run", "--", "head", "-c", &count, "/dev/zero"])
            .envs(
                stack
                    .pki()
                    .jobctl_env("alice", &format!("localhost:{}", stack.addr.port())),
            );
        n as f64 / time_command(c).await?.as_secs_f64() / MB
    };
    let s = "3 output throughput";
    report.row(
        s,
        &format!("{} MiB, 1 follower over mTLS, MB/s", n / MIB),
        format!("{rate:.0}"),
        &format!("pipe {pipe_rate:.0} MB/s"),
        &ratio(rate, pipe_rate),
    );
    if let Some(ssh_rate) = ssh_rate {
        report.row(
            s,
            &format!("{} MiB, against ssh host head -c N /dev/zero", n / MIB),
            format!("{rate:.0}"),
            &format!("ssh {ssh_rate:.0} MB/s"),
            &ratio(rate, ssh_rate),
        );
        report.row(
            s,
            "jobctl run -- head -c N /dev/zero >/dev/null, MB/s",
            format!("{jobctl_rate:.0}"),
            &format!("ssh {ssh_rate:.0} MB/s"),
            &ratio(jobctl_rate, ssh_rate),
        );
    }
    report.row(
        s,
        "mean data message",
        format!(
            "{:.1} KiB",
            f.bytes as f64 / f.messages.max(1) as f64 / 1024.0
        ),
        "",
        "",
    );
    report.row(
        s,
        "CPU s/GiB: executor, API, client, job",
        format!(
            "{:.2}, {:.2}, {:.2}, {:.2}",
            cpu.exec / gib,
            cpu.api / gib,
            cpu.client / gib,
            job_cpu / gib
        ),
        "",
        "",
    );
    report.row(
        s,
        "peak RSS executor / API",
        format!("{} / {} MiB", mib(exec_peak), mib(api_peak)),
        "",
        "",
    );
    report.json.insert(
        "3_output_throughput".into(),
        json!({
            "bytes": n,
            "seconds": round3(d.as_secs_f64()),
            "mb_per_s": round3(rate),
            "baseline_pipe_mb_per_s": round3(pipe_rate),
            "ratio_to_pipe": round3(rate / pipe_rate),
            "baseline_ssh_mb_per_s": ssh_rate.map(round3),
            "jobctl_mb_per_s": round3(jobctl_rate),
            "ratio_to_ssh": ssh_rate.map(|r| round3(rate / r)),
            "job_runtime_s": job_runtime(&f.status).map(|d| round3(d.as_secs_f64())),
            "data_messages": f.messages,
            "cpu_seconds_per_gib": {
                "executor": round3(cpu.exec / gib),
                "api": round3(cpu.api / gib),
                "client": round3(cpu.client / gib),
                "job": round3(job_cpu / gib),
            },
            "peak_rss_executor_bytes": exec_peak,
            "peak_rss_api_bytes": api_peak,
            "target_500_mb_per_s": rate >= 500.0,
        }),
    );
    Ok(())
}

/// 4. Many followers of one job.
pub async fn scenario_fanout(
    stack: &Stack,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (n, followers) = (sizes.fanout_bytes, sizes.fanout_followers);
    println!(
        "4. fan-out: {followers} followers of one job writing {} MiB ...",
        n / MIB
    );
    let mut clients = Vec::new();
    for _ in 0..followers {
        clients.push(stack.client().await?);
    }
    let mut c = stack.client().await?;
    stack.reset_peaks();
    let count = n.to_string();
    let t = Instant::now();
    let id = start(&mut c, &["head", "-c", &count, "/dev/urandom"]).await?;
    let mut tasks = Vec::new();
    for mut fc in clients {
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let f = follow(&mut fc, &id, 0, true).await;
            (f, t.elapsed())
        }));
    }
    let mut sums = Vec::new();
    let mut times = Vec::new();
    for task in tasks {
        let (f, d) = task.await?;
        let f = f?;
        check_exited_zero(&f.status)?;
        if f.bytes != n {
            bail!("a follower received {} bytes, not {n}", f.bytes);
        }
        sums.push(f.checksum);
        times.push(d);
    }
    let wall = times.iter().max().copied().unwrap_or_default();
    let identical = sums.windows(2).all(|w| w[0] == w[1]);
    if !identical {
        bail!("followers received different bytes");
    }
    let (exec_peak, api_peak) = stack.peaks();
    let aggregate = (n * followers as u64) as f64 / wall.as_secs_f64() / MB;
    let s = "4 fan-out";
    report.row(
        s,
        &format!(
            "{followers} followers x {} MiB: identical, aggregate MB/s",
            n / MIB
        ),
        format!("{}, {aggregate:.0}", if identical { "yes" } else { "NO" }),
        "",
        "",
    );
    report.row(
        s,
        "peak RSS executor / API",
        format!("{} / {} MiB", mib(exec_peak), mib(api_peak)),
        "",
        "",
    );
    report.json.insert(
        "4_fanout".into(),
        json!({
            "followers": followers,
            "bytes_each": n,
            "identical": identical,
            "checksum": format!("{:016x}", sums.first().copied().unwrap_or(0)),
            "seconds": round3(wall.as_secs_f64()),
            "aggregate_mb_per_s": round3(aggregate),
            "peak_rss_executor_bytes": exec_peak,
            "peak_rss_api_bytes": api_peak,
        }),
    );
    Ok(())
}

/// 5. Many sleeping jobs at once.
pub async fn scenario_scale(
    stack: &Stack,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let jobs = sizes.scale_jobs;
    println!("5. scale: {jobs} sleeping jobs ...");
    let mut c = stack.client().await?;
    // StartJob of a short job with nothing else running.
    // unshare runs alongside, to tell the kernel's share of any slow-down.
    let (mut at0, mut un0) = (Vec::new(), Vec::new());
    for _ in 0..sizes.scale_probes {
        let t = Instant::now();
        let id = start(&mut c, &["/bin/true"]).await?;
        at0.push(ms(t.elapsed()));
        follow(&mut c, &id, 0, false).await?;
        un0.push(ms(time_command(unshare_true()).await?));
    }
    let (exec0, api0) = stack.rss_now();
    let mut ids = Vec::new();
    let t = Instant::now();
    // A machine that cannot hold them all: the count it held, and what ran out.
    let mut ran_out = None;
    for _ in 0..jobs {
        match start(&mut c, &["sleep", "3600"]).await {
            Ok(id) => ids.push(id),
            Err(e) => {
                ran_out = Some(format!("{e:#}"));
                break;
            }
        }
    }
    let fill = t.elapsed();
    let wanted = jobs;
    if let Some(why) = &ran_out {
        println!("   held {} of {wanted}: {why}", ids.len());
        // Room for the probes below: the last few are stopped again.
        for id in ids.split_off(ids.len().saturating_sub(32)) {
            c.stop_job(pb::StopJobRequest { id }).await?;
        }
    }
    let jobs = ids.len();
    anyhow::ensure!(jobs > 0, "no sleeping job started");
    let (exec1, api1) = stack.rss_now();
    let (exec_fds, api_fds) = (fd_count(stack.exec_pid), fd_count(stack.api_pid));
    let (mut at_n, mut un_n) = (Vec::new(), Vec::new());
    for _ in 0..sizes.scale_probes {
        let t = Instant::now();
        let id = start(&mut c, &["/bin/true"]).await?;
        at_n.push(ms(t.elapsed()));
        follow(&mut c, &id, 0, false).await?;
        un_n.push(ms(time_command(unshare_true()).await?));
    }
    let mut list_page = Vec::new();
    let mut list_all = Vec::new();
    let mut listed = 0;
    for _ in 0..20 {
        let t = Instant::now();
        c.list_jobs(pb::ListJobsRequest {
            all: false,
            page_size: 0,
            page_token: String::new(),
            ..Default::default()
        })
        .await?;
        list_page.push(ms(t.elapsed()));
        let t = Instant::now();
        let mut token = String::new();
        let mut count = 0;
        loop {
            let r = c
                .list_jobs(pb::ListJobsRequest {
                    all: false,
                    page_size: 500,
                    page_token: token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            count += r.jobs.len();
            if r.next_page_token.is_empty() {
                break;
            }
            token = r.next_page_token;
        }
        list_all.push(ms(t.elapsed()));
        listed = count;
    }
    let mut status = Vec::new();
    for i in 0..sizes.scale_probes {
        let id = &ids[(i * 7919) % ids.len()];
        let t = Instant::now();
        let s = c
            .get_job_status(pb::GetJobStatusRequest { id: id.clone() })
            .await?
            .into_inner();
        status.push(ms(t.elapsed()));
        let s = s.status.context("no status")?;
        if s.state != pb::JobState::Running as i32 {
            bail!("sleeping job {id} is {}", state(&s));
        }
    }
    // Stop them all, a few at a time.
    let stop_t = Instant::now();
    let mut pending = ids.clone();
    while !pending.is_empty() {
        let batch: Vec<String> = pending.drain(..pending.len().min(32)).collect();
        let mut tasks = Vec::new();
        for id in batch {
            let mut c = c.clone();
            tasks.push(tokio::spawn(async move {
                c.stop_job(pb::StopJobRequest { id }).await
            }));
        }
        for t in tasks {
            t.await??;
        }
    }
    let stop = stop_t.elapsed();
    let (at0, at_n) = (Samples::new(at0), Samples::new(at_n));
    let (un0, un_n) = (Samples::new(un0), Samples::new(un_n));
    let (list_page, list_all, status) = (
        Samples::new(list_page),
        Samples::new(list_all),
        Samples::new(status),
    );
    let per = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / jobs as f64 / 1024.0;
    let s = "5 scale";
    report.row(
        s,
        &format!("sleeping jobs held of {wanted}; seconds to start them"),
        format!("{jobs}; {:.1} s", fill.as_secs_f64()),
        ran_out.as_deref().unwrap_or(""),
        "",
    );
    report.row(
        s,
        &format!("RSS per running job executor / API ({jobs} jobs)"),
        format!("{:.1} / {:.1} KiB", per(exec1, exec0), per(api1, api0)),
        "",
        "",
    );
    report.row(
        s,
        &format!("open fds at {jobs} running: executor / API"),
        format!("{exec_fds} / {api_fds}"),
        &format!(
            "executor's RLIMIT_NOFILE {}",
            jobworker_testkit::procfs::fd_limit(stack.exec_pid)
                .map_or_else(|| "?".into(), |(soft, _)| soft.to_string())
        ),
        "",
    );
    report.row(
        s,
        &format!("StartJob p50 at {jobs} running"),
        format!("{:.2} ms", at_n.p50()),
        &format!("at 0: {:.2} ms", at0.p50()),
        &ratio(at_n.p50(), at0.p50()),
    );
    report.row(
        s,
        &format!("unshare ... true p50 at {jobs} running"),
        format!("{:.2} ms", un_n.p50()),
        &format!("at 0: {:.2} ms", un0.p50()),
        &ratio(un_n.p50(), un0.p50()),
    );
    report.row(
        s,
        &format!("ListJobs p50 at {jobs}: page of 100; all {listed}"),
        format!("{:.2}; {:.2} ms", list_page.p50(), list_all.p50()),
        "",
        "",
    );
    report.row(
        s,
        &format!("GetJobStatus p50 at {jobs}"),
        format!("{:.2} ms", status.p50()),
        "",
        "",
    );
    report.json.insert(
        "5_scale".into(),
        json!({
            "jobs": jobs,
            "jobs_wanted": wanted,
            "ran_out": ran_out,
            "seconds_to_start_all": round3(fill.as_secs_f64()),
            "seconds_to_stop_all": round3(stop.as_secs_f64()),
            "rss_executor_before_bytes": exec0,
            "rss_executor_at_n_bytes": exec1,
            "rss_api_before_bytes": api0,
            "rss_api_at_n_bytes": api1,
            "rss_per_job_executor_kib": round3(per(exec1, exec0)),
            "rss_per_job_api_kib": round3(per(api1, api0)),
            "open_fds_executor_at_n": exec_fds,
            "open_fds_api_at_n": api_fds,
            "start_at_0": at0.json(),
            "start_at_n": at_n.json(),
            "unshare_at_0": un0.json(),
            "unshare_at_n": un_n.json(),
            "list_page_100": list_page.json(),
            "list_all": list_all.json(),
            "jobs_listed": listed,
            "get_status": status.json(),
        }),
    );
    Ok(())
}

/// 6. A follower that stops reading while its job writes a lot.
pub async fn scenario_stalled(
    stack: &Stack,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let n = sizes.stalled_bytes;
    println!(
        "6. bounded memory: a stalled follower while its job writes {} MiB ...",
        n / MIB
    );
    let mut c = stack.client().await?;
    let mut stalled_client = stack.client().await?;
    stack.reset_peaks();
    let count = n.to_string();
    let t = Instant::now();
    let id = start(&mut c, &["head", "-c", &count, "/dev/zero"]).await?;
    // The stalled follower reads one message, then nothing more.
    let mut stalled = stalled_client
        .stream_job_output(pb::StreamJobOutputRequest {
            id: id.clone(),
            offset: 0,
            follow: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let first = stalled.message().await?.context("no first message")?;
    let first_len = match first.event {
        Some(Event::Data(d)) => d.len(),
        _ => 0,
    };
    // The job's end, learnt from a second follower that asks for the last byte only.
    let end = follow(&mut c, &id, n - 1, false).await?;
    let d = t.elapsed();
    check_exited_zero(&end.status)?;
    let runtime = job_runtime(&end.status).unwrap_or(d);
    let (exec_peak, api_peak) = stack.peaks();
    drop(stalled);
    let s = "6 bounded memory";
    let ok = exec_peak < 64 * MIB && api_peak < 64 * MIB;
    report.row(
        s,
        &format!("stalled follower, {} MiB job: peak RSS exec / API", n / MIB),
        format!("{} / {} MiB", mib(exec_peak), mib(api_peak)),
        "< 64 MiB",
        if ok { "ok" } else { "OVER" },
    );
    report.row(
        s,
        "job ran to its end while stalled; runtime",
        format!("{:.2} s", runtime.as_secs_f64()),
        "",
        "",
    );
    report.json.insert(
        "6_bounded_memory".into(),
        json!({
            "bytes": n,
            "stalled_follower_received_first_message_bytes": first_len,
            "job_ended": true,
            "job_output_bytes": end.status.output_bytes,
            "job_runtime_s": round3(runtime.as_secs_f64()),
            "peak_rss_executor_bytes": exec_peak,
            "peak_rss_api_bytes": api_peak,
            "target_under_64_mib": ok,
        }),
    );
    Ok(())
}

/// 7. `jobctl run -- true` as a whole process.
pub async fn scenario_cli(
    stack: &Stack,
    sizes: &Sizes,
    report: &mut Report,
    sshd: Option<&crate::ssh::Sshd>,
) -> anyhow::Result<()> {
    println!(
        "7. command line: {} x jobctl run -- true ...",
        sizes.cli_runs
    );
    let server = format!("localhost:{}", stack.addr.port());
    let bin = jobctl();
    let jobctl = |_: ()| {
        let mut c = Command::new(&bin);
        c.args(["run", "--", "true"])
            .envs(stack.pki().jobctl_env("alice", &server));
        c
    };
    time_command(jobctl(())).await?;
    let ssh_true = || {
        sshd.map(|d| {
            let mut c = d.ssh(false);
            c.arg("true");
            c
        })
    };
    if let Some(c) = ssh_true() {
        time_command(c).await?;
    }
    let (mut cli, mut un, mut ssh) = (vec![], vec![], vec![]);
    for _ in 0..sizes.cli_runs {
        cli.push(ms(time_command(jobctl(())).await?));
        un.push(ms(time_command(unshare_true()).await?));
        if let Some(c) = ssh_true() {
            ssh.push(ms(time_command(c).await?));
        }
    }
    let (cli, un) = (Samples::new(cli), Samples::new(un));
    let s = "7 command line";
    report.row(
        s,
        "jobctl run -- true, p50/p99",
        format!("{:.2} / {:.2} ms", cli.p50(), cli.p99()),
        &format!("unshare {:.2} / {:.2} ms", un.p50(), un.p99()),
        &ratio(cli.p50(), un.p50()),
    );
    let ssh = (!ssh.is_empty()).then(|| Samples::new(ssh));
    if let Some(ssh) = &ssh {
        report.row(
            s,
            "jobctl run -- true against ssh host true",
            format!("{:.2} ms", cli.p50()),
            &format!("ssh {:.2} / {:.2} ms", ssh.p50(), ssh.p99()),
            &ratio(cli.p50(), ssh.p50()),
        );
    }
    report.json.insert(
        "7_command_line".into(),
        json!({
            "runs": sizes.cli_runs,
            "jobctl_run_true": cli.json(),
            "baseline_unshare": un.json(),
            "ratio_p50": round3(cli.p50() / un.p50()),
            "baseline_ssh_true": ssh.as_ref().map(|s| s.json()),
            "ratio_to_ssh_p50": ssh.as_ref().map(|s| round3(cli.p50() / s.p50())),
        }),
    );
    Ok(())
}

/// The far side of scenario 8: a raw terminal without echo, and a program that copies
/// each of `n` bytes back as it arrives, then exits.
fn echo_program(n: usize) -> String {
    format!("stty raw -echo && exec dd bs=1 count={n} 2>/dev/null")
}

/// Keystrokes typed before the measured ones.
const KEYSTROKE_WARMUP: usize = 5;

/// Scenario 8, one keystroke through a terminal: `jobctl run -it` against `ssh -tt host` of the
/// same program, each under a pseudo-terminal of its own. The program puts its terminal
/// in raw mode without echo and copies each byte back as it comes (`dd bs=1`, which
/// exits after the last keystroke), so the round trip is the far side's program's,
/// never a terminal's echo on either side (ssh passes the local terminal's modes to the
/// remote one).
pub async fn scenario_keystroke(
    stack: &Stack,
    sizes: &Sizes,
    report: &mut Report,
    sshd: Option<&crate::ssh::Sshd>,
) -> anyhow::Result<()> {
    let rounds = sizes.keystrokes;
    println!("8. keystroke round trip: {rounds} keystrokes through a terminal ...");
    let server = format!("localhost:{}", stack.addr.port());
    let mut jobctl = Command::new(jobctl());
    jobctl
        .args(["run", "-it", "--", "sh", "-c"])
        .arg(echo_program(rounds + KEYSTROKE_WARMUP))
        .envs(stack.pki().jobctl_env("alice", &server));
    let ours = tokio::task::spawn_blocking(move || {
        crate::ssh::keystrokes(&jobctl, rounds, KEYSTROKE_WARMUP)
    })
    .await??;
    let ours = Samples::new(ours);
    let theirs = match sshd {
        Some(d) => {
            let mut c = d.ssh(true);
            c.arg(echo_program(rounds + KEYSTROKE_WARMUP));
            let t = tokio::task::spawn_blocking(move || {
                crate::ssh::keystrokes(&c, rounds, KEYSTROKE_WARMUP)
            })
            .await??;
            Some(Samples::new(t))
        }
        None => None,
    };
    let s = "8 keystroke";
    report.row(
        s,
        "jobctl run -it -- <raw echo>, p50/p99",
        format!("{:.2} / {:.2} ms", ours.p50(), ours.p99()),
        &theirs
            .as_ref()
            .map(|t| format!("ssh -tt {:.2} / {:.2} ms", t.p50(), t.p99()))
            .unwrap_or_default(),
        &theirs
            .as_ref()
            .map(|t| ratio(ours.p50(), t.p50()))
            .unwrap_or_default(),
    );
    report.json.insert(
        "8_keystroke".into(),
        json!({
            "rounds": rounds,
            "jobctl_run_it_cat_ms": ours.json(),
            "baseline_ssh_tt_cat_ms": theirs.as_ref().map(|t| t.json()),
            "ratio_p50": theirs.as_ref().map(|t| round3(ours.p50() / t.p50())),
        }),
    );
    Ok(())
}
