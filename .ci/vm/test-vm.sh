#!/usr/bin/env bash
# Runs the executor crate's integration tests inside a QEMU guest that boots a stock
# Debian cloud kernel with a pure cgroup v2 hierarchy (what `make test-vm` runs).
#
# Exit status: 0 when every test binary passed in the guest; 1 when one or more failed;
# 2 when the guest did not finish (timeout, hang, crash) or the harness itself failed.
#
# Environment (all optional):
#   JOBWORKER_VM_TIMEOUT    seconds for the whole guest run (default 1500)
#   JOBWORKER_VM_MEMORY     guest memory (default 1G)
#   JOBWORKER_VM_SMP        guest CPUs (default 2)
#   JOBWORKER_VM_DISK_SIZE  size of the scratch virtio disk /dev/vda (default 512M)
#   JOBWORKER_VM_TEST_ARGS  arguments given to every test binary in the guest, for
#                           example a test name filter or --test-threads=1
#   JOBWORKER_VM_APPEND     extra kernel command-line arguments
#   JOBWORKER_VM_DIR        cache and log directory (default: <repo>/.vm)
#   JOBWORKER_VM_KERNEL     kernel package to use (see .ci/vm/setup.sh)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
vm_dir=${JOBWORKER_VM_DIR:-$repo/.vm}
timeout_s=${JOBWORKER_VM_TIMEOUT:-1500}
memory=${JOBWORKER_VM_MEMORY:-1G}
smp=${JOBWORKER_VM_SMP:-2}
disk_size=${JOBWORKER_VM_DISK_SIZE:-512M}
target=x86_64-unknown-linux-musl

log() { printf 'vm/test-vm: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 2
}
now() { date +%s; }

t_start=$(now)
mkdir -p "$vm_dir"
vm_dir=$(cd "$vm_dir" && pwd)
# One run at a time per cache directory (QEMU inherits the lock and holds it to the end).
exec 9>"$vm_dir/lock"
flock -n 9 || {
    log "another run holds $vm_dir/lock; waiting"
    flock 9
}
JOBWORKER_VM_DIR=$vm_dir "$repo/.ci/vm/setup.sh"
t_setup=$(now)

# --- build ---------------------------------------------------------------------------
cd "$repo"
log "building the executor's tests and binaries for $target"
test_json=$vm_dir/cargo-tests.json
cargo test -p jobworker-executor --tests --no-run --locked --target "$target" \
    --message-format=json-render-diagnostics >"$test_json"
cargo build -p jobworker-executor -p jobworker-testkit --bins --locked --target "$target"
t_build=$(now)

# Integration test targets only (kind "test"), as "name<TAB>path".
mapfile -t tests < <(jq -r 'select(.reason == "compiler-artifact"
        and (.target.kind | index("test")) and .executable != null)
    | "\(.target.name)\t\(.executable)"' "$test_json" | sort -u)
