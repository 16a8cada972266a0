#!/usr/bin/env bash
# Boots a real VM and plays through it (issue 14): QEMU with Debian 12's own
# kernel package, this machine's root file system shared read-only over 9p
# (so the guest runs the module and binaries freshly built under
# target/release), a guest PulseAudio that loads module-secure-tunnel-sink
# once over TCP on QEMU's user network (tcp:10.0.2.2:PORT) and once over a
# virtio-vsock device served by rust-vmm's vhost-device-vsock (vsock:2:5000,
# which the backend maps to the host unix socket <uds>_5000 host-playd
# listens on), and host-playd with a host PulseAudio on the host.
#
# For each path: bit-exact playback (the host sink's monitor holds the
# guest's signal sample for sample) and the latency a guest player is told:
# a libpulse player in the guest writes coded impulses and predicts from
# pa_stream_get_latency when each will be heard (bench/'s latency probe), the
# host records when each was, the two clocks related by a timestamp echo over
# the control connection (they differ by the guest's boot time, ~20 s). The
# median of heard - predicted must be within VM_LATENCY_TOLERANCE_MS: 10 ms
# under KVM, 20 ms under TCG, where on this loaded 2-core CI machine the
# guest's medians measured -23 to +12 ms, once +69 (docs/timing.md, "In a real VM").
# target/release/vm-host does that and prints the last line,
# "vm-test: PASS ..." or "vm-test: FAIL ..."; the exit status follows it.
#
# KVM when a VMX/SVM KVM is usable (kvm_intel or kvm_amd loaded, /dev/kvm
# read-write), else TCG (this CI's /dev/kvm is a PVM hypervisor, kvm_pvm,
# which cannot run a stock kernel at a usable speed). VM_ACCEL=kvm|tcg
# overrides.
#
# Cached under ~/.cache/secure-tunnel/vm-debian12 (SECURE_TUNNEL_CACHE
# overrides the parent): the kernel package, its vmlinuz and the few modules
# the initramfs needs. vhost-device-vsock is `cargo install --locked`ed into
# ~/.cargo/bin once (about 2.5 min on 2 cores).
#
#   scripts/vm-test.sh                 # build if needed, boot, test both paths
#   VM_BUILD=0 scripts/vm-test.sh      # binaries are already built (CI)
#   VM_TIMEOUT=300 ...                 # seconds for the whole run in the VM
#   VM_KEEP=1 ...                      # keep the run directory (console log, daemons' logs)
set -euo pipefail

cd "$(dirname "$0")/.."
root="$PWD"
cache="${SECURE_TUNNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-tunnel}/vm-debian12"
vhost_version=0.3.0
timeout_s="${VM_TIMEOUT:-300}"
modules=(virtio_pci 9pnet_virtio 9p virtio_net vmw_vsock_virtio_transport)

log() { printf 'vm-test: %s\n' "$*" >&2; }
die() { printf 'vm-test: FAIL (%s)\n' "$*"; exit 1; }

for tool in qemu-system-x86_64 busybox dpkg-deb apt-get cpio gzip; do
  command -v "$tool" >/dev/null || die "$tool is missing: run scripts/setup.sh"
done

# The kernel: the package Debian's linux-image-amd64 depends on now.
kernel_package() {
  apt-cache depends linux-image-amd64 2>/dev/null \
    | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}

