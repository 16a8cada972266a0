#!/usr/bin/env bash
# Idempotent set-up for building and testing secure-tunnel on Debian 12.
#
# 1. installs the Debian packages the build and the tests need;
# 2. fetches the PulseAudio source package whose version matches the installed
#    libpulse, through a private apt configuration with a deb-src line (the
#    system's own sources are not touched), and unpacks it into a cache
#    directory so that build.rs can run bindgen over the pulsecore headers.
# 3. installs cargo-fuzz (for scripts/fuzz-smoke.sh) if `cargo fuzz` is missing.
#
# Environment:
#   SECURE_TUNNEL_CACHE  cache directory (default: $XDG_CACHE_HOME/secure-tunnel
#                        or ~/.cache/secure-tunnel)
#   SKIP_APT=1           do not install Debian packages (they are already there)
set -euo pipefail

cache="${SECURE_TUNNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-tunnel}"
packages=(
  pulseaudio pulseaudio-utils libpulse-dev libltdl-dev
  clang libclang-dev pkg-config dpkg-dev xz-utils ca-certificates
  sox iproute2 procps systemd valgrind
  # the PipeWire front end (secure-tunnel-pipewire) and its tests
  libpipewire-0.3-dev pipewire pipewire-bin wireplumber pipewire-pulse
  qemu-system-x86 busybox-static cpio   # scripts/vm-test.sh
  systemd-container                     # scripts/systemd-test.sh
)

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_packages() {
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    log "Debian packages already installed"
    return
  fi
  log "installing: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# The source version of the installed libpulse (binNMU suffix "+bN" dropped:
# a binary rebuild shares its source with the original upload).
source_version() {
  dpkg-query -W -f='${source:Version}' libpulse-dev
}

fetch_source() {
  local upstream version dir aptdir
  version="$(source_version)"
  upstream="$(pkg-config --modversion libpulse)"
  dir="$cache/pulseaudio-$upstream"
  if [ -f "$dir/src/pulsecore/sink.h" ] && [ -f "$dir/.secure-tunnel-source-version" ] \
     && [ "$(cat "$dir/.secure-tunnel-source-version")" = "$version" ]; then
    log "PulseAudio $version source already in $dir"
    return
  fi
  log "fetching PulseAudio source $version into $cache"
  aptdir="$cache/apt"
  mkdir -p "$aptdir/lists/partial" "$aptdir/archives/partial" "$cache/download"
  # deb-src lines for the same archives the system installs binaries from
  # (whatever mirror it is configured with), taken from apt's own view.
  src_lines() {
    apt-cache policy \
      | awk '$3 ~ /\/main$/ && $NF == "Packages" { sub(/\/main$/, "", $3); print "deb-src " $2 " " $3 " main" }' \
      | sort -u
  }
  src_lines >"$aptdir/sources.list"
  if [ ! -s "$aptdir/sources.list" ]; then
    as_root apt-get update -qq   # apt's lists may not have been fetched yet
    src_lines >"$aptdir/sources.list"
  fi
  if [ ! -s "$aptdir/sources.list" ]; then
    log "cannot derive deb-src lines from 'apt-cache policy'; is apt configured?"
    exit 1
  fi
  local aptopts=(
    -o "Dir::Etc::SourceList=$aptdir/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$aptdir/lists"
    -o "Dir::Cache::Archives=$aptdir/archives"
    -o "APT::Sandbox::User=root"
  )
  apt-get "${aptopts[@]}" update -qq
  rm -rf "$cache/download"/*
  (cd "$cache/download" && apt-get "${aptopts[@]}" source -qq --download-only "pulseaudio=$version")
  rm -rf "$dir" "$cache/unpack"
  mkdir -p "$cache/unpack"
  dpkg-source --no-check -x "$cache/download"/pulseaudio_*.dsc "$cache/unpack/src" >/dev/null
  mv "$cache/unpack/src" "$dir"
  rm -rf "$cache/unpack" "$cache/download"
  write_config_h "$dir" "$upstream"
  echo "$version" >"$dir/.secure-tunnel-source-version"
  log "PulseAudio headers ready in $dir/src"
}

# pulsecore headers include <config.h>; only a handful of its macros matter to
# code that merely includes them.
write_config_h() {
  local dir="$1" upstream="$2"
  cat >"$dir/src/config.h" <<CONF
/* Minimal config.h written by secure-tunnel's scripts/setup.sh for bindgen. */
#define PACKAGE "pulseaudio"
#define PACKAGE_NAME "pulseaudio"
#define PACKAGE_VERSION "$upstream"
#define HAVE_ATOMIC_BUILTINS 1
#define HAVE_ATOMIC_BUILTINS_MEMORY_MODEL 1
CONF
}

# cargo-fuzz builds its targets with the C++ compiler the clang package
# provides (libFuzzer is C++); no nightly toolchain, see docs/robustness.md.
install_cargo_fuzz() {
  if cargo fuzz --version >/dev/null 2>&1; then
    log "cargo-fuzz already installed"
    return
  fi
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
}

install_packages
fetch_source
install_cargo_fuzz
mkdir -p "$cache"
ln -sfn "pulseaudio-$(pkg-config --modversion libpulse)" "$cache/pulseaudio"
log "done (headers: $cache/pulseaudio/src)"
