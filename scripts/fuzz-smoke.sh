#!/usr/bin/env bash
# Short fuzz smoke run, as CI runs it (scripts/test.sh): builds the four
# cargo-fuzz targets in fuzz/ and runs each for FUZZ_SMOKE_SECONDS, starting
# from a copy of its committed corpus in a temporary directory (the
# repository's corpus is never changed). Fails on any crash, hang or invariant
# violation, printing the crashing input's path and the harness output.
# The long runs are documented in docs/robustness.md ("Fuzzing").
#
# Environment:
#   FUZZ_SMOKE_SECONDS  seconds per target (default 20)
#   FUZZ_SMOKE_KEEP=1   keep the temporary directory even when all passed
set -euo pipefail

cd "$(dirname "$0")/../fuzz"

seconds="${FUZZ_SMOKE_SECONDS:-20}"
# target:max_len, as in docs/robustness.md
targets=(frame_reader:4096 message_decode:4096 host_session:4096 module_engine:1024 capture_host_session:4096 capture_guest:4096)

log() { printf 'fuzz-smoke: %s\n' "$*"; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "cargo-fuzz is missing (scripts/setup.sh installs it)"
  exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/fuzz-smoke.XXXXXX")"
failed=0
cleanup() {
  if [ "$failed" -eq 0 ] && [ "${FUZZ_SMOKE_KEEP:-0}" != 1 ]; then
    rm -rf "$work"
  else
    log "inputs and logs kept in $work"
  fi
}
trap cleanup EXIT

# cargo-fuzz needs nightly -Z flags; RUSTC_BOOTSTRAP lets stable accept them.
export RUSTC_BOOTSTRAP=1
log "building ${#targets[@]} targets"
if ! cargo fuzz build -O -a -s none >"$work/build.log" 2>&1; then
  failed=1
  sed 's/^/    /' "$work/build.log"
  log "build failed"
  exit 1
fi

triple="$(rustc -vV | sed -n 's/^host: //p')"
bindir="target/$triple/release"

for entry in "${targets[@]}"; do
  target="${entry%%:*}"
  max_len="${entry##*:}"
  corpus="$work/$target/corpus"
  artifacts="$work/$target/artifacts"
  output="$work/$target/output.log"
  mkdir -p "$corpus" "$artifacts"
  cp -R "corpus/$target/." "$corpus/"
  status=0
  # -timeout: an input running 10 s is a hang, reported like a crash.
  "$bindir/$target" "$corpus" \
    -max_total_time="$seconds" -max_len="$max_len" -timeout=10 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$output" 2>&1 || status=$?
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$output" | tail -n 1)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$output" | tail -n 1)"
  crashes=("$artifacts"/*)
  [ -e "${crashes[0]}" ] || crashes=()
  if [ "$status" -ne 0 ] || [ "${#crashes[@]}" -gt 0 ]; then
    failed=1
    log "$target: FAILED (exit status $status) after ${runs:-?} executions"
    for c in "${crashes[@]}"; do log "$target: crash input: $c"; done
    log "$target: harness output ($output):"
    # Indented, so no line of it can look like cargo's "test result:".
    sed 's/^/    /' "$output"
  else
    log "$target: ${runs:-?} executions in ${seconds} s, ${rate:-?} exec/s, 0 crashes"
  fi
done

if [ "$failed" -ne 0 ]; then
  log "FAILED"
  exit 1
fi
