//! Configuration: a TOML file (`--config`) plus command-line flags. A flag overrides the
//! file, the file overrides the default. Unknown keys are errors, and every error names
//! the key it is about.
//!
//! ```toml
//! listen = "[::]:50051"
//! admins = ["admin"]
//!
//! [tls]
//! cert = "/etc/jobworker/server.pem"      # server chain, leaf first (PEM)
//! key = "/etc/jobworker/server.key"       # its private key (PEM, mode 0600 or 0400)
//! client_ca = "/etc/jobworker/ca.pem"     # CA that signs client certificates
//! crl = "/etc/jobworker/ca.crl.pem"       # optional revocation list of that CA
//! handshake_timeout_ms = 2000
//!
//! [executor]
//! socket = "/run/jobworker/executor.sock"
//! connect_timeout_ms = 2000
//! request_timeout_ms = 10000
//! stop_timeout_ms = 60000
//! health_interval_ms = 5000
//!
//! [limits]
//! max_connections = 256               # authenticated, all identities
//! max_connections_per_identity = 32
//! max_handshakes = 128                # not yet authenticated, all sources
//! max_handshakes_per_source = 16      # per IPv4 address or IPv6 /64
//! max_calls = 256                     # calls in flight (not streams), all identities
//! max_calls_per_identity = 32
//! max_streams = 1024                  # output streams, all identities
//! max_streams_per_identity = 64       # open streams of any kind
//! max_streams_per_connection = 64
//!
//! [http2]
//! keepalive_interval_ms = 30000
//! keepalive_timeout_ms = 10000
//! idle_timeout_ms = 30000
//! shutdown_grace_ms = 10000
//!
//! [identity]
//! extra_chars = ".-_@"     # besides ASCII letters and digits; ASCII punctuation or space
//! unicode_letters = false  # also letters and digits of other scripts
//!
//! [metrics]
//! enabled = true
//! listen = "127.0.0.1:9464"  # Prometheus text format at /metrics; plain HTTP
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::auth::{DEFAULT_EXTRA_CHARS, IdentityRules, Shown};

/// Default listen address: loopback only, so a fresh install exposes nothing.
pub const DEFAULT_LISTEN_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], 50051);
pub const DEFAULT_EXECUTOR_SOCKET: &str = "/run/jobworker/executor.sock";
/// Default address of the metrics page: loopback only.
pub const DEFAULT_METRICS_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], 9464);

/// Command-line flags. Each one overrides the same setting in the file.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "jobworker-api",
    version,
    about = "The jobworker API server: gRPC over mutual TLS in front of the executor",
    long_about = "The jobworker API server: gRPC over mutual TLS (TLS 1.3 only) in front of \
                  the root executor's Unix socket. It never runs as root.\n\n\
                  Example:\n  jobworker-api --config /etc/jobworker/api.toml\n  \
                  jobworker-api --listen 127.0.0.1:50051 --tls-cert server.pem \
                  --tls-key server.key --tls-client-ca ca.pem --admin admin"
)]
pub struct Flags {
    /// TOML configuration file.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Address to listen on (`listen`).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Server certificate chain, PEM, leaf first (`tls.cert`).
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key, PEM; must not be readable by group or others (`tls.key`).
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate(s) that sign client certificates, PEM (`tls.client_ca`).
    #[arg(long, value_name = "PATH")]
    pub tls_client_ca: Option<PathBuf>,
    /// Certificate revocation list(s) of the client CA, PEM or DER (`tls.crl`).
    #[arg(long, value_name = "PATH")]
    pub tls_crl: Option<PathBuf>,
    /// The executor's Unix socket (`executor.socket`).
    #[arg(long, value_name = "PATH")]
    pub executor_socket: Option<PathBuf>,
    /// An identity (client certificate common name) with the admin role; repeatable;
    /// replaces `admins` from the file.
    #[arg(long = "admin", value_name = "NAME")]
    pub admins: Vec<String>,
    /// Most concurrent authenticated connections, all identities together
    /// (`limits.max_connections`).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u32>,
    /// Most concurrent output streams, all clients together (`limits.max_streams`).
    #[arg(long, value_name = "N")]
    pub max_streams: Option<u32>,
    /// How often the executor is pinged for the health service, in ms
    /// (`executor.health_interval_ms`).
    #[arg(long, value_name = "MS")]
    pub health_interval_ms: Option<u64>,
    /// Address of the metrics listener, plain HTTP (`metrics.listen`) [default:
    /// 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// Run without the seccomp filter (for debugging only; `seccomp = false`).
    #[arg(long)]
    pub no_seccomp: bool,
    /// Apply the seccomp filter, check that a call outside it fails and exit (test aid).
    #[arg(long, hide = true)]
    pub seccomp_self_test: bool,
}

