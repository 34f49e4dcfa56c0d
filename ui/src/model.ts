// What the window computes from the engine's and the daemon's answers: no DOM, no Tauri, so
// Vitest checks all of it directly.

export interface Port {
  ip: string;
  private: number;
  public: number | null;
  proto: string;
}

export interface Container {
  id: string;
  name: string;
  image: string;
  command: string;
  state: string;
  status: string;
  created: number;
  ports: Port[];
  volumes: string[];
}

export interface Image {
  id: string;
  tags: string[];
  size: number;
  created: number;
}

export interface Volume {
  name: string;
  driver: string;
  mountpoint: string;
  size: number | null;
  used_by: string[];
}

export interface PullEvent {
  id: string | null;
  status: string;
  current: number | null;
  total: number | null;
}

/** `berth status --json`, with what the app is doing (`starting`, `stopping`). */
export interface VmStatus {
  state: string;
  problems: string[];
  start_error?: string | null;
  progress?: string[];
  docker_socket?: string | null;
  vm?: { cpus: number; memory_mib: number; accel: string; transport: string; uptime_secs: number; state?: string | null } | null;
  disk?: { size_bytes: number; used_bytes: number } | null;
  agent?: { version: string; containers_running: number } | null;
  daemon?: { pid: number; rss_bytes?: number | null } | null;
}

const UNITS = ["B", "kB", "MB", "GB", "TB"];

/** Sizes as docker prints them (powers of 1000, three significant digits). */
export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined || n < 0) return "—";
  let i = 0;
  let v = n;
  while (v >= 1000 && i < UNITS.length - 1) {
    v /= 1000;
    i++;
  }
  const digits = i === 0 || v >= 100 ? 0 : v >= 10 ? 1 : 2;
  return `${v.toFixed(digits)} ${UNITS[i]}`;
}

/** An image or container id as docker shows it: 12 hex digits, no `sha256:`. */
export function shortId(id: string): string {
  return id.replace(/^sha256:/, "").slice(0, 12);
}

export interface PortLink {
  label: string;
  /** A web address for TCP ports published on the host; null for UDP and unpublished ones. */
  url: string | null;
}

/** Published ports, one per host port, as links the user can open. */
export function portLinks(ports: Port[]): PortLink[] {
  const seen = new Set<string>();
  const out: PortLink[] = [];
  for (const p of ports) {
    if (p.public === null || p.public === 0) {
      out.push({ label: `${p.private}/${p.proto}`, url: null });
      continue;
    }
    const key = `${p.public}/${p.proto}`;
    if (seen.has(key)) continue; // the same port on 0.0.0.0 and [::]
    seen.add(key);
    const wildcard = p.ip === "" || p.ip === "0.0.0.0" || p.ip === "::" || p.ip === "127.0.0.1";
    const host = wildcard ? "localhost" : p.ip.includes(":") ? `[${p.ip}]` : p.ip;
    out.push({
      label: `${p.public}:${p.private}/${p.proto}`,
      url: p.proto === "tcp" ? `http://${host}:${p.public}` : null,
    });
  }
  return out;
}

/** Running containers first, then by name. */
export function sortContainers(list: Container[]): Container[] {
  const rank = (c: Container) => (c.state === "running" ? 0 : c.state === "paused" || c.state === "restarting" ? 1 : 2);
  return [...list].sort((a, b) => rank(a) - rank(b) || a.name.localeCompare(b.name));
}

/** What a container's buttons may do in its state. */
export function actionsFor(state: string): { start: boolean; stop: boolean; restart: boolean; shell: boolean } {
  const up = state === "running" || state === "restarting" || state === "paused";
  return { start: !up, stop: up, restart: state !== "created", shell: state === "running" };
}

interface Layer {
  status: string;
  current: number;
  total: number;
}

const LAYER_DONE = /^(Pull complete|Already exists|Download complete)$/;

/** A pull's progress from the engine's lines: each layer's state, and the whole as a fraction. */
export class PullProgress {
  readonly layers = new Map<string, Layer>();
  readonly messages: string[] = [];

  add(e: PullEvent): void {
    // Lines without a layer ("Pulling from library/busybox", "Digest: ...", "Status: ...").
    if (!e.id || !/^[0-9a-f]{12,}$/.test(e.id)) {
      this.messages.push(e.id ? `${e.id}: ${e.status}` : e.status);
      return;
    }
    const layer = this.layers.get(e.id) ?? { status: "", current: 0, total: 0 };
    layer.status = e.status;
    if (e.total && e.total > 0) layer.total = Math.max(layer.total, e.total);
    if (e.current !== null && e.current >= 0 && e.status === "Downloading") layer.current = e.current;
    if (LAYER_DONE.test(e.status) && layer.total > 0) layer.current = layer.total;
    this.layers.set(e.id, layer);
  }

  /** Between 0 and 1: bytes downloaded over bytes to download, finished layers whole. */
  fraction(): number {
    let done = 0;
    let total = 0;
    let finished = 0;
    for (const l of this.layers.values()) {
      if (LAYER_DONE.test(l.status)) finished++;
      if (l.total > 0) {
        total += l.total;
        done += LAYER_DONE.test(l.status) ? l.total : Math.min(l.current, l.total);
      }
    }
    if (this.layers.size > 0 && finished === this.layers.size) return 1;
    return total === 0 ? 0 : done / total;
  }

  summary(): string {
    const n = this.layers.size;
    const finished = [...this.layers.values()].filter((l) => LAYER_DONE.test(l.status)).length;
    const last = this.messages[this.messages.length - 1] ?? "";
    return n === 0 ? last : `${finished}/${n} layers · ${Math.round(this.fraction() * 100)}%`;
  }
}

export interface Settings {
  cpus: number;
  memory: number;
  disk: number;
  shares: string[];
}

/** `KEY=VALUE` pairs for `berth config set`, only for what changed. */
export function settingsPairs(before: Settings, after: Settings): string[] {
  const out: string[] = [];
  for (const k of ["cpus", "memory", "disk"] as const) {
    if (before[k] !== after[k]) out.push(`${k}=${after[k]}`);
  }
  const shares = after.shares.map((s) => s.trim()).filter((s) => s !== "");
  if (shares.join(",") !== before.shares.join(",")) out.push(`shares=${shares.join(",")}`);
  return out;
}

/**
 * What a change does not do until the VM restarts, in words; empty when nothing waits.
 * `running` is the VM as it runs now (null when it is stopped: everything applies at start).
 */
export function pendingRestart(saved: Settings, running: { cpus: number; memory_mib: number } | null, changed: string[]): string[] {
  if (!running) return [];
  const out: string[] = [];
  if (saved.cpus !== running.cpus) out.push(`CPUs (${running.cpus} now, ${saved.cpus} after a restart)`);
  if (saved.memory !== running.memory_mib) out.push(`memory (${running.memory_mib} MiB now, ${saved.memory} MiB after a restart)`);
  if (changed.some((p) => p.startsWith("shares="))) out.push("shared folders");
  return out;
}

/** The last `n` lines of a text, for error messages that carry a whole log (colours removed). */
export function tail(text: string, n: number): string {
  // eslint-disable-next-line no-control-regex
  const lines = text.replace(/\x1b\[[0-9;]*[A-Za-z]/g, "").trimEnd().split("\n");
  return lines.slice(-n).join("\n");
}
