//! The job's seccomp filter: a deny-list of dangerous system calls, as data.
//!
//! Jobs run arbitrary programs, so the filter allows everything except the calls in
//! [`DENIED`] (each with the reason it is denied), `clone` with a namespace flag, and a
//! restricted `personality`; those fail with `EPERM`, as they would for an unprivileged
//! process on a hardened kernel, so programs see an ordinary permission error. `clone3`
//! fails with `ENOSYS`: its flags live in memory the filter cannot read, and the C
//! library falls back to `clone`, whose flags the filter checks.
//!
//! The program is built with `seccompiler`, behind a small hand-written prefix (see
//! [`prefix`]) that kills a process calling through another architecture's table and
//! denies the x32 ABI, which `seccompiler` does not handle.
//!
//! [`apply`] installs it on the calling thread (and all its future children); it also
//! sets `no_new_privs`, which the kernel requires of an unprivileged caller.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

/// One denied system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    pub name: &'static str,
    pub nr: i64,
    pub reason: &'static str,
}

const fn deny(name: &'static str, nr: libc::c_long, reason: &'static str) -> Denied {
    Denied { name, nr, reason }
}

/// `open_tree_attr(2)` (Linux 6.15), not yet in the `libc` crate; new system calls share
/// one number on every architecture.
const SYS_OPEN_TREE_ATTR: libc::c_long = 467;

const MOUNT_API: &str = "part of the new mount API: the same power as mount";
const CLOCK: &str = "sets the host's clock (also needs CAP_SYS_TIME)";
const KEYRING: &str = "kernel keyrings are not namespaced and are a large attack surface";
const QUOTA: &str = "manages the host's filesystem quotas";

