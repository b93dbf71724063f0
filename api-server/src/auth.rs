//! Identity and authorization.
//!
//! A caller's identity is the subject common name (CN) of its client certificate, which
//! the TLS layer has already verified against the client CA. Nothing in a request can
//! name or change it. The admin role goes to identities listed in the configuration.
//! The executor filters jobs by [`Scope`] itself: a user's requests carry
//! `Scope::Owner(identity)`, an admin's `Scope::Any`.

use std::collections::HashSet;

use jobworker_protocol::Scope;
use jobworker_protocol::validate::{self, MAX_OWNER_LEN};
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
    #[error("the certificate's common name {} is not a usable identity: {reason}", Shown(.name))]
    Unusable { name: String, reason: String },
}

/// The characters an identity may use besides ASCII letters and digits, by default.
pub const DEFAULT_EXTRA_CHARS: &str = ".-_@";

/// Which names are identities. An identity is 1 to 128 bytes, begins with a letter or a
/// digit, and otherwise holds only:
///
/// - ASCII letters and digits;
/// - the characters of `extra` (by default `.`, `-`, `_` and `@`; configurable, but only
///   ASCII punctuation and the space, never as the last character);
/// - with `unicode_letters`, any other letter or digit (Unicode `Alphabetic` or
///   `Numeric`), which still excludes every control, format (zero-width, direction
///   changing), separator and symbol character.
///
/// The default set leaves nothing that displays alike: no invisible character, none
/// that reorders text, no two spellings of one letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRules {
    extra: Vec<char>,
    unicode_letters: bool,
}

impl Default for IdentityRules {
    fn default() -> Self {
        Self {
            extra: DEFAULT_EXTRA_CHARS.chars().collect(),
            unicode_letters: false,
        }
    }
}

impl IdentityRules {
    /// Rules with `extra` characters (ASCII punctuation or space only) and, with
    /// `unicode_letters`, any letter or digit.
    pub fn new(extra: &str, unicode_letters: bool) -> Result<Self, String> {
        if let Some(c) = extra
            .chars()
            .find(|c| !(c.is_ascii_punctuation() || *c == ' '))
        {
            return Err(format!(
                "{} is not ASCII punctuation or a space",
                escape_char(c)
            ));
        }
        Ok(Self {
            extra: extra.chars().collect(),
            unicode_letters,
        })
    }

    fn letter_or_digit(&self, c: char) -> bool {
        c.is_ascii_alphanumeric() || (self.unicode_letters && c.is_alphanumeric())
    }

    /// Checks a name; the error says which character or rule it breaks.
    pub fn check(&self, name: &str) -> Result<(), String> {
        if name.is_empty() || name.len() > MAX_OWNER_LEN {
            return Err(format!("it must be 1 to {MAX_OWNER_LEN} bytes long"));
        }
        let mut chars = name.char_indices();
        if let Some((_, first)) = chars.next()
            && !self.letter_or_digit(first)
        {
            return Err(format!(
                "it begins with {}, not a letter or a digit",
                escape_char(first)
            ));
        }
        for (i, c) in chars {
            if !self.letter_or_digit(c) && !self.extra.contains(&c) {
                return Err(format!(
                    "{} (at byte {i}) is not allowed in an identity",
                    escape_char(c)
                ));
            }
        }
        if name.ends_with(' ') {
            return Err("it ends with a space".into());
        }
        // The executor's own rule for owners, which the set above already implies.
        validate::owner(name).map_err(|e| e.message)
    }
}

/// A character as error messages name it: `'a'` when it is printable ASCII, `U+200B`
/// otherwise.
fn escape_char(c: char) -> String {
    if c.is_ascii_graphic() {
        format!("{c:?}")
    } else {
        format!("U+{:04X}", u32::from(c))
    }
}

