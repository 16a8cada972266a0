#!/usr/bin/env bash
# Load and unload the tunnel sink and the microphone source (issue 15)
# CYCLES times (default 200) in a guest
# PulseAudio that runs under valgrind's memcheck, then read valgrind's report:
# memory errors (invalid reads/writes, uninitialised values, bad frees) and
# definitely/indirectly lost blocks, each attributed to our module (a frame of
# our crates, or pa__init/pa__done, in its stack) or to PulseAudio itself.
#
# A baseline guest (same daemon and startup, no loads) runs first, so
# PulseAudio's own leaks can be told apart from growth caused by the cycles. The chain is the real one:
#   guest PulseAudio (valgrind) + module -> host-playd -> host PulseAudio (null sink)
# Host PulseAudio and host-playd run natively. Of the cycles:
#   every 10th (5, 15, ...): wait until connected, play 0.2 s (streaming path)
#                             and record 0.3 s from the source (host-playd
#                             allows capture from the host sink's monitor)
#   every 20th (20, 40, ...): server is a socket nobody listens on; stay 0.5 s
#                             and play 0.2 s (failed connects, null-sink pacing)
#   the others: load, unload at once (mostly just after the handshake, now
#               and then while the connection helper thread is still busy)
# Every 50 cycles the guest's VmRSS (valgrind's own, shadow memory included)
# and memcheck's live leak summary (through vgdb) are printed: the live
# "still reachable" figure must stay flat from cycle 50 on, which catches
# growth the exit report cannot see (memory held by a static of the module:
# it is linked -z nodelete, stays mapped, and its statics count as roots).
#
#   scripts/valgrind-load-unload.sh              # baseline + 200 cycles
#   CYCLES=20 scripts/valgrind-load-unload.sh    # a quicker run
#   CYCLES=0 scripts/valgrind-load-unload.sh     # the baseline alone
#   BASELINE=0 ...                               # skip the baseline
#   VG_KEEP=1 ...                                # keep logs (else kept only on failure)
#   LEAK_SLACK=0 ...                             # bytes of definitely-lost growth
#                                                #   over the baseline tolerated (0)
#   REACH_SLACK=4096 ...                         # still-reachable growth tolerated
#                                                #   from cycle 50 to the end (4 KiB)
#   REACHABLE=1 ...                              # list still-reachable blocks too
#   VG_EXTRA="--track-origins=yes" ...           # more valgrind options
#
# Exit status: 0 clean; 1 memcheck errors or leaks attributed to our module,
# definitely-lost bytes growing with the cycles, a crash, or a failed
# load/unload; 2 setup failure.
#
# Needs target/release (cargo build --release -p host-playd
# -p module-secure-tunnel-sink), valgrind, pulseaudio, pactl, pacat.
# Baseline + 200 cycles take about 45 s (2 cores); 1000 cycles about 2.5 min.
# Kept logs: $work/{baseline,cycles}/{valgrind.log,pulseaudio.log,records.tsv,
# mem}, host-playd.log.
set -euo pipefail

cd "$(dirname "$0")/.."
root="$PWD"
cycles="${CYCLES:-200}"
do_baseline="${BASELINE:-1}"
leak_slack="${LEAK_SLACK:-0}"
reach_slack="${REACH_SLACK:-4096}"
start_timeout="${GUEST_START_TIMEOUT:-180}"
pactl_timeout="${PACTL_TIMEOUT:-60}"
tag=valgrind-load-unload
work="$(mktemp -d /tmp/st-valgrind.XXXXXX)"
pids=()
guest_pid=
failed=0

