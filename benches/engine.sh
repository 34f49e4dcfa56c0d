#!/bin/bash
# Berth vs Docker Engine on this machine, side by side in one run.
#   - `docker run --rm busybox true`, alternating the engines, N rounds (default 20)
#   - pull + unpack of the same image from the same loopback registry, alternating, 5 rounds
#   - `docker build` of one Dockerfile (COPY of 200 files, two RUNs, config steps) through the
#     classic builder, cold (--no-cache) and cached (unchanged), alternating, 5 rounds
#   - idle resident memory of berth-agent (no containers) and of dockerd + containerd
# Usage: benches/engine.sh [ROUNDS]     (./dev bench runs it; needs root and docker.io)
# BERTH_BASELINE_AGENT=PATH adds another berth-agent (an earlier build, say) to the same
# alternating rounds, on its own data root and bridge.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-20}
command -v dockerd >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null; }
cargo build --release -q -p berth-agent
W=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    umount -R "$W"/dockerd-root/* 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

REG="127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s/reg\nhttp:\n  addr: %s\n' "$W" "$REG" > "$W/registry.yml"
docker-registry serve "$W/registry.yml" >/dev/null 2>&1 & PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://$REG/v2/" >/dev/null && break; sleep 0.1; done
tests/fixtures/make-images.sh "$REG" >/dev/null

./target/release/berth-agent serve --listen "unix://$W/berth.sock" --data-root "$W/berth-root" 2>"$W/berth.log" & BERTH_PID=$!; PIDS+=($BERTH_PID)
SOCKETS=(berth dockerd)
if [ -n "${BERTH_BASELINE_AGENT:-}" ]; then
    "$BERTH_BASELINE_AGENT" serve --listen "unix://$W/baseline.sock" --data-root "$W/baseline-root" \
        --bridge-name bbase0 --bridge-ip 172.31.240.1/24 2>"$W/baseline.log" & PIDS+=($!)
    SOCKETS+=(baseline)
fi
# The reference engine on its own socket and root, started by this script, with its default
# bridge network and NAT, as Berth has.
dockerd --host "unix://$W/dockerd.sock" --data-root "$W/dockerd-root" --exec-root "$W/dockerd-exec" \
    --pidfile "$W/dockerd.pid" >"$W/dockerd.log" 2>&1 & DOCKERD_PID=$!; PIDS+=($DOCKERD_PID)
for s in "${SOCKETS[@]}"; do
    for _ in $(seq 300); do DOCKER_HOST="unix://$W/$s.sock" docker version >/dev/null 2>&1 && break; sleep 0.1; done
done
sleep 2
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
BERTH_IDLE=$(rss_kib $BERTH_PID)
DOCKERD_IDLE=$(rss_kib $DOCKERD_PID)
for p in $(pgrep -P $DOCKERD_PID containerd || true); do   # the containerd dockerd started
    DOCKERD_IDLE=$(( DOCKERD_IDLE + $(rss_kib "$p") ))
done

# The real images: a debootstrap of Debian's minbase (network to deb.debian.org, once), then
# imported, built on and pushed by dockerd.
CACHE=target/bench-cache
if [ ! -s "$CACHE/debian-minbase.tar" ]; then
    mkdir -p "$CACHE"
    echo "# debootstrap --variant=minbase bookworm (once, into $CACHE)" >&2
    debootstrap --variant=minbase bookworm "$W/deb" http://deb.debian.org/debian >"$W/debootstrap.log" 2>&1 \
        || { tail -5 "$W/debootstrap.log" >&2; exit 1; }
    tar --numeric-owner -C "$W/deb" -c . > "$CACHE/debian-minbase.tar.new"
    mv "$CACHE/debian-minbase.tar.new" "$CACHE/debian-minbase.tar"
    rm -rf "$W/deb"
fi
dref() { DOCKER_HOST="unix://$W/dockerd.sock" docker "$@"; }
dref import - "$REG/debian:minbase" < "$CACHE/debian-minbase.tar" >/dev/null
dref push -q "$REG/debian:minbase" >/dev/null
mkdir -p "$W/layered"
{
    echo "FROM $REG/debian:minbase"
    echo 'RUN mkdir -p /opt/a && for i in $(seq 2000); do echo "file $i" > /opt/a/f$i; done'
    echo 'RUN cp -a /usr/share/doc /opt/doc-copy'
    echo 'RUN dd if=/dev/urandom of=/opt/blob bs=1M count=20 status=none'
    echo 'RUN ln -s /opt/blob /opt/link && rm -rf /opt/a/f1*'
} > "$W/layered/Dockerfile"
DOCKER_BUILDKIT=0 dref build -q -t "$REG/debian:layered" "$W/layered" >/dev/null 2>&1
dref push -q "$REG/debian:layered" >/dev/null

IMG="$REG/busybox:latest"
python3 - "$W" "$IMG" "$ROUNDS" "$BERTH_IDLE" "$DOCKERD_IDLE" "${SOCKETS[@]}" <<'PY'
import os, statistics, subprocess, sys, time
w, img, rounds, berth_idle, dockerd_idle = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
engines = {name: f"unix://{w}/{name}.sock" for name in sys.argv[6:]}
reg = img.split("/")[0]

def docker(engine, *args):
    env = dict(os.environ, DOCKER_HOST=engines[engine])
    t = time.perf_counter()
    subprocess.run(["docker", *args], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t

def rmi(engine):
    env = dict(os.environ, DOCKER_HOST=engines[engine])
    subprocess.run(["docker", "rmi", "-f", img], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

pulls = {e: [] for e in engines}
for _ in range(5):
    for e in engines:
        rmi(e)
        pulls[e].append(docker(e, "pull", "-q", img))
runs = {e: [] for e in engines}
for e in engines:
    docker(e, "run", "--rm", img, "true")  # warm-up
for _ in range(rounds):
    for e in engines:
        runs[e].append(docker(e, "run", "--rm", img, "true"))

ctx = os.path.join(w, "build-ctx")
os.makedirs(os.path.join(ctx, "src"), exist_ok=True)
for i in range(200):
    with open(os.path.join(ctx, "src", f"f{i}.txt"), "w") as f:
        f.write(f"file {i}\n" * 50)
with open(os.path.join(ctx, "Dockerfile"), "w") as f:
    f.write(f"FROM {img}\nENV APP=/app\nWORKDIR /app\nCOPY src/ ./src/\n"
            "RUN cat src/*.txt | wc -l > /lines && mkdir -p /out\n"
            "RUN for i in $(seq 100); do echo $i > /out/$i; done\nLABEL bench=build\nCMD [\"cat\", \"/lines\"]\n")
cold = {e: [] for e in engines}
cached = {e: [] for e in engines}
os.environ["DOCKER_BUILDKIT"] = "0"
for _ in range(5):
    for e in engines:
        cold[e].append(docker(e, "build", "--no-cache", "-q", "-t", "bench-build", ctx))
        cached[e].append(docker(e, "build", "-q", "-t", "bench-build", ctx))

def report(name, d):
    b, r = statistics.median(d["berth"]), statistics.median(d["dockerd"])
    line = f"{name:<34} berth {b*1000:8.1f} ms   dockerd {r*1000:8.1f} ms   berth/dockerd {b/r:5.2f}"
    if "baseline" in d:
        base = statistics.median(d["baseline"])
        line += f"   baseline {base*1000:8.1f} ms   berth/baseline {b/base:5.2f}"
    print(line)

print(f"# {rounds} alternating rounds of `docker run --rm busybox true` (default bridge network on both), 5 of pull+unpack, medians")
report("docker run --rm busybox true", runs)
report("docker pull (pull + unpack)", pulls)
report("docker build, cold (--no-cache)", cold)
report("docker build, cached (unchanged)", cached)
print(f"{'idle resident memory':<34} berth {berth_idle/1024:8.1f} MiB  dockerd+containerd {dockerd_idle/1024:8.1f} MiB")

# Real images last (each round removes every image first, busybox included). The page cache is
# dropped before each pull: with it full, each round here ran slower than the last on both.
def cold_pull(e, ref):
    env = dict(os.environ, DOCKER_HOST=engines[e])
    quiet = dict(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for t in ("debian:minbase", "debian:layered"):
        subprocess.run(["docker", "rmi", "-f", f"{reg}/{t}"], **quiet)
    subprocess.run(["docker", "image", "prune", "-af"], **quiet)
    subprocess.run(["sync"])
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    return docker(e, "pull", "-q", ref)

print("# 5 alternating rounds of a cold pull (no image, page cache dropped), medians")
for name, what in (("debian:minbase", "debootstrap minbase"), ("debian:layered", "minbase + 4 layers")):
    d = {e: [] for e in engines}
    for _ in range(5):
        for e in engines:
            d[e].append(cold_pull(e, f"{reg}/{name}"))
    report(f"docker pull {what}", d)
PY
