#!/usr/bin/env bash
# The host-playd package under a live systemd (issue 14): a container booted
# with systemd as PID 1 (systemd-nspawn --boot over this machine's root,
# --volatile=overlay so nothing it writes survives), the package built by
# packaging/build-debs.sh installed with dpkg, the socket unit enabled as
# docs/host-setup.md says. A guest PulseAudio on the host loads the module
# against the socket unit's socket (bound out of the container), then:
#
#   1. the socket unit accepted the guest and activated host-playd.service;
#   2. the service runs as the host-playd user with its sandbox: /proc status
#      shows that uid, CapEff 0, NoNewPrivs 1, Seccomp 2 (filter);
#   3. systemd-analyze security host-playd.service on the live unit <= 2.0;
#   4. SIGKILL of the service: systemd restarts it (new MainPID) and the
#      guest's module reconnects by itself;
#   5. host-playd's log lines are in the journal (journalctl -u host-playd).
#
#   6. the user units: a lingering user's manager (systemd --user) with its
#      own PulseAudio (Debian's pulseaudio.socket user unit) and the
#      package's host-playd.socket; the guest connects to the user's socket,
#      the user's host-playd runs as that user with seccomp, its player
#      process (also under seccomp) is the client that owns the guest's
#      sink-input in the user's PulseAudio.
#
# The system service runs with --backend null (the container has no system
# PulseAudio; the audio path is what the other tests check); the user units
# play for real.
#
# Last line: "systemd-test: PASS ..." or "systemd-test: FAIL (...)".
#   SYSTEMD_KEEP=1 keeps the run directory.
set -euo pipefail

cd "$(dirname "$0")/.."
root="$PWD"
machine="st-systemd-$$"
run="$(mktemp -d /tmp/st-systemd.XXXXXX)"
pids=()

say() { printf 'systemd-test: %s\n' "$*" >&2; }
fail() {
  if [ -n "${leader:-}" ]; then
    say "--- systemctl status host-playd.service host-playd.socket ---"
    timeout 10 nsenter -t "$leader" -a systemctl status --no-pager -l host-playd.service host-playd.socket >&2 || true
    say "--- journalctl -u host-playd ---"
    timeout 10 nsenter -t "$leader" -a journalctl -u host-playd.service --no-pager -n 30 >&2 || true
  fi
  printf 'systemd-test: FAIL (%s)\n' "$*"; failed=1; exit 1
}

cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "${nspawn:-}" ]; then
    kill "$nspawn" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$nspawn" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$nspawn" 2>/dev/null || true
  fi
  if [ "${mounted:-0}" = 1 ]; then umount "$run/root" 2>/dev/null || umount -l "$run/root" || true; fi
  if [ "${SYSTEMD_KEEP:-0}" = 1 ] || [ "${failed:-0}" = 1 ]; then
    say "run directory kept: $run"
  else
    rm -rf "$run"
  fi
}
trap cleanup EXIT

for tool in systemd-nspawn nsenter pulseaudio pactl; do
  command -v "$tool" >/dev/null || fail "$tool is missing: run scripts/setup.sh"
done
[ "$(id -u)" = 0 ] || fail "needs root (systemd-nspawn)"
[ -x target/release/host-playd ] && [ -f target/release/libmodule_secure_tunnel_sink.so ] \
  || fail "build first: cargo build --release --workspace"

mkdir -p "$run/debs" "$run/sock"
packaging/build-debs.sh --no-build --out "$run/debs" >"$run/build-debs.log" 2>&1 \
  || fail "packaging/build-debs.sh: $(tail -3 "$run/build-debs.log")"
deb="$(ls "$run"/debs/host-playd_*.deb)"

# The container's root: this machine's root file system under an overlay
# whose upper layer is ours and thrown away (nspawn's own --volatile=overlay
# refuses the host's root). Its /run/host-playd is a directory of ours, so
# the socket unit's socket is reachable from the host's guest PulseAudio.
mkdir -p "$run/upper" "$run/ovl-work" "$run/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$run/upper,workdir=$run/ovl-work" "$run/root" \
  || fail "cannot mount an overlay of / (needs root and overlayfs)"
