/**
 * Zone and line geometry changed while a pipeline runs: a `bun run pipeline`
 * process (detector, tracker and zones on the looped sample clip) with a
 * control token. The control API (`PUT /api/zones/:stage/streams/:id`)
 * refuses requests without the token and bodies that break the options'
 * rules, and takes new geometry without losing the totals; the live page's
 * editor, driven in Chromium, drags a line's end, draws a new zone, shows the
 * YAML to paste and applies it. A screenshot goes to
 * out/test-screenshots/zone-editor.png.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { chromiumPath, openBrowser } from "./support/browser.ts";
import { startPipelineProcess, type PipelineProcess } from "./support/http.ts";
import { repoRoot, tempDir } from "./support/paths.ts";
import { until } from "./support/wait.ts";

setDefaultTimeout(120_000);

// The page's document, for the functions Playwright runs in the browser (this project's types have no DOM).
declare const document: any;

const TOKEN = "zone-editor-test-token-0123";
type Point = [number, number];
interface Geometry {
  stage: string;
  stream: string;
  lines: { id: string; from: Point; to: Point }[];
  zones: { id: string; polygon: Point[] }[];
  counts: { lines: Record<string, { in: number; out: number }>; zones: Record<string, { occupancy: number; entries: number }> };
}

let dir: Awaited<ReturnType<typeof tempDir>>;
let proc: PipelineProcess;
const results = () => join(dir.path, "shop.jsonl");

beforeAll(async () => {
  dir = await tempDir("framewire-zone-editor-");
  const file = join(dir.path, "shop.yaml");
  await writeFile(
    file,
    `
name: shop
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
  - id: count
    use: zones
    with:
      lines: [{ id: entrance, from: [0.78, 0.24], to: [0.98, 0.42] }]
      zones: [{ id: walkway, polygon: [[0.05, 0.3], [0.95, 0.3], [0.95, 0.75], [0.05, 0.75]] }]
      countsInterval: 1
      state: "${join(dir.path, "counts.json")}"
  - id: results
    use: sink-jsonl
    with: { path: "${results()}" }
`,
  );
  proc = await startPipelineProcess(file, [], { FRAMEWIRE_HTTP_TOKEN: TOKEN });
});
afterAll(async () => {
  await proc?.child.stop();
  await dir?.remove();
});

const get = async (): Promise<Geometry> => (await (await fetch(`${proc.url}/api/zones/count/streams/cam`)).json()) as Geometry;
const put = (body: unknown, token = TOKEN, path = "count/streams/cam") =>
  fetch(`${proc.url}/api/zones/${path}`, {
    method: "PUT",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(body),
  });
/** Counts events in the results after `from` lines. */
const countsEvents = () =>
  (existsSync(results()) ? readFileSync(results(), "utf8").trim().split("\n") : [])
    .filter((l) => l.includes('"type":"counts"'))
    .map((l) => JSON.parse(l) as { zones: Record<string, { entries: number }>; lines: Record<string, { in: number; out: number }> });

describe("PUT /api/zones/:stage/streams/:id", () => {
  test("needs the token, refuses geometry that breaks the rules (400 naming the field), and keeps the totals of the ids that stay", async () => {
    let g: Geometry | undefined;
    await until(() => (void get().then((x) => (g = x)), (g?.counts?.zones?.walkway?.entries ?? 0) >= 1), "a first entry into the walkway", 60_000, 250);
    expect(g!.lines).toEqual([{ id: "entrance", from: [0.78, 0.24], to: [0.98, 0.42] }]);

    const moved: Pick<Geometry, "lines" | "zones"> = { lines: g!.lines, zones: [{ id: "walkway", polygon: [[0.05, 0.28], [0.95, 0.28], [0.95, 0.76], [0.05, 0.76]] }] };
    expect((await put(moved, "")).status).toBe(401);
    expect((await put(moved, "wrong-token-0123456789")).status).toBe(401);
    const twoPoints = await put({ lines: [], zones: [{ id: "tiny", polygon: [[0.1, 0.1], [0.2, 0.2]] }] });
    expect(twoPoints.status).toBe(400);
    expect(((await twoPoints.json()) as { error: string }).error).toContain("zones.0.polygon");
    const dup = await put({ lines: [{ id: "a", from: [0, 0], to: [1, 1] }, { id: "a", from: [0, 1], to: [1, 0] }], zones: [] });
    expect(((await dup.json()) as { error: string }).error).toContain("line ids must be unique");
    const same = await put({ lines: [{ id: "a", from: [0.5, 0.5], to: [0.5, 0.5] }], zones: [] });
    expect(((await same.json()) as { error: string }).error).toContain("from and to must differ");
    expect((await put({ lines: [{ id: "a", from: [0, 0], to: [2, 1] }] })).status).toBe(400);
    expect((await put({ zones: [], extra: 1 })).status).toBe(400);
    expect((await put(moved, TOKEN, "nope/streams/cam")).status).toBe(404);
    // Refused requests changed nothing.
    expect((await get()).zones[0].polygon[0]).toEqual([0.05, 0.3]);

    const before = await get();
    const res = await put({ ...moved, lines: [...moved.lines, { id: "exit", from: [0.1, 0.9], to: [0.4, 0.9] }] });
    expect(res.status).toBe(200);
    const after = (await res.json()) as Geometry;
    expect(after.zones).toEqual(moved.zones);
    expect(after.lines.map((l) => l.id)).toEqual(["entrance", "exit"]);
    expect(after.counts.zones.walkway.entries).toBeGreaterThanOrEqual(before.counts.zones.walkway.entries);
    expect(after.counts.lines.entrance.in).toBeGreaterThanOrEqual(before.counts.lines.entrance.in);
    expect(after.counts.lines.exit).toEqual({ in: 0, out: 0 });
    // The totals go on from there in the stage's own counts events.
    const seen = countsEvents().length;
    await until(() => countsEvents().length > seen + 1, "counts events after the change", 30_000, 100);
    const next = countsEvents().slice(seen + 1)[0];
    expect(next.zones.walkway.entries).toBeGreaterThanOrEqual(before.counts.zones.walkway.entries);
    expect(Object.keys(next.lines)).toEqual(["entrance", "exit"]);
  });
});