((${#tests[@]} > 0)) || die "cargo named no integration test executable"

bin_dir=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/$target/debug

stage=$vm_dir/stage-run
rm -rf "$stage"
mkdir -p "$stage/opt/jobworker-tests" "$stage/usr/local/bin" "$stage/etc"

is_static() { ! readelf -l "$1" 2>/dev/null | grep -q INTERP; }

names=()
for entry in "${tests[@]}"; do
    name=${entry%%$'\t'*}
    exe=${entry#*$'\t'}
    is_static "$exe" || die "$exe is dynamically linked; the guest has no libc"
    cp "$exe" "$stage/opt/jobworker-tests/$name"
    names+=("$name")
done
for bin in jobworker-executor jobworker-probe; do
    if [[ -f $bin_dir/$bin ]]; then
        is_static "$bin_dir/$bin" || die "$bin_dir/$bin is dynamically linked"
        cp "$bin_dir/$bin" "$stage/usr/local/bin/$bin"
    elif [[ $bin == jobworker-probe ]]; then
        log "note: the executor crate has no $bin binary yet; the guest runs without it"
    else
        die "missing $bin_dir/$bin"
    fi
done
# The guest's root is an initramfs in its memory, and each test binary copies the probe
# once more: without debug information the binaries are a thirtieth of their size (a
# backtrace still names the functions, without line numbers).
find "$stage/opt/jobworker-tests" "$stage/usr/local/bin" -type f -exec strip --strip-debug {} +
printf '%s\n' "${JOBWORKER_VM_TEST_ARGS:-}" >"$stage/etc/jobworker-vmtest-args"
log "test binaries: ${names[*]}"

# Gzipped cpio archives concatenate: the kernel unpacks the base, then this on top.
run_initrd=$vm_dir/initramfs-run.cpio.gz
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
    cpio -o -H newc -R 0:0 --quiet | gzip -1) >"$vm_dir/tests.cpio.gz"
cat "$vm_dir/base-initramfs.cpio.gz" "$vm_dir/tests.cpio.gz" >"$run_initrd"
rm -rf "$stage"

# A fresh sparse scratch disk for io.max tests. cache=none needs O_DIRECT on the host
# file system; fall back to the page cache where it has none (tmpfs).
disk=$vm_dir/scratch.img
rm -f "$disk"
truncate -s "$disk_size" "$disk"
cache=none
if ! dd if=/dev/zero of="$disk" bs=4096 count=1 oflag=direct conv=notrunc status=none 2>/dev/null; then
    log "note: no O_DIRECT on $(dirname "$disk"); the scratch disk uses cache=writeback"
    cache=writeback
fi

# --- boot ----------------------------------------------------------------------------
serial_log=$vm_dir/serial.log
kernel=$vm_dir/kernel/current/vmlinuz
log "booting $(<"$vm_dir/kernel/current/release") (timeout ${timeout_s}s), serial log: $serial_log"
set +e
timeout -k 10 "$timeout_s" qemu-system-x86_64 \
    -accel tcg -m "$memory" -smp "$smp" -nographic -no-reboot \
    -bios /usr/share/qemu/qboot.rom -net none \
    -kernel "$kernel" -initrd "$run_initrd" \
    -append "console=ttyS0 quiet panic=-1 rdinit=/init ${JOBWORKER_VM_APPEND:-}" \
    -drive "file=$disk,format=raw,if=virtio,cache=$cache" \
    </dev/null 2>&1 | tee "$serial_log"
qemu_rc=${PIPESTATUS[0]}
set -e
t_boot=$(now)
rm -f "$disk" "$run_initrd" "$vm_dir/tests.cpio.gz"

# --- verdict -------------------------------------------------------------------------
results=$(tr -d '\r' <"$serial_log" | grep -oE 'VMTEST [^ ]+ (PASS|FAIL rc=[0-9]+)' || true)
passed=()
failed=()
missing=()
for name in "${names[@]}"; do
    line=$(grep -E "^VMTEST $name " <<<"$results" | tail -n 1 || true)
    case $line in
    *" PASS") passed+=("$name") ;;
    *" FAIL "*) failed+=("$name (${line##* })") ;;
    *) missing+=("$name") ;;
    esac
done
done_seen=0
tr -d '\r' <"$serial_log" | grep -q 'VMTEST-DONE' && done_seen=1

echo
log "timings: setup $((t_setup - t_start))s, build $((t_build - t_setup))s," \
    "guest $((t_boot - t_build))s, total $((t_boot - t_start))s"
status=0
if ((${#failed[@]} > 0)); then
    log "FAILED in the cgroup v2 guest: ${failed[*]}"
    status=1
fi
if ((${#missing[@]} > 0 || done_seen == 0)); then
    if [[ $qemu_rc == 124 || $qemu_rc == 137 ]]; then
        why="timed out after ${timeout_s}s"
    else
        why="the guest stopped early (QEMU exit status $qemu_rc)"
    fi
    running=$(tr -d '\r' <"$serial_log" | grep -oE 'VMTEST-RUN [^ ]+' | tail -n 1 || true)
    [[ -n $running ]] && why="$why, while running ${running#VMTEST-RUN }"
    log "the guest did not finish: $why"
    ((${#missing[@]} > 0)) && log "no result for: ${missing[*]}"
    status=2
elif [[ $qemu_rc != 0 ]]; then
    log "QEMU exited with status $qemu_rc after the tests"
    status=2
fi
# One closing line with the tests counted by the guest's test harnesses.
sums=$(tr -d '\r' <"$serial_log" |
    sed -nE 's/.*test result: [A-Za-z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p' |
    awk '{p += $1; f += $2} END {print p + 0, f + 0}')
n_passed=${sums% *}
n_failed=${sums#* }
if [[ $status != 0 ]] && ((n_failed < ${#failed[@]} + ${#missing[@]})); then
    n_failed=$((${#failed[@]} + ${#missing[@]}))
fi
echo "vmtests: $n_passed passed, $n_failed failed"
if [[ $status == 0 ]]; then
    log "PASS: ${#passed[@]} test binaries in the cgroup v2 guest: ${passed[*]}"
fi
log "serial log: $serial_log"
exit "$status"
