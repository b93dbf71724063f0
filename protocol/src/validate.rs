//! Bounds every request must respect.
//!
//! The API server checks them at the network edge to answer bad input early; the
//! executor checks them again because it trusts no byte from its socket. Ceilings from
//! the executor's own configuration are checked on top of these, in the executor.

use crate::error::WireError;
use crate::job::{ExecSpec, IoLimits, JobSpec, Label, Limits, ListFilter, Scope, TtySize};
use crate::message::MAX_LIST_PAGE;

/// Most arguments in `argv`, including the program.
pub const MAX_ARGS: usize = 4096;
/// Most bytes in all arguments together.
pub const MAX_ARGV_BYTES: usize = 128 * 1024;
/// Most user environment variables.
pub const MAX_ENV_VARS: usize = 256;
/// Most bytes in all user environment variables together (names and values).
pub const MAX_ENV_BYTES: usize = 64 * 1024;
/// Longest owner identity.
pub const MAX_OWNER_LEN: usize = 128;
/// Longest device path.
pub const MAX_DEVICE_PATH_LEN: usize = 128;
/// Environment variables the job may not set: the executor owns them.
pub const RESERVED_ENV: &[&str] = &["JOBWORKER_JOB_ID"];

/// Checks an owner identity: 1 to [`MAX_OWNER_LEN`] bytes, printable, no control
/// characters.
pub fn owner(owner: &str) -> Result<(), WireError> {
    if owner.is_empty() || owner.len() > MAX_OWNER_LEN {
        return Err(WireError::invalid(format!(
            "owner: must be 1 to {MAX_OWNER_LEN} bytes"
        )));
    }
    if owner.chars().any(char::is_control) {
        return Err(WireError::invalid(
            "owner: control characters are not allowed",
        ));
    }
    Ok(())
}

/// Checks a scope's owner, if it names one.
pub fn scope(scope: &Scope) -> Result<(), WireError> {
    match scope {
        Scope::Owner(o) => owner(o),
        Scope::Any => Ok(()),
    }
}

/// Checks a list page size.
pub fn list_limit(limit: u32) -> Result<(), WireError> {
    if limit == 0 || limit > MAX_LIST_PAGE {
        return Err(WireError::invalid(format!(
            "page size: must be 1 to {MAX_LIST_PAGE}"
        )));
    }
    Ok(())
}

/// Checks the shape of a job specification (not the executor's ceilings).
pub fn spec(spec: &JobSpec) -> Result<(), WireError> {
    argv(&spec.argv)?;
    env(&spec.env)?;
    limits(&spec.limits)?;
    workdir(spec.workdir.as_deref())?;
    tty(spec.tty)?;
    if let Some(n) = &spec.name {
        name(n)?;
    }
    labels(&spec.labels)
}

/// Longest job name.
pub const MAX_NAME_LEN: usize = 64;
/// Most labels on a job.
pub const MAX_LABELS: usize = 32;
/// Longest label key, and value.
pub const MAX_LABEL_KEY: usize = 64;
pub const MAX_LABEL_VALUE: usize = 256;
/// Shortest id prefix that names a job.
pub const MIN_ID_PREFIX: usize = 6;

/// A job name: 1 to [`MAX_NAME_LEN`] of ASCII letters, digits, `_`, `.` and `-`,
/// starting with a letter or digit, and not 32 hexadecimal digits (which would read as an
/// id).
pub fn name(n: &str) -> Result<(), WireError> {
    let ok = !n.is_empty()
        && n.len() <= MAX_NAME_LEN
        && n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok {
        return Err(WireError::invalid(format!(
            "name: {:?} is not a job name (1 to {MAX_NAME_LEN} letters, digits, '_', '.' \
             or '-', starting with a letter or digit)",
            crate::job::shorten(n)
        )));
    }
    if n.len() == 32 && n.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(WireError::invalid(
            "name: 32 hexadecimal digits would read as a job id",
        ));
    }
    Ok(())
}

/// Labels: at most [`MAX_LABELS`], keys unique. A key is 1 to [`MAX_LABEL_KEY`] of
/// ASCII letters, digits, `_`, `.`, `/` and `-`, starting with a letter or digit; a value
/// is at most [`MAX_LABEL_VALUE`] bytes of printable text.
pub fn labels(labels: &[Label]) -> Result<(), WireError> {
    if labels.len() > MAX_LABELS {
        return Err(WireError::invalid(format!("labels: at most {MAX_LABELS}")));
    }
    for (i, l) in labels.iter().enumerate() {
        label(l)?;
        if labels[..i].iter().any(|o| o.key == l.key) {
            return Err(WireError::invalid(format!(
                "labels: {:?} is given twice",
                l.key
            )));
        }
    }
    Ok(())
}

