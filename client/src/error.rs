//! jobctl's errors: one class per documented exit code, one line of text each.
//!
//! Every failure of jobctl itself ends as a [`CliError`]: `main` prints its message as
//! a single line `jobctl: MESSAGE` on stderr and exits with its class's code. gRPC
//! statuses and transport failures are classified here, in one place
//! ([`CliError::from_status`], [`CliError::from_transport`]); TLS failures are explained
//! as precisely as the error tells ([`describe_tls`]).

use std::error::Error as StdError;
use std::fmt;
use std::io;

use rustls::{AlertDescription, CertificateError};
use tonic::Code;

/// The exit codes of jobctl. `run` exits with the job's own status instead when the
/// job ran (see the `run` help); every code below then comes with a `jobctl:` line on
/// stderr, which a job's own exit does not.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Any other failure (server-side internal error, unexpected answer, local I/O).
    pub const OTHER: u8 = 1;
    /// Bad command line or client configuration (flags, environment, config file,
    /// certificate and key files).
    pub const USAGE: u8 = 2;
    /// The server cannot be reached, or it answered that it is unavailable (for
    /// example because its executor is down), or the connection was lost.
    pub const UNAVAILABLE: u8 = 3;
    /// The TLS handshake failed: the server's certificate is not trusted or not valid
    /// for its name, or the server rejected ours, or no common protocol.
    pub const TLS: u8 = 4;
    /// No such job (or not one of the caller's).
    pub const NOT_FOUND: u8 = 5;
    /// The server refused a request as invalid (for example a limit above its ceiling).
    pub const INVALID_ARGUMENT: u8 = 6;
    /// A server-side cap was reached (too many running jobs or streams).
    pub const RESOURCE_EXHAUSTED: u8 = 7;
    /// The caller is not allowed to do that (for example `list --all` without the
    /// admin role).
    pub const PERMISSION_DENIED: u8 = 8;
    /// The job's command could not be started (for example: no such program).
    pub const FAILED_TO_START: u8 = 9;
    /// The job's state or name does not allow it: removing or exec-ing into a job in the
    /// wrong state, a name already in use.
    pub const CONFLICT: u8 = 10;
    /// `run`: interrupted a second time while stopping the job; jobctl exited without
    /// waiting for the job's final status.
    pub const INTERRUPTED: u8 = 130;
    /// stdout was closed by its reader (`jobctl logs ID | head`): 128 + SIGPIPE, what a
    /// shell reports for a program killed by SIGPIPE. Nothing is printed.
    pub const BROKEN_PIPE: u8 = 141;

    /// `run`, `exec` and `wait`, whose other codes are the job's own: jobctl or the
    /// server failed (every code from 1 to 9 above becomes this one).
    pub const ATTACHED_ERROR: u8 = 125;
    /// `run`, `exec` and `wait`: the command could not be executed (permissions, its
    /// format, its working directory).
    pub const NOT_EXECUTABLE: u8 = 126;
    /// `run`, `exec` and `wait`: the command was not found.
    pub const NOT_FOUND_COMMAND: u8 = 127;
}

/// The class of a failure; each has its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Other,
    Usage,
    Unavailable,
    Tls,
    NotFound,
    InvalidArgument,
    ResourceExhausted,
    PermissionDenied,
    FailedToStart,
    /// The job's state or name does not allow the request.
    Conflict,
    /// `run`, `exec`, `wait`: the command could not be executed (126 there).
    NotExecutable,
    /// `run`, `exec`, `wait`: no such command (127 there).
    CommandNotFound,
    Interrupted,
    /// stdout's reader went away: exit quietly.
    BrokenPipe,
}

impl Class {
    pub fn exit_code(self) -> u8 {
        match self {
            Class::Other => exit::OTHER,
            Class::Usage => exit::USAGE,
            Class::Unavailable => exit::UNAVAILABLE,
            Class::Tls => exit::TLS,
            Class::NotFound => exit::NOT_FOUND,
            Class::InvalidArgument => exit::INVALID_ARGUMENT,
            Class::ResourceExhausted => exit::RESOURCE_EXHAUSTED,
            Class::PermissionDenied => exit::PERMISSION_DENIED,
            Class::FailedToStart | Class::NotExecutable | Class::CommandNotFound => {
                exit::FAILED_TO_START
            }
            Class::Conflict => exit::CONFLICT,
            Class::Interrupted => exit::INTERRUPTED,
            Class::BrokenPipe => exit::BROKEN_PIPE,
        }
    }
}

