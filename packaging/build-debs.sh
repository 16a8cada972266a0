#!/usr/bin/env bash
# Builds secure-tunnel's two Debian packages with dpkg-deb (no debhelper, no
# cargo-deb: every file's place is spelt out below):
#
#   pulseaudio-module-secure-tunnel_VERSION_ARCH.deb
#       module-secure-tunnel-sink.so in PulseAudio's module directory and a
#       commented-out /etc/pulse/default.pa.d/secure-tunnel.pa; depends on
#       exactly the pulseaudio it was built against (pulsecore has no stable
#       ABI, and PulseAudio refuses modules built for another version).
#   host-playd_VERSION_ARCH.deb
#       /usr/bin/host-playd, /etc/host-playd/host-playd.toml, system and user
#       systemd units (service + socket), /etc/default/host-playd, the man
#       page, and a postinst creating the system user host-playd.
#
# Usage: packaging/build-debs.sh [--no-build] [--out DIR]
#   --no-build   package the release binaries already built (CI builds first)
#   --out DIR    where the .deb files go (default: target/debian)
# Environment: SECURE_TUNNEL_TARGET_DIR  cargo target directory (default target)
# Prints the path of each package built, one per line, on stdout.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
build=1
out="$root/target/debian"
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --out) out="$2"; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-debs: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

log() { printf 'build-debs: %s\n' "$*" >&2; }
need() { command -v "$1" >/dev/null || { log "$1 is missing ($2)"; exit 1; }; }
need dpkg-deb "package dpkg"
need dpkg-shlibdeps "package dpkg-dev"
need pkg-config "package pkg-config"

target="${SECURE_TUNNEL_TARGET_DIR:-$root/target}/release"
if [ "$build" = 1 ]; then
  (cd "$root" && cargo build --release -p host-playd -p module-secure-tunnel-sink >&2)
fi
for f in host-playd libmodule_secure_tunnel_sink.so; do
  [ -f "$target/$f" ] || { log "$target/$f is missing: build first (cargo build --release)"; exit 1; }
done

version="$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' "$root/Cargo.toml")"
arch="$(dpkg --print-architecture)"
modlibexecdir="$(pkg-config --variable=modlibexecdir libpulse)"
# The module is tied to the exact PulseAudio build its pulsecore headers
# came from; pulseaudio and libpulse0 share one source version.
pa_version="$(dpkg-query -W -f='${Version}' pulseaudio 2>/dev/null || true)"
[ -n "$pa_version" ] || pa_version="$(dpkg-query -W -f='${Version}' libpulse0)"
maintainer="secure-tunnel developers <secure-tunnel@example.invalid>"

work="$(mktemp -d "${TMPDIR:-/tmp}/secure-tunnel-debs.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

# shlibs:Depends of the ELF files given, computed by dpkg-shlibdeps.
shlibs() {
  local dir="$work/shlibs"
  mkdir -p "$dir/debian"
  printf 'Source: secure-tunnel\n\nPackage: secure-tunnel\nArchitecture: any\n' >"$dir/debian/control"
  (cd "$dir" && dpkg-shlibdeps -O --ignore-missing-info --warnings=0 "$@" 2>/dev/null) \
    | sed -n 's/^shlibs:Depends=//p'
}

# install_file MODE SRC DEST_IN_PACKAGE_ROOT
install_file() { install -D -m "$1" "$2" "$3"; }

copyright() {
  cat >"$1" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: secure-tunnel

Files: *
Copyright: secure-tunnel developers
License: MIT or Apache-2.0
 On Debian systems the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
}

# finish PKGDIR NAME DEPENDS DESCRIPTION_FILE [EXTRA_CONTROL_LINES]
finish() {
  local dir="$1" name="$2" depends="$3" description="$4" extra="${5:-}"
  local size
  (cd "$dir" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z \
    | xargs -0 md5sum >DEBIAN/md5sums)
  size="$(du -sk --exclude=DEBIAN "$dir" | cut -f1)"
  {
    echo "Package: $name"
    echo "Version: $version"
    echo "Architecture: $arch"
    echo "Maintainer: $maintainer"
    echo "Installed-Size: $size"
    echo "Depends: $depends"
    [ -n "$extra" ] && printf '%s\n' "$extra"
    echo "Section: sound"
    echo "Priority: optional"
    echo "Homepage: https://example.invalid/secure-tunnel"
    cat "$description"
  } >"$dir/DEBIAN/control"
  local deb="$out/${name}_${version}_${arch}.deb"
  dpkg-deb --root-owner-group -Zxz --build "$dir" "$deb" >/dev/null
  log "built $deb"
  echo "$deb"
}

