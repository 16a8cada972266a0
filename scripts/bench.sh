#!/usr/bin/env bash
# Benchmarks of issue 3 (not tests: each prints a table). Builds the module,
# host-playd and the benchmarks in release mode, then runs one or all:
#
#   scripts/bench.sh latency|capture|stability|drift|cost|pw-cost|all [options passed on]
#
# Durations: BENCH_MINUTES (stability, drift; default 10), BENCH_SECONDS
# (cost; default 60; pw-cost: 30), BENCH_MEASURE (latency, seconds per row; default 20).
# `scripts/bench.sh <name> --help` lists a benchmark's options. Run on an
# otherwise idle machine: other load shows up in every number.
set -euo pipefail

cd "$(dirname "$0")/.."

usage() {
    echo "usage: $0 latency|capture|stability|drift|cost|pw-cost|all [options]" >&2
    exit 2
}

[ $# -ge 1 ] || usage
what="$1"
shift

cargo build --release -p host-playd -p module-secure-tunnel-sink -p module-secure-tunnel-source -p secure-tunnel-pipewire -p secure-tunnel-bench

run() {
    echo "### $1 ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores)"
    "target/release/bench-$1" "${@:2}"
    echo
}

case "$what" in
    latency | capture | stability | drift | cost | pw-cost) run "$what" "$@" ;;
    all)
        [ $# -eq 0 ] || { echo "all takes no options; use BENCH_* variables" >&2; exit 2; }
        for b in latency capture stability drift cost pw-cost; do run "$b"; done
        ;;
    *) usage ;;
esac