/// A failure of jobctl, with the one line that explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    pub class: Class,
    message: String,
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for CliError {}

/// What error messages may say about the connection.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The server as the user named it, e.g. `https://localhost:50051`.
    pub server: String,
    /// The host name the server's certificate must be valid for.
    pub host: String,
    /// Where the trusted CA certificate came from, e.g. `--ca /etc/ca.pem`.
    pub ca: String,
}

impl CliError {
    pub fn new(class: Class, message: impl Into<String>) -> Self {
        Self {
            class,
            message: one_line(&message.into()),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Class::Usage, message)
    }

    pub fn other(message: impl Into<String>) -> Self {
        Self::new(Class::Other, message)
    }

    pub fn broken_pipe() -> Self {
        Self::new(Class::BrokenPipe, "")
    }

    pub fn exit_code(&self) -> u8 {
        self.class.exit_code()
    }

    /// The exit code for `run`, `exec` and `wait`, whose other codes are the job's:
    /// 126 and 127 as a shell's, 130 and 141 as today, 125 for every other failure.
    pub fn attached_exit_code(&self) -> u8 {
        match self.class {
            Class::NotExecutable => exit::NOT_EXECUTABLE,
            Class::CommandNotFound => exit::NOT_FOUND_COMMAND,
            Class::Interrupted => exit::INTERRUPTED,
            Class::BrokenPipe => exit::BROKEN_PIPE,
            _ => exit::ATTACHED_ERROR,
        }
    }

    /// Whether `main` prints this error (a broken pipe is quiet).
    pub fn is_quiet(&self) -> bool {
        self.class == Class::BrokenPipe
    }

    /// Prefixes the message, e.g. with the job it is about.
    pub fn context(mut self, prefix: impl fmt::Display) -> Self {
        if !self.is_quiet() {
            self.message = one_line(&format!("{prefix}: {}", self.message));
        }
        self
    }

    /// Writing to stdout failed: a closed pipe is quiet, anything else is reported.
    pub fn stdout(e: &io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Self::broken_pipe()
        } else {
            Self::other(format!("cannot write to stdout: {}", os_message(e)))
        }
    }

    /// A failure to connect (tonic's eager connect).
    pub fn from_transport(e: &tonic::transport::Error, ctx: &Context) -> Self {
        classify_cause(e, ctx).unwrap_or_else(|| {
            Self::new(
                Class::Unavailable,
                format!("cannot reach the server at {}: {}", ctx.server, chain(e)),
            )
        })
    }

    /// A failed call. Transport failures inside the status (a TLS alert, a lost
    /// connection) take precedence over its code.
    pub fn from_status(status: &tonic::Status, ctx: &Context) -> Self {
        if let Some(e) = classify_cause(status, ctx) {
            return e;
        }
        let message = status.message();
        // A connection that broke mid-call reaches tonic as an HTTP/2 error, not an I/O
        // error: the server went away (or the network did).
        let broken = [
            "h2 protocol error",
            "error reading a body",
            "connection reset",
        ];
        if status.code() == Code::Unknown && broken.iter().any(|b| message.contains(b)) {
            return Self::new(
                Class::Unavailable,
                format!("the connection to {} was lost: {message}", ctx.server),
            );
        }
        let (class, text) = match status.code() {
            Code::NotFound => (Class::NotFound, format!("not found: {message}")),
            Code::InvalidArgument | Code::OutOfRange => (
                Class::InvalidArgument,
                format!("invalid argument: {message}"),
            ),
            Code::ResourceExhausted => (
                Class::ResourceExhausted,
                format!("resource exhausted: {message}"),
            ),
            Code::PermissionDenied => (
                Class::PermissionDenied,
                format!("permission denied: {message}"),
            ),
            Code::Unauthenticated => (
                Class::PermissionDenied,
                format!("not authenticated: {message}"),
            ),
            // The server words a failed start "the job failed to start: ..."; anything
            // else is the job's state.
            Code::FailedPrecondition if message.starts_with("the job failed to start") => {
                (Class::FailedToStart, message.to_string())
            }
            Code::FailedPrecondition => (Class::Conflict, message.to_string()),
            Code::AlreadyExists => (Class::Conflict, format!("already exists: {message}")),
            Code::Unavailable => (
                Class::Unavailable,
                format!("the server at {} is unavailable: {message}", ctx.server),
            ),
            Code::DeadlineExceeded => (
                Class::Unavailable,
                format!("the server at {} did not answer in time", ctx.server),
            ),
            Code::Cancelled => (Class::Other, format!("the call was cancelled: {message}")),
            code => (Class::Other, format!("server error ({code:?}): {message}")),
        };
        Self::new(class, text)
    }
}

