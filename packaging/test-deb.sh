#!/usr/bin/env bash
# Package acceptance test, run by .ci/run as root on a disposable machine:
# it really installs, upgrades, removes and purges aa-policyd with dpkg.
#
# 1. build two versions of the .deb; install the first with dpkg -i;
# 2. check the files, the conffile, `check`, the man page, systemd-analyze;
# 3. start the daemon exactly as the unit does (its ExecStart line, with a
#    NOTIFY_SOCKET this script listens on): READY=1, and the installed policy
#    is enforced (a confined ptrace is killed);
# 4. edit the conffile, upgrade with --force-confdef --force-confold, restart
#    the daemon: the edit survives and a process confined before the upgrade
#    is still enforced after it (pinned links, no gap);
# 5. dpkg -r, dpkg -P: no file, unit link, user, group or pin is left;
# 6. lintian: no error.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
daemon_pid=
notify_pid=

say() { printf '  %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

cleanup() {
	set +e
	[ -n "$daemon_pid" ] && kill -TERM "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
	[ -n "$notify_pid" ] && kill "$notify_pid" 2>/dev/null
	if dpkg-query -W aa-policyd >/dev/null 2>&1; then
		dpkg -P aa-policyd >/dev/null 2>&1
	fi
	[ -x target/release/aa-policyd ] && target/release/aa-policyd unload >/dev/null 2>&1
	rm -rf "$work"
}
trap cleanup EXIT

# Listens for sd_notify datagrams and appends them to a file.
start_notify_listener() {
	rm -f "$work/notify.sock" "$work/notify.log"
	python3 - "$work/notify.sock" "$work/notify.log" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a", buffering=1) as log:
    while True:
        log.write(s.recv(4096).decode() + "\n--\n")
PY
	notify_pid=$!
	for _ in $(seq 50); do [ -S "$work/notify.sock" ] && return; sleep 0.1; done
	fail "notify listener did not start"
}

# Starts the daemon with the installed unit's own ExecStart line.
start_like_the_unit() {
	local exec_start
	exec_start=$(sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/aa-policyd.service)
	[ "$exec_start" = "/usr/bin/aa-policyd run" ] || fail "unexpected ExecStart: $exec_start"
	: > "$work/notify.log"
	NOTIFY_SOCKET="$work/notify.sock" $exec_start >>"$work/daemon.log" 2>&1 &
	daemon_pid=$!
	for _ in $(seq 100); do
		grep -q '^READY=1' "$work/notify.log" 2>/dev/null && return
		kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/daemon.log"; fail "daemon exited"; }
		sleep 0.1
	done
	cat "$work/daemon.log"
	fail "no READY=1 within 10 s"
}

stop_daemon() {
	kill -TERM "$daemon_pid"
	wait "$daemon_pid" || true
	daemon_pid=
	grep -q '^STOPPING=1' "$work/notify.log" || fail "no STOPPING=1"
}

# A confined process that calls ptrace(2) (denied by the default policy)
# after `delay` seconds; prints its exit status.
confined_ptrace_after() {
	local status=0
	aa-policyd exec -- python3 -c "import ctypes, time; time.sleep($1); ctypes.CDLL(None).syscall(101, 0, 0, 0, 0)" >/dev/null 2>&1 || status=$?
	echo "$status"
}

echo "== build two versions"
bash packaging/build-deb.sh --deb-version 0.1.0-1 --output "$work/v1.deb" >/dev/null
cargo deb --no-build --deb-version 0.1.1-1 --output "$work/v2.deb" >/dev/null
say "built $(basename "$work/v1.deb") and $(basename "$work/v2.deb")"

echo "== install"
dpkg -i "$work/v1.deb" >/dev/null
for path in /usr/bin/aa-policyd /etc/agent-assembly/policy.yaml \
	/usr/share/man/man1/aa-policyd.1.gz /usr/share/man/man1/aa-policyd-run.1.gz \
	/usr/share/bash-completion/completions/aa-policyd /usr/share/zsh/vendor-completions/_aa-policyd \
	/usr/share/doc/aa-policyd/changelog.Debian.gz /usr/share/doc/aa-policyd/copyright \
	/usr/lib/systemd/system/aa-policyd.service /usr/lib/systemd/system/aa-policyd-watch.service; do
	[ -e "$path" ] || fail "missing $path"
done
[ "$(ls /usr/share/doc/aa-policyd/examples/*.yaml | wc -l)" -ge 4 ] || fail "examples missing"
say "files in place"
dpkg-query -W -f='${Conffiles}\n' aa-policyd | grep -q '^ /etc/agent-assembly/policy.yaml ' \
	|| fail "policy.yaml is not a conffile"
say "/etc/agent-assembly/policy.yaml is a conffile"
getent group aa-policy >/dev/null || fail "group aa-policy missing"
aa-policyd check /etc/agent-assembly/policy.yaml >/dev/null || fail "installed policy does not check"
say "aa-policyd check passes on the installed policy"
MANWIDTH=80 man aa-policyd 2>/dev/null | grep -q 'aa-policyd-run' || fail "man aa-policyd does not render"
MANWIDTH=80 man aa-policyd-run 2>/dev/null | grep -q -- '--no-watch' || fail "man aa-policyd-run does not render"
say "man pages render"
for unit in aa-policyd aa-policyd-watch; do
	errors=$(systemd-analyze verify "/usr/lib/systemd/system/$unit.service" 2>&1 >/dev/null || true)
	[ -z "$errors" ] || fail "systemd-analyze verify $unit: $errors"
done
say "systemd-analyze verify prints nothing"

echo "== start as the unit does"
start_notify_listener
start_like_the_unit
say "READY=1 received"
status=$(aa-policyd status --json)
sha=$(sha256sum /etc/agent-assembly/policy.yaml | cut -d' ' -f1)
echo "$status" | grep -q "\"policy_sha256\": \"$sha\"" || fail "status does not show the installed policy: $status"
aa-policyd exec -- sh -c 'exit 0' || fail "an allowed command failed under the daemon"
[ "$(confined_ptrace_after 0)" = 137 ] || fail "a denied ptrace was not killed"
say "the installed policy is enforced (allowed command runs, ptrace is killed)"

echo "== upgrade with a local edit"
printf '# local edit: survives upgrades\n' >> /etc/agent-assembly/policy.yaml
confined_ptrace_after 4 > "$work/late-ptrace.status" &
late=$!
sleep 1
dpkg -i --force-confdef --force-confold "$work/v2.deb" >/dev/null
[ "$(dpkg-query -W -f='${Version}' aa-policyd)" = 0.1.1-1 ] || fail "upgrade did not install 0.1.1-1"
grep -q '^# local edit' /etc/agent-assembly/policy.yaml || fail "the conffile edit was lost"
stop_daemon
start_like_the_unit
wait "$late"
[ "$(cat "$work/late-ptrace.status")" = 137 ] || fail "a process confined before the upgrade escaped after it"
say "edit kept; a process confined before the upgrade is still enforced after the restart"
stop_daemon

echo "== remove and purge"
dpkg -r aa-policyd >/dev/null
[ ! -e /usr/bin/aa-policyd ] || fail "binary left after dpkg -r"
[ ! -e /sys/fs/bpf/agent-assembly ] || fail "pins left after dpkg -r: $(ls -R /sys/fs/bpf/agent-assembly)"
dpkg -P aa-policyd >/dev/null
# bpffs is machine-wide: other tools (and other aa-policyd instances with
# their own --pin-dir) may hold pins beside ours, so only the package's own
# pin dir is checked there.
leftovers=$( (find /etc /usr /var/lib/systemd /run -name '*aa-policyd*' -o -name 'agent-assembly' 2>/dev/null | grep -v '^/run/user'; ls -d /sys/fs/bpf/agent-assembly 2>/dev/null) || true)
[ -z "$leftovers" ] || fail "left after purge: $leftovers"
! getent group aa-policy >/dev/null || fail "group aa-policy left after purge"
! getent passwd aa-policy-watch >/dev/null || fail "user aa-policy-watch left after purge"
say "nothing left behind"

echo "== lintian"
lintian_out=$(lintian --tag-display-limit 0 "$work/v2.deb" 2>&1 | grep -v "running with root privileges" || true)
printf '%s\n' "$lintian_out" | sed 's/^/  /'
! printf '%s\n' "$lintian_out" | grep -q '^E:' || fail "lintian reports errors"
echo "package: 7 passed, 0 failed"
