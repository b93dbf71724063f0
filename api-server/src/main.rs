//! `jobworker-api`: see the library documentation for the design.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use jobworker_api::config::{Config, Flags};
use jobworker_api::{privilege, seccomp, server};
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let flags = Flags::parse();
    if flags.seccomp_self_test {
        return if seccomp::self_test() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if let Err(e) = privilege::refuse_root() {
        eprintln!("jobworker-api: {e}");
        return ExitCode::from(2);
    }
    let config = match Config::load(&flags) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("jobworker-api: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("jobworker-api: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jobworker-api: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let seccomp = config.seccomp;
    let prepared = server::prepare(config).await?;
    let addr = prepared.local_addr()?;
    let metrics_addr = prepared.metrics_addr()?;
    // Installed before the seccomp filter: installing them needs calls it refuses.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    if seccomp {
        seccomp::apply()?;
        tracing::info!("seccomp allow-list applied to all threads");
    } else {
        tracing::warn!("running without the seccomp allow-list");
    }
    tracing::info!("listening on {addr}");
    // The line tests and scripts wait for: the server is ready.
    let mut stdout = std::io::stdout().lock();
    if let Some(m) = metrics_addr {
        tracing::info!("metrics on http://{m}/metrics");
        writeln!(stdout, "jobworker-api metrics on {m}")?;
    }
    writeln!(stdout, "jobworker-api listening on {addr}")?;
    stdout.flush()?;
    drop(stdout);
    prepared
        .serve(async move {
            tokio::select! {
                _ = sigterm.recv() => tracing::info!("SIGTERM received"),
                _ = sigint.recv() => tracing::info!("SIGINT received"),
            }
        })
        .await
}