fn label(l: &Label) -> Result<(), WireError> {
    let key_ok = !l.key.is_empty()
        && l.key.len() <= MAX_LABEL_KEY
        && l.key.starts_with(|c: char| c.is_ascii_alphanumeric())
        && l.key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'));
    if !key_ok {
        return Err(WireError::invalid(format!(
            "labels: {:?} is not a label key (1 to {MAX_LABEL_KEY} letters, digits, '_', \
             '.', '/' or '-', starting with a letter or digit)",
            crate::job::shorten(&l.key)
        )));
    }
    if l.value.len() > MAX_LABEL_VALUE || l.value.chars().any(char::is_control) {
        return Err(WireError::invalid(format!(
            "labels: the value of {} must be at most {MAX_LABEL_VALUE} bytes without \
             control characters",
            l.key
        )));
    }
    Ok(())
}

/// A list filter: its labels and name have the shapes a start checks, its owner is an
/// identity.
pub fn list_filter(f: &ListFilter) -> Result<(), WireError> {
    if let Some(n) = &f.name {
        name(n)?;
    }
    if let Some(o) = &f.owner {
        owner(o)?;
    }
    if f.states.len() > 16 {
        return Err(WireError::invalid("states: at most 16"));
    }
    labels(&f.labels)
}

/// A reference to a job: a name, or an id prefix of at least [`MIN_ID_PREFIX`]
/// hexadecimal digits.
pub fn reference(r: &str) -> Result<(), WireError> {
    if r.len() >= MIN_ID_PREFIX && r.len() <= 32 && r.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(());
    }
    name(r).map_err(|_| {
        WireError::invalid(format!(
            "job id: {:?} is not a job id (32 hexadecimal digits), an id prefix (at least \
             {MIN_ID_PREFIX} of them) or a job name",
            crate::job::shorten(r)
        ))
    })
}

/// Checks the shape of an exec.
pub fn exec_spec(spec: &ExecSpec) -> Result<(), WireError> {
    argv(&spec.argv)?;
    env(&spec.env)?;
    workdir(spec.workdir.as_deref())?;
    tty(spec.tty)
}

/// Longest working directory.
pub const MAX_WORKDIR_LEN: usize = 4096;
/// Largest terminal, in rows or columns.
pub const MAX_TTY_SIDE: u16 = 10_000;

/// An absolute path without NUL, `.` or `..` components, at most [`MAX_WORKDIR_LEN`].
pub fn workdir(dir: Option<&str>) -> Result<(), WireError> {
    let Some(dir) = dir else {
        return Ok(());
    };
    if !dir.starts_with('/') {
        return Err(WireError::invalid(format!(
            "workdir: {dir:?} is not an absolute path"
        )));
    }
    if dir.len() > MAX_WORKDIR_LEN || dir.contains('\0') {
        return Err(WireError::invalid(format!(
            "workdir: at most {MAX_WORKDIR_LEN} bytes, without NUL"
        )));
    }
    if dir.split('/').any(|c| c == "." || c == "..") {
        return Err(WireError::invalid(format!(
            "workdir: {dir:?} has . or .. components"
        )));
    }
    Ok(())
}

/// A terminal of 1 to [`MAX_TTY_SIDE`] rows and columns.
pub fn tty(size: Option<TtySize>) -> Result<(), WireError> {
    match size {
        Some(s) if s.rows == 0 || s.cols == 0 || s.rows > MAX_TTY_SIDE || s.cols > MAX_TTY_SIDE => {
            Err(WireError::invalid(format!(
                "terminal size: rows and columns must be 1 to {MAX_TTY_SIDE}"
            )))
        }
        _ => Ok(()),
    }
}

fn argv(argv: &[String]) -> Result<(), WireError> {
    if argv.is_empty() || argv[0].is_empty() {
        return Err(WireError::invalid("argv: a command is required"));
    }
    if argv.len() > MAX_ARGS {
        return Err(WireError::invalid(format!(
            "argv: at most {MAX_ARGS} arguments"
        )));
    }
    let total: usize = argv.iter().map(|a| a.len() + 1).sum();
    if total > MAX_ARGV_BYTES {
        return Err(WireError::invalid(format!(
            "argv: at most {MAX_ARGV_BYTES} bytes in all"
        )));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(WireError::invalid("argv: NUL bytes are not allowed"));
    }
    Ok(())
}

