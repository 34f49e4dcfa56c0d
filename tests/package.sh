#!/bin/bash
# The installed package on a clean machine (Debian 12, as root): builds the release programs,
# the guest image and the `berth` .deb (desktop/package/deb.sh), installs the .deb into a fresh
# Debian root made by debootstrap with only qemu-system-x86 and qemu-utils added, and there, as
# a plain user: berth start, berth run --rm of an image from a registry on this machine's
# loopback, a shared folder both ways (files the container makes belong to the user), berth
# stop; the arm64 guest is in the package too, and without qemu-system-arm `berth start --arch
# arm64` says what is missing. Prints the package's size. Run by ./dev test; alone:
# tests/package.sh.
# BERTH_PACKAGE_ROOT_CACHE=FILE keeps the debootstrapped root (with QEMU) as a tarball between
# runs; CI makes it afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/target/package
mkdir -p "$OUT"
step() { echo "==> package: $*"; }
SUITE=bookworm
MIRROR=${BERTH_DEBIAN_MIRROR:-http://deb.debian.org/debian}

step "building berth and both guests from release builds (./dev images)"
./dev images
DEB=$(desktop/package/deb.sh "$OUT")
dpkg-deb -I "$DEB" | sed -n 's/^ \(Package\|Version\|Depends\|Suggests\|Installed-Size\):/  \1:/p'

WORK=$(mktemp -d "$OUT/test.XXXXXX")
cleanup() {
    local rc=$?
    [ -z "${REG_PID:-}" ] || kill "$REG_PID" 2>/dev/null || true
    if [ $rc -ne 0 ] && [ -d "$WORK/root/home/tester" ]; then
        echo "==> package test failed: the daemon's log and the VM's serial tail" >&2
        tail -n 30 "$WORK/root/home/tester/.local/share/berth/daemon.log" >&2 2>/dev/null || true
        tail -n 20 "$WORK/root/home/tester/.local/share/berth/vm/serial.log" >&2 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT

# A clean Debian: minbase, then QEMU and nothing else.
R=$WORK/root
if [ -n "${BERTH_PACKAGE_ROOT_CACHE:-}" ] && [ -f "$BERTH_PACKAGE_ROOT_CACHE" ]; then
    step "a clean Debian root with QEMU (from $BERTH_PACKAGE_ROOT_CACHE)"
    mkdir -p "$R" && tar -C "$R" -xf "$BERTH_PACKAGE_ROOT_CACHE"
else
    step "debootstrap --variant=minbase $SUITE (a clean Debian root)"
    debootstrap --variant=minbase "$SUITE" "$R" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 20 "$WORK/debootstrap.log" >&2; exit 1; }
    step "adding qemu-system-x86 and qemu-utils, nothing else"
    chroot "$R" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive chroot "$R" apt-get install -y -qq --no-install-recommends \
        qemu-system-x86 qemu-utils >/dev/null
    chroot "$R" apt-get clean
    [ -z "${BERTH_PACKAGE_ROOT_CACHE:-}" ] || tar -C "$R" -cf "$BERTH_PACKAGE_ROOT_CACHE" .
fi
step "installing $(basename "$DEB") with dpkg (its dependencies must all be there already)"
cp "$DEB" "$R/tmp/"
chroot "$R" dpkg -i "/tmp/$(basename "$DEB")" >/dev/null
chroot "$R" useradd -m -u 1500 -s /bin/bash tester
# Berth must not need Debian's tools at run time (macOS and Windows have none): hide them.
for tool in apt-get dpkg dpkg-deb mke2fs mkfs.ext4 cpio debootstrap; do
    for dir in /usr/bin /bin /usr/sbin /sbin; do
        [ ! -e "$R$dir/$tool" ] || [ -L "$R$dir" ] || mv "$R$dir/$tool" "$R$dir/$tool.hidden"
    done
done

source tests/fixtures/registry.sh
start_registry "$WORK"
step "registry $REG on this machine's loopback"

# Everything below runs in a private mount namespace: the root's /proc, /dev and /sys go away
# with it, whatever happens.
cat > "$WORK/inside.sh" <<INSIDE
set -euo pipefail
mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
mount --rbind /sys "$R/sys"
mount -t tmpfs tmpfs "$R/tmp"
as_user() { timeout --kill-after=10 300 chroot --userspec=tester:tester "$R" env -i HOME=/home/tester USER=tester PATH=/usr/bin:/bin "\$@"; }
step() { echo "==> package: \$*"; }
step "as tester: berth start"
as_user berth start
step "as tester: berth run --rm $REG/busybox"
out=\$(as_user berth run --rm "$REG/busybox" sh -c 'echo "kernel \$(uname -r) on \$(uname -m)"')
echo "  \$out"
grep -q "^kernel .* on x86_64\$" <<<"\$out" || { echo "unexpected output from the container: \$out" >&2; exit 1; }
step "as tester: a shared folder both ways"
as_user mkdir -p /home/tester/project
echo "from the host" > "$R/home/tester/project/host.txt"
chown 1500:1500 "$R/home/tester/project/host.txt"
got=\$(as_user berth run --rm -v /home/tester/project:/work "$REG/busybox" sh -c 'cat /work/host.txt; echo "from the container" > /work/made.txt')
[ "\$got" = "from the host" ] || { echo "the container read '\$got' from the shared folder" >&2; exit 1; }
[ "\$(cat "$R/home/tester/project/made.txt")" = "from the container" ] || { echo "the container's file did not reach the host" >&2; exit 1; }
owner=\$(stat -c %u:%g "$R/home/tester/project/made.txt")
[ "\$owner" = 1500:1500 ] || { echo "the container's file belongs to \$owner, not the user" >&2; exit 1; }
step "as tester: berth start --arch arm64 without qemu-system-arm says so"
grep -qx "arch arm64" "$R/usr/lib/berth/image-arm64/manifest.txt" || { echo "the package has no arm64 guest" >&2; exit 1; }
if arm=\$(as_user env BERTH_HOME=/home/tester/arm64 berth start --arch arm64 2>&1); then
    echo "berth start --arch arm64 started without qemu-system-aarch64: \$arm" >&2; exit 1
fi
grep -q "qemu-system-aarch64.*is it installed" <<<"\$arm" || { echo "berth start --arch arm64 did not name the missing QEMU: \$arm" >&2; exit 1; }
echo "  \$(grep -m1 "qemu-system-aarch64" <<<"\$arm")"
step "as tester: berth status, berth stop"
as_user berth status | head -n 5
as_user berth stop
state=\$(as_user berth status --json | sed -n 's/.*"state": *"\([a-z]*\)".*/\1/p' | head -n 1)
[ "\$state" = stopped ] || { echo "after berth stop, berth status says '\$state'" >&2; exit 1; }
if pgrep -u 1500 -f qemu-system >/dev/null; then echo "berth stop left QEMU running" >&2; exit 1; fi
INSIDE
unshare --mount --propagation private bash "$WORK/inside.sh"
step "passed; $(basename "$DEB") is $(du -h "$DEB" | cut -f1) ($(du -b "$DEB" | cut -f1) bytes), installed $(dpkg-deb -f "$DEB" Installed-Size) KiB"
