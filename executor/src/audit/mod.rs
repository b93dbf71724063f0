//! The audit trail: the executor's durable, hash-chained record of what ran.
//!
//! - [`record`]: a record's body and its JSON line in the chain;
//! - [`files`]: the segment files, commits, rotation, opening after a crash;
//! - [`verify`]: checking a trail (pure; `jobworker-executor audit verify`);
//! - [`read`]: reading the trail for `Audit` requests;
//! - this file: the [`Audit`] handle and its writer thread (group commit), and the
//!   records kept in memory for followers.
//!
//! **Group commit.** Appends go into a queue; one writer thread takes everything queued,
//! writes it with one `write` and makes it durable with one `fdatasync`, then answers
//! every waiter. Records queued while a sync runs go together in the next one, so under
//! load one sync covers many records.
//!
//! **Fail closed.** A start waits until its record is durable before the job's command
//! may run; if the commit fails the start is refused ([`AuditError`]) and nothing of the
//! job runs. Records of the API server have a bounded queue of their own: when it is
//! full they are dropped and counted (the count is recorded), and a commit takes at most
//! [`API_PER_COMMIT`] of them, so a flood of them never holds back the executor's own.

pub mod files;
pub mod read;
pub mod record;
pub mod verify;

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use jobworker_protocol::{ApiEvent, ApiRecord, ErrorKind, JobEvent, WireError};
use tokio::sync::{oneshot, watch};

pub use files::AuditConfig;
use record::{Body, Id, hex};

/// Most of the executor's own records waiting for a commit. Each waits on a request or
/// a job, so this is never reached in practice; past it an append fails.
const MAX_PENDING: usize = 65_536;
/// Most API server records waiting; past it they are dropped and counted.
pub const API_QUEUE: usize = 4096;
/// Most API server records in one commit.
pub const API_PER_COMMIT: usize = 256;
/// Most of the executor's records in one commit.
const OWN_PER_COMMIT: usize = 4096;
/// Records kept in memory for followers of the trail, at most, and their bytes at most.
pub const RECENT_RECORDS: usize = 4096;
pub const RECENT_RECORD_BYTES: usize = 16 << 20;
/// Job events kept in memory for `Events` requests, at most, and their bytes at most
/// (counted roughly: their argv and a fixed part).
pub const RECENT_EVENTS: usize = 1024;
pub const RECENT_EVENT_BYTES: usize = 16 << 20;

/// What a refused start or exec tells its caller when the trail cannot be written.
pub const UNAVAILABLE: &str = "the audit trail is unavailable";

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An append that did not become durable.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{UNAVAILABLE}")]
pub struct AuditError;

/// Learns a submitted record's number once it is durable, or that it could not be
/// written.
pub type Durable = oneshot::Receiver<Result<u64, AuditError>>;

impl From<AuditError> for WireError {
    fn from(_: AuditError) -> WireError {
        WireError::new(ErrorKind::Unavailable, UNAVAILABLE)
    }
}

type Done = oneshot::Sender<Result<u64, AuditError>>;

struct Pending {
    time_ms: u64,
    body: Body,
    done: Option<Done>,
}

#[derive(Default)]
struct Queue {
    own: VecDeque<Pending>,
    api: VecDeque<Pending>,
    /// API records dropped since the last record of that.
    api_dropped: u64,
    closing: bool,
}

/// One durable record, kept in memory for followers.
pub struct Recent {
    pub seq: u64,
    pub time_ms: u64,
    pub line: Arc<str>,
    /// The identities it is about, for `--owner`.
    pub identities: Vec<String>,
}

/// What followers read: the latest records and job events.
#[derive(Default)]
struct Memory {
    records: VecDeque<Arc<Recent>>,
    record_bytes: usize,
    /// Job events with their position among all events ever kept, and their size.
    events: VecDeque<(u64, Arc<JobEvent>, usize)>,
    event_bytes: usize,
    next_event: u64,
}

impl Memory {
    fn keep_record(&mut self, r: Recent) {
        self.record_bytes += r.line.len();
        self.records.push_back(Arc::new(r));
        while self.records.len() > RECENT_RECORDS || self.record_bytes > RECENT_RECORD_BYTES {
            match self.records.pop_front() {
                Some(old) => self.record_bytes -= old.line.len(),
                None => break,
            }
        }
    }

    fn keep_event(&mut self, ev: JobEvent) {
        let size = 256
            + match &ev.kind {
                jobworker_protocol::JobEventKind::Started { argv }
                | jobworker_protocol::JobEventKind::Exec { argv, .. } => {
                    argv.iter().map(|a| a.len() + 8).sum()
                }
                jobworker_protocol::JobEventKind::Ended(s) => {
                    s.argv.iter().map(|a| a.len() + 8).sum::<usize>()
                        + s.error.as_ref().map_or(0, String::len)
                }
                jobworker_protocol::JobEventKind::StopRequested { .. } => 0,
            };
        let n = self.next_event;
        self.next_event += 1;
        self.event_bytes += size;
        self.events.push_back((n, Arc::new(ev), size));
        while self.events.len() > RECENT_EVENTS || self.event_bytes > RECENT_EVENT_BYTES {
            match self.events.pop_front() {
                Some(old) => self.event_bytes -= old.2,
                None => break,
            }
        }
    }
}

