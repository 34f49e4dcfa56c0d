"""The desktop app end to end: the real app (under Xvfb, driven through WebDriver by
tauri-driver and WebKitWebDriver) against a real daemon, a real VM and a real container, and
its tray icon read and clicked over D-Bus (StatusNotifierItem + dbusmenu).

Run by tests/gui-e2e.sh, which installs and builds everything and sets:
  BERTH_APP   the built berth-app        BERTH_BIN   the berth CLI the app drives
  BERTH_HOME  a fresh home for the VM    REG         a registry with the fixture images
  SHOTS       where the screenshots go   SNI_OUT     the watcher's registrations (a file)
Each step prints what it checked; any failed check ends the run non-zero with the app's
page source, a last screenshot and the daemon's log.
"""

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request

from dbus_next import Variant
from dbus_next.aio import MessageBus
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.options import ArgOptions

APP = os.environ["BERTH_APP"]
BERTH = os.environ["BERTH_BIN"]
HOME = os.environ["BERTH_HOME"]
REG = os.environ["REG"]
SHOTS = os.environ["SHOTS"]
SNI_OUT = os.environ["SNI_OUT"]
BOOT_TIMEOUT = 420

driver = None
started = time.monotonic()


def say(msg):
    print(f"[{time.monotonic() - started:6.1f}s] {msg}", flush=True)


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)
    say(f"ok: {what}")