fn env(env: &[crate::job::EnvVar]) -> Result<(), WireError> {
    if env.len() > MAX_ENV_VARS {
        return Err(WireError::invalid(format!(
            "env: at most {MAX_ENV_VARS} variables"
        )));
    }
    let total: usize = env.iter().map(|v| v.name.len() + v.value.len() + 2).sum();
    if total > MAX_ENV_BYTES {
        return Err(WireError::invalid(format!(
            "env: at most {MAX_ENV_BYTES} bytes in all"
        )));
    }
    for (i, var) in env.iter().enumerate() {
        if !env_name_ok(&var.name) {
            return Err(WireError::invalid(format!(
                "env: {:?} is not a valid name (letters, digits and '_', not starting with a digit)",
                var.name
            )));
        }
        if RESERVED_ENV.contains(&var.name.as_str()) {
            return Err(WireError::invalid(format!(
                "env: {} is set by the executor",
                var.name
            )));
        }
        if var.value.contains('\0') {
            return Err(WireError::invalid(format!(
                "env: the value of {} contains a NUL byte",
                var.name
            )));
        }
        if env[..i].iter().any(|v| v.name == var.name) {
            return Err(WireError::invalid(format!(
                "env: {} is given twice",
                var.name
            )));
        }
    }
    Ok(())
}

