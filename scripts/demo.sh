#!/usr/bin/env bash
# Sets up, builds and runs a complete local demonstration:
#   host PulseAudio  <-  host-playd  <-  guest PulseAudio with module-secure-tunnel-sink
# then plays a sound into the tunnel sink and shows `pactl list sinks` for it.
#
# The "host" is your running PulseAudio if one answers (so you hear the
# sound), otherwise a private one with a null sink. The "guest" is always a
# private PulseAudio in a temporary directory; nothing of yours is changed.
# DEMO_HOST=private forces the private host; DEMO_KEEP=1 keeps the logs.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh
cargo build --release --workspace

work="$(mktemp -d /tmp/secure-tunnel-demo.XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${DEMO_KEEP:-}" ]; then
    echo "demo: logs kept in $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

# Starts a private PulseAudio in $1; further arguments go to pulseaudio.
start_pulse() {
  local dir="$1"; shift
  mkdir -p "$dir/runtime" "$dir/state" "$dir/home"
  HOME="$dir/home" XDG_RUNTIME_DIR="$dir/runtime" PULSE_RUNTIME_PATH="$dir/runtime" \
  PULSE_STATE_PATH="$dir/state" PULSE_CONFIG_PATH="$dir/state" \
    pulseaudio -n --daemonize=no --exit-idle-time=-1 --use-pid-file=no --disallow-exit \
      --disable-shm=yes --log-target=stderr \
      -L "module-native-protocol-unix socket=$dir/native auth-anonymous=1" "$@" \
      2>"$dir/pulseaudio.log" &
  pids+=("$!")
  for _ in $(seq 100); do
    pactl --server "unix:$dir/native" info >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "demo: PulseAudio in $dir did not start; its log:" >&2
  tail -20 "$dir/pulseaudio.log" >&2
  return 1
}

if [ "${DEMO_HOST:-}" != private ] && pactl info >/dev/null 2>&1; then
  host_server="$(pactl info | sed -n 's/^Server String: //p')"
  host_sink=""
  echo "demo: host side is your PulseAudio ($host_server)"
else
  start_pulse "$work/host" -L "module-null-sink sink_name=demo_host rate=48000 channels=2"
  host_server="unix:$work/host/native"
  host_sink="demo_host"
  echo "demo: host side is a private PulseAudio with a null sink ($host_server)"
fi

playd_args=(--listen "unix:$work/playd.sock" --pulse-server "$host_server" --log-level "${DEMO_LOG_LEVEL:-info}")
[ -n "$host_sink" ] && playd_args+=(--sink "$host_sink")
target/release/host-playd "${playd_args[@]}" 2>"$work/host-playd.log" &
pids+=("$!")
for _ in $(seq 100); do [ -S "$work/playd.sock" ] && break; sleep 0.1; done

# The guest loads modules from a directory holding ours and PulseAudio's own.
mods="$work/modules"
mkdir -p "$mods"
ln -s "$(pkg-config --variable=modlibexecdir libpulse)"/* "$mods/"
ln -s "$root/target/release/libmodule_secure_tunnel_sink.so" "$mods/module-secure-tunnel-sink.so"
start_pulse "$work/guest" --dl-search-path="$mods"
guest="unix:$work/guest/native"
pactl --server "$guest" load-module module-secure-tunnel-sink \
  "server=unix:$work/playd.sock" sink_name=secure_tunnel latency_msec=60 >/dev/null

echo "demo: playing a 3 s chord into the guest's secure_tunnel sink"
sox -n -r 48000 -c 2 -b 16 -e signed-integer "$work/chord.wav" \
  synth 3 sine 440 sine 554 sine 659 remix 1,2,3 1,2,3 gain -6 fade 0.05 3 0.3 2>/dev/null
paplay --server "$guest" -d secure_tunnel "$work/chord.wav" &
player=$!
sleep 1.5
echo "demo: the tunnel sink as the guest sees it, mid-playback:"
# Print the whole block of the sink named secure_tunnel.
pactl --server "$guest" list sinks \
  | awk '/^Sink #/ { if (keep) printf "%s", block; block = ""; keep = 0 }
         { block = block $0 "\n" }
         /Name: secure_tunnel$/ { keep = 1 }
         END { if (keep) printf "%s", block }' \
  | grep -E 'State:|Name:|Description:|Latency:|Flags:|secure_tunnel.server'
wait "$player"
echo "demo: host-playd said:"
tail -5 "$work/host-playd.log"
