#!/bin/bash
# Builds Berth's guest: a kernel and an initramfs with berth-agent as /init.
#   vm-image/build.sh OUT_DIR [ARCH]       ARCH: amd64 (default) or arm64
#   vm-image/build.sh --repin [ARCH]       pin the archive's current kernel in packages.lock
# When Debian has dropped the pinned kernel, the archive's current one is used and pinned.
# Needs a Debian 12 build host (apt-get download, dpkg-deb, cpio) and a built berth-agent
# ($BERTH_AGENT, else target/release, else target/debug; `berth start` passes the one beside
# itself). Writes OUT_DIR/{vmlinuz,initrd.img,manifest.txt}.
# BERTH_GUEST_KERNEL=generic builds on Debian's generic kernel (the one linux-image-ARCH names
# now, not pinned) with modules-generic.txt (9p) added: the shared-folder benchmark
# boots it to measure QEMU's 9p beside Berth's share. The product's guest is the cloud kernel.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
if [ "${1:-}" = "--repin" ]; then
    ARCH=${2:-amd64}
    apt-get update -qq
    pkg=$(apt-cache depends "linux-image-cloud-$ARCH" | awk '/Depends: linux-image-/ {print $2; exit}')
    ver=$(apt-cache show "$pkg" | awk '/^Version:/ {print $2; exit}')
    sha=$(apt-cache show "$pkg" | awk '/^SHA256:/ {print $2; exit}')
    grep -v "^linux-image-" "$HERE/packages.lock" > "$HERE/packages.lock.new" || true
    echo "$pkg $ver $sha" >> "$HERE/packages.lock.new"
    mv "$HERE/packages.lock.new" "$HERE/packages.lock"
    echo "pinned $pkg $ver"
    exit 0
fi
OUT=${1:?usage: build.sh OUT_DIR [ARCH]}
ARCH=${2:-amd64}
case "$ARCH" in
    amd64) LIBDIR=x86_64-linux-gnu; LOADER=/lib64/ld-linux-x86-64.so.2 ;;
    arm64) LIBDIR=aarch64-linux-gnu; LOADER=/lib/ld-linux-aarch64.so.1 ;;
    *) echo "unsupported architecture $ARCH" >&2; exit 2 ;;
esac
[ "$(dpkg --print-architecture)" = "$ARCH" ] || { echo "building an $ARCH guest needs an $ARCH build host (cross builds come later)" >&2; exit 2; }
AGENT="${BERTH_AGENT:-}"
[ -z "$AGENT" ] || [ -x "$AGENT" ] || { echo "BERTH_AGENT=$AGENT is not an executable" >&2; exit 2; }
[ -n "$AGENT" ] || for p in release debug; do [ -x "$ROOT/target/$p/berth-agent" ] && { AGENT="$ROOT/target/$p/berth-agent"; break; }; done
[ -n "$AGENT" ] || { echo "berth-agent is not built: cargo build --release -p berth-agent" >&2; exit 2; }

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CACHE="$OUT/debs"
mkdir -p "$CACHE"
step() { echo "==> $*" >&2; }

# 1. The kernel package, pinned and verified. Debian keeps only current kernels in its pool:
#    when the pinned one is gone, the archive's current version of the same package (or, when
#    the package itself is gone, of the one the linux-image-cloud-ARCH metapackage now names)
#    is taken instead. apt verifies it against the archive's signed index; the build says so,
#    checks the download against the index's SHA256 and records the new pin in packages.lock.
LOCK="$HERE/packages.lock"
MODULES=("$HERE/modules.txt")
PIN=yes
case "${BERTH_GUEST_KERNEL:-cloud}" in
    cloud) read -r KPKG KVER KSHA < <(grep '^linux-image-' "$LOCK" | head -1) ;;
    generic)
        KPKG=$(apt-cache depends "linux-image-$ARCH" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
        KVER=$(apt-cache policy "$KPKG" 2>/dev/null | awk '/Candidate:/ {print $2}')
        KSHA=$(apt-cache show "$KPKG=$KVER" 2>/dev/null | awk '/^SHA256:/ {print $2; exit}')
        [ -n "$KPKG" ] && [ -n "$KSHA" ] || { echo "apt names no current linux-image-$ARCH kernel (is apt's package list for Debian 12 reachable?)" >&2; exit 1; }
        PIN=no
        MODULES+=("$HERE/modules-generic.txt") ;;
    *) echo "BERTH_GUEST_KERNEL=$BERTH_GUEST_KERNEL: cloud or generic" >&2; exit 2 ;;