mounted=1
# nspawn's own syscall allowlist (systemd 252) lacks Landlock's calls: without
# them host-playd sees ENOSYS and, in sandbox mode "require", rightly refuses
# to start.
systemd-nspawn -q --keep-unit --register=no -D "$run/root" \
  --system-call-filter="landlock_create_ruleset landlock_add_rule landlock_restrict_self" \
  --machine="$machine" --bind-ro="$run/debs:/mnt/debs" --bind="$run/sock:/run/host-playd" \
  --boot --console=pipe >"$run/container.log" 2>&1 &
nspawn=$!
leader=""
for _ in $(seq 100); do
  leader="$(pgrep -P "$nspawn" | head -1 || true)"
  [ -n "$leader" ] && break
  sleep 0.1
done
[ -n "$leader" ] || fail "systemd-nspawn did not start: $(tail -3 "$run/container.log")"
in_ct() { timeout 30 nsenter -t "$leader" -a "$@"; }
state=""
for _ in $(seq 120); do
  # nspawn's first child can be its short-lived outer helper: take the
  # container's PID 1 (comm "systemd") as soon as it exists.
  pid1="$(pgrep -P "$nspawn" -x systemd | head -1 || true)"
  [ -n "$pid1" ] && leader="$pid1"
  state="$(in_ct systemctl is-system-running 2>/dev/null || true)"
  case "$state" in running|degraded) break ;; esac
  sleep 0.5
done
case "$state" in running|degraded) ;; *) fail "the container's systemd did not come up (state '$state')" ;; esac
[ "$(in_ct cat /proc/1/comm)" = systemd ] || fail "PID 1 of the container is not systemd"
say "container up, systemd $(in_ct systemctl --version | head -1 | cut -d' ' -f2) as PID 1 ($state)"

in_ct dpkg -i "/mnt/debs/$(basename "$deb")" >"$run/dpkg.log" 2>&1 || fail "dpkg -i: $(tail -3 "$run/dpkg.log")"
in_ct sh -c 'echo "HOST_PLAYD_OPTS=\"--backend null\"" >/etc/default/host-playd'
in_ct systemctl enable --now host-playd.socket >/dev/null 2>&1 || fail "enabling host-playd.socket"
[ "$(in_ct systemctl is-active host-playd.service || true)" != active ] \
  || fail "host-playd.service runs before any guest connected"
[ -S "$run/sock/guest.sock" ] || fail "the socket unit did not create /run/host-playd/guest.sock"

# A guest PulseAudio on the host with the module, against the unit's socket.
# shellcheck source=lib/local-stack.sh
source scripts/lib/local-stack.sh
work="$run"; tag=systemd-test
start_guest || fail "the guest PulseAudio did not start"
gpactl() { env "${pulse_env[@]}" pactl --server "$guest" "$@"; }
gpactl load-module module-secure-tunnel-sink "server=unix:$run/sock/guest.sock" \
  sink_name=secure_tunnel format=s16le rate=48000 channels=2 reconnect_interval_msec=200 \
  >/dev/null || fail "load-module: $(tail -5 "$run/guest/pulseaudio.log")"
connected() {
  gpactl list sinks | grep -q 'secure_tunnel.connected = "yes"'
}
wait_for() { # seconds, what, command...
  local secs="$1" what="$2"; shift 2
  for _ in $(seq $((secs * 10))); do "$@" && return 0; sleep 0.1; done
  fail "$what (waited $secs s)"
}
wait_for 15 "the guest did not connect through the socket unit" connected
active() { [ "$(in_ct systemctl is-active host-playd.service)" = active ]; }
wait_for 5 "host-playd.service is not active after a guest connected" active
say "1. the socket unit accepted the guest and activated host-playd.service"

