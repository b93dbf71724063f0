//! The test PKI, as files in the development PKI's layout: `ca.pem`, `server.pem` and
//! `server.key` (for `localhost` and `127.0.0.1`), `NAME.pem` and `NAME.key` for each
//! client, and `crl.pem` when there is a CRL. Keys are mode 0600.
//!
//! Two makers: [`Pki::dev_certs`] runs the project's own development PKI tool
//! (`jobworker-dev-certs`: alice, bob and admin), so that the client's tests and the
//! benchmark use what a user would; [`Pki::generate`] (feature `pki`) makes one in
//! process with rcgen, with the certificates the TLS tests need besides: `expired`
//! (carol, expired yesterday), `revoked` (mallory, on the CRL), `no-cn` (no common
//! name), `other-ca` (alice, signed by an unrelated CA), and `no-eku` and `server-eku`
//! (CN admin, without the clientAuth usage: no extended key usage extension, and
//! serverAuth only), `not-yet-valid` (dave, valid from tomorrow), lookalikes of admin
//! (`zwsp-admin`: "admin" and a zero-width space; `rlo-admin`: a right-to-left override
//! and "nimda"; `cyrillic-admin`: "adm", a Cyrillic "i", "n"), and `jose` ("José"),
//! which only a widened identity set accepts. ECDSA P-256 throughout.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::bins;
use crate::scratch::Scratch;

/// A test PKI in a directory of its own.
pub struct Pki {
    pub dir: Scratch,
}

impl Pki {
    /// A development PKI made by `jobworker-dev-certs`.
    pub fn dev_certs() -> Pki {
        let dir = Scratch::new("pki");
        let tool = bins::path("jobworker-dev-certs");
        let out = Command::new(&tool)
            .arg(&dir.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", tool.display()));
        assert!(
            out.status.success(),
            "jobworker-dev-certs: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// The CRL, if this PKI has one.
    pub fn crl(&self) -> Option<PathBuf> {
        Some(self.path("crl.pem")).filter(|p| p.is_file())
    }

    /// The server's (certificate, key).
    pub fn server(&self) -> (PathBuf, PathBuf) {
        (self.path("server.pem"), self.path("server.key"))
    }

    /// A client's (certificate, key).
    pub fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        let pair = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        );
        assert!(pair.0.is_file(), "no client certificate {name}");
        pair
    }

    /// The variables that make jobctl talk to `server` as `user` of this PKI.
    pub fn jobctl_env(&self, user: &str, server: &str) -> [(&'static str, OsString); 4] {
        let (cert, key) = self.client(user);
        [
            ("JOBWORKER_SERVER", server.into()),
            ("JOBWORKER_CA", self.ca().into()),
            ("JOBWORKER_CERT", cert.into()),
            ("JOBWORKER_KEY", key.into()),
        ]
    }

    /// Keeps its directory after the drop.
    pub fn keep(&self) {
        self.dir.keep();
    }
}

#[cfg(feature = "grpc")]
mod tls {
    use rustls::ClientConfig;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    use super::Pki;

    impl Pki {
        /// The CA certificate, DER.
        pub fn ca_der(&self) -> CertificateDer<'static> {
            CertificateDer::from_pem_file(self.ca()).expect("the CA certificate")
        }

        /// A client's certificate, DER.
        pub fn client_cert(&self, name: &str) -> CertificateDer<'static> {
            CertificateDer::from_pem_file(self.client(name).0).expect("a client certificate")
        }

        /// A client's key.
        pub fn client_key(&self, name: &str) -> PrivateKeyDer<'static> {
            PrivateKeyDer::from_pem_file(self.client(name).1).expect("a client key")
        }

        /// The strict client configuration (the server's own rules, as jobctl has them)
        /// for client `name`.
        pub fn client_config(&self, name: &str) -> ClientConfig {
            jobworker_api::tls::client_config(
                &[self.ca_der()],
                vec![self.client_cert(name)],
                self.client_key(name),
            )
            .expect("a client configuration")
        }
    }
}