/// The file's shape: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    admins: Option<Vec<String>>,
    seccomp: Option<bool>,
    #[serde(default)]
    tls: FileTls,
    #[serde(default)]
    executor: FileExecutor,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    http2: FileHttp2,
    #[serde(default)]
    identity: FileIdentity,
    #[serde(default)]
    metrics: FileMetrics,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMetrics {
    enabled: Option<bool>,
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    crl: Option<PathBuf>,
    handshake_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileExecutor {
    socket: Option<PathBuf>,
    connect_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    stop_timeout_ms: Option<u64>,
    health_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_connections: Option<u32>,
    max_connections_per_identity: Option<u32>,
    max_handshakes: Option<u32>,
    max_handshakes_per_source: Option<u32>,
    max_calls: Option<u32>,
    max_calls_per_identity: Option<u32>,
    max_streams: Option<u32>,
    max_streams_per_identity: Option<u32>,
    max_streams_per_connection: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHttp2 {
    keepalive_interval_ms: Option<u64>,
    keepalive_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    shutdown_grace_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIdentity {
    extra_chars: Option<String>,
    unicode_letters: Option<bool>,
}

/// Paths of the TLS material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub crl: Option<PathBuf>,
}

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub tls: TlsPaths,
    /// Identities with the admin role.
    pub admins: Vec<String>,
    pub seccomp: bool,
    pub executor_socket: PathBuf,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Time allowed for a stop request: the executor's grace period plus margin.
    pub stop_timeout: Duration,
    pub health_interval: Duration,
    pub handshake_timeout: Duration,
    /// Authenticated connections, all identities.
    pub max_connections: u32,
    /// Authenticated connections of one identity.
    pub max_connections_per_identity: u32,
    /// Connections in their TLS handshake, all sources.
    pub max_handshakes: u32,
    /// Connections in their TLS handshake from one address (IPv6: one /64).
    pub max_handshakes_per_source: u32,
    /// Calls in flight (all but streams), all identities.
    pub max_calls: u32,
    /// Calls in flight (all but streams) of one identity.
    pub max_calls_per_identity: u32,
    /// Output streams, all identities.
    pub max_streams: u32,
    /// Open streams (output, health watches, reflection) of one identity.
    pub max_streams_per_identity: u32,
    pub max_streams_per_connection: u32,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Which certificate common names are identities (`[identity]`).
    pub identity: IdentityRules,
    /// Where the metrics page is served; `None`: nowhere (`metrics.enabled = false`).
    pub metrics_listen: Option<SocketAddr>,
}

/// A configuration error; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl Config {
    /// Reads the file named by `--config` (if any) and applies the flags on top.
    pub fn load(flags: &Flags) -> Result<Self, ConfigError> {
        let text = match &flags.config {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                        path: path.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        Self::from_parts(
            text.as_deref(),
            flags.config.as_deref().unwrap_or(Path::new("")),
            flags,
        )
    }

    /// Builds the configuration from the file's text (when there is a file) and flags.
    pub fn from_parts(
        file_text: Option<&str>,
        file_path: &Path,
        flags: &Flags,
    ) -> Result<Self, ConfigError> {
        let file: FileConfig = match file_text {
            Some(text) => toml::from_str(text).map_err(|e| ConfigError::Parse {
                path: file_path.to_path_buf(),
                message: e.to_string(),
            })?,
            None => FileConfig::default(),
        };

        let listen = match (flags.listen, &file.listen) {
            (Some(addr), _) => addr,
            (None, Some(text)) => text.parse().map_err(|_| {
                invalid(
                    "listen",
                    format!("{text:?} is not an address and port such as 127.0.0.1:50051"),
                )
            })?,
            (None, None) => SocketAddr::from(DEFAULT_LISTEN_ADDR),
        };

        let required = |flag: &Option<PathBuf>,
                        file: &Option<PathBuf>,
                        key: &'static str,
                        flag_name: &str|
         -> Result<PathBuf, ConfigError> {
            flag.clone().or_else(|| file.clone()).ok_or_else(|| {
                invalid(
                    key,
                    format!("required: set it in the configuration file or with {flag_name}"),
                )
            })
        };
        let tls = TlsPaths {
            cert: required(&flags.tls_cert, &file.tls.cert, "tls.cert", "--tls-cert")?,
            key: required(&flags.tls_key, &file.tls.key, "tls.key", "--tls-key")?,
            client_ca: required(
                &flags.tls_client_ca,
                &file.tls.client_ca,
                "tls.client_ca",
                "--tls-client-ca",
            )?,
            crl: flags.tls_crl.clone().or(file.tls.crl),
        };

        let admins = if flags.admins.is_empty() {
            file.admins.unwrap_or_default()
        } else {
            flags.admins.clone()
        };
        let identity = IdentityRules::new(
            file.identity
                .extra_chars
                .as_deref()
                .unwrap_or(DEFAULT_EXTRA_CHARS),
            file.identity.unicode_letters.unwrap_or(false),
        )
        .map_err(|e| invalid("identity.extra_chars", e))?;
        for admin in &admins {
            identity.check(admin).map_err(|e| {
                invalid(
                    "admins",
                    format!("{} is not an identity: {e}", Shown(admin)),
                )
            })?;
        }

        let ms = |value: Option<u64>, default: u64, key: &'static str, min: u64, max: u64| {
            let v = value.unwrap_or(default);
            if v < min || v > max {
                return Err(invalid(key, format!("must be {min} to {max} milliseconds")));
            }
            Ok(Duration::from_millis(v))
        };
        let count = |value: Option<u32>, default: u32, key: &'static str, max: u32| {
            let v = value.unwrap_or(default);
            if v == 0 || v > max {
                return Err(invalid(key, format!("must be 1 to {max}")));
            }
            Ok(v)
        };
        const HOUR: u64 = 3_600_000;
        let metrics_listen = match (flags.metrics_listen, &file.metrics.listen) {
            (Some(addr), _) => Some(addr),
            (None, Some(text)) => Some(text.parse().map_err(|_| {
                invalid(
                    "metrics.listen",
                    format!("{text:?} is not an address and port such as 127.0.0.1:9464"),
                )
            })?),
            (None, None) => Some(SocketAddr::from(DEFAULT_METRICS_ADDR)),
        }
        .filter(|_| flags.metrics_listen.is_some() || file.metrics.enabled.unwrap_or(true));

        Ok(Config {
            metrics_listen,
            listen,
            tls,
            admins,
            seccomp: !flags.no_seccomp && file.seccomp.unwrap_or(true),
            executor_socket: flags
                .executor_socket
                .clone()
                .or(file.executor.socket)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_EXECUTOR_SOCKET)),
            connect_timeout: ms(
                file.executor.connect_timeout_ms,
                2_000,
                "executor.connect_timeout_ms",
                1,
                HOUR,
            )?,
            request_timeout: ms(
                file.executor.request_timeout_ms,
                10_000,
                "executor.request_timeout_ms",
                1,
                HOUR,
            )?,
            stop_timeout: ms(
                file.executor.stop_timeout_ms,
                60_000,
                "executor.stop_timeout_ms",
                1,
                HOUR,
            )?,
            health_interval: ms(
                flags
                    .health_interval_ms
                    .or(file.executor.health_interval_ms),
                5_000,
                "executor.health_interval_ms",
                10,
                HOUR,
            )?,
            handshake_timeout: ms(
                file.tls.handshake_timeout_ms,
                2_000,
                "tls.handshake_timeout_ms",
                1,
                HOUR,
            )?,
            max_connections: count(
                flags.max_connections.or(file.limits.max_connections),
                256,
                "limits.max_connections",
                1_000_000,
            )?,
            max_connections_per_identity: count(
                file.limits.max_connections_per_identity,
                32,
                "limits.max_connections_per_identity",
                1_000_000,
            )?,
            max_handshakes: count(
                file.limits.max_handshakes,
                128,
                "limits.max_handshakes",
                1_000_000,
            )?,
            max_handshakes_per_source: count(
                file.limits.max_handshakes_per_source,
                16,
                "limits.max_handshakes_per_source",
                1_000_000,
            )?,
            max_calls: count(file.limits.max_calls, 256, "limits.max_calls", 1_000_000)?,
            max_calls_per_identity: count(
                file.limits.max_calls_per_identity,
                32,
                "limits.max_calls_per_identity",
                1_000_000,
            )?,
            max_streams: count(
                flags.max_streams.or(file.limits.max_streams),
                1024,
                "limits.max_streams",
                1_000_000,
            )?,
            max_streams_per_identity: count(
                file.limits.max_streams_per_identity,
                64,
                "limits.max_streams_per_identity",
                1_000_000,
            )?,
            max_streams_per_connection: count(
                file.limits.max_streams_per_connection,
                64,
                "limits.max_streams_per_connection",
                100_000,
            )?,
            keepalive_interval: ms(
                file.http2.keepalive_interval_ms,
                30_000,
                "http2.keepalive_interval_ms",
                100,
                HOUR,
            )?,
            keepalive_timeout: ms(
                file.http2.keepalive_timeout_ms,
                10_000,
                "http2.keepalive_timeout_ms",
                100,
                HOUR,
            )?,
            idle_timeout: ms(
                file.http2.idle_timeout_ms,
                30_000,
                "http2.idle_timeout_ms",
                100,
                24 * HOUR,
            )?,
            shutdown_grace: ms(
                file.http2.shutdown_grace_ms,
                10_000,
                "http2.shutdown_grace_ms",
                0,
                HOUR,
            )?,
            identity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [tls]
        cert = "/c.pem"
        key = "/k.pem"
        client_ca = "/ca.pem"
    "#;

    fn parse(text: &str, flags: &Flags) -> Result<Config, ConfigError> {
        Config::from_parts(Some(text), Path::new("api.toml"), flags)
    }

    fn error(text: &str) -> String {
        parse(text, &Flags::default())
            .expect_err("should be refused")
            .to_string()
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(MINIMAL, &Flags::default()).unwrap();
        assert_eq!(c.listen, SocketAddr::from(DEFAULT_LISTEN_ADDR));
        assert_eq!(c.tls.cert, PathBuf::from("/c.pem"));
        assert_eq!(c.tls.crl, None);
        assert_eq!(c.executor_socket, PathBuf::from(DEFAULT_EXECUTOR_SOCKET));
        assert!(c.seccomp);
        assert!(c.admins.is_empty());
        assert_eq!(c.max_connections, 256);
        assert_eq!(c.max_connections_per_identity, 32);
        assert_eq!(c.max_handshakes, 128);
        assert_eq!(c.max_handshakes_per_source, 16);
        assert_eq!(c.max_calls, 256);
        assert_eq!(c.max_calls_per_identity, 32);
        assert_eq!(c.max_streams, 1024);
        assert_eq!(c.max_streams_per_identity, 64);
        // Short enough that a silent connection soon gives its place back, and that an
        // idle authenticated one does not sit on a slot for minutes.
        assert_eq!(c.handshake_timeout, Duration::from_secs(2));
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
    }

    #[test]
    fn flags_override_the_file() {
        let text = format!("listen = \"127.0.0.1:1\"\nadmins = [\"root-ca\"]\n{MINIMAL}");
        let flags = Flags {
            listen: Some("127.0.0.1:2".parse().unwrap()),
            tls_key: Some("/other.key".into()),
            admins: vec!["admin".into()],
            max_streams: Some(3),
            no_seccomp: true,
            ..Default::default()
        };
        let c = parse(&text, &flags).unwrap();
        assert_eq!(c.listen, "127.0.0.1:2".parse().unwrap());
        assert_eq!(c.tls.key, PathBuf::from("/other.key"));
        assert_eq!(c.admins, vec!["admin".to_string()]);
        assert_eq!(c.max_streams, 3);
        assert!(!c.seccomp);
    }

    #[test]
    fn the_example_in_deploy_parses() {
        let text = include_str!("../../deploy/jobworker-api.toml");
        let c = parse(text, &Flags::default()).unwrap();
        assert_eq!(c.admins, vec!["admin".to_string()]);
        assert_eq!(c.stop_timeout, Duration::from_secs(60));
    }

    #[test]
    fn the_identity_set_is_conservative_unless_widened() {
        let c = parse(MINIMAL, &Flags::default()).unwrap();
        assert_eq!(c.identity, IdentityRules::default());
        assert!(c.identity.check("ops team").is_err());
        let text = format!(
            "admins = [\"ops team\", \"José\"]\n{MINIMAL}\n[identity]\n\
             extra_chars = \".-_@ \"\nunicode_letters = true\n"
        );
        let c = parse(&text, &Flags::default()).unwrap();
        assert_eq!(c.admins, ["ops team", "José"]);
        assert!(c.identity.check("admin\u{200b}").is_err());
    }

    #[test]
    fn flags_alone_are_enough() {
        let flags = Flags {
            tls_cert: Some("/c".into()),
            tls_key: Some("/k".into()),
            tls_client_ca: Some("/ca".into()),
            ..Default::default()
        };
        Config::from_parts(None, Path::new(""), &flags).unwrap();
    }

    #[test]
    fn errors_name_the_bad_key() {
        assert!(error("").starts_with("tls.cert: required"), "{}", error(""));
        let e = error(&format!("{MINIMAL}\n[limits]\nmax_connections = 0"));
        assert_eq!(e, "limits.max_connections: must be 1 to 1000000");
        let e = error(&format!("listen = \"nowhere\"\n{MINIMAL}"));
        assert!(e.starts_with("listen: \"nowhere\""), "{e}");
        let e = error(&format!("{MINIMAL}\nhandshake_timeout_ms = 0"));
        assert!(e.starts_with("tls.handshake_timeout_ms: must be 1"), "{e}");
        let e = error(&format!("admins = [\"\"]\n{MINIMAL}"));
        assert!(e.starts_with("admins: \"\" is not an identity"), "{e}");
        let e = error(&format!("admins = [\"adm\\u0456n\"]\n{MINIMAL}"));
        assert_eq!(
            e,
            "admins: \"adm\\u{456}n\" is not an identity: U+0456 (at byte 3) is not allowed \
             in an identity"
        );
        let e = error(&format!(
            "{MINIMAL}\n[identity]\nextra_chars = \"+\\u200b\""
        ));
        assert_eq!(
            e,
            "identity.extra_chars: U+200B is not ASCII punctuation or a space"
        );
    }

    #[test]
    fn unknown_and_mistyped_keys_are_named() {
        let e = error(&format!("{MINIMAL}\nmax_conections = 3"));
        assert!(e.contains("unknown field `max_conections`"), "{e}");
        let e = error(&format!(
            "{MINIMAL}\n[executor]\nrequest_timeout_ms = \"soon\""
        ));
        assert!(e.contains("request_timeout_ms"), "{e}");
        let e = error("[tsl]\ncert = \"/c\"");
        assert!(e.contains("unknown field `tsl`"), "{e}");
    }
}
