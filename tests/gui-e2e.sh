#!/bin/bash
# The desktop app end to end, in one command (Debian 12, as root): installs what it needs
# (WebKitGTK and its WebDriver, Xvfb, D-Bus, tauri-driver, the front end's npm packages,
# selenium and dbus-next in a venv), builds the front end (and runs its Vitest tests), the app
# and its .deb, then runs the real app under Xvfb through WebDriver against a real daemon and
# VM (tests/gui/e2e.py), with the tray read and clicked over D-Bus. Screenshots of each main
# view land in target/gui-e2e/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/target/gui-e2e
mkdir -p "$OUT"
rm -f "$OUT"/*.png "$OUT"/failure.html

echo "==> gui-e2e: installing what the app and its tests need"
./dev setup
GUI_PKGS=(libwebkit2gtk-4.1-dev libayatana-appindicator3-dev librsvg2-dev libxdo-dev libssl-dev pkg-config
    xvfb xauth webkit2gtk-driver dbus dbus-daemon python3-venv file nodejs npm)
missing=()
for p in "${GUI_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The machine image may carry Node.js and npm outside Debian's packages: keep those.
if command -v node >/dev/null && command -v npm >/dev/null; then
    missing=("${missing[@]/nodejs/}"); missing=("${missing[@]/npm/}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
CARGO_BIN=${CARGO_HOME:-$HOME/.cargo}/bin
export PATH=$CARGO_BIN:$PATH
if ! command -v tauri-driver >/dev/null; then
    echo "==> cargo install tauri-driver"
    cargo install --locked --quiet tauri-driver
fi
VENV=$ROOT/target/gui-venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import selenium, dbus_next' 2>/dev/null; then
    echo "==> pip install selenium dbus-next (venv in target/gui-venv)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q selenium dbus-next
fi

echo "==> building the front end (npm ci, tsc, vite) and running its unit tests (Vitest)"
(cd ui && npm ci --no-audit --no-fund --loglevel=error && npm run build && npm test)

echo "==> building berth, berth-agent and the app (tauri build: the binary and its .deb)"
cargo build -p berth -p berth-agent
# The app's package depends on the `berth` package (CLI, engine and guest image), which
# tests/package.sh builds and installs on a clean Debian.
(cd desktop/app && "$ROOT/ui/node_modules/.bin/tauri" build --debug --bundles deb --ci)
echo "==> the app's clippy and unit tests"
cargo clippy --manifest-path desktop/app/Cargo.toml --all-targets -- -D warnings
cargo test --manifest-path desktop/app/Cargo.toml
APP=$ROOT/desktop/app/target/debug/berth-app
DEB=$(ls "$ROOT"/desktop/app/target/debug/bundle/deb/*.deb)
contents=$(dpkg-deb -c "$DEB")
grep -q 'usr/bin/berth-app$' <<<"$contents" || { echo "the .deb has no /usr/bin/berth-app" >&2; exit 1; }
[ "$(dpkg-deb -f "$DEB" Package)" = berth-desktop ] || { echo "the app's package is not named berth-desktop" >&2; exit 1; }
dpkg-deb -f "$DEB" Depends | grep -q 'berth (= ' || { echo "the app's package does not depend on berth" >&2; exit 1; }
echo "==> built $APP and $DEB"

WORK=$(mktemp -d)
export BERTH_HOME=$WORK/home
mkdir -p "$BERTH_HOME"
source tests/fixtures/registry.sh
start_registry "$WORK"
cleanup() {
    local rc=$?
    "$ROOT/target/debug/berth" stop >/dev/null 2>&1 || true
    kill "$REG_PID" 2>/dev/null || true
    pkill -f "$APP" 2>/dev/null || true
    if [ $rc -ne 0 ]; then
        echo "==> gui-e2e failed: the daemon's log, the app's and the driver's" >&2
        tail -n 40 "$BERTH_HOME/daemon.log" 2>/dev/null >&2 || true
        tail -n 40 "$WORK/driver.log" >&2 || true
    fi
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT

echo "==> running the app under Xvfb and a session bus (registry $REG, BERTH_HOME $BERTH_HOME)"
# Everything below shares one session bus: the tray watcher, the app, and the test reading it.
cat > "$WORK/session.sh" <<EOF
set -uo pipefail
Xvfb :77 -screen 0 1280x800x24 -nolisten tcp >"$WORK/xvfb.log" 2>&1 &
export DISPLAY=:77
for _ in \$(seq 50); do [ -e /tmp/.X11-unix/X77 ] && break; sleep 0.1; done
"$VENV/bin/python" "$ROOT/tests/gui/sni_watcher.py" >"$WORK/sni.jsonl" &
for _ in \$(seq 100); do grep -q ready "$WORK/sni.jsonl" 2>/dev/null && break; sleep 0.1; done
# WebKitGTK under Xvfb: no GPU compositing; the app's own log goes with the driver's.
export WEBKIT_DISABLE_COMPOSITING_MODE=1 WEBKIT_DISABLE_DMABUF_RENDERER=1 LIBGL_ALWAYS_SOFTWARE=1
export BERTH_BIN="$ROOT/target/debug/berth" BERTH_HOME="$BERTH_HOME" BERTH_LOG=info
tauri-driver --port 4444 >"$WORK/driver.log" 2>&1 &
for _ in \$(seq 100); do curl -s http://127.0.0.1:4444/status >/dev/null 2>&1 && break; sleep 0.1; done
# Bounded (it takes about 3 minutes here): a hang fails the run with its log, not CI's clock.
BERTH_APP="$APP" REG="$REG" SHOTS="$OUT" SNI_OUT="$WORK/sni.jsonl" PATH="$PATH" \
    timeout --kill-after=20 15m "$VENV/bin/python" "$ROOT/tests/gui/e2e.py"
rc=\$?
kill \$(jobs -p) 2>/dev/null
exit \$rc
EOF
dbus-run-session -- bash "$WORK/session.sh"
ls "$OUT"/*.png
echo "==> gui-e2e passed: screenshots in $OUT"