prepare_kernel() {
  local pkg="$1" dir="$cache/$1" kver tmp
  if [ -f "$dir/vmlinuz" ] && [ -f "$dir/modules.ok" ]; then return; fi
  log "fetching $pkg"
  rm -rf "$dir" && mkdir -p "$dir/download"
  (cd "$dir/download" && apt-get download -q "$pkg" 2>&1 | grep -v unsandboxed >&2) \
    || die "apt-get download $pkg"
  tmp="$dir/extract"
  dpkg-deb -x "$dir"/download/*.deb "$tmp"
  kver="$(ls "$tmp/lib/modules")"
  busybox depmod -b "$tmp" "$kver"
  cp "$tmp/boot/vmlinuz-$kver" "$dir/vmlinuz"
  # Only the modules the initramfs loads, with their dependencies, and a
  # modules.dep listing just them for busybox's modprobe.
  local m line f
  mkdir -p "$dir/modules/lib/modules/$kver"
  for m in "${modules[@]}"; do
    line="$(grep -E "/$m\.ko:" "$tmp/lib/modules/$kver/modules.dep")" || die "no $m in $pkg"
    echo "$line" >>"$dir/modules/lib/modules/$kver/modules.dep"
    for f in ${line/:/}; do
      mkdir -p "$dir/modules/lib/modules/$kver/$(dirname "$f")"
      cp "$tmp/lib/modules/$kver/$f" "$dir/modules/lib/modules/$kver/$f"
    done
  done
  # modprobe also wants every dependency to have a line of its own.
  for f in $(cut -d: -f2 "$dir/modules/lib/modules/$kver/modules.dep" | tr ' ' '\n' | sort -u); do
    grep -qE "^$f:" "$dir/modules/lib/modules/$kver/modules.dep" \
      || grep -E "^$f:" "$tmp/lib/modules/$kver/modules.dep" >>"$dir/modules/lib/modules/$kver/modules.dep"
  done
  rm -rf "$tmp" "$dir/download"
  touch "$dir/modules.ok"
}

# The initramfs: static busybox, the modules, scripts/lib/vm-init.sh as /init.
# Cheap, so built afresh for every run.
build_initramfs() {
  local kdir="$1" out="$2" stage="$3"
  mkdir -p "$stage/bin"
  cp "$(command -v busybox)" "$stage/bin/busybox"
  for a in sh mount mkdir modprobe insmod ip switch_root cut sleep echo cat; do
    ln -s busybox "$stage/bin/$a"
  done
  cp -a "$kdir/modules/lib" "$stage/lib"
  install -m 755 "$root/scripts/lib/vm-init.sh" "$stage/init"
  (cd "$stage" && find . | cpio -o -H newc --quiet | gzip -1) >"$out"
}

vhost_device_vsock() {
  local bin
  bin="$(command -v vhost-device-vsock || echo "$HOME/.cargo/bin/vhost-device-vsock")"
  if ! "$bin" --version 2>/dev/null | grep -q " $vhost_version\$"; then
    log "installing vhost-device-vsock $vhost_version (cargo install --locked)"
    cargo install --locked --quiet --version "$vhost_version" vhost-device-vsock >&2 \
      || die "cargo install vhost-device-vsock"
    bin="$HOME/.cargo/bin/vhost-device-vsock"
  fi
  echo "$bin"
}

accel="${VM_ACCEL:-}"
if [ -z "$accel" ]; then
  accel=tcg
  if [ -r /dev/kvm ] && [ -w /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; then
    accel=kvm
  fi
fi

tolerance="${VM_LATENCY_TOLERANCE_MS:-$([ "$accel" = kvm ] && echo 10 || echo 20)}"

start=$(date +%s)
pkg="$(kernel_package)"
[ -n "$pkg" ] || die "apt-cache knows no linux-image-amd64 (run apt-get update)"
prepare_kernel "$pkg"
vhost="$(vhost_device_vsock)"
if [ "${VM_BUILD:-1}" != 0 ]; then
  cargo build --release --quiet -p module-secure-tunnel-sink -p host-playd -p secure-tunnel-bench --bin vm-host --bin vm-guest >&2
fi
for b in target/release/vm-host target/release/vm-guest target/release/host-playd \
         target/release/libmodule_secure_tunnel_sink.so; do
  [ -x "$b" ] || [ -f "$b" ] || die "$b is not built (cargo build --release --workspace)"
done

run="$(mktemp -d /tmp/st-vm.XXXXXX)"
cleanup() {
  if [ "${VM_KEEP:-0}" = 1 ] || [ "${failed:-1}" = 1 ]; then log "run directory kept: $run"; else rm -rf "$run"; fi
}
trap cleanup EXIT
build_initramfs "$cache/$pkg" "$run/initramfs.gz" "$run/initramfs"
log "kernel $pkg, accel $accel, latency tolerance $tolerance ms, vhost-device-vsock $vhost, prepared in $(( $(date +%s) - start )) s"

set +e
timeout --kill-after=10 "$((timeout_s + 30))" "$root/target/release/vm-host" \
  --kernel "$cache/$pkg/vmlinuz" --initrd "$run/initramfs.gz" --accel "$accel" \
  --vhost-device-vsock "$vhost" --guest "$root/target/release/vm-guest" \
  --dir "$run" --timeout "$timeout_s" --tolerance-ms "$tolerance"
status=$?
set -e
failed=$(( status != 0 ))
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
  echo "vm-test: FAIL (vm-host timed out after $((timeout_s + 30)) s)"
fi
exit "$status"
