#!/bin/bash
# Builds Berth's guest: a kernel and an initramfs with berth-agent as /init.
#   vm-image/build.sh [--arch ARCH] OUT_DIR    ARCH: amd64 (default) or arm64
#   vm-image/build.sh --repin [ARCH]           pin the archive's current kernel in packages.lock
# When Debian has dropped the pinned kernel, the archive's current one is used and pinned.
# Needs a Debian 12 build host (apt-get download, dpkg-deb, readelf, cpio). The guest's own
# architecture's programs and libraries come from the host when it is the host's, and else from
# that architecture's Debian packages, downloaded and unpacked (an arm64 guest built on an
# x86-64 host: `dpkg --add-architecture arm64`; ./dev setup does it). The agent must be built
# for ARCH: $BERTH_AGENT, else target/release or target/debug (the host's architecture), else
# target/cross/aarch64-unknown-linux-gnu/{release,debug} (arm64, `./dev agent-arm64`); `berth
# start` passes the one beside itself. Writes OUT_DIR/{vmlinuz,initrd.img,manifest.txt}.
# BERTH_GUEST_KERNEL=generic builds on Debian's generic kernel (the one linux-image-ARCH names
# now, not pinned) with modules-generic.txt (9p) added: the shared-folder benchmark
# boots it to measure QEMU's 9p beside Berth's share. The product's guest is the cloud kernel.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
if [ "${1:-}" = "--repin" ]; then
    ARCH=${2:-amd64}
    apt-get update -qq
    pkg=$(apt-cache depends "linux-image-cloud-$ARCH:$ARCH" | awk '/Depends: linux-image-/ {sub(/:.*/, "", $2); print $2; exit}')
    ver=$(apt-cache show "$pkg:$ARCH" | awk '/^Version:/ {print $2; exit}')
    sha=$(apt-cache show "$pkg:$ARCH" | awk '/^SHA256:/ {print $2; exit}')
    grep -v "^linux-image-.*-$ARCH " "$HERE/packages.lock" > "$HERE/packages.lock.new" || true
    echo "$pkg $ver $sha" >> "$HERE/packages.lock.new"
    mv "$HERE/packages.lock.new" "$HERE/packages.lock"
    echo "pinned $pkg $ver"
    exit 0
fi
ARCH=amd64
if [ "${1:-}" = "--arch" ]; then
    ARCH=${2:?--arch needs amd64 or arm64}
    shift 2
fi
OUT=${1:?usage: build.sh [--arch amd64|arm64] OUT_DIR}
ARCH=${2:-$ARCH}
case "$ARCH" in
    amd64) LIBDIR=x86_64-linux-gnu; LOADER=/lib64/ld-linux-x86-64.so.2; TRIPLE=x86_64-unknown-linux-gnu ;;
    arm64) LIBDIR=aarch64-linux-gnu; LOADER=/lib/ld-linux-aarch64.so.1; TRIPLE=aarch64-unknown-linux-gnu ;;
    *) echo "unsupported architecture $ARCH: amd64 or arm64" >&2; exit 2 ;;
esac
NATIVE=no
[ "$(dpkg --print-architecture)" = "$ARCH" ] && NATIVE=yes
AGENT="${BERTH_AGENT:-}"
[ -z "$AGENT" ] || [ -x "$AGENT" ] || { echo "BERTH_AGENT=$AGENT is not an executable" >&2; exit 2; }
if [ -z "$AGENT" ]; then
    if [ "$NATIVE" = yes ]; then dirs=(target/release target/debug); else dirs=("target/cross/$TRIPLE/release" "target/cross/$TRIPLE/debug"); fi
    for d in "${dirs[@]}"; do [ -x "$ROOT/$d/berth-agent" ] && { AGENT="$ROOT/$d/berth-agent"; break; }; done
