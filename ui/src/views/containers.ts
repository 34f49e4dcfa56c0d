// Containers, running and stopped: start, stop, restart, remove, logs, a shell, port links.

import { api } from "../api";
import { errorBox, fill, h } from "../dom";
import { actionsFor, portLinks, shortId, sortContainers, type Container } from "../model";
import type { Ctx } from "../main";

function actions(c: Container, ctx: Ctx, onError: (m: string) => void): HTMLElement {
  const can = actionsFor(c.state);
  const act = (action: "start" | "stop" | "restart" | "remove") => async (ev: Event) => {
    const b = ev.currentTarget as HTMLButtonElement;
    b.disabled = true;
    b.classList.add("busy");
    try {
      await api.containerAction(c.id, action);
    } catch (e) {
      onError(`${action} ${c.name}: ${(e as Error).message}`);
    }
    ctx.refresh();
  };
  return h(
    "div",
    { class: "actions" },
    can.start && h("button", { onclick: act("start"), "data-testid": "start" }, "Start"),
    can.stop && h("button", { onclick: act("stop"), "data-testid": "stop" }, "Stop"),
    can.restart && h("button", { onclick: act("restart"), "data-testid": "restart" }, "Restart"),
    h("button", { onclick: () => ctx.openLogs(c), "data-testid": "logs" }, "Logs"),
    can.shell && h("button", { onclick: () => ctx.openShell(c), "data-testid": "shell" }, "Shell"),
    h("button", { class: "danger", onclick: act("remove"), "data-testid": "remove" }, "Remove"),
  );
}

export function containerRows(list: Container[], ctx: Ctx, onError: (m: string) => void): HTMLElement[] {
  return sortContainers(list).map((c) =>
    h(
      "tr",
      { "data-testid": "container-row", "data-name": c.name, "data-state": c.state },
      h("td", {}, h("b", {}, c.name), h("div", { class: "muted mono" }, shortId(c.id))),
      h("td", { class: "mono" }, c.image),
      h("td", {}, h("span", { class: `pill ${c.state}` }, c.state), h("div", { class: "muted" }, c.status)),
      h(
        "td",
        { "data-testid": "ports" },
        ...portLinks(c.ports).map((p) =>
          p.url ? h("a", { href: p.url, class: "port", onclick: (e: Event) => { e.preventDefault(); void api.openUrl(p.url!); } }, p.label) : h("span", { class: "port" }, p.label),
        ),
      ),
      h("td", {}, actions(c, ctx, onError)),
    ),
  );
}

export async function containers(root: HTMLElement, ctx: Ctx): Promise<void> {
  const errors = h("div", {});
  const body = h("tbody", {});
  const showError = (m: string) => fill(errors, errorBox(m, "action-error"));
  fill(
    root,
    h("h1", {}, "Containers"),
    errors,
    h("table", { "data-testid": "containers" }, h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Image"), h("th", {}, "State"), h("th", {}, "Ports"), h("th", {}, ""))), body),
  );
  try {
    const list = await api.containers();
    fill(body, ...containerRows(list, ctx, showError));
    if (list.length === 0) body.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No containers yet: run one from the dashboard or an image.")));
  } catch (e) {
    showError((e as Error).message);
  }
}