cleanup() {
  local rc=$?
  [ -n "$guest_pid" ] && kill -KILL "$guest_pid" 2>/dev/null || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${VG_KEEP:-}" ] || [ "$rc" -ne 0 ]; then
    echo "$tag: logs kept in $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

die() { echo "$tag: $*" >&2; exit 2; }

for f in target/release/host-playd target/release/libmodule_secure_tunnel_sink.so \
  target/release/libmodule_secure_tunnel_source.so; do
  [ -e "$f" ] || die "$f missing; build with cargo build --release -p host-playd -p module-secure-tunnel-sink -p module-secure-tunnel-source"
done
for t in valgrind vgdb pulseaudio pactl pacat timeout; do
  command -v "$t" >/dev/null || die "$t not found (apt-get install -y valgrind pulseaudio pulseaudio-utils)"
done
[[ "$cycles" =~ ^[0-9]+$ ]] || die "CYCLES must be a number"

# shellcheck source=lib/local-stack.sh
. "$root/scripts/lib/local-stack.sh"

# Frames that make a valgrind record ours: our crates' symbols (demangled or
# not), our shared object when it has no debug info, our C entry points.
ours_re='module_secure_tunnel|secure_tunnel_protocol|secure_tunnel_timing|secure_tunnel_guest|pulse_module_sys|libmodule_secure_tunnel_(sink|source)|: pa__(init|done|get_[a-z_]+) '

supp=()
for s in "$root"/scripts/valgrind/*.supp; do
  [ -e "$s" ] && supp+=("--suppressions=$s")
done
vg_opts=(
  --tool=memcheck --leak-check=full --show-leak-kinds=definite,indirect
  --errors-for-leak-kinds=definite --track-origins=no --num-callers=30
  --error-exitcode=99
  # Symbols of modules PulseAudio unloads before exiting (its own, which
  # are dlclosed; ours is -z nodelete and stays mapped anyway).
  --keep-debuginfo=yes
  "${supp[@]}"
)
# REACHABLE=1: also list still-reachable and possibly-lost blocks (to find
# what the still-reachable growth is made of).
if [ -n "${REACHABLE:-}" ]; then vg_opts+=(--show-leak-kinds=all); fi
# shellcheck disable=SC2206 # VG_EXTRA is a word list on purpose
vg_opts+=(${VG_EXTRA:-})

# PulseAudio's module directory plus ours (pactl load-module refuses names
# with a '/'): local-stack.sh's make_module_dir sets mods.
make_module_dir

# 0.2 s of s16le stereo 48 kHz noise.
burst="$work/burst.raw"
head -c $((48000 * 2 * 2 / 5)) /dev/urandom >"$burst"

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo gone; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", b - a}'; }

# Starts the guest PulseAudio in $1 under memcheck. Sets guest_pid, gserver.
start_guest_valgrind() {
  local dir="$1"
  set_pulse_env "$dir"
  set_pulse_opts "$dir"
  # VALGRIND=1: PulseAudio frees its per-thread caches at exit (pa_in_valgrind).
  # LD_BIND_NOW=1: otherwise it re-executes itself, leaving valgrind behind.
  env "${pulse_env[@]}" VALGRIND=1 LD_BIND_NOW=1 \
    valgrind "${vg_opts[@]}" --log-file="$dir/valgrind.log" \
      pulseaudio "${pulse_opts[@]}" --realtime=no --high-priority=no --dl-search-path="$mods" \
      2>"$dir/pulseaudio.log" &
  guest_pid=$!
  gserver="unix:$dir/native"
  local deadline=$((SECONDS + start_timeout))
  while [ "$SECONDS" -lt "$deadline" ]; do
    kill -0 "$guest_pid" 2>/dev/null || break
    timeout 10 pactl --server "$gserver" info >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "$tag: guest PulseAudio under valgrind did not start; its logs:" >&2
  tail -20 "$dir/pulseaudio.log" "$dir/valgrind.log" >&2
  exit 2
}

gpactl() { timeout "$pactl_timeout" pactl --server "$gserver" "$@"; }

# Waits up to $1 seconds for the sink's secure_tunnel.connected = "yes".
wait_connected() {
  local deadline=$((SECONDS + $1))
  while [ "$SECONDS" -lt "$deadline" ]; do
    [[ "$(gpactl list sinks 2>/dev/null)" == *'secure_tunnel.connected = "yes"'* ]] && return 0
    sleep 0.2
  done
  return 1
}

play_burst() {
  timeout 60 pacat --server "$gserver" -d vg_tunnel --raw --format=s16le --rate=48000 \
    --channels=2 --latency-msec=60 "$burst" || echo "$tag: cycle $1: pacat failed" >&2
}

# About 0.5 s from the guest's microphone; something must arrive (what it
# is, is not checked here: tests/tests/capture.rs does that).
record_burst() {
  local out="$work/mic-burst.raw"
  timeout 1 parec --server "$gserver" -d vg_mic --raw --format=s16le --rate=48000 \
    --channels=2 --latency-msec=20 >"$out" 2>/dev/null || true
  [ -s "$out" ] || echo "$tag: cycle $1: parec recorded nothing" >&2
}

# Stops the guest cleanly (valgrind prints its leak report at exit) and
# waits for it. Sets guest_status.
stop_guest() {
  gpactl exit >/dev/null 2>&1 || kill -TERM "$guest_pid" 2>/dev/null || true
  local deadline=$((SECONDS + 300))
  while kill -0 "$guest_pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.5; done
  if kill -0 "$guest_pid" 2>/dev/null; then
    echo "$tag: guest did not exit after pactl exit; SIGTERM" >&2
    kill -TERM "$guest_pid" 2>/dev/null || true
    sleep 30
  fi
  guest_status=0
  wait "$guest_pid" || guest_status=$?
  guest_pid=
}

# Memory of the running guest after cycle $2: VmRSS, and memcheck's leak
# summary through vgdb (definitely lost, still reachable). Unlike the report
# at exit, this sees memory that stays reachable (from a static of the
# -z nodelete module, say) but accumulates with the cycles. Appends
# "cycle rss_kib def_bytes reach_bytes reach_blocks" to $work/$1/mem.
snapshot() {
  local label="$1" c="$2" t1="${3:-}" out rss def reach
  # Abandoned connection attempts (unload right after load) end within ms.
  [ "$c" -gt 0 ] && sleep 1
  rss="$(rss_kib "$guest_pid")"
  out="$(timeout 120 vgdb --pid="$guest_pid" leak_check summary 2>&1 | tr -d ,)" || true
  def="$(sed -nE 's/.*definitely lost: ([0-9]+) .*/\1/p' <<<"$out" | tail -1)"
  reach="$(sed -nE 's/.*still reachable: ([0-9]+) .* bytes in ([0-9]+) .*/\1 \2/p' <<<"$out" | tail -1)"
  echo "$c $rss ${def:-?} ${reach:-? ?}" >>"$work/$label/mem"
  echo "$tag: [$label] cycle $c: guest VmRSS $rss KiB, definitely lost ${def:-?} B," \
    "still reachable ${reach%% *} B${t1:+ ($(secs "$t1" "$(now)") s)}"
}

