//! The workspace's binaries: where they are, and copies anyone can run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::scratch::{Scratch, base, chmod};

/// The variable that names binary `name` instead of the build directory:
/// `JOBWORKER_<NAME>_BIN` with the `jobworker-` prefix dropped and `-` as `_`
/// (`JOBWORKER_EXECUTOR_BIN`, `JOBWORKER_API_BIN`, `JOBWORKER_PROBE_BIN`,
/// `JOBWORKER_JOBCTL_BIN`, `JOBWORKER_DEV_CERTS_BIN`). The VM tests set them: paths
/// baked in at compile time do not exist in the guest.
pub fn env_var(name: &str) -> String {
    let short = name.strip_prefix("jobworker-").unwrap_or(name);
    format!(
        "JOBWORKER_{}_BIN",
        short.to_ascii_uppercase().replace('-', "_")
    )
}

/// Binary `name` of the workspace: the one [`env_var`] names, else the one in the build
/// directory of the running test or benchmark (`target/<profile>/deps/this` →
/// `target/<profile>/NAME`, also under `target/<triple>/`). Cargo builds a package's
/// binaries for its own integration tests; `make test` and `make bench` build the whole
/// workspace first, which the suites that run another package's binaries need.
pub fn path(name: &str) -> PathBuf {
    let var = env_var(name);
    if let Some(path) = std::env::var_os(&var) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the build directory");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`, `--release` \
         for the benchmark; make test and make bench do), or set {var}",
        path.display()
    );
    path
}

/// A copy of binary `name` that any user can run (the job user runs the probe, `nobody`
/// runs the API server; the build directory may be out of their reach), made once per
/// test process in a directory `bins-PID-*` of the scratch area.
///
/// The copy is written by `cp`, a process of its own: a binary this process had open for
/// writing could not be executed while a child forked by another test thread still held
/// that descriptor (`ETXTBSY`).
///
/// A static is never dropped, so the directory outlives the test process; each process
/// first removes those of processes that have exited.
pub fn installed(name: &str) -> PathBuf {
    static DIR: OnceLock<Scratch> = OnceLock::new();
    static COPIES: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let dir = DIR.get_or_init(|| {
        let base = base();
        remove_copies_of_exited_processes(&base);
        let dir = Scratch::new_in(&base, &format!("bins-{}", std::process::id()));
        dir.keep();
        dir
    });
    let mut copies = COPIES.lock().unwrap_or_else(|e| e.into_inner());
    let copies = copies.get_or_insert_with(HashMap::new);
    if let Some(path) = copies.get(name) {
        return path.clone();
    }
    let src = path(name);
    let dst = dir.join(name);
    let st = Command::new("cp")
        .arg(&src)
        .arg(&dst)
        .status()
        .expect("running cp");
    assert!(st.success(), "cp {} {}: {st}", src.display(), dst.display());
    chmod(&dst, 0o755);
    copies.insert(name.to_owned(), dst.clone());
    dst
}

/// Removes `bins-PID-*` directories under `base` whose process has exited.
fn remove_copies_of_exited_processes(base: &Path) {
    for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("bins-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The probe (`jobworker-probe`, this kit's binary that the root tests run *as a job*),
/// as a copy the job user can run; see [`installed`].
pub fn probe() -> String {
    installed("jobworker-probe").to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::env_var;

    #[test]
    fn each_binary_has_its_variable() {
        assert_eq!(env_var("jobworker-executor"), "JOBWORKER_EXECUTOR_BIN");
        assert_eq!(env_var("jobworker-api"), "JOBWORKER_API_BIN");
        assert_eq!(env_var("jobworker-probe"), "JOBWORKER_PROBE_BIN");
        assert_eq!(env_var("jobworker-dev-certs"), "JOBWORKER_DEV_CERTS_BIN");
        assert_eq!(env_var("jobctl"), "JOBWORKER_JOBCTL_BIN");
    }
}