/// Looks through an error's causes for what explains it best: a TLS error, or an I/O
/// error that says the server cannot be reached or the connection was lost.
fn classify_cause(e: &(dyn StdError + 'static), ctx: &Context) -> Option<CliError> {
    let mut io_kind = None;
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls_error(tls, ctx));
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            // An io::Error's `source()` skips the error it wraps: look at it directly.
            if let Some(found) = io.get_ref().and_then(|inner| classify_cause(inner, ctx)) {
                return Some(found);
            }
            io_kind.get_or_insert((io.kind(), os_message(io)));
        }
        current = err.source();
    }
    let (kind, text) = io_kind?;
    use io::ErrorKind::*;
    let class = Class::Unavailable;
    Some(match kind {
        ConnectionRefused => CliError::new(
            class,
            format!(
                "cannot reach the server at {}: connection refused (is jobworker-api \
                 running and listening there?)",
                ctx.server
            ),
        ),
        TimedOut => CliError::new(
            class,
            format!("cannot reach the server at {}: timed out", ctx.server),
        ),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => CliError::new(
            class,
            format!("the connection to {} was lost: {text}", ctx.server),
        ),
        _ => CliError::new(
            class,
            format!("cannot reach the server at {}: {text}", ctx.server),
        ),
    })
}

fn tls_error(e: &rustls::Error, ctx: &Context) -> CliError {
    CliError::new(
        Class::Tls,
        format!(
            "TLS handshake with {} failed: {}",
            ctx.server,
            describe_tls(e, ctx)
        ),
    )
}

/// Says what a TLS failure means for the user, where the error tells.
pub fn describe_tls(e: &rustls::Error, ctx: &Context) -> String {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => format!(
                "the server's certificate is not trusted by the CA certificate of {} \
                 (unknown issuer)",
                ctx.ca
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the server's certificate is not valid for the name {:?}",
                    ctx.host
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired".to_string()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet (check the clocks)".to_string()
            }
            CertificateError::BadSignature => format!(
                "the server's certificate is not trusted by the CA certificate of {} (its \
                 signature does not verify: another CA with the same name?)",
                ctx.ca
            ),
            CertificateError::Revoked => "the server's certificate is revoked".to_string(),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "the server's certificate is not meant for a TLS server (extended key usage)"
                    .to_string()
            }
            other => format!("the server's certificate is invalid ({other:?})"),
        },
        E::AlertReceived(alert) => match alert {
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired => format!(
                "the server rejected our certificate ({}); check --cert and --key, that \
                 the certificate is current, and that the server trusts its CA",
                alert_text(*alert)
            ),
            AlertDescription::ProtocolVersion => "the server does not accept TLS 1.3".to_string(),
            AlertDescription::HandshakeFailure | AlertDescription::InsufficientSecurity => {
                "no TLS parameters in common with the server (TLS 1.3 cipher suites and key \
                 exchange groups)"
                    .to_string()
            }
            AlertDescription::NoApplicationProtocol => {
                "the server does not speak gRPC over HTTP/2 (ALPN h2)".to_string()
            }
            other => format!("the server ended the handshake ({})", alert_text(*other)),
        },
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => {
            "the server did not answer with TLS 1.3 (is it the jobworker API server?)".to_string()
        }
        E::NoApplicationProtocol => {
            "the server does not speak gRPC over HTTP/2 (ALPN h2)".to_string()
        }
        E::PeerIncompatible(why) => {
            format!("the server is incompatible with our TLS policy ({why:?})")
        }
        other => other.to_string(),
    }
}

