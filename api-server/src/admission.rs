//! Connections before authentication: a budget of their own.
//!
//! A connection is accepted at once (the kernel's accept queue never fills behind a
//! flood, so a well-behaved client is never stuck behind it) and enters the handshake
//! budget: at most `limits.max_handshakes` connections in their TLS handshake at once,
//! and at most `limits.max_handshakes_per_source` from one source (an IPv4 address, or
//! an IPv6 /64, the block one host usually holds). Authenticated connections have caps
//! of their own ([`crate::limits`]); nothing here can take their place.
//!
//! When a budget is full, the newcomer is not refused: an older handshake gives way.
//!
//! - When the newcomer's source is full, that source's oldest handshake is dropped: a
//!   source's flood displaces only its own connections, and a client that shares an
//!   address with a slow flood still gets in.
//! - When the total is full, the oldest handshake of the source holding the most is
//!   dropped: a flood from many sources displaces its own connections first, and a
//!   client from a source with fewer handshakes in progress than the heaviest one is
//!   never displaced.
//!
//! A client that sends nothing holds a place only until newer connections need it, and
//! is closed at the handshake deadline (`tls.handshake_timeout_ms`) in any case; a
//! well-behaved client finishes its handshake within a round trip or two.
//!
//! The tables hold one entry per connection in its handshake, so they never hold more
//! than `max_handshakes` entries, whatever the number of sources. Sockets are bounded
//! too: the accept loop takes a [`SocketPermit`] before each accept, given back when
//! the connection's handshake task ends, and there are twice `max_handshakes` permits:
//! the connections in their handshake, and as many again that were displaced or have
//! finished and are being closed or handed over.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Where a connection comes from, as the per-source budget counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4(Ipv4Addr),
    /// The upper 64 bits of an IPv6 address.
    V6Net(u64),
}

impl Source {
    /// The source of a peer address; IPv4-mapped IPv6 addresses (a dual-stack listener)
    /// count as the IPv4 address they carry.
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(v4),
            IpAddr::V6(v6) => Source::V6Net((u128::from(v6) >> 64) as u64),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::V4(v4) => write!(f, "{v4}"),
            Source::V6Net(net) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*net) << 64)),
        }
    }
}

/// Why a handshake was dropped to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Displaced {
    /// Its source had `max_handshakes_per_source` handshakes in progress.
    SameSource,
    /// The server had `max_handshakes` handshakes in progress.
    Total,
}

/// The handshake budget (see the module documentation).
#[derive(Debug)]
pub struct HandshakeBudget {
    max_total: usize,
    max_per_source: usize,
    pending: Mutex<Pending>,
    sockets: Arc<Semaphore>,
}

#[derive(Debug, Default)]
struct Pending {
    next: u64,
    /// Every handshake in progress, oldest first.
    order: BTreeMap<u64, Entry>,
    /// The same, by source, oldest first; a source without one has no key.
    by_source: HashMap<Source, VecDeque<u64>>,
}

#[derive(Debug)]
struct Entry {
    source: Source,
    displaced: CancellationToken,
}

impl Pending {
    /// Takes the handshake `id` out of both tables; its entry, if it was there.
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.order.remove(&id)?;
        if let Some(ids) = self.by_source.get_mut(&entry.source) {
            ids.retain(|&i| i != id);
            if ids.is_empty() {
                self.by_source.remove(&entry.source);
            }
        }
        Some(entry)
    }
}

/// One socket of the accept loop's (see the module documentation).
pub type SocketPermit = OwnedSemaphorePermit;

/// One connection's place in the handshake budget, given back when dropped.
#[derive(Debug)]
pub struct HandshakeSlot {
    budget: Arc<HandshakeBudget>,
    id: u64,
    displaced: CancellationToken,
}

impl HandshakeSlot {
    /// Completes when a newer connection has taken this one's place.
    pub fn displaced(&self) -> WaitForCancellationFuture<'_> {
        self.displaced.cancelled()
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.budget.lock().remove(self.id);
    }
}

impl HandshakeBudget {
    /// A budget of `max_total` handshakes, `max_per_source` of them from one source.
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<Self> {
        let max_total = max_total.max(1);
        Arc::new(Self {
            max_total,
            max_per_source: max_per_source.max(1),
            pending: Mutex::new(Pending::default()),
            sockets: Arc::new(Semaphore::new(2 * max_total)),
        })
    }