/// The trail's counters, for metrics.
#[derive(Default)]
pub struct Counters {
    pub seq: AtomicU64,
    pub failures: AtomicU64,
    pub api_dropped: AtomicU64,
    pub commits: AtomicU64,
    pub records: AtomicU64,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    memory: Mutex<Memory>,
    /// The last durable record's number: followers wait on its changes.
    durable: watch::Sender<u64>,
    counters: Counters,
}

/// The handle every part of the executor appends through.
pub struct Audit {
    shared: Arc<Shared>,
    cfg: AuditConfig,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Audit {
    /// Opens the trail and starts its writer thread.
    pub fn open(cfg: AuditConfig) -> io::Result<Arc<Audit>> {
        let files = files::Files::open(cfg.clone())?;
        let (seq, _) = files.head();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            memory: Mutex::new(Memory::default()),
            durable: watch::Sender::new(seq),
            counters: Counters::default(),
        });
        shared.counters.seq.store(seq, Ordering::Relaxed);
        let writer = shared.clone();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(&writer, files))?;
        Ok(Arc::new(Audit {
            shared,
            cfg,
            thread: Mutex::new(Some(thread)),
        }))
    }

    pub fn config(&self) -> &AuditConfig {
        &self.cfg
    }

    /// Queues a record; the receiver learns its number once it is durable, or that it
    /// could not be written.
    pub fn submit(&self, body: Body) -> Durable {
        let (tx, rx) = oneshot::channel();
        let mut q = lock(&self.shared.queue);
        if q.closing || q.own.len() >= MAX_PENDING {
            drop(q);
            tracing::error!(
                "audit trail: {} records wait for a commit; refused",
                MAX_PENDING
            );
            let _ = tx.send(Err(AuditError));
            return rx;
        }
        q.own.push_back(Pending {
            time_ms: now_ms(),
            body,
            done: Some(tx),
        });
        drop(q);
        self.shared.wake.notify_one();
        rx
    }

    /// Appends a record and waits until it is durable.
    pub async fn append(&self, body: Body) -> Result<u64, AuditError> {
        self.submit(body).await.unwrap_or(Err(AuditError))
    }

    /// Appends a record whose failure the caller can do nothing about: it is logged
    /// (by the writer) and counted.
    pub fn note(&self, body: Body) {
        drop(self.submit(body));
    }

    /// Queues the API server's records (marked as its claims); returns how many were
    /// taken. Those beyond the queue's room are dropped and counted, and the count is
    /// recorded with the next commit.
    pub fn report(&self, records: Vec<ApiRecord>) -> u32 {
        let mut accepted = 0;
        let mut q = lock(&self.shared.queue);
        for r in records {
            if q.api.len() >= API_QUEUE || q.closing {
                q.api_dropped += 1;
                self.shared
                    .counters
                    .api_dropped
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            q.api.push_back(Pending {
                time_ms: now_ms(),
                body: api_body(r),
                done: None,
            });
            accepted += 1;
        }
        drop(q);
        self.shared.wake.notify_one();
        accepted
    }

    /// The number of the last durable record.
    pub fn seq(&self) -> u64 {
        *self.shared.durable.borrow()
    }

    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Waits for records after `seq` to become durable (returns at once if they are).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.durable.subscribe()
    }

    /// The kept records from number `from` on, at most `max`; `Err(oldest)` when
    /// record `from` is no longer kept in memory (read it from the files).
    pub fn recent_from(&self, from: u64, max: usize) -> Result<Vec<Arc<Recent>>, u64> {
        let m = lock(&self.shared.memory);
        let Some(oldest) = m.records.front().map(|r| r.seq) else {
            return Ok(Vec::new());
        };
        if from < oldest {
            return Err(oldest);
        }
        let skip = (from - oldest) as usize;
        Ok(m.records.iter().skip(skip).take(max).cloned().collect())
    }

    /// Job events from position `from` on, at most `max`, with the position after the
    /// last one returned and how many were skipped because they are no longer kept.
    pub fn events_from(&self, from: u64, max: usize) -> (Vec<Arc<JobEvent>>, u64, u64) {
        let m = lock(&self.shared.memory);
        let oldest = m.events.front().map_or(m.next_event, |e| e.0);
        let start = from.max(oldest);
        let lost = start - from;
        let skip = (start - oldest) as usize;
        let out: Vec<Arc<JobEvent>> = m
            .events
            .iter()
            .skip(skip)
            .take(max)
            .map(|e| e.1.clone())
            .collect();
        let next = start + out.len() as u64;
        (out, next, lost)
    }

    /// Position of the oldest job event kept.
    pub fn oldest_event(&self) -> u64 {
        let m = lock(&self.shared.memory);
        m.events.front().map_or(m.next_event, |e| e.0)
    }

    /// Commits what is queued, stops the writer and logs the head hash. Appends after
    /// this fail.
    pub fn close(&self) {
        lock(&self.shared.queue).closing = true;
        self.shared.wake.notify_all();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        self.close();
    }
}

