// The drawer under the view: a container's logs as they come, or a shell in a real terminal
// (xterm.js over the engine's exec API with a TTY).

import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import "@xterm/xterm/css/xterm.css";
import { api } from "../api";
import { errorBox, fill, h } from "../dom";
import type { Container } from "../model";

/** Whatever the drawer shows; `close` ends its stream. */
export interface Panel {
  el: HTMLElement;
  close(): void;
}

const MAX_LOG = 200_000;

export function logsPanel(c: Container): Panel {
  const pre = h("pre", { class: "logs", "data-testid": "logs-text" });
  let task: number | null = null;
  let closed = false;
  let text = "";
  api
    .followLogs(c.id, (t) => {
      text = (text + t).slice(-MAX_LOG);
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = text;
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    })
    .then((id) => {
      task = id;
      if (closed) void api.cancel(id);
    })
    .catch((e) => pre.replaceWith(errorBox((e as Error).message)));
  return {
    el: h("div", { class: "panel-body", "data-testid": "logs-panel" }, pre),
    close() {
      closed = true;
      if (task !== null) void api.cancel(task);
    },
  };
}

export function shellPanel(c: Container): Panel {
  const box = h("div", { class: "terminal", "data-testid": "terminal" });
  const status = h("div", { class: "muted" });
  const term = new Terminal({ cursorBlink: true, fontSize: 13, convertEol: false, theme: { background: "#11151c" } });
  const fit = new FitAddon();
  term.loadAddon(fit);
  let session: number | null = null;
  let closed = false;
  const observer = new ResizeObserver(() => {
    fit.fit();
    if (session !== null) void api.shellResize(session, term.cols, term.rows);
  });
  // Opened once the drawer is in the page, so the terminal can measure itself.
  requestAnimationFrame(async () => {
    term.open(box);
    fit.fit();
    observer.observe(box);
    try {
      session = await api.openShell(c.id, term.cols, term.rows, (data) => {
        if (data.length === 0) {
          fill(status, "The shell has ended.");
          return;
        }
        term.write(data);
      });
      if (closed) void api.closeShell(session);
      // One write in flight at a time, what is typed meanwhile sent after it as one piece:
      // each call is its own task on the Rust side, so calls in parallel could land out of order.
      let queued = "";
      let writing = false;
      const send = async () => {
        writing = true;
        while (queued !== "" && session !== null) {
          const data = queued;
          queued = "";
          try {
            await api.shellInput(session, data);
          } catch (e) {
            fill(status, errorBox((e as Error).message));
          }
        }
        writing = false;
      };
      term.onData((d) => {
        queued += d;
        if (!writing) void send();
      });
      term.focus();
    } catch (e) {
      fill(status, errorBox((e as Error).message));
    }
  });
  return {
    el: h("div", { class: "panel-body" }, box, status),
    close() {
      closed = true;
      observer.disconnect();
      if (session !== null) void api.closeShell(session);
      term.dispose();
    },
  };
}