fn alert_text(alert: AlertDescription) -> String {
    match alert {
        AlertDescription::BadCertificate => "bad certificate".into(),
        AlertDescription::UnsupportedCertificate => {
            "not a certificate for client authentication: it needs the clientAuth extended key \
             usage"
                .into()
        }
        AlertDescription::CertificateRevoked => "certificate revoked".into(),
        // The alert means "expired or not currently valid" (RFC 8446, 6.2).
        AlertDescription::CertificateExpired => {
            "certificate expired or not yet valid: check its dates and the clocks".into()
        }
        AlertDescription::CertificateUnknown => "certificate unknown".into(),
        AlertDescription::UnknownCA => "issued by a CA it does not trust".into(),
        AlertDescription::AccessDenied => "access denied: no usable identity".into(),
        AlertDescription::CertificateRequired => "a client certificate is required".into(),
        other => format!("alert {other:?}"),
    }
}

/// An I/O error's text without the `(os error N)` suffix.
pub fn os_message(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// An error and its causes, `a: b: c`, without repeats.
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(e);
    while let Some(err) = current {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ")
}

/// Makes text safe for one line on a terminal: control characters (newlines, escape
/// sequences from a server's message) become `?`, and runs of white space one space.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last_space = false;
    for c in text.trim().chars() {
        if c == '\n' || c == '\r' || c == '\t' || c == ' ' {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
            continue;
        }
        last_space = false;
        out.push(if c.is_control() { '?' } else { c });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            server: "https://localhost:50051".into(),
            host: "localhost".into(),
            ca: "--ca /tmp/ca.pem".into(),
        }
    }

    #[test]
    fn status_codes_map_to_documented_exit_codes() {
        let table = [
            (Code::NotFound, exit::NOT_FOUND),
            (Code::InvalidArgument, exit::INVALID_ARGUMENT),
            (Code::ResourceExhausted, exit::RESOURCE_EXHAUSTED),
            (Code::PermissionDenied, exit::PERMISSION_DENIED),
            (Code::FailedPrecondition, exit::CONFLICT),
            (Code::AlreadyExists, exit::CONFLICT),
            (Code::Unavailable, exit::UNAVAILABLE),
            (Code::Internal, exit::OTHER),
        ];
        let failed = tonic::Status::failed_precondition("the job failed to start: no");
        assert_eq!(
            CliError::from_status(&failed, &ctx()).exit_code(),
            exit::FAILED_TO_START
        );
        for (code, exit_code) in table {
            let e = CliError::from_status(&tonic::Status::new(code, "x"), &ctx());
            assert_eq!(e.exit_code(), exit_code, "{code:?}");
        }
    }

    #[test]
    fn server_messages_stay_on_one_line() {
        let status = tonic::Status::not_found("no job\nsecond line \x1b[31mred");
        let e = CliError::from_status(&status, &ctx());
        assert_eq!(e.to_string(), "not found: no job second line ?[31mred");
    }

    #[test]
    fn tls_errors_inside_io_errors_are_found() {
        let tls = rustls::Error::AlertReceived(AlertDescription::CertificateExpired);
        let io = io::Error::new(io::ErrorKind::InvalidData, tls);
        let e = classify_cause(&io, &ctx()).unwrap();
        assert_eq!(e.class, Class::Tls);
        assert!(
            e.to_string().contains(
                "the server rejected our certificate (certificate expired or not yet valid"
            ),
            "{e}"
        );
        let unknown = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let e = classify_cause(&unknown, &ctx()).unwrap();
        assert!(
            e.to_string()
                .contains("not trusted by the CA certificate of --ca /tmp/ca.pem")
        );
    }

    #[test]
    fn refused_connections_are_unavailable() {
        let io = io::Error::from(io::ErrorKind::ConnectionRefused);
        let e = classify_cause(&io, &ctx()).unwrap();
        assert_eq!(e.exit_code(), exit::UNAVAILABLE);
        assert!(e.to_string().contains("connection refused"), "{e}");
    }
}
