// The first view: the VM and what it holds, and a form to run a container at once.

import { api } from "../api";
import { errorBox, fill, h } from "../dom";
import { formatBytes, type VmStatus } from "../model";
import type { Ctx } from "../main";
import { runForm } from "./run";

function row(label: string, value: string | number | null | undefined): HTMLElement {
  return h("div", { class: "kv" }, h("span", {}, label), h("b", {}, value === null || value === undefined ? "—" : String(value)));
}

function uptime(secs: number | undefined): string {
  if (!secs) return "—";
  const m = Math.floor(secs / 60);
  return m < 1 ? `${Math.round(secs)} s` : m < 60 ? `${m} min` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function vmCard(s: VmStatus): HTMLElement {
  const vm = s.vm;
  return h(
    "section",
    { class: "card", "data-testid": "vm-card" },
    h("h2", {}, "Virtual machine"),
    row("State", s.state),
    row("CPUs", vm?.cpus),
    row("Memory", vm ? `${vm.memory_mib} MiB` : null),
    row("Disk", s.disk ? `${formatBytes(s.disk.used_bytes)} used of ${formatBytes(s.disk.size_bytes)}` : null),
    row("Accelerator", vm?.accel),
    row("Transport", vm?.transport),
    row("Up", uptime(vm?.uptime_secs)),
    row("Host memory (daemon)", s.daemon?.rss_bytes ? formatBytes(s.daemon.rss_bytes) : null),
  );
}

// Kept across redraws, so what was typed survives the engine's events.
let form: HTMLElement | null = null;

export async function dashboard(root: HTMLElement, ctx: Ctx): Promise<void> {
  const engine = h("section", { class: "card" }, h("h2", {}, "Engine"), h("p", { class: "muted" }, "…"));
  const run = h("section", { class: "card wide" }, h("h2", {}, "Run a container"));
  fill(root, h("div", { class: "grid" }, vmCard(ctx.status), engine, run));
  if (ctx.status.state !== "running") {
    fill(engine, h("h2", {}, "Engine"), h("p", { class: "muted" }, "The engine answers once the VM runs."));
    run.append(h("p", { class: "muted" }, "Start the VM to run containers."));
    return;
  }
  try {
    const [e, containers, images, volumes] = await Promise.all([api.engine(), api.containers(), api.images(), api.volumes()]);
    const running = containers.filter((c) => c.state === "running").length;
    fill(
      engine,
      h("h2", {}, "Engine"),
      row("Version", `${e.version} (API ${e.api_version})`),
      row("Kernel", e.kernel),
      row("Containers", `${running} running of ${containers.length}`),
      row("Images", `${images.length} · ${formatBytes(e.images_size)}`),
      row("Volumes", `${volumes.length} · ${formatBytes(e.volumes_size)}`),
    );
    form ??= runForm([], () => ctx.go("containers"));
    fill(form.querySelector("datalist")!, ...images.flatMap((i) => i.tags).map((t) => h("option", { value: t })));
    run.append(form);
  } catch (err) {
    fill(engine, h("h2", {}, "Engine"), errorBox((err as Error).message));
  }
}
