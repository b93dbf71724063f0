#!/bin/bash
# Runs inside the systemd guest that run.sh boots (as jobworker-vmcheck.service): installs
# the package with apt, enables and uses the units, upgrades the package, removes it and
# purges it. Prints one line per check on the console:
#   VMCHECK PASS <what>
#   VMCHECK FAIL <what>: <why>
#   VMCHECK INFO <what>: <value>        facts for the documentation
#   VMCHECK-DONE <passed> <failed>      then the guest powers off
# Waits are polls with a bound: the guest runs under software emulation.
set -u
export PATH=/usr/local/bin:/usr/bin:/usr/sbin
export JOBWORKER_SERVER=https://localhost:50051
export JOBWORKER_CA=/root/pki/ca.pem JOBWORKER_CERT=/root/pki/alice.pem JOBWORKER_KEY=/root/pki/alice.key
probe=/usr/local/libexec/jobworker-probe
cg=/sys/fs/cgroup/system.slice/jobworker-executor.service
dropins=/run/systemd/system/jobworker-executor.service.d
debs=/var/tmp/jobworker
units=(jobworker-executor.socket jobworker-executor.service jobworker-api.service)
{
    read -r version1
    read -r version2
} <"$debs/versions"
export DEBIAN_FRONTEND=noninteractive