/// The system calls a job may not make, denied with `EPERM`. Most of them also need a
/// capability the job does not have; the filter is the second, independent line.
#[rustfmt::skip]
pub const DENIED: &[Denied] = &[
    deny(
        "mount",
        libc::SYS_mount,
        "attaches filesystems: the job's mounts are the executor's to set",
    ),
    deny(
        "umount2",
        libc::SYS_umount2,
        "detaches filesystems, which could uncover what the job's mounts hide",
    ),
    deny("move_mount", libc::SYS_move_mount, MOUNT_API),
    deny("open_tree", libc::SYS_open_tree, MOUNT_API),
    deny("open_tree_attr", SYS_OPEN_TREE_ATTR, MOUNT_API),
    deny("fsopen", libc::SYS_fsopen, MOUNT_API),
    deny("fsconfig", libc::SYS_fsconfig, MOUNT_API),
    deny("fsmount", libc::SYS_fsmount, MOUNT_API),
    deny("fspick", libc::SYS_fspick, MOUNT_API),
    deny("mount_setattr", libc::SYS_mount_setattr, MOUNT_API),
    deny(
        "pivot_root",
        libc::SYS_pivot_root,
        "replaces the root filesystem",
    ),
    deny(
        "chroot",
        libc::SYS_chroot,
        "changes the root directory, a building block of classic escapes",
    ),
    deny(
        "unshare",
        libc::SYS_unshare,
        "creates namespaces: a user namespace hands out capabilities and reaches kernel code otherwise reserved to root",
    ),
    deny("setns", libc::SYS_setns, "enters another namespace"),
    deny("swapon", libc::SYS_swapon, "changes the host's swap areas"),
    deny(
        "swapoff",
        libc::SYS_swapoff,
        "changes the host's swap areas",
    ),
    deny(
        "kexec_load",
        libc::SYS_kexec_load,
        "replaces the running kernel",
    ),
    deny(
        "kexec_file_load",
        libc::SYS_kexec_file_load,
        "replaces the running kernel",
    ),
    deny(
        "init_module",
        libc::SYS_init_module,
        "loads code into the kernel",
    ),
    deny(
        "finit_module",
        libc::SYS_finit_module,
        "loads code into the kernel",
    ),
    deny(
        "delete_module",
        libc::SYS_delete_module,
        "unloads kernel code",
    ),
    deny(
        "bpf",
        libc::SYS_bpf,
        "loads eBPF programs into the kernel: a large attack surface with a history of verifier escapes",
    ),
    deny(
        "perf_event_open",
        libc::SYS_perf_event_open,
        "kernel performance events: a history of exploitable bugs and leaks of kernel addresses",
    ),
    deny("keyctl", libc::SYS_keyctl, KEYRING),
    deny("add_key", libc::SYS_add_key, KEYRING),
    deny("request_key", libc::SYS_request_key, KEYRING),
    deny(
        "userfaultfd",
        libc::SYS_userfaultfd,
        "lets a process stall kernel page faults at will, the usual tool for winning kernel races",
    ),
    deny(
        "open_by_handle_at",
        libc::SYS_open_by_handle_at,
        "opens files by handle without a path's permission checks",
    ),
    deny(
        "io_uring_setup",
        libc::SYS_io_uring_setup,
        "io_uring operations bypass this filter, and it is a frequent source of kernel exploits",
    ),
    deny(
        "io_uring_enter",
        libc::SYS_io_uring_enter,
        "io_uring operations bypass this filter, and it is a frequent source of kernel exploits",
    ),
    deny(
        "io_uring_register",
        libc::SYS_io_uring_register,
        "io_uring operations bypass this filter, and it is a frequent source of kernel exploits",
    ),
    deny("reboot", libc::SYS_reboot, "reboots or halts the machine"),
    deny(
        "acct",
        libc::SYS_acct,
        "switches the host's process accounting",
    ),
    deny("quotactl", libc::SYS_quotactl, QUOTA),
    deny("quotactl_fd", libc::SYS_quotactl_fd, QUOTA),
    deny(
        "syslog",
        libc::SYS_syslog,
        "reads the kernel log, which leaks kernel addresses and other jobs' activity",
    ),
    deny("settimeofday", libc::SYS_settimeofday, CLOCK),
    deny("clock_settime", libc::SYS_clock_settime, CLOCK),
    deny("clock_adjtime", libc::SYS_clock_adjtime, CLOCK),
    deny("adjtimex", libc::SYS_adjtimex, CLOCK),
    deny(
        "vhangup",
        libc::SYS_vhangup,
        "hangs up the controlling terminal",
    ),
    deny(
        "nfsservctl",
        libc::SYS_nfsservctl,
        "obsolete NFS server control",
    ),
    deny(
        "lookup_dcookie",
        libc::SYS_lookup_dcookie,
        "obsolete kernel profiling helper",
    ),
    #[cfg(target_arch = "x86_64")]
    deny("iopl", libc::SYS_iopl, "raw access to I/O ports"),
    #[cfg(target_arch = "x86_64")]
    deny("ioperm", libc::SYS_ioperm, "raw access to I/O ports"),
    #[cfg(target_arch = "x86_64")]
    deny(
        "modify_ldt",
        libc::SYS_modify_ldt,
        "custom segment descriptors, only for 16-bit code: a history of kernel bugs",
    ),
    #[cfg(target_arch = "x86_64")]
    deny("uselib", libc::SYS_uselib, "obsolete a.out library loader"),
];

/// The namespace flags that make `clone` fail with `EPERM`, one rule each.
/// `CLONE_NEWTIME` shares its bit with the exit signal of `clone` (`CSIGNAL`); no valid
/// exit signal has that bit, so denying it costs nothing and keeps the list complete.
pub const CLONE_NAMESPACE_FLAGS: &[(&str, libc::c_int)] = &[
    ("CLONE_NEWNS", libc::CLONE_NEWNS),
    ("CLONE_NEWCGROUP", libc::CLONE_NEWCGROUP),
    ("CLONE_NEWUTS", libc::CLONE_NEWUTS),
    ("CLONE_NEWIPC", libc::CLONE_NEWIPC),
    ("CLONE_NEWUSER", libc::CLONE_NEWUSER),
    ("CLONE_NEWPID", libc::CLONE_NEWPID),
    ("CLONE_NEWNET", libc::CLONE_NEWNET),
    ("CLONE_NEWTIME", libc::CLONE_NEWTIME),
];

