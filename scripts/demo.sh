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

tag=demo
# shellcheck source=lib/local-stack.sh
. "$root/scripts/lib/local-stack.sh"

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

playd_args=(--pulse-server "$host_server" --log-level "${DEMO_LOG_LEVEL:-info}")
[ -n "$host_sink" ] && playd_args+=(--sink "$host_sink")
start_playd "${playd_args[@]}"
start_guest
pactl --server "$guest" load-module module-secure-tunnel-sink \
  "server=unix:$work/playd.sock" sink_name=secure_tunnel latency_msec=60 >/dev/null

echo "demo: playing a 3 s chord into the guest's secure_tunnel sink"
sox -n -r 48000 -c 2 -b 16 -e signed-integer "$work/chord.wav" \
  synth 3 sine 440 sine 554 sine 659 remix 1,2,3 1,2,3 gain -6 fade 0.05 3 0.3 2>/dev/null
# A player asking for 100 ms, as a video player would (paplay alone asks 2 s).
paplay --server "$guest" -d secure_tunnel --latency-msec=100 "$work/chord.wav" &
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
