//! Limit resolution: a start request's limits against the executor's ceilings. Pure, so
//! it is unit-tested and fuzzed as is.

use jobworker_protocol::{IoLimits, JobSpec, Limits, WireError, validate};

use std::time::Duration;

use crate::cgroup::{ResolvedIo, ResolvedLimits};
use crate::config::{Ceilings, Defaults};

/// A start request that passed every check. [`check_start`] is the only place that makes
/// one, so the engine's `start` cannot be handed an unchecked request.
#[derive(Debug)]
#[non_exhaustive]
pub struct CheckedStart {
    pub owner: String,
    pub spec: JobSpec,
    /// The limits the job's cgroup gets.
    pub resolved: ResolvedLimits,
    /// Size of each of the job's private tmpfs.
    pub tmp_bytes: u64,
    /// Time until the job's deadline.
    pub timeout: Duration,
    /// All of the above as the job's status reports them.
    pub effective: Limits,
}

/// The checks a start request passes before anything is created: the owner, the shape
/// of the spec, and its limits against the ceilings (a missing tmp size or deadline
/// takes its default).
pub fn check_start(
    owner: String,
    spec: JobSpec,
    ceilings: &Ceilings,
    defaults: &Defaults,
) -> Result<CheckedStart, WireError> {
    validate::owner(&owner)?;
    validate::spec(&spec)?;
    let (resolved, mut effective) = resolve_limits(&spec.limits, ceilings)?;
    let tmp_bytes = spec.limits.tmp_bytes.unwrap_or(defaults.tmp_bytes);
    if tmp_bytes > ceilings.tmp_bytes {
        return Err(WireError::invalid(format!(
            "tmp size: {tmp_bytes} bytes is above this executor's ceiling of {} bytes",
            ceilings.tmp_bytes
        )));
    }
    let timeout = spec
        .limits
        .timeout_ms
        .map_or(defaults.timeout, Duration::from_millis);
    if timeout > ceilings.timeout {
        return Err(WireError::invalid(format!(
            "timeout: {} is above this executor's maximum of {}",
            human_duration(timeout),
            human_duration(ceilings.timeout)
        )));
    }
    effective.tmp_bytes = Some(tmp_bytes);
    effective.timeout_ms = Some(timeout.as_millis() as u64);
    Ok(CheckedStart {
        owner,
        spec,
        resolved,
        tmp_bytes,
        timeout,
        effective,
    })
}

/// `1d2h`, `90s`, `1500ms`: the largest units that say it exactly.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut s = ms / 1000;
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
        }
    }
    if out.is_empty() { "0s".into() } else { out }
}

/// Merges the request's limits with the ceilings: a missing limit gets the ceiling, a
/// limit above it is refused, naming it. Returns the limits for the cgroup backend and
/// the same limits as the job's status reports them.
pub fn resolve_limits(req: &Limits, c: &Ceilings) -> Result<(ResolvedLimits, Limits), WireError> {
    let cpu_millis = pick("cpu", " millicores", req.cpu_millis, c.cpu_millis)?;
    let memory_bytes = pick("memory", " bytes", req.memory_bytes, c.memory_bytes)?;
    let pids = pick("pids", "", req.pids, c.pids)?;
    let io = match &req.io {
        None => None,
        Some(io) => {
            let rate = |name: &str, v: Option<u64>, ceiling: Option<u64>| match ceiling {
                Some(cap) => v.map(|v| pick(name, "", Some(v), cap)).transpose(),
                None => Ok(v),
            };
            Some(ResolvedIo {
                device: io.device.clone(),
                read_bps: rate("io read bps", io.read_bps, c.io_bps)?,
                write_bps: rate("io write bps", io.write_bps, c.io_bps)?,
                read_iops: rate("io read iops", io.read_iops, c.io_iops)?,
                write_iops: rate("io write iops", io.write_iops, c.io_iops)?,
            })
        }
    };
    let effective = Limits {
        cpu_millis: Some(cpu_millis),
        memory_bytes: Some(memory_bytes),
        pids: Some(pids),
        io: io.as_ref().map(|io| IoLimits {
            device: io.device.clone(),
            read_bps: io.read_bps,
            write_bps: io.write_bps,
            read_iops: io.read_iops,
            write_iops: io.write_iops,
        }),
        tmp_bytes: None,
        timeout_ms: None,
    };
    let resolved = ResolvedLimits {
        cpu_millis,
        memory_bytes,
        pids,
        io,
    };
    Ok((resolved, effective))
}