    /// A socket for the next accept. Waits only while displaced or finished handshakes
    /// are still closing their sockets: those in progress hold at most half.
    pub async fn socket(&self) -> SocketPermit {
        // The semaphore is never closed.
        self.sockets
            .clone()
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("the socket semaphore is never closed"))
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // The tables stay consistent even if a holder panicked: every change is a
        // whole insert or remove.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new connection from `source`, making room by dropping the oldest
    /// handshake of its source or, failing that, of all; says which, if any.
    pub fn admit(self: &Arc<Self>, source: Source) -> (HandshakeSlot, Option<Displaced>) {
        let mut pending = self.lock();
        let victim = match pending.by_source.get(&source) {
            Some(ids) if ids.len() >= self.max_per_source => {
                ids.front().map(|&id| (id, Displaced::SameSource))
            }
            _ if pending.order.len() >= self.max_total => {
                // The source with the most handshakes, the one whose oldest is oldest
                // among equals; its oldest gives way.
                pending
                    .by_source
                    .values()
                    .filter_map(|ids| Some((ids.len(), *ids.front()?)))
                    .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
                    .map(|(_, id)| (id, Displaced::Total))
            }
            _ => None,
        };
        let displaced = victim.and_then(|(id, why)| {
            let entry = pending.remove(id)?;
            entry.displaced.cancel();
            Some(why)
        });
        let id = pending.next;
        pending.next += 1;
        let token = CancellationToken::new();
        pending.order.insert(
            id,
            Entry {
                source,
                displaced: token.clone(),
            },
        );
        pending.by_source.entry(source).or_default().push_back(id);
        drop(pending);
        let slot = HandshakeSlot {
            budget: self.clone(),
            id,
            displaced: token,
        };
        (slot, displaced)
    }

    /// Handshakes in progress (all sources, and the number of sources).
    pub fn in_progress(&self) -> (usize, usize) {
        let pending = self.lock();
        (pending.order.len(), pending.by_source.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(last: u8) -> Source {
        Source::of(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
    }

    #[test]
    fn sources_are_addresses_or_ipv6_networks() {
        assert_eq!(v4(2).to_string(), "127.0.0.2");
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(c));
        assert_eq!(Source::of(a).to_string(), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(Source::of(mapped), v4(2));
    }

    #[test]
    fn a_full_source_gives_way_oldest_first_and_others_keep_theirs() {
        let budget = HandshakeBudget::new(10, 2);
        let (a1, d) = budget.admit(v4(2));
        assert_eq!(d, None);
        let (a2, _) = budget.admit(v4(2));
        let (b1, _) = budget.admit(v4(3));
        // A third from 127.0.0.2 pushes out its oldest, not 127.0.0.3's.
        let (a3, d) = budget.admit(v4(2));
        assert_eq!(d, Some(Displaced::SameSource));
        assert!(a1.displaced.is_cancelled());
        assert!(!a2.displaced.is_cancelled() && !b1.displaced.is_cancelled());
        assert_eq!(budget.in_progress(), (3, 2));
        // The displaced one's drop finds nothing left to give back.
        drop(a1);
        assert_eq!(budget.in_progress(), (3, 2));
        drop((a2, a3, b1));
        assert_eq!(budget.in_progress(), (0, 0));
    }

    #[test]
    fn a_full_budget_takes_from_the_heaviest_source_and_never_grows() {
        let budget = HandshakeBudget::new(4, 3);
        let (good, _) = budget.admit(v4(1));
        let flood: Vec<_> = (0..3).map(|_| budget.admit(v4(2)).0).collect();
        // Full: a newcomer from a third source displaces the flood's oldest, not the
        // older handshake of the lighter source.
        let (other, d) = budget.admit(v4(3));
        assert_eq!(d, Some(Displaced::Total));
        assert!(flood[0].displaced.is_cancelled());
        assert!(!good.displaced.is_cancelled());
        // Among sources holding as many, the oldest handshake gives way.
        let (_again, d) = budget.admit(v4(4));
        assert_eq!(d, Some(Displaced::Total));
        assert!(flood[1].displaced.is_cancelled());
        assert!(!good.displaced.is_cancelled() && !other.displaced.is_cancelled());
        drop((good, flood, other, _again));
        assert_eq!(budget.in_progress(), (0, 0));

        // Any number of sources: the tables hold at most the budget.
        let budget = HandshakeBudget::new(4, 4);
        let mut slots: Vec<_> = (0..4).map(|i| budget.admit(v4(i)).0).collect();
        for n in 0..1000u32 {
            let (slot, d) = budget.admit(v4((n % 200) as u8));
            assert_eq!(d, Some(Displaced::Total));
            slots.retain(|s| !s.displaced.is_cancelled());
            slots.push(slot);
            assert_eq!(slots.len(), 4);
            let (total, sources) = budget.in_progress();
            assert_eq!(total, 4);
            assert!(sources <= 4);
        }
        drop(slots);
        assert_eq!(budget.in_progress(), (0, 0));
    }
}
