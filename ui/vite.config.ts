import { defineConfig } from "vitest/config";

// The Tauri app loads the built pages from dist/ (`frontendDist` in desktop/app/tauri.conf.json).
export default defineConfig({
  clearScreen: false,
  server: { port: 5173, strictPort: true },
  build: { outDir: "dist", target: "safari15", emptyOutDir: true },
  test: { environment: "jsdom" },
});
