#!/usr/bin/env bash
# Full check of the workspace, as CI runs it: set-up, release build (the
# end-to-end tests load target/release's module and daemon), formatting,
# lints, then every test including the end-to-end ones.
set -euo pipefail

cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --release --workspace
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --release --workspace
