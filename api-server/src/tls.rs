//! The TLS configuration, built explicitly rather than left to library defaults.
//!
//! - Provider: aws-lc-rs, passed explicitly (never a process-wide default), restricted
//!   to the suites and groups below.
//! - Protocol: TLS 1.3 only. It has no renegotiation, no static-RSA or CBC suites, and
//!   encrypts the certificates, so a passive observer does not learn who connects.
//! - Cipher suites, in order: TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
//!   TLS13_AES_128_GCM_SHA256 (all AEAD; ChaCha20 for clients without AES hardware).
//! - Key exchange, in order: X25519MLKEM768 (hybrid post-quantum: secure if either
//!   X25519 or ML-KEM holds, so recorded traffic resists a future quantum computer),
//!   then X25519, then secp256r1 for clients limited to NIST curves.
//! - ALPN: `h2` only (gRPC).
//! - Client certificates: required, verified against the configured client CA, checked
//!   against the optional CRL, refused at the handshake (alert `unsupported_certificate`)
//!   unless an extended key usage extension lists clientAuth, and refused (alert
//!   `access_denied`) when their subject has no usable common name, which is the
//!   caller's identity.
//! - The private key file must not be readable by group or others.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};

use x509_parser::prelude::{ASN1Time, FromDer, X509Certificate};

use crate::auth::{IdentityRules, Shown, identity_from_certificate};
use crate::config::TlsPaths;

pub use jobworker_proto::tls::{ALPN_H2, PROTOCOL_VERSIONS, provider};

/// Why the TLS configuration could not be built. Each names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} {path}: cannot read: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key} {path}: not valid PEM: {message}")]
    Pem {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{key} {path}: contains no {what}")]
    Empty {
        key: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error(
        "tls.key {path}: the private key is readable by group or others (mode {mode:04o}); \
         restrict it with `chmod 600 {path}`"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("tls.client_ca {path}: unusable CA certificate: {message}")]
    BadCa { path: PathBuf, message: String },
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("server certificate and key: {0}")]
    ServerCert(rustls::Error),
    #[error("TLS protocol configuration: {0}")]
    Protocol(rustls::Error),
}

fn read_file(key: &'static str, path: &Path) -> Result<(File, Vec<u8>), TlsError> {
    let read_err = |source| TlsError::Read {
        key,
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(read_err)?;
    Ok((file, bytes))
}

/// Reads every certificate in a PEM file.
pub fn load_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let (_, bytes) = read_file(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            key,
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            key,
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// Reads a private key, refusing a file that group or others may read. The mode is
/// checked on the opened file, so it is the mode of the bytes actually read.
pub fn load_private_key(
    key: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let (file, bytes) = read_file(key, path)?;
    let mode = file
        .metadata()
        .map_err(|source| TlsError::Read {
            key,
            path: path.to_path_buf(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyPermissions {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            key,
            path: path.to_path_buf(),
            what: "private key",
        },
        e => TlsError::Pem {
            key,
            path: path.to_path_buf(),
            message: e.to_string(),
        },
    })
}

/// Reads CRLs from a PEM file, or a single DER-encoded CRL.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let key = "tls.crl";
    let (_, bytes) = read_file(key, path)?;
    if bytes.first() == Some(&0x30) {
        // DER: an ASN.1 SEQUENCE.
        return Ok(vec![CertificateRevocationListDer::from(bytes)]);
    }
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            key,
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if crls.is_empty() {
        return Err(TlsError::Empty {
            key,
            path: path.to_path_buf(),
            what: "certificate revocation list",
        });
    }
    Ok(crls)
}

/// Builds the server's TLS configuration from the configured files; client
/// certificates must name an identity under `identity`.
pub fn server_config(
    paths: &TlsPaths,
    identity: &IdentityRules,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let chain = load_certs("tls.cert", &paths.cert)?;
    let key = load_private_key("tls.key", &paths.key)?;

    let mut roots = RootCertStore::empty();
    for ca in load_certs("tls.client_ca", &paths.client_ca)? {
        roots.add(ca).map_err(|e| TlsError::BadCa {
            path: paths.client_ca.clone(),
            message: e.to_string(),
        })?;
    }
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if let Some(crl) = &paths.crl {
        verifier = verifier.with_crls(load_crls(crl)?);
    }
    let verifier = verifier
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(TlsError::Protocol)?
        .with_client_cert_verifier(Arc::new(IdentityVerifier {
            inner: verifier,
            rules: identity.clone(),
        }))
        .with_single_cert(chain, key)
        .map_err(TlsError::ServerCert)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No 0-RTT: early data can be replayed.
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

/// A client configuration as strict as the server's: TLS 1.3 only, the same suites
/// and groups, the server verified against `ca`, and a client certificate.
pub fn client_config(
    ca: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ClientConfig, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots.add(c.clone())?;
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// A server name for client configurations (`localhost`, an IP address, ...).
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned())
        .map_err(|e| TlsError::Verifier(format!("server name {name:?}: {e}")))
}

/// The WebPKI client verifier, plus the identity rule: a certificate whose subject has
/// no usable common name is refused during the handshake.
#[derive(Debug)]
struct IdentityVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    rules: IdentityRules,
}

impl ClientCertVerifier for IdentityVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Err(why) = client_auth_usage(end_entity) {
            tracing::info!(
                "client certificate refused: {why} (subject CN {})",
                common_name(end_entity)
            );
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose,
            ));
        }
        if let Err(e) = identity_from_certificate(end_entity, &self.rules) {
            tracing::info!("client certificate refused: {e}");
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A failed handshake as the server logs it: what was wrong with the client's
/// certificate, in words, when that is the reason; the TLS error otherwise.
pub fn describe_handshake_error(e: &std::io::Error) -> String {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return e.to_string();
    };
    let date = |t: &UnixTime| {
        i64::try_from(t.as_secs())
            .ok()
            .and_then(|secs| ASN1Time::from_timestamp(secs).ok())
            .map_or_else(|| format!("{} (UNIX)", t.as_secs()), |t| t.to_string())
    };
    match tls {
        rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext {
            time,
            not_before,
        }) => format!(
            "the client certificate is not valid yet: it is valid from {}, and this host's \
             clock says {}; check the certificate's dates and both hosts' clocks",
            date(not_before),
            date(time)
        ),
        rustls::Error::InvalidCertificate(CertificateError::NotValidYet) => {
            "the client certificate is not valid yet; check its dates and both hosts' clocks".into()
        }
        rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { time, not_after }) => {
            format!(
                "the client certificate has expired: it was valid until {}, and this host's \
             clock says {}",
                date(not_after),
                date(time)
            )
        }
        rustls::Error::InvalidCertificate(CertificateError::Expired) => {
            "the client certificate has expired".into()
        }
        other => other.to_string(),
    }
}

