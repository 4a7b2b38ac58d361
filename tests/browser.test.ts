/**
 * The browser tier (issue 17): the /browser page detecting with
 * onnxruntime-web in Debian's Chromium gives the detections a real
 * `bun run serve` gives on POST /detect; a stream the page publishes over
 * /browser/ws reaches sink-jsonl through the pipeline's browser stage and
 * tracker; the WebSocket edge refuses what it must; the tier answer follows
 * the pipeline file's policy; the browser stage's server tier detects
 * frames sent without detections.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Hono } from "hono";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { decideTier, registerBrowser } from "../runtime/observe/http/browser.ts";
import { createLogger } from "../runtime/core/log.ts";
import { letterboxPixels, letterboxScalar, makePlan, PAD, toUnitFloats } from "../runtime/inference/letterbox.ts";
import { chromiumPath, openBrowser, type Browser } from "./support/browser.ts";
import { startPipelineProcess, type PipelineProcess } from "./support/http.ts";
import { busImage, repoRoot, tempDir, zidaneImage } from "./support/paths.ts";
import { startServe, type ServeProcess } from "./support/serve.ts";
import { until } from "./support/wait.ts";

setDefaultTimeout(240_000);

const browserPath = chromiumPath();
if (!browserPath) console.warn("browser tier page tests skipped: no Chromium found (scripts/setup.sh --test installs Debian's chromium)");

const TOKEN = "browser-tier-test-token-0123456789";
// The page's document, for the functions Playwright runs in the browser (this project's types have no DOM).
declare const document: any;
const log = createLogger("test", 99);

type Det = { class: string; score: number; box: [number, number, number, number] };

function iou(a: readonly number[], b: readonly number[]): number {
  const w = Math.min(a[2], b[2]) - Math.max(a[0], b[0]);
  const h = Math.min(a[3], b[3]) - Math.max(a[1], b[1]);
  if (w <= 0 || h <= 0) return 0;
  const inter = w * h;
  return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter);
}

/**
 * Pairs detections one to one (same class, best IoU first); returns the
 * pairs and what stayed unmatched. The two sides decode the JPEG with
 * different decoders (ffmpeg, Chromium's), a grey level apart here and there.
 */
function match(a: Det[], b: Det[]): { pairs: [Det, Det, number][]; onlyA: Det[]; onlyB: Det[] } {
  const cands: [number, number, number][] = [];
  a.forEach((x, i) => b.forEach((y, j) => x.class === y.class && cands.push([i, j, iou(x.box, y.box)])));
  cands.sort((p, q) => q[2] - p[2]);
  const usedA = new Set<number>();
  const usedB = new Set<number>();
  const pairs: [Det, Det, number][] = [];
  for (const [i, j, o] of cands) {
    if (usedA.has(i) || usedB.has(j) || o < 0.7) continue;
    usedA.add(i);
    usedB.add(j);
    pairs.push([a[i], b[j], o]);
  }
  return { pairs, onlyA: a.filter((_, i) => !usedA.has(i)), onlyB: b.filter((_, j) => !usedB.has(j)) };
}

/** Server and browser agree: every detection paired (same class, IoU ≥ 0.7), but for one within 0.03 of the threshold. */
function expectSameDetections(server: Det[], page: Det[], conf = 0.25): void {
  expect(server.length).toBeGreaterThan(0);
  const m = match(server, page);
  for (const [, , o] of m.pairs) expect(o).toBeGreaterThanOrEqual(0.7);
  for (const d of [...m.onlyA, ...m.onlyB]) expect(d.score).toBeLessThan(conf + 0.03);
  const classes = (ds: Det[]) => [...new Set(ds.filter((d) => d.score >= conf + 0.03).map((d) => d.class))].sort();
  expect(classes(page)).toEqual(classes(server));
}

