#!/usr/bin/env bash
# `make run`: the whole service in the foreground, for development.
#
# - builds the workspace (debug) and creates the development PKI in dev-pki/ if missing;
#   the PKI belongs to the user who runs jobctl with it: the one who ran sudo, or
#   JOBWORKER_DEV_USER; otherwise root keeps it (keys 0600, root only);
# - starts jobworker-executor as root and jobworker-api as `nobody`, the executor
#   allowing only nobody's uid on its socket; each job runs as an id of its own from
#   the instance's range, never as the API server's user;
# - both log to this terminal, prefixed [executor] and [api];
# - Ctrl-C stops both (the executor stops its running jobs first) and removes what this
#   script created: the socket, the runtime directory and the executor's cgroup parent.
#
# Instances: each run is an instance with a name (default `dev`), which names its
# runtime directory /run/jobworker-NAME (socket, the API server's files, a lock that
# keeps a second run of the same instance out), its state directory
# /var/lib/jobworker-NAME, its cgroup parent jobworker-NAME and its range of job ids. So
# two instances with different names run side by side:
#
#   sudo make run                                   # instance dev, port 50051
#   sudo JOBWORKER_DEV_INSTANCE=two make run         # instance two, a free port
#
# Settings (environment):
#   JOBWORKER_DEV_INSTANCE  the instance's name: letters, digits and dashes (default dev)
#   JOBWORKER_DEV_LISTEN    the API server's address (default 127.0.0.1:50051 for the
#                           instance dev, 127.0.0.1:0, a free port, for any other); the
#                           address in use is printed, with the JOBWORKER_SERVER to set
#   JOBWORKER_DEV_METRICS   the metrics page's address (default 127.0.0.1:9464 for dev,
#                           a free port for any other)
#   JOBWORKER_DEV_STATE     the state directory (default /var/lib/jobworker-NAME: jobs
#                           survive restarts of make run)
#   JOBWORKER_DEV_JOB_IDS   the job ids, FIRST-LAST (default: the executor's own range,
#                           600000-665535, for dev; for any other, the first range of
#                           1024 ids from 700000 on that no running instance holds)
#   JOBWORKER_DEV_USER      who gets dev-pki/ when not run through sudo (default: the
#                           user who ran sudo; root otherwise)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

