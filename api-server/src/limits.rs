//! Authenticated connections and their calls: caps for each identity as well as for
//! the whole server, so that one identity cannot take what the others need.
//!
//! | what | per identity | all identities |
//! |---|---|---|
//! | connections | `limits.max_connections_per_identity` | `limits.max_connections` |
//! | calls in flight (every call but a stream) | `limits.max_calls_per_identity` | `limits.max_calls` |
//! | open streams (output, attached runs and execs, waits, health watches, reflection) | `limits.max_streams_per_identity` | output streams, attached calls and waits: `limits.max_streams` (in the service) |
//!
//! A connection past a connection cap is not simply dropped: every call on it is
//! answered RESOURCE_EXHAUSTED naming the cap, and the server closes it at the
//! handshake deadline. Such refused connections are few by construction
//! ([`REFUSED_PER_IDENTITY`], [`MAX_REFUSED`]); past those, a refused connection is
//! closed as soon as its handshake is done. A call past a call or stream cap is answered
//! RESOURCE_EXHAUSTED naming the cap, before anything else is done for it.
//!
//! The table of identities holds an entry only while the identity has a connection
//! (admitted or refused), so it never has more than `max_connections + MAX_REFUSED`
//! entries.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::auth::Shown;
use crate::idle::GuardedBody;
use crate::listener::{Access, ConnInfo};

/// Refused connections kept open (to answer their calls) per identity.
pub const REFUSED_PER_IDENTITY: usize = 4;
/// Refused connections kept open, all identities together.
pub const MAX_REFUSED: usize = 64;

/// The caps (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub max_connections: usize,
    pub connections_per_identity: usize,
    pub max_calls: usize,
    pub calls_per_identity: usize,
    pub streams_per_identity: usize,
}

/// What every identity's usage shares: the caps and the server-wide call count.
#[derive(Debug)]
struct Shared {
    caps: Caps,
    calls: AtomicUsize,
}

/// The connections of every identity.
#[derive(Debug)]
pub struct Limits {
    shared: Arc<Shared>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    connections: usize,
    refused: usize,
    identities: HashMap<Arc<str>, Entry>,
}

#[derive(Debug)]
struct Entry {
    usage: Arc<Usage>,
    connections: usize,
    refused: usize,
}

/// One identity's calls and streams in flight, over all its connections.
#[derive(Debug)]
pub struct Usage {
    identity: Arc<str>,
    calls: AtomicUsize,
    streams: AtomicUsize,
    shared: Arc<Shared>,
}

/// The outcome of a connection's admission.
#[derive(Debug)]
pub enum Admission {
    /// Within the caps.
    Admitted(ConnSlot),
    /// Past a cap: answer its calls with this message until the deadline.
    Refused(ConnSlot, String),
    /// Past a cap, and too many refused connections are open already: close it.
    Closed(String),
}

/// A connection's place in the table, given back when dropped.
#[derive(Debug)]
pub struct ConnSlot {
    limits: Arc<Limits>,
    usage: Arc<Usage>,
    refused: bool,
}

impl ConnSlot {
    /// The identity's usage, for its calls.
    pub fn usage(&self) -> &Arc<Usage> {
        &self.usage
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut state = self.limits.lock();
        if self.refused {
            state.refused -= 1;
        } else {
            state.connections -= 1;
        }
        let identity = &self.usage.identity;
        if let Some(entry) = state.identities.get_mut(identity) {
            if self.refused {
                entry.refused -= 1;
            } else {
                entry.connections -= 1;
            }
            if entry.connections == 0 && entry.refused == 0 {
                state.identities.remove(identity);
            }
        }
    }
}