# One guest lifetime: $1 label, $2 cycles. Writes $work/$1/{valgrind.log,
# pulseaudio.log,mem,status}.
run_guest() {
  local label="$1" n="$2" dir="$work/$1" t0 t1 t2 c server idx src connected=0 play=0 unreach=0
  t0="$(now)"
  start_guest_valgrind "$dir"
  t1="$(now)"
  echo "$tag: [$label] guest up under valgrind in $(secs "$t0" "$t1") s (pid $guest_pid)"
  : >"$dir/mem"
  snapshot "$label" 0
  for ((c = 1; c <= n; c++)); do
    if ((c % 20 == 0)); then server="unix:$work/nobody-listens.sock"; else server="unix:$work/playd.sock"; fi
    if ! idx="$(gpactl load-module module-secure-tunnel-sink "server=$server" \
      sink_name=vg_tunnel latency_msec=60 rate=48000 channels=2 format=s16le \
      reconnect_interval_msec=100 2>"$dir/pactl.err")"; then
      echo "$tag: [$label] cycle $c: load-module failed: $(cat "$dir/pactl.err")" >&2
      failed=1
      break
    fi
    # The microphone too (host-playd allows capture from the host sink's
    # monitor here, so its attached path runs).
    if ! src="$(gpactl load-module module-secure-tunnel-source "server=$server" \
      source_name=vg_mic latency_msec=40 rate=48000 channels=2 format=s16le \
      reconnect_interval_msec=100 2>"$dir/pactl.err")"; then
      echo "$tag: [$label] cycle $c: load-module (source) failed: $(cat "$dir/pactl.err")" >&2
      failed=1
      break
    fi
    if ((c % 20 == 0)); then
      sleep 0.5
      play_burst "$c"
      unreach=$((unreach + 1))
    elif ((c % 10 == 5)); then
      if wait_connected 20; then connected=$((connected + 1)); else
        echo "$tag: [$label] cycle $c: not connected after 20 s" >&2
      fi
      record_burst "$c" &
      local rec_pid=$!
      play_burst "$c"
      wait "$rec_pid"
      play=$((play + 1))
    fi
    if ! gpactl unload-module "$src" 2>"$dir/pactl.err"; then
      echo "$tag: [$label] cycle $c: unload-module $src failed: $(cat "$dir/pactl.err")" >&2
      failed=1
      break
    fi
    if ! gpactl unload-module "$idx" 2>"$dir/pactl.err"; then
      echo "$tag: [$label] cycle $c: unload-module $idx failed: $(cat "$dir/pactl.err")" >&2
      failed=1
      break
    fi
    if ((c % 50 == 0 || c == n)); then snapshot "$label" "$c" "$t1"; fi
  done
  t2="$(now)"
  # Let abandoned connection helper threads finish (handshake timeout 3 s).
  sleep 4
  if ! kill -0 "$guest_pid" 2>/dev/null; then
    echo "$tag: [$label] guest PulseAudio died during the cycles" >&2
    failed=1
  fi
  stop_guest
  echo "$tag: [$label] $n cycles in $(secs "$t1" "$t2") s ($play played while connected" \
    "[$connected connected], $unreach unreachable); guest exited with $guest_status" \
    "after $(secs "$t2" "$(now)") s; total $(secs "$t0" "$(now)") s"
  echo "$guest_status" >"$dir/status"
}