fi
[ -n "$AGENT" ] || { echo "berth-agent is not built for $ARCH: $([ "$NATIVE" = yes ] && echo 'cargo build --release -p berth-agent' || echo './dev agent-arm64')" >&2; exit 2; }
want=$([ "$ARCH" = amd64 ] && echo x86-64 || echo aarch64)
readelf -h "$AGENT" 2>/dev/null | grep -q "Machine:.*$([ "$ARCH" = amd64 ] && echo X86-64 || echo AArch64)" \
    || { echo "$AGENT is not an $want program (readelf -h), so it cannot be the $ARCH guest's agent" >&2; exit 2; }

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
    cloud)
        read -r KPKG KVER KSHA < <(grep "^linux-image-.*-$ARCH " "$LOCK" | head -1) || true
        [ -n "${KPKG:-}" ] || { echo "$LOCK pins no $ARCH kernel: vm-image/build.sh --repin $ARCH" >&2; exit 2; } ;;
    generic)
        KPKG=$(apt-cache depends "linux-image-$ARCH:$ARCH" 2>/dev/null | awk '/Depends: linux-image-/ {sub(/:.*/, "", $2); print $2; exit}')
        KVER=$(apt-cache policy "$KPKG:$ARCH" 2>/dev/null | awk '/Candidate:/ {print $2}')
        KSHA=$(apt-cache show "$KPKG:$ARCH=$KVER" 2>/dev/null | awk '/^SHA256:/ {print $2; exit}')
        [ -n "$KPKG" ] && [ -n "$KSHA" ] || { echo "apt names no current linux-image-$ARCH kernel (is apt's package list for Debian 12 reachable?)" >&2; exit 1; }
        PIN=no
        MODULES+=("$HERE/modules-generic.txt") ;;
    *) echo "BERTH_GUEST_KERNEL=$BERTH_GUEST_KERNEL: cloud or generic" >&2; exit 2 ;;
esac
cached() { [ -f "$CACHE/${1}_${2}_${ARCH}.deb" ] && echo "$3  $CACHE/${1}_${2}_${ARCH}.deb" | sha256sum -c --quiet 2>/dev/null; }
download() { (cd "$CACHE" && apt-get download -q "$1:$ARCH=$2" >/dev/null 2>&1); }
if ! cached "$KPKG" "$KVER" "$KSHA"; then
    step "downloading $KPKG $KVER"
    if ! download "$KPKG" "$KVER"; then
        apt-get update -qq >/dev/null 2>&1 || true
        if ! download "$KPKG" "$KVER"; then
            [ "$PIN" = yes ] || { echo "downloading $KPKG $KVER failed" >&2; exit 1; }
            NPKG=$KPKG
            NVER=$(apt-cache policy "$NPKG:$ARCH" 2>/dev/null | awk '/Candidate:/ {print $2}')
            if [ -z "$NVER" ] || [ "$NVER" = "(none)" ]; then
                NPKG=$(apt-cache depends "linux-image-cloud-$ARCH:$ARCH" 2>/dev/null | awk '/Depends: linux-image-/ {sub(/:.*/, "", $2); print $2; exit}')
                NVER=$(apt-cache policy "$NPKG:$ARCH" 2>/dev/null | awk '/Candidate:/ {print $2}')
            fi
            NSHA=$(apt-cache show "$NPKG:$ARCH=$NVER" 2>/dev/null | awk '/^SHA256:/ {print $2; exit}')
            if [ -z "$NPKG" ] || [ -z "$NVER" ] || [ "$NVER" = "(none)" ] || [ -z "$NSHA" ]; then
                echo "the pinned kernel $KPKG $KVER is no longer in the Debian archive, and the archive names no current linux-image-cloud-$ARCH kernel (is apt's package list for Debian 12 reachable?)" >&2
                exit 1
            fi
            step "the pinned kernel $KPKG $KVER is no longer in the Debian archive: using its current $NPKG $NVER instead (verified against the archive's signed index)"
            cached "$NPKG" "$NVER" "$NSHA" || download "$NPKG" "$NVER" || { echo "downloading $NPKG $NVER failed" >&2; exit 1; }
            KPKG=$NPKG KVER=$NVER KSHA=$NSHA
            if [ -w "$LOCK" ]; then
                { grep -v "^linux-image-.*-$ARCH " "$LOCK" || true; echo "$KPKG $KVER $KSHA"; } > "$LOCK.new" && mv "$LOCK.new" "$LOCK"
                step "pinned $KPKG $KVER in $LOCK"
            else
                step "$LOCK is not writable: pin $KPKG $KVER $KSHA there by hand (or run build.sh --repin)"
            fi
        fi
    fi
fi
DEB="$CACHE/${KPKG}_${KVER}_${ARCH}.deb"
echo "$KSHA  $DEB" | sha256sum -c --quiet || { echo "$DEB does not match its pinned sha256" >&2; exit 1; }

