// Settings: CPUs, memory, disk, shared folders (written to config.toml by `berth config set`),
// and start at login. What waits for a VM restart is said.

import { api } from "../api";
import { errorBox, fill, h } from "../dom";
import { pendingRestart, settingsPairs, type Settings } from "../model";
import type { Ctx } from "../main";

export async function settings(root: HTMLElement, ctx: Ctx): Promise<void> {
  fill(root, h("h1", {}, "Settings"), h("p", { class: "muted" }, "…"));
  let answer;
  try {
    answer = await api.settings();
  } catch (e) {
    fill(root, h("h1", {}, "Settings"), errorBox((e as Error).message));
    return;
  }
  const r = answer.config.resolved;
  const before: Settings = { cpus: r.cpus, memory: r.memory, disk: r.disk, shares: r.shares };
  const num = (n: string, v: number, min: number) => h("input", { type: "number", name: n, min, value: v, required: true, "data-testid": `set-${n}` });
  const cpus = num("cpus", r.cpus, 1);
  const memory = num("memory", r.memory, 256);
  const disk = num("disk", r.disk, 1);
  const shares = h("textarea", { name: "shares", rows: 4, "data-testid": "set-shares" });
  shares.value = r.shares.join("\n");
  const login = h("input", { type: "checkbox", name: "login", checked: answer.start_at_login, "data-testid": "set-login" });
  const result = h("div", { "data-testid": "settings-result" });
  const label = (text: string, input: HTMLElement, help: string) => h("label", {}, h("span", {}, text), input, h("small", { class: "muted" }, help));
  const form = h(
    "form",
    { class: "settings", "data-testid": "settings-form" },
    label("CPUs", cpus, `default ${answer.config.defaults.cpus}`),
    label("Memory (MiB)", memory, `default ${answer.config.defaults.memory}`),
    label("Disk (GiB)", disk, "used when the data disk is first made"),
    label("Shared folders", shares, "one per line, PATH or PATH:ro; mounted in the VM at the same path"),
    h("label", { class: "check" }, login, h("span", {}, "Start Berth when I log in")),
    h("button", { type: "submit", class: "primary", "data-testid": "settings-save" }, "Save"),
    result,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const after: Settings = { cpus: Number(cpus.value), memory: Number(memory.value), disk: Number(disk.value), shares: shares.value.split("\n") };
    const pairs = settingsPairs(before, after);
    try {
      await api.saveSettings(pairs, login.checked);
      const running = ctx.status.state === "running" && ctx.status.vm ? ctx.status.vm : null;
      const waiting = pendingRestart(after, running, pairs);
      const diskNote = pairs.some((p) => p.startsWith("disk=")) ? " The disk size applies to a new data disk only." : "";
      fill(
        result,
        h("span", { class: "ok" }, "Saved." + diskNote),
        waiting.length ? h("div", { class: "notice", "data-testid": "restart-needed" }, `Restart the VM to apply: ${waiting.join(", ")}.`) : null,
      );
      before.cpus = after.cpus;
      before.memory = after.memory;
      before.disk = after.disk;
      before.shares = after.shares.map((s) => s.trim()).filter((s) => s);
    } catch (e) {
      fill(result, errorBox((e as Error).message, "settings-error"));
    }
  });
  fill(root, h("h1", {}, "Settings"), h("p", { class: "muted mono" }, answer.config.path), form);
}
