//! Resolving the job user and groups from `/etc/passwd` and `/etc/group`.
//!
//! Read directly rather than through NSS: the accounts the executor uses are system
//! accounts created by `sysusers.d`, which live in those files, and this keeps the
//! resolution free of dynamic modules and foreign calls. Numeric ids are accepted too.

/// A user entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// The parsed account databases.
#[derive(Debug, Default)]
pub struct Db {
    users: Vec<User>,
    groups: Vec<(String, u32)>,
}

impl Db {
    /// Reads `/etc/passwd` and `/etc/group`; a missing file is an empty database.
    pub fn system() -> Self {
        Self::parse(
            &std::fs::read_to_string("/etc/passwd").unwrap_or_default(),
            &std::fs::read_to_string("/etc/group").unwrap_or_default(),
        )
    }

    pub fn parse(passwd: &str, group: &str) -> Self {
        let users = passwd
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4).then_some(())?;
                Some(User {
                    name: f[0].to_owned(),
                    uid: f[2].parse().ok()?,
                    gid: f[3].parse().ok()?,
                })
            })
            .collect();
        let groups = group
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 3).then_some(())?;
                Some((f[0].to_owned(), f[2].parse().ok()?))
            })
            .collect();
        Self { users, groups }
    }

    /// Every user entry.
    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.iter()
    }

    /// Every group entry, as name and gid.
    pub fn groups(&self) -> impl Iterator<Item = (&str, u32)> {
        self.groups.iter().map(|(n, g)| (n.as_str(), *g))
    }

    /// A user by name, or by numeric uid (the primary gid is then the entry's, or the
    /// same number when there is no entry).
    pub fn user(&self, spec: &str) -> Option<User> {
        if let Some(u) = self.users.iter().find(|u| u.name == spec) {
            return Some(u.clone());
        }
        let uid: u32 = spec.parse().ok()?;
        Some(
            self.users
                .iter()
                .find(|u| u.uid == uid)
                .cloned()
                .unwrap_or(User {
                    name: spec.to_owned(),
                    uid,
                    gid: uid,
                }),
        )
    }

    /// A group id by name or number.
    pub fn group(&self, spec: &str) -> Option<u32> {
        self.groups
            .iter()
            .find(|(n, _)| n == spec)
            .map(|(_, g)| *g)
            .or_else(|| spec.parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_and_numbers() {
        let db = Db::parse(
            "# comment\nroot:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\nbroken:line\n",
            "nogroup:x:65534:\nstaff:x:50:a,b\n",
        );
        assert_eq!(db.user("nobody").unwrap().uid, 65534);
        assert_eq!(db.user("65534").unwrap().name, "nobody");
        assert_eq!(
            db.user("1234").unwrap(),
            User {
                name: "1234".into(),
                uid: 1234,
                gid: 1234
            }
        );
        assert_eq!(db.user("broken"), None);
        assert_eq!(db.user("ghost"), None);
        assert_eq!(db.group("staff"), Some(50));
        assert_eq!(db.group("77"), Some(77));
        assert_eq!(db.group("ghost"), None);
    }
}