/// The record of an API server's report.
fn api_body(r: ApiRecord) -> Body {
    let reported_at = record::rfc3339_ms(r.time_ms);
    match r.event {
        ApiEvent::Call(c) => Body::ApiCall {
            reported_at,
            identity: c.identity,
            cert_serial: c.cert_serial,
            cert_sha256: c.cert_sha256,
            peer: c.peer,
            method: c.method,
            job: c.job.map(Id),
            code: c.code,
            duration_us: c.duration_us,
        },
        ApiEvent::TlsFailure {
            peer,
            reason,
            count,
        } => Body::ApiTlsFailure {
            reported_at,
            peer,
            reason,
            count,
        },
        ApiEvent::Dropped { count } => Body::ApiRecordsDropped { count },
    }
}

/// The writer thread: takes what is queued, commits it, answers the waiters, keeps the
/// records for followers; until the trail is closed and its queue empty.
fn write_loop(shared: &Shared, mut files: files::Files) {
    let mut failures_logged = 0u64;
    loop {
        let (own, api) = {
            let mut q = lock(&shared.queue);
            while q.own.is_empty() && q.api.is_empty() && q.api_dropped == 0 && !q.closing {
                q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.closing && q.own.is_empty() && q.api.is_empty() && q.api_dropped == 0 {
                break;
            }
            let n = q.own.len().min(OWN_PER_COMMIT);
            let mut own: Vec<Pending> = q.own.drain(..n).collect();
            if q.api_dropped > 0 {
                own.push(Pending {
                    time_ms: now_ms(),
                    body: Body::ApiRecordsDropped {
                        count: q.api_dropped,
                    },
                    done: None,
                });
                q.api_dropped = 0;
            }
            let n = q.api.len().min(API_PER_COMMIT);
            let api: Vec<Pending> = q.api.drain(..n).collect();
            (own, api)
        };
        let mut batch: Vec<Pending> = own;
        batch.extend(api);
        let records: Vec<(u64, Body)> = batch
            .iter_mut()
            .map(|p| {
                (
                    p.time_ms,
                    std::mem::replace(&mut p.body, Body::ExecutorStopping { running_jobs: 0 }),
                )
            })
            .collect();
        match files.commit(&records) {
            Ok(written) => {
                shared.counters.commits.fetch_add(1, Ordering::Relaxed);
                shared
                    .counters
                    .records
                    .fetch_add(written.len() as u64, Ordering::Relaxed);
                // The first written record may be a segment's own.
                let offset = written.len() - records.len();
                {
                    let mut m = lock(&shared.memory);
                    for (i, w) in written.iter().enumerate() {
                        let body = i.checked_sub(offset).map(|j| &records[j].1);
                        let time_ms = body.map_or_else(now_ms, |_| records[i - offset].0);
                        let identities = body
                            .map(|b| b.identities().into_iter().map(str::to_owned).collect())
                            .unwrap_or_default();
                        m.keep_record(Recent {
                            seq: w.seq,
                            time_ms,
                            line: w.line.as_str().into(),
                            identities,
                        });
                        if let Some(ev) = body.and_then(|b| b.job_event(w.seq, time_ms)) {
                            m.keep_event(ev);
                        }
                    }
                }
                for (p, w) in batch.into_iter().zip(&written[offset..]) {
                    if let Some(done) = p.done {
                        let _ = done.send(Ok(w.seq));
                    }
                }
                let (seq, _) = files.head();
                shared.counters.seq.store(seq, Ordering::Relaxed);
                shared.durable.send_replace(seq);
                if failures_logged > 0 {
                    tracing::info!(seq, "audit trail writable again");
                    failures_logged = 0;
                }
            }
            Err(e) => {
                shared.counters.failures.fetch_add(1, Ordering::Relaxed);
                // Loud for the first failures, then once in a hundred.
                if failures_logged < 10 || failures_logged.is_multiple_of(100) {
                    tracing::error!(
                        records = batch.len(),
                        "audit trail: commit failed: {e}; what waited for it is refused"
                    );
                }
                failures_logged += 1;
                for p in batch {
                    if let Some(done) = p.done {
                        let _ = done.send(Err(AuditError));
                    }
                }
            }
        }
    }
    let (seq, head) = files.head();
    tracing::info!(seq, head = %hex(&head), "audit trail closed");
}
