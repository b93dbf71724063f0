//! Parsing `/proc/self/mountinfo` and `/proc/self/cgroup`.

use std::path::PathBuf;

/// One line of the mount table, the fields the backends need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mount {
    /// The path inside the filesystem that is mounted (`/` unless a subtree is bind
    /// mounted or a cgroup namespace hides the rest).
    pub root: String,
    pub mount_point: PathBuf,
    pub fstype: String,
    /// Filesystem-specific options; for a cgroup v1 mount they name its controllers.
    pub super_options: Vec<String>,
}

impl Mount {
    pub fn has_option(&self, option: &str) -> bool {
        self.super_options.iter().any(|o| o == option)
    }
}

/// Parses the mount table (proc(5)):
/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`.
pub(super) fn parse_mountinfo(text: &str) -> Result<Vec<Mount>, String> {
    let mut mounts = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || format!("line {} is not a mountinfo line", n + 1);
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-").ok_or_else(bad)?;
        if sep < 6 || fields.len() < sep + 4 {
            return Err(bad());
        }
        mounts.push(Mount {
            root: unescape(fields[3]),
            mount_point: PathBuf::from(unescape(fields[4])),
            fstype: fields[sep + 1].to_owned(),
            super_options: fields[sep + 3].split(',').map(str::to_owned).collect(),
        });
    }
    Ok(mounts)
}

/// Undoes the kernel's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The executor's cgroup v2 path (the `0::/path` line of `/proc/self/cgroup`).
pub(super) fn unified_path(self_cgroup: &str) -> Option<&str> {
    self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hybrid_lines_with_optional_fields_and_escapes() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime shared:9 - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:10 master:2 - cgroup cgroup rw,cpu,cpuacct
41 31 0:38 /sub /mnt/with\\040space rw - cgroup2 cgroup2 rw,nsdelegate
";
        let m = parse_mountinfo(text).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[1].mount_point,
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(m[1].fstype, "cgroup");
        assert!(m[1].has_option("cpu") && m[1].has_option("cpuacct"));
        assert!(!m[1].has_option("cpuset"));
        assert_eq!(m[2].root, "/sub");
        assert_eq!(m[2].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(m[2].super_options, ["rw", "nsdelegate"]);
    }

    #[test]
    fn rejects_a_line_without_separator() {
        assert_eq!(
            parse_mountinfo("1 2 0:1 / /x rw\n").unwrap_err(),
            "line 1 is not a mountinfo line"
        );
    }

    #[test]
    fn finds_the_unified_line() {
        let text = "12:pids:/a\n1:name=systemd:/b\n0::/system.slice/jobworker.service\n";
        assert_eq!(unified_path(text), Some("/system.slice/jobworker.service"));
        assert_eq!(unified_path("4:memory:/x\n"), None);
    }
}
