//! Per-owner quotas: how many jobs an owner may run at once, and the sums of their
//! memory, CPU and pids limits. A start takes a share of its owner's quotas before
//! anything is created; the share is given back when the job has ended (dropping
//! [`Share`]), so one identity cannot take the whole executor from the others.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use jobworker_protocol::{QuotaAmounts, QuotaLimits, QuotaReport, Scope, WireError};

use super::lock;
use crate::config::QuotaConfig;

pub(super) struct Quotas {
    cfg: QuotaConfig,
    /// What each owner's running jobs hold; owners with nothing are removed.
    used: BTreeMap<String, QuotaAmounts>,
}

/// One running job's share of its owner's quotas, given back when dropped.
pub(super) struct Share {
    quotas: Arc<Mutex<Quotas>>,
    owner: String,
    amounts: QuotaAmounts,
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Share({}, {:?})", self.owner, self.amounts)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        lock(&self.quotas).give_back(&self.owner, &self.amounts);
    }
}

impl Quotas {
    pub fn new(cfg: QuotaConfig) -> Self {
        Quotas {
            cfg,
            used: BTreeMap::new(),
        }
    }

    /// Takes `amounts` (one job: `running_jobs` 1 and its limits) from `owner`'s quotas,
    /// or says which quota it would pass and by how much.
    pub fn take(
        quotas: &Arc<Mutex<Quotas>>,
        owner: &str,
        amounts: QuotaAmounts,
    ) -> Result<Share, WireError> {
        let mut q = lock(quotas);
        let limits = q.cfg.of(owner);
        let used = q.used.get(owner).copied().unwrap_or_default();
        check(owner, &used, &amounts, &limits)?;
        let entry = q.used.entry(owner.to_string()).or_default();
        add(entry, &amounts);
        Ok(Share {
            quotas: quotas.clone(),
            owner: owner.to_string(),
            amounts,
        })
    }

    fn give_back(&mut self, owner: &str, amounts: &QuotaAmounts) {
        if let Some(u) = self.used.get_mut(owner) {
            u.running_jobs = u.running_jobs.saturating_sub(amounts.running_jobs);
            u.memory_bytes = u.memory_bytes.saturating_sub(amounts.memory_bytes);
            u.cpu_millis = u.cpu_millis.saturating_sub(amounts.cpu_millis);
            u.pids = u.pids.saturating_sub(amounts.pids);
            if u.running_jobs == 0 {
                self.used.remove(owner);
            }
        }
    }

    /// Use and quotas: the scope's owner, or (any) every owner with running jobs or
    /// quotas of their own, sorted by owner.
    pub fn report(&self, scope: &Scope) -> Vec<QuotaReport> {
        let one = |owner: &str| QuotaReport {
            owner: owner.to_string(),
            used: self.used.get(owner).copied().unwrap_or_default(),
            limits: self.cfg.of(owner),
        };
        match scope {
            Scope::Owner(o) => vec![one(o)],
            Scope::Any => {
                let mut owners: Vec<&String> =
                    self.used.keys().chain(self.cfg.owners.keys()).collect();
                owners.sort();
                owners.dedup();
                owners
                    .into_iter()
                    .take(jobworker_protocol::MAX_QUOTA_REPORTS)
                    .map(|o| one(o))
                    .collect()
            }
        }
    }
}

fn add(to: &mut QuotaAmounts, a: &QuotaAmounts) {
    to.running_jobs += a.running_jobs;
    to.memory_bytes += a.memory_bytes;
    to.cpu_millis += a.cpu_millis;
    to.pids += a.pids;
}

/// Refuses a start that would take `owner` past a quota, naming it and the use.
fn check(
    owner: &str,
    used: &QuotaAmounts,
    ask: &QuotaAmounts,
    limits: &QuotaLimits,
) -> Result<(), WireError> {
    if let Some(max) = limits.running_jobs
        && used.running_jobs + ask.running_jobs > max
    {
        return Err(WireError::exhausted(format!(
            "{owner}: {} of {max} running jobs (the quota of running jobs)",
            used.running_jobs
        )));
    }
    let sums = [
        (
            "memory",
            used.memory_bytes,
            ask.memory_bytes,
            limits.memory_bytes,
            bytes as fn(u64) -> String,
        ),
        (
            "cpu",
            used.cpu_millis,
            ask.cpu_millis,
            limits.cpu_millis,
            cores,
        ),
        ("pids", used.pids, ask.pids, limits.pids, count),
    ];
    for (name, used, ask, max, show) in sums {
        if let Some(max) = max
            && used + ask > max
        {
            return Err(WireError::exhausted(format!(
                "{owner}: {} of {} {name} in use by running jobs, and this job asks for {} (the {name} quota)",
                show(used),
                show(max),
                show(ask)
            )));
        }
    }
    Ok(())
}

