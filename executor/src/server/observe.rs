//! Handlers of the accountability requests: the API server's records for the trail,
//! reading the trail, job events, live usage, metrics.

use std::time::Duration;

use futures::StreamExt;
use jobworker_protocol::observe::{
    MAX_API_RECORDS, MAX_USAGE_INTERVAL_MS, MIN_USAGE_INTERVAL_MS, check_api_record,
};
use jobworker_protocol::{
    ApiRecord, AuditLine, AuditQuery, JobId, Response, Scope, WireError, validate,
};
use tokio::sync::mpsc;

use super::{Conn, Flow};
use crate::audit::read::{self, Filter};

/// Records or events taken from memory at a time.
const BATCH: usize = 256;

/// `Report`: checks every record, then queues them all (or none).
pub(super) async fn report(conn: &mut Conn, records: Vec<ApiRecord>) -> Flow {
    if records.len() > MAX_API_RECORDS {
        return conn
            .reply(Response::Error(WireError::invalid(format!(
                "at most {MAX_API_RECORDS} records in one report"
            ))))
            .await;
    }
    if let Err(e) = records.iter().try_for_each(check_api_record) {
        return conn.reply(Response::Error(e)).await;
    }
    let accepted = conn.engine.audit().report(records);
    conn.reply(Response::Reported { accepted }).await
}

/// What an `Audit` reader sends next.
enum Next {
    Line(AuditLine),
    /// The files are read up to here.
    Read(u64),
    Failed(String),
}

/// `Audit`: the records in the files up to the last durable one, then (with `follow`)
/// each new one as it becomes durable, until the peer leaves.
pub(super) async fn audit(conn: &mut Conn, query: AuditQuery) -> Flow {
    if let Some(o) = &query.owner
        && let Err(e) = validate::owner(o)
    {
        return conn.reply(Response::Error(e)).await;
    }
    let filter = Filter {
        since_ms: query.since_ms,
        identity: query.owner.clone(),
    };
    let audit = conn.engine.audit().clone();
    let mut durable = audit.subscribe();
    let until = *durable.borrow_and_update() + 1;
    let mut next = 0;
    // From the files up to `until`, then from memory, back to the files when a follower
    // fell behind what memory keeps.
    let mut from_files = Some(until);
    loop {
        if let Some(until) = from_files.take() {
            match read_files(conn, &audit.config().dir, next, until, &filter).await {
                Ok(n) => next = n.max(until),
                Err(flow) => return flow,
            }
        }
        if !query.follow {
            return conn.reply(Response::StreamEnd).await;
        }
        match audit.recent_from(next, BATCH) {
            Err(oldest) => from_files = Some(oldest),
            Ok(records) if records.is_empty() => {
                tokio::select! {
                    r = durable.changed() => if r.is_err() { return Flow::Close },
                    _ = conn.t.next() => return Flow::Close,
                    _ = conn.shutdown.cancelled() => return Flow::Close,
                }
            }
            Ok(records) => {
                for r in records {
                    next = r.seq + 1;
                    let ids: Vec<&str> = r.identities.iter().map(String::as_str).collect();
                    if filter.matches(r.time_ms, &ids)
                        && conn
                            .reply(Response::AuditLine(read::audit_line(r.seq, &r.line)))
                            .await
                            == Flow::Close
                    {
                        return Flow::Close;
                    }
                }
            }
        }
    }
}

