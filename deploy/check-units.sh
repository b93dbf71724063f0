#!/usr/bin/env bash
# Checks the deployment files without a running systemd (what `make test-units` runs):
#
#   1. `make install` into a temporary DESTDIR, for PREFIX=/usr/local and PREFIX=/usr:
#      exactly the expected files with the expected modes, units that name the installed
#      binaries, an existing configuration kept on reinstall, and `make uninstall`
#      leaving only the configuration.
#   2. `systemd-analyze verify` on every installed unit prints nothing and succeeds (the
#      units' binary paths are pointed into the DESTDIR, where the binaries are).
#   3. `systemd-analyze security --offline=yes`: the overall exposure of
#      jobworker-api.service is at most 1.5, of jobworker-executor.service at most 5.0.
#   4. systemd-sysusers and systemd-tmpfiles accept the entries and create the accounts
#      and directories as documented, in a scratch root (as root only; otherwise it
#      says SKIPPED).
#
# Deterministic: no timing, no network, nothing outside a temporary directory.
# The binaries come from JOBWORKER_INSTALL_FROM (default target/debug, which `make
# build` produces); their content is not examined, only where they go.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
from=${JOBWORKER_INSTALL_FROM:-target/debug}
api_max=1.5
executor_max=5.0

log() { printf 'check-units: %s\n' "$*"; }
failures=0
fail() {
    printf 'check-units: FAIL: %s\n' "$*" >&2
    failures=$((failures + 1))
}

for tool in systemd-analyze systemd-sysusers systemd-tmpfiles; do
    command -v "$tool" >/dev/null || {
        fail "$tool is missing (Debian package systemd; .ci/install-deps installs it)"
        exit 1
    }
done
for b in jobworker-executor jobworker-api jobctl; do
    [[ -x $from/$b ]] || {
        fail "$from/$b is missing: run \`make build\` first"
        exit 1
    }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

install_into() { # DESTDIR PREFIX
    make -s -C "$repo" install DESTDIR="$1" PREFIX="$2" INSTALL_FROM="$from" >"$tmp/make.log" 2>&1 ||
        {
            cat "$tmp/make.log" >&2
            return 1
        }
}

indent() { sed 's/^/  /' >&2; }

# The files of a tree, one "mode path" line each, sorted.
listing() { (cd "$1" && find . -type f -printf '%m %P\n' | LC_ALL=C sort); }

units=(jobworker-executor.socket jobworker-executor.service jobworker-api.service)

