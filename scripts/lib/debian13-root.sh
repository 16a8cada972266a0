# shellcheck shell=bash
# A Debian 13 (trixie) root for building and testing against PulseAudio 17.0,
# made with debootstrap from the same Debian archive apt installs from here and
# verified with apt's own keyring. Sourced by scripts/test-debian13.sh.
#
# The root is cached in $cache/debian13/root and rebuilt only when the package
# list below changes (its hash is in root/.secure-tunnel-packages).
#
# Why a chroot with the host's toolchain bind-mounted (not rustup inside the
# root, not a container): the host's ~/.rustup and ~/.cargo are an x86_64 glibc
# toolchain that runs on Debian 13's newer glibc as is, so the root needs no
# network beyond Debian's archive, and the registry cache is shared with the
# host build (no second crates.io download).

debian13_packages=(
  pulseaudio pulseaudio-utils libpulse-dev libltdl-dev
  clang libclang-dev pkg-config gcc libc6-dev dpkg-dev xz-utils ca-certificates
  procps iproute2 passwd init-system-helpers build-essential debhelper lintian
  libpipewire-0.3-dev
)

# Where the root's cargo builds (its bindings are PulseAudio 17.0's).
debian13_target=/var/cache/secure-tunnel/target

log13() { printf 'debian13: %s\n' "$*" >&2; }

# The mirror apt uses for Debian here (first deb.debian.org-style URI from
# apt-cache policy), falling back to deb.debian.org.
debian13_mirror() {
  local m
  m="$(apt-cache policy 2>/dev/null \
    | awk '$3 ~ /^bookworm\/main$/ && $NF == "Packages" { print $2; exit }')"
  echo "${m:-http://deb.debian.org/debian}"
}

# debian13_root CACHE: prints the root's path, building it when needed.
debian13_root() {
  local cache="$1" dir="$cache/debian13" root hash
  root="$dir/root"
  hash="$(printf '%s\n' "${debian13_packages[@]}" | sha256sum | cut -c1-16)"
  if [ -f "$root/.secure-tunnel-packages" ] && [ "$(cat "$root/.secure-tunnel-packages")" = "$hash" ]; then
    log13 "root cached in $root"
    echo "$root"
    return
  fi
  if [ -f "$root/.secure-tunnel-packages" ]; then
    # The list changed: install what is new instead of starting over.
    log13 "installing the root's new packages"
    if debian13_apt_install "$root" "$dir/apt.log"; then
      echo "$hash" >"$root/.secure-tunnel-packages"
      echo "$root"
      return
    fi
    log13 "apt-get in the root failed (see $dir/apt.log); building it again"
  fi
  command -v debootstrap >/dev/null || { log13 "debootstrap is missing (scripts/setup.sh installs it)"; return 1; }
  debian13_umount "$root"
  rm -rf "$dir/root.new"
  mkdir -p "$dir"
  local mirror
  mirror="$(debian13_mirror)"
  log13 "debootstrap trixie from $mirror into $dir/root.new (once; cached afterwards)"
  # --keyring: the InRelease signature is checked with apt's own Debian keyring.
  # Only the base system: debootstrap's resolver does not follow virtual
  # packages (lintian's perl-openssl-abi-3), the root's apt does.
  debootstrap --variant=minbase --components=main \
    --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
    trixie "$dir/root.new" "$mirror" >"$dir/debootstrap.log" 2>&1 || {
    log13 "debootstrap failed; last lines of $dir/debootstrap.log:"
    tail -20 "$dir/debootstrap.log" >&2
    return 1
  }
  log13 "installing ${#debian13_packages[@]} packages with the root's apt"
  debian13_apt_install "$dir/root.new" "$dir/apt.log" || {
    log13 "apt-get in the new root failed; last lines of $dir/apt.log:"
    tail -20 "$dir/apt.log" >&2
    return 1
  }
  echo "$hash" >"$dir/root.new/.secure-tunnel-packages"
  rm -rf "$root"
  mv "$dir/root.new" "$root"
  echo "$root"
}

# debian13_apt_install ROOT LOG: the package list, with the root's own apt
# (Debian 13's archive, verified with the root's keyring).
debian13_apt_install() {
  local root="$1" log="$2" rc=0
  mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
  chroot "$root" /usr/bin/env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin DEBIAN_FRONTEND=noninteractive \
    sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends ${debian13_packages[*]} && apt-get clean" \
    >"$log" 2>&1 || rc=$?
  umount "$root/proc" 2>/dev/null || true
  return "$rc"
}

# Mounts what a build and PulseAudio need: /proc, /dev (with /dev/shm for
# PulseAudio's memfd/shm pools), /sys, the workspace at the same path, and the
# host's toolchain read-only except the cargo registry cache.
debian13_mount() {
  local root="$1" workspace="$2"
  mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
  mountpoint -q "$root/sys" || mount --rbind /sys "$root/sys"
  mountpoint -q "$root/dev" || mount --rbind /dev "$root/dev"
  local d
  for d in "$workspace" "$HOME/.rustup" "$HOME/.cargo"; do
    mkdir -p "$root$d"
    mountpoint -q "$root$d" || mount --bind "$d" "$root$d"
  done
  # The root's cargo target directory lives beside the root (not in it), so
  # that rebuilding the root keeps the compiled crates.
  mkdir -p "$root$debian13_target" "$(dirname "$root")/target"
  mountpoint -q "$root$debian13_target" || mount --bind "$(dirname "$root")/target" "$root$debian13_target"
  cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
}

debian13_umount() {
  local root="$1" m
  [ -d "$root" ] || return 0
  # Deepest first.
  for m in $(awk -v r="$root" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
}

# debian13_run ROOT CMD...: runs CMD in the root as root with the host's
# toolchain on PATH.
debian13_run() {
  local root="$1"; shift
  chroot "$root" /usr/bin/env -i \
    HOME="$HOME" PATH="$HOME/.cargo/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin" \
    RUSTUP_HOME="$HOME/.rustup" CARGO_HOME="$HOME/.cargo" LANG=C.UTF-8 TERM=dumb \
    ${CARGO_BUILD_JOBS:+CARGO_BUILD_JOBS="$CARGO_BUILD_JOBS"} \
    "$@"
}

# debian13_seed ROOT HOST_TARGET: on a cold root target, starts from the
# host's release build: every crate that does not depend on the PulseAudio
# headers is compiled identically (same rustc, same paths), and
# pulse-module-sys rebuilds on its own because the libpulsecore it was built
# against (rerun-if-changed) does not exist in the root.
debian13_seed() {
  local target="$(dirname "$1")/target" host="$2"
  [ -d "$target/release/deps" ] && return 0
  [ -d "$host/release/deps" ] || return 0
  log13 "seeding the root's target directory from $host"
  mkdir -p "$target/release"
  cp -a "$host/release/deps" "$host/release/build" "$host/release/.fingerprint" "$target/release/"
}
