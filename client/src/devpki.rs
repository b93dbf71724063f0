//! The development PKI behind `jobworker-dev-certs` (what `make certs` runs).
//!
//! In one directory (by default `dev-pki/`, git-ignored):
//!
//! | file | what | validity |
//! |---|---|---|
//! | `ca.pem`, `ca.key` | the development CA (signs everything below) | 365 days |
//! | `server.pem`, `server.key` | the API server: SANs `localhost`, `127.0.0.1`, `::1`; EKU serverAuth | 30 days |
//! | `NAME.pem`, `NAME.key` | a client: CN = NAME (the identity), EKU clientAuth | 7 days |
//!
//! for NAME in `alice`, `bob`, `admin` (plus any `--user`). ECDSA P-256 keys, PKCS#8
//! PEM, mode 0600; certificates mode 0644.
//!
//! Re-running is safe: an existing key is never overwritten (a key with a looser mode
//! is tightened to 0600). A certificate is kept while it is valid for more than a day
//! and carries a valid signature of the current CA certificate; otherwise it is issued
//! again for the same key. So re-running renews the short-lived client certificates.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::pem::parse_x509_pem;

/// The client identities created by default.
pub const DEFAULT_USERS: [&str; 3] = ["alice", "bob", "admin"];
pub const CA_DAYS: i64 = 365;
pub const SERVER_DAYS: i64 = 30;
pub const CLIENT_DAYS: i64 = 7;
/// A certificate valid for less than this is issued again.
const RENEW_BEFORE: Duration = Duration::days(1);

/// What to create.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    /// Client identities (certificate common names), also the file names.
    pub users: Vec<String>,
    pub client_days: i64,
}

/// A failed step, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DevPkiError {
    pub path: PathBuf,
    pub message: String,
}

