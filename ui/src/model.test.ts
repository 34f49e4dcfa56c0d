import { describe, expect, it } from "vitest";
import { actionsFor, formatBytes, pendingRestart, portLinks, PullProgress, settingsPairs, shortId, sortContainers, tail, type Container } from "./model";

describe("formatBytes", () => {
  it("prints sizes as docker does", () => {
    expect(formatBytes(0)).toBe("0 B");
    expect(formatBytes(999)).toBe("999 B");
    expect(formatBytes(4_261_000)).toBe("4.26 MB");
    expect(formatBytes(12_345_678_901)).toBe("12.3 GB");
    expect(formatBytes(null)).toBe("—");
    expect(formatBytes(-1)).toBe("—");
  });
});

describe("portLinks", () => {
  it("links published TCP ports once, and leaves UDP and unpublished ports as text", () => {
    const links = portLinks([
      { ip: "0.0.0.0", private: 80, public: 8080, proto: "tcp" },
      { ip: "::", private: 80, public: 8080, proto: "tcp" },
      { ip: "127.0.0.1", private: 53, public: 5353, proto: "udp" },
      { ip: "", private: 9000, public: null, proto: "tcp" },
      { ip: "192.168.1.4", private: 443, public: 8443, proto: "tcp" },
    ]);
    expect(links).toEqual([
      { label: "8080:80/tcp", url: "http://localhost:8080" },
      { label: "5353:53/udp", url: null },
      { label: "9000/tcp", url: null },
      { label: "8443:443/tcp", url: "http://192.168.1.4:8443" },
    ]);
  });
});

describe("containers", () => {
  const c = (name: string, state: string): Container => ({ id: name, name, image: "i", command: "", state, status: "", created: 0, ports: [], volumes: [] });
  it("lists running ones first, then by name", () => {
    expect(sortContainers([c("b", "exited"), c("z", "running"), c("a", "exited"), c("m", "running")]).map((x) => x.name)).toEqual(["m", "z", "a", "b"]);
  });
  it("offers only what the state allows", () => {
    expect(actionsFor("running")).toEqual({ start: false, stop: true, restart: true, shell: true });
    expect(actionsFor("exited")).toEqual({ start: true, stop: false, restart: true, shell: false });
    expect(actionsFor("created").restart).toBe(false);
  });
  it("shortens ids", () => {
    expect(shortId("sha256:0123456789abcdef0123")).toBe("0123456789ab");
  });
});

describe("PullProgress", () => {
  it("adds up the layers' bytes and counts finished layers whole", () => {
    const p = new PullProgress();
    p.add({ id: "latest", status: "Pulling from library/busybox", current: null, total: null });
    p.add({ id: "aaaaaaaaaaaa", status: "Pulling fs layer", current: null, total: null });
    p.add({ id: "bbbbbbbbbbbb", status: "Pulling fs layer", current: null, total: null });
    p.add({ id: "aaaaaaaaaaaa", status: "Downloading", current: 50, total: 100 });
    p.add({ id: "bbbbbbbbbbbb", status: "Downloading", current: 0, total: 300 });
    expect(p.fraction()).toBeCloseTo(50 / 400);
    p.add({ id: "aaaaaaaaaaaa", status: "Pull complete", current: null, total: null });
    expect(p.fraction()).toBeCloseTo(100 / 400);
    expect(p.summary()).toBe("1/2 layers · 25%");
    p.add({ id: "bbbbbbbbbbbb", status: "Already exists", current: null, total: null });
    p.add({ id: null, status: "Status: Downloaded newer image for busybox:latest", current: null, total: null });
    expect(p.fraction()).toBe(1);
    expect(p.messages).toEqual(["latest: Pulling from library/busybox", "Status: Downloaded newer image for busybox:latest"]);
  });
  it("never goes backwards past a layer's total", () => {
    const p = new PullProgress();
    p.add({ id: "cccccccccccc", status: "Downloading", current: 900, total: 100 });
    expect(p.fraction()).toBe(1);
  });
});

describe("settings", () => {
  const base = { cpus: 2, memory: 2048, disk: 32, shares: ["/home/me", "/tmp"] };
  it("sends only what changed", () => {
    expect(settingsPairs(base, { ...base })).toEqual([]);
    expect(settingsPairs(base, { ...base, cpus: 4, shares: ["/home/me", " /srv:ro ", ""] })).toEqual(["cpus=4", "shares=/home/me,/srv:ro"]);
  });
  it("says what waits for a restart of a running VM", () => {
    const saved = { ...base, cpus: 4 };
    expect(pendingRestart(saved, { cpus: 2, memory_mib: 2048 }, ["cpus=4"])).toEqual(["CPUs (2 now, 4 after a restart)"]);
    expect(pendingRestart(base, { cpus: 2, memory_mib: 2048 }, ["shares=/x"])).toEqual(["shared folders"]);
    expect(pendingRestart(saved, null, ["cpus=4"])).toEqual([]);
    expect(pendingRestart(base, { cpus: 2, memory_mib: 2048 }, [])).toEqual([]);
  });
});

it("tail keeps the last lines", () => {
  expect(tail("a\nb\nc\n", 2)).toBe("b\nc");
  expect(tail("\x1b[2m2026\x1b[0m \x1b[33m WARN\x1b[0m x", 1)).toBe("2026  WARN x");
});
