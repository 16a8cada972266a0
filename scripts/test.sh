#!/usr/bin/env bash
# Full check of the workspace, as CI runs it: set-up, release build (the
# end-to-end tests load target/release's module and daemon), formatting,
# lints, then every test including the end-to-end ones.
set -euo pipefail

cd "$(dirname "$0")/.."

scripts/setup.sh
# The Debian 13 root (debootstrap: network and disk, little CPU) is made while
# the host builds and tests; its stage at the end waits for it.
prepare_log="$(mktemp)"
scripts/test-debian13.sh --prepare >"$prepare_log" 2>&1 &
prepare=$!
cargo build --release --workspace
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
scripts/fuzz-smoke.sh   # each fuzz target for FUZZ_SMOKE_SECONDS (20) on a copy of its corpus
scripts/deny.sh         # cargo deny: licenses, bans, sources, advisories (deny.toml)

log="$(mktemp)"
trap 'rm -f "$log" "$prepare_log"' EXIT
cargo test --release --workspace 2>&1 | tee "$log"
# One closing line for the whole workspace (cargo prints one per test binary,
# the last of which is often an empty doc-test run).
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "\nworkspace: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"

# PulseAudio 17.0: the module built, the end-to-end suite and the packages in
# a Debian 13 root (cached in ~/.cache/secure-tunnel; see docs/packaging.md).
wait "$prepare" || { cat "$prepare_log" >&2; exit 1; }
scripts/test-debian13.sh