passed=0
failed=0
ok() {
    echo "VMCHECK PASS $*"
    passed=$((passed + 1))
}
bad() {
    echo "VMCHECK FAIL $*"
    failed=$((failed + 1))
}
info() { echo "VMCHECK INFO $*"; }
# expect NAME WANT GOT: passes when GOT equals WANT.
expect() {
    if [[ $3 == "$2" ]]; then ok "$1"; else bad "$1: expected '$2', got '$3'"; fi
}
# expect_match NAME REGEX GOT
expect_match() {
    if [[ $3 =~ $2 ]]; then ok "$1"; else bad "$1: expected /$2/, got '$3'"; fi
}
one_line() { tr '\n' ' ' | sed 's/  */ /g; s/ $//'; }
status_field() { sed -n "s/^$2:[[:space:]]*\([^[:space:]]*\).*/\1/p" "/proc/$1/status"; }
json_field() { tr -d ' \n' | sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p"; }

wait_for() { # TRIES CMD...: runs CMD once a second until it succeeds
    local n=$1
    shift
    for ((i = 0; i < n; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 1
    done
    return 1
}
api_ready() { jobctl list; }
executor_pid() { systemctl show -p MainPID --value jobworker-executor.service; }
restart_executor() {
    systemctl daemon-reload
    systemctl reset-failed jobworker-executor.service
    systemctl restart jobworker-executor.service
    wait_for 120 api_ready
}
# A job that reports SIGTERM, for stop tests; prints its id once the trap is set.
start_trap_job() {
    local id
    id=$(jobctl start -- sh -c 'trap "echo got-term; exit 3" TERM; echo ready; while :; do sleep 1; done') || return 1
    wait_for 60 sh -c "jobctl logs $id | grep -q ready" || return 1
    echo "$id"
}

# apt ARGS, its output kept in /var/tmp/apt.log; its last lines are printed when it fails.
apt_run() {
    if apt "$@" >/var/tmp/apt.log 2>&1; then
        return 0
    fi
    tail -n 15 /var/tmp/apt.log | one_line
    return 1
}
# The daemons' processes (by path: a process name holds only 15 characters).
daemons() { pgrep -f '^/usr/bin/jobworker-(api|executor)' | one_line; }
pkg_status() { dpkg-query -W -f='${db:Status-Abbrev}${Version}' jobworker 2>/dev/null; }
# "yes" when no path given exists, else the ones that do.
none_exist() {
    local left=() p
    for p in "$@"; do [[ -e $p || -L $p ]] && left+=("$p"); done
    if ((${#left[@]} == 0)); then echo yes; else echo "${left[*]}"; fi
}
enable_links=(/etc/systemd/system/sockets.target.wants/jobworker-executor.socket
    /etc/systemd/system/multi-user.target.wants/jobworker-api.service)

info "kernel: $(uname -r), systemd $(systemctl --version | head -n 1 | cut -d' ' -f2)"

# --- the package: installed, nothing enabled or started --------------------------------
expect "no jobworker account before the package" "" "$(getent passwd jobworker)"
if out=$(cd "$debs/1" && apt_run install -y ./jobworker_*.deb); then
    ok "apt install ./jobworker_*.deb, offline"
else
    bad "apt install ./jobworker_*.deb: $out"
fi
expect "installed: version $version1" "ii $version1" "$(pkg_status)"
expect_match "installed: postinst created jobworker" '^jobworker:x:[0-9]+:[0-9]+:jobworker API server:/nonexistent:/usr/sbin/nologin$' "$(getent passwd jobworker)"
expect "installed: no account for jobs (each runs as an id of its own)" "" "$(getent passwd jobworker-job)"
expect "installed: /var/lib/jobworker" "700 root root" "$(stat -c '%a %U %G' /var/lib/jobworker 2>&1)"
expect "installed: /run/jobworker" "755 root root" "$(stat -c '%a %U %G' /run/jobworker 2>&1)"
expect "installed: configuration" "600 root executor.toml 644 root api.toml" "$(stat -c '%a %U %n' /etc/jobworker/executor.toml /etc/jobworker/api.toml 2>&1 | sed 's|/etc/jobworker/||' | one_line)"
expect "installed: nothing enabled" "disabled disabled" "$(systemctl is-enabled jobworker-executor.socket jobworker-api.service 2>&1 | one_line)"
expect "installed: nothing started" "inactive inactive inactive" "$(systemctl is-active "${units[@]}" 2>&1 | one_line)"
expect "installed: no daemon process" "" "$(daemons)"
info "installed: $(systemctl cat jobworker-api.service 2>&1 | head -n 1)"

# --- enabling, as README.Debian says ----------------------------------------------------
install -m 0644 /root/pki/server.pem /root/pki/ca.pem /etc/jobworker/
install -m 0600 /root/pki/server.key /etc/jobworker/
if out=$(systemctl enable --now jobworker-executor.socket jobworker-api.service 2>&1); then
    ok "systemctl enable --now jobworker-executor.socket jobworker-api.service"
else
    bad "systemctl enable --now: $out"
fi
if wait_for 180 api_ready; then ok "API server answers"; else
    bad "API server answers: $(jobctl list 2>&1); $(journalctl -b -u jobworker-api -u jobworker-executor --no-pager | tail -n 20 | one_line)"
fi
expect "executor socket" "660 root jobworker socket" "$(stat -c '%a %U %G %F' /run/jobworker/executor.sock 2>&1)"
expect "executor started by socket activation" "active" "$(systemctl is-active jobworker-executor.service)"

out=$(jobctl run -- echo hello 2>&1)
expect "jobctl run -- echo hello" "hello" "$out"
if id=$(jobctl start -- sh -c 'for i in 1 2 3; do echo "line $i"; sleep 1; done'); then
    expect "jobctl logs -f streams a running job to its end" "line 1 line 2 line 3" "$(jobctl logs -f "$id" 2>&1 | one_line)"
else
    bad "jobctl start of a job to stream: $id"
fi

# --- the processes ---------------------------------------------------------------------
epid=$(executor_pid)
apid=$(systemctl show -p MainPID --value jobworker-api.service)
# CAP_CHOWN 0, CAP_KILL 5, CAP_SETGID 6, CAP_SETUID 7, CAP_SETPCAP 8, CAP_NET_ADMIN 12,
# CAP_SYS_ADMIN 21, CAP_MKNOD 27
expect "executor bounding set" "00000000082011e1" "$(status_field "$epid" CapBnd)"
expect "executor effective set" "00000000082011e1" "$(status_field "$epid" CapEff)"
expect "executor no_new_privs" "1" "$(status_field "$epid" NoNewPrivs)"
expect "executor seccomp" "2" "$(status_field "$epid" Seccomp)"
expect "executor cgroup" "0::/system.slice/jobworker-executor.service/supervisor" "$(cat "/proc/$epid/cgroup")"
expect "executor network namespace is private" "yes" "$([[ $(readlink "/proc/$epid/ns/net") != "$(readlink /proc/1/ns/net)" ]] && echo yes || echo no)"
expect "API server user" "$(id -u jobworker)" "$(status_field "$apid" Uid)"
expect "API server bounding set" "0000000000000000" "$(status_field "$apid" CapBnd)"
expect "API server no_new_privs" "1" "$(status_field "$apid" NoNewPrivs)"
expect "API server seccomp" "2" "$(status_field "$apid" Seccomp)"
cred=/run/credentials/jobworker-api.service/server.key
info "credential file: $(stat -c '%a %U:%G' $cred 2>&1) on $(stat -f -c %T "${cred%/*}" 2>&1)"
expect "API server's key from LoadCredential= (0400, its own user)" "400 jobworker" "$(stat -c '%a %U' $cred 2>&1)"

# --- what a job sees -------------------------------------------------------------------
inspect=$(jobctl run -- "$probe" inspect 2>&1)
info "probe inspect: $(one_line <<<"$inspect")"
expect "job: only lo" '["lo"]' "$(tr -d ' \n' <<<"$inspect" | sed -n 's/.*"interfaces":\(\[[^]]*\]\).*/\1/p')"
expect "job: lo is up" "true" "$(json_field lo_up <<<"$inspect")"
expect "job: no capabilities" "0000000000000000" "$(json_field cap_bnd <<<"$inspect")"
uid=$(json_field uid <<<"$inspect" | sed 's/\\t.*//')
expect "job: uid of its own, from job_ids" "yes" "$([[ $uid -ge 600000 && $uid -le 665535 ]] && echo yes || echo "no: $uid")"
id=$(jobctl start -- sleep 1000)
jobdir=$cg/jobs/$id
expect "job cgroup under the delegated subtree" "yes" "$([[ -f $jobdir/memory.max && -f $jobdir/pids.max ]] && echo yes || echo "no: $(find "$cg" -maxdepth 2 -type d | one_line)")"
expect_match "controllers enabled for jobs" 'cpu.*io.*memory.*pids|cpu io memory pids' "$(cat "$cg/jobs/cgroup.subtree_control")"
jobctl stop "$id" >/dev/null

# socket(2) families: the unit's RestrictAddressFamilies= binds jobs (97 = EAFNOSUPPORT).
# shellcheck disable=SC2016 # perl code
families='use Socket; for my $f ([40,1,"vsock"],[17,3,"packet"],[38,5,"alg"],[31,5,"bluetooth"]) { print "$f->[2]=", (socket(my $s, $f->[0], $f->[1], 0) ? "ok" : $!+0), " " }'
info "socket families as root outside the units: $(perl -e "$families")"
expect "job: vsock, packet, alg, bluetooth sockets refused" "vsock=97 packet=97 alg=97 bluetooth=97" "$(jobctl run -- perl -e "$families" | one_line)"
# shellcheck disable=SC2016 # perl code
expect "job: TCP over IPv6 lo" "ok" "$(jobctl run -- perl -e 'use Socket qw(:all); socket(my $l, AF_INET6, SOCK_STREAM, 0) or die "$!"; bind($l, pack_sockaddr_in6(0, inet_pton(AF_INET6, "::1"))) or die "$!"; listen($l, 1) or die; socket(my $c, AF_INET6, SOCK_STREAM, 0) or die; connect($c, getsockname($l)) or die "$!"; print "ok"' 2>&1)"

# Files: read-only host, no home directories, no state, no private configuration.
expect_match "job: /home is hidden" 'Permission denied|No such file' "$(jobctl run -- cat /home/alice/notes.txt 2>&1)"
expect_match "job: world-writable host directory is read-only" 'Read-only file system' "$(jobctl run -- touch /srv/dropbox/x 2>&1)"
expect "job: /tmp and /var/tmp are writable" "ok" "$(jobctl run -- sh -c 'touch /tmp/x /var/tmp/x && echo ok' 2>&1)"
expect_match "job: state directory closed" 'Permission denied' "$(jobctl run -- ls /var/lib/jobworker 2>&1)"
expect_match "job: executor.toml closed" 'Permission denied' "$(jobctl run -- cat /etc/jobworker/executor.toml 2>&1)"
# A device node of the host that its mode would let anyone open: not in the job's own
# /dev, and refused elsewhere in the host's tree, which the job sees (the device cgroup of
# DevicePolicy=closed, or a nodev mount).
mknod -m 0666 /srv/ttyS0-node c 4 64
expect_match "job: the host's devices are not in its /dev" 'No such file' "$(jobctl run -- sh -c ': </dev/ttyS0' 2>&1)"
out=$(jobctl run -- sh -c ': </srv/ttyS0-node' 2>&1)
info "job: a world-writable device node of the host: $out"
expect_match "job: a world-writable device node of the host refused" 'Operation not permitted|Permission denied' "$out"
expect "job: /dev/null usable" "ok" "$(jobctl run -- sh -c 'echo x >/dev/null && echo ok' 2>&1)"

# --- stop, restart, crash ---------------------------------------------------------------
if id=$(start_trap_job); then
    jobctl stop "$id" >/dev/null
    expect_match "stop: SIGTERM reaches the job" '^ready .*got-term$' "$(jobctl logs "$id" | one_line)"
    expect "stop: state" "stopped" "$(jobctl status -o json "$id" | json_field state)"
else
    bad "stop: the trap job did not start"
fi

id=$(jobctl start -- sleep 1000)
systemctl restart jobworker-executor.service
wait_for 120 api_ready
expect "restart: a running job is stopped, not orphaned" "stopped" "$(jobctl status -o json "$id" | json_field state)"
expect "restart: no job process left" "" "$(pgrep -x sleep | one_line)"

id=$(jobctl start -- sleep 1000)
old=$(executor_pid)
systemctl kill --kill-whom=main -s SIGKILL jobworker-executor.service
wait_for 120 sh -c "p=\$(systemctl show -p MainPID --value jobworker-executor.service); [ \"\$p\" != 0 ] && [ \"\$p\" != $old ]"
wait_for 120 api_ready
expect "crash: Restart=on-failure brought the executor back" "active" "$(systemctl is-active jobworker-executor.service)"
expect "crash: the running job is lost" "lost" "$(jobctl status -o json "$id" | json_field state)"
expect "crash: no job process left" "" "$(pgrep -x sleep | one_line)"
expect "crash: stale job cgroup removed" "no" "$([[ -d $cg/jobs/$id ]] && echo yes || echo no)"

# --- each capability kept, and each setting left out, is needed -------------------------
# One drop-in at a time; the executor must then fail to start or its jobs fail to start
# (or, for CAP_KILL, the job must not get its SIGTERM). The messages are recorded for
# the documentation.
mkdir -p "$dropins"
try_dropin() { # LABEL CONTENT
    printf '[Service]\n%s\n' "$2" >"$dropins/test.conf"
    systemctl daemon-reload
    systemctl reset-failed jobworker-executor.service 2>/dev/null
    local since pid serving=no why log
    since=$(date +%s)
    systemctl restart jobworker-executor.service
    pid=$(executor_pid)
    for ((i = 0; i < 120; i++)); do
        [[ $pid != 0 && -d /proc/$pid ]] || break
        if jobctl list >/dev/null 2>&1; then
            serving=yes
            break
        fi
        sleep 1
    done
    if [[ $serving == yes ]]; then
        if why=$(jobctl run -- true 2>&1); then
            bad "$1: a job still ran"
            return
        fi
    else
        why="the executor does not start"
    fi
    log=$(journalctl -b -u jobworker-executor.service --since "@$since" -o cat --no-pager |
        grep -E 'ERROR|jobworker-executor:' | tail -n 1)
    info "$1: $(one_line <<<"$why") | executor log: $log"
    ok "$1: no job can run"
}
for cap in CAP_SYS_ADMIN CAP_SETUID CAP_SETGID CAP_SETPCAP CAP_NET_ADMIN CAP_MKNOD CAP_CHOWN; do
    try_dropin "CapabilityBoundingSet without $cap" "CapabilityBoundingSet=~$cap"
done
try_dropin "RestrictAddressFamilies without AF_INET" $'RestrictAddressFamilies=\nRestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET6'
try_dropin "ProtectHostname=yes" "ProtectHostname=yes"
try_dropin "RestrictNamespaces=mnt pid net uts ipc cgroup" "RestrictNamespaces=mnt pid net uts ipc cgroup"
try_dropin "ProtectControlGroups=yes" "ProtectControlGroups=yes"

printf '[Service]\nCapabilityBoundingSet=~CAP_KILL\n' >"$dropins/test.conf"
if restart_executor && id=$(start_trap_job); then
    jobctl stop "$id" >/dev/null
    logs=$(jobctl logs "$id" | one_line)
    info "CapabilityBoundingSet without CAP_KILL: stop gives output '$logs', state $(jobctl status -o json "$id" | json_field state), signal $(jobctl status -o json "$id" | json_field signal)"
    expect "CapabilityBoundingSet without CAP_KILL: the job gets no SIGTERM" "ready" "$logs"
else
    bad "CapabilityBoundingSet without CAP_KILL: the trap job did not start"
fi
rm -f "$dropins/test.conf"
restart_executor
expect "all settings restored: jobs run" "hello" "$(jobctl run -- echo hello 2>&1)"

# --- upgrade: to the package rebuilt as a later version --------------------------------
echo "# edited by the administrator" >>/etc/jobworker/api.toml
edited=$(sha256sum </etc/jobworker/api.toml)
done_id=$(jobctl start -- sh -c 'echo before the upgrade')
wait_for 60 sh -c "jobctl status -o json $done_id | grep -q exited"
running_id=$(start_trap_job) || bad "upgrade: the trap job did not start"
old_exec=$(executor_pid)
old_api=$(systemctl show -p MainPID --value jobworker-api.service)
if out=$(cd "$debs/2" && apt_run install -y ./jobworker_*.deb); then
    ok "upgrade: apt install ./jobworker_*.deb (version $version2)"
else
    bad "upgrade: apt install: $out"
fi
expect "upgrade: version $version2" "ii $version2" "$(pkg_status)"
expect "upgrade: the administrator's api.toml kept" "$edited" "$(sha256sum </etc/jobworker/api.toml)"
expect "upgrade: no .dpkg-dist or .dpkg-new configuration" "yes" "$(none_exist /etc/jobworker/*.dpkg-*)"
expect "upgrade: units still enabled" "enabled enabled" "$(systemctl is-enabled jobworker-executor.socket jobworker-api.service 2>&1 | one_line)"
wait_for 120 api_ready
expect "upgrade: the API server restarted" "yes" "$(p=$(systemctl show -p MainPID --value jobworker-api.service); [[ $p != 0 && $p != "$old_api" ]] && echo yes || echo "no: $old_api -> $p")"
expect "upgrade: the executor restarted" "yes" "$(p=$(executor_pid); [[ $p != 0 && $p != "$old_exec" ]] && echo yes || echo "no: $old_exec -> $p")"
expect "upgrade: a finished job's record kept" "exited before the upgrade" "$(jobctl status -o json "$done_id" | json_field state) $(jobctl logs "$done_id" 2>&1 | one_line)"
# Its stdout only: the shell also reports its killed `sleep` on stderr ("Terminated"),
# and the order of lines across two streams is not fixed.
expect_match "upgrade: the job running then was stopped, its record kept" '^stopped ready .*got-term$' "$(jobctl status -o json "$running_id" | json_field state) $(jobctl logs --stream stdout "$running_id" 2>&1 | one_line)"
expect "upgrade: jobs run" "hello" "$(jobctl run -- echo hello 2>&1)"

# --- removal: units stopped and disabled; configuration and state kept ------------------
if out=$(apt_run remove -y jobworker); then ok "apt remove jobworker"; else bad "apt remove jobworker: $out"; fi
expect "removed: status" "rc $version2" "$(pkg_status)"
expect "removed: units stopped" "inactive inactive inactive" "$(systemctl is-active "${units[@]}" 2>&1 | one_line)"
expect "removed: units disabled" "yes" "$(none_exist "${enable_links[@]}")"
expect "removed: no daemon or job process left" "" "$(daemons)$(pgrep -x sleep | one_line)"
expect "removed: socket removed" "yes" "$(none_exist /run/jobworker/executor.sock)"
expect "removed: binaries and units gone" "yes" "$(none_exist /usr/bin/jobctl /usr/bin/jobworker-api /usr/bin/jobworker-executor /usr/lib/systemd/system/jobworker-api.service)"
expect "removed: configuration kept" "$edited" "$(sha256sum </etc/jobworker/api.toml 2>&1)"
expect "removed: the key kept" "600" "$(stat -c %a /etc/jobworker/server.key 2>&1)"
expect "removed: job records kept" "yes" "$([[ -n $(ls -A /var/lib/jobworker 2>/dev/null) ]] && echo yes || echo no)"

# --- purge: configuration and state gone ------------------------------------------------
if out=$(apt_run purge -y jobworker); then ok "apt purge jobworker"; else bad "apt purge jobworker: $out"; fi
expect "purged: not installed" "" "$(pkg_status | grep -v '^un' || true)"
expect "purged: /etc/jobworker, /var/lib/jobworker, /run/jobworker gone" "yes" "$(none_exist /etc/jobworker /var/lib/jobworker /run/jobworker)"
expect "purged: no enablement state left" "yes" "$(none_exist "${enable_links[@]}" $(find /var/lib/systemd/deb-systemd-helper-enabled -name 'jobworker*' 2>/dev/null))"
info "purged: the jobworker account stays: $(getent passwd jobworker)"

echo "VMCHECK-DONE $passed $failed"
systemctl poweroff --no-block