# --- 1. install and uninstall ----------------------------------------------------------
check_install() { # PREFIX
    local prefix=$1 root=$tmp/root${1//\//_}
    local p=${prefix#/}
    install_into "$root" "$prefix" || {
        fail "make install PREFIX=$prefix failed"
        return
    }
    local want
    want=$(
        LC_ALL=C sort <<EOF
755 $p/bin/jobworker-executor
755 $p/bin/jobworker-api
755 $p/bin/jobctl
644 $p/lib/systemd/system/jobworker-executor.socket
644 $p/lib/systemd/system/jobworker-executor.service
644 $p/lib/systemd/system/jobworker-api.service
644 $p/lib/sysusers.d/jobworker.conf
644 $p/lib/tmpfiles.d/jobworker.conf
600 etc/jobworker/executor.toml
644 etc/jobworker/api.toml
EOF
    )
    local got
    got=$(listing "$root")
    if [[ $got != "$want" ]]; then
        fail "PREFIX=$prefix: the installed tree differs from the expected one (- expected, + installed):"
        diff <(echo "$want") <(echo "$got") | sed -n 's/^[<>] /  &/p' >&2 || true
    else
        log "PREFIX=$prefix: installed tree OK ($(wc -l <<<"$got") files)"
    fi
    [[ $(stat -c %a "$root/etc/jobworker") == 755 ]] || fail "PREFIX=$prefix: /etc/jobworker is not 0755"

    # Each unit is its source with the binaries' installed directory filled in.
    local u
    for u in "${units[@]}"; do
        if ! diff <(sed "s|@BINDIR@|$prefix/bin|g" "deploy/$u") "$root/$p/lib/systemd/system/$u" >/dev/null; then
            fail "PREFIX=$prefix: $u is not deploy/$u with @BINDIR@=$prefix/bin"
        fi
        if grep -q '@[A-Z]*@' "$root/$p/lib/systemd/system/$u"; then
            fail "PREFIX=$prefix: $u still holds a placeholder"
        fi
    done
    grep -Eq "^ExecStart=$prefix/bin/jobworker-api " "$root/$p/lib/systemd/system/jobworker-api.service" ||
        fail "PREFIX=$prefix: jobworker-api.service does not run $prefix/bin/jobworker-api"
    grep -Eq "^ExecStart=$prefix/bin/jobworker-executor " "$root/$p/lib/systemd/system/jobworker-executor.service" ||
        fail "PREFIX=$prefix: jobworker-executor.service does not run $prefix/bin/jobworker-executor"
    cmp -s deploy/executor.toml "$root/etc/jobworker/executor.toml" ||
        fail "PREFIX=$prefix: /etc/jobworker/executor.toml is not deploy/executor.toml"
    cmp -s deploy/jobworker-api.toml "$root/etc/jobworker/api.toml" ||
        fail "PREFIX=$prefix: /etc/jobworker/api.toml is not deploy/jobworker-api.toml"

    # Reinstalling keeps an administrator's configuration, content and mode.
    echo "# edited by the administrator" >>"$root/etc/jobworker/api.toml"
    chmod 0640 "$root/etc/jobworker/api.toml"
    local before
    before=$(sha256sum <"$root/etc/jobworker/api.toml")
    install_into "$root" "$prefix" || fail "a second make install PREFIX=$prefix failed"
    [[ $(sha256sum <"$root/etc/jobworker/api.toml") == "$before" &&
        $(stat -c %a "$root/etc/jobworker/api.toml") == 640 ]] ||
        fail "PREFIX=$prefix: make install replaced an existing /etc/jobworker/api.toml"

    # Uninstall removes exactly what install put, and neither configuration nor state.
    make -s -C "$repo" uninstall DESTDIR="$root" PREFIX="$prefix" >"$tmp/make.log" 2>&1 ||
        fail "make uninstall PREFIX=$prefix failed: $(cat "$tmp/make.log")"
    got=$(listing "$root")
    want=$(printf '600 etc/jobworker/executor.toml\n640 etc/jobworker/api.toml\n' | LC_ALL=C sort)
    if [[ $got != "$want" ]]; then
        fail "PREFIX=$prefix: after make uninstall the tree holds:"
        indent <<<"$got"
    else
        log "PREFIX=$prefix: reinstall kept the configuration; uninstall left only it"
    fi
}
check_install /usr/local
check_install /usr

# --- 2. systemd-analyze verify --------------------------------------------------------
root=$tmp/verify-root
install_into "$root" /usr/local || fail "make install for verify failed"
mkdir -p "$tmp/verify"
for u in "${units[@]}"; do
    # verify checks that each ExecStart binary exists: point the paths into the DESTDIR.
    sed "s|/usr/local/bin/|$root/usr/local/bin/|g" "$root/usr/local/lib/systemd/system/$u" >"$tmp/verify/$u"
done
if out=$(systemd-analyze verify --man=no "${units[@]/#/$tmp/verify/}" 2>&1) && [[ -z $out ]]; then
    log "systemd-analyze verify: OK (${units[*]})"
else
    fail "systemd-analyze verify reported:"
    indent <<<"$out"
fi

# --- 3. exposure scores ---------------------------------------------------------------
score() { # UNIT FILE: prints the overall exposure level
    systemd-analyze security --offline=yes "$2" 2>&1 |
        sed -n "s/.*Overall exposure level for $1: \([0-9.]*\).*/\1/p"
}
for entry in "jobworker-api.service:$api_max" "jobworker-executor.service:$executor_max"; do
    u=${entry%%:*}
    max=${entry#*:}
    s=$(score "$u" "$root/usr/local/lib/systemd/system/$u")
    if [[ -z $s ]]; then
        fail "systemd-analyze security printed no overall exposure level for $u"
    elif awk -v s="$s" -v m="$max" 'BEGIN { exit !(s <= m) }'; then
        log "exposure of $u: $s (at most $max)"
    else
        fail "exposure of $u is $s, above $max"
    fi
done

# --- 4. sysusers.d and tmpfiles.d -----------------------------------------------------
if [[ $(id -u) != 0 ]]; then
    log "SKIPPED (needs root to create root-owned files): sysusers.d and tmpfiles.d in a scratch root"
    if ((failures > 0)); then
        log "$failures check(s) failed"
        exit 1
    fi
    log "all passed (one part skipped: not root)"
    exit 0
fi
sys=$tmp/sysroot
mkdir -p "$sys/etc"
if out=$(systemd-sysusers --root="$sys" "$root/usr/local/lib/sysusers.d/jobworker.conf" 2>&1); then
    for u in "jobworker:jobworker API server"; do
        name=${u%%:*}
        line=$(grep "^$name:" "$sys/etc/passwd" || true)
        IFS=: read -r _ _ uid gid gecos home shell <<<"$line"
        group_gid=$(awk -F: -v n="$name" '$1 == n { print $3 }' "$sys/etc/group")
        if [[ -z $line || $uid == 0 || $gid != "$group_gid" || $gecos != "${u#*:}" ||
            $home != /nonexistent || $shell != /usr/sbin/nologin ]]; then
            fail "sysusers: unexpected account for $name: '$line' (group id '$group_gid')"
        fi
    done
    if grep -q '^jobworker-job:' "$sys/etc/passwd"; then
        fail "sysusers: jobs have no account any more, but jobworker-job was created"
    fi
    log "sysusers.d: creates jobworker (own group, no home, nologin) and no account for jobs"
else
    fail "systemd-sysusers refused the entries: $out"
fi
if out=$(systemd-tmpfiles --root="$sys" --create "$root/usr/local/lib/tmpfiles.d/jobworker.conf" 2>&1); then
    for d in "var/lib/jobworker 700" "run/jobworker 755"; do
        [[ $(stat -c '%a %u %g' "$sys/${d% *}" 2>/dev/null) == "${d#* } 0 0" ]] ||
            fail "tmpfiles: /${d% *} is not root-owned with mode ${d#* }"
    done
    log "tmpfiles.d: /var/lib/jobworker 0700 root, /run/jobworker 0755 root"
else
    fail "systemd-tmpfiles refused the entries: $out"
fi

if ((failures > 0)); then
    log "$failures check(s) failed"
    exit 1
fi
log "all passed"