/// Whether a client certificate is meant for TLS client authentication: it must carry
/// an extended key usage extension that lists clientAuth. WebPKI only refuses a
/// certificate whose extension lists other usages; one without the extension at all
/// would pass as good for anything.
fn client_auth_usage(der: &[u8]) -> Result<(), &'static str> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| "it cannot be parsed")?;
    match cert.extended_key_usage() {
        Ok(Some(eku)) if eku.value.client_auth => Ok(()),
        Ok(Some(_)) => Err("its extended key usage does not include clientAuth"),
        Ok(None) => Err("it has no extended key usage extension (clientAuth is required)"),
        Err(_) => Err("its extended key usage extension cannot be parsed"),
    }
}

/// The subject common name of a certificate, for logs: shown unambiguously, or a note
/// saying there is none.
fn common_name(der: &[u8]) -> String {
    X509Certificate::from_der(der)
        .ok()
        .and_then(|(_, cert)| {
            cert.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(|cn| Shown(cn).to_string())
        })
        .unwrap_or_else(|| "(none)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn paths(dir: &Path, key_mode: u32) -> TlsPaths {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        TlsPaths {
            cert: write(dir, "cert.pem", &cert.pem(), 0o644),
            key: write(dir, "key.pem", &key.serialize_pem(), key_mode),
            client_ca: write(dir, "ca.pem", &cert.pem(), 0o644),
            crl: None,
        }
    }

    #[test]
    fn builds_a_tls13_only_config_with_h2() {
        let dir = tempfile::tempdir().unwrap();
        let config = server_config(&paths(dir.path(), 0o600), &IdentityRules::default()).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        let provider = config.crypto_provider();
        let suites: Vec<_> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(
            suites,
            [
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
                rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            ]
        );
        let groups: Vec<_> = provider.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(
            groups,
            [
                rustls::NamedGroup::X25519MLKEM768,
                rustls::NamedGroup::X25519,
                rustls::NamedGroup::secp256r1,
            ]
        );
    }

    #[test]
    fn only_certificates_for_client_authentication_pass() {
        use rcgen::ExtendedKeyUsagePurpose as Eku;
        let cert = |usages: Vec<Eku>| {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.extended_key_usages = usages;
            let key = rcgen::KeyPair::generate().unwrap();
            params.self_signed(&key).unwrap().der().to_vec()
        };
        assert_eq!(client_auth_usage(&cert(vec![Eku::ClientAuth])), Ok(()));
        assert_eq!(
            client_auth_usage(&cert(vec![Eku::ServerAuth, Eku::ClientAuth])),
            Ok(())
        );
        assert_eq!(
            client_auth_usage(&cert(vec![])),
            Err("it has no extended key usage extension (clientAuth is required)")
        );
        for usages in [vec![Eku::ServerAuth], vec![Eku::Any]] {
            assert_eq!(
                client_auth_usage(&cert(usages)),
                Err("its extended key usage does not include clientAuth")
            );
        }
    }

    #[test]
    fn a_key_readable_by_others_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604] {
            let e = server_config(&paths(dir.path(), mode), &IdentityRules::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("readable by group or others"), "{e}");
            assert!(e.contains(&format!("mode {mode:04o}")), "{e}");
        }
        server_config(&paths(dir.path(), 0o400), &IdentityRules::default()).unwrap();
    }

    #[test]
    fn missing_and_empty_files_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = paths(dir.path(), 0o600);
        p.client_ca = dir.path().join("missing.pem");
        let e = server_config(&p, &IdentityRules::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("tls.client_ca "), "{e}");
        p.client_ca = write(dir.path(), "empty.pem", "", 0o644);
        let e = server_config(&p, &IdentityRules::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("contains no certificate"), "{e}");
        p.client_ca = p.cert.clone();
        p.crl = Some(write(dir.path(), "crl.pem", "garbage", 0o644));
        let e = server_config(&p, &IdentityRules::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("tls.crl "), "{e}");
    }
}
