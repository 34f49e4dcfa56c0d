// The app's commands (desktop/app/src/main.rs), typed. Every call goes to the Rust side, which
// talks to the Berth daemon through `berth` and the Docker API; nothing here reaches the VM.

import { Channel, invoke } from "@tauri-apps/api/core";
import { listen, type UnlistenFn } from "@tauri-apps/api/event";
import type { Container, Image, PullEvent, VmStatus, Volume } from "./model";

/** The Rust side's error: the whole chain of causes as one message. */
export class ApiError extends Error {}

async function call<T>(cmd: string, args?: Record<string, unknown>): Promise<T> {
  try {
    return await invoke<T>(cmd, args);
  } catch (e) {
    throw new ApiError(typeof e === "string" ? e : e instanceof Error ? e.message : JSON.stringify(e));
  }
}

export interface Engine {
  version: string;
  api_version: string;
  cpus: number;
  memory: number;
  kernel: string;
  os: string;
  images_size: number;
  containers_size: number;
  volumes_size: number;
}

export interface SettingsAnswer {
  config: {
    path: string;
    file: Record<string, unknown>;
    resolved: { cpus: number; memory: number; disk: number; shares: string[]; accel: string; transport: string };
    defaults: { cpus: number; memory: number; disk: number; shares: string[] };
  };
  start_at_login: boolean;
}

export const api = {
  vmStatus: () => call<VmStatus>("vm_status"),
  vmStart: () => call<void>("vm_start"),
  vmStop: () => call<void>("vm_stop"),
  engine: () => call<Engine>("engine_info"),
  containers: () => call<Container[]>("list_containers"),
  containerAction: (id: string, action: "start" | "stop" | "restart" | "remove") =>
    call<void>("container_action", { id, action }),
  run: (req: { image: string; name: string; ports: string; command: string }) => call<string>("run_container", { req }),
  images: () => call<Image[]>("list_images"),
  pull: (reference: string, onEvent: (e: PullEvent) => void) => {
    const progress = new Channel<PullEvent>();
    progress.onmessage = onEvent;
    return call<void>("pull_image", { reference, progress });
  },
  removeImage: (id: string) => call<void>("remove_image", { id }),
  volumes: () => call<Volume[]>("list_volumes"),
  createVolume: (name: string) => call<string>("create_volume", { name }),
  removeVolume: (name: string) => call<void>("remove_volume", { name }),
  /** Follows a container's logs; returns the task to cancel. */
  followLogs: (id: string, onText: (t: string) => void) => {
    const out = new Channel<string>();
    out.onmessage = onText;
    return call<number>("follow_logs", { id, out });
  },
  cancel: (task: number) => call<void>("cancel", { task }),
  /** A shell with a terminal; `onData` gets its output, an empty array when it ends. */
  openShell: (id: string, cols: number, rows: number, onData: (d: Uint8Array) => void) => {
    const out = new Channel<ArrayBuffer | number[]>();
    out.onmessage = (m) => onData(m instanceof ArrayBuffer ? new Uint8Array(m) : Uint8Array.from(m));
    return call<number>("open_shell", { id, cols, rows, out });
  },
  shellInput: (session: number, data: string) => call<void>("shell_input", { session, data }),
  shellResize: (session: number, cols: number, rows: number) => call<void>("shell_resize", { session, cols, rows }),
  closeShell: (session: number) => call<void>("close_shell", { session }),
  settings: () => call<SettingsAnswer>("get_settings"),
  saveSettings: (pairs: string[], startAtLogin: boolean) => call<void>("save_settings", { pairs, startAtLogin }),
  openUrl: (url: string) => call<void>("open_url", { url }),
};

export function onVmState(f: (s: VmStatus) => void): Promise<UnlistenFn> {
  return listen<VmStatus>("vm-state", (e) => f(e.payload));
}

export function onEngineChanged(f: () => void): Promise<UnlistenFn> {
  return listen<string>("engine-changed", () => f());
}
