#!/bin/bash
# Builds the `berth` Debian package: the berth CLI and daemon, berth-agent (the engine, to run
# natively on Linux too), the guest image it boots, and shell completions. At run time it needs
# QEMU and nothing else from Debian (no apt, dpkg, mke2fs or cpio): the guest image is inside.
#   desktop/package/deb.sh OUT_DIR
# Takes target/release/{berth,berth-agent} (cargo build --release -p berth -p berth-agent) and
# the guest image in $BERTH_PACKAGE_IMAGE (default target/package/image, built by
# vm-image/build.sh from that same agent). Prints the package's path.
# The desktop app is a package of its own (tauri build), which depends on this one.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:?usage: deb.sh OUT_DIR}
IMAGE=${BERTH_PACKAGE_IMAGE:-$ROOT/target/package/image}
BIN=$ROOT/target/release
for f in "$BIN/berth" "$BIN/berth-agent"; do
    [ -x "$f" ] || { echo "$f is not built: cargo build --release -p berth -p berth-agent" >&2; exit 2; }
done
for f in vmlinuz initrd.img manifest.txt; do
    [ -f "$IMAGE/$f" ] || { echo "no guest image in $IMAGE ($f missing): vm-image/build.sh $IMAGE" >&2; exit 2; }
done
# The image must carry this agent: the host and the guest speak one protocol version.
want=$(sha256sum "$BIN/berth-agent" | cut -d' ' -f1)
grep -q "^agent $want " "$IMAGE/manifest.txt" || {
    echo "the guest image in $IMAGE was built from another berth-agent than $BIN/berth-agent: rebuild it" >&2
    exit 2
}
VERSION=$(awk -F'"' '/^\[workspace.package\]/ {p=1} p && /^version/ {print $2; exit}' "$ROOT/Cargo.toml")
ARCH=$(dpkg --print-architecture)
case "$ARCH" in
    amd64) QEMU=qemu-system-x86 ;;
    arm64) QEMU=qemu-system-arm ;;
    *) echo "no guest for $ARCH" >&2; exit 2 ;;
esac

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
P=$WORK/pkg
install -d "$P/DEBIAN" "$P/usr/bin" "$P/usr/lib/berth/image" "$P/usr/share/doc/berth" \
    "$P/usr/share/bash-completion/completions" "$P/usr/share/zsh/vendor-completions" \
    "$P/usr/share/fish/vendor_completions.d"
install -m 755 "$BIN/berth" "$BIN/berth-agent" "$P/usr/bin/"
install -m 644 "$IMAGE/vmlinuz" "$IMAGE/initrd.img" "$IMAGE/manifest.txt" "$P/usr/lib/berth/image/"
"$BIN/berth" completion bash > "$P/usr/share/bash-completion/completions/berth"
"$BIN/berth" completion zsh > "$P/usr/share/zsh/vendor-completions/_berth"
"$BIN/berth" completion fish > "$P/usr/share/fish/vendor_completions.d/berth.fish"
cat > "$P/usr/share/doc/berth/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: berth
License: Apache-2.0
 The guest image in /usr/lib/berth/image carries Debian's Linux kernel (GPL-2), e2fsprogs,
 iptables and glibc, whose versions /usr/lib/berth/image/manifest.txt names.
COPY

# The shared libraries the programs link, as Debian names them (dpkg-shlibdeps wants a source
# package's debian/control to read).
mkdir -p "$WORK/debian"
printf 'Source: berth\n\nPackage: berth\nArchitecture: any\n' > "$WORK/debian/control"
shlibs=$(cd "$WORK" && dpkg-shlibdeps -O -e pkg/usr/bin/berth -e pkg/usr/bin/berth-agent 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "dpkg-shlibdeps named no libraries" >&2; exit 1; }
cat > "$P/DEBIAN/control" <<CTRL
Package: berth
Version: $VERSION
Architecture: $ARCH
Maintainer: Berth developers <berth@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$P" | cut -f1)
Depends: $shlibs, $QEMU, qemu-utils
Section: admin
Priority: optional
Homepage: https://berth.dev
Description: Linux containers in a small VM, driven by the docker CLI
 Berth boots a lightweight Linux VM with QEMU and serves a Docker-Engine-compatible socket
 at \$BERTH_HOME/docker.sock for the docker CLI and every Docker API client. berth start,
 berth run, berth stop; berth-agent serve runs the same engine natively.
CTRL
(cd "$P" && find usr -type f -print0 | sort -z | xargs -0 md5sum) > "$P/DEBIAN/md5sums"
mkdir -p "$OUT"
DEB=$OUT/berth_${VERSION}_${ARCH}.deb
# Files owned by root whoever builds it; xz, as Debian's own packages.
dpkg-deb --root-owner-group -Zxz -b "$P" "$DEB" >/dev/null
echo "$DEB"