# 2. Kernel and the modules the guest loads; a module the kernel has built in is skipped (the
#    arm64 cloud kernel builds in ACPI's button, which the amd64 one has as a module).
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
step "unpacking the kernel"
dpkg-deb -x "$DEB" "$WORK/k"
KREL=$(ls "$WORK/k/lib/modules")
cp "$WORK/k/boot/vmlinuz-$KREL" "$OUT/vmlinuz"
R="$WORK/initramfs"
mkdir -p "$R"/{bin,sbin,dev,proc,sys,run,tmp,etc,var/lib,lib/modules,"lib/$LIBDIR",lib64}
: > "$R/lib/modules/berth.modules"
[ -f "$HERE/modules-$ARCH.txt" ] && MODULES+=("$HERE/modules-$ARCH.txt")
# Drops a module's appended signature. The kernel checks one on every load (a SHA-256 of the
# module and an RSA verification: 0.2 s of the boot's 0.45 s of module loading under TCG) but
# does not require it (Debian's kernels are not built with MODULE_SIG_FORCE), and nothing in
# the guest loads a module but its init from this initramfs (containers cannot: no
# CAP_SYS_MODULE, and seccomp refuses the calls). The kernel is then tainted `E`.
# Layout: module, signature, 12-byte `struct module_signature` (its last 4 bytes the
# signature's length, big-endian), and the 28-byte marker.
unsign() {
    local f=$1 marker='~Module signature appended~' size len
    [ "$(tail -c 28 "$f" | head -c 27)" = "$marker" ] || return 0
    size=$(stat -c %s "$f")
    len=$(tail -c 32 "$f" | head -c 4 | od -An -tu1 | awk '{print (($1*256+$2)*256+$3)*256+$4}')
    truncate -s $((size - len - 40)) "$f"
}
cat "${MODULES[@]}" | grep -v '^#' | while read -r m; do
    [ -n "$m" ] || continue
    src="$WORK/k/lib/modules/$KREL/$m"
    if [ ! -f "$src" ]; then
        grep -qxF "$m" "$WORK/k/lib/modules/$KREL/modules.builtin" 2>/dev/null && continue
        echo "module $m is not in $KPKG" >&2
        exit 1
    fi
    cp "$src" "$R/lib/modules/"
    unsign "$R/lib/modules/$(basename "$m")"
    basename "$m" >> "$R/lib/modules/berth.modules"
done

# 3. The guest's programs besides the agent, from SYS: the host itself when the guest is of its
#    architecture, else a root unpacked from that architecture's Debian packages (the versions
#    the archive has now, each recorded in the manifest). Libraries are what the programs'
#    NEEDED entries name, followed transitively (readelf works on any architecture; ldd would
#    have to run the program).
# The packages besides the kernel are kept in $BERTH_DEB_CACHE when it is set (./dev test sets
# it, so the test suite's many image builds download qemu-user-static's 60 MB once), else with
# the kernel in OUT/debs.
PKGS=${BERTH_DEB_CACHE:-$CACHE}
mkdir -p "$PKGS"
# fetch DIR PKG: PKG's $ARCH package in DIR, downloaded unless one is there (apt checks a
# download against the archive's signed index).
fetch() {
    ls "$1/${2}"_*_"$ARCH".deb >/dev/null 2>&1 && return 0
    (cd "$1" && apt-get download -q "$2:$ARCH" >/dev/null 2>&1) && return 0
    apt-get update -qq >/dev/null 2>&1 || true
    (cd "$1" && apt-get download -q "$2:$ARCH" >/dev/null) \
        || { echo "downloading $2:$ARCH failed: is $ARCH a dpkg architecture here (dpkg --add-architecture $ARCH; apt-get update)?" >&2; exit 1; }
}
SYS_PKGS=(libc6 libgcc-s1 libseccomp2 e2fsprogs libext2fs2 libcom-err2 libblkid1 libuuid1 libss2
    iptables libxtables12 libip4tc2 libip6tc2)
if [ "$NATIVE" = yes ]; then
    SYS=/
    STRIP=strip
    pkgver() { dpkg-query -W -f='${Package} ${Version}' "$1:$ARCH"; }
else
    SYS="$WORK/sys"
    STRIP=$LIBDIR-strip
    command -v "$STRIP" >/dev/null || { echo "$STRIP is missing (Debian package binutils-$LIBDIR)" >&2; exit 2; }
    step "the $ARCH packages of the guest's tools (${SYS_PKGS[*]})"
    mkdir -p "$SYS"
    for p in "${SYS_PKGS[@]}"; do fetch "$PKGS" "$p"; done
    for p in "${SYS_PKGS[@]}"; do dpkg-deb -x "$(ls "$PKGS/${p}"_*_"$ARCH".deb | head -1)" "$SYS"; done
    pkgver() { local d; d=$(ls "$PKGS/$1"_*_"$ARCH".deb | head -1); echo "$1 $(dpkg-deb -f "$d" Version)"; }