/// Sends the records numbered `from` to `until` (exclusive) in the files; returns the
/// number after the last one read.
async fn read_files(
    conn: &mut Conn,
    dir: &std::path::Path,
    from: u64,
    until: u64,
    filter: &Filter,
) -> Result<u64, Flow> {
    let (tx, mut rx) = mpsc::channel(16);
    let (dir, filter) = (dir.to_owned(), filter.clone());
    let reader = tokio::task::spawn_blocking(move || {
        let done = read::read_files(&dir, from, Some(until), &filter, |line| {
            tx.blocking_send(Next::Line(line)).is_ok()
        });
        let _ = tx.blocking_send(match done {
            Ok(n) => Next::Read(n),
            Err(e) => Next::Failed(e.to_string()),
        });
    });
    let result = loop {
        let next = tokio::select! {
            n = rx.recv() => n,
            _ = conn.t.next() => break Err(Flow::Close),
            _ = conn.shutdown.cancelled() => break Err(Flow::Close),
        };
        match next {
            Some(Next::Line(l)) => {
                if conn.reply(Response::AuditLine(l)).await == Flow::Close {
                    break Err(Flow::Close);
                }
            }
            Some(Next::Read(n)) => break Ok(n),
            Some(Next::Failed(e)) => {
                tracing::error!("reading the audit trail: {e}");
                let _ = conn
                    .reply(Response::Error(WireError::internal(
                        "reading the audit trail failed",
                    )))
                    .await;
                break Err(Flow::Close);
            }
            None => break Err(Flow::Close),
        }
    };
    // Dropping the receiver ends the reader at its next line.
    drop(rx);
    let _ = reader.await;
    result
}

/// `Events`: the job events kept in memory that `scope` may see, then (with `follow`)
/// each new one as its record becomes durable.
pub(super) async fn events(conn: &mut Conn, scope: Scope, follow: bool) -> Flow {
    if let Err(e) = validate::scope(&scope) {
        return conn.reply(Response::Error(e)).await;
    }
    let audit = conn.engine.audit().clone();
    let mut durable = audit.subscribe();
    durable.borrow_and_update();
    let mut from = audit.oldest_event();
    loop {
        let (events, next, lost) = audit.events_from(from, BATCH);
        from = next;
        if lost > 0 && conn.reply(Response::Lost(lost)).await == Flow::Close {
            return Flow::Close;
        }
        if events.is_empty() {
            if !follow {
                return conn.reply(Response::StreamEnd).await;
            }
            tokio::select! {
                r = durable.changed() => if r.is_err() { return Flow::Close },
                _ = conn.t.next() => return Flow::Close,
                _ = conn.shutdown.cancelled() => return Flow::Close,
            }
            continue;
        }
        for ev in events {
            if scope.allows(&ev.owner)
                && conn.reply(Response::Event((*ev).clone())).await == Flow::Close
            {
                return Flow::Close;
            }
        }
    }
}

/// `Usage`: one sample (or one per interval with `follow`) of a running job, then its
/// status once it has ended.
pub(super) async fn usage(
    conn: &mut Conn,
    scope: Scope,
    id: JobId,
    interval_ms: u32,
    follow: bool,
) -> Flow {
    let checked = validate::scope(&scope).and_then(|()| {
        if (MIN_USAGE_INTERVAL_MS..=MAX_USAGE_INTERVAL_MS).contains(&interval_ms) {
            Ok(())
        } else {
            Err(WireError::invalid(format!(
                "interval: {MIN_USAGE_INTERVAL_MS} to {MAX_USAGE_INTERVAL_MS} ms"
            )))
        }
    });
    let sampler = checked.and_then(|()| conn.engine.usage_sampler(&scope, &id));
    let mut sampler = match sampler {
        Ok(s) => s,
        Err(e) => return conn.reply(Response::Error(e)).await,
    };
    let engine = conn.engine.clone();
    let interval = Duration::from_millis(u64::from(interval_ms));
    loop {
        let sample = tokio::select! {
            s = sampler.next(&engine, interval) => s,
            _ = conn.t.next() => return Flow::Close,
            _ = conn.shutdown.cancelled() => return Flow::Close,
        };
        match sample {
            Some(u) => {
                if conn.reply(Response::Usage(u)).await == Flow::Close {
                    return Flow::Close;
                }
                if !follow {
                    break;
                }
            }
            None => break,
        }
    }
    let status = sampler.status(&engine);
    conn.reply(Response::End(Box::new(status))).await
}

/// `Metrics`.
pub(super) async fn metrics(conn: &mut Conn) -> Flow {
    let m = conn.engine.metrics();
    conn.reply(Response::Metrics(Box::new(m))).await
}