#[cfg(feature = "pki")]
mod generate {
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
        DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
        RevocationReason, RevokedCertParams, SanType, SerialNumber,
    };
    use time::{Duration, OffsetDateTime};

    use super::{Pki, write_pem};
    use crate::scratch::Scratch;

    fn ca_params(name: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(30);
        params
    }

    fn key() -> KeyPair {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
    }

    /// Serial number of the revoked client certificate.
    const REVOKED_SERIAL: u64 = 666;

    impl Pki {
        /// A PKI made in process; see the module's documentation for what it holds.
        pub fn generate() -> Pki {
            let pki = Pki {
                dir: Scratch::new("pki"),
            };
            let now = OffsetDateTime::now_utc();
            let ca_key = key();
            let ca = ca_params("jobworker test CA");
            let ca_cert = ca.self_signed(&ca_key).unwrap();
            let issuer = Issuer::new(ca, ca_key);
            write_pem(&pki, "ca.pem", &ca_cert.pem(), 0o644);

            let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            server
                .subject_alt_names
                .push(SanType::IpAddress([127, 0, 0, 1].into()));
            server.distinguished_name = DistinguishedName::new();
            server
                .distinguished_name
                .push(DnType::CommonName, "jobworker-api");
            server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            server.not_before = now - Duration::days(1);
            server.not_after = now + Duration::days(7);
            let server_key = key();
            let server_cert = server.signed_by(&server_key, &issuer).unwrap();
            write_pem(&pki, "server.pem", &server_cert.pem(), 0o644);
            write_pem(&pki, "server.key", &server_key.serialize_pem(), 0o600);

            let week = now + Duration::days(7);
            let client_with = |file: &str,
                               cn: Option<&str>,
                               serial: u64,
                               issuer: &Issuer<'_, KeyPair>,
                               (from, until): (OffsetDateTime, OffsetDateTime),
                               usages: Vec<ExtendedKeyUsagePurpose>| {
                let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
                params.distinguished_name = DistinguishedName::new();
                params
                    .distinguished_name
                    .push(DnType::OrganizationName, "jobworker tests");
                if let Some(cn) = cn {
                    params.distinguished_name.push(DnType::CommonName, cn);
                }
                params.serial_number = Some(SerialNumber::from(serial));
                params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                params.extended_key_usages = usages;
                params.not_before = from;
                params.not_after = until;
                let key = key();
                let cert = params.signed_by(&key, issuer).unwrap();
                write_pem(&pki, &format!("{file}.pem"), &cert.pem(), 0o644);
                write_pem(&pki, &format!("{file}.key"), &key.serialize_pem(), 0o600);
            };
            let client = |file: &str, cn, serial, issuer: &Issuer<'_, KeyPair>, until| {
                let usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                client_with(
                    file,
                    cn,
                    serial,
                    issuer,
                    (now - Duration::days(2), until),
                    usages,
                );
            };
            client("alice", Some("alice"), 1, &issuer, week);
            client("bob", Some("bob"), 2, &issuer, week);
            client("admin", Some("admin"), 3, &issuer, week);
            client(
                "expired",
                Some("carol"),
                4,
                &issuer,
                now - Duration::days(1),
            );
            client("revoked", Some("mallory"), REVOKED_SERIAL, &issuer, week);
            client("no-cn", None, 5, &issuer, week);
            // The admin's name without the usage a client certificate needs: no
            // extended key usage at all, and one for servers only.
            let week_from_now = (now - Duration::days(2), week);
            client_with("no-eku", Some("admin"), 7, &issuer, week_from_now, vec![]);
            let server_only = vec![ExtendedKeyUsagePurpose::ServerAuth];
            client_with(
                "server-eku",
                Some("admin"),
                8,
                &issuer,
                week_from_now,
                server_only,
            );
            // Names that display as another's, or need a wider identity set.
            client("zwsp-admin", Some("admin\u{200b}"), 10, &issuer, week);
            client("rlo-admin", Some("\u{202e}nimda"), 11, &issuer, week);
            client("cyrillic-admin", Some("adm\u{456}n"), 12, &issuer, week);
            client("jose", Some("Jos\u{e9}"), 13, &issuer, week);
            // Valid from tomorrow.
            let tomorrow = (now + Duration::days(1), week);
            let usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            client_with("not-yet-valid", Some("dave"), 9, &issuer, tomorrow, usages);
            let other = Issuer::new(ca_params("some other CA"), key());
            client("other-ca", Some("alice"), 1, &other, week);

            let crl = CertificateRevocationListParams {
                this_update: now - Duration::hours(1),
                next_update: now + Duration::days(7),
                crl_number: SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: vec![RevokedCertParams {
                    serial_number: SerialNumber::from(REVOKED_SERIAL),
                    revocation_time: now - Duration::hours(1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                }],
                key_identifier_method: KeyIdMethod::Sha256,
            }
            .signed_by(&issuer)
            .unwrap();
            write_pem(&pki, "crl.pem", &crl.pem().unwrap(), 0o644);
            pki
        }
    }
}

/// Writes one PEM file of a PKI with `mode`.
#[cfg(feature = "pki")]
fn write_pem(pki: &Pki, name: &str, pem: &str, mode: u32) {
    let path = pki.path(name);
    std::fs::write(&path, pem).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    crate::scratch::chmod(&path, mode);
}