def wait_for(what, f, timeout=60, every=0.25):
    """Calls f until it gives something truthy (WebDriver errors count as not yet)."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            v = f()
            if v:
                say(f"ok: {what}")
                return v
        except WebDriverException as e:
            last = e
        time.sleep(every)
    raise Failed(f"timed out after {timeout} s waiting for: {what}" + (f" (last error: {last.msg})" if last else ""))


def tid(name, root=None):
    return (root or driver).find_element(By.CSS_SELECTOR, f"[data-testid={name}]")


def tids(name, root=None):
    return (root or driver).find_elements(By.CSS_SELECTOR, f"[data-testid={name}]")


def text(name):
    return tid(name).text


def shot(name):
    path = os.path.join(SHOTS, f"{name}.png")
    driver.save_screenshot(path)
    check(os.path.getsize(path) > 1000, f"screenshot {path}")


def nav(view):
    tid(f"nav-{view}").click()
    wait_for(f"the {view} view", lambda: tids(f"view-{view}"))


def vm_state():
    return text("vm-state")


def berth_status():
    out = subprocess.run([BERTH, "status", "--json"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["state"]


def container_row(name):
    for r in tids("container-row"):
        if r.get_attribute("data-name") == name:
            return r
    return None


def row_action(action, name):
    """Clicks a row's button: found and clicked again if the list redrew in between (engine
    events redraw it; the element found before is stale then)."""
    def click():
        row = container_row(name)
        if row is None:
            return False
        tid(action, row).click()
        return True
    wait_for(f"{action} pressed on {name}", click, timeout=30)


def fill_in(name, value, root=None):
    el = tid(name, root)
    el.clear()
    el.send_keys(value)


# --- the tray over D-Bus ---------------------------------------------------------------------


def sni_item():
    with open(SNI_OUT) as f:
        for line in f:
            entry = json.loads(line)
            if "path" in entry:
                return entry
    return None


async def _menu(item):
    bus = await MessageBus().connect()
    obj = bus.get_proxy_object(item["service"], item["path"], await bus.introspect(item["service"], item["path"]))
    sni = obj.get_interface("org.kde.StatusNotifierItem")
    props = {"status": await sni.get_status(), "id": await sni.get_id(), "menu": await sni.get_menu()}
    mobj = bus.get_proxy_object(item["service"], props["menu"], await bus.introspect(item["service"], props["menu"]))
    return bus, props, mobj.get_interface("com.canonical.dbusmenu")


def _items(layout):
    """(id, label, enabled) of each item in a GetLayout answer, depth first."""
    ident, props, children = layout
    out = []
    if "label" in props:
        enabled = props["enabled"].value if "enabled" in props else True
        out.append((ident, props["label"].value.replace("_", ""), enabled))
    for c in children:
        out.extend(_items(c.value))
    return out


async def _tray():
    bus, props, menu = await _menu(sni_item())
    _rev, layout = await menu.call_get_layout(0, -1, [])
    bus.disconnect()
    return props, _items(layout)


def tray():
    return asyncio.run(_tray())


async def _click(label):
    bus, _props, menu = await _menu(sni_item())
    _rev, layout = await menu.call_get_layout(0, -1, [])
    ids = [i for i, l, _e in _items(layout) if l == label]
    if not ids:
        raise Failed(f"no tray item {label!r} in {_items(layout)}")
    await menu.call_event(ids[0], "clicked", Variant("s", ""), int(time.time()))
    bus.disconnect()


def tray_click(label):
    asyncio.run(_click(label))
    say(f"clicked the tray's {label!r} through dbusmenu Event")


def tray_label(label):
    return {l: e for _i, l, e in tray()[1]}.get(label)


# --- the run ---------------------------------------------------------------------------------


def main():
    global driver
    opts = ArgOptions()
    opts.set_capability("browserName", "wry")
    opts.set_capability("tauri:options", {"application": APP})
    driver = webdriver.Remote("http://127.0.0.1:4444", options=opts)
    say("the app is up under WebDriver")

    # 1. Opened with no daemon running, the app starts one and shows the boot's progress.
    wait_for("the app starts the VM itself", lambda: vm_state() in ("starting", "running"), timeout=30)
    if vm_state() == "starting":
        wait_for("boot progress is shown", lambda: tids("vm-progress"), timeout=30)
        shot("01-starting")
        # The window answers while the VM boots: another view opens.
        nav("settings")
        nav("dashboard")
    wait_for("the VM runs", lambda: vm_state() == "running", timeout=BOOT_TIMEOUT, every=1)
    check(berth_status() == "running", "berth status agrees: running")
    wait_for("the dashboard shows the engine", lambda: "API" in tid("view-dashboard").text, timeout=30)
    card = text("vm-card")
    check("CPUs" in card and "Memory" in card and "used of" in card, "the VM card shows CPUs, memory and disk use")
    check(not tid("drawer").is_displayed(), "the logs/shell drawer is hidden until asked for")
    shot("02-dashboard")

    # 2. The tray follows the VM.
    item = wait_for("the app registered a StatusNotifierItem", sni_item, timeout=30)
    props, items = tray()
    say(f"tray: {props} {items}")
    labels = [l for _i, l, _e in items]
    for want in ["Berth: running", "Start", "Stop", "Open dashboard", "Quit"]:
        check(want in labels, f"the tray menu has {want!r}")
    check(tray_label("Start") is False and tray_label("Stop") is True, "Start is disabled and Stop enabled while it runs")
    check(props["status"] in ("Active", "Passive", "NeedsAttention"), f"the item has a status ({props['status']})")

    # 3. Pull with progress; a pull that fails says why.
    nav("images")
    fill_in("pull-ref", f"{REG}/busybox")
    tid("pull-submit").click()
    wait_for("the pull finishes", lambda: tids("pull-ok") or tids("pull-error"), timeout=120)
    check(not tids("pull-error"), "the pull succeeded")
    check("layers" in text("pull-summary") and "100%" in text("pull-summary"), f"progress per layer: {text('pull-summary')!r}")
    check(float(tid("pull-bar").get_attribute("value")) == 1.0, "the progress bar is full")
    wait_for("the image is listed", lambda: any(f"{REG}/busybox" in r.text for r in tids("image-row")), timeout=20)
    shot("03-images")
    fill_in("pull-ref", f"{REG}/no-such-image:1")
    tid("pull-submit").click()
    err = wait_for("a failed pull says why", lambda: tids("pull-error"), timeout=60)[0].text
    check("no-such-image" in err, f"the error names the image: {err!r}")

    # 4. Run a container from the image, with a published port.
    row = [r for r in tids("image-row") if f"{REG}/busybox" in r.text][0]
    tid("image-run", row).click()
    form = [f for f in tids("run-form") if f.is_displayed()][0]
    fill_in("run-name", "gui-web", form)
    fill_in("run-ports", "18080:80", form)
    fill_in("run-command", "echo hello-from-the-gui; (while sleep 1; do echo tick; done) & exec httpd -f -p 80", form)
    tid("run-submit", form).click()
    wait_for("the container runs", lambda: (r := container_row("gui-web")) and r.get_attribute("data-state") == "running", timeout=60)
    ports = tid("ports", container_row("gui-web")).text
    check("18080:80/tcp" in ports, f"the published port is a link: {ports!r}")
    body = wait_for("the published port answers on the host", lambda: http_get("http://127.0.0.1:18080/"), timeout=30)
    say(f"GET :18080 -> {body[:60]!r}")

    # 5. Logs that follow.
    row_action("logs", "gui-web")
    wait_for("the logs show the container's output", lambda: "hello-from-the-gui" in text("logs-text"), timeout=30)
    seen = text("logs-text").count("tick")
    wait_for("the logs follow new output", lambda: text("logs-text").count("tick") > seen + 1, timeout=30)
    shot("04-containers-logs")

    # 6. A shell in a real terminal.
    tid("drawer-close").click()
    row_action("shell", "gui-web")
    term = wait_for("the terminal opens", lambda: driver.find_elements(By.CSS_SELECTOR, ".xterm-helper-textarea"), timeout=30)[0]
    wait_for("the shell prompts", lambda: "#" in tid("terminal").text, timeout=30)
    term.send_keys("echo $((6*7))-from-the-terminal; uname -s\n")
    wait_for("the shell answers in the terminal", lambda: "42-from-the-terminal" in tid("terminal").text, timeout=30)
    # The second command's output may come in a later chunk than the first's.
    wait_for("commands run in the container", lambda: "Linux" in tid("terminal").text, timeout=30)
    shot("05-terminal")
    tid("drawer-close").click()

    # 7. Stop, start, remove.
    row_action("stop", "gui-web")
    wait_for("stop: the container exits", lambda: (r := container_row("gui-web")) and r.get_attribute("data-state") == "exited", timeout=60)
    row_action("start", "gui-web")
    wait_for("start: it runs again", lambda: (r := container_row("gui-web")) and r.get_attribute("data-state") == "running", timeout=60)
    row_action("remove", "gui-web")
    wait_for("remove: the container is gone", lambda: container_row("gui-web") is None, timeout=60)
    check(subprocess.run(["docker", "-H", f"unix://{HOME}/docker.sock", "inspect", "gui-web"], capture_output=True).returncode != 0, "the engine agrees: gui-web is gone")

    # 8. Volumes: create, size, used by, remove.
    nav("volumes")
    fill_in("volume-name", "gui-vol")
    tid("volume-create").click()
    wait_for("the volume is listed", lambda: any(r.get_attribute("data-name") == "gui-vol" for r in tids("volume-row")), timeout=30)
    shot("06-volumes")
    [r for r in tids("volume-row") if r.get_attribute("data-name") == "gui-vol"][0].find_element(By.CSS_SELECTOR, "[data-testid=volume-remove]").click()
    wait_for("the volume is removed", lambda: not any(r.get_attribute("data-name") == "gui-vol" for r in tids("volume-row")), timeout=30)

    # 9. Settings: a change that needs a restart says so.
    nav("settings")
    wait_for("the settings form", lambda: tids("settings-form"), timeout=30)
    fill_in("set-cpus", "1")
    tid("settings-save").click()
    note = wait_for("the window says the change waits for a restart", lambda: tids("restart-needed"), timeout=30)[0].text
    check("CPUs" in note, f"{note!r}")
    shot("07-settings")
    cfg = json.loads(subprocess.run([BERTH, "config", "--json"], capture_output=True, text=True, check=True).stdout)
    check(cfg["file"].get("cpus") == 1, "the setting is in config.toml")
    fill_in("set-cpus", str(cfg["defaults"]["cpus"]))
    tid("settings-save").click()
    wait_for("saved again", lambda: "Saved" in text("settings-result"), timeout=30)
    nav("dashboard")

    # 10. Closing the window keeps the app in the tray; Open dashboard brings it back.
    driver.execute_script("window.__TAURI_INTERNALS__.invoke('plugin:window|close', {label: 'main'})")
    time.sleep(2)
    check(tray_label("Berth: running") is not None, "after the window closes, the tray still answers")
    tray_click("Open dashboard")
    wait_for("the window is back", lambda: driver.execute_script("return document.visibilityState") == "visible", timeout=20)

    # 11. The tray stops and starts the VM, and follows it.
    tray_click("Stop")
    wait_for("the window shows the VM stopping or stopped", lambda: vm_state() in ("stopping", "stopped"), timeout=30)
    wait_for("the VM stopped", lambda: vm_state() == "stopped", timeout=180, every=1)
    check(berth_status() == "stopped", "berth status agrees: stopped")
    wait_for("the tray says stopped", lambda: tray_label("Berth: stopped") is not None, timeout=20)
    check(tray_label("Start") is True and tray_label("Stop") is False, "Start is enabled and Stop disabled while it is stopped")
    shot("08-stopped")
    tray_click("Start")
    wait_for("the VM runs again", lambda: vm_state() == "running", timeout=BOOT_TIMEOUT, every=1)
    wait_for("the tray says running", lambda: tray_label("Berth: running") is not None, timeout=20)
    check(berth_status() == "running", "berth status agrees: running")

    # 12. The daemon gone from under the app (stopped from a terminal) is said.
    subprocess.run([BERTH, "stop"], check=True, capture_output=True)
    wait_for("the window says the daemon is gone", lambda: tids("daemon-gone"), timeout=30)
    shot("09-daemon-gone")

    # 13. A VM that does not start: the error with the log's tail.
    bad = os.path.join(HOME, "bad-image")
    os.makedirs(bad, exist_ok=True)
    for f in ("vmlinuz", "initrd.img"):
        with open(os.path.join(bad, f), "wb") as out:
            out.write(b"this is not a kernel\n" * 100)
    subprocess.run([BERTH, "config", "set", f"image={bad}"], check=True)
    tid("vm-toggle").click()
    err = wait_for("the window says the VM did not start", lambda: tids("vm-error"), timeout=240, every=1)[0].text
    say(f"start error: {err[:300]!r}")
    check("did not start" in err and "QEMU exited" in err and "backtrace" not in err, "the error carries the log's tail, and why QEMU stopped")
    shot("10-start-failed")
    subprocess.run([BERTH, "config", "set", "image="], check=True)

    # 14. Quit from the tray ends the app.
    tray_click("Quit")
    wait_for("the app quits", lambda: subprocess.run(["pgrep", "-f", APP], capture_output=True).returncode != 0, timeout=120)
    say("all GUI checks passed")


def http_get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode(errors="replace") or "(empty)"
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except OSError:
        return None


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # every failure: say what, keep the evidence
        print(f"FAILED: {e}", file=sys.stderr)
        if driver is not None:
            try:
                driver.save_screenshot(os.path.join(SHOTS, "failure.png"))
                with open(os.path.join(SHOTS, "failure.html"), "w") as f:
                    f.write(driver.page_source)
            except Exception as inner:
                print(f"(no screenshot: {inner})", file=sys.stderr)
        sys.exit(1)
    finally:
        if driver is not None:
            try:
                driver.quit()
            except Exception:
                pass