/// An identity as logs and messages show it: as it is when it consists only of ASCII
/// letters, digits, `.`, `-`, `_` and `@`; otherwise in double quotes, with every
/// character but printable ASCII written `\u{...}` (and `"` and `\\` escaped), so that
/// no two identities look alike and nothing in one can change how text around it reads.
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a>(pub &'a str);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plain = |c: char| c.is_ascii_alphanumeric() || DEFAULT_EXTRA_CHARS.contains(c);
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

/// The identity carried by a (verified) client certificate: its subject's single
/// common name, which must be an identity under `rules`.
pub fn identity_from_certificate(
    der: &[u8],
    rules: &IdentityRules,
) -> Result<String, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Unparsable)?;
    let mut names = cert.subject().iter_common_name();
    let first = names.next().ok_or(IdentityError::NoCommonName)?;
    if names.next().is_some() {
        return Err(IdentityError::SeveralCommonNames);
    }
    let name = first.as_str().map_err(|_| IdentityError::NotText)?;
    rules
        .check(name)
        .map_err(|reason| IdentityError::Unusable {
            name: name.to_owned(),
            reason,
        })?;
    Ok(name.to_owned())
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

    fn identity(cn: &str) -> Result<String, IdentityError> {
        identity_from_certificate(&cert_cn(cn), &IdentityRules::default())
    }

    fn unusable(cn: &str, rules: &IdentityRules) -> String {
        match identity_from_certificate(&cert_cn(cn), rules) {
            Err(IdentityError::Unusable { reason, .. }) => reason,
            other => panic!("{cn:?}: {other:?}"),
        }
    }

    #[test]
    fn identity_is_the_subject_common_name() {
        for cn in ["alice", "ci-runner.eu_1", "alice@example.com", "A", "7"] {
            assert_eq!(identity(cn).unwrap(), cn);
        }
    }

    #[test]
    fn certificates_without_a_usable_common_name_are_refused() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "no cn here");
        assert_eq!(
            identity_from_certificate(&cert_with(dn), &IdentityRules::default()),
            Err(IdentityError::NoCommonName)
        );
        let rules = IdentityRules::default();
        assert_eq!(unusable("", &rules), "it must be 1 to 128 bytes long");
        assert_eq!(
            unusable(&"a".repeat(129), &rules),
            "it must be 1 to 128 bytes long"
        );
        assert_eq!(
            unusable("al\nice", &rules),
            "U+000A (at byte 2) is not allowed in an identity"
        );
        assert_eq!(
            unusable(" alice", &rules),
            "it begins with U+0020, not a letter or a digit"
        );
        assert_eq!(
            unusable("-admin", &rules),
            "it begins with '-', not a letter or a digit"
        );
        assert_eq!(
            identity_from_certificate(b"not a certificate", &rules),
            Err(IdentityError::Unparsable)
        );
    }

    #[test]
    fn lookalikes_of_other_identities_are_refused() {
        let rules = IdentityRules::default();
        for (cn, reason) in [
            (
                "admin\u{200b}",
                "U+200B (at byte 5) is not allowed in an identity",
            ),
            (
                "\u{202e}nimda",
                "it begins with U+202E, not a letter or a digit",
            ),
            (
                "ad\u{200d}min",
                "U+200D (at byte 2) is not allowed in an identity",
            ),
            (
                "adm\u{456}n",
                "U+0456 (at byte 3) is not allowed in an identity",
            ),
            (
                "admin\u{feff}",
                "U+FEFF (at byte 5) is not allowed in an identity",
            ),
            ("ad min", "U+0020 (at byte 2) is not allowed in an identity"),
            (
                "admin\u{301}",
                "U+0301 (at byte 5) is not allowed in an identity",
            ),
        ] {
            assert_eq!(unusable(cn, &rules), reason, "{cn:?}");
        }
        // Widened: letters of any script, and a space inside, but still nothing
        // invisible or direction-changing.
        let wide = IdentityRules::new(".-_@ ", true).unwrap();
        for cn in ["ops team", "José", "мария", "adm\u{456}n"] {
            assert_eq!(identity_from_certificate(&cert_cn(cn), &wide).unwrap(), cn);
        }
        for cn in [
            "admin\u{200b}",
            "\u{202e}nimda",
            "a\u{2066}b",
            "ops team ",
            "a\u{a0}b",
        ] {
            unusable(cn, &wide);
        }
        assert_eq!(
            IdentityRules::new("+\u{200b}", false).unwrap_err(),
            "U+200B is not ASCII punctuation or a space"
        );
        assert_eq!(
            IdentityRules::new("a", false).unwrap_err(),
            "'a' is not ASCII punctuation or a space"
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