/** Polls `read` until `done` holds for what it gives (a file being written by another process). */
async function eventually<T>(read: () => Promise<T>, done: (x: T) => boolean, what: string, limitMs = 60_000): Promise<T> {
  const end = performance.now() + limitMs;
  for (;;) {
    const x = await read();
    if (done(x)) return x;
    if (performance.now() > end) throw new Error(`gave up waiting for ${what} after ${limitMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const dataUrl = async (file: string) => `data:image/jpeg;base64,${(await readFile(file)).toString("base64")}`;

describe("decideTier", () => {
  const policy = { serverMaxLoad: 0.8, maxRttMs: 150 };
  test("the server while it has headroom and the link is quick", () => {
    const a = decideTier(policy, 0.3, 20, true);
    expect(a.tier).toBe("server");
    expect(a.reason).toContain("20 ms ≤ 150 ms");
  });
  test("the browser when the server is loaded", () => {
    const a = decideTier(policy, 0.95, 20, true);
    expect(a.tier).toBe("browser");
    expect(a.reason).toBe("server load 95 % > 80 %");
  });
  test("the browser when the link is slow", () => {
    const a = decideTier(policy, 0.1, 400, true);
    expect(a.tier).toBe("browser");
    expect(a.reason).toBe("round trip 400 ms > 150 ms");
  });
  test("the browser where there is no server tier, whatever the load", () => {
    expect(decideTier(policy, 0, 1, false).tier).toBe("browser");
  });
});

describe("the page's code", () => {
  test("passes strict type checking with the DOM types (tsc -p web/browser; the root project has no DOM)", async () => {
    const p = Bun.spawn([join(repoRoot, "node_modules/.bin/tsc"), "--noEmit", "-p", join(repoRoot, "web/browser")], { stdout: "pipe", stderr: "pipe" });
    const [out, code] = await Promise.all([new Response(p.stdout).text(), p.exited]);
    expect(out).toBe("");
    expect(code).toBe(0);
  });
});

describe("browser letterbox", () => {
  test("gives the server's resize tensor for the same pixels (RGB and RGBA input)", () => {
    const [w, h] = [97, 61];
    const rgb = new Uint8Array(w * h * 3);
    const rgba = new Uint8Array(w * h * 4);
    for (let i = 0; i < w * h; i++) {
      const px = [(i * 37) % 256, (i * 11 + 5) % 256, (i * 3 + 200) % 256];
      rgb.set(px, i * 3);
      rgba.set([...px, 255], i * 4);
    }
    // The resize operator's reference kernel (the TypeScript one), bands included.
    const plan = makePlan(w, h, 64, 64, "letterbox");
    const bytes = new Uint8Array(3 * 64 * 64).fill(PAD);
    letterboxScalar(rgb, plan, false, bytes);
    const server = toUnitFloats(bytes);
    const fromRgb = letterboxPixels(rgb, w, h, 3, 64, 64);
    const fromRgba = letterboxPixels(rgba, w, h, 4, 64, 64);
    expect(fromRgb.letterbox).toEqual(plan.box);
    expect(Array.from(fromRgb.data)).toEqual(Array.from(server));
    expect(Array.from(fromRgba.data)).toEqual(Array.from(server));
  });
});

describe("browser routes (framewire serve's registration)", () => {
  let load = 0.1;
  const app = new Hono();
  registerBrowser(app, { log, detectPath: "/detect", load: () => load, policy: { serverMaxLoad: 0.5, maxRttMs: 100 } });

  test("GET /browser is cross-origin isolated, its CSP allows WebAssembly and nothing from elsewhere", async () => {
    const res = await app.request("/browser");
    expect(res.status).toBe(200);
    expect(res.headers.get("cross-origin-opener-policy")).toBe("same-origin");
    expect(res.headers.get("cross-origin-embedder-policy")).toBe("require-corp");
    const csp = res.headers.get("content-security-policy")!;
    expect(csp).toContain("script-src 'self' 'wasm-unsafe-eval'");
    expect(csp).toContain("default-src 'self'");
    expect(await res.text()).toContain('src="/browser/app.js"');
  });

  test("GET /browser/tier follows the policy: server, then browser under load, then browser on a slow link", async () => {
    const ask = async (q: string) => (await (await app.request(`/browser/tier${q}`)).json()) as { tier: string; reason: string };
    load = 0.1;
    expect((await ask("?rtt=10")).tier).toBe("server");
    expect((await ask("?rtt=250")).tier).toBe("browser");
    load = 0.9;
    expect(await ask("?rtt=10")).toMatchObject({ tier: "browser", reason: "server load 90 % > 50 %" });
    expect((await app.request("/browser/tier?rtt=fast")).status).toBe(400);
  });

  test("config names the model, its classes and /detect; no publishing without a pipeline", async () => {
    const res = await app.request("/browser/config");
    const c = (await res.json()) as { model: { url: string; classNames: string[] }; detectPath: string; publish: unknown };
    expect(c.model.url).toBe("/browser/model/yolov5n.onnx");
    expect(c.model.classNames.slice(0, 2)).toEqual(["person", "bicycle"]);
    expect(c.detectPath).toBe("/detect");
    expect(c.publish).toBeNull();
    expect((await app.request("/browser/ws", { headers: { upgrade: "websocket" } })).status).toBe(404);
  });

  test("only model files under models/ and onnxruntime-web's runtime files are served", async () => {
    expect((await app.request("/browser/config?model=..%2Fpackage.json")).status).toBe(400);
    expect((await app.request("/browser/model/..%2F..%2Fpackage.json")).status).toBe(404);
    expect((await app.request("/browser/model/missing.onnx")).status).toBe(404);
    expect((await app.request("/browser/ort/ort.node.min.mjs")).status).toBe(404);
    const wasm = await app.request("/browser/ort/ort-wasm-simd-threaded.wasm");
    expect(wasm.status).toBe(200);
    expect(wasm.headers.get("content-type")).toBe("application/wasm");
    expect(new Uint8Array(await wasm.arrayBuffer()).subarray(0, 4)).toEqual(new Uint8Array([0, 0x61, 0x73, 0x6d]));
  });
});

/** A WebSocket to /browser/ws with its messages queued. */
async function socket(base: string, headers?: Record<string, string>) {
  const ws = new WebSocket(`${base.replace("http", "ws")}/browser/ws`, headers ? ({ headers } as never) : undefined);
  const inbox: Record<string, unknown>[] = [];
  const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.addEventListener("close", (e) => resolve({ code: e.code, reason: e.reason })));
  ws.addEventListener("message", (e) => inbox.push(JSON.parse(String(e.data))));
  await new Promise<void>((resolve, reject) => {
    ws.addEventListener("open", () => resolve());
    ws.addEventListener("error", () => reject(new Error("WebSocket failed to open")));
  });
  return {
    ws,
    closed,
    send: (m: unknown) => ws.send(typeof m === "string" ? m : JSON.stringify(m)),
    async next(what = "a message") {
      await until(() => inbox.length > 0, what, 120_000);
      return inbox.shift()!;
    },
  };
}

describe("the browser stage of a pipeline", () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let serve: ServeProcess;
  let proc: PipelineProcess;
  let results: string;
  const lines = async () =>
    (await readFile(results, "utf8").catch(() => ""))
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { stream: string; seq: number; type?: string; detections?: (Det & { trackId?: number })[] });

  beforeAll(async () => {
    dir = await tempDir();
    results = join(dir.path, "results.jsonl");
    const file = join(dir.path, "phones.yaml");
    await writeFile(
      file,
      `
name: phones
http: { port: 0, token: "${TOKEN}" }
stages:
  - id: phone
    use: browser
    with:
      tier: { serverMaxLoad: 1, maxRttMs: 100000 }
      frameFps: 1
      server: { use: infer-onnx, with: { model: yolov5n.onnx } }
  - id: track
    use: tracker
  - id: results
    use: sink-jsonl
    with: { path: "${results}", flushInterval: 0.1 }
`,
    );
    [serve, proc] = await Promise.all([startServe(["--model", "yolov5n.onnx"]), startPipelineProcess(file)]);
    await proc.child.waitFor(/waiting for browser pages/, 60_000);
  });

  afterAll(async () => {
    await proc?.child.stop();
    await serve?.stop();
    await dir?.remove();
  });

  const serverDetect = async (image: string): Promise<Det[]> => {
    const res = await fetch(`${serve.url}/detect`, { method: "POST", headers: { "content-type": "image/jpeg" }, body: await readFile(image) });
    expect(res.status).toBe(200);
    return ((await res.json()) as { detections: Det[] }).detections;
  };

  test("GET /browser/tier follows the pipeline file's policy (serverMaxLoad 1, maxRttMs 100000, a server tier)", async () => {
    const ask = async (rtt: number) => (await (await fetch(`${proc.url}/browser/tier?rtt=${rtt}`)).json()) as { tier: string; reason: string; policy: unknown };
    const quick = await ask(5);
    expect(quick.tier).toBe("server");
    expect(quick.policy).toEqual({ serverMaxLoad: 1, maxRttMs: 100000 });
    expect(await ask(200000)).toMatchObject({ tier: "browser", reason: "round trip 200000 ms > 100000 ms" });
  });

  test("the WebSocket edge: a hello without the token, a message that is not one, another origin, a frame before hello", async () => {
    const noToken = await socket(proc.url);
    noToken.send({ type: "hello", id: "x" });
    expect(await noToken.next()).toEqual({ type: "error", error: "publishing needs the server's token (hello.token)", fatal: true });
    expect((await noToken.closed).code).toBe(1008);

    const garbage = await socket(proc.url);
    garbage.send({ type: "hello", id: "has space", token: TOKEN });
    const e = (await garbage.next()) as { error: string; fatal: boolean };
    expect(e.fatal).toBe(true);
    expect(e.error).toContain("id: expected 1 to 40 of A-Z a-z 0-9 _ -");
    await garbage.closed;

    const early = await socket(proc.url);
    early.send({ type: "frame", seq: 0, ts: Date.now(), width: 10, height: 10, detections: [] });
    expect(await early.next()).toMatchObject({ type: "error", error: "frame before hello", fatal: true });
    await early.closed;

    const res = await fetch(`${proc.url}/browser/ws`, { headers: { upgrade: "websocket", connection: "upgrade", origin: "http://evil.example", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==", "sec-websocket-version": "13" } });
    expect(res.status).toBe(403);
  });

  test("frames are validated one by one: a bad one is refused with its seq, the stream goes on; a taken id is refused", async () => {
    const s = await socket(proc.url);
    s.send({ type: "hello", id: "edge", token: TOKEN });
    expect(await s.next()).toMatchObject({ type: "ready", stream: "browser-edge", frameFps: 1, maxWidth: 640 });
    const again = await socket(proc.url);
    again.send({ type: "hello", id: "edge", token: TOKEN });
    expect(await again.next()).toMatchObject({ type: "error", error: "stream browser-edge is already being published", fatal: true });

    s.send({ type: "frame", seq: 0, ts: Date.now(), width: 64, height: 48, detections: [{ class: "person", classId: 0, score: 1.5, box: [0, 0, 1, 1] }] });
    const bad = (await s.next()) as { error: string; seq: number; fatal: boolean };
    expect(bad).toMatchObject({ type: "error", seq: 0, fatal: false });
    expect(bad.error).toContain("score");
    // A JPEG whose size is not the frame's.
    const jpeg = (await readFile(busImage)).toString("base64");
    s.send({ type: "frame", seq: 1, ts: Date.now(), width: 64, height: 48, detections: [], jpeg });
    expect(await s.next()).toMatchObject({ type: "error", seq: 1, fatal: false, error: "frame 1: jpeg is 810x1080, the frame says 64x48" });
    s.send({ type: "frame", seq: 2, ts: Date.now(), width: 64, height: 48, detections: [{ class: "person", classId: 0, score: 0.9, box: [1, 2, 30, 40] }] });
    expect(await s.next()).toEqual({ type: "ack", seq: 2 });
    s.ws.close();
    await s.closed;
    // The one frame that passed, then the stream's end (the page went away).
    const got = await eventually(lines, (ls) => ls.some((l) => l.stream === "browser-edge" && l.type === "stream-end"), "browser-edge's stream-end in results.jsonl");
    const edge = got.filter((l) => l.stream === "browser-edge");
    expect(edge[0]).toMatchObject({ seq: 0, detections: [{ class: "person", score: 0.9, box: [1, 2, 30, 40] }] });
    expect(edge.map((l) => l.type ?? "frame")).toEqual(["frame", "stream-end"]);
  });

  test("the server tier: a frame sent without detections is detected by the stage, as POST /detect does", async () => {
    const s = await socket(proc.url);
    s.send({ type: "hello", id: "server-tier", token: TOKEN });
    expect(await s.next()).toMatchObject({ type: "ready", stream: "browser-server-tier" });
    s.send({ type: "frame", seq: 0, ts: Date.now(), width: 810, height: 1080, jpeg: (await readFile(busImage)).toString("base64") });
    const ack = (await s.next("the server tier's ack")) as { type: string; seq: number; detections: Det[] };
    expect(ack.type).toBe("ack");
    expectSameDetections(await serverDetect(busImage), ack.detections);
    s.ws.close();
  });

  test.skipIf(!browserPath)("in Chromium: detect() on bus.jpg and zidane.jpg matches POST /detect; published results reach sink-jsonl with track ids", async () => {
    let browser: Browser | undefined;
    try {
      browser = await openBrowser();
      const { page } = browser;
      const errors: string[] = [];
      page.on("pageerror", (e) => errors.push(e.message));
      await page.goto(`${proc.url}/browser?threads=2`);
      await page.waitForFunction(() => (globalThis as { framewire?: unknown }).framewire !== undefined, undefined, { timeout: 60_000 });
      await page.evaluate(() => (globalThis as unknown as { framewire: { ready: Promise<void> } }).framewire.ready);
      const info = (await page.evaluate(() => (globalThis as unknown as { framewire: { info(): unknown } }).framewire.info())) as { backend: string; threads: number; crossOriginIsolated: boolean };
      expect(info).toMatchObject({ backend: "wasm", threads: 2, crossOriginIsolated: true });

      const stream = await page.evaluate((token) => (globalThis as unknown as { framewire: { publish(o: object): Promise<{ stream: string }> } }).framewire.publish({ id: "cam1", token }), TOKEN);
      expect(stream).toMatchObject({ stream: "browser-cam1", frameFps: 1, maxWidth: 640 });

      const seen: { image: string; width: number; detections: Det[] }[] = [];
      for (const [image, width] of [[busImage, 810], [zidaneImage, 1280], [busImage, 810]] as const) {
        const r = (await page.evaluate(
          (u) => (globalThis as unknown as { framewire: { detect(u: string, o: object): Promise<unknown> } }).framewire.detect(u, { publish: true }),
          await dataUrl(image),
        )) as { detections: Det[]; ms: number; backend: string };
        expect(r.backend).toBe("wasm");
        expect(r.ms).toBeGreaterThan(0);
        // The shape of POST /detect: class, score, box.
        for (const d of r.detections) expect(Object.keys(d).sort()).toEqual(["box", "class", "score"]);
        expectSameDetections(await serverDetect(image), r.detections);
        seen.push({ image, width, detections: r.detections });
      }
      await page.evaluate(() => (globalThis as unknown as { framewire: { unpublish(): void } }).framewire.unpublish());

      const got = await eventually(lines, (ls) => ls.some((l) => l.stream === "browser-cam1" && l.type === "stream-end"), "browser-cam1's frames and stream-end in results.jsonl");
      const frames = got.filter((l) => l.stream === "browser-cam1" && !l.type);
      expect(frames.map((f) => f.seq)).toEqual([0, 1, 2]);
      frames.forEach((f, i) => {
        // Frames wider than maxWidth are published scaled to 640 wide, boxes with them.
        const k = Math.min(1, 640 / seen[i].width);
        expect(f.detections!.map((d) => d.class)).toEqual(seen[i].detections.map((d) => d.class));
        f.detections!.forEach((d, j) => expect(iou(d.box, seen[i].detections[j].box.map((x) => x * k))).toBeGreaterThan(0.99));
      });
      // The tracker ran on the stream: the first frame's confident detections start tracks.
      expect(frames[0].detections!.filter((d) => d.trackId !== undefined).length).toBeGreaterThan(0);
      expect(errors).toEqual([]);
    } finally {
      await browser?.close();
    }
  });

  test.skipIf(!browserPath)("in Chromium: an uploaded video, through the page's controls, is detected in the server tier (the policy says so) and published as a tracked stream", async () => {
    let browser: Browser | undefined;
    try {
      browser = await openBrowser();
      const { page } = browser;
      const errors: string[] = [];
      page.on("pageerror", (e) => errors.push(e.message));
      await page.goto(`${proc.url}/browser#token=${TOKEN}`);
      await page.waitForFunction(() => (globalThis as { framewire?: unknown }).framewire !== undefined, undefined, { timeout: 60_000 });
      await page.evaluate(() => (globalThis as unknown as { framewire: { ready: Promise<void> } }).framewire.ready);
      await page.fill("#stream-id", "video");
      await page.check("#publish");
      await page.waitForFunction(() => document.querySelector("#published").textContent.includes("browser-video"), undefined, { timeout: 30_000 });
      await page.setInputFiles("#video-file", join(repoRoot, "pipelines/media/vtest.mp4"));
      await page.waitForFunction(() => Number(document.body.dataset.frames ?? 0) >= 4, undefined, { timeout: 120_000 });
      // Load ≤ 1 and any round trip ≤ 100 s: the page sends its frames without detections and the stage detects them.
      expect(await page.getAttribute("#tier", "data-state")).toBe("server");
      const got = await eventually(lines, (ls) => ls.filter((l) => l.stream === "browser-video").length >= 3, "three frames of browser-video in results.jsonl");
      const frames = got.filter((l) => l.stream === "browser-video");
      // The clip is 480×360 (under maxWidth): boxes in its pixels; people walk through it, the tracker follows them.
      expect(frames.map((f) => f.seq).slice(0, 3)).toEqual([0, 1, 2]);
      const dets = frames.flatMap((f) => f.detections ?? []);
      expect(dets.some((d) => d.class === "person")).toBe(true);
      for (const d of dets) expect(d.box[2]).toBeLessThanOrEqual(480);
      expect(dets.some((d) => d.trackId !== undefined)).toBe(true);
      expect(errors).toEqual([]);
    } finally {
      await browser?.close();
    }
    // Closing the page ends the stream.
    await eventually(lines, (ls) => ls.some((l) => l.stream === "browser-video" && l.type === "stream-end"), "browser-video's stream-end");
  });
});