# Splits a valgrind log into records, one TSV line each:
#   class (error|leak)  kind  bytes  blocks  ours (0|1)  signature
# bytes/blocks are those of the leak (direct bytes for definite leaks);
# the signature is the record's function names, for matching across runs.
parse_vg() {
  sed -E 's/^==[0-9]+== ?//' "$1" | awk -v ours_re="$ours_re" '
    function flush() {
      if (head != "") {
        sig = ""
        n = split(body, ls, "\n")
        nf = 0
        for (i = 1; i <= n && nf < 12; i++) {
          if (ls[i] ~ /^ +(at|by) 0x/) {
            f = ls[i]; sub(/^ +(at|by) 0x[0-9A-Fa-f]+: /, "", f); sub(/ \(.*$/, "", f)
            sig = sig (sig == "" ? "" : " < ") f; nf++
          }
        }
        o = (body ~ ours_re) ? 1 : 0
        printf "%s\t%s\t%s\t%s\t%d\t%s\n", class, kind, bytes, blocks, o, sig
      }
      head = ""; body = ""
    }
    /^$/ { flush(); next }
    {
      line = $0; gsub(/,/, "", line)
      if (match(line, /^[0-9]+ (\([0-9]+ direct [0-9]+ indirect\) )?bytes in [0-9]+ blocks are (definitely lost|indirectly lost|possibly lost|still reachable)/)) {
        flush()
        class = "leak"; kind = line; sub(/^.* blocks are /, "", kind); sub(/ .*$/, "", kind)
        if (kind == "still") kind = "reachable"
        split(line, w, " "); bytes = w[1]
        if (line ~ / direct /) { t = line; sub(/^[0-9]+ \(/, "", t); split(t, w2, " "); bytes = w2[1] }
        t = line; sub(/^.* bytes in /, "", t); split(t, w3, " "); blocks = w3[1]
        head = line
      } else if ($0 ~ /^(Invalid (read|write|free|alignment)|Mismatched free|Conditional jump|Use of uninitialised|Syscall param|Source and destination overlap|Argument .* of function|Jump to the invalid|Process terminating|Illegal memory pool|.*has a fishy)/) {
        flush()
        class = "error"; kind = $0; sub(/ at address 0x.*$/, "", kind)
        bytes = 0; blocks = 0; head = $0
      }
      if (head != "") body = body "\n" $0
    }
    END { flush() }'
}

# Prints one run's summary; sets sum_def, sum_ind, our_errors, our_leaks.
summarise() {
  local label="$1" log="$work/$1/valgrind.log" recs="$work/$1/records.tsv"
  parse_vg "$log" >"$recs"
  sum_def="$(sed -nE 's/^==[0-9]+== +definitely lost: ([0-9,]+) bytes.*/\1/p' "$log" | tr -d , | tail -1)"
  sum_ind="$(sed -nE 's/^==[0-9]+== +indirectly lost: ([0-9,]+) bytes.*/\1/p' "$log" | tr -d , | tail -1)"
  sum_def="${sum_def:-0}"
  sum_ind="${sum_ind:-0}"
  our_errors="$(awk -F'\t' '$1 == "error" && $5 == 1' "$recs" | wc -l)"
  our_leaks="$(awk -F'\t' '$1 == "leak" && $5 == 1 && $2 ~ /^(definitely|indirectly)$/' "$recs" | wc -l)"
  echo "--- [$label] $(grep -E '== ERROR SUMMARY' "$log" | tail -1 | sed -E 's/^==[0-9]+== //')"
  # Every error context is printed once: a record the parser missed would
  # otherwise go unattributed.
  local ctx parsed
  ctx="$(sed -nE 's/.*ERROR SUMMARY: [0-9,]+ errors from ([0-9,]+) contexts.*/\1/p' "$log" | tr -d , | tail -1)"
  parsed="$(awk -F'\t' '$1 == "error" || $2 == "definitely"' "$recs" | wc -l)"
  if [ "${ctx:-x}" != "$parsed" ]; then
    echo "$tag: FAIL: valgrind counts ${ctx:-no} error contexts, the parser found $parsed records; read $log"
    failed=1
  fi
  local status
  status="$(cat "$work/$1/status")"
  echo "    guest exit status $status (99: valgrind counted errors)"
  if [ "$status" != 0 ] && [ "$status" != 99 ]; then
    echo "$tag: FAIL: the guest did not exit cleanly (status $status)"
    failed=1
  fi
  echo "    LEAK SUMMARY: definitely lost $sum_def B, indirectly lost $sum_ind B"
  awk -F'\t' '
    $1 == "error" { e[$5]++ }
    $1 == "leak" { b[$5 "," $2] += $3; r[$5 "," $2]++ }
    END {
      printf "    memcheck errors (not leaks): ours %d, PulseAudio %d\n", e[1] + 0, e[0] + 0
      printf "    definitely lost: ours %d B in %d records, PulseAudio %d B in %d records\n", \
        b["1,definitely"], r["1,definitely"], b["0,definitely"], r["0,definitely"]
      printf "    indirectly lost: ours %d B in %d records, PulseAudio %d B in %d records\n", \
        b["1,indirectly"], r["1,indirectly"], b["0,indirectly"], r["0,indirectly"]
    }' "$recs"
  awk -F'\t' '$1 == "error" || ($5 == 1 && $2 ~ /^(definitely|indirectly)$/) {
      printf "    %s %s%s: %s\n", ($5 ? "OURS" : "pa  "), $2, ($1 == "leak" ? " " $3 " B" : ""), substr($6, 1, 300) }' \
    "$recs" | sort | uniq -c | sort -rn | head -20
  echo "    by cycle (VmRSS KiB / definitely lost B / still reachable B, live, via vgdb):"
  awk '{printf "      %5d: %7s / %s / %s\n", $1, $2, $3, $4}' "$work/$1/mem"
}

start_pulse "$work/host" \
  -L "module-null-sink sink_name=vg_host rate=48000 channels=2 format=s16le norewinds=1"
printf '[defaults]\ncapture = "allow"\n' >"$work/host-playd.toml"
start_playd --pulse-server "unix:$work/host/native" --sink vg_host --log-level info \
  --config "$work/host-playd.toml" --capture-source vg_host.monitor --capture-allow-monitor
[ -S "$work/playd.sock" ] || die "host-playd did not create its socket; $(tail -5 "$work/host-playd.log")"

t_all="$(now)"
if [ "$do_baseline" = 1 ] || [ "$cycles" = 0 ]; then run_guest baseline 0; fi
if [ "$cycles" -gt 0 ]; then run_guest cycles "$cycles"; fi

echo
echo "===== valgrind load/unload summary ($(secs "$t_all" "$(now)") s) ====="
base_def=
if [ -f "$work/baseline/status" ]; then
  summarise baseline
  base_def="$sum_def"
  [ "$our_errors" -eq 0 ] && [ "$our_leaks" -eq 0 ] || failed=1
fi
if [ -f "$work/cycles/status" ]; then
  summarise cycles
  # The microphone's attached path must have run (every 10th cycle records).
  # (Counted from its log lines, which host-playd rate-limits per peer: the
  # count is a floor.)
  captures="$(grep -cE 'capture (started|stopped, [1-9])' "$work/host-playd.log" || true)"
  echo "    host-playd logged $captures capture start/stop line(s) for the guest's source"
  if [ "$cycles" -ge 5 ] && [ "${captures:-0}" -eq 0 ]; then
    echo "$tag: FAIL: the source never got the host's audio (capture never started)"
    failed=1
  fi
  [ "$our_errors" -eq 0 ] || { echo "$tag: FAIL: $our_errors memcheck error(s) in our module"; failed=1; }
  [ "$our_leaks" -eq 0 ] || { echo "$tag: FAIL: $our_leaks leak record(s) in our module"; failed=1; }
  if [ -n "$base_def" ]; then
    growth=$((sum_def - base_def))
    echo "    definitely lost vs baseline: $base_def B -> $sum_def B ($growth B over $cycles cycles)"
    if [ "$growth" -gt "$leak_slack" ]; then
      echo "$tag: FAIL: definitely-lost bytes grow with the cycles (+$growth B > LEAK_SLACK=$leak_slack)"
      # Which PulseAudio-side records are new or bigger than in the baseline.
      awk -F'\t' 'NR == FNR { if ($1 == "leak") base[$2 "\t" $6] += $3; next }
        $1 == "leak" { run[$2 "\t" $6] += $3 }
        END { for (k in run) if (run[k] > base[k] + 0) printf "    grew: %s: %d -> %d B\n", k, base[k] + 0, run[k] }' \
        "$work/baseline/records.tsv" "$work/cycles/records.tsv" | head -20
      failed=1
    fi
  fi
  # Live growth from the first snapshot at or after cycle 50 (PulseAudio's
  # free-list caches and first-use allocations have settled by then) to the
  # last one.
  read -r ref_c ref_def ref_reach < <(awk '$1 >= 50 {print $1, $3, $4; exit}' "$work/cycles/mem") || true
  read -r last_c last_def last_reach < <(tail -1 "$work/cycles/mem" | awk '{print $1, $3, $4}') || true
  if [ -n "${ref_c:-}" ] && [ "$last_c" -gt "$ref_c" ] && [[ "$ref_reach$last_reach$ref_def$last_def" =~ ^[0-9]+$ ]]; then
    echo "    live, cycle $ref_c -> $last_c: definitely lost $ref_def -> $last_def B," \
      "still reachable $ref_reach -> $last_reach B"
    if [ "$last_def" -gt $((ref_def + leak_slack)) ]; then
      echo "$tag: FAIL: definitely-lost bytes grow with the cycles (live, +$((last_def - ref_def)) B)"
      failed=1
    fi
    if [ "$last_reach" -gt $((ref_reach + reach_slack)) ]; then
      echo "$tag: FAIL: still-reachable bytes grow with the cycles (+$((last_reach - ref_reach)) B > REACH_SLACK=$reach_slack; rerun with REACHABLE=1 to see the stacks)"
      failed=1
    fi
  fi
  grep -q 'Process terminating' "$work/cycles/valgrind.log" && { echo "$tag: FAIL: the guest crashed"; failed=1; }
fi
if [ "$failed" -ne 0 ]; then
  echo "$tag: FAILED"
  exit 1
fi
echo "$tag: OK"
