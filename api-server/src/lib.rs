//! `jobworker-api`: the network-facing side of jobworker.
//!
//! It accepts gRPC over mutual TLS, identifies each caller by its client certificate,
//! and turns each call into one request on the root executor's Unix socket. It runs
//! unprivileged and, once started, confined by a seccomp allow-list.
//!
//! Modules, in the order a request meets them:
//!
//! - [`config`]: the TOML file and flags;
//! - [`privilege`]: refusing to run as root;
//! - [`tls`]: the rustls server configuration (TLS 1.3, chosen suites and groups,
//!   required client certificates, CRL);
//! - [`listener`]: the accept loop, the handshake deadline, and the per-connection
//!   identity handed to tonic;
//! - [`admission`]: the budget of connections not yet authenticated, per source and in
//!   total;
//! - [`limits`]: the caps of authenticated connections, calls and streams, per identity
//!   and in total;
//! - [`idle`]: counting open calls per connection for the idle timeout;
//! - [`auth`]: identity from the certificate, the admin role, and the executor scope;
//! - [`service`]: the `jobworker.v1.JobWorker` implementation;
//! - [`attach`]: attached calls (`RunJob`, `ExecJob`) joined to an executor session;
//! - [`convert`]: API ⇄ executor protocol translation and edge validation;
//! - [`executor`]: the executor client (timeouts, one connection per call or stream);
//! - [`errors`]: the one mapping from error kinds to gRPC statuses;
//! - [`health`]: the gRPC health service, driven by executor reachability;
//! - [`observe`]: a record of every call and failed handshake, reported to the
//!   executor's audit trail, and the metrics of the same;
//! - [`metrics`]: the Prometheus page and its listener;
//! - [`server`]: assembling the above, serving, and graceful shutdown;
//! - [`seccomp`]: the allow-list applied once the server is set up.

pub mod admission;
pub mod attach;
pub mod auth;
pub mod config;
pub mod convert;
pub mod errors;
pub mod executor;
pub mod health;
pub mod idle;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod observe;
pub mod privilege;
pub mod seccomp;
pub mod server;
pub mod service;
pub mod tls;