impl Limits {
    pub fn new(caps: Caps) -> Arc<Self> {
        Arc::new(Self {
            shared: Arc::new(Shared {
                caps,
                calls: AtomicUsize::new(0),
            }),
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change under the lock is complete before anything can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new authenticated connection of `identity`, or says which cap refuses it.
    pub fn admit(self: &Arc<Self>, identity: &str) -> Admission {
        let caps = self.shared.caps;
        let mut state = self.lock();
        let held = state
            .identities
            .get(identity)
            .map_or((0, 0), |e| (e.connections, e.refused));
        let refusal = if held.0 >= caps.connections_per_identity {
            Some(format!(
                "too many connections for {}: at most {} at once \
                 (limits.max_connections_per_identity)",
                Shown(identity),
                caps.connections_per_identity
            ))
        } else if state.connections >= caps.max_connections {
            Some(format!(
                "too many connections to this server: at most {} at once \
                 (limits.max_connections); try again later",
                caps.max_connections
            ))
        } else {
            None
        };
        if let Some(message) = &refusal
            && (held.1 >= REFUSED_PER_IDENTITY || state.refused >= MAX_REFUSED)
        {
            return Admission::Closed(message.clone());
        }
        let refused = refusal.is_some();
        if refused {
            state.refused += 1;
        } else {
            state.connections += 1;
        }
        let shared = &self.shared;
        let entry = state
            .identities
            .entry(Arc::from(identity))
            .or_insert_with_key(|identity| Entry {
                usage: Arc::new(Usage {
                    identity: identity.clone(),
                    calls: AtomicUsize::new(0),
                    streams: AtomicUsize::new(0),
                    shared: shared.clone(),
                }),
                connections: 0,
                refused: 0,
            });
        if refused {
            entry.refused += 1;
        } else {
            entry.connections += 1;
        }
        let slot = ConnSlot {
            limits: self.clone(),
            usage: entry.usage.clone(),
            refused,
        };
        match refusal {
            Some(message) => Admission::Refused(slot, message),
            None => Admission::Admitted(slot),
        }
    }

    /// Connections admitted and refused-but-open, all identities; identities with one.
    pub fn counts(&self) -> (usize, usize, usize) {
        let state = self.lock();
        (state.connections, state.refused, state.identities.len())
    }
}

/// What a call counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A call whose answer is one message.
    Call,
    /// A call that stays open as long as a job or a process does: output, an attached
    /// run or exec, a wait, a health watch, reflection.
    Stream,
}

/// The methods whose calls stay open as long as a job or a process does.
pub const STREAM_METHODS: [&str; 6] = [
    "/jobworker.v1.JobWorker/StreamJobOutput",
    "/jobworker.v1.JobWorker/RunJob",
    "/jobworker.v1.JobWorker/ExecJob",
    "/jobworker.v1.JobWorker/WaitJob",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
];

impl Kind {
    pub fn of(path: &str) -> Kind {
        if STREAM_METHODS.contains(&path) {
            Kind::Stream
        } else {
            Kind::Call
        }
    }
}

/// Adds one to `counter` unless it is at `max`.
fn take(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

impl Usage {
    /// Counts a call of `kind` until the returned guard is dropped, or says which cap
    /// refuses it.
    pub fn begin(self: &Arc<Self>, kind: Kind) -> Result<CallSlot, Status> {
        let caps = self.shared.caps;
        match kind {
            Kind::Stream => {
                if !take(&self.streams, caps.streams_per_identity) {
                    return Err(Status::resource_exhausted(format!(
                        "too many open streams for {}: at most {} at once \
                         (limits.max_streams_per_identity)",
                        Shown(&self.identity),
                        caps.streams_per_identity
                    )));
                }
            }
            Kind::Call => {
                if !take(&self.calls, caps.calls_per_identity) {
                    return Err(Status::resource_exhausted(format!(
                        "too many calls in flight for {}: at most {} at once \
                         (limits.max_calls_per_identity)",
                        Shown(&self.identity),
                        caps.calls_per_identity
                    )));
                }
                if !take(&self.shared.calls, caps.max_calls) {
                    self.calls.fetch_sub(1, Ordering::AcqRel);
                    return Err(Status::resource_exhausted(format!(
                        "too many calls in flight on this server: at most {} at once \
                         (limits.max_calls); try again later",
                        caps.max_calls
                    )));
                }
            }
        }
        Ok(CallSlot {
            usage: self.clone(),
            kind,
        })
    }

    /// (calls, streams) in flight for this identity.
    pub fn in_flight(&self) -> (usize, usize) {
        (
            self.calls.load(Ordering::Acquire),
            self.streams.load(Ordering::Acquire),
        )
    }
}

/// One call counted against its identity's caps until dropped.
#[derive(Debug)]
pub struct CallSlot {
    usage: Arc<Usage>,
    kind: Kind,
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        match self.kind {
            Kind::Stream => {
                self.usage.streams.fetch_sub(1, Ordering::AcqRel);
            }
            Kind::Call => {
                self.usage.calls.fetch_sub(1, Ordering::AcqRel);
                self.usage.shared.calls.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// Applies the call caps to every call, and answers every call on a refused
/// connection with its refusal. The slot of a call is held until its response body is
/// finished or dropped, so a stream counts for its whole life.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallLimitsLayer;

impl<S> Layer<S> for CallLimitsLayer {
    type Service = CallLimits<S>;

    fn layer(&self, inner: S) -> CallLimits<S> {
        CallLimits { inner }
    }
}

#[derive(Debug, Clone)]
pub struct CallLimits<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for CallLimits<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let slot = match request.extensions().get::<ConnInfo>().map(|i| &i.access) {
            Some(Access::Refused(message)) => {
                let refusal = Status::resource_exhausted(message.to_string());
                return Box::pin(async move { Ok(refusal.into_http()) });
            }
            Some(Access::Admitted(usage)) => match usage.begin(Kind::of(request.uri().path())) {
                Ok(slot) => Some(slot),
                Err(refusal) => return Box::pin(async move { Ok(refusal.into_http()) }),
            },
            // Without connection info there is no identity; the service refuses it.
            None => None,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(match slot {
                Some(slot) => response.map(|body| Body::new(GuardedBody::new(body, slot))),
                None => response,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps {
        max_connections: 3,
        connections_per_identity: 2,
        max_calls: 3,
        calls_per_identity: 2,
        streams_per_identity: 1,
    };

    fn admitted(a: Admission) -> ConnSlot {
        match a {
            Admission::Admitted(slot) => slot,
            other => panic!("{other:?}"),
        }
    }

    fn refused(a: Admission) -> (ConnSlot, String) {
        match a {
            Admission::Refused(slot, message) => (slot, message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn connections_are_capped_per_identity_and_in_total() {
        let limits = Limits::new(CAPS);
        let a1 = admitted(limits.admit("alice"));
        let a2 = admitted(limits.admit("alice"));
        let (_a3, m) = refused(limits.admit("alice"));
        assert_eq!(
            m,
            "too many connections for alice: at most 2 at once \
             (limits.max_connections_per_identity)"
        );
        let b1 = admitted(limits.admit("bob"));
        let (_c, m) = refused(limits.admit("carol"));
        assert_eq!(
            m,
            "too many connections to this server: at most 3 at once \
             (limits.max_connections); try again later"
        );
        assert_eq!(limits.counts(), (3, 2, 3));
        drop(a1);
        let _a4 = admitted(limits.admit("alice"));
        drop((a2, b1));
        assert_eq!(limits.counts().0, 1);
    }

    #[test]
    fn refused_connections_kept_open_are_few() {
        let limits = Limits::new(Caps {
            connections_per_identity: 1,
            max_connections: 1000,
            ..CAPS
        });
        let _held = admitted(limits.admit("alice"));
        let open: Vec<_> = (0..REFUSED_PER_IDENTITY)
            .map(|_| refused(limits.admit("alice")))
            .collect();
        assert!(matches!(limits.admit("alice"), Admission::Closed(m) if m.contains("alice")));
        // Others' refusals are counted apart, up to the total.
        let mut others = Vec::new();
        for n in 0..MAX_REFUSED - REFUSED_PER_IDENTITY {
            let name = format!("u{n}");
            others.push(admitted(limits.admit(&name)));
            others.push(refused(limits.admit(&name)).0);
        }
        assert_eq!(limits.counts().1, MAX_REFUSED);
        let _last = admitted(limits.admit("zed"));
        assert!(matches!(limits.admit("zed"), Admission::Closed(_)));
        drop((open, others));
        assert_eq!(limits.counts(), (2, 0, 2));
    }

    #[test]
    fn the_table_forgets_identities_without_connections() {
        let limits = Limits::new(CAPS);
        for n in 0..10_000 {
            let slot = admitted(limits.admit(&format!("user{n}")));
            let call = slot.usage().begin(Kind::Call).unwrap();
            drop((slot, call));
        }
        assert_eq!(limits.counts(), (0, 0, 0));
        assert_eq!(limits.shared.calls.load(Ordering::Acquire), 0);
    }

    #[test]
    fn calls_and_streams_are_capped_per_identity_and_calls_in_total() {
        let limits = Limits::new(CAPS);
        let alice = admitted(limits.admit("alice"));
        let bob = admitted(limits.admit("bob"));
        let c1 = alice.usage().begin(Kind::Call).unwrap();
        let _c2 = alice.usage().begin(Kind::Call).unwrap();
        let e = alice.usage().begin(Kind::Call).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            e.message(),
            "too many calls in flight for alice: at most 2 at once \
             (limits.max_calls_per_identity)"
        );
        // Streams are counted apart from calls.
        let s1 = alice.usage().begin(Kind::Stream).unwrap();
        let e = alice.usage().begin(Kind::Stream).unwrap_err();
        assert_eq!(
            e.message(),
            "too many open streams for alice: at most 1 at once \
             (limits.max_streams_per_identity)"
        );
        let _b1 = bob.usage().begin(Kind::Call).unwrap();
        let e = bob.usage().begin(Kind::Call).unwrap_err();
        assert_eq!(
            e.message(),
            "too many calls in flight on this server: at most 3 at once \
             (limits.max_calls); try again later"
        );
        // The refused call gave its per-identity count back.
        assert_eq!(bob.usage().in_flight(), (1, 0));
        drop((c1, s1));
        assert_eq!(alice.usage().in_flight(), (1, 0));
        let _b2 = bob.usage().begin(Kind::Call).unwrap();
    }

    #[test]
    fn methods_that_answer_streams_are_streams() {
        use jobworker_proto::v1::job_worker_server::JobWorkerServer;
        use tonic::server::NamedService;
        type Jobs = JobWorkerServer<crate::service::JobWorkerService>;
        assert_eq!(
            Kind::of(&format!("/{}/StreamJobOutput", Jobs::NAME)),
            Kind::Stream
        );
        assert_eq!(Kind::of(&format!("/{}/StartJob", Jobs::NAME)), Kind::Call);
        assert_eq!(Kind::of("/grpc.health.v1.Health/Watch"), Kind::Stream);
        assert_eq!(Kind::of("/grpc.health.v1.Health/Check"), Kind::Call);
        assert_eq!(Kind::of("/no/such"), Kind::Call);
    }
}
