//! `jobworker-dev-certs`: creates the development PKI (what `make certs` runs).
//!
//! Not for production: operators bring their own CA (see `docs/client.md`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use jobctl::devpki::{self, CLIENT_DAYS, DEFAULT_USERS, Options};

/// Create a development PKI for jobworker: a CA, a server certificate for
/// localhost, and client certificates for alice, bob and admin.
///
/// Keys are ECDSA P-256, mode 0600. Re-running never overwrites a key; it keeps
/// current certificates and issues again those that are missing, expire within a day,
/// or belong to a replaced CA certificate.
#[derive(Debug, Parser)]
#[command(
    name = "jobworker-dev-certs",
    version,
    after_long_help = "Files (in DIR):\n  ca.pem, ca.key          the development CA (365 days)\n  \
                       server.pem, server.key  the API server: localhost, 127.0.0.1, ::1 (30 days)\n  \
                       NAME.pem, NAME.key      a client whose identity is NAME (7 days)\n\n\
                       Example:\n  jobworker-dev-certs dev-pki\n  \
                       JOBWORKER_CA=dev-pki/ca.pem JOBWORKER_CERT=dev-pki/alice.pem \
                       JOBWORKER_KEY=dev-pki/alice.key jobctl run -- uname -a"
)]
struct Args {
    /// Directory to create the files in
    #[arg(default_value = "dev-pki", value_name = "DIR")]
    dir: PathBuf,

    /// Another client identity besides alice, bob and admin (repeatable)
    #[arg(long = "user", value_name = "NAME")]
    users: Vec<String>,

    /// Validity of the client certificates, in days
    #[arg(long, value_name = "DAYS", default_value_t = CLIENT_DAYS,
          value_parser = clap::value_parser!(i64).range(1..=365))]
    client_days: i64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut users: Vec<String> = DEFAULT_USERS.iter().map(|s| s.to_string()).collect();
    for user in args.users {
        if !users.contains(&user) {
            users.push(user);
        }
    }
    let options = Options {
        dir: args.dir,
        users,
        client_days: args.client_days,
    };
    let mut stdout = std::io::stdout();
    match devpki::ensure(&options, &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jobworker-dev-certs: {e}");
            ExitCode::FAILURE
        }
    }
}