esac
cached() { [ -f "$CACHE/${1}_${2}_${ARCH}.deb" ] && echo "$3  $CACHE/${1}_${2}_${ARCH}.deb" | sha256sum -c --quiet 2>/dev/null; }
download() { (cd "$CACHE" && apt-get download -q "$1=$2" >/dev/null 2>&1); }
if ! cached "$KPKG" "$KVER" "$KSHA"; then
    step "downloading $KPKG $KVER"
    if ! download "$KPKG" "$KVER"; then
        apt-get update -qq >/dev/null 2>&1 || true
        if ! download "$KPKG" "$KVER"; then
            [ "$PIN" = yes ] || { echo "downloading $KPKG $KVER failed" >&2; exit 1; }
            NPKG=$KPKG
            NVER=$(apt-cache policy "$NPKG" 2>/dev/null | awk '/Candidate:/ {print $2}')
            if [ -z "$NVER" ] || [ "$NVER" = "(none)" ]; then
                NPKG=$(apt-cache depends "linux-image-cloud-$ARCH" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
                NVER=$(apt-cache policy "$NPKG" 2>/dev/null | awk '/Candidate:/ {print $2}')
            fi
            NSHA=$(apt-cache show "$NPKG=$NVER" 2>/dev/null | awk '/^SHA256:/ {print $2; exit}')
            if [ -z "$NPKG" ] || [ -z "$NVER" ] || [ "$NVER" = "(none)" ] || [ -z "$NSHA" ]; then
                echo "the pinned kernel $KPKG $KVER is no longer in the Debian archive, and the archive names no current linux-image-cloud-$ARCH kernel (is apt's package list for Debian 12 reachable?)" >&2
                exit 1
            fi
            step "the pinned kernel $KPKG $KVER is no longer in the Debian archive: using its current $NPKG $NVER instead (verified against the archive's signed index)"
            cached "$NPKG" "$NVER" "$NSHA" || download "$NPKG" "$NVER" || { echo "downloading $NPKG $NVER failed" >&2; exit 1; }
            KPKG=$NPKG KVER=$NVER KSHA=$NSHA
            if [ -w "$LOCK" ]; then
                { grep -v '^linux-image-' "$LOCK" || true; echo "$KPKG $KVER $KSHA"; } > "$LOCK.new" && mv "$LOCK.new" "$LOCK"
                step "pinned $KPKG $KVER in $LOCK"
            else
                step "$LOCK is not writable: pin $KPKG $KVER $KSHA there by hand (or run build.sh --repin)"
            fi
        fi
    fi
fi
DEB="$CACHE/${KPKG}_${KVER}_${ARCH}.deb"
echo "$KSHA  $DEB" | sha256sum -c --quiet || { echo "$DEB does not match its pinned sha256" >&2; exit 1; }

# 2. Kernel and the modules the guest loads.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
step "unpacking the kernel"
dpkg-deb -x "$DEB" "$WORK/k"
KREL=$(ls "$WORK/k/lib/modules")
cp "$WORK/k/boot/vmlinuz-$KREL" "$OUT/vmlinuz"
R="$WORK/initramfs"
mkdir -p "$R"/{bin,sbin,dev,proc,sys,run,tmp,etc,var/lib,lib/modules,"lib/$LIBDIR",lib64}
: > "$R/lib/modules/berth.modules"
cat "${MODULES[@]}" | grep -v '^#' | while read -r m; do
    [ -n "$m" ] || continue
    src="$WORK/k/lib/modules/$KREL/$m"
    [ -f "$src" ] || { echo "module $m is not in $KPKG" >&2; exit 1; }
    cp "$src" "$R/lib/modules/"
    basename "$m" >> "$R/lib/modules/berth.modules"
done

# 3. berth-agent as /init; mke2fs for the data disk; iptables (legacy backend, whose modules
#    the guest loads) for bridge networking's NAT and filter rules (links and addresses are
#    the engine's own netlink calls); and their libraries.
step "adding berth-agent ($AGENT), mke2fs, iptables"
cp "$AGENT" "$R/bin/berth-agent"
strip --strip-debug "$R/bin/berth-agent"
cp /sbin/mke2fs "$R/sbin/mke2fs"
mkdir -p "$R/usr/sbin" "$R/usr/lib/$LIBDIR"
cp -L /usr/sbin/xtables-legacy-multi "$R/usr/sbin/xtables-legacy-multi"
ln -s xtables-legacy-multi "$R/usr/sbin/iptables"
cp -a "/usr/lib/$LIBDIR/xtables" "$R/usr/lib/$LIBDIR/"
for bin in "$AGENT" /sbin/mke2fs /usr/sbin/xtables-legacy-multi; do
    ldd "$bin" | awk '/=> \// {print $3}' | while read -r lib; do cp -L "$lib" "$R/lib/$LIBDIR/"; done
done
cp -L "$LOADER" "$R$LOADER"
# Trusted CAs for HTTPS registries (the TLS stack refuses to start without any).
mkdir -p "$R/etc/ssl/certs"
cp -L /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/"
# The kernel runs /init with no arguments; berth-agent started so as PID 1 is the init.
ln -s bin/berth-agent "$R/init"
mknod -m 600 "$R/dev/console" c 5 1
mknod -m 666 "$R/dev/null" c 1 3

# 4. The initramfs (newc cpio, gzip).
step "writing the initramfs"
(cd "$R" && find . -print0 | sort -z | cpio --null -o -H newc --owner=0:0 --quiet) | gzip -1 > "$OUT/initrd.img"
{
    echo "kernel $KPKG $KVER sha256:$KSHA release $KREL"
    echo "agent $(sha256sum "$AGENT" | cut -d' ' -f1) $AGENT"
    echo "mke2fs $(dpkg-query -W -f='${Package} ${Version}' e2fsprogs)"
    echo "libc $(dpkg-query -W -f='${Package} ${Version}' libc6)"
    echo "ca-certificates $(dpkg-query -W -f='${Version}' ca-certificates)"
} > "$OUT/manifest.txt"
step "guest image in $OUT: vmlinuz $(du -h "$OUT/vmlinuz" | cut -f1), initrd.img $(du -h "$OUT/initrd.img" | cut -f1)"