fn fail(path: &Path, message: impl std::fmt::Display) -> DevPkiError {
    DevPkiError {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Whether a user name is usable as an identity and a file name.
pub fn valid_user(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !matches!(name, "ca" | "server")
}

/// Creates what is missing, renews what expires, and reports each file on `log`.
pub fn ensure(opts: &Options, log: &mut dyn Write) -> Result<(), DevPkiError> {
    let dir = &opts.dir;
    fs::create_dir_all(dir).map_err(|e| fail(dir, format!("cannot create: {e}")))?;
    for user in &opts.users {
        if !valid_user(user) {
            return Err(fail(
                dir,
                format!(
                    "{user:?} is not a usable user name (letters, digits, '.', '_', '-'; at \
                     most 64; not ca or server)"
                ),
            ));
        }
    }
    let now = OffsetDateTime::now_utc();

    // The CA.
    let ca_key_path = dir.join("ca.key");
    let ca_pem_path = dir.join("ca.pem");
    let (ca_key, ca_key_new) = ensure_key(&ca_key_path, log)?;
    let existing_ca = if ca_key_new {
        None
    } else {
        current_cert(&ca_pem_path, now, None)?
    };
    let (ca_pem, ca_new) = match existing_ca {
        Some((pem, until)) => {
            say(
                log,
                &ca_pem_path,
                &format!("kept, valid until {}", date(until)),
            );
            (pem, false)
        }
        None => {
            let cert = ca_params(now)
                .self_signed(&ca_key)
                .map_err(|e| fail(&ca_pem_path, format!("cannot sign: {e}")))?;
            let pem = cert.pem();
            write_cert(&ca_pem_path, &pem)?;
            say(
                log,
                &ca_pem_path,
                &format!(
                    "created, valid until {}",
                    date(now + Duration::days(CA_DAYS))
                ),
            );
            (pem, true)
        }
    };
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .map_err(|e| fail(&ca_pem_path, format!("unusable CA certificate: {e}")))?;

    // The server and the clients.
    let server = server_params(now).map_err(|e| fail(&dir.join("server.pem"), e))?;
    let mut leaves: Vec<(String, CertificateParams)> = vec![("server".into(), server)];
    for user in &opts.users {
        leaves.push((user.clone(), client_params(user, now, opts.client_days)));
    }
    for (name, params) in leaves {
        let key_path = dir.join(format!("{name}.key"));
        let pem_path = dir.join(format!("{name}.pem"));
        let (key, key_new) = ensure_key(&key_path, log)?;
        let keep = if key_new || ca_new {
            None
        } else {
            current_cert(&pem_path, now, Some(&ca_pem))?
        };
        if let Some((_, until)) = keep {
            say(
                log,
                &pem_path,
                &format!("kept, valid until {}", date(until)),
            );
            continue;
        }
        let until = params.not_after;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| fail(&pem_path, format!("cannot sign: {e}")))?;
        write_cert(&pem_path, &cert.pem())?;
        say(
            log,
            &pem_path,
            &format!("issued, valid until {}", date(until)),
        );
    }
    Ok(())
}

fn say(log: &mut dyn Write, path: &Path, text: &str) {
    let _ = writeln!(log, "{}: {text}", path.display());
}

fn date(t: OffsetDateTime) -> String {
    humantime::format_rfc3339_seconds(SystemTime::from(t)).to_string()
}

/// Loads the key at `path`, or creates it (mode 0600) when there is none. Returns
/// whether it was created.
fn ensure_key(path: &Path, log: &mut dyn Write) -> Result<(KeyPair, bool), DevPkiError> {
    match fs::read_to_string(path) {
        Ok(pem) => {
            let key = KeyPair::from_pem(&pem)
                .map_err(|e| fail(path, format!("not a usable private key: {e}")))?;
            let mode = fs::metadata(path)
                .map_err(|e| fail(path, e))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                    .map_err(|e| fail(path, format!("cannot restrict to mode 0600: {e}")))?;
                say(
                    log,
                    path,
                    &format!(
                        "exists, kept; mode {:04o} restricted to 0600",
                        mode & 0o7777
                    ),
                );
            } else {
                say(log, path, "exists, kept (keys are never overwritten)");
            }
            Ok((key, false))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| fail(path, format!("cannot generate a key: {e}")))?;
            // create_new: never replace a key that appeared meanwhile.
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| fail(path, format!("cannot create: {e}")))?;
            file.write_all(key.serialize_pem().as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| fail(path, format!("cannot write: {e}")))?;
            say(log, path, "created (ECDSA P-256, mode 0600)");
            Ok((key, true))
        }
        Err(e) => Err(fail(path, format!("cannot read: {e}"))),
    }
}

/// The certificate at `path` and its end of validity, when it exists, stays valid for
/// more than [`RENEW_BEFORE`], and (for a leaf) carries a valid signature of `ca`.
fn current_cert(
    path: &Path,
    now: OffsetDateTime,
    ca: Option<&str>,
) -> Result<Option<(String, OffsetDateTime)>, DevPkiError> {
    let pem = match fs::read_to_string(path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(path, format!("cannot read: {e}"))),
    };
    // An unparsable or foreign certificate is replaced (it is not a key).
    let Ok((_, parsed)) = parse_x509_pem(pem.as_bytes()) else {
        return Ok(None);
    };
    let Ok(cert) = parsed.parse_x509() else {
        return Ok(None);
    };
    let not_after = cert.validity().not_after.to_datetime();
    if not_after - now < RENEW_BEFORE {
        return Ok(None);
    }
    if let Some(ca_pem) = ca {
        let Ok((_, ca_parsed)) = parse_x509_pem(ca_pem.as_bytes()) else {
            return Ok(None);
        };
        let Ok(ca_cert) = ca_parsed.parse_x509() else {
            return Ok(None);
        };
        if cert.issuer() != ca_cert.subject()
            || cert.verify_signature(Some(ca_cert.public_key())).is_err()
        {
            return Ok(None);
        }
    }
    Ok(Some((pem, not_after)))
}

