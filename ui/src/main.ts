// The window: a sidebar of views, the VM's state and its Start/Stop in the header, errors
// where they happen, and a drawer for logs and shells. It follows the VM through the app's
// `vm-state` events and refreshes its lists on the engine's `engine-changed` events.

import "./style.css";
import { api, onEngineChanged, onVmState } from "./api";
import { errorBox, fill, h } from "./dom";
import { tail, type Container, type VmStatus } from "./model";
import { containers } from "./views/containers";
import { dashboard } from "./views/dashboard";
import { images } from "./views/images";
import { logsPanel, shellPanel, type Panel } from "./views/panels";
import { settings } from "./views/settings";
import { volumes } from "./views/volumes";

export type View = "dashboard" | "containers" | "images" | "volumes" | "settings";

export interface Ctx {
  status: VmStatus;
  go(view: View): void;
  /** Draws the current view again (after an action, or when the engine says something changed). */
  refresh(): void;
  openLogs(c: Container): void;
  openShell(c: Container): void;
}

const VIEWS: Record<View, { title: string; draw: (root: HTMLElement, ctx: Ctx) => Promise<void> }> = {
  dashboard: { title: "Dashboard", draw: dashboard },
  containers: { title: "Containers", draw: containers },
  images: { title: "Images", draw: images },
  volumes: { title: "Volumes", draw: volumes },
  settings: { title: "Settings", draw: settings },
};

// Views whose forms would lose what the user typed if they were redrawn on every event.
const KEEP_WHILE_TYPING: View[] = ["settings"];

function start(): void {
  const app = document.getElementById("app")!;
  const nav = h("nav", {});
  const pill = h("span", { class: "pill", "data-testid": "vm-state" }, "…");
  const vmButton = h("button", { class: "primary", "data-testid": "vm-toggle" }, "…");
  const banner = h("div", { class: "banner", "data-testid": "banner" });
  const main = h("main", {});
  const drawerTitle = h("span", {});
  const drawerBody = h("div", {});
  const drawer = h("section", { class: "drawer", hidden: true, "data-testid": "drawer" }, h("header", {}, drawerTitle, h("button", { onclick: () => closeDrawer(), "data-testid": "drawer-close" }, "Close")), drawerBody);
  fill(app, h("aside", {}, h("div", { class: "brand" }, "Berth"), nav), h("div", { class: "content" }, h("header", { class: "top" }, h("span", {}, "Virtual machine: "), pill, vmButton), banner, main, drawer));

  let view: View = "dashboard";
  let panel: Panel | null = null;
  let drawing = 0;
  let pendingRedraw = false;

  const ctx: Ctx = {
    status: { state: "unknown", problems: [] },
    go(v) {
      view = v;
      drawNav();
      void draw();
    },
    refresh() {
      void draw();
    },
    openLogs(c) {
      openDrawer(`Logs: ${c.name}`, logsPanel(c));
    },
    openShell(c) {
      openDrawer(`Shell: ${c.name}`, shellPanel(c));
    },
  };

  function openDrawer(title: string, p: Panel) {
    closeDrawer();
    panel = p;
    fill(drawerTitle, title);
    fill(drawerBody, p.el);
    drawer.hidden = false;
  }
  function closeDrawer() {
    panel?.close();
    panel = null;
    drawer.hidden = true;
    fill(drawerBody);
  }

  function drawNav() {
    fill(nav, ...(Object.keys(VIEWS) as View[]).map((v) => h("a", { href: "#", class: v === view ? "active" : "", "data-testid": `nav-${v}`, onclick: (e: Event) => { e.preventDefault(); ctx.go(v); } }, VIEWS[v].title)));
  }

  // One drawing at a time; a request in the middle of one draws again after it.
  async function draw() {
    if (drawing) {
      pendingRedraw = true;
      return;
    }
    drawing++;
    const next = h("div", { "data-testid": `view-${view}` });
    try {
      await VIEWS[view].draw(next, ctx);
    } catch (e) {
      fill(next, errorBox((e as Error).message));
    }
    fill(main, next);
    drawing--;
    if (pendingRedraw) {
      pendingRedraw = false;
      void draw();
    }
  }

  let lastState = "";
  function showVm(s: VmStatus) {
    const was = ctx.status.state;
    ctx.status = s;
    fill(pill, s.state);
    pill.className = `pill ${s.state}`;
    const busy = s.state === "starting" || s.state === "stopping";
    vmButton.disabled = busy;
    fill(vmButton, s.state === "stopped" || s.state === "unknown" ? "Start" : busy ? (s.state === "starting" ? "Starting…" : "Stopping…") : "Stop");
    vmButton.dataset.action = s.state === "stopped" || s.state === "unknown" ? "start" : "stop";
    const parts: (HTMLElement | null)[] = [];
    if (s.start_error) parts.push(errorBox(`The VM did not start.\n${tail(s.start_error, 25)}`, "vm-error"));
    else if (s.state === "starting") parts.push(h("div", { class: "notice", "data-testid": "vm-progress" }, h("strong", {}, "Starting the VM…"), h("pre", {}, (s.progress ?? []).slice(-6).join("\n") || "booting")));
    else if (s.state === "stopped" && (was === "running" || was === "degraded")) parts.push(errorBox("The Berth daemon is not running: the VM stopped. Start it again with the button above.", "daemon-gone"));
    else if (s.state === "stopped") parts.push(h("div", { class: "notice" }, "The VM is stopped. Start it to run containers."));
    else if (s.state === "degraded") parts.push(errorBox(`The VM does not answer as it should.\n${s.problems.join("\n")}`, "vm-degraded"));
    fill(banner, ...parts);
    if (s.state !== lastState && !KEEP_WHILE_TYPING.includes(view)) {
      lastState = s.state;
      void draw();
    }
    lastState = s.state;
  }

  vmButton.addEventListener("click", () => {
    void (vmButton.dataset.action === "start" ? api.vmStart() : api.vmStop());
  });

  drawNav();
  void onVmState(showVm);
  void onEngineChanged(() => {
    if (!KEEP_WHILE_TYPING.includes(view)) ctx.refresh();
  });
  api.vmStatus().then(showVm, (e) => fill(banner, errorBox((e as Error).message)));
}

if (document.getElementById("app")) start();
