#!/usr/bin/env bash
# Boots a QEMU guest with systemd as PID 1 and checks the Debian package and its units
# for real (`make test-systemd`): `apt install ./jobworker_*.deb` (the accounts and
# directories made, nothing enabled or started), `systemctl enable --now
# jobworker-executor.socket jobworker-api.service`, jobs run and streamed through jobctl,
# what the executor's and the API server's processes hold (capabilities, no_new_privs,
# seccomp, cgroup), what a job can and cannot reach, the LoadCredential= key, stop and
# restart behaviour, and, one drop-in at a time, that each capability kept and each
# setting left out is really needed; then an upgrade to the package rebuilt as a later
# version (job records and an edited configuration kept), removal (units stopped and
# disabled) and purge (configuration and state gone). See guest-check.sh.
#
# It takes minutes under software emulation (see docs/design.md, "Verification"); its
# waits are bounded polls. The guest's userland is copied from the host's own installed
# Debian packages (systemd, apt, dpkg, coreutils, perl-base, ... and their
# dependencies), with a dpkg database that lists them as installed, so apt needs no
# network; nothing is downloaded but the kernel that .ci/vm/setup.sh fetches.
#
# Exit status: 0 when every check passed in the guest (or, without root, after a
# SKIPPED line), 1 when one failed, 2 when the guest did not finish.
#
# Environment (optional):
#   JOBWORKER_DEB          the package to install (default: built here by
#                          deploy/debian/build.sh, as `make deb` does)
#   JOBWORKER_VM_DIR       cache directory shared with .ci/vm (default: <repo>/.vm)
#   JOBWORKER_VM_TIMEOUT   seconds for the guest run (default 1800)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here=$repo/deploy/systemd-vm
vm_dir=${JOBWORKER_VM_DIR:-$repo/.vm}
timeout_s=${JOBWORKER_VM_TIMEOUT:-1800}

log() { printf 'systemd-vm: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 2
}

if [[ $(id -u) != 0 ]]; then
    log "SKIPPED the systemd check: needs root (the guest's files must be owned by root)"
    exit 0
fi
mkdir -p "$vm_dir"
vm_dir=$(cd "$vm_dir" && pwd)
JOBWORKER_VM_DIR=$vm_dir "$repo/.ci/vm/setup.sh"
kernel=$vm_dir/kernel/current/vmlinuz
[[ -f $kernel ]] || die "no kernel at $kernel"

work=$vm_dir/systemd-vm
root=$work/root
rm -rf "$work"
mkdir -p "$root"

# --- userland: the host's installed packages ------------------------------------------
# The essential packages (dpkg needs them: diff, tar, ...), and what the checks use.
mapfile -t packages < <(dpkg-query -W -f='${Essential} ${binary:Package}\n' | awk '$1 == "yes" { print $2 }')
packages+=(systemd mount procps iproute2 gawk acl apt)
mapfile -t closure < <(apt-cache depends --recurse --no-recommends --no-suggests \
    --no-conflicts --no-breaks --no-replaces --no-enhances "${packages[@]}" 2>/dev/null |
    grep -v '^[ <]' | LC_ALL=C sort -u)
installed=()
for p in "${closure[@]}"; do
    if dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii'; then
        installed+=("$(dpkg-query -W -f='${binary:Package}' "$p")")
    fi
done
log "guest userland: ${#installed[@]} installed packages"
dpkg -L "${installed[@]}" 2>/dev/null | LC_ALL=C sort -u |
    grep -Ev '^/usr/share/(doc|man|info|locale|lintian|bug)/' |
    while read -r f; do
        if [[ -L $f || (-e $f && ! -d $f) ]]; then printf '%s\n' "${f#/}"; fi
    done >"$work/files"
# Merged /usr, as on the host.
mkdir -p "$root/usr/bin" "$root/usr/sbin" "$root/usr/lib" "$root/usr/lib64"
for d in bin sbin lib lib64; do ln -s "usr/$d" "$root/$d"; done
tar -C / --no-recursion -cf - -T "$work/files" |
    tar -C "$root" --keep-directory-symlink -xpf -

# dpkg's database: the copied packages, as installed (their status and file lists from
# the host's), so that apt finds the package's dependencies there and needs no network.
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/triggers" \
    "$root/var/lib/dpkg/alternatives" "$root/var/lib/apt/lists/partial" \
    "$root/var/cache/apt/archives/partial" "$root/var/log/apt" "$root/etc/apt/sources.list.d" \
    "$root/etc/apt/preferences.d"
: >"$root/etc/apt/sources.list"
for p in "${installed[@]}"; do
    dpkg-query -s "$p"
    echo
done >"$root/var/lib/dpkg/status"
: >"$root/var/lib/dpkg/available"
for p in "${installed[@]}"; do
    for f in /var/lib/dpkg/info/"$p".*; do
        [[ -e $f ]] && cp -p "$f" "$root/var/lib/dpkg/info/"
    done
done