/// A portable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, at most 256 bytes.
pub fn env_name_ok(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && !b[0].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Checks that each limit that is set is positive and the IO device path is plausible.
pub fn limits(limits: &Limits) -> Result<(), WireError> {
    if limits.cpu_millis == Some(0) {
        return Err(WireError::invalid("cpu: must be greater than zero"));
    }
    if limits.memory_bytes == Some(0) {
        return Err(WireError::invalid("memory: must be greater than zero"));
    }
    if limits.pids == Some(0) {
        return Err(WireError::invalid("pids: must be greater than zero"));
    }
    if limits.tmp_bytes == Some(0) {
        return Err(WireError::invalid("tmp size: must be greater than zero"));
    }
    if limits.timeout_ms == Some(0) {
        return Err(WireError::invalid("timeout: must be greater than zero"));
    }
    if let Some(io) = &limits.io {
        io_limits(io)?;
    }
    Ok(())
}

fn io_limits(io: &IoLimits) -> Result<(), WireError> {
    device_path(&io.device)?;
    let rates = [
        ("io read bps", io.read_bps),
        ("io write bps", io.write_bps),
        ("io read iops", io.read_iops),
        ("io write iops", io.write_iops),
    ];
    if rates.iter().all(|(_, r)| r.is_none()) {
        return Err(WireError::invalid(
            "io: a device needs at least one of read/write bps/iops",
        ));
    }
    for (name, rate) in rates {
        if rate == Some(0) {
            return Err(WireError::invalid(format!(
                "{name}: must be greater than zero"
            )));
        }
    }
    Ok(())
}

/// A device path: `/dev/` followed by non-empty components of `[A-Za-z0-9._-]`, none of
/// them `.` or `..`.
pub fn device_path(path: &str) -> Result<(), WireError> {
    let bad = || {
        WireError::invalid(format!(
            "io device: {path:?} is not a device path under /dev/"
        ))
    };
    if path.len() > MAX_DEVICE_PATH_LEN {
        return Err(bad());
    }
    let rest = path.strip_prefix("/dev/").ok_or_else(bad)?;
    for part in rest.split('/') {
        if part.is_empty()
            || part == "."
            || part == ".."
            || !part
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        {
            return Err(bad());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::job::EnvVar;

    #[test]
    fn names_labels_and_references_have_shapes() {
        for ok in ["build", "nightly-2026.12.05", "a", "A_b"] {
            assert!(name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            ".x",
            "a b",
            "é",
            &"x".repeat(65),
            "0123456789abcdef0123456789abcdef",
        ] {
            assert!(name(bad).is_err(), "{bad}");
        }
        let l = |k: &str, v: &str| Label {
            key: k.into(),
            value: v.into(),
        };
        assert!(labels(&[l("team", "infra"), l("app.kubernetes.io/name", "x")]).is_ok());
        assert!(labels(&[l("team", "a"), l("team", "b")]).is_err());
        assert!(labels(&[l("", "a")]).is_err());
        assert!(labels(&[l("k", "a\nb")]).is_err());
        assert!(labels(&[l("k", &"v".repeat(257))]).is_err());
        let many: Vec<Label> = (0..33).map(|i| l(&format!("k{i}"), "v")).collect();
        assert!(labels(&many).is_err());
        assert!(reference("0123ab").is_ok());
        assert!(reference("build").is_ok());
        assert!(reference("0123a").is_ok(), "a name may be 5 hex digits");
        assert!(reference("../x").is_err());
    }

    fn spec_with(argv: &[&str]) -> JobSpec {
        JobSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn message(r: Result<(), WireError>) -> String {
        let e = r.expect_err("should be rejected");
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        e.message
    }

    #[test]
    fn accepts_a_plain_command() {
        spec(&spec_with(&["echo", "hello"])).unwrap();
    }

    #[test]
    fn rejects_empty_argv_and_empty_program() {
        assert!(message(spec(&spec_with(&[]))).starts_with("argv:"));
        assert!(message(spec(&spec_with(&[""]))).starts_with("argv:"));
    }

    #[test]
    fn rejects_oversized_argv() {
        let many: Vec<&str> = vec!["x"; MAX_ARGS + 1];
        assert!(message(spec(&spec_with(&many))).contains("at most 4096 arguments"));
        let big = "x".repeat(MAX_ARGV_BYTES);
        assert!(message(spec(&spec_with(&[&big]))).contains("bytes in all"));
    }

    #[test]
    fn rejects_nul_in_argv() {
        assert!(message(spec(&spec_with(&["a\0b"]))).contains("NUL"));
    }

    #[test]
    fn checks_environment_names_and_values() {
        let mut s = spec_with(&["env"]);
        s.env = vec![EnvVar {
            name: "GOOD_NAME1".into(),
            value: "any value = fine".into(),
        }];
        spec(&s).unwrap();
        for bad in ["", "1ABC", "A-B", "A=B", "Ä"] {
            s.env = vec![EnvVar {
                name: bad.into(),
                value: String::new(),
            }];
            assert!(message(spec(&s)).contains("not a valid name"), "{bad:?}");
        }
        s.env = vec![EnvVar {
            name: "JOBWORKER_JOB_ID".into(),
            value: "x".into(),
        }];
        assert!(message(spec(&s)).contains("set by the executor"));
        s.env = vec![
            EnvVar {
                name: "A".into(),
                value: "1".into(),
            },
            EnvVar {
                name: "A".into(),
                value: "2".into(),
            },
        ];
        assert!(message(spec(&s)).contains("given twice"));
    }

    #[test]
    fn rejects_zero_limits_naming_them() {
        let mut s = spec_with(&["true"]);
        s.limits.cpu_millis = Some(0);
        assert!(message(spec(&s)).starts_with("cpu:"));
        s.limits = Limits {
            memory_bytes: Some(0),
            ..Default::default()
        };
        assert!(message(spec(&s)).starts_with("memory:"));
        s.limits = Limits {
            pids: Some(0),
            ..Default::default()
        };
        assert!(message(spec(&s)).starts_with("pids:"));
    }

    #[test]
    fn io_limits_need_a_device_under_dev_and_a_rate() {
        let io = |device: &str, read_bps| IoLimits {
            device: device.into(),
            read_bps,
            ..Default::default()
        };
        io_limits(&io("/dev/vda", Some(1))).unwrap();
        io_limits(&io("/dev/mapper/vg-root", Some(1))).unwrap();
        for bad in [
            "vda",
            "/dev/",
            "/dev/../etc/shadow",
            "/dev/./vda",
            "/dev//vda",
            "/sys/block/vda",
            "/dev/vda/",
            "/dev/v da",
        ] {
            assert!(
                message(io_limits(&io(bad, Some(1)))).contains("not a device path"),
                "{bad:?}"
            );
        }
        assert!(message(io_limits(&io("/dev/vda", None))).contains("at least one"));
        assert!(message(io_limits(&io("/dev/vda", Some(0)))).starts_with("io read bps"));
    }

    #[test]
    fn owner_and_page_bounds() {
        owner("alice").unwrap();
        assert!(owner("").is_err());
        assert!(owner(&"a".repeat(MAX_OWNER_LEN + 1)).is_err());
        assert!(owner("al\nice").is_err());
        list_limit(1).unwrap();
        list_limit(MAX_LIST_PAGE).unwrap();
        assert!(list_limit(0).is_err());
        assert!(list_limit(MAX_LIST_PAGE + 1).is_err());
    }
}
