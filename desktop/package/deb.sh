#!/bin/bash
# Builds the `berth` Debian package: the berth CLI and daemon, berth-agent (the engine, to run
# natively on Linux too), the guest images it boots (amd64 and arm64), and shell completions. At
# run time it needs QEMU and nothing else from Debian (no apt, dpkg, mke2fs or cpio): the guest
# images are inside.
#   desktop/package/deb.sh OUT_DIR
# Takes target/release/{berth,berth-agent} (cargo build --release -p berth -p berth-agent), the
# other architecture's agent from target/cross/<target>/release (./dev agent-arm64), and the
# guest images in target/package/image and target/package/image-arm64, each built by
# vm-image/build.sh from that same agent. Prints the package's path.
# The desktop app is a package of its own (tauri build), which depends on this one.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:?usage: deb.sh OUT_DIR}
BIN=$ROOT/target/release
for f in "$BIN/berth" "$BIN/berth-agent"; do
    [ -x "$f" ] || { echo "$f is not built: cargo build --release -p berth -p berth-agent" >&2; exit 2; }
done
VERSION=$(awk -F'"' '/^\[workspace.package\]/ {p=1} p && /^version/ {print $2; exit}' "$ROOT/Cargo.toml")
ARCH=$(dpkg --print-architecture)
case "$ARCH" in
    amd64) QEMU=qemu-system-x86 OTHER_QEMU=qemu-system-arm ;;
    arm64) QEMU=qemu-system-arm OTHER_QEMU=qemu-system-x86 ;;
    *) echo "no guest for $ARCH" >&2; exit 2 ;;
esac
# Each image must carry the agent built with this berth: the host and the guest speak one
# protocol version. The guest of the host's architecture packs target/release's agent, the other
# the cross-built one.
for guest in amd64 arm64; do
    dir=$ROOT/target/package/$([ "$guest" = amd64 ] && echo image || echo "image-$guest")
    if [ "$guest" = "$ARCH" ]; then
        agent=$BIN/berth-agent
    else
        agent=$ROOT/target/cross/$([ "$guest" = amd64 ] && echo x86_64 || echo aarch64)-unknown-linux-gnu/release/berth-agent
    fi
    [ -x "$agent" ] || { echo "the $guest guest's agent $agent is not built (./dev agent-arm64)" >&2; exit 2; }
    for f in vmlinuz initrd.img manifest.txt; do
        [ -f "$dir/$f" ] || { echo "no $guest guest image in $dir ($f missing): vm-image/build.sh --arch $guest $dir" >&2; exit 2; }
    done
    grep -qx "arch $guest" "$dir/manifest.txt" || { echo "the image in $dir is not the $guest guest's" >&2; exit 2; }
    want=$(sha256sum "$agent" | cut -d' ' -f1)
    grep -q "^agent $want " "$dir/manifest.txt" || {
        echo "the guest image in $dir was built from another berth-agent than $agent: rebuild it" >&2
        exit 2
    }
done

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
P=$WORK/pkg
install -d "$P/DEBIAN" "$P/usr/bin" "$P/usr/lib/berth/image" "$P/usr/lib/berth/image-arm64" "$P/usr/share/doc/berth" \
    "$P/usr/share/bash-completion/completions" "$P/usr/share/zsh/vendor-completions" \
    "$P/usr/share/fish/vendor_completions.d"
install -m 755 "$BIN/berth" "$BIN/berth-agent" "$P/usr/bin/"
for image in image image-arm64; do
    install -m 644 "$ROOT/target/package/$image/"{vmlinuz,initrd.img,manifest.txt} "$P/usr/lib/berth/$image/"
done
"$BIN/berth" completion bash > "$P/usr/share/bash-completion/completions/berth"
"$BIN/berth" completion zsh > "$P/usr/share/zsh/vendor-completions/_berth"
"$BIN/berth" completion fish > "$P/usr/share/fish/vendor_completions.d/berth.fish"
cat > "$P/usr/share/doc/berth/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: berth
License: Apache-2.0
 The guest images in /usr/lib/berth/image (amd64) and image-arm64 carry Debian's Linux
 kernel (GPL-2), e2fsprogs, iptables and glibc, whose versions their manifest.txt names.
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
Suggests: $OTHER_QEMU
Section: admin
Priority: optional
Homepage: https://berth.dev
Description: Linux containers in a small VM, driven by the docker CLI
 Berth boots a lightweight Linux VM with QEMU and serves a Docker-Engine-compatible socket
 at \$BERTH_HOME/docker.sock for the docker CLI and every Docker API client. berth start,
 berth run, berth stop; berth-agent serve runs the same engine natively. The guest of the
 other architecture (berth start --arch) runs under emulation with $OTHER_QEMU.
CTRL
(cd "$P" && find usr -type f -print0 | sort -z | xargs -0 md5sum) > "$P/DEBIAN/md5sums"
mkdir -p "$OUT"
DEB=$OUT/berth_${VERSION}_${ARCH}.deb
# Files owned by root whoever builds it; xz, as Debian's own packages.
dpkg-deb --root-owner-group -Zxz -b "$P" "$DEB" >/dev/null
echo "$DEB"
