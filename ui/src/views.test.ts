// The views against a stand-in for the app's commands: what they draw and what they call.
import { beforeEach, describe, expect, it, vi } from "vitest";

const calls: [string, unknown[]][] = [];
const fake = {
  containers: [
    { id: "c1".padEnd(64, "0"), name: "web", image: "busybox", command: "httpd", state: "running", status: "Up 2 minutes", created: 0, ports: [{ ip: "0.0.0.0", private: 80, public: 8080, proto: "tcp" }], volumes: ["data"] },
    { id: "c2".padEnd(64, "0"), name: "old", image: "busybox", command: "true", state: "exited", status: "Exited (0)", created: 0, ports: [], volumes: [] },
  ],
  pullEvents: [
    { id: "aaaaaaaaaaaa", status: "Downloading", current: 10, total: 20 },
    { id: "aaaaaaaaaaaa", status: "Pull complete", current: null, total: null },
    { id: null, status: "Status: Downloaded newer image for busybox:latest", current: null, total: null },
  ],
  pullFails: false,
};

vi.mock("./api", () => ({
  api: {
    containers: async () => fake.containers,
    containerAction: async (...a: unknown[]) => void calls.push(["containerAction", a]),
    openUrl: async (...a: unknown[]) => void calls.push(["openUrl", a]),
    images: async () => [{ id: "sha256:" + "ab".repeat(32), tags: ["busybox:latest"], size: 4_300_000, created: 1_700_000_000 }],
    volumes: async () => [{ name: "data", driver: "local", mountpoint: "/x", size: 12_000, used_by: ["web"] }],
    pull: async (ref: string, on: (e: unknown) => void) => {
      calls.push(["pull", [ref]]);
      if (fake.pullFails) throw new Error("pulling nope: manifest unknown");
      fake.pullEvents.forEach(on);
    },
  },
}));

import { containers } from "./views/containers";
import { images } from "./views/images";
import { volumes } from "./views/volumes";
import type { Ctx } from "./main";

function ctx(): Ctx & { refreshed: number; logs: string[] } {
  const c = {
    status: { state: "running", problems: [] },
    refreshed: 0,
    logs: [] as string[],
    go() {},
    refresh() {
      c.refreshed++;
    },
    openLogs(x: { name: string }) {
      c.logs.push(x.name);
    },
    openShell() {},
  };
  return c as unknown as Ctx & { refreshed: number; logs: string[] };
}

const flush = () => new Promise((r) => setTimeout(r, 0));

beforeEach(() => {
  calls.length = 0;
  fake.pullFails = false;
});

describe("containers view", () => {
  it("lists running containers first with their actions and port links", async () => {
    const root = document.createElement("div");
    const c = ctx();
    await containers(root, c);
    const rows = [...root.querySelectorAll<HTMLElement>("[data-testid=container-row]")];
    expect(rows.map((r) => r.dataset.name)).toEqual(["web", "old"]);
    const buttons = (r: HTMLElement) => [...r.querySelectorAll("button")].map((b) => b.dataset.testid);
    expect(buttons(rows[0])).toEqual(["stop", "restart", "logs", "shell", "remove"]);
    expect(buttons(rows[1])).toEqual(["start", "restart", "logs", "remove"]);
    const link = rows[0].querySelector<HTMLAnchorElement>("[data-testid=ports] a")!;
    expect(link.textContent).toBe("8080:80/tcp");
    link.click();
    expect(calls).toContainEqual(["openUrl", ["http://localhost:8080"]]);
    rows[0].querySelector<HTMLButtonElement>("[data-testid=stop]")!.click();
    await flush();
    expect(calls).toContainEqual(["containerAction", [fake.containers[0].id, "stop"]]);
    expect(c.refreshed).toBe(1);
    rows[1].querySelector<HTMLButtonElement>("[data-testid=logs]")!.click();
    expect(c.logs).toEqual(["old"]);
  });
});

describe("images view", () => {
  it("pulls with progress and says when it is done", async () => {
    const root = document.createElement("div");
    await images(root, ctx());
    expect(root.querySelector("[data-testid=image-row]")!.getAttribute("data-tag")).toBe("busybox:latest");
    root.querySelector<HTMLInputElement>("[data-testid=pull-ref]")!.value = "busybox";
    root.querySelector<HTMLFormElement>("[data-testid=pull-form]")!.dispatchEvent(new Event("submit"));
    await flush();
    expect(calls).toContainEqual(["pull", ["busybox"]]);
    expect(root.querySelector<HTMLProgressElement>("[data-testid=pull-bar]")!.value).toBe(1);
    expect(root.querySelector("[data-testid=pull-summary]")!.textContent).toBe("1/1 layers · 100%");
    expect(root.querySelector("[data-testid=pull-ok]")!.textContent).toContain("Downloaded newer image");
  });
  it("shows a failed pull's reason", async () => {
    fake.pullFails = true;
    const root = document.createElement("div");
    await images(root, ctx());
    root.querySelector<HTMLInputElement>("[data-testid=pull-ref]")!.value = "nope";
    root.querySelector<HTMLFormElement>("[data-testid=pull-form]")!.dispatchEvent(new Event("submit"));
    await flush();
    expect(root.querySelector("[data-testid=pull-error]")!.textContent).toContain("manifest unknown");
  });
});

describe("volumes view", () => {
  it("shows each volume's size and users", async () => {
    const root = document.createElement("div");
    await volumes(root, ctx());
    const row = root.querySelector("[data-testid=volume-row]")!;
    expect(row.textContent).toContain("12.0 kB");
    expect(row.textContent).toContain("web");
  });
});