fi
# needed FILE: the paths (in SYS) of the libraries FILE needs, transitively.
needed() {
    # The loader is copied to its own path below, not with the libraries.
    local todo=("$1") seen=" ${LOADER##*/} " f lib d found
    while [ ${#todo[@]} -gt 0 ]; do
        f=${todo[0]}
        todo=("${todo[@]:1}")
        for lib in $(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
            case "$seen" in *" $lib "*) continue ;; esac
            seen+="$lib "
            found=
            for d in "lib/$LIBDIR" "usr/lib/$LIBDIR" lib usr/lib; do
                [ -e "$SYS/$d/$lib" ] && { found="$SYS/$d/$lib"; break; }
            done
            [ -n "$found" ] || { echo "$lib, which $f needs, is not in the $ARCH root ($SYS)" >&2; exit 1; }
            echo "$found"
            todo+=("$found")
        done
    done
}

# berth-agent as /init; mke2fs for the data disk; iptables (legacy backend, whose modules the
# guest loads) for bridge networking's NAT and filter rules, ip6tables for IPv6 networks' (links
# and addresses are the engine's own netlink calls); and their libraries.
step "adding berth-agent ($AGENT), mke2fs, iptables"
cp "$AGENT" "$R/bin/berth-agent"
"$STRIP" --strip-debug "$R/bin/berth-agent"
cp "$SYS/sbin/mke2fs" "$R/sbin/mke2fs"
mkdir -p "$R/usr/sbin" "$R/usr/lib/$LIBDIR"
cp -L "$SYS/usr/sbin/xtables-legacy-multi" "$R/usr/sbin/xtables-legacy-multi"
ln -s xtables-legacy-multi "$R/usr/sbin/iptables"
ln -s xtables-legacy-multi "$R/usr/sbin/ip6tables"
cp -a "$SYS/usr/lib/$LIBDIR/xtables" "$R/usr/lib/$LIBDIR/"
for bin in "$AGENT" "$SYS/sbin/mke2fs" "$SYS/usr/sbin/xtables-legacy-multi"; do
    needed "$bin" > "$WORK/libs"
    while read -r lib; do cp -L "$lib" "$R/lib/$LIBDIR/"; done < "$WORK/libs"
done
cp -L "$SYS$LOADER" "$R$LOADER"
# The other architecture's programs run through QEMU's user-mode emulator, registered with
# binfmt_misc by the guest's init from Debian's own binfmt.d line (flags F: the kernel opens
# the emulator once, so containers need no copy of it; P: argv[0] kept; O: the program passed
# open). One static binary out of Debian's qemu-user-static (a 60 MB package: kept in OUT/debs).
EMU=$([ "$ARCH" = arm64 ] && echo x86_64 || echo aarch64)
step "adding qemu-$EMU-static (the other architecture's programs, through binfmt_misc)"
fetch "$PKGS" qemu-user-static
QDEB=$(ls "$PKGS"/qemu-user-static_*_"$ARCH".deb | head -1)
# tar stops reading once it has the three members: dpkg-deb's broken pipe is expected.
{ dpkg-deb --fsys-tarfile "$QDEB" 2>/dev/null || true; } | (cd "$R" && tar -x "./usr/bin/qemu-$EMU-static" \
    "./usr/libexec/qemu-binfmt/$EMU-binfmt-P" "./usr/lib/binfmt.d/qemu-$EMU.conf")
for f in "usr/bin/qemu-$EMU-static" "usr/lib/binfmt.d/qemu-$EMU.conf"; do
    [ -s "$R/$f" ] || { echo "$f is not in $QDEB" >&2; exit 1; }
done
# Trusted CAs for HTTPS registries (the TLS stack refuses to start without any).
mkdir -p "$R/etc/ssl/certs"
cp -L /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/"
# The kernel runs /init with no arguments; berth-agent started so as PID 1 is the init.
ln -s bin/berth-agent "$R/init"
mknod -m 600 "$R/dev/console" c 5 1
mknod -m 666 "$R/dev/null" c 1 3

# 4. The initramfs (newc cpio), not compressed: under TCG the kernel took 0.75 s to inflate
# gzip's, on the boot's critical path (docs/architecture.md, "Start time"). Its pages stay in
# the guest's tmpfs either way; only the file on this machine is larger.
step "writing the initramfs"
(cd "$R" && find . -print0 | sort -z | cpio --null -o -H newc --owner=0:0 --quiet) > "$OUT/initrd.img"
{
    echo "arch $ARCH"
    echo "kernel $KPKG $KVER sha256:$KSHA release $KREL"
    echo "agent $(sha256sum "$AGENT" | cut -d' ' -f1) $AGENT"
    echo "mke2fs $(pkgver e2fsprogs)"
    echo "iptables $(pkgver iptables)"
    echo "libc $(pkgver libc6)"
    echo "ca-certificates $(dpkg-query -W -f='${Version}' ca-certificates)"
    echo "emulator qemu-$EMU-static qemu-user-static $(dpkg-deb -f "$QDEB" Version)"
} > "$OUT/manifest.txt"
step "guest image in $OUT: vmlinuz $(du -h "$OUT/vmlinuz" | cut -f1), initrd.img $(du -h "$OUT/initrd.img" | cut -f1)"
