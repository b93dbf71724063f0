//! The server never runs as root: started with any of its user ids equal to 0 it
//! refuses to start. Deployments give it its own unprivileged user; the executor is the
//! only privileged process.

/// Reads the process's user ids from `/proc/self/status` and refuses uid 0.
pub fn refuse_root() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status to check the user id: {e}"))?;
    check_not_root(&status)
}

/// The check itself, on the text of `/proc/self/status`: the real, effective, saved
/// and filesystem user ids must all be non-zero.
pub fn check_not_root(status: &str) -> Result<(), String> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .ok_or_else(|| "no Uid line in /proc/self/status".to_string())?;
    let ids: Vec<u32> = line
        .split_whitespace()
        .map(|v| v.parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("unreadable Uid line in /proc/self/status: {line:?}"))?;
    if ids.is_empty() {
        return Err("empty Uid line in /proc/self/status".into());
    }
    if ids.contains(&0) {
        return Err(
            "refusing to run as root (uid 0): jobworker-api must run as an \
             unprivileged user; start it as a dedicated user (e.g. with User= in its \
             systemd unit) and allow that user's uid in the executor's configuration"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_in_any_uid_field_is_refused() {
        let ok = "Name:\tx\nUid:\t1000\t1000\t1000\t1000\nGid:\t0\t0\t0\t0\n";
        check_not_root(ok).unwrap();
        for uids in ["0\t0\t0\t0", "1000\t0\t1000\t1000", "1000\t1000\t0\t1000"] {
            let status = format!("Name:\tx\nUid:\t{uids}\n");
            let e = check_not_root(&status).unwrap_err();
            assert!(e.starts_with("refusing to run as root"), "{e}");
        }
        assert!(check_not_root("Name:\tx\n").is_err());
        assert!(check_not_root("Uid:\tabc\n").is_err());
    }
}