fn write_cert(path: &Path, pem: &str) -> Result<(), DevPkiError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
        .map_err(|e| fail(path, format!("cannot create: {e}")))?;
    file.write_all(pem.as_bytes())
        .map_err(|e| fail(path, format!("cannot write: {e}")))
}

/// A random positive serial number (a renewed certificate for the same key must not
/// reuse its predecessor's serial).
fn serial() -> SerialNumber {
    let mut bytes = random_bytes();
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

/// 16 random bytes from the crypto provider.
fn random_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    let random = rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes);
    if random.is_err() {
        // Unique enough without randomness: the current time in nanoseconds.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(1);
        bytes = nanos.to_be_bytes();
    }
    bytes
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "jobworker development PKI");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn ca_params(now: OffsetDateTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    // A unique name: two development CAs never pass for one another.
    let tag: String = random_bytes()
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    p.distinguished_name = name(&format!("jobworker development CA {tag}"));
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.serial_number = Some(serial());
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(CA_DAYS);
    p
}

fn server_params(now: OffsetDateTime) -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(vec!["localhost".to_string()])?;
    p.distinguished_name = name("jobworker-api");
    p.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    p.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.serial_number = Some(serial());
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(SERVER_DAYS);
    Ok(p)
}

fn client_params(user: &str, now: OffsetDateTime, days: i64) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = name(user);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.serial_number = Some(serial());
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(days);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path) -> Options {
        Options {
            dir: dir.to_path_buf(),
            users: DEFAULT_USERS.iter().map(|s| s.to_string()).collect(),
            client_days: CLIENT_DAYS,
        }
    }

    #[test]
    fn creates_everything_with_private_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let mut log = Vec::new();
        ensure(&options(&dir), &mut log).unwrap();
        for name in ["ca", "server", "alice", "bob", "admin"] {
            let key = dir.join(format!("{name}.key"));
            let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}.key");
            assert!(dir.join(format!("{name}.pem")).exists());
        }
        let log = String::from_utf8(log).unwrap();
        assert!(
            log.contains("alice.key: created (ECDSA P-256, mode 0600)"),
            "{log}"
        );
    }

    #[test]
    fn rerunning_keeps_keys_and_current_certificates() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        ensure(&options(dir), &mut Vec::new()).unwrap();
        let key_before = fs::read(dir.join("alice.key")).unwrap();
        let cert_before = fs::read(dir.join("alice.pem")).unwrap();
        let mut log = Vec::new();
        ensure(&options(dir), &mut log).unwrap();
        assert_eq!(fs::read(dir.join("alice.key")).unwrap(), key_before);
        assert_eq!(fs::read(dir.join("alice.pem")).unwrap(), cert_before);
        let log = String::from_utf8(log).unwrap();
        assert!(
            log.contains("alice.key: exists, kept (keys are never overwritten)"),
            "{log}"
        );
        assert!(log.contains("alice.pem: kept, valid until"), "{log}");
    }

    #[test]
    fn a_missing_certificate_is_issued_again_for_the_same_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        ensure(&options(dir), &mut Vec::new()).unwrap();
        let key_before = fs::read(dir.join("bob.key")).unwrap();
        fs::remove_file(dir.join("bob.pem")).unwrap();
        let mut log = Vec::new();
        ensure(&options(dir), &mut log).unwrap();
        assert_eq!(fs::read(dir.join("bob.key")).unwrap(), key_before);
        assert!(String::from_utf8(log).unwrap().contains("bob.pem: issued"));
    }

    #[test]
    fn user_names_are_checked() {
        assert!(valid_user("alice"));
        assert!(valid_user("ci-bot.1"));
        for bad in ["", "../x", ".hidden", "-x", "a/b", "ca", "server", "é"] {
            assert!(!valid_user(bad), "{bad:?}");
        }
    }
}
