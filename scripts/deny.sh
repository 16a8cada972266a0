#!/usr/bin/env bash
# cargo deny over the workspace (deny.toml: every exception has its reason).
# licenses, bans and sources need only the crates already fetched. The
# advisories check needs the RustSec database from GitHub: where GitHub is
# unreachable (this CI has only package registries) and no copy was fetched
# before, the script says in its last line that advisories were NOT checked
# instead of passing quietly; every other failure fails.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo deny --version >/dev/null 2>&1 || { echo "deny: cargo-deny is missing (scripts/setup.sh installs it)" >&2; exit 1; }
cargo deny check bans licenses sources
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if cargo deny check advisories 2>"$log"; then
  cat "$log" >&2
elif grep -q "failed to fetch advisory database" "$log" && ! grep -q "^error\[" "$log"; then
  echo "deny: advisories NOT checked: the RustSec database cannot be fetched here ($(grep -o 'Could not resolve host: [^ ]*' "$log" | head -1))" >&2
else
  cat "$log" >&2
  exit 1
fi
