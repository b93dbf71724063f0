//! A test PKI made with rcgen: a CA with a CRL, a server certificate for localhost,
//! client certificates (valid, expired, revoked, without a common name) and a second,
//! unrelated CA. ECDSA P-256 throughout.

use std::collections::HashMap;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use super::write_file;

/// A client certificate and its key.
pub struct ClientCert {
    pub cert: CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

impl ClientCert {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

pub struct Pki {
    pub ca_pem: String,
    pub ca: CertificateDer<'static>,
    pub crl_pem: String,
    pub server_pem: String,
    pub server_key_pem: String,
    clients: HashMap<&'static str, ClientCert>,
}

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

fn client(
    cn: Option<&str>,
    serial: u64,
    issuer: &Issuer<'_, KeyPair>,
    valid_until: OffsetDateTime,
) -> ClientCert {
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
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = OffsetDateTime::now_utc() - Duration::days(2);
    params.not_after = valid_until;
    let key = key();
    let cert = params.signed_by(&key, issuer).unwrap();
    ClientCert {
        cert: cert.der().clone(),
        key_der: key.serialize_der(),
    }
}

/// Serial number of the revoked client certificate.
const REVOKED_SERIAL: u64 = 666;

impl Pki {
    pub fn new() -> Pki {
        let now = OffsetDateTime::now_utc();
        let ca_key = key();
        let ca = ca_params("jobworker test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);

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

        let week = now + Duration::days(7);
        let mut clients = HashMap::new();
        clients.insert("alice", client(Some("alice"), 1, &issuer, week));
        clients.insert("bob", client(Some("bob"), 2, &issuer, week));
        clients.insert("admin", client(Some("admin"), 3, &issuer, week));
        clients.insert(
            "expired",
            client(Some("carol"), 4, &issuer, now - Duration::days(1)),
        );
        clients.insert(
            "revoked",
            client(Some("mallory"), REVOKED_SERIAL, &issuer, week),
        );
        clients.insert("no-cn", client(None, 5, &issuer, week));

        let other_key = key();
        let other_params = ca_params("some other CA");
        let other_issuer = Issuer::new(other_params, other_key);
        clients.insert("other-ca", client(Some("alice"), 1, &other_issuer, week));

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

        Pki {
            ca_pem: ca_cert.pem(),
            ca: ca_cert.der().clone(),
            crl_pem: crl.pem().unwrap(),
            server_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            clients,
        }
    }

    pub fn client(&self, name: &str) -> &ClientCert {
        self.clients
            .get(name)
            .unwrap_or_else(|| panic!("no client certificate {name}"))
    }

    /// The strict client configuration (the server's own rules) for `name`.
    pub fn client_config(&self, name: &str) -> ClientConfig {
        let c = self.client(name);
        jobworker_api::tls::client_config(
            std::slice::from_ref(&self.ca),
            vec![c.cert.clone()],
            c.key(),
        )
        .unwrap()
    }

    /// Writes the server's files into `dir` (key mode 0600, owned by the server's user
    /// when root) and returns the `[tls]` section naming them.
    pub fn install_server_files(&self, dir: &Path, with_crl: bool) -> String {
        let cert = write_file(dir, "server.pem", self.server_pem.as_bytes(), 0o644);
        let key = write_file(dir, "server.key", self.server_key_pem.as_bytes(), 0o600);
        let ca = write_file(dir, "ca.pem", self.ca_pem.as_bytes(), 0o644);
        let mut section = format!("[tls]\ncert = {cert:?}\nkey = {key:?}\nclient_ca = {ca:?}\n");
        if with_crl {
            let crl = write_file(dir, "crl.pem", self.crl_pem.as_bytes(), 0o644);
            section.push_str(&format!("crl = {crl:?}\n"));
        }
        section
    }
}