/// The `personality(2)` values a job may set (the rest fail with `EPERM`): Linux,
/// 32-bit Linux, the 2.6 uname emulation, both together, and the query. Denied are flags
/// such as `READ_IMPLIES_EXEC`, `ADDR_NO_RANDOMIZE` and `MMAP_PAGE_ZERO` that weaken
/// memory protections and served in kernel exploit chains.
pub const PERSONALITY_ALLOWED: &[u32] = &[
    0x0000_0000,
    0x0000_0008,
    0x0002_0000,
    0x0002_0008,
    0xffff_ffff,
];

/// Failures to build or install the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the job's seccomp filter: {0}")]
    Build(#[source] seccompiler::BackendError),
    #[error("the job's seccomp filter has {0} instructions, more than the kernel's 4096")]
    TooLarge(usize),
    #[error("cannot install the job's seccomp filter: {0}")]
    Apply(#[source] seccompiler::Error),
}

/// The kernel's limit on the length of a classic BPF program (`BPF_MAXINSNS`).
const BPF_MAXINSNS: usize = 4096;

/// Builds the job's filter for the architecture the executor is built for.
pub fn job_filter() -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|d| (d.nr, Vec::new())).collect();

    let clone_rules = CLONE_NAMESPACE_FLAGS
        .iter()
        .map(|&(_, flag)| {
            let flag = u64::from(flag.unsigned_abs());
            // The kernel reads clone's flags as 32 bits, so a Dword compare is exact.
            let masked = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?;
            SeccompRule::new(vec![masked])
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(SeccompError::Build)?;
    rules.insert(libc::SYS_clone, clone_rules);

    // One rule: personality is denied when its argument differs from every allowed value.
    let not_allowed = PERSONALITY_ALLOWED
        .iter()
        .map(|&p| SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, u64::from(p)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(SeccompError::Build)?;
    rules.insert(
        libc::SYS_personality,
        vec![SeccompRule::new(not_allowed).map_err(SeccompError::Build)?],
    );

    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM.unsigned_abs()),
        target_arch(),
    )
    .map_err(SeccompError::Build)?;
    let body: BpfProgram = filter.try_into().map_err(SeccompError::Build)?;

    let mut program = prefix();
    program.extend(body);
    if program.len() > BPF_MAXINSNS {
        return Err(SeccompError::TooLarge(program.len()));
    }
    Ok(program)
}

/// Installs `prog` on the calling thread; it is inherited by every process the thread
/// creates afterwards and cannot be removed. Sets `no_new_privs` first (through
/// `seccompiler`), which the kernel requires of a caller without `CAP_SYS_ADMIN` and which
/// the job must have anyway.
pub fn apply(prog: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(prog).map_err(SeccompError::Apply)
}

#[cfg(target_arch = "x86_64")]
fn target_arch() -> TargetArch {
    TargetArch::x86_64
}
#[cfg(target_arch = "aarch64")]
fn target_arch() -> TargetArch {
    TargetArch::aarch64
}
#[cfg(target_arch = "riscv64")]
fn target_arch() -> TargetArch {
    TargetArch::riscv64
}

/// `AUDIT_ARCH_*` of the executor's architecture (`linux/audit.h`).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
#[cfg(target_arch = "riscv64")]
const AUDIT_ARCH: u32 = 0xc000_00f3;

/// x32 system calls arrive with the x86-64 audit arch and this bit set in the number.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Classic BPF opcodes (`linux/bpf_common.h`) and `struct seccomp_data` offsets.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
#[cfg(target_arch = "x86_64")]
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
/// The low 32 bits of argument `i` (little endian: every architecture here).
const fn data_arg(i: u32) -> u32 {
    16 + 8 * i
}

/// The socket families a job may create, and why each: everything else fails with
/// `EAFNOSUPPORT`, as on a kernel built without it. Network namespaces do not isolate
/// every family (`AF_VSOCK` reaches the hypervisor's host side; netlink's uevent
/// protocol carries the host's device events), so the filter, not only the namespace,
/// decides.
pub const SOCKET_FAMILIES: &[(&str, u32, &str)] = &[
    (
        "AF_UNIX",
        libc::AF_UNIX as u32,
        "local sockets, inside the job's own file system and network namespace",
    ),
    (
        "AF_INET",
        libc::AF_INET as u32,
        "IPv4, in the job's network namespace (loopback only)",
    ),
    ("AF_INET6", libc::AF_INET6 as u32, "IPv6, likewise"),
    (
        "AF_NETLINK",
        libc::AF_NETLINK as u32,
        "only its route protocol (`NETLINK_ROUTE`), which `ip` uses, about the job's own namespace",
    ),
];

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

