#!/usr/bin/env bash
# Checks that two `make run` instances run side by side (what `make test-dev-run` runs, as
# root; otherwise it says SKIPPED):
#
#   1. deploy/dev-run.sh twice, as instances of their own names, each on a free port;
#   2. a third run with the first one's name is refused while the first runs;
#   3. each answers jobctl on the address it printed, runs jobs with ids from its own
#      range, and knows only its own jobs; each has its own runtime directory, state
#      directory and cgroup parent;
#   4. SIGTERM (as the service manager or Ctrl-C would stop it) ends each, with its
#      daemons, and removes its runtime directory, lock and cgroup parent.
#
# The instances use the checkout's dev-pki/ as `make run` does (created if missing, never
# given to another user), and state directories in a temporary directory. Every wait is
# bounded; only the processes started here are signalled, by pid.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
log() { printf 'check-dev-run: %s\n' "$*"; }
failures=0
fail() {
    printf 'check-dev-run: FAIL: %s\n' "$*" >&2
    failures=$((failures + 1))
}

if [[ $(id -u) != 0 ]]; then
    log "SKIPPED two make run instances side by side: needs root"
    exit 0
fi

tmp=$(mktemp -d)
chmod 0755 "$tmp"
names=("check-a-$$" "check-b-$$")
declare -A pid=() server=()
cleanup() {
    local n
    for n in "${!pid[@]}"; do
        kill -TERM "${pid[$n]}" 2>/dev/null || true
    done
    for n in "${!pid[@]}"; do
        wait "${pid[$n]}" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

# wait_line FILE PATTERN SECONDS PID: until a line of FILE matches (polled, bounded), or
# process PID has exited.
wait_line() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -q -- "$2" "$1" 2>/dev/null && return 0
        kill -0 "$4" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

start() { # NAME
    JOBWORKER_DEV_INSTANCE=$1 JOBWORKER_DEV_STATE=$tmp/state-$1 JOBWORKER_DEV_USER= \
        SUDO_UID= SUDO_GID= deploy/dev-run.sh >"$tmp/$1.log" 2>&1 &
    pid[$1]=$!
}

# --- 1, 2: two instances, and a refused third ---------------------------------------------
for n in "${names[@]}"; do
    start "$n"
done
for n in "${names[@]}"; do
    if wait_line "$tmp/$n.log" "export JOBWORKER_SERVER=" 180 "${pid[$n]}"; then
        server[$n]=$(sed -n 's/^ *export JOBWORKER_SERVER=//p' "$tmp/$n.log")
        log "instance $n: ${server[$n]}"
    else
        fail "instance $n did not start:"
        tail -n 20 "$tmp/$n.log" | sed 's/^/  /' >&2
    fi
done
((failures == 0)) || exit 1
[[ ${server[${names[0]}]} != "${server[${names[1]}]}" ]] ||
    fail "both instances listen on ${server[${names[0]}]}"

JOBWORKER_DEV_INSTANCE=${names[0]} timeout 120 deploy/dev-run.sh >"$tmp/third.log" 2>&1 && rc=0 || rc=$?
if [[ $rc != 0 ]] && grep -q "instance '${names[0]}' is already running" "$tmp/third.log"; then
    log "a second run of instance ${names[0]} is refused while it runs"
else
    fail "a second run of instance ${names[0]} (exit $rc): $(tail -n 3 "$tmp/third.log")"
fi

# --- 3: each serves its own jobs, ids and directories -------------------------------------
jobctl() { # NAME ARGS...
    local n=$1
    shift
    env -i PATH=/usr/bin:/bin HOME="$tmp" JOBWORKER_SERVER="${server[$n]}" \
        JOBWORKER_CA="$repo/dev-pki/ca.pem" JOBWORKER_CERT="$repo/dev-pki/alice.pem" \
        JOBWORKER_KEY="$repo/dev-pki/alice.key" timeout 60 target/debug/jobctl "$@"
}
declare -A job=() uid=()
for n in "${names[@]}"; do
    job[$n]=$(jobctl "$n" start -- sh -c 'id -u') || fail "instance $n: jobctl start"
    uid[$n]=$(jobctl "$n" logs -f "${job[$n]}") || fail "instance $n: jobctl logs"
    [[ -d /run/jobworker-$n && -S /run/jobworker-$n/executor.sock ]] ||
        fail "instance $n: no socket in /run/jobworker-$n"
    [[ -n $(ls -A "$tmp/state-$n" 2>/dev/null) ]] || fail "instance $n: nothing in its state directory"
    compgen -G "/sys/fs/cgroup/*/jobworker-$n" >/dev/null || [[ -d /sys/fs/cgroup/jobworker-$n ]] ||
        fail "instance $n: no cgroup parent jobworker-$n"
done
a=${names[0]} b=${names[1]}
[[ ${uid[$a]} =~ ^[0-9]+$ && ${uid[$b]} =~ ^[0-9]+$ && ${uid[$a]} != "${uid[$b]}" ]] ||
    fail "jobs of the two instances ran as '${uid[$a]}' and '${uid[$b]}'"
if jobctl "$b" status "${job[$a]}" >/dev/null 2>&1; then
    fail "instance $b knows instance $a's job"
fi
jobctl "$a" list | grep -q "${job[$a]}" || fail "instance $a does not list its own job"
log "each instance runs its own jobs (as uids ${uid[$a]} and ${uid[$b]}), in its own directories and cgroups"

# --- 4: SIGTERM ends each, and it cleans up ------------------------------------------------
for n in "${names[@]}"; do
    kill -TERM "${pid[$n]}"
    rc=0
    timeout_at=$((SECONDS + 60))
    while kill -0 "${pid[$n]}" 2>/dev/null && ((SECONDS < timeout_at)); do
        sleep 0.1
    done
    if kill -0 "${pid[$n]}" 2>/dev/null; then
        fail "instance $n did not stop within 60 s"
        continue
    fi
    wait "${pid[$n]}" 2>/dev/null || rc=$?
    unset "pid[$n]"
    grep -q "stopped; nothing left running" "$tmp/$n.log" || fail "instance $n: no clean stop (exit $rc)"
    left=$(compgen -G "/sys/fs/cgroup/*/jobworker-$n" || true)
    [[ -e /run/jobworker-$n || -e /run/jobworker-$n.lock || -n $left ]] &&
        fail "instance $n left /run/jobworker-$n, its lock or its cgroup parent ($left)"
    pgrep -f "jobworker-$n/" >/dev/null && fail "instance $n left processes: $(pgrep -af "jobworker-$n/")"
done
log "SIGTERM stopped both; no runtime directory, lock, cgroup parent or process left"

if ((failures > 0)); then
    log "$failures check(s) failed"
    exit 1
fi
log "all passed"
