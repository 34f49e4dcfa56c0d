#!/bin/bash
# What the VM takes from this machine around a workload: QEMU's resident memory and CPU while
# idle, then while a container writes 1 GiB into a tmpfs, and for 60 s after it exits (free
# page reporting gives the freed pages back). Usage: benches/memory-vm.sh [GUEST_IMAGE_DIR]
# (default: the one the VM tests build, target/vm-image). Prints one line per figure.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${1:-$PWD/target/vm-image}
B=$PWD/target/debug/berth
[ -x "$B" ] || { echo "build first: cargo build -p berth -p berth-agent" >&2; exit 1; }
[ -f "$IMAGE/vmlinuz" ] || { echo "no guest image in $IMAGE (cargo test -p berth-tests --test vm builds one)" >&2; exit 1; }
W=$(mktemp -d)
export BERTH_HOME=$W/home DOCKER_CONFIG=$W/docker-config DOCKER_HOST=unix://$W/home/docker.sock
trap '"$B" stop >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
# A busybox image from this machine's busybox, so no registry is needed.
mkdir -p "$W/root/bin"
cp "$(command -v busybox)" "$W/root/bin/"
for c in sh head echo; do ln -s busybox "$W/root/bin/$c"; done
tar -C "$W/root" -cf "$W/bb.tar" .
"$B" start --accel tcg --memory 2048 --image "$IMAGE" >/dev/null
docker import "$W/bb.tar" bench/bb:1 >/dev/null
pid=$("$B" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["vm"]["qemu_pid"])')
rss() { awk '/VmRSS/ {printf "%d", $2/1024}' "/proc/$pid/status"; }
ticks() { awk '{print $14+$15}' "/proc/$pid/stat"; }
idle() {
    local t0 t1; t0=$(ticks); sleep 60; t1=$(ticks)
    echo "$1: $((t1 - t0)) ticks in 60 s ($(awk -v t=$((t1 - t0)) 'BEGIN {printf "%.1f", t / 60}')% of a core), QEMU resident $(rss) MiB"
}
sleep 20
idle "idle after boot"
docker run --rm --tmpfs /big:size=1100m bench/bb:1 sh -c 'head -c 1073741824 /dev/zero > /big/f'
echo "right after a container wrote 1 GiB: QEMU resident $(rss) MiB"
for s in 10 20 30 60; do
    sleep $((s - ${last:-0})); last=$s
    echo "${s} s after: QEMU resident $(rss) MiB"
done
idle "idle after the workload"
