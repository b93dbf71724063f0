#!/usr/bin/env bash
# `make run`: the whole service in the foreground, for development.
#
# - builds the workspace (debug) and creates the development PKI in dev-pki/ if missing;
# - starts jobworker-executor as root and jobworker-api as `nobody`, the executor
#   allowing only nobody's uid on its socket; each job runs as an id of its own from
#   the executor's default range, never as the API server's user;
# - both log to this terminal, prefixed [executor] and [api];
# - Ctrl-C stops both (the executor stops its running jobs first) and removes what this
#   script created: the socket, the runtime directory and the executor's cgroup parent.
#
# Settings (environment): JOBWORKER_DEV_LISTEN (default 127.0.0.1:50051),
# JOBWORKER_DEV_STATE (default /var/lib/jobworker-dev-PORT: jobs survive restarts of make
# run). The runtime directory and the cgroup parent are named after the port too, so two
# instances on two ports run side by side.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

say() { printf 'make run: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root: the executor creates namespaces and cgroups (sudo make run)"

listen=${JOBWORKER_DEV_LISTEN:-127.0.0.1:50051}
port=${listen##*:}
[[ $port =~ ^[0-9]+$ ]] || die "JOBWORKER_DEV_LISTEN=$listen: expected HOST:PORT"
state=${JOBWORKER_DEV_STATE:-/var/lib/jobworker-dev-$port}
run_dir=/run/jobworker-dev-$port
api_user=nobody
cgroup_parent=jobworker-dev-$port

cargo build --workspace --locked
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin=$target/debug
"$bin/jobworker-dev-certs" dev-pki
# Under sudo, the development PKI belongs to the developer, who runs jobctl with it.
if [[ -n ${SUDO_UID:-} && -n ${SUDO_GID:-} ]]; then
    chown -R "$SUDO_UID:$SUDO_GID" dev-pki
fi
pki_note=
if [[ $(stat -c %u dev-pki/alice.key) == 0 ]]; then
    pki_note="  dev-pki/ belongs to root (make run was not started with sudo): use jobctl as root,
  or give the keys to your user first: sudo chown -R \$USER dev-pki
"
fi

api_uid=$(id -u "$api_user")
api_gid=$(id -g "$api_user")

if [[ -S $run_dir/executor.sock ]] && (exec 3<>/dev/tcp/"${listen%:*}"/"${listen##*:}") 2>/dev/null; then
    die "another make run seems to be running ($run_dir/executor.sock exists and $listen answers)"
fi
rm -rf "$run_dir"
install -d -m 0755 "$run_dir"
# What the unprivileged API server needs, where it can reach it whatever the checkout's
# permissions: its binary, certificate, key (0600, its own) and the client CA.
install -d -m 0700 -o "$api_uid" -g "$api_gid" "$run_dir/api"
install -m 0755 "$bin/jobworker-api" "$run_dir/jobworker-api"
install -m 0644 dev-pki/server.pem dev-pki/ca.pem "$run_dir/api/"
install -m 0600 -o "$api_uid" -g "$api_gid" dev-pki/server.key "$run_dir/api/server.key"

exec_pid=
api_pid=
cleanup() {
    trap - INT TERM EXIT
    say "stopping"
    [[ -n $api_pid ]] && kill -TERM "$api_pid" 2>/dev/null && wait "$api_pid" 2>/dev/null || true
    [[ -n $exec_pid ]] && kill -TERM "$exec_pid" 2>/dev/null && wait "$exec_pid" 2>/dev/null || true
    rm -rf "$run_dir"
    # The executor's parent cgroup (now empty: it removed every job group on the way out).
    for dir in /sys/fs/cgroup/*/"$cgroup_parent" /sys/fs/cgroup/"$cgroup_parent"; do
        [[ -d $dir ]] || continue
        find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || say "could not remove $dir (not empty?)"
    done
    say "stopped; nothing left running"
}
trap cleanup INT TERM EXIT

prefix() { sed -u "s/^/[$1] /"; }

JOBWORKER_LOG=${JOBWORKER_LOG:-info} "$bin/jobworker-executor" \
    --socket "$run_dir/executor.sock" \
    --socket-group "$api_gid" \
    --state-dir "$state" \
    --allow-uid "$api_uid" \
    --cgroup-parent "$cgroup_parent" \
    2> >(prefix executor >&2) &
exec_pid=$!
# Wait for the socket rather than sleeping a fixed time.
for _ in $(seq 300); do
    [[ -S $run_dir/executor.sock ]] && break
    kill -0 "$exec_pid" 2>/dev/null || die "the executor exited; see its log above"
    sleep 0.1
done
[[ -S $run_dir/executor.sock ]] || die "the executor did not create its socket"

setpriv --reuid "$api_uid" --regid "$api_gid" --clear-groups --no-new-privs \
    "$run_dir/jobworker-api" \
    --listen "$listen" \
    --tls-cert "$run_dir/api/server.pem" \
    --tls-key "$run_dir/api/server.key" \
    --tls-client-ca "$run_dir/api/ca.pem" \
    --executor-socket "$run_dir/executor.sock" \
    --admin admin \
    > >(prefix api) 2> >(prefix api >&2) &
api_pid=$!

cat >&2 <<EOF

  jobworker is starting: API on $listen, executor socket $run_dir/executor.sock.
  In another terminal, as alice:

    export JOBWORKER_SERVER=https://$( [[ ${listen%:*} == 127.0.0.1 ]] && echo localhost || echo "${listen%:*}" ):${listen##*:}
    export JOBWORKER_CA=$repo/dev-pki/ca.pem
    export JOBWORKER_CERT=$repo/dev-pki/alice.pem JOBWORKER_KEY=$repo/dev-pki/alice.key
    $bin/jobctl run -- uname -a

  (bob.pem/bob.key and admin.pem/admin.key are there too.) JOBWORKER_SERVER is needed
  whenever the server is anywhere but https://localhost:50051. Ctrl-C here stops
  everything.
$pki_note
EOF
# Either daemon ending ends the run.
wait -n "$exec_pid" "$api_pid" || true
say "a daemon exited"
