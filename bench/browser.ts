/**
 * The browser tier against the server tier on the same image (bus.jpg):
 * in-browser ms per frame — letterbox, onnxruntime-web inference (wasm,
 * 1 and 2 threads, cross-origin isolated) and NMS, as `window.framewire.detect`
 * reports it, and the page's whole call (image decode included) — for the
 * float32 and int8 models, next to `POST /detect` of a `framewire serve`
 * on this machine (its own `ms`, and the client's round trip). Headless
 * Debian Chromium (playwright-core), the page served by this process; the
 * browser, the server and the bench share this machine's cores.
 */
import { Hono } from "hono";
import { readFile } from "node:fs/promises";
import { createServer } from "node:net";
import { mkdtemp, rm } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { createLogger } from "../runtime/core/log.ts";
import { registerBrowser } from "../runtime/observe/http/browser.ts";
import { serve } from "../runtime/platform/index.ts";
import { projectRoot } from "../runtime/platform/paths.ts";
import { fmt, markdownTable } from "./table.ts";

const IMAGE = join(projectRoot, "../shared/data/images/bus.jpg");
const RUNS = 8;
const WARMUP = 2;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === "object" && addr ? resolve(addr.port) : reject(new Error("no port"))));
    });
  });
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const p90 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.ceil(xs.length * 0.9) - 1)];

/** `framewire serve --model yolov5n.onnx` on a free port; resolves once it listens. */
async function startServe(): Promise<{ url: string; stop(): Promise<void> }> {
  const port = await freePort();
  const proc = Bun.spawn(["bun", join(projectRoot, "runtime/cli.ts"), "serve", "--model", "yolov5n.onnx", "--port", String(port)], {
    stdout: "ignore",
    stderr: "pipe",
    env: { ...process.env, FRAMEWIRE_LOG: "info" },
  });
  let log = "";
  const dec = new TextDecoder();
  const reader = proc.stderr.getReader();
  const end = performance.now() + 60_000;
  while (!log.includes("listening on")) {
    if (performance.now() > end) throw new Error(`serve did not start: ${log}`);
    const { value, done } = await reader.read();
    if (done) throw new Error(`serve exited: ${log}`);
    log += dec.decode(value);
  }
  void (async () => {
    while (!(await reader.read()).done);
  })();
  return {
    url: `http://127.0.0.1:${port}`,
    async stop() {
      proc.kill("SIGTERM");
      await proc.exited;
    },
  };
}

interface PageRun {
  model: string;
  threads: number;
  detect: number[];
  call: number[];
  backend: string;
  error?: string;
}

/**
 * @example
 * console.log(await benchBrowser()); // bun run bench browser
 */
export async function benchBrowser(): Promise<string> {
  const executablePath = [process.env.FRAMEWIRE_CHROMIUM, "/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => p && Bun.file(p).size > 0);
  if (!executablePath) return "## browser\n\nskipped: no Chromium (scripts/setup.sh --test installs Debian's chromium)\n";
  const image = `data:image/jpeg;base64,${(await readFile(IMAGE)).toString("base64")}`;

  // The server tier: POST /detect, one request at a time.
  const server = await startServe();
  const serverMs: number[] = [];
  const serverWork: number[] = [];
  const serverWall: number[] = [];
  try {
    const body = await readFile(IMAGE);
    for (let i = 0; i < WARMUP + RUNS; i++) {
      const t0 = performance.now();
      const res = await fetch(`${server.url}/detect`, { method: "POST", headers: { "content-type": "image/jpeg" }, body });
      const j = (await res.json()) as { ms: number; timings: { decode: number } };
      if (i >= WARMUP) {
        serverMs.push(j.ms);
        // Like the page's figure: without the image decode.
        serverWork.push(j.ms - j.timings.decode);
        serverWall.push(performance.now() - t0);
      }
    }
  } finally {
    await server.stop();
  }

  // The browser tier: the page served from this process.
  const app = new Hono();
  registerBrowser(app, { log: createLogger("bench", 99) });
  const listener = serve(app.fetch, { hostname: "127.0.0.1", port: 0 });
  const profile = await mkdtemp(join(tmpdir(), "framewire-bench-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  const runs: PageRun[] = [];
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    for (const model of ["yolov5n.onnx", "yolov5n-int8.onnx"]) {
      for (const threads of [1, 2]) {
        const run: PageRun = { model, threads, detect: [], call: [], backend: "wasm" };
        runs.push(run);
        try {
          await page.goto(`http://127.0.0.1:${listener.port}/browser?backend=wasm&threads=${threads}&model=${model}`);
          await page.waitForFunction(() => (globalThis as { framewire?: unknown }).framewire !== undefined, undefined, { timeout: 120_000 });
          await page.evaluate(() => (globalThis as unknown as { framewire: { ready: Promise<void> } }).framewire.ready);
          for (let i = 0; i < WARMUP + RUNS; i++) {
            const t0 = performance.now();
            const r = (await page.evaluate((u) => (globalThis as unknown as { framewire: { detect(u: string): Promise<unknown> } }).framewire.detect(u), image)) as { ms: number; backend: string };
            if (i >= WARMUP) {
              run.detect.push(r.ms);
              run.call.push(performance.now() - t0);
              run.backend = r.backend;
            }
          }
        } catch (err) {
          run.error = (err as Error).message.split("\n")[0];
        }
      }
    }
  } finally {
    await context.close();
    await rm(profile, { recursive: true, force: true });
    await listener.stop();
  }

  const base = median(serverWork);
  const rows: (string | number)[][] = [
    ["server POST /detect, less decode", "yolov5n.onnx", "onnxruntime-node", fmt(base), fmt(p90(serverWork)), "1.00", fmt(median(serverWall))],
    ["server POST /detect, its ms", "yolov5n.onnx", "onnxruntime-node", fmt(median(serverMs)), fmt(p90(serverMs)), fmt(median(serverMs) / base, 2), fmt(median(serverWall))],
    ...runs.map((r) =>
      r.error
        ? [`browser detect()`, r.model, `${r.backend}, ${r.threads} thread(s)`, "fails", "", "", r.error.slice(0, 80)]
        : [`browser detect()`, r.model, `${r.backend}, ${r.threads} thread(s)`, fmt(median(r.detect)), fmt(p90(r.detect)), fmt(median(r.detect) / base, 2), fmt(median(r.call))],
    ),
  ];
  return [
    "## browser",
    "",
    `bus.jpg (810×1080), ${RUNS} runs after ${WARMUP} warm-up, one at a time. ms: letterbox + inference + NMS, the baseline being the server's \`ms\` less its ffmpeg decode (queue included); "wall": the whole call as its client sees it (the page: \`detect(dataUrl)\` with the browser's image decode; the server: the HTTP round trip with the decode). Load average at the end: ${loadavg().map((x) => x.toFixed(1)).join(", ")}.`,
    "",
    markdownTable(["where", "model", "runtime", "median ms", "p90 ms", "× server", "median wall ms"], rows),
    "",
  ].join("\n");
}

if (import.meta.main) console.log(await benchBrowser());
