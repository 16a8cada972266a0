#!/usr/bin/env bash
# Builds secure-tunnel's Debian packages with Debian's own tooling: debhelper
# through dpkg-buildpackage, from the debian/ directory (docs/packaging.md),
# then checks them with lintian (no error, no warning):
#
#   pulseaudio-module-secure-tunnel-PA_VERSION (e.g. -16.1 on Debian 12,
#       -17.0 on Debian 13): the module in PulseAudio's module directory and a
#       commented-out /etc/pulse/default.pa.d/secure-tunnel.pa; depends on
#       pulseaudio (>= PA), pulseaudio (<< PA.1): PulseAudio loads only
#       modules built from its own release's headers.
#   host-playd: /usr/bin/host-playd, /etc/host-playd/host-playd.toml, system
#       and user systemd units (service + socket, not enabled), the man page.
#   secure-tunnel-pipewire: /usr/bin/secure-tunnel-pipewire, the user unit
#       secure-tunnel-pipewire.service (not enabled),
#       /etc/default/secure-tunnel-pipewire, the man page.
#   and their -dbgsym packages (debug symbols).
#
# Usage: packaging/build-debs.sh [--no-build] [--no-lintian] [--out DIR]
#   --no-build    package the release binaries already built (CI builds first)
#   --no-lintian  do not run lintian
#   --out DIR     where the .deb files go (default: target/debian)
# Environment: SECURE_TUNNEL_TARGET_DIR  cargo target directory (default target)
# Prints the path of each package built, one per line, on stdout.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
build=1
lint=1
out="$root/target/debian"
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --no-lintian) lint=0 ;;
    --out) out="$2"; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-debs: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

log() { printf 'build-debs: %s\n' "$*" >&2; }
need() { command -v "$1" >/dev/null || { log "$1 is missing ($2; scripts/setup.sh installs it)"; exit 1; }; }
need dpkg-buildpackage "package dpkg-dev"
need dh "package debhelper"
need pkg-config "package pkg-config"
[ "$lint" = 0 ] || need lintian "package lintian"

target="${SECURE_TUNNEL_TARGET_DIR:-$root/target}/release"
if [ "$build" = 1 ]; then
  (cd "$root" && cargo build --release -p host-playd -p module-secure-tunnel-sink \
    -p module-secure-tunnel-source -p secure-tunnel-pipewire >&2)
fi
for f in host-playd libmodule_secure_tunnel_sink.so libmodule_secure_tunnel_source.so \
  secure-tunnel-pipewire; do
  [ -f "$target/$f" ] || { log "$target/$f is missing: build first (cargo build --release)"; exit 1; }
done
target="$(cd "$target" && pwd)"

# A copy of what the packages are made of (no Rust sources, no target/), so
# that debhelper's work files never land in the workspace and two builds (the
# host's and the Debian 13 root's) cannot meet.
work="$(mktemp -d "${TMPDIR:-/tmp}/secure-tunnel-debs.XXXXXX")"
trap 'rm -rf "$work"' EXIT
src="$work/secure-tunnel"
mkdir -p "$src" "$out"
(cd "$root" && cp -a debian packaging docs README.md CHANGELOG.md LICENSE-MIT LICENSE-APACHE "$src/")
(cd "$src" && debian/rules debian/control >&2)
log "dpkg-buildpackage in $src"
(cd "$src" && SECURE_TUNNEL_BIN="$target" dpkg-buildpackage --build=binary --no-sign >&2) || {
  log "dpkg-buildpackage failed"; exit 1; }

if [ "$lint" = 1 ]; then
  log "lintian $(lintian --version | cut -d' ' -f2)"
  lintian --fail-on error,warning --info "$work"/*.changes >&2 || {
    log "lintian reports errors or warnings (above)"; exit 1; }
fi
for deb in "$work"/*.deb; do
  mv "$deb" "$out/"
  log "built $out/${deb##*/}"
  echo "$out/${deb##*/}"
done