fn errno(e: libc::c_int) -> u32 {
    libc::SECCOMP_RET_ERRNO | (e.unsigned_abs() & libc::SECCOMP_RET_DATA)
}

/// The checks that run before `seccompiler`'s program:
///
/// 1. a system call through another architecture's table (e.g. `int 0x80` from an
///    x86-64 process, whose numbers differ and would slip past the list) kills the
///    process;
/// 2. on x86-64, an x32 system call (number with [`X32_SYSCALL_BIT`], same audit arch)
///    fails with `EPERM`; `seccompiler` compares numbers only, so `mount | 0x40000000`
///    would otherwise pass;
/// 3. `clone3` fails with `ENOSYS`, an action that differs from the filter's one
///    match action;
/// 4. `socket` succeeds only for the families in [`SOCKET_FAMILIES`] (netlink only with
///    `NETLINK_ROUTE`), `socketpair` only for `AF_UNIX`; any other fails with
///    `EAFNOSUPPORT`.
///
/// Classic BPF jumps are forward and relative to the next instruction, so this prefix is
/// self-contained: every jump in it lands inside it or on the instruction right after
/// it, and `seccompiler`'s program, appended there, starts by reloading what it needs.
/// Its own jumps are relative to itself and keep their meaning.
fn prefix() -> Vec<sock_filter> {
    let mut p = vec![
        stmt(BPF_LD_W_ABS, DATA_ARCH),
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, DATA_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    p.extend([
        jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, errno(libc::EPERM)),
    ]);
    p.extend([
        jump(BPF_JMP_JEQ_K, libc::SYS_clone3 as u32, 0, 1),
        stmt(BPF_RET_K, errno(libc::ENOSYS)),
    ]);
    // socketpair(domain, ...): AF_UNIX only. The accumulator still holds the number.
    let unsupported = errno(libc::EAFNOSUPPORT);
    p.extend([
        jump(BPF_JMP_JEQ_K, libc::SYS_socketpair as u32, 0, 3),
        stmt(BPF_LD_W_ABS, data_arg(0)),
        jump(BPF_JMP_JEQ_K, libc::AF_UNIX as u32, 1, 0),
        stmt(BPF_RET_K, unsupported),
    ]);
    // socket(domain, type, protocol). Every allowed case jumps to `allow`, the last
    // instruction of the prefix, which reloads the number for the program after it.
    // After the socketpair block the accumulator may hold a domain, so reload first.
    let mut socket = vec![stmt(BPF_LD_W_ABS, DATA_NR)];
    let inet = [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6];
    // Layout: [jeq socket] [ld arg0] [jeq each inet family]* [jeq netlink] [ld arg2]
    // [jeq route] [ret unsupported] [allow: ld nr]
    let after_socket_check = 1 + inet.len() + 4; // instructions between the check and `allow`
    socket.push(jump(
        BPF_JMP_JEQ_K,
        libc::SYS_socket as u32,
        0,
        (after_socket_check) as u8,
    ));
    socket.push(stmt(BPF_LD_W_ABS, data_arg(0)));
    for (i, family) in inet.iter().enumerate() {
        // To `allow`: past the rest of the families, netlink's three and the return.
        let to_allow = (inet.len() - 1 - i) + 4;
        socket.push(jump(BPF_JMP_JEQ_K, *family as u32, to_allow as u8, 0));
    }
    socket.extend([
        jump(BPF_JMP_JEQ_K, libc::AF_NETLINK as u32, 0, 2),
        stmt(BPF_LD_W_ABS, data_arg(2)),
        jump(BPF_JMP_JEQ_K, libc::NETLINK_ROUTE as u32, 1, 0),
        stmt(BPF_RET_K, unsupported),
        // allow:
        stmt(BPF_LD_W_ABS, DATA_NR),
    ]);
    p.extend(socket);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobworker_sys::seccomp_probe as probe;

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;

    /// Runs a seccomp classic BPF program on `struct seccomp_data`, as the kernel would.
    /// Only the instructions this filter uses are known; anything else fails the test.
    fn run(prog: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let mut acc: u32 = 0;
        let mut pc = 0usize;
        loop {
            let ins = prog
                .get(pc)
                .unwrap_or_else(|| panic!("ran off the program at {pc}"));
            pc += 1;
            let k = ins.k;
            let cond = |c: bool| usize::from(if c { ins.jt } else { ins.jf });
            match ins.code {
                0x20 => {
                    let k = k as usize;
                    acc = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
                }
                0x54 => acc &= k,
                0x05 => pc += k as usize,
                0x15 => pc += cond(acc == k),
                0x25 => pc += cond(acc > k),
                0x35 => pc += cond(acc >= k),
                0x06 => return k,
                other => panic!("unexpected BPF opcode {other:#x} at {}", pc - 1),
            }
        }
    }

    fn call(prog: &[sock_filter], nr: libc::c_long, arg0: u64) -> u32 {
        run(prog, AUDIT_ARCH, nr as u32, [arg0, 0, 0, 0, 0, 0])
    }

    #[test]
    fn every_denied_call_has_a_reason_and_appears_once() {
        let mut names: Vec<&str> = DENIED.iter().map(|d| d.name).collect();
        let mut nrs: Vec<i64> = DENIED.iter().map(|d| d.nr).collect();
        names.sort_unstable();
        names.dedup();
        nrs.sort_unstable();
        nrs.dedup();
        assert_eq!(names.len(), DENIED.len(), "a name is listed twice");
        assert_eq!(nrs.len(), DENIED.len(), "a number is listed twice");
        for d in DENIED {
            assert!(d.reason.len() > 10, "{} has no real reason", d.name);
            assert!(
                d.nr != libc::SYS_clone && d.nr != libc::SYS_personality,
                "{} has rules of its own",
                d.name
            );
        }
    }

    #[test]
    fn every_denied_call_is_in_the_design_notes() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        let text: String = ["design.md"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(docs.join(f)).ok())
            .collect();
        let names =
            DENIED
                .iter()
                .map(|d| d.name)
                .chain(["clone", "clone3", "personality", "ptrace"]);
        let undocumented: Vec<&str> = names
            .filter(|n| !text.contains(&format!("`{n}`")))
            .collect();
        assert!(
            undocumented.is_empty(),
            "not in docs/design*.md: {undocumented:?}"
        );
    }

    #[test]
    fn the_filter_denies_each_listed_call_with_eperm() {
        let prog = job_filter().unwrap();
        for d in DENIED {
            assert_eq!(call(&prog, d.nr, 0), errno(libc::EPERM), "{}", d.name);
        }
    }

    #[test]
    fn the_filter_allows_ordinary_calls() {
        let prog = job_filter().unwrap();
        for nr in [
            libc::SYS_getpid,
            libc::SYS_write,
            libc::SYS_read,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_ptrace,
            libc::SYS_name_to_handle_at,
            libc::SYS_wait4,
        ] {
            assert_eq!(call(&prog, nr, 0), ALLOW, "syscall {nr}");
        }
    }

    #[test]
    fn clone_is_denied_exactly_when_a_namespace_flag_is_set() {
        let prog = job_filter().unwrap();
        let fork = libc::SIGCHLD as u64;
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        assert_eq!(call(&prog, libc::SYS_clone, fork), ALLOW);
        assert_eq!(call(&prog, libc::SYS_clone, thread), ALLOW);
        // Bits above 32 are ignored by the kernel for clone.
        assert_eq!(
            call(&prog, libc::SYS_clone, fork | (u64::from(u32::MAX) << 32)),
            ALLOW
        );
        for &(name, flag) in CLONE_NAMESPACE_FLAGS {
            let flag = u64::from(flag.unsigned_abs());
            assert_eq!(
                call(&prog, libc::SYS_clone, flag),
                errno(libc::EPERM),
                "{name}"
            );
            assert_eq!(
                call(&prog, libc::SYS_clone, flag | fork),
                errno(libc::EPERM),
                "{name} with SIGCHLD"
            );
            assert_eq!(
                call(&prog, libc::SYS_clone, flag | thread),
                errno(libc::EPERM),
                "{name} with thread flags"
            );
        }
    }

    #[test]
    fn sockets_of_other_families_are_unsupported() {
        let prog = job_filter().unwrap();
        let socket = |domain: i32, protocol: i32| {
            run(
                &prog,
                AUDIT_ARCH,
                libc::SYS_socket as u32,
                [
                    domain as u64,
                    libc::SOCK_STREAM as u64,
                    protocol as u64,
                    0,
                    0,
                    0,
                ],
            )
        };
        for (name, family, _) in SOCKET_FAMILIES {
            assert_eq!(socket(*family as i32, 0), ALLOW, "{name}");
        }
        // NETLINK_ROUTE is 0; the host's device events are not the job's.
        let uevent = 15; // NETLINK_KOBJECT_UEVENT
        assert_eq!(socket(libc::AF_NETLINK, uevent), errno(libc::EAFNOSUPPORT));
        assert_eq!(
            socket(libc::AF_NETLINK, 4 /* sock_diag */),
            errno(libc::EAFNOSUPPORT)
        );
        for domain in [
            libc::AF_VSOCK,
            libc::AF_PACKET,
            libc::AF_BLUETOOTH,
            libc::AF_ALG,
            255,
        ] {
            assert_eq!(
                socket(domain, 0),
                errno(libc::EAFNOSUPPORT),
                "family {domain}"
            );
        }
        let pair = |domain: i32| {
            run(
                &prog,
                AUDIT_ARCH,
                libc::SYS_socketpair as u32,
                [domain as u64, 1, 0, 0, 0, 0],
            )
        };
        assert_eq!(pair(libc::AF_UNIX), ALLOW);
        assert_eq!(pair(libc::AF_VSOCK), errno(libc::EAFNOSUPPORT));
        // Calls after the socket checks still meet the rest of the filter.
        assert_eq!(call(&prog, libc::SYS_mount, 0), errno(libc::EPERM));
        assert_eq!(call(&prog, libc::SYS_getpid, 0), ALLOW);
    }

    #[test]
    fn clone3_fails_with_enosys() {
        let prog = job_filter().unwrap();
        assert_eq!(call(&prog, libc::SYS_clone3, 0), errno(libc::ENOSYS));
    }

    #[test]
    fn personality_is_limited_to_the_allowed_values() {
        let prog = job_filter().unwrap();
        for &p in PERSONALITY_ALLOWED {
            assert_eq!(
                call(&prog, libc::SYS_personality, u64::from(p)),
                ALLOW,
                "{p:#x}"
            );
        }
        for p in [
            0x0040_0000u64, /* READ_IMPLIES_EXEC */
            0x0004_0000,    /* ADDR_NO_RANDOMIZE */
            0x0010_0000,    /* MMAP_PAGE_ZERO */
        ] {
            assert_eq!(
                call(&prog, libc::SYS_personality, p),
                errno(libc::EPERM),
                "{p:#x}"
            );
        }
    }

    #[test]
    fn another_architecture_kills_the_process() {
        let prog = job_filter().unwrap();
        const AUDIT_ARCH_I386: u32 = 0x4000_0003;
        // i386's getpid is 20, which is x86-64's writev: the numbers mean other calls.
        assert_eq!(run(&prog, AUDIT_ARCH_I386, 20, [0; 6]), KILL);
        assert_eq!(
            run(&prog, AUDIT_ARCH_I386, 21 /* i386 mount */, [0; 6]),
            KILL
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x32_calls_are_denied() {
        let prog = job_filter().unwrap();
        for nr in [
            libc::SYS_getpid,
            libc::SYS_mount,
            libc::SYS_unshare,
            512, /* x32 ioctl */
        ] {
            assert_eq!(
                call(&prog, 0x4000_0000 | nr, 0),
                errno(libc::EPERM),
                "x32 {nr}"
            );
        }
    }

    #[test]
    fn the_prefix_only_returns_or_falls_through() {
        let p = prefix();
        for (i, ins) in p.iter().enumerate() {
            if ins.code & 0x07 == 0x05 {
                let last = if ins.code == 0x05 {
                    i + 1 + ins.k as usize
                } else {
                    i + 1 + usize::from(ins.jt.max(ins.jf))
                };
                assert!(last <= p.len(), "instruction {i} jumps past the prefix");
            }
        }
        assert!(job_filter().unwrap().len() < BPF_MAXINSNS);
    }

    /// Names the child-mode test below and marks its run.
    const CHILD_ENV: &str = "JOBWORKER_SECCOMP_CHILD";
    const CHILD_TEST: &str = "seccomp::tests::filter_child_probe";

    /// Applies the filter for real in a child process (this test binary again, running
    /// only [`filter_child_probe`]), which checks from inside what the filter does.
    #[test]
    fn applied_filter_denies_and_allows_what_it_should() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                CHILD_TEST,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "child failed: {}\n{stdout}\n{stderr}",
            out.status
        );
        assert!(
            stdout.contains("1 passed"),
            "the child test did not run:\n{stdout}"
        );
        assert!(stdout.contains("filter applied"), "{stdout}");
    }

    fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> Option<i32> {
        r.expect_err("the call succeeded").raw_os_error()
    }

    #[test]
    #[ignore = "run by applied_filter_denies_and_allows_what_it_should in a child process"]
    fn filter_child_probe() {
        assert_eq!(
            std::env::var(CHILD_ENV).as_deref(),
            Ok("1"),
            "this test installs a seccomp filter and runs only as a child of {CHILD_TEST}'s parent test"
        );
        let prog = job_filter().unwrap();
        apply(&prog).unwrap();
        println!("filter applied");

        // What the kernel shows for this (filtered) thread.
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        assert!(status.lines().any(|l| l == "Seccomp:\t2"), "{status}");
        assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "{status}");

        assert_eq!(
            errno_of(probe::unshare(libc::CLONE_NEWUSER)),
            Some(libc::EPERM)
        );
        assert_eq!(
            errno_of(probe::unshare(libc::CLONE_NEWNS)),
            Some(libc::EPERM)
        );
        assert_eq!(errno_of(probe::mount_null()), Some(libc::EPERM));
        assert_eq!(errno_of(probe::clone3_null()), Some(libc::ENOSYS));
        for &(name, flag) in CLONE_NAMESPACE_FLAGS {
            assert_eq!(
                errno_of(probe::clone_invalid(flag)),
                Some(libc::EPERM),
                "{name}"
            );
        }
        #[cfg(target_arch = "x86_64")]
        assert_eq!(errno_of(probe::x32_getpid()), Some(libc::EPERM));
        assert_eq!(errno_of(probe::personality(0x0040_0000)), Some(libc::EPERM));
        assert!(probe::personality(0xffff_ffff).is_ok());
        // Socket families: the job's own kinds work, the others are unsupported.
        for (domain, ty, protocol) in [
            (libc::AF_UNIX, libc::SOCK_STREAM, 0),
            (libc::AF_INET, libc::SOCK_STREAM, 0),
            (libc::AF_INET6, libc::SOCK_DGRAM, 0),
            (libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE),
        ] {
            jobworker_sys::socket(domain, ty, protocol)
                .unwrap_or_else(|e| panic!("family {domain}: {e}"));
        }
        for (domain, ty, protocol) in [
            (libc::AF_VSOCK, libc::SOCK_STREAM, 0),
            (libc::AF_PACKET, libc::SOCK_RAW, 0),
            (
                libc::AF_NETLINK,
                libc::SOCK_DGRAM,
                libc::NETLINK_KOBJECT_UEVENT,
            ),
        ] {
            assert_eq!(
                errno_of(jobworker_sys::socket(domain, ty, protocol)),
                Some(libc::EAFNOSUPPORT),
                "family {domain}, protocol {protocol}"
            );
        }

        // Ordinary calls work: writing, and creating processes and threads, whose C
        // library code tries clone3 first and falls back to clone on ENOSYS.
        use std::io::Write;
        std::io::stdout().write_all(b"write works\n").unwrap();
        let status = std::process::Command::new("true").status().unwrap();
        assert!(status.success(), "{status}");
        let out = std::process::Command::new("sh")
            .args(["-c", "echo $(echo nested)"])
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"nested\n");
        let t = std::thread::spawn(std::process::id);
        assert_eq!(t.join().unwrap(), std::process::id());
    }
}