fn count(v: u64) -> String {
    v.to_string()
}

/// Bytes in the largest binary unit that keeps one decimal.
pub fn bytes(v: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if v >= size {
            let whole = v / size;
            let tenth = (v % size) * 10 / size;
            return if tenth == 0 {
                format!("{whole} {unit}")
            } else {
                format!("{whole}.{tenth} {unit}")
            };
        }
    }
    format!("{v} bytes")
}

/// Thousandths of a core as cores.
fn cores(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{} cores", millis / 1000)
    } else {
        let exact = format!("{}.{:03}", millis / 1000, millis % 1000);
        format!("{} cores", exact.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(default: QuotaLimits, owners: &[(&str, QuotaLimits)]) -> Arc<Mutex<Quotas>> {
        Arc::new(Mutex::new(Quotas::new(QuotaConfig {
            default,
            owners: owners.iter().map(|(o, q)| (o.to_string(), *q)).collect(),
        })))
    }

    fn job(memory: u64) -> QuotaAmounts {
        QuotaAmounts {
            running_jobs: 1,
            memory_bytes: memory,
            cpu_millis: 500,
            pids: 10,
        }
    }

    #[test]
    fn a_start_past_a_quota_names_it_and_the_use_while_others_still_start() {
        let q = quotas(
            QuotaLimits {
                running_jobs: Some(2),
                memory_bytes: Some(4 << 30),
                ..Default::default()
            },
            &[],
        );
        let a1 = Quotas::take(&q, "alice", job(1 << 30)).unwrap();
        let _a2 = Quotas::take(&q, "alice", job(1 << 30)).unwrap();
        let e = Quotas::take(&q, "alice", job(1 << 30)).unwrap_err();
        assert_eq!(e.kind, jobworker_protocol::ErrorKind::ResourceExhausted);
        assert_eq!(
            e.message,
            "alice: 2 of 2 running jobs (the quota of running jobs)"
        );
        let _b = Quotas::take(&q, "bob", job(1 << 30)).unwrap();
        // A job that ends gives its share back.
        drop(a1);
        let _a3 = Quotas::take(&q, "alice", job(1 << 30)).unwrap();
    }

    #[test]
    fn the_sum_of_memory_limits_is_a_quota_too() {
        let q = quotas(
            QuotaLimits {
                memory_bytes: Some(3 << 30),
                ..Default::default()
            },
            &[],
        );
        let _a = Quotas::take(&q, "alice", job(2 << 30)).unwrap();
        let e = Quotas::take(&q, "alice", job((3 << 29) + (1 << 20))).unwrap_err();
        assert_eq!(
            e.message,
            "alice: 2 GiB of 3 GiB memory in use by running jobs, and this job asks for 1.5 GiB (the memory quota)"
        );
        let _ok = Quotas::take(&q, "alice", job(1 << 30)).unwrap();
    }

    #[test]
    fn an_owner_of_their_own_gets_their_quotas_and_reports_are_per_scope() {
        let big = QuotaLimits {
            running_jobs: Some(5),
            ..Default::default()
        };
        let q = quotas(
            QuotaLimits {
                running_jobs: Some(1),
                ..Default::default()
            },
            &[("carol", big)],
        );
        let _c1 = Quotas::take(&q, "carol", job(1)).unwrap();
        let _c2 = Quotas::take(&q, "carol", job(1)).unwrap();
        let _a = Quotas::take(&q, "alice", job(1)).unwrap();
        let all = lock(&q).report(&Scope::Any);
        let owners: Vec<(&str, u64, Option<u64>)> = all
            .iter()
            .map(|r| (r.owner.as_str(), r.used.running_jobs, r.limits.running_jobs))
            .collect();
        assert_eq!(owners, [("alice", 1, Some(1)), ("carol", 2, Some(5))]);
        let bob = lock(&q).report(&Scope::Owner("bob".into()));
        assert_eq!(bob.len(), 1);
        assert_eq!(
            (bob[0].used.running_jobs, bob[0].limits.running_jobs),
            (0, Some(1))
        );
    }

    #[test]
    fn amounts_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 bytes");
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes((3 << 29) + 1), "1.5 GiB");
        assert_eq!(cores(2000), "2 cores");
        assert_eq!(cores(500), "0.5 cores");
        assert_eq!(cores(1250), "1.25 cores");
    }
}
