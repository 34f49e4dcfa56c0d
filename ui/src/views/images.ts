// Images: pull (with each layer's progress), run, remove.

import { api } from "../api";
import { errorBox, fill, h } from "../dom";
import { formatBytes, PullProgress, shortId } from "../model";
import type { Ctx } from "../main";
import { runForm } from "./run";

function pullForm(ctx: Ctx): HTMLElement {
  const ref = h("input", { name: "reference", placeholder: "image to pull, e.g. 127.0.0.1:5000/busybox", required: true, "data-testid": "pull-ref" });
  const button = h("button", { type: "submit", class: "primary", "data-testid": "pull-submit" }, "Pull");
  const bar = h("progress", { max: 1, value: 0, "data-testid": "pull-bar" });
  const summary = h("span", { class: "muted", "data-testid": "pull-summary" });
  const layers = h("ul", { class: "layers", "data-testid": "pull-layers" });
  const result = h("div", {});
  const status = h("div", { class: "pull-status", hidden: true }, bar, summary, layers);
  const form = h("form", { class: "pull-form", "data-testid": "pull-form" }, ref, button, status, result);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const reference = ref.value.trim();
    const p = new PullProgress();
    button.disabled = true;
    status.hidden = false;
    fill(result);
    bar.value = 0;
    fill(summary, `Pulling ${reference}…`);
    fill(layers);
    const draw = () => {
      bar.value = p.fraction();
      fill(summary, p.summary() || `Pulling ${reference}…`);
      fill(layers, ...[...p.layers].map(([id, l]) => h("li", { class: "mono" }, `${id.slice(0, 12)} ${l.status}${l.total ? ` ${formatBytes(l.current)}/${formatBytes(l.total)}` : ""}`)));
    };
    try {
      await api.pull(reference, (e) => {
        p.add(e);
        draw();
      });
      bar.value = 1;
      fill(result, h("span", { class: "ok", "data-testid": "pull-ok" }, p.messages[p.messages.length - 1] ?? `Pulled ${reference}`));
      ctx.refresh();
    } catch (e) {
      fill(result, errorBox((e as Error).message, "pull-error"));
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

// Kept across redraws, so a pull in progress (and what was typed) survives the list's refresh.
let pull: HTMLElement | null = null;

export async function images(root: HTMLElement, ctx: Ctx): Promise<void> {
  pull ??= pullForm(ctx);
  const errors = h("div", {});
  const body = h("tbody", {});
  fill(
    root,
    h("h1", {}, "Images"),
    h("section", { class: "card wide" }, h("h2", {}, "Pull an image"), pull),
    errors,
    h("table", { "data-testid": "images" }, h("thead", {}, h("tr", {}, h("th", {}, "Tags"), h("th", {}, "Id"), h("th", {}, "Size"), h("th", {}, "Created"), h("th", {}, ""))), body),
  );
  try {
    const list = await api.images();
    const all = list.flatMap((i) => i.tags);
    for (const img of list) {
      const tag = img.tags[0] ?? img.id;
      const runRow = h("tr", { hidden: true }, h("td", { colspan: 5 }, runForm(all, () => ctx.go("containers"), tag)));
      const remove = async () => {
        try {
          await api.removeImage(tag);
        } catch (e) {
          fill(errors, errorBox(`remove ${tag}: ${(e as Error).message}`, "action-error"));
        }
        ctx.refresh();
      };
      body.append(
        h(
          "tr",
          { "data-testid": "image-row", "data-tag": tag },
          h("td", { class: "mono" }, img.tags.length ? img.tags.join(", ") : "<none>"),
          h("td", { class: "mono muted" }, shortId(img.id)),
          h("td", {}, formatBytes(img.size)),
          h("td", { class: "muted" }, img.created ? new Date(img.created * 1000).toLocaleString() : "—"),
          h("td", {}, h("div", { class: "actions" }, h("button", { onclick: () => (runRow.hidden = !runRow.hidden), "data-testid": "image-run" }, "Run"), h("button", { class: "danger", onclick: remove, "data-testid": "image-remove" }, "Remove"))),
        ),
        runRow,
      );
    }
    if (list.length === 0) body.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No images yet: pull one above.")));
  } catch (e) {
    fill(errors, errorBox((e as Error).message));
  }
}
