// The "Run a container" form (`docker run -d`), on the dashboard and under an image.

import { api } from "../api";
import { errorBox, fill, h } from "../dom";

let forms = 0;

export function runForm(images: string[], onDone: (id: string) => void, image = ""): HTMLElement {
  const listId = `run-images-${++forms}`;
  const list = h("datalist", { id: listId }, ...images.map((t) => h("option", { value: t })));
  const imageIn = h("input", { name: "image", placeholder: "image, e.g. busybox", list: listId, value: image, required: true, "data-testid": "run-image" });
  const name = h("input", { name: "name", placeholder: "name (optional)", "data-testid": "run-name" });
  const ports = h("input", { name: "ports", placeholder: "ports, e.g. 8080:80", "data-testid": "run-ports" });
  const command = h("input", { name: "command", placeholder: "command (optional)", "data-testid": "run-command" });
  const result = h("div", { class: "result" });
  const button = h("button", { type: "submit", class: "primary", "data-testid": "run-submit" }, "Run");
  const form = h("form", { class: "run-form", "data-testid": "run-form" }, list, imageIn, name, ports, command, button, result);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    button.disabled = true;
    fill(result, h("span", { class: "muted" }, "Starting…"));
    try {
      const id = await api.run({ image: imageIn.value.trim(), name: name.value, ports: ports.value, command: command.value });
      fill(result, h("span", { class: "ok", "data-testid": "run-ok" }, `Started ${id.slice(0, 12)}`));
      onDone(id);
    } catch (e) {
      fill(result, errorBox(String((e as Error).message), "run-error"));
    } finally {
      button.disabled = false;
    }
  });
  return form;
}
