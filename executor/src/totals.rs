//! Totals for all jobs together: memory, pids and CPU on the group that holds every job
//! (cgroup v2: the parent's `jobs/`; v1: the parent in each hierarchy), so that the
//! per-job ceilings times the running-jobs cap can never take the host.
//!
//! Unset totals default to a share of the host: 80 % of its memory, half of
//! `kernel.pid_max`, and 90 % of its CPUs. A configured total above what the host has is
//! refused, so the executor does not start.

use std::path::Path;

use serde::Deserialize;

use crate::config::ConfigError;

/// What the administrator configured (flags over the file); `None`: the default share.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TotalsConfig {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub cpu_millis: Option<u64>,
}

/// What the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    pub memory_bytes: u64,
    pub pid_max: u64,
    pub cpus: u64,
}

/// The totals in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub memory_bytes: u64,
    pub pids: u64,
    pub cpu_millis: u64,
}

impl Host {
    /// The running host: `MemTotal` of `/proc/meminfo`, `kernel.pid_max`, and the CPUs
    /// this process may run on.
    pub fn read() -> std::io::Result<Host> {
        Host::read_from(Path::new("/proc"))
    }

    fn read_from(proc: &Path) -> std::io::Result<Host> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let meminfo = std::fs::read_to_string(proc.join("meminfo"))?;
        let kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| bad("no MemTotal in /proc/meminfo"))?;
        let pid_max = std::fs::read_to_string(proc.join("sys/kernel/pid_max"))?
            .trim()
            .parse()
            .map_err(|_| bad("kernel.pid_max is not a number"))?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        Ok(Host {
            memory_bytes: kib * 1024,
            pid_max,
            cpus,
        })
    }
}

impl TotalsConfig {
    /// The totals for `host`: each configured one checked against what the host has,
    /// each unset one its default share.
    pub fn resolve(&self, host: &Host) -> Result<Totals, ConfigError> {
        let check = |key: &'static str, value: Option<u64>, has: u64, default: u64| match value {
            Some(0) => Err(ConfigError::Invalid {
                key,
                message: "must be greater than zero".into(),
            }),
            Some(v) if v > has => Err(ConfigError::Invalid {
                key,
                message: format!("{v} is above what this host has ({has})"),
            }),
            Some(v) => Ok(v),
            None => Ok(default.max(1)),
        };
        let cpu_millis = host.cpus * 1000;
        Ok(Totals {
            memory_bytes: check(
                "totals.memory_bytes",
                self.memory_bytes,
                host.memory_bytes,
                host.memory_bytes / 5 * 4,
            )?,
            pids: check("totals.pids", self.pids, host.pid_max, host.pid_max / 2)?,
            cpu_millis: check(
                "totals.cpu_millis",
                self.cpu_millis,
                cpu_millis,
                cpu_millis / 10 * 9,
            )?,
        })
    }
}

impl Totals {
    /// Lowers each ceiling above its total to the total: no single job may ask for more
    /// than all jobs together (on cgroup v1 the kernel would refuse such a CPU quota
    /// under the parent's). Returns the keys it lowered, to be logged.
    pub fn clamp(&self, c: &mut crate::config::Ceilings) -> Vec<String> {
        let mut lowered = Vec::new();
        if u64::from(c.cpu_millis) > self.cpu_millis {
            lowered.push(format!(
                "ceilings.cpu_millis {} -> {} (totals.cpu_millis)",
                c.cpu_millis, self.cpu_millis
            ));
            c.cpu_millis = self.cpu_millis as u32;
        }
        if c.memory_bytes > self.memory_bytes {
            lowered.push(format!(
                "ceilings.memory_bytes {} -> {} (totals.memory_bytes)",
                c.memory_bytes, self.memory_bytes
            ));
            c.memory_bytes = self.memory_bytes;
        }
        if u64::from(c.pids) > self.pids {
            lowered.push(format!(
                "ceilings.pids {} -> {} (totals.pids)",
                c.pids, self.pids
            ));
            c.pids = self.pids as u32;
        }
        lowered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Host = Host {
        memory_bytes: 24 << 30,
        pid_max: 32_768,
        cpus: 2,
    };

    #[test]
    fn unset_totals_are_a_share_of_the_host() {
        let t = TotalsConfig::default().resolve(&HOST).unwrap();
        assert_eq!(
            t,
            Totals {
                memory_bytes: (24 << 30) / 5 * 4,
                pids: 16_384,
                cpu_millis: 1800,
            }
        );
    }

    #[test]
    fn a_total_above_the_host_is_refused_naming_it() {
        let cases = [
            (
                TotalsConfig {
                    memory_bytes: Some(25 << 30),
                    ..Default::default()
                },
                "totals.memory_bytes: 26843545600 is above what this host has (25769803776)",
            ),
            (
                TotalsConfig {
                    pids: Some(40_000),
                    ..Default::default()
                },
                "totals.pids: 40000 is above what this host has (32768)",
            ),
            (
                TotalsConfig {
                    cpu_millis: Some(2001),
                    ..Default::default()
                },
                "totals.cpu_millis: 2001 is above what this host has (2000)",
            ),
            (
                TotalsConfig {
                    pids: Some(0),
                    ..Default::default()
                },
                "totals.pids: must be greater than zero",
            ),
        ];
        for (cfg, want) in cases {
            assert_eq!(cfg.resolve(&HOST).unwrap_err().to_string(), want);
        }
        let all = TotalsConfig {
            memory_bytes: Some(1 << 30),
            pids: Some(32_768),
            cpu_millis: Some(2000),
        };
        assert_eq!(
            all.resolve(&HOST).unwrap(),
            Totals {
                memory_bytes: 1 << 30,
                pids: 32_768,
                cpu_millis: 2000
            }
        );
    }

    #[test]
    fn a_ceiling_above_its_total_comes_down_to_it() {
        let t = TotalsConfig::default().resolve(&HOST).unwrap();
        let mut c = crate::config::Ceilings {
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            pids: 1024,
            io_bps: None,
            io_iops: None,
            tmp_bytes: 1 << 30,
            timeout: std::time::Duration::from_secs(60),
        };
        let lowered = t.clamp(&mut c);
        assert_eq!(
            lowered,
            ["ceilings.cpu_millis 2000 -> 1800 (totals.cpu_millis)"]
        );
        assert_eq!(
            (c.cpu_millis, c.memory_bytes, c.pids),
            (1800, 1 << 30, 1024)
        );
    }

    #[test]
    fn the_host_is_read_from_proc() {
        let h = Host::read().unwrap();
        assert!(
            h.memory_bytes > 0 && h.pid_max >= 301 && h.cpus >= 1,
            "{h:?}"
        );
    }
}
