//! Bounds every request must respect.
//!
//! The API server checks them at the network edge to answer bad input early; the
//! executor checks them again because it trusts no byte from its socket. Ceilings from
//! the executor's own configuration are checked on top of these, in the executor.

use crate::error::WireError;
use crate::job::{ExecSpec, IoLimits, JobSpec, Limits, Scope, TtySize};
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
    tty(spec.tty)
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