mkdir -p "$root"/{proc,sys,dev,run,tmp,var/tmp,var/lib,var/log,root,home,srv,mnt,etc/systemd/system}
chmod 1777 "$root/tmp" "$root/var/tmp"
chmod 0700 "$root/root"
# _apt: apt's own account for its downloads (its postinst would have made it).
printf 'root:x:0:0:root:/root:/bin/bash\n_apt:x:42:65534::/nonexistent:/usr/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
printf 'root:*:19000:0:99999:7:::\n_apt:*:19000:0:99999:7:::\n' >"$root/etc/shadow"
printf 'root:*::\n' >"$root/etc/gshadow"
chmod 0640 "$root/etc/shadow" "$root/etc/gshadow"
printf 'jobworker-vm\n' >"$root/etc/hostname"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$root/etc/hosts"
cp /etc/nsswitch.conf "$root/etc/nsswitch.conf"
: >"$root/etc/fstab"
: >"$root/etc/machine-id"
# Needs D-Bus, which the guest has not got.
ln -sf /dev/null "$root/etc/systemd/system/systemd-logind.service"

# Things a job must not reach: a home directory and a world-writable directory.
mkdir -p "$root/home/alice"
chmod 0755 "$root/home/alice"
echo "alice's notes" >"$root/home/alice/notes.txt"
chmod 0644 "$root/home/alice/notes.txt"
mkdir -p "$root/srv/dropbox"
chmod 1777 "$root/srv/dropbox"

# --- jobworker: the package, and the same package rebuilt as a later version -----------
deb=${JOBWORKER_DEB:-}
if [[ -z $deb ]]; then
    log "building the package (deploy/debian/build.sh)"
    deb=$("$repo/deploy/debian/build.sh")
fi
[[ -f $deb ]] || die "no package at $deb"
version=$(dpkg-deb -f "$deb" Version)
log "rebuilding $(basename "$deb") as version $version+rebuild1, for the upgrade"
deb2=$(DEB_VERSION=$version+rebuild1 JOBWORKER_DEB_DIR=$work/rebuilt "$repo/deploy/debian/build.sh")
# One directory each: `apt install ./jobworker_*.deb` in each names one package.
install -d -m 0755 "$root/var/tmp/jobworker/1" "$root/var/tmp/jobworker/2"
install -m 0644 "$deb" "$root/var/tmp/jobworker/1/"
install -m 0644 "$deb2" "$root/var/tmp/jobworker/2/"
printf '%s\n%s\n' "$version" "$version+rebuild1" >"$root/var/tmp/jobworker/versions"

# Test aids, not part of the package: the probe (run as a job) and the PKI tool.
cargo build --release --locked -p jobworker-testkit --bin jobworker-probe \
    -p jobctl --bin jobworker-dev-certs --manifest-path "$repo/Cargo.toml" >&2
install -d -m 0755 "$root/usr/local/libexec"
install -m 0755 "$repo/target/release/jobworker-probe" "$root/usr/local/libexec/jobworker-probe"
"$repo/target/release/jobworker-dev-certs" "$work/pki" >&2
install -d -m 0700 "$root/root/pki"
cp "$work/pki"/{ca.pem,server.pem,server.key,alice.pem,alice.key,bob.pem,bob.key} "$root/root/pki/"

install -m 0755 "$here/guest-check.sh" "$root/usr/local/libexec/jobworker-vmcheck"
cat >"$root/etc/systemd/system/jobworker-vmcheck.service" <<'EOF'
[Unit]
Description=jobworker deployment checks
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/libexec/jobworker-vmcheck
StandardOutput=journal+console
StandardError=journal+console
EOF
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -s ../jobworker-vmcheck.service "$root/etc/systemd/system/multi-user.target.wants/"

# --- boot ------------------------------------------------------------------------------
log "packing the guest ($(du -sh "$root" | cut -f1))"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1) >"$work/root.cpio.gz"
serial=$work/serial.log
log "booting (timeout ${timeout_s}s), serial log: $serial"
set +e
timeout -k 10 "$timeout_s" qemu-system-x86_64 \
    -accel tcg -m 2G -smp 2 -nographic -no-reboot \
    -bios /usr/share/qemu/qboot.rom -net none \
    -kernel "$kernel" -initrd "$work/root.cpio.gz" \
    -append "console=ttyS0 panic=-1 rdinit=/usr/lib/systemd/systemd systemd.show_status=0" \
    </dev/null 2>&1 | tee "$serial"
qemu_rc=${PIPESTATUS[0]}
set -e
rm -f "$work/root.cpio.gz"

# Lines look like "[  12.3] jobworker-vmcheck[132]: VMCHECK PASS ...".
clean=$(tr -d '\r' <"$serial" | grep -ao 'VMCHECK.*' || true)
passed=$(grep -c '^VMCHECK PASS' <<<"$clean" || true)
failed=$(grep -c '^VMCHECK FAIL' <<<"$clean" || true)
echo
grep '^VMCHECK FAIL' <<<"$clean" >&2 || true
if ! grep -q '^VMCHECK-DONE' <<<"$clean"; then
    log "the guest did not finish (QEMU exit status $qemu_rc); $passed passed, $failed failed so far"
    exit 2
fi
log "$passed passed, $failed failed"
((failed == 0))
