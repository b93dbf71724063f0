//! `jobworker-executor`: the root daemon. See the crate documentation.

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use jobworker_executor::audit::record::{Body, hex, parse_hash};
use jobworker_executor::audit::{self, Audit};
use jobworker_executor::config::{
    AuditCommand, Backend, Command, Config, DEFAULT_STATE_DIR, Flags,
};
use jobworker_executor::engine::Engine;
use jobworker_executor::server::{self, Peers};
use jobworker_executor::{cgroup, init, sys, template};
use tokio_util::sync::CancellationToken;

/// Threads for blocking file-system work.
const MAX_BLOCKING_THREADS: usize = 32;

fn main() -> ExitCode {
    // The init template (which job inits are cloned from) is this binary re-executed: it
    // must run before anything else touches the descriptors it was handed.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == init::INIT_ARG)
    {
        template::main();
    }
    // Before anything else: no inherited descriptor survives except those a service
    // manager passed on purpose, and nothing is created readable by others.
    let listen_fds = systemd_listen_fds();
    let _ = sys::close_fds_from(3 + listen_fds);
    sys::set_umask(0o077);

    let flags = Flags::parse();
    if let Some(Command::Audit(cmd)) = flags.command.clone() {
        return audit_command(&flags, cmd);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("JOBWORKER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(flags, listen_fds) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("jobworker-executor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `jobworker-executor audit ...`: runs without root, serves nothing.
fn audit_command(flags: &Flags, cmd: AuditCommand) -> ExitCode {
    let AuditCommand::Verify { dir, head } = cmd;
    let head = match head.as_deref().map(parse_hash) {
        Some(None) => {
            eprintln!("jobworker-executor: --head: expected 64 lowercase hexadecimal digits");
            return ExitCode::from(2);
        }
        Some(Some(h)) => Some(h),
        None => None,
    };
    let dir = match dir.or_else(|| flags.audit_dir.clone()) {
        Some(d) => d,
        None if flags.config.is_some() => {
            let mut flags = flags.clone();
            flags.command = None;
            match Config::load(flags) {
                Ok(cfg) => cfg.audit.dir,
                Err(e) => {
                    eprintln!("jobworker-executor: configuration: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        None => Path::new(DEFAULT_STATE_DIR).join("audit"),
    };
    match audit::verify::verify_dir(&dir, head.as_ref()) {
        Ok(s) => {
            println!(
                "{}: intact: {} records (seq {} to {}) in {} segments; anchor {}; head {}",
                dir.display(),
                s.records,
                s.first_seq,
                s.last_seq,
                s.segments,
                hex(&s.anchor),
                hex(&s.head)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("jobworker-executor: audit verify {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

/// Number of sockets passed by the service manager (`LISTEN_PID`/`LISTEN_FDS`), if they
/// are meant for this process.
fn systemd_listen_fds() -> i32 {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
        .is_some_and(|p| p == sys::getpid());
    let n = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    if pid_ok && (1..=16).contains(&n) {
        n
    } else {
        0
    }
}

fn run(flags: Flags, listen_fds: i32) -> anyhow::Result<()> {
    if sys::geteuid() != 0 {
        bail!("the executor must run as root (it creates namespaces and cgroups)");
    }
    let mut cfg = Config::load(flags).context("configuration")?;
    // Before anything is created: a total above what the host has stops the start here.
    let host = jobworker_executor::totals::Host::read().context("reading the host's size")?;
    let totals = cfg.totals.resolve(&host).context("configuration")?;
    for lowered in totals.clamp(&mut cfg.ceilings) {
        tracing::warn!("a ceiling above the total of all jobs: {lowered}");
    }
    match sys::raise_nofile_limit() {
        Ok(n) => {
            tracing::info!(limit = n, "open file limit");
            // Jobs leave descriptors for connections (see `jobs_within`): past what the
            // limit holds, a start is refused as at capacity, and calls are still
            // accepted.
            let fit = jobs_within(n, cfg.max_connections, cfg.max_running_jobs);
            if fit < cfg.max_running_jobs {
                tracing::warn!(
                    "max_running_jobs lowered from {} to {fit}: the open file limit ({n}) \
                     holds no more next to {} connections; raise LimitNOFILE= in the \
                     unit to run more",
                    cfg.max_running_jobs,
                    cfg.max_connections
                );
                cfg.max_running_jobs = fit;
            }
        }
        Err(e) => tracing::warn!("raising the open file limit: {e}"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("executor")
        // Blocking work is short file-system calls (job records, cgroup removal): a
        // bounded pool queues them instead of growing a thread per ending job.
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
        .context("starting the runtime")?;
    rt.block_on(serve(cfg, totals, listen_fds))
}

/// How many running jobs an open-file limit of `limit` holds: each running job holds
/// seven descriptors (pidfd, report pipe, the stdout and stderr pipes, and the job's
/// stdout, stderr and index files). The rest is kept for connections (two each: the
/// socket, and a follower's output file) and everything else (listener, template, audit
/// trail, cgroup files, a start under way): room for all `max_connections` when the
/// limit is large, a quarter of it (at least 256) when it is not. At least one job; at
/// most `max_running_jobs`.
fn jobs_within(limit: u64, max_connections: usize, max_running_jobs: usize) -> usize {
    const PER_JOB: u64 = 7;
    const PER_CONNECTION: u64 = 2;
    const RESERVE: u64 = 256;
    let kept = (max_connections as u64 * PER_CONNECTION + RESERVE).min(limit / 4);
    let for_jobs = limit.saturating_sub(kept.max(RESERVE));
    usize::try_from(for_jobs / PER_JOB)
        .unwrap_or(usize::MAX)
        .clamp(1, max_running_jobs.max(1))
}

async fn serve(
    cfg: Config,
    totals: jobworker_executor::totals::Totals,
    listen_fds: i32,
) -> anyhow::Result<()> {
    let backend = match cfg.cgroup_backend {
        Backend::Auto => cgroup::Backend::Auto,
        Backend::V2 => cgroup::Backend::V2,
        Backend::V1 => cgroup::Backend::V1,
    };
    let cgroups = cgroup::Cgroups::probe(&cgroup::CgroupConfig::host(
        backend,
        cfg.cgroup_parent.clone(),
    ))
    .context("cgroups")?;
    tracing::info!(backend = cgroups.name(), "cgroup backend");

    let listener = if listen_fds > 0 {
        let fd: OwnedFd = sys::take_inherited_fd(3).context("socket from the service manager")?;
        let std_listener = std::os::unix::net::UnixListener::from(fd);
        std_listener.set_nonblocking(true)?;
        tracing::info!("listening on the socket passed by the service manager");
        tokio::net::UnixListener::from_std(std_listener)?
    } else {
        bind(&cfg.socket, cfg.socket_gid)?
    };

    let audit = Audit::open(cfg.audit.clone()).context("audit trail")?;
    audit
        .append(Body::ExecutorStarted {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            cgroup_backend: cgroups.name().into(),
        })
        .await
        .context("audit trail: recording the start")?;
    let shutdown = CancellationToken::new();
    let engine = Engine::new(
        cfg.clone(),
        cgroups,
        totals,
        audit.clone(),
        shutdown.clone(),
    )
    .await
    .context("job engine")?;
    let peers = Peers {
        uids: cfg.allowed_uids.clone(),
        gids: cfg.allowed_gids.clone(),
    };
    tracing::info!(
        socket = %cfg.socket.display(),
        state_dir = %cfg.state_dir.display(),
        job_ids = %format!("{}-{}", cfg.job_ids.first, cfg.job_ids.last),
        allowed_uids = ?peers.uids,
        allowed_gids = ?peers.gids,
        audit_dir = %cfg.audit.dir.display(),
        "executor ready"
    );

    let server = tokio::spawn(server::serve(
        listener,
        engine.clone(),
        peers,
        server::Caps {
            connections: cfg.max_connections,
            control: cfg.control_connections,
        },
        shutdown.clone(),
    ));
    wait_for_signal().await?;
    tracing::info!("shutting down: stopping running jobs");
    let _ = audit
        .append(Body::ExecutorStopping {
            running_jobs: engine.running_jobs(),
        })
        .await;
    shutdown.cancel();
    engine.wait_jobs().await;
    let _ = server.await;
    // Every job's end is recorded by now: the trail's head is logged as it closes.
    tokio::task::block_in_place(|| audit.close());
    if listen_fds == 0 {
        let _ = std::fs::remove_file(&cfg.socket);
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Creates the socket (mode 0660, optionally owned by `gid`), replacing a stale one.
fn bind(path: &Path, gid: Option<u32>) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("{} is in use by another executor", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("chown of {}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod of {}", path.display()))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::jobs_within;

    #[test]
    fn running_jobs_fit_the_open_file_limit_next_to_the_connections() {
        // The unit's limit holds the default caps with room.
        assert_eq!(jobs_within(262_144, 2048, 256), 256);
        // A hard limit of 20,000 with the default connections: 2,235 jobs, room for
        // every connection.
        assert_eq!(jobs_within(20_000, 2048, 10_100), 2235);
        // A small limit keeps a quarter for connections: 1024 - 256 = 768, 109 jobs.
        assert_eq!(jobs_within(1024, 2048, 256), 109);
        assert_eq!(jobs_within(1024, 16, 256), 109);
        // Never none.
        assert_eq!(jobs_within(300, 2048, 256), 6);
        assert_eq!(jobs_within(200, 2048, 256), 1);
    }
}
