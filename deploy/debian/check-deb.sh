#!/usr/bin/env bash
# Checks a built jobworker .deb without installing it (what `make test-deb` runs after
# `make deb`, which has already run lintian on it):
#
#   1. exactly the expected files, with their modes, all root's; directories 0755;
#   2. the control data: name, version, architecture, dependencies (the C library from
#      dpkg-shlibdeps, systemd), the two conffiles, md5sums that match every other file;
#   3. the units, sysusers.d and tmpfiles.d entries and the configuration are those of
#      deploy/ (the units with /usr/bin filled in), the maintainer scripts those of
#      deploy/debian, each executable and accepted by `dash -n`;
#   4. the binaries are stripped and run (--version), the manual pages are there, and
#      the copyright file lists the crates linked in.
#
# What installing, upgrading, removing and purging do under a real systemd is checked
# in a QEMU guest: deploy/systemd-vm/run.sh (`make test-systemd`).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
deb=${1:?usage: check-deb.sh PACKAGE.deb}
[[ -f $deb ]] || {
    echo "check-deb: no $deb: run \`make deb\` first" >&2
    exit 1
}

log() { printf 'check-deb: %s\n' "$*"; }
failures=0
fail() {
    printf 'check-deb: FAIL: %s\n' "$*" >&2
    failures=$((failures + 1))
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "$deb" "$tmp/root"
dpkg-deb -e "$deb" "$tmp/control"
root=$tmp/root

# --- 1. the tree -----------------------------------------------------------------------
want=$(
    LC_ALL=C sort <<'EOF'
-rw-r--r-- root/root etc/jobworker/api.toml
-rw------- root/root etc/jobworker/executor.toml
-rwxr-xr-x root/root usr/bin/jobctl
-rwxr-xr-x root/root usr/bin/jobworker-api
-rwxr-xr-x root/root usr/bin/jobworker-executor
-rw-r--r-- root/root usr/lib/systemd/system/jobworker-api.service
-rw-r--r-- root/root usr/lib/systemd/system/jobworker-executor.service
-rw-r--r-- root/root usr/lib/systemd/system/jobworker-executor.socket
-rw-r--r-- root/root usr/lib/sysusers.d/jobworker.conf
-rw-r--r-- root/root usr/lib/tmpfiles.d/jobworker.conf
-rw-r--r-- root/root usr/share/doc/jobworker/README.Debian
-rw-r--r-- root/root usr/share/doc/jobworker/changelog.gz
-rw-r--r-- root/root usr/share/doc/jobworker/copyright
-rw-r--r-- root/root usr/share/lintian/overrides/jobworker
-rw-r--r-- root/root usr/share/man/man1/jobctl.1.gz
-rw-r--r-- root/root usr/share/man/man1/jobworker-api.1.gz
-rw-r--r-- root/root usr/share/man/man1/jobworker-executor.1.gz
EOF
)
listing=$(dpkg-deb -c "$deb")
got=$(awk '$1 !~ /^d/ { sub(/^\.\//, "", $6); print $1, $2, $6 }' <<<"$listing" | LC_ALL=C sort)
if [[ $got == "$want" ]]; then
    log "contents: $(wc -l <<<"$got") files, modes and owners as expected"
else
    fail "contents differ (< expected, > in the package):"
    diff <(echo "$want") <(echo "$got") | grep '^[<>]' | sed 's/^/  /' >&2 || true
fi
bad_dirs=$(awk '$1 ~ /^d/ && ($1 != "drwxr-xr-x" || $2 != "root/root") { print $1, $2, $6 }' <<<"$listing")
[[ -z $bad_dirs ]] || fail "directories that are not root's 0755: $bad_dirs"

# --- 2. control data -------------------------------------------------------------------
field() { dpkg-deb -f "$deb" "$1"; }
[[ $(field Package) == jobworker ]] || fail "Package is '$(field Package)'"
[[ $(field Architecture) == "$(dpkg --print-architecture)" ]] || fail "Architecture is '$(field Architecture)'"
name=$(basename "$deb")
[[ $name == "jobworker_$(field Version)_$(field Architecture).deb" ]] ||
    fail "$name is not named jobworker_<version>_<arch>.deb for version $(field Version)"
depends=$(field Depends)
for want_dep in 'libc6 (>= ' 'systemd (>= 252)'; do
    [[ $depends == *"$want_dep"* ]] || fail "Depends ('$depends') lacks $want_dep"
done
[[ -n $(field Installed-Size) ]] || fail "no Installed-Size"
conffiles=$(cat "$tmp/control/conffiles")
[[ $conffiles == $'/etc/jobworker/api.toml\n/etc/jobworker/executor.toml' ]] ||
    fail "conffiles are: $conffiles"
if out=$(cd "$root" && md5sum --quiet -c "$tmp/control/md5sums" 2>&1); then
    n=$(wc -l <"$tmp/control/md5sums")
    files=$(awk '$1 ~ /^-/' <<<"$listing" | grep -vc ' \./etc/')
    [[ $n == "$files" ]] || fail "md5sums has $n entries for $files files outside /etc"
else
    fail "md5sums: $out"
fi
log "control: $(field Package) $(field Version) $(field Architecture); Depends: $depends"

# --- 3. files from deploy/ -------------------------------------------------------------
for u in jobworker-executor.socket jobworker-executor.service jobworker-api.service; do
    diff -q <(sed 's|@BINDIR@|/usr/bin|g' "$repo/deploy/$u") "$root/usr/lib/systemd/system/$u" >/dev/null ||
        fail "$u is not deploy/$u with @BINDIR@=/usr/bin"
done
for pair in "sysusers.d/jobworker.conf usr/lib/sysusers.d/jobworker.conf" \
    "tmpfiles.d/jobworker.conf usr/lib/tmpfiles.d/jobworker.conf" \
    "executor.toml etc/jobworker/executor.toml" "jobworker-api.toml etc/jobworker/api.toml" \
    "debian/lintian-overrides usr/share/lintian/overrides/jobworker" \
    "debian/README.Debian usr/share/doc/jobworker/README.Debian"; do
    cmp -s "$repo/deploy/${pair% *}" "$root/${pair#* }" || fail "/${pair#* } is not deploy/${pair% *}"
done
for s in postinst prerm postrm; do
    if [[ ! -x $tmp/control/$s ]]; then
        fail "no executable $s"
    elif ! cmp -s "$repo/deploy/debian/$s" "$tmp/control/$s"; then
        fail "$s is not deploy/debian/$s"
    elif ! out=$(dash -n "$tmp/control/$s" 2>&1); then
        fail "dash -n $s: $out"
    fi
done
log "units, entries, configuration and maintainer scripts: those of deploy/"

# --- 4. binaries, manual pages, copyright ----------------------------------------------
for b in jobworker-executor jobworker-api jobctl; do
    if readelf -S "$root/usr/bin/$b" | grep -Eq '\.symtab|\.debug_(info|line)'; then
        fail "$b is not stripped"
    fi
    out=$("$root/usr/bin/$b" --version 2>&1) || fail "$b --version: $out"
    [[ $out == "$b "* ]] || fail "$b --version printed '$out'"
    man=$(gzip -dc "$root/usr/share/man/man1/$b.1.gz")
    [[ $man == *".SH NAME"*"$b "* ]] || fail "the manual page of $b has no NAME section for it"
done
crates=$(grep -Ec '^ [a-z0-9_-]+ v[0-9][^:]*: ' "$root/usr/share/doc/jobworker/copyright" || true)
((crates > 50)) || fail "copyright lists $crates crates"
! grep -q '@[A-Z]*@' "$root/usr/share/doc/jobworker/copyright" || fail "copyright holds a placeholder"
log "binaries stripped and runnable, manual pages, copyright ($crates crates)"

if ((failures > 0)); then
    log "$failures check(s) failed"
    exit 1
fi
log "all passed"