/// The asked value if it is within the ceiling, the ceiling if none was asked.
fn pick<T: PartialOrd + Copy + std::fmt::Display>(
    name: &str,
    unit: &str,
    asked: Option<T>,
    ceiling: T,
) -> Result<T, WireError> {
    match asked {
        Some(v) if v > ceiling => Err(WireError::invalid(format!(
            "{name}: {v}{unit} is above this executor's ceiling of {ceiling}{unit}"
        ))),
        Some(v) => Ok(v),
        None => Ok(ceiling),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobworker_protocol::ErrorKind;

    fn ceilings() -> Ceilings {
        Ceilings {
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            pids: 100,
            io_bps: Some(100 << 20),
            io_iops: None,
            tmp_bytes: 1 << 30,
            timeout: Duration::from_secs(7 * 86_400),
        }
    }

    fn defaults() -> Defaults {
        Defaults {
            tmp_bytes: 64 << 20,
            timeout: Duration::from_secs(86_400),
        }
    }

    fn spec(limits: Limits) -> JobSpec {
        JobSpec {
            argv: vec!["true".into()],
            env: vec![],
            limits,
            ..Default::default()
        }
    }

    #[test]
    fn tmp_size_and_deadline_default_and_are_held_to_their_ceilings() {
        let c = check_start(
            "alice".into(),
            spec(Limits::default()),
            &ceilings(),
            &defaults(),
        )
        .unwrap();
        assert_eq!(
            (c.tmp_bytes, c.timeout),
            (64 << 20, Duration::from_secs(86_400))
        );
        assert_eq!(c.effective.tmp_bytes, Some(64 << 20));
        assert_eq!(c.effective.timeout_ms, Some(86_400_000));
        let asked = Limits {
            tmp_bytes: Some(1 << 30),
            timeout_ms: Some(1000),
            ..Default::default()
        };
        let c = check_start("alice".into(), spec(asked), &ceilings(), &defaults()).unwrap();
        assert_eq!((c.tmp_bytes, c.timeout), (1 << 30, Duration::from_secs(1)));
        let too_big = Limits {
            tmp_bytes: Some((1 << 30) + 1),
            ..Default::default()
        };
        let e = check_start("alice".into(), spec(too_big), &ceilings(), &defaults()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert_eq!(
            e.message,
            "tmp size: 1073741825 bytes is above this executor's ceiling of 1073741824 bytes"
        );
        let too_long = Limits {
            timeout_ms: Some(8 * 86_400_000 + 1500),
            ..Default::default()
        };
        let e = check_start("alice".into(), spec(too_long), &ceilings(), &defaults()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert_eq!(
            e.message,
            "timeout: 691201500ms is above this executor's maximum of 7d"
        );
        let zero = Limits {
            timeout_ms: Some(0),
            ..Default::default()
        };
        let e = check_start("alice".into(), spec(zero), &ceilings(), &defaults()).unwrap_err();
        assert_eq!(e.message, "timeout: must be greater than zero");
    }

    #[test]
    fn durations_read_as_people_write_them() {
        for (ms, text) in [
            (0, "0s"),
            (1500, "1500ms"),
            (90_000, "1m30s"),
            (93_784_000, "1d2h3m4s"),
            (604_800_000, "7d"),
        ] {
            assert_eq!(human_duration(Duration::from_millis(ms)), text);
        }
    }

    #[test]
    fn missing_limits_get_the_ceiling() {
        let (r, eff) = resolve_limits(&Limits::default(), &ceilings()).unwrap();
        assert_eq!((r.cpu_millis, r.memory_bytes, r.pids), (2000, 1 << 30, 100));
        assert!(r.io.is_none());
        assert_eq!(eff.cpu_millis, Some(2000));
        assert_eq!(eff.memory_bytes, Some(1 << 30));
    }

    #[test]
    fn limits_above_a_ceiling_are_refused_naming_the_limit() {
        let cases = [
            (
                Limits {
                    cpu_millis: Some(2001),
                    ..Default::default()
                },
                "cpu: 2001 millicores is above this executor's ceiling of 2000 millicores",
            ),
            (
                Limits {
                    memory_bytes: Some((1 << 30) + 1),
                    ..Default::default()
                },
                "memory: 1073741825 bytes is above this executor's ceiling of 1073741824 bytes",
            ),
            (
                Limits {
                    pids: Some(101),
                    ..Default::default()
                },
                "pids: 101 is above this executor's ceiling of 100",
            ),
            (
                Limits {
                    io: Some(IoLimits {
                        device: "/dev/vda".into(),
                        write_bps: Some((100 << 20) + 1),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "io write bps: 104857601 is above this executor's ceiling of 104857600",
            ),
        ];
        for (limits, msg) in cases {
            let e = resolve_limits(&limits, &ceilings()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument);
            assert_eq!(e.message, msg);
        }
    }

    #[test]
    fn io_rates_without_a_ceiling_pass_through() {
        let limits = Limits {
            io: Some(IoLimits {
                device: "/dev/vda".into(),
                read_iops: Some(1_000_000),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (r, _) = resolve_limits(&limits, &ceilings()).unwrap();
        assert_eq!(r.io.unwrap().read_iops, Some(1_000_000));
    }
}