docs() {
  local dir="$1" name="$2"; shift 2
  local doc="$dir/usr/share/doc/$name"
  mkdir -p "$doc"
  copyright "$doc/copyright"
  for f in "$@"; do install -m 0644 "$root/$f" "$doc/"; done
  gzip -9n <"$root/CHANGELOG.md" >"$doc/changelog.gz"
}

# --- pulseaudio-module-secure-tunnel ---------------------------------------
m="$work/pulseaudio-module-secure-tunnel"
mkdir -p "$m/DEBIAN"
install_file 0644 "$target/libmodule_secure_tunnel_sink.so" \
  "$m$modlibexecdir/module-secure-tunnel-sink.so"
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
  "$m$modlibexecdir/module-secure-tunnel-sink.so"
install_file 0644 "$root/packaging/module/secure-tunnel.pa" "$m/etc/pulse/default.pa.d/secure-tunnel.pa"
echo /etc/pulse/default.pa.d/secure-tunnel.pa >"$m/DEBIAN/conffiles"
docs "$m" pulseaudio-module-secure-tunnel README.md docs/guest-setup.md \
  docs/configuration.md docs/troubleshooting.md
cat >"$work/module.description" <<EOF
Description: PulseAudio sink that plays into the host through host-playd
 module-secure-tunnel-sink is a PulseAudio sink for virtual machine guests.
 It sends audio to host-playd on the host over a small protocol (unix, TCP
 or vsock) instead of PulseAudio's native protocol, follows the host's
 clock and reports the latency the listener actually hears.
 .
 Enable it by uncommenting one line in
 /etc/pulse/default.pa.d/secure-tunnel.pa. Built for PulseAudio $pa_version
 exactly: pulsecore modules are tied to one PulseAudio build.
EOF
module_shlibs="$(shlibs "$m$modlibexecdir/module-secure-tunnel-sink.so")"
finish "$m" pulseaudio-module-secure-tunnel \
  "pulseaudio (= $pa_version)${module_shlibs:+, $module_shlibs}" "$work/module.description" \
  "Enhances: pulseaudio"

# --- host-playd ------------------------------------------------------------
h="$work/host-playd"
mkdir -p "$h/DEBIAN"
install_file 0755 "$target/host-playd" "$h/usr/bin/host-playd"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$h/usr/bin/host-playd"
install_file 0644 "$root/packaging/host-playd/host-playd.toml" "$h/etc/host-playd/host-playd.toml"
install_file 0644 "$root/packaging/host-playd/host-playd.default" "$h/etc/default/host-playd"
for unit in host-playd.service host-playd.socket; do
  install_file 0644 "$root/packaging/systemd/system/$unit" "$h/lib/systemd/system/$unit"
  install_file 0644 "$root/packaging/systemd/user/$unit" "$h/usr/lib/systemd/user/$unit"
done
mkdir -p "$h/usr/share/man/man8"
gzip -9n <"$root/docs/host-playd.8" >"$h/usr/share/man/man8/host-playd.8.gz"
docs "$h" host-playd README.md docs/host-setup.md docs/configuration.md \
  docs/troubleshooting.md docs/comparison.md docs/threat-model.md
printf '%s\n' /etc/host-playd/host-playd.toml /etc/default/host-playd >"$h/DEBIAN/conffiles"
for script in postinst prerm postrm; do
  install -m 0755 "$root/packaging/host-playd/$script" "$h/DEBIAN/$script"
done
cat >"$work/host-playd.description" <<EOF
Description: host daemon playing virtual machine guests' audio (secure-tunnel)
 host-playd accepts audio from module-secure-tunnel-sink in virtual machine
 guests over unix, TCP or vsock sockets and plays each guest through the
 host's PulseAudio, reporting the host's playback clock back. A guest can
 send audio and a handful of control messages, nothing else; the daemon runs
 unprivileged in a Landlock and seccomp sandbox.
 .
 Ships system units (host-playd.socket/.service, for a system-wide
 PulseAudio) and user units (systemctl --user enable --now
 host-playd.socket, for a desktop user's PulseAudio). Neither is enabled
 on installation.
EOF
playd_shlibs="$(shlibs "$h/usr/bin/host-playd")"
finish "$h" host-playd "${playd_shlibs:+$playd_shlibs, }passwd" "$work/host-playd.description" \
  "Recommends: pulseaudio | pipewire-pulse"
