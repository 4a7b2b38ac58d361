/**
 * The `heatmap` stage: dwell seconds per cell from tracked detections
 * (exact, on frames made here), the sliding window, the state file across
 * restarts; and end to end in a `bun run pipeline` process with the real
 * detector and tracker on the sample clip: the PNG and JSON routes, the
 * state surviving a restart of the process, and the live page laying the
 * heatmap over the stream's tile in Chromium.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as v from "valibot";
import { decode } from "fast-png";
import { existsSync, readFileSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import heatmap from "../operators/heatmap.ts";
import type { Detection, Frame } from "../runtime/core/message.ts";
import type { TransformInstance } from "../runtime/core/operator.ts";
import { chromiumPath, openBrowser } from "./support/browser.ts";
import { startPipelineProcess, type PipelineProcess } from "./support/http.ts";
import { repoRoot, tempDir } from "./support/paths.ts";
import { captureLog, type CapturedLog } from "./support/pipeline.ts";
import { until } from "./support/wait.ts";

setDefaultTimeout(120_000);

// The page's document, for the functions Playwright runs in the browser (this project's types have no DOM).
declare const document: any;

const W = 640;
const H = 360;
let dir: Awaited<ReturnType<typeof tempDir>>;
beforeAll(async () => {
  dir = await tempDir("framewire-heatmap-");
});
afterAll(async () => {
  await dir?.remove();
});

/** A person whose feet stand at (fx, fy) of the picture. */
const feet = (fx: number, fy: number, trackId?: number, cls = "person"): Detection => ({
  class: cls,
  classId: 0,
  score: 0.9,
  box: [fx * W - 20, fy * H - 80, fx * W + 20, fy * H],
  ...(trackId !== undefined ? { trackId } : {}),
});
const image = { width: W, height: H, format: "rgb24" as const, data: new Uint8Array(0) };
const frame = (seq: number, detections: Detection[]): Frame => ({ kind: "frame", stream: "cam", seq, ts: 0, live: false, image, detections, timings: {} });

async function stage(extra: Record<string, unknown> = {}, log: CapturedLog = captureLog("heat")): Promise<TransformInstance> {
  const options = v.parse(heatmap.options, { fps: 10, ...extra });
  return heatmap.create(options, { stage: "heat", pipeline: "t", log, signal: new AbortController().signal });
}
const cell = (g: { cols: number; cells: Float32Array }, x: number, y: number) => g.cells[y * g.cols + x];

