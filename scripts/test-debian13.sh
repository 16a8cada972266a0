#!/usr/bin/env bash
# PulseAudio 17.0 tested for real: in a Debian 13 (trixie) root made with
# debootstrap (scripts/lib/debian13-root.sh, cached under
# ~/.cache/secure-tunnel/debian13), runs scripts/setup.sh (which fetches the
# 17.0 source although the archive has lost its .dsc), builds the module and
# host-playd against that root's PulseAudio 17.0 with the host's Rust
# toolchain, and runs the end-to-end suite (bit-exact playback, latency, ...)
# there with the root's own 17.0 daemons; then the Debian packages are built,
# checked with lintian and installed in the root (tests/tests/packages.rs).
#
# Needs root (debootstrap, chroot, mounts); scripts/test.sh calls it.
# Usage: scripts/test-debian13.sh [--no-packages | --prepare]
#   --prepare  only make the root (scripts/test.sh runs this in the background
#              while the host builds: debootstrap is mostly network and disk)
# Environment: SECURE_TUNNEL_CACHE as for scripts/setup.sh.
set -euo pipefail

workspace="$(cd "$(dirname "$0")/.." && pwd)"
cache="${SECURE_TUNNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-tunnel}"
packages=1
prepare_only=0
case "${1:-}" in
  --no-packages) packages=0 ;;
  --prepare) prepare_only=1 ;;   # only build (or check) the cached root
esac
# shellcheck source=lib/debian13-root.sh
. "$workspace/scripts/lib/debian13-root.sh"

[ "$(id -u)" -eq 0 ] || { log13 "needs root (debootstrap, chroot, mount)"; exit 1; }
started=$SECONDS
root="$(debian13_root "$cache")"
[ "$prepare_only" = 0 ] || { log13 "root ready after $((SECONDS - started)) s"; exit 0; }
trap 'debian13_umount "$root"' EXIT
debian13_seed "$root" "${SECURE_TUNNEL_TARGET_DIR:-$workspace/target}"
debian13_mount "$root" "$workspace"
log13 "root ready after $((SECONDS - started)) s"

pa="$(debian13_run "$root" pkg-config --modversion libpulse)"
case "$pa" in
  17.*) log13 "PulseAudio $pa in the root" ;;
  *) log13 "expected PulseAudio 17.x in the root, found '$pa'"; exit 1 ;;
esac

target="$debian13_target"
in_root() {
  debian13_run "$root" env CARGO_TARGET_DIR="$target" SECURE_TUNNEL_TARGET_DIR="$target" \
    bash -c "cd '$workspace' && $1"
}
in_root "SKIP_APT=1 SKIP_CARGO_TOOLS=1 scripts/setup.sh"
# secure-tunnel-pipewire too: it must build against Debian 13's PipeWire 1.4
# (Debian 12 has 0.3.65), and the packages test packages it.
in_root "cargo build --release -p module-secure-tunnel-sink -p module-secure-tunnel-source -p host-playd -p secure-tunnel-pipewire"
log13 "built after $((SECONDS - started)) s"
version="$(strings "$root$target/release/libmodule_secure_tunnel_sink.so" | grep -x "$pa" | head -1 || true)"
[ "$version" = "$pa" ] || { log13 "the module does not report version $pa"; exit 1; }
in_root "cargo test --release -p secure-tunnel-e2e --test end_to_end"
log13 "end-to-end suite passed against PulseAudio $pa after $((SECONDS - started)) s"

if [ "$packages" = 1 ]; then
  in_root "cargo test --release -p secure-tunnel-e2e --test packages"
  log13 "packages built, lintian-clean and installed after $((SECONDS - started)) s"
fi
log13 "done in $((SECONDS - started)) s"
