#!/usr/bin/env bash
# Idempotent set-up for building and testing secure-tunnel on Debian 12.
#
# 1. installs the Debian packages the build and the tests need;
# 2. fetches the PulseAudio source package whose version matches the installed
#    libpulse, through a private apt configuration with a deb-src line (the
#    system's own sources are not touched), and unpacks it into a cache
#    directory so that build.rs can run bindgen over the pulsecore headers.
#    When the archive no longer holds that version's .dsc (Debian 13 answers
#    404 for pulseaudio_17.0+dfsg1-2.dsc while its tarballs are there), the
#    .dsc is rebuilt from the source's stanza in the Sources index apt just
#    fetched — apt checked InRelease against its own keyring and Sources
#    against InRelease's checksums — and dpkg-source verifies each tarball
#    against that stanza's checksums and applies Debian's patches.
# 3. installs cargo-fuzz (for scripts/fuzz-smoke.sh) and cargo-deny if missing.
#
# The same script sets up a Debian 13 root (scripts/test-debian13.sh runs it
# there with SKIP_APT=1 SKIP_CARGO_TOOLS=1) for PulseAudio 17.0.
#
# Environment:
#   SECURE_TUNNEL_CACHE  cache directory (default: $XDG_CACHE_HOME/secure-tunnel
#                        or ~/.cache/secure-tunnel)
#   SKIP_APT=1           do not install Debian packages (they are already there)
#   SKIP_CARGO_TOOLS=1   do not install cargo-fuzz and cargo-deny
set -euo pipefail

cache="${SECURE_TUNNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-tunnel}"
packages=(
  pulseaudio pulseaudio-utils libpulse-dev libltdl-dev
  clang libclang-dev pkg-config dpkg-dev xz-utils ca-certificates
  sox iproute2 procps systemd valgrind
  # PulseAudio's own test programs built by tests/src/patests.rs (libcheck)
  check
  build-essential debhelper lintian debootstrap
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
  if ! (cd "$cache/download" && apt-get "${aptopts[@]}" source -qq --download-only "pulseaudio=$version"); then
    log "the archive has no pulseaudio_$version.dsc; rebuilding it from the signed Sources index"
    rm -rf "$cache/download"/*
    fetch_without_dsc "$version" "${aptopts[@]}"
  fi
  rm -rf "$dir" "$cache/unpack"
  mkdir -p "$cache/unpack"
  # Checks every file against the .dsc's checksums and applies debian/patches.
  dpkg-source -x "$cache/download"/pulseaudio_*.dsc "$cache/unpack/src" >/dev/null 2>"$cache/dpkg-source.log" \
    || { cat "$cache/dpkg-source.log" >&2; exit 1; }
  mv "$cache/unpack/src" "$dir"
  rm -rf "$cache/unpack" "$cache/download"
  write_config_h "$dir" "$upstream"
  echo "$version" >"$dir/.secure-tunnel-source-version"
  log "PulseAudio headers ready in $dir/src"
}

# fetch_without_dsc VERSION APTOPTS...: writes pulseaudio_VERSION.dsc (unsigned)
# from the source stanza of the Sources index apt verified (InRelease signed by
# a key in apt's keyring, Sources matching InRelease's SHA-256), and downloads
# the files it names from the archive, each checked against its SHA-256.
fetch_without_dsc() {
  local version="$1"; shift
  local stanza="$cache/download/stanza" dsc="$cache/download/pulseaudio_${version#*:}.dsc"
  apt-cache "$@" showsrc pulseaudio \
    | awk -v v="$version" 'BEGIN { RS = ""; ORS = "\n" } index($0, "\nVersion: " v "\n") { print; exit }' >"$stanza"
  [ -s "$stanza" ] || { log "no source stanza for pulseaudio $version in the Sources index"; exit 1; }
  local directory uri
  directory="$(sed -n 's/^Directory: //p' "$stanza")"
  # The archive URI apt uses for this source (from the deb-src line).
  uri="$(awk '{ print $2; exit }' "$cache/apt/sources.list")"
  # A .dsc is the stanza's fields minus what the archive adds to Sources
  # (and minus the .dsc itself, which Sources lists among the files).
  sed -e 's/^Package: /Source: /' \
    -e '/^\(Directory\|Priority\|Section\|Package-List\|Extra-Source-Only\):/,/^[^ ]/{/^\(Directory\|Priority\|Section\|Package-List\|Extra-Source-Only\):/d; /^ /d}' \
    "$stanza" | sed -e '/^$/d' -e '/^ .*\.dsc$/d' >"$dsc"
  local sha size name
  while read -r sha size name; do
    case "$name" in *.dsc) continue ;; esac
    log "fetching $uri/$directory/$name"
    # apt's own downloader (same proxy settings as apt), hash checked too.
    /usr/lib/apt/apt-helper "$@" download-file "$uri/$directory/$name" \
      "$cache/download/$name" "SHA256:$sha" >/dev/null
    echo "$sha  $cache/download/$name" | sha256sum -c --quiet - \
      || { log "$name does not match the SHA-256 in the signed Sources index"; exit 1; }
  done < <(sed -n '/^Checksums-Sha256:/,/^[^ ]/{/^ /p}' "$stanza")
  rm -f "$stanza"
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

# cargo-deny checks advisories, licenses, bans and sources (deny.toml).
install_cargo_deny() {
  if cargo deny --version >/dev/null 2>&1; then
    log "cargo-deny already installed"
    return
  fi
  log "installing cargo-deny"
  cargo install cargo-deny --locked --quiet
}

[ "${SKIP_APT:-0}" = 1 ] || install_packages
fetch_source
if [ "${SKIP_CARGO_TOOLS:-0}" != 1 ]; then
  install_cargo_fuzz
  install_cargo_deny
fi
mkdir -p "$cache"
ln -sfn "pulseaudio-$(pkg-config --modversion libpulse)" "$cache/pulseaudio"
log "done (headers: $cache/pulseaudio/src)"