describe("accumulation", () => {
  test("each tracked anchor adds the time between frames to its cell; untracked and other classes do not count", async () => {
    const s = await stage({ classes: ["person"] });
    // 2 s at (0.25, 0.5) — cell (16, 18) of 64 × 36 — then 1 s at (0.75, 0.9) — cell (48, 32).
    for (let i = 0; i <= 20; i++) await s.process(frame(i, [feet(0.25, 0.5, 1), feet(0.5, 0.5), feet(0.1, 0.1, 9, "dog")]));
    for (let i = 21; i <= 30; i++) await s.process(frame(i, [feet(0.75, 0.9, 1)]));
    const g = s.heatmap!.grid("cam")!;
    expect([g.cols, g.rows, g.windowSeconds]).toEqual([64, 36, 3600]);
    expect(cell(g, 16, 18)).toBeCloseTo(2, 5);
    expect(cell(g, 48, 32)).toBeCloseTo(1, 5);
    expect(g.cells.reduce((a, b) => a + b, 0)).toBeCloseTo(3, 5);
    expect(s.heatmap!.streams()).toEqual(["cam"]);
    expect(s.heatmap!.grid("other")).toBeUndefined();
  });

  test("the window slides: time older than `window` drops out", async () => {
    const s = await stage({ window: 10 });
    for (let i = 0; i <= 20; i++) await s.process(frame(i, [feet(0.25, 0.5, 1)]));
    for (let i = 21; i <= 160; i++) await s.process(frame(i, [feet(0.75, 0.9, 1)]));
    const g = s.heatmap!.grid("cam")!;
    expect(cell(g, 16, 18)).toBe(0);
    // At most the window (10 s, whole slices of 1/3 s) of the last 14 s.
    expect(cell(g, 48, 32)).toBeGreaterThan(9.6);
    expect(cell(g, 48, 32)).toBeLessThanOrEqual(10.01);
  });

  test("a pause counts at most maxGap seconds", async () => {
    const s = await stage({ maxGap: 0.5 });
    await s.process(frame(0, [feet(0.25, 0.5, 1)]));
    await s.process(frame(50, [feet(0.25, 0.5, 1)])); // 5 s later
    expect(cell(s.heatmap!.grid("cam")!, 16, 18)).toBeCloseTo(0.5, 5);
  });

  test("the state file keeps the heatmap across a restart; another grid size or a corrupt file starts empty, said in the log", async () => {
    const state = join(dir.path, "heat.json");
    const first = await stage({ state });
    for (let i = 0; i <= 20; i++) await first.process(frame(i, [feet(0.25, 0.5, 1)]));
    await first.close!();
    expect(existsSync(state)).toBe(true);

    const second = await stage({ state });
    expect(cell(second.heatmap!.grid("cam")!, 16, 18)).toBeCloseTo(2, 5);
    // The file's frames start again at seq 0: the stage's own clock goes on.
    for (let i = 0; i <= 10; i++) await second.process(frame(i, [feet(0.25, 0.5, 1)]));
    expect(cell(second.heatmap!.grid("cam")!, 16, 18)).toBeCloseTo(3, 5);
    await second.close!();

    const log = captureLog("heat");
    const other = await stage({ state, cols: 32, rows: 18 }, log);
    expect(other.heatmap!.grid("cam")).toBeUndefined();
    expect(log.text()).toContain("kept for a 64×36 grid over 3600 s, not 32×18 over 3600 s");

    await writeFile(state, "{ not json");
    const log2 = captureLog("heat");
    const fresh = await stage({ state }, log2);
    expect(fresh.heatmap!.streams()).toEqual([]);
    expect(log2.text()).toContain(`moved to ${state}.corrupt`);
    expect(readFileSync(`${state}.corrupt`, "utf8")).toBe("{ not json");
  });
});

const browserPath = chromiumPath();

