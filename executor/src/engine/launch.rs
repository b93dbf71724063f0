//! Creating what a new job runs in (its directory, output file and cgroup) and cloning
//! its init with the spec it needs.

use std::io;

use jobworker_protocol::{ErrorKind, JobId, WireError};

use super::{CheckedStart, Engine};
use crate::cgroup::JobGroup;
use crate::config::Config;
use crate::ipc::spec::InitSpec;
use crate::output::OutputWriter;
use crate::spawn::{CgroupJoin, Spawned, SpecHandover};
use crate::sys;

/// Fixed part of every job's environment; user variables may override all but the id.
const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Engine {
    /// Creates the job's directory, output file and cgroup, then clones its init, which
    /// waits for its spec (the handover). On an error, what was created is removed again
    /// (the caller removes the directory).
    pub(super) fn launch(
        &self,
        id: &JobId,
        req: &CheckedStart,
        uid: u32,
    ) -> Result<(Spawned, JobGroup, OutputWriter, SpecHandover), WireError> {
        let internal = |what: &str, e: io::Error| {
            tracing::error!(job = %id, "{what}: {e}");
            if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                // Every running job holds descriptors: the limit, not a fault, ended it.
                return WireError::exhausted(
                    "the executor has no open file left for another job (its open-file \
                     limit is below what max_running_jobs needs)",
                );
            }
            WireError::internal(format!("{what} failed"))
        };
        self.store
            .create_job(id)
            .map_err(|e| internal("creating the job directory", e))?;
        let writer = OutputWriter::create(&self.store.job_dir(id), self.cfg.max_output_bytes)
            .map_err(|e| internal("creating the output files", e))?;
        let group = self.cgroups.create(id, &req.resolved).map_err(|e| {
            tracing::warn!(job = %id, "creating the job's cgroup: {e}");
            WireError::new(ErrorKind::FailedToStart, format!("job {id}: {e}"))
        })?;
        let init = init_spec(&self.cfg, id, req, uid, &group);
        let join = match group.clone_into_fd() {
            Some(fd) => CgroupJoin::CloneInto(fd),
            None => CgroupJoin::InitJoins,
        };
        // The spawner blocks for the init template's answer (about a millisecond; up to
        // its timeout if the template hangs): this worker's other tasks move on meanwhile.
        let spawned =
            tokio::task::block_in_place(|| self.spawner.spawn(&init, join, req.spec.stdin));
        match spawned {
            Ok((s, handover)) => Ok((s, group, writer, handover)),
            Err(e) => {
                if let Err(e) = self.cgroups.remove(&group) {
                    tracing::error!(job = %id, "removing the cgroup of a job that did not start: {e}");
                }
                Err(internal("cloning the job init", e))
            }
        }
    }
}

/// What the job's init is told: the command, its environment, the job's own ids, its
/// file-system view, and how to set up its namespaces and cgroup.
fn init_spec(cfg: &Config, id: &JobId, req: &CheckedStart, uid: u32, group: &JobGroup) -> InitSpec {
    let v1 = !group.join_files().is_empty();
    let name = format!("job-{}", id.short());
    InitSpec {
        argv: req.spec.argv.clone(),
        env: environment(id, &name, &req.spec.env),
        uid,
        gid: uid,
        user_name: name.clone(),
        hostname: name,
        tmp_size_bytes: req.tmp_bytes,
        binds: cfg.binds.clone(),
        cgroup_join: group.join_files().to_vec(),
        unshare_cgroupns: v1,
        mount_cgroup2: group.clone_into_fd().is_some(),
        cwd: req.spec.workdir.clone().unwrap_or_else(|| "/tmp".into()),
        tty: req.spec.tty.map(|t| (t.rows, t.cols)),
        nofile: sys::job_nofile_limit(),
    }
}

/// The command's environment: a fixed base, the request's variables (which may replace
/// any of the base), and the job's id last, which nothing replaces.
pub(super) fn environment(
    id: &JobId,
    user: &str,
    vars: &[jobworker_protocol::EnvVar],
) -> Vec<String> {
    let mut env = vec![
        format!("PATH={BASE_PATH}"),
        "HOME=/tmp".to_string(),
        format!("USER={user}"),
        format!("LOGNAME={user}"),
    ];
    for var in vars {
        let prefix = format!("{}=", var.name);
        env.retain(|e| !e.starts_with(&prefix));
        env.push(format!("{}={}", var.name, var.value));
    }
    env.push(format!("JOBWORKER_JOB_ID={id}"));
    env
}
