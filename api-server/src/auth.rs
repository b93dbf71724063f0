//! Identity and authorization.
//!
//! A caller's identity is the subject common name (CN) of its client certificate, which
//! the TLS layer has already verified against the client CA. Nothing in a request can
//! name or change it. The admin role goes to identities listed in the configuration.
//! The executor filters jobs by [`Scope`] itself: a user's requests carry
//! `Scope::Owner(identity)`, an admin's `Scope::Any`.

use std::collections::HashSet;

use jobworker_protocol::{Scope, validate};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a certificate yields no usable identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the certificate cannot be parsed")]
    Unparsable,
    #[error("the certificate subject has no common name")]
    NoCommonName,
    #[error("the certificate subject has more than one common name")]
    SeveralCommonNames,
    #[error("the certificate's common name is not a UTF-8 string")]
    NotText,
    #[error("the certificate's common name is not a usable identity: {0}")]
    Unusable(String),
}

/// The identity carried by a (verified) client certificate: its subject's single
/// common name, which must be a valid owner string (1 to 128 bytes, no control
/// characters) without leading or trailing white space.
pub fn identity_from_certificate(der: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Unparsable)?;
    let mut names = cert.subject().iter_common_name();
    let first = names.next().ok_or(IdentityError::NoCommonName)?;
    if names.next().is_some() {
        return Err(IdentityError::SeveralCommonNames);
    }
    let name = first.as_str().map_err(|_| IdentityError::NotText)?;
    validate::owner(name).map_err(|e| IdentityError::Unusable(e.message))?;
    if name.trim() != name {
        return Err(IdentityError::Unusable(
            "leading or trailing white space".into(),
        ));
    }
    Ok(name.to_owned())
}

/// An identity as logs and messages show it: as it is when it consists only of ASCII
/// letters, digits, `.`, `-`, `_` and `@`; otherwise in double quotes, with every
/// character but printable ASCII written `\u{...}` (and `"` and `\\` escaped), so that
/// no two identities look alike and nothing in one can change how text around it reads.
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a>(pub &'a str);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plain = |c: char| c.is_ascii_alphanumeric() || ".-_@".contains(c);
        if !self.0.is_empty() && self.0.chars().all(plain) {
            return f.write_str(self.0);
        }
        f.write_str("\"")?;
        for c in self.0.chars() {
            match c {
                '"' | '\\' => write!(f, "\\{c}")?,
                ' '..='~' => write!(f, "{c}")?,
                c => write!(f, "\\u{{{:x}}}", u32::from(c))?,
            }
        }
        f.write_str("\"")
    }
}

/// A caller as the service sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub identity: String,
    pub admin: bool,
}

impl Caller {
    /// The jobs this caller may address.
    pub fn scope(&self) -> Scope {
        if self.admin {
            Scope::Any
        } else {
            Scope::Owner(self.identity.clone())
        }
    }

    /// The scope of a list request: the caller's own jobs, or every job when an admin
    /// asks for all. `None` when a non-admin asks for all.
    pub fn list_scope(&self, all: bool) -> Option<Scope> {
        match (all, self.admin) {
            (false, _) => Some(Scope::Owner(self.identity.clone())),
            (true, true) => Some(Scope::Any),
            (true, false) => None,
        }
    }
}

/// Grants roles from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    admins: HashSet<String>,
}

impl Authorizer {
    pub fn new(admins: impl IntoIterator<Item = String>) -> Self {
        Self {
            admins: admins.into_iter().collect(),
        }
    }

    pub fn caller(&self, identity: &str) -> Caller {
        Caller {
            identity: identity.to_owned(),
            admin: self.admins.contains(identity),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn cert_with(dn: DistinguishedName) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn cert_cn(cn: &str) -> Vec<u8> {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "jobworker tests");
        dn.push(DnType::CommonName, cn);
        cert_with(dn)
    }

    #[test]
    fn identity_is_the_subject_common_name() {
        assert_eq!(
            identity_from_certificate(&cert_cn("alice")).unwrap(),
            "alice"
        );
        assert_eq!(
            identity_from_certificate(&cert_cn("ops team ü")).unwrap(),
            "ops team ü"
        );
    }

    #[test]
    fn certificates_without_a_usable_common_name_are_refused() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "no cn here");
        assert_eq!(
            identity_from_certificate(&cert_with(dn)),
            Err(IdentityError::NoCommonName)
        );
        assert!(matches!(
            identity_from_certificate(&cert_cn("")),
            Err(IdentityError::Unusable(_))
        ));
        assert!(matches!(
            identity_from_certificate(&cert_cn("al\nice")),
            Err(IdentityError::Unusable(_))
        ));
        assert!(matches!(
            identity_from_certificate(&cert_cn(" alice")),
            Err(IdentityError::Unusable(_))
        ));
        assert!(matches!(
            identity_from_certificate(&cert_cn(&"a".repeat(129))),
            Err(IdentityError::Unusable(_))
        ));
        assert_eq!(
            identity_from_certificate(b"not a certificate"),
            Err(IdentityError::Unparsable)
        );
    }

    #[test]
    fn identities_are_shown_unambiguously() {
        assert_eq!(Shown("alice").to_string(), "alice");
        assert_eq!(Shown("ci-runner.eu_1@x").to_string(), "ci-runner.eu_1@x");
        assert_eq!(Shown("ops team").to_string(), "\"ops team\"");
        assert_eq!(Shown("José").to_string(), "\"Jos\\u{e9}\"");
        assert_eq!(Shown("adm\u{456}n").to_string(), "\"adm\\u{456}n\"");
        assert_eq!(Shown("admin\u{200b}").to_string(), "\"admin\\u{200b}\"");
        assert_eq!(Shown("\u{202e}nimda").to_string(), "\"\\u{202e}nimda\"");
        assert_eq!(Shown("a\"b\\c").to_string(), "\"a\\\"b\\\\c\"");
        assert_eq!(Shown("").to_string(), "\"\"");
    }

    #[test]
    fn admins_get_every_job_users_their_own() {
        let auth = Authorizer::new(["admin".to_string()]);
        let alice = auth.caller("alice");
        assert!(!alice.admin);
        assert_eq!(alice.scope(), Scope::Owner("alice".into()));
        assert_eq!(alice.list_scope(false), Some(Scope::Owner("alice".into())));
        assert_eq!(alice.list_scope(true), None);
        let admin = auth.caller("admin");
        assert!(admin.admin);
        assert_eq!(admin.scope(), Scope::Any);
        assert_eq!(admin.list_scope(false), Some(Scope::Owner("admin".into())));
        assert_eq!(admin.list_scope(true), Some(Scope::Any));
    }
}
