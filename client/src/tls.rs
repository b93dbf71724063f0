//! The client's TLS policy, as strict as the server's and built explicitly:
//!
//! - provider: aws-lc-rs, passed explicitly (never a process-wide default);
//! - TLS 1.3 only;
//! - cipher suites, in order: TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
//!   TLS13_AES_128_GCM_SHA256;
//! - key exchange groups, in order: X25519MLKEM768 (hybrid post-quantum), X25519,
//!   secp256r1;
//! - ALPN `h2`;
//! - the server's certificate is verified against the configured CA only (not the
//!   system's roots) and must be valid for the host name or IP address in `--server`;
//! - the client certificate is always presented; its private key file must not be
//!   readable by group or others (like ssh, jobctl refuses it rather than warn: a key
//!   others can read is a key others may already have).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::error::{CliError, os_message};
use crate::settings::{Setting, Settings};

pub use jobworker_proto::tls::{ALPN_H2, PROTOCOL_VERSIONS, provider};

/// Builds the client configuration from the CA, certificate and key files.
pub fn client_config(settings: &Settings) -> Result<ClientConfig, CliError> {
    let ca = load_certs(&settings.ca, "CA certificate")?;
    let chain = load_certs(&settings.cert, "client certificate")?;
    let key = load_private_key(&settings.key)?;

    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots.add(cert).map_err(|e| {
            CliError::usage(format!(
                "unusable CA certificate {}: {e}",
                settings.ca.describe()
            ))
        })?;
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| CliError::other(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            let why = match e {
                rustls::Error::InconsistentKeys(_) => "they do not belong together".to_string(),
                e => e.to_string(),
            };
            CliError::usage(format!(
                "client certificate {} and key {}: {why}",
                settings.cert.describe(),
                settings.key.describe()
            ))
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No 0-RTT: early data can be replayed.
    config.enable_early_data = false;
    Ok(config)
}

fn read(setting: &Setting<PathBuf>, what: &str) -> Result<(File, Vec<u8>), CliError> {
    let fail = |e: std::io::Error| {
        CliError::usage(format!(
            "cannot read the {what} {}: {}",
            setting.describe(),
            os_message(&e)
        ))
    };
    let mut file = File::open(&setting.value).map_err(fail)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(fail)?;
    Ok((file, bytes))
}

/// Every certificate in a PEM file; at least one.
pub fn load_certs(
    setting: &Setting<PathBuf>,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, CliError> {
    let (_, bytes) = read(setting, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            CliError::usage(format!(
                "the {what} {} is not valid PEM: {e}",
                setting.describe()
            ))
        })?;
    if certs.is_empty() {
        return Err(CliError::usage(format!(
            "the {what} {} contains no PEM certificate",
            setting.describe()
        )));
    }
    Ok(certs)
}

/// The private key, refused when group or others may read it. The mode is checked on
/// the opened file, so it is the mode of the bytes actually read.
pub fn load_private_key(setting: &Setting<PathBuf>) -> Result<PrivateKeyDer<'static>, CliError> {
    let (file, bytes) = read(setting, "private key")?;
    let mode = file
        .metadata()
        .map_err(|e| {
            CliError::usage(format!(
                "cannot read the private key {}: {}",
                setting.describe(),
                os_message(&e)
            ))
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(CliError::usage(format!(
            "the private key {} is readable by group or others (mode {:04o}); restrict it \
             with `chmod 600 {}`",
            setting.describe(),
            mode & 0o7777,
            setting.value.display()
        )));
    }
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        let why = match e {
            pem::Error::NoItemsFound => "contains no PEM private key".to_string(),
            e => format!("is not a valid PEM private key: {e}"),
        };
        CliError::usage(format!("the private key {} {why}", setting.describe()))
    })
}
