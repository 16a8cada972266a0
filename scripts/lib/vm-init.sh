#!/bin/sh
# PID 1 of the VM that scripts/vm-test.sh boots (busybox sh, in the initramfs
# that script builds): load the few modules the Debian kernel needs, mount
# the host's root file system read-only over 9p (tag hostroot) with fresh
# /proc, /sys, /dev, /tmp and /run, the exchange directory (tag xchg) at
# /run/xchg, bring up QEMU's user network (10.0.2.15, host 10.0.2.2), then
# hand over to /run/xchg/run.sh, written by the host. When that ends, the VM
# powers off.
export PATH=/bin
fail() { echo "vm-init: $*"; echo o >/proc/sysrq-trigger; exit 1; }
mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_pci 9pnet_virtio 9p virtio_net vmw_vsock_virtio_transport; do
  modprobe "$m" || fail "modprobe $m"
done
mkdir -p /newroot
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144,cache=loose hostroot /newroot \
  || fail "mounting the host root"
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mount -t tmpfs -o mode=755 tmpfs /newroot/run
mkdir -p /newroot/run/xchg
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 xchg /newroot/run/xchg \
  || fail "mounting the exchange directory"
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
echo "vm-init: up after $(cut -d' ' -f1 /proc/uptime) s"
exec switch_root /newroot /bin/sh -c '/bin/sh /run/xchg/run.sh; echo "vm-init: run.sh exited $?"; echo o >/proc/sysrq-trigger; sleep 10'
