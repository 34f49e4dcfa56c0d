// Volumes: create, remove, size, and which containers use each.

import { api } from "../api";
import { errorBox, fill, h } from "../dom";
import { formatBytes } from "../model";
import type { Ctx } from "../main";

export async function volumes(root: HTMLElement, ctx: Ctx): Promise<void> {
  const errors = h("div", {});
  const body = h("tbody", {});
  const name = h("input", { name: "volume", placeholder: "name (empty: a generated one)", "data-testid": "volume-name" });
  const form = h("form", { class: "inline", "data-testid": "volume-form" }, name, h("button", { type: "submit", class: "primary", "data-testid": "volume-create" }, "Create volume"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await api.createVolume(name.value);
      name.value = "";
    } catch (e) {
      fill(errors, errorBox((e as Error).message, "action-error"));
    }
    ctx.refresh();
  });
  fill(
    root,
    h("h1", {}, "Volumes"),
    form,
    errors,
    h("table", { "data-testid": "volumes" }, h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Size"), h("th", {}, "Used by"), h("th", {}, ""))), body),
  );
  try {
    const list = await api.volumes();
    for (const v of list) {
      const remove = async () => {
        try {
          await api.removeVolume(v.name);
        } catch (e) {
          fill(errors, errorBox(`remove ${v.name}: ${(e as Error).message}`, "action-error"));
        }
        ctx.refresh();
      };
      body.append(
        h(
          "tr",
          { "data-testid": "volume-row", "data-name": v.name },
          h("td", { class: "mono" }, v.name),
          h("td", {}, formatBytes(v.size)),
          h("td", {}, v.used_by.length ? v.used_by.join(", ") : h("span", { class: "muted" }, "no container")),
          h("td", {}, h("button", { class: "danger", onclick: remove, "data-testid": "volume-remove" }, "Remove")),
        ),
      );
    }
    if (list.length === 0) body.append(h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No volumes.")));
  } catch (e) {
    fill(errors, errorBox((e as Error).message));
  }
}