say() { printf 'make run: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root: the executor creates namespaces and cgroups (sudo make run)"

instance=${JOBWORKER_DEV_INSTANCE:-dev}
[[ $instance =~ ^[A-Za-z0-9][A-Za-z0-9-]{0,31}$ ]] ||
    die "JOBWORKER_DEV_INSTANCE must be 1-32 letters, digits or dashes, not '$instance'"
if [[ $instance == dev ]]; then
    listen=${JOBWORKER_DEV_LISTEN:-127.0.0.1:50051}
    metrics=${JOBWORKER_DEV_METRICS:-127.0.0.1:9464}
else
    listen=${JOBWORKER_DEV_LISTEN:-127.0.0.1:0}
    metrics=${JOBWORKER_DEV_METRICS:-127.0.0.1:0}
fi
job_ids=${JOBWORKER_DEV_JOB_IDS:-}
state=${JOBWORKER_DEV_STATE:-/var/lib/jobworker-$instance}
run_dir=/run/jobworker-$instance
api_user=nobody
cgroup_parent=jobworker-$instance

# Who gets the development PKI: the user who ran sudo, or JOBWORKER_DEV_USER.
pki_user=${JOBWORKER_DEV_USER:-}
if [[ -n $pki_user ]]; then
    id -u "$pki_user" >/dev/null 2>&1 || die "JOBWORKER_DEV_USER: no user '$pki_user'"
elif [[ -n ${SUDO_UID:-} ]]; then
    pki_user=$SUDO_UID
fi

# One run per instance: a lock held as long as this script (and the daemons) run.
exec 9>"/run/jobworker-$instance.lock"
flock -n 9 || die "the instance '$instance' is already running; start another one with JOBWORKER_DEV_INSTANCE=NAME make run"
# From here on, whatever ends the run (Ctrl-C, SIGTERM, an error) cleans up.
exec_pid=
api_pid=
cleanup() {
    trap - INT TERM EXIT
    say "stopping"
    [[ -n $api_pid ]] && kill -TERM "$api_pid" 2>/dev/null && wait "$api_pid" 2>/dev/null || true
    [[ -n $exec_pid ]] && kill -TERM "$exec_pid" 2>/dev/null && wait "$exec_pid" 2>/dev/null || true
    rm -rf "$run_dir" "/run/jobworker-$instance.lock"
    # The executor's parent cgroup (now empty: it removed every job group on the way out).
    for dir in /sys/fs/cgroup/*/"$cgroup_parent" /sys/fs/cgroup/"$cgroup_parent"; do
        [[ -d $dir ]] || continue
        find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || say "could not remove $dir (not empty?)"
    done
    say "stopped; nothing left running"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# An instance but dev takes the first free one of 64 ranges of 1024 job ids, from 700000
# on, and holds its lock (in /run/jobworker-dev-ids, kept) as long as it runs: two
# instances that run at once never give jobs the same id.
if [[ $instance != dev && -z $job_ids ]]; then
    install -d -m 0755 /run/jobworker-dev-ids
    for slot in $(seq 0 63); do
        exec 8>"/run/jobworker-dev-ids/$slot.lock"
        if flock -n 8; then
            job_ids=$((700000 + slot * 1024))-$((700000 + slot * 1024 + 1023))
            break
        fi
        exec 8>&-
    done
    [[ -n $job_ids ]] || die "all 64 ranges of job ids are taken: set JOBWORKER_DEV_JOB_IDS"
fi

cargo build --workspace --locked
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin=$target/debug
# One at a time: two instances starting at once would both create a missing dev-pki/.
flock -w 60 /run/jobworker-dev-certs.lock "$bin/jobworker-dev-certs" dev-pki
# The development PKI belongs to the developer, who runs jobctl with it.
if [[ -n $pki_user ]]; then
    chown -R "$(id -u "$pki_user"):$(id -g "$pki_user")" dev-pki
fi

api_uid=$(id -u "$api_user")
api_gid=$(id -g "$api_user")

rm -rf "$run_dir"
install -d -m 0755 "$run_dir"
# What the unprivileged API server needs, where it can reach it whatever the checkout's
# permissions: its binary, certificate, key (0600, its own) and the client CA.
install -d -m 0700 -o "$api_uid" -g "$api_gid" "$run_dir/api"
install -m 0755 "$bin/jobworker-api" "$run_dir/jobworker-api"
install -m 0644 dev-pki/server.pem dev-pki/ca.pem "$run_dir/api/"
install -m 0600 -o "$api_uid" -g "$api_gid" dev-pki/server.key "$run_dir/api/server.key"

prefix() { sed -u "s/^/[$1] /"; }

JOBWORKER_LOG=${JOBWORKER_LOG:-info} "$bin/jobworker-executor" \
    --socket "$run_dir/executor.sock" \
    --socket-group "$api_gid" \
    --state-dir "$state" \
    --allow-uid "$api_uid" \
    --cgroup-parent "$cgroup_parent" \
    ${job_ids:+--job-ids "$job_ids"} \
    2> >(prefix executor >&2) &
exec_pid=$!
# Wait for the socket rather than sleeping a fixed time.
for _ in $(seq 300); do
    [[ -S $run_dir/executor.sock ]] && break
    kill -0 "$exec_pid" 2>/dev/null || die "the executor exited; see its log above"
    sleep 0.1
done
[[ -S $run_dir/executor.sock ]] || die "the executor did not create its socket"

: >"$run_dir/api.stdout"
setpriv --reuid "$api_uid" --regid "$api_gid" --clear-groups --no-new-privs \
    "$run_dir/jobworker-api" \
    --listen "$listen" \
    --metrics-listen "$metrics" \
    --tls-cert "$run_dir/api/server.pem" \
    --tls-key "$run_dir/api/server.key" \
    --tls-client-ca "$run_dir/api/ca.pem" \
    --executor-socket "$run_dir/executor.sock" \
    --admin admin \
    > >(tee "$run_dir/api.stdout" | prefix api) 2> >(prefix api >&2) &
api_pid=$!
# The address it listens on (a free port when asked for port 0), from its stdout.
addr=
for _ in $(seq 300); do
    addr=$(sed -n 's/^jobworker-api listening on //p' "$run_dir/api.stdout")
    [[ -n $addr ]] && break
    kill -0 "$api_pid" 2>/dev/null || die "the API server exited; see its log above"
    sleep 0.1
done
[[ -n $addr ]] || die "the API server did not say where it listens"
metrics_addr=$(sed -n 's/^jobworker-api metrics on //p' "$run_dir/api.stdout")
host=${addr%:*}
case $host in
127.0.0.1 | 0.0.0.0 | "[::]" | "[::1]") host=localhost ;; # a name of the server's certificate
esac
server=https://$host:${addr##*:}

who="an ordinary user"
note=
if [[ -n $pki_user ]]; then
    who=$(id -un "$pki_user")
    if ! setpriv --reuid "$(id -u "$pki_user")" --regid "$(id -g "$pki_user")" --init-groups \
        test -r "$repo/dev-pki/alice.key"; then
        note="  NOTE: $who cannot read $repo/dev-pki/alice.key: a directory above it is
  closed to them. Use a checkout they can reach, or copy dev-pki/ to them."
    fi
else
    note="  NOTE: dev-pki/ is root's, and its keys are readable by root only (mode 0600). To
  use jobctl as another user, start make run with sudo from that user's account, or as
  root with JOBWORKER_DEV_USER=<user>, which gives dev-pki/ to <user>."
fi

cat >&2 <<EOF

  jobworker instance '$instance' is listening on $addr; executor socket
  $run_dir/executor.sock, state $state, metrics on http://$metrics_addr/metrics.
  In another terminal, as $who:

    export JOBWORKER_SERVER=$server
    export JOBWORKER_CA=$repo/dev-pki/ca.pem
    export JOBWORKER_CERT=$repo/dev-pki/alice.pem JOBWORKER_KEY=$repo/dev-pki/alice.key
    $bin/jobctl run -- uname -a

  (bob.pem/bob.key and admin.pem/admin.key are there too.) Ctrl-C here stops everything.
${note:+
$note
}
EOF
# Either daemon ending ends the run.
wait -n "$exec_pid" "$api_pid" || true
say "a daemon exited"
