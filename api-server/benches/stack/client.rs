//! The client side: calls over mTLS, following output, a checksum, and timed commands
//! (the unshare and bwrap baselines).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;
use jobworker_proto::v1 as pb;
use jobworker_proto::v1::job_worker_client::JobWorkerClient;
use jobworker_proto::v1::stream_job_output_response::Event;
use tonic::transport::Channel;

use crate::stack::*;

pub fn start_request(argv: &[&str]) -> pb::StartJobRequest {
    pb::StartJobRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        limits: Some(job_limits()),
        ..Default::default()
    }
}

pub async fn start(c: &mut JobWorkerClient<Channel>, argv: &[&str]) -> anyhow::Result<String> {
    Ok(c.start_job(start_request(argv)).await?.into_inner().id)
}

/// Runs a job in one `RunJob` call, as `jobctl run` does: its output (drained) and its
/// final status come back on the same call. The request side stays open until the
/// answer ends, as jobctl's does.
pub async fn run_job(
    c: &mut JobWorkerClient<Channel>,
    argv: &[&str],
) -> anyhow::Result<pb::JobStatus> {
    use pb::run_job_response::Event as Run;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::RunJobRequest {
        event: Some(pb::run_job_request::Event::Start(start_request(argv))),
    })
    .await?;
    let mut s = c
        .run_job(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(msg) = s.message().await? {
        if let Some(Run::Status(status)) = msg.event {
            drop(tx);
            return Ok(status);
        }
    }
    bail!("RunJob ended without the job's final status")
}

/// What a follower saw.
pub struct Followed {
    pub bytes: u64,
    /// Data messages received.
    pub messages: u64,
    pub checksum: u64,
    pub status: pb::JobStatus,
}

/// Follows a job's output from `offset` to its final status, counting the bytes and,
/// with `checksum`, hashing them.
pub async fn follow(
    c: &mut JobWorkerClient<Channel>,
    id: &str,
    offset: u64,
    checksum: bool,
) -> anyhow::Result<Followed> {
    let mut s = c
        .stream_job_output(pb::StreamJobOutputRequest {
            id: id.into(),
            offset,
            follow: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut bytes = 0u64;
    let mut messages = 0u64;
    let mut hash = Hash::new();
    while let Some(msg) = s.message().await? {
        match msg.event {
            Some(Event::Data(d)) => {
                bytes += d.len() as u64;
                messages += 1;
                if checksum {
                    hash.update(&d);
                }
            }
            Some(Event::Status(status)) => {
                return Ok(Followed {
                    bytes,
                    messages,
                    checksum: hash.finish(),
                    status,
                });
            }
            None => {}
        }
    }
    bail!("the output stream of {id} ended without a status")
}

/// A fast, order-sensitive 64-bit checksum of a byte stream, independent of how the
/// stream is cut into messages (FNV-style over the bytes, word at a time).
pub struct Hash {
    pub h: u64,
    pub pending: Vec<u8>,
}

impl Hash {
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub fn new() -> Hash {
        Hash {
            h: 0xcbf2_9ce4_8422_2325,
            pending: Vec::with_capacity(8),
        }
    }

    pub fn word(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(Self::PRIME).rotate_left(29);
    }

    pub fn update(&mut self, mut data: &[u8]) {
        if !self.pending.is_empty() {
            let take = (8 - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < 8 {
                return;
            }
            let w = u64::from_le_bytes(self.pending[..8].try_into().expect("8 bytes"));
            self.word(w);
            self.pending.clear();
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            self.word(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        self.pending.extend_from_slice(words.remainder());
    }

    pub fn finish(mut self) -> u64 {
        let tail = std::mem::take(&mut self.pending);
        for b in tail {
            self.word(u64::from(b) | 0x100);
        }
        self.h
    }
}

pub fn state(s: &pb::JobStatus) -> String {
    pb::JobState::try_from(s.state)
        .map(|st| st.as_str_name().to_string())
        .unwrap_or_else(|_| s.state.to_string())
}

pub fn check_exited_zero(s: &pb::JobStatus) -> anyhow::Result<()> {
    if s.state != pb::JobState::Exited as i32 || s.exit_code != Some(0) {
        bail!(
            "job {} ended {} (exit {:?}, error {:?})",
            s.id,
            state(s),
            s.exit_code,
            s.error
        );
    }
    Ok(())
}

pub fn job_runtime(s: &pb::JobStatus) -> Option<Duration> {
    let (a, b) = (s.started_at?, s.ended_at?);
    let ns = (b.seconds - a.seconds) as i128 * 1_000_000_000 + (b.nanos - a.nanos) as i128;
    Some(Duration::from_nanos(ns.max(0) as u64))
}

/// Runs a command to its end, returning how long it took; it must succeed.
pub async fn time_command(mut cmd: Command) -> anyhow::Result<Duration> {
    tokio::task::spawn_blocking(move || {
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let t = Instant::now();
        let out = cmd.stderr(Stdio::piped()).output()?;
        let d = t.elapsed();
        if !out.status.success() {
            bail!(
                "{:?} failed ({}): {}",
                cmd,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(d)
    })
    .await?
}

pub fn unshare_true() -> Command {
    let mut c = Command::new("unshare");
    c.args([
        "--pid",
        "--fork",
        "--mount-proc",
        "--net",
        "--uts",
        "--ipc",
        "true",
    ]);
    c
}

pub fn bwrap_true() -> Command {
    let mut c = Command::new("bwrap");
    c.args([
        "--unshare-all",
        "--die-with-parent",
        "--ro-bind",
        "/",
        "/",
        "true",
    ]);
    c
}