# 2. The sandbox, from /proc of the live service.
main_pid() { in_ct systemctl show -P MainPID host-playd.service; }
pid="$(main_pid)"
[ "$pid" -gt 0 ] || fail "no MainPID"
status="$(in_ct cat "/proc/$pid/status")"
field() { awk -v f="$1:" '$1 == f { print $2 }' <<<"$status"; }
uid="$(in_ct id -u host-playd)"
[ "$(field Uid)" = "$uid" ] || fail "runs as uid $(field Uid), not host-playd ($uid)"
[ "$(field CapEff)" = 0000000000000000 ] || fail "CapEff $(field CapEff)"
[ "$(field NoNewPrivs)" = 1 ] || fail "NoNewPrivs $(field NoNewPrivs)"
[ "$(field Seccomp)" = 2 ] || fail "Seccomp $(field Seccomp) (2 = filter)"
say "2. MainPID $pid: uid $uid (host-playd), CapEff 0, NoNewPrivs 1, Seccomp 2"

# 2b. The packaged control socket answers root (host-playd ctl's default path).
in_ct /usr/bin/host-playd ctl status >"$run/ctl.txt" 2>&1 \
  || fail "host-playd ctl status: $(tail -3 "$run/ctl.txt")"
grep -q "^client " "$run/ctl.txt" || fail "host-playd ctl status lists no client: $(head -3 "$run/ctl.txt")"
[ "$(in_ct stat -c %a /run/host-playd/control)" = 600 ] || fail "/run/host-playd/control is not 0600"
say "2b. host-playd ctl status (default /run/host-playd/control, 0600): $(grep -c '^client ' "$run/ctl.txt") client(s)"

# 3. The live unit's exposure.
in_ct systemd-analyze security --no-pager host-playd.service >"$run/security.txt" 2>&1 || true
score="$(sed -n 's/.*Overall exposure level for host-playd.service: \([0-9.]*\).*/\1/p' "$run/security.txt")"
[ -n "$score" ] || fail "no score from systemd-analyze security: $(tail -3 "$run/security.txt")"
awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "systemd-analyze security: $score > 2.0"
say "3. systemd-analyze security host-playd.service: $score"

# 4. Killed: restarted, and the guest reconnects.
in_ct systemctl kill -s KILL host-playd.service
restarted() { local p; p="$(main_pid)"; [ "$p" -gt 0 ] && [ "$p" != "$pid" ] && active; }
wait_for 15 "host-playd.service was not restarted after SIGKILL" restarted
new_pid="$(main_pid)"
journal() { in_ct journalctl -u host-playd.service --no-pager -o cat 2>/dev/null; }
reconnected() { [ "$(journal | grep -c 'connected from')" -ge 2 ] && connected; }
wait_for 20 "the guest did not reconnect to the restarted service" reconnected
say "4. SIGKILL: restarted as MainPID $new_pid, the guest reconnected"

# 5. The journal has host-playd's own lines.
journal >"$run/journal.txt"
grep -q "host-playd .* starting on" "$run/journal.txt" || fail "no start line in the journal"
grep -q "sandbox: seccomp" "$run/journal.txt" || fail "no sandbox line in the journal"
say "5. journal: $(wc -l <"$run/journal.txt") lines of host-playd.service, e.g. \"$(grep -m1 'connected from' "$run/journal.txt")\""

# 6. The user units, under a user manager (a lingering user), playing into
# that user's own PulseAudio through the player process.
in_ct useradd -m -s /bin/sh st-user >/dev/null 2>&1 || fail "useradd st-user"
user_uid="$(in_ct id -u st-user)"
in_ct loginctl enable-linger st-user || fail "loginctl enable-linger st-user"
user_up() { in_ct systemctl is-active "user@$user_uid.service" >/dev/null 2>&1; }
wait_for 30 "the user manager of st-user did not start" user_up
uctl() { in_ct runuser -u st-user -- env "XDG_RUNTIME_DIR=/run/user/$user_uid" systemctl --user "$@"; }
uctl enable --now pulseaudio.socket >/dev/null 2>&1 || fail "enabling the user's pulseaudio.socket"
uctl enable --now host-playd.socket >/dev/null 2>&1 || fail "enabling the user's host-playd.socket"
user_sock="/proc/$leader/root/run/user/$user_uid/host-playd/guest.sock"
sock_there() { [ -S "$user_sock" ]; }
wait_for 10 "the user socket unit did not create its socket" sock_there
gpactl load-module module-secure-tunnel-sink "server=unix:$user_sock" \
  sink_name=user_tunnel format=s16le rate=48000 channels=2 reconnect_interval_msec=200 \
  >/dev/null || fail "load-module (user unit): $(tail -5 "$run/guest/pulseaudio.log")"