describe.skipIf(!chromiumPath())("the live page's zone editor (Chromium)", () => {
  test("drag a line's end, draw and name a zone, see the YAML, apply it live; totals kept; screenshot saved", async () => {
    const browser = await openBrowser();
    try {
      const { page } = browser;
      const errors: string[] = [];
      page.on("pageerror", (e) => errors.push(e.message));
      await page.goto(`${proc.url}/#token=${TOKEN}`);
      await page.waitForFunction(() => Number(document.body.dataset.frames ?? 0) >= 2, undefined, { timeout: 45_000 });
      const before = await get();
      const entrance = before.lines.findIndex((l) => l.id === "entrance");

      await page.click("[data-stream=cam] .zones-toggle");
      await page.waitForFunction(() => Number(document.querySelector("[data-stream=cam]").dataset.editorLoaded ?? 0) >= 1, undefined, { timeout: 10_000 });
      const layer = page.locator("[data-stream=cam] .edit-layer");
      const box = (await layer.boundingBox())!;
      const onPicture = (x: number, y: number) => [box.x + x * box.width, box.y + y * box.height] as const;
      // Every line end and zone corner has a handle.
      expect(await page.locator("[data-stream=cam] circle.line-pt").count()).toBe(2 * before.lines.length);
      expect(await page.locator("[data-stream=cam] circle.zone-pt").count()).toBe(before.zones.reduce((n, z) => n + z.polygon.length, 0));

      // Drag the entrance's end to (0.9, 0.2).
      const end = (await page.locator(`[data-stream=cam] circle.line-pt[data-index="${entrance}"][data-pt="1"]`).boundingBox())!;
      await page.mouse.move(end.x + end.width / 2, end.y + end.height / 2);
      await page.mouse.down();
      await page.mouse.move(...onPicture(0.85, 0.25), { steps: 4 });
      await page.mouse.move(...onPicture(0.9, 0.2), { steps: 4 });
      await page.mouse.up();

      // A new zone: four corners, finish, then name it.
      await page.click("[data-stream=cam] .editor .add-zone");
      const corners: Point[] = [[0.3, 0.78], [0.6, 0.78], [0.6, 0.95], [0.3, 0.95]];
      for (const [x, y] of corners) await page.mouse.click(...onPicture(x, y));
      await page.click("[data-stream=cam] .editor .finish");
      await page.fill("[data-stream=cam] .editor .shape-id", "queue");

      const yaml = await page.textContent("[data-stream=cam] .editor .yaml");
      expect(yaml).toMatch(/- \{ id: entrance, from: \[0\.78, 0\.24\], to: \[0\.9\d*, 0\.[12]\d*\] \}/);
      expect(yaml).toContain("- { id: queue, polygon: [[0.3");
      expect(yaml).toContain("- { id: walkway, polygon:");

      await page.click("[data-stream=cam] .editor .apply");
      await page.waitForFunction(() => Number(document.querySelector("[data-stream=cam] .editor").dataset.applied ?? 0) >= 1, undefined, { timeout: 10_000 });
      expect(await page.textContent("[data-stream=cam] .editor .status")).toContain("applied to count for cam");

      const after = await get();
      const line = after.lines.find((l) => l.id === "entrance")!;
      expect(line.from).toEqual([0.78, 0.24]);
      expect(line.to[0]).toBeCloseTo(0.9, 1);
      expect(line.to[1]).toBeCloseTo(0.2, 1);
      const queue = after.zones.find((z) => z.id === "queue")!;
      expect(queue.polygon).toHaveLength(4);
      queue.polygon.forEach(([x, y], i) => {
        expect(Math.abs(x - corners[i][0])).toBeLessThan(0.01);
        expect(Math.abs(y - corners[i][1])).toBeLessThan(0.01);
      });
      expect(after.counts.zones.walkway.entries).toBeGreaterThanOrEqual(before.counts.zones.walkway.entries);
      expect(after.counts.zones.queue).toBeDefined();

      const shots = join(repoRoot, "out", "test-screenshots");
      await mkdir(shots, { recursive: true });
      await page.screenshot({ path: join(shots, "zone-editor.png"), fullPage: true });
      expect(errors).toEqual([]);
    } finally {
      await browser.close();
    }
  });
});
