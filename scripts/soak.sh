#!/usr/bin/env bash
# Soak benchmark (not a test, not in CI): plays into the guest's tunnel sink
# for DURATION seconds (default 3600) through the real chain
#   guest PulseAudio + module  ->  host-playd  ->  host PulseAudio (null sink)
# sampling every INTERVAL seconds (default 10), then prints the counters:
# underruns and reconnects (the sink's secure_tunnel.* properties), the
# latency range `pactl list sinks` showed, and the memory of host-playd and
# of both PulseAudio daemons (VmRSS at start/end, VmHWM at the end).
#
#   DURATION=60 scripts/soak.sh          # a one-minute smoke run
#   SOAK_KEEP=1 scripts/soak.sh          # keep logs and samples
#   PLAYER_LATENCY_MSEC=2000 ...         # the player's latency request (60)
#
# Needs target/release (cargo build --release -p host-playd
# -p module-secure-tunnel-sink), pulseaudio, pactl, pacat, sox.
set -euo pipefail

cd "$(dirname "$0")/.."
root="$PWD"
duration="${DURATION:-3600}"
interval="${INTERVAL:-10}"
work="$(mktemp -d /tmp/st-soak.XXXXXX)"
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${SOAK_KEEP:-}" ]; then echo "soak: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

for f in target/release/host-playd target/release/libmodule_secure_tunnel_sink.so; do
  [ -e "$f" ] || { echo "soak: $f missing; build with cargo build --release" >&2; exit 1; }
done

tag=soak
# shellcheck source=lib/local-stack.sh
. "$root/scripts/lib/local-stack.sh"

# VmRSS and VmHWM of a pid, in KiB ("gone" when it has exited).
mem() {
  awk '/^VmRSS:/ {r=$2} /^VmHWM:/ {h=$2} END {if (r=="") print "gone gone"; else print r, h}' \
    "/proc/$1/status" 2>/dev/null || echo "gone gone"
}

start_pulse "$work/host" \
  -L "module-null-sink sink_name=soak_host rate=48000 channels=2 format=s16le norewinds=1"
start_playd --pulse-server "unix:$work/host/native" --sink soak_host --log-level info
start_guest
pactl --server "$guest" load-module module-secure-tunnel-sink \
  "server=unix:$work/playd.sock" sink_name=secure_tunnel latency_msec=60 \
  rate=48000 channels=2 format=s16le >/dev/null

# A chord, generated as it plays, for the whole run (+5 s of slack).
sox -q -n -r 48000 -c 2 -b 16 -e signed-integer -t raw - \
  synth "$((duration + 5))" sine 440 sine 554 sine 659 remix 1,2,3 1,2,3 gain -9 2>/dev/null |
  pacat --server "$guest" -d secure_tunnel --raw --format=s16le --rate=48000 --channels=2 \
    --latency-msec="${PLAYER_LATENCY_MSEC:-60}" &
pids+=("$!")

host_pid="$(cat "$work/host/pid")"
guest_pid="$(cat "$work/guest/pid")"
read -r playd_rss0 _ < <(mem "$playd_pid")
read -r guest_rss0 _ < <(mem "$guest_pid")
read -r host_rss0 _ < <(mem "$host_pid")

samples="$work/samples.tsv"
echo -e "t_s\tlatency_us\tstate\tplayd_rss_kib\tguest_rss_kib\thost_rss_kib" >"$samples"
start="$(date +%s)"
echo "soak: playing for ${duration} s, sampling every ${interval} s"
while :; do
  now="$(date +%s)"
  elapsed=$((now - start))
  [ "$elapsed" -ge "$duration" ] && break
  sleep "$interval"
  sinks="$(pactl --server "$guest" list sinks 2>/dev/null || true)"
  lat="$(sed -n 's/^\s*Latency: \([0-9]*\) usec.*/\1/p' <<<"$sinks" | head -1)"
  state="$(sed -n 's/^\s*State: //p' <<<"$sinks" | head -1)"
  read -r prss _ < <(mem "$playd_pid")
  read -r grss _ < <(mem "$guest_pid")
  read -r hrss _ < <(mem "$host_pid")
  echo -e "$(( $(date +%s) - start ))\t${lat:-?}\t${state:-?}\t$prss\t$grss\t$hrss" | tee -a "$samples" |
    awk -F'\t' '{printf "soak: t=%ss latency=%sus %s host-playd=%sKiB guest=%sKiB host=%sKiB\n", $1, $2, $3, $4, $5, $6}'
done

sinks="$(pactl --server "$guest" list sinks)"
prop() { sed -n "s/^\s*$1 = \"\(.*\)\"/\1/p" <<<"$sinks" | head -1; }
read -r playd_rss playd_hwm < <(mem "$playd_pid")
read -r guest_rss guest_hwm < <(mem "$guest_pid")
read -r host_rss host_hwm < <(mem "$host_pid")
lat_range="$(awk -F'\t' 'NR > 1 && $2 ~ /^[0-9]+$/ { if (min == "" || $2 < min) min = $2; if ($2 > max) max = $2; n++ }
  END { if (n) printf "%.1f .. %.1f ms over %d samples", min / 1000, max / 1000, n; else print "no samples" }' "$samples")"
playd_warnings="$(grep -c ' WARN ' "$work/host-playd.log" || true)"

echo
echo "===== soak summary: ${duration} s of playback ====="
echo "underruns (host, secure_tunnel.underruns):   $(prop secure_tunnel.underruns)"
echo "reconnects (secure_tunnel.reconnects):       $(prop secure_tunnel.reconnects)"
echo "connected at the end:                        $(prop secure_tunnel.connected)"
echo "reported sink latency range:                 $lat_range"
echo "host-playd memory (KiB):  VmRSS $playd_rss0 -> $playd_rss, VmHWM $playd_hwm"
echo "guest PulseAudio (KiB):   VmRSS $guest_rss0 -> $guest_rss, VmHWM $guest_hwm"
echo "host PulseAudio (KiB):    VmRSS $host_rss0 -> $host_rss, VmHWM $host_hwm"
echo "host-playd WARN lines:    $playd_warnings"