describe("a pipeline process with the detector and tracker", () => {
  let proc: PipelineProcess | undefined;
  let file: string;
  const state = () => join(dir.path, "plaza.heatmap.json");

  beforeAll(async () => {
    file = join(dir.path, "plaza.yaml");
    await writeFile(
      file,
      `
name: plaza
stages:
  - id: cam
    use: ingest
    with: { url: pipelines/media/vtest.mp4, realtime: true, loop: true }
  - id: prep
    use: resize
    with: { width: 640, height: 640, mode: letterbox }
  - id: detect
    use: infer-onnx
    with: { model: yolov5n.onnx }
  - id: nms
    use: nms
    with: { conf: 0.3, iou: 0.45, classes: [person] }
  - id: track
    use: tracker
  - id: heat
    use: heatmap
    with: { cols: 64, rows: 36, window: 3600, state: "${state()}" }
  - id: results
    use: sink-jsonl
    with: { path: "${join(dir.path, "plaza.jsonl")}" }
`,
    );
    proc = await startPipelineProcess(file);
  });
  afterAll(async () => {
    await proc?.child.stop();
  });

  type HeatJson = { stream: string; stage: string; cols: number; rows: number; totalSeconds: number; maxSeconds: number; cells: number[] };
  const heatJson = async (url: string): Promise<HeatJson | undefined> => {
    const res = await fetch(`${url}/api/streams/cam/heatmap.json`);
    return res.ok ? ((await res.json()) as HeatJson) : undefined;
  };

  test("GET /api/streams/cam/heatmap.png: the colour-mapped grid, painted exactly where tracks stood; .json has the seconds", async () => {
    const url = proc!.url;
    let last: HeatJson | undefined;
    await until(() => (void heatJson(url).then((j) => (last = j)), (last?.totalSeconds ?? 0) > 3), "3 s of tracked dwell", 60_000, 250);
    const j = last!;
    expect(j).toMatchObject({ stream: "cam", stage: "heat", cols: 64, rows: 36 });
    expect(j.cells).toHaveLength(64 * 36);

    const before = (await heatJson(url))!;
    const res = await fetch(`${url}/api/streams/cam/heatmap.png?width=320`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("image/png");
    const png = decode(new Uint8Array(await res.arrayBuffer()));
    expect([png.width, png.height, png.channels]).toEqual([320, 180, 4]);
    // Each cell is 5 × 5 pixels. Cells only gain time: a cell with time before the PNG is painted in it
    // (at least 25 % opaque), one still empty after it (and its neighbours, which blend in) is transparent.
    const now = (await heatJson(url))!;
    const alpha = (cx: number, cy: number) => png.data[((cy * 5 + 2) * 320 + cx * 5 + 2) * 4 + 3];
    const painted = before.cells.flatMap((c, i) => (c > 0 ? [i] : []));
    expect(painted.length).toBeGreaterThan(0);
    for (const i of painted) expect(alpha(i % 64, Math.floor(i / 64))).toBeGreaterThanOrEqual(63);
    let empty = 0;
    for (let cy = 0; cy < 36; cy++)
      for (let cx = 0; cx < 64; cx++) {
        const around = [-1, 0, 1].flatMap((dy) => [-1, 0, 1].map((dx) => now.cells[Math.min(35, Math.max(0, cy + dy)) * 64 + Math.min(63, Math.max(0, cx + dx))]));
        if (around.every((c) => c === 0)) {
          empty++;
          expect(alpha(cx, cy)).toBe(0);
        }
      }
    expect(empty).toBeGreaterThan(100);
    const opaque = await fetch(`${url}/api/streams/cam/heatmap.png?width=64&background=1`);
    expect(decode(new Uint8Array(await opaque.arrayBuffer())).data[3]).toBe(255);

    expect((await fetch(`${url}/api/streams/nope/heatmap.png`)).status).toBe(404);
    expect((await fetch(`${url}/api/streams/cam/heatmap.png?width=1`)).status).toBe(400);
    expect((await fetch(`${url}/api/streams/cam/heatmap.png?stage=other`)).status).toBe(404);
    const list = (await (await fetch(`${url}/api/heatmaps`)).json()) as { heatmaps: { stage: string; stream: string }[] };
    expect(list.heatmaps).toEqual([expect.objectContaining({ stage: "heat", stream: "cam", cols: 64, rows: 36, windowSeconds: 3600 })]);
  });

  test.skipIf(!browserPath)("the live page lays the heatmap over the stream's tile (Chromium; screenshot kept)", async () => {
    const browser = await openBrowser();
    try {
      const { page } = browser;
      const errors: string[] = [];
      page.on("pageerror", (e) => errors.push(e.message));
      await page.goto(proc!.url);
      const toggle = page.locator("[data-stream=cam] .heat-toggle");
      await toggle.waitFor({ state: "visible", timeout: 30_000 });
      await toggle.click();
      await page.waitForFunction(() => document.querySelector("[data-stream=cam]").dataset.heatmap === "shown", undefined, { timeout: 20_000 });
      const shown = await page.evaluate(() => {
        const img = document.querySelector("[data-stream=cam] .heat");
        const canvas = document.querySelector("[data-stream=cam] canvas");
        return { hidden: img.hidden, natural: img.naturalWidth, w: img.getBoundingClientRect().width, canvasW: canvas.getBoundingClientRect().width };
      });
      expect(shown.hidden).toBe(false);
      expect(shown.natural).toBeGreaterThan(0);
      expect(Math.abs(shown.w - shown.canvasW)).toBeLessThan(1);
      const shots = join(repoRoot, "out", "test-screenshots");
      await mkdir(shots, { recursive: true });
      await page.screenshot({ path: join(shots, "heatmap.png") });
      expect(errors).toEqual([]);
    } finally {
      await browser.close();
    }
  });

  test("the heatmap survives a restart of the process (state file)", async () => {
    const before = (await heatJson(proc!.url))!.totalSeconds;
    await proc!.child.stop();
    proc = undefined;
    const saved = JSON.parse(readFileSync(state(), "utf8")) as { streams: Record<string, unknown> };
    expect(Object.keys(saved.streams)).toEqual(["cam"]);
    proc = await startPipelineProcess(file);
    let after: HeatJson | undefined;
    const url = proc.url;
    await until(() => (void heatJson(url).then((j) => (after = j)), after !== undefined), "the restarted process's heatmap", 30_000, 100);
    // Right after the start, before new frames count much: at least what the first run had when asked.
    expect(after!.totalSeconds).toBeGreaterThanOrEqual(before);
  });
});
