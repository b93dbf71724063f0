#!/usr/bin/env bash
# Prepares everything `.ci/vm/test-vm.sh` needs, cached under .vm/ at the top of the
# repository: host packages, a stock Debian cloud kernel with its virtio modules, the
# base initramfs (busybox, users, modules, /init) and the musl Rust target.
#
# Idempotent: a second run only checks that the cache is still valid.
#
# Environment:
#   JOBWORKER_VM_DIR      cache directory (default: <repo>/.vm)
#   JOBWORKER_VM_KERNEL   kernel package to use instead of the newest
#                         linux-image-6.1.0-*-cloud-amd64 (for example to pin one)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
vm_dir=${JOBWORKER_VM_DIR:-$repo/.vm}
mkdir -p "$vm_dir"
vm_dir=$(cd "$vm_dir" && pwd)

log() { printf 'vm/setup: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# The virtio modules the guest needs, in load order (each depends only on earlier ones).
modules=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk)

apt_updated=0
apt_update() {
    if [[ $apt_updated == 0 ]]; then
        log "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
}

# --- host packages ----------------------------------------------------------------------
need_pkgs=()
if ! command -v qemu-system-x86_64 >/dev/null || [[ ! -f /usr/share/qemu/qboot.rom ]]; then
    need_pkgs+=(qemu-system-x86)
fi
# busybox-static's /bin/busybox: the initramfs has no libc. (Debian's plain busybox
# package installs a dynamic one at the same path.)
if ! [[ -x /bin/busybox ]] || ! command -v readelf >/dev/null ||
    readelf -l /bin/busybox | grep -q INTERP; then
    need_pkgs+=(busybox-static)
fi
command -v cpio >/dev/null || need_pkgs+=(cpio)
command -v jq >/dev/null || need_pkgs+=(jq)
command -v readelf >/dev/null || need_pkgs+=(binutils)
command -v timeout >/dev/null || need_pkgs+=(coreutils)
if ((${#need_pkgs[@]} > 0)); then
    if [[ $(id -u) != 0 ]]; then
        die "missing packages (${need_pkgs[*]}); run as root or install them first"
    fi
    apt_update
    log "installing ${need_pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${need_pkgs[@]}" >/dev/null
fi
busybox=/bin/busybox
if readelf -l "$busybox" | grep -q INTERP; then
    die "$busybox is dynamically linked: install busybox-static"
fi

# --- Rust musl target --------------------------------------------------------------------
# Run from the repository so that rust-toolchain.toml picks the toolchain.
if ! (cd "$repo" && rustup target list --installed) | grep -qx x86_64-unknown-linux-musl; then
    log "rustup target add x86_64-unknown-linux-musl"
    (cd "$repo" && rustup target add x86_64-unknown-linux-musl)
fi

# --- kernel ------------------------------------------------------------------------------
newest_kernel_pkg() {
    apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' 2>/dev/null |
        awk '{print $1}' | sort -V | tail -n 1
}

kernel_pkg=${JOBWORKER_VM_KERNEL:-}
if [[ -z $kernel_pkg ]]; then
    kernel_pkg=$(newest_kernel_pkg)
    if [[ -z $kernel_pkg ]]; then
        apt_update
        kernel_pkg=$(newest_kernel_pkg)
    fi
fi
kernel_dir=
if [[ -n $kernel_pkg && -f $vm_dir/kernel/$kernel_pkg/ok ]]; then
    kernel_dir=$vm_dir/kernel/$kernel_pkg
elif [[ -n $kernel_pkg ]]; then
    log "fetching $kernel_pkg"
    dl=$vm_dir/download
    rm -rf "$dl"
    mkdir -p "$dl"
    # apt-get download runs its fetcher as the _apt user: let it write there.
    chmod 0777 "$dl"
    if ! (cd "$dl" && apt-get download -qq "$kernel_pkg" 2>/dev/null); then
        # Stale package lists name a file the mirror no longer has.
        apt_update
        kernel_pkg_before=$kernel_pkg
        [[ -n ${JOBWORKER_VM_KERNEL:-} ]] || kernel_pkg=$(newest_kernel_pkg)
        [[ $kernel_pkg == "$kernel_pkg_before" ]] || log "now fetching $kernel_pkg"
        (cd "$dl" && apt-get download -qq "$kernel_pkg")
    fi
    deb=$(find "$dl" -maxdepth 1 -name "${kernel_pkg}_*.deb" | head -n 1)
    [[ -n $deb ]] || die "apt-get download $kernel_pkg produced no .deb"
    dpkg-deb -x "$deb" "$dl/root"
    vmlinuz=$(find "$dl/root/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n 1)
    [[ -n $vmlinuz ]] || die "$kernel_pkg has no /boot/vmlinuz-*"
    kver=${vmlinuz##*/vmlinuz-}
    out=$vm_dir/kernel/$kernel_pkg
    rm -rf "$out"
    mkdir -p "$out/modules"
    cp "$vmlinuz" "$out/vmlinuz"
    printf '%s\n' "$kver" >"$out/release"
    i=0
    for m in "${modules[@]}"; do
        f=$(find "$dl/root/lib/modules/$kver" -name "$m.ko*" | head -n 1)
        [[ -n $f ]] || die "module $m not found in $kernel_pkg"
        dst=$out/modules/$(printf '%02d' "$i")-$m.ko
        case $f in
        *.ko) cp "$f" "$dst" ;;
        *.ko.xz) xz -dc "$f" >"$dst" ;;
        *.ko.zst) zstd -qdc "$f" >"$dst" ;;
        *.ko.gz) gzip -dc "$f" >"$dst" ;;
        *) die "unknown module format: $f" ;;
        esac
        i=$((i + 1))
    done
    touch "$out/ok"
    rm -rf "$dl"
    kernel_dir=$out