user_connected() {
  gpactl list sinks | grep -A40 'Name: user_tunnel' | grep -q 'secure_tunnel.connected = "yes"'
}
wait_for 20 "the guest did not connect through the user socket unit" user_connected
upid="$(uctl show -P MainPID host-playd.service)"
[ "${upid:-0}" -gt 0 ] || fail "no MainPID for the user's host-playd.service"
ustatus="$(in_ct cat "/proc/$upid/status")"
ufield() { awk -v f="$1:" '$1 == f { print $2 }' <<<"$ustatus"; }
[ "$(ufield Uid)" = "$user_uid" ] || fail "the user service runs as uid $(ufield Uid)"
[ "$(ufield Seccomp)" = 2 ] || fail "the user service: Seccomp $(ufield Seccomp)"
player="$(in_ct cat "/proc/$upid/task/$upid/children" | awk '{print $1}')"
[ -n "$player" ] || fail "the user's host-playd has no player process"
pstatus="$(in_ct cat "/proc/$player/status")"
[ "$(awk '$1 == "Seccomp:" { print $2 }' <<<"$pstatus")" = 2 ] || fail "the player: no seccomp filter"
# The guest's stream is a sink-input of the user's PulseAudio, made by the player.
upactl() { in_ct runuser -u st-user -- env "XDG_RUNTIME_DIR=/run/user/$user_uid" pactl "$@"; }
has_input() { [ "$(upactl list short sink-inputs 2>/dev/null | wc -l)" -ge 1 ]; }
wait_for 10 "no sink-input in the user's PulseAudio" has_input
upactl list clients 2>/dev/null | grep -q "application.process.id = \"$player\"" \
  || fail "the sink-input's client is not the player process $player"
say "6. user units: st-user's host-playd.service (uid $user_uid, Seccomp 2) with player $player plays into st-user's PulseAudio"
uctl kill -s KILL host-playd.service
urestarted() { local p; p="$(uctl show -P MainPID host-playd.service)"; [ "${p:-0}" -gt 0 ] && [ "$p" != "$upid" ]; }
wait_for 15 "the user's host-playd.service was not restarted after SIGKILL" urestarted
ujournal() { in_ct journalctl "_SYSTEMD_USER_UNIT=host-playd.service" --no-pager -o cat 2>/dev/null; }
ureconnected() { [ "$(ujournal | grep -c 'connected from')" -ge 2 ] && user_connected; }
wait_for 20 "the guest did not reconnect to the restarted user service" ureconnected
# journald may take a moment to file the lines of the user's units.
player_logged() { ujournal | grep -q "player process [0-9]* started"; }
wait_for 10 "no player line in the user journal" player_logged
in_ct runuser -u st-user -- env "XDG_RUNTIME_DIR=/run/user/$user_uid" \
  systemd-analyze --user security --no-pager host-playd.service >"$run/user-security.txt" 2>&1 || true
uscore="$(sed -n 's/.*Overall exposure level for host-playd.service: \([0-9.]*\).*/\1/p' "$run/user-security.txt")"
say "7. user units: restarted after SIGKILL, the guest reconnected, journal has the player's start; systemd-analyze --user security: ${uscore:-n/a} (not bounded: a user manager cannot set up mount namespaces)"

failed=0
echo "systemd-test: PASS (systemd as PID 1 in systemd-nspawn; socket activation, sandbox, security $score, restart + reconnect, journal; user units into the user's PulseAudio)"