else
    # No package lists at all and nothing could be found: use any cached kernel.
    kernel_dir=$(find "$vm_dir/kernel" -mindepth 2 -maxdepth 2 -name ok -printf '%h\n' \
        2>/dev/null | sort -V | tail -n 1)
    [[ -n $kernel_dir ]] || die "no linux-image-6.1.0-*-cloud-amd64 package found"
    log "warning: no kernel package found; using cached ${kernel_dir##*/}"
fi
ln -sfn "$kernel_dir" "$vm_dir/kernel/current"

# --- base initramfs ----------------------------------------------------------------------
# Rebuilt when the kernel, busybox, this script or the guest init change.
stamp=$( {
    printf '%s\n' "$kernel_dir"
    sha256sum "$busybox" "$repo/.ci/vm/init" "${BASH_SOURCE[0]}"
} | sha256sum | cut -d' ' -f1)
base=$vm_dir/base-initramfs.cpio.gz
if [[ -f $base && -f $vm_dir/base-initramfs.stamp && $(<"$vm_dir/base-initramfs.stamp") == "$stamp" ]]; then
    log "cached: $(<"$kernel_dir/release") ($kernel_pkg), $base"
    exit 0
fi

log "building the base initramfs"
stage=$vm_dir/stage-base
rm -rf "$stage"
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc,dev,proc,sys,tmp,run,root} \
    "$stage"/{lib/modules,opt/jobworker-tests}
cp "$busybox" "$stage/bin/busybox"
# One symlink per applet, at the path busybox itself names (bin/sh, usr/bin/timeout, ...).
"$busybox" --list-full | while read -r applet; do
    [[ -L $stage/$applet || -e $stage/$applet ]] && continue
    mkdir -p "$(dirname "$stage/$applet")"
    ln -s /bin/busybox "$stage/$applet"
done
cp "$kernel_dir"/modules/*.ko "$stage/lib/modules/"
install -m 0755 "$repo/.ci/vm/init" "$stage/init"
cat >"$stage/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$stage/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
nobody:x:65534:
EOF
printf 'jobworker-vm\n' >"$stage/etc/hostname"
chmod 1777 "$stage/tmp"
chmod 0700 "$stage/root"
# The kernel opens /dev/console for /init before anything is mounted.
if [[ $(id -u) == 0 ]]; then
    mknod -m 0600 "$stage/dev/console" c 5 1
    mknod -m 0666 "$stage/dev/null" c 1 3
fi
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
    cpio -o -H newc -R 0:0 --quiet | gzip -6 >"$base.tmp")
mv "$base.tmp" "$base"
printf '%s\n' "$stamp" >"$vm_dir/base-initramfs.stamp"
rm -rf "$stage"
log "ready: $(<"$kernel_dir/release") ($kernel_pkg), $base ($(du -h "$base" | cut -f1))"
