/**
 * The live page in a real browser: a `bun run pipeline` process (detector,
 * tracker, counting line and zone on the looped sample clip, live) serves
 * it; headless Chromium loads it, sees preview frames arrive and change,
 * the stage table and the model's version, and saves a screenshot to
 * .tmp/live-page.png.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { chromiumPath, openBrowser, type Browser } from "./support/browser.ts";
import { startPipelineProcess, type PipelineProcess } from "./support/http.ts";
import { repoRoot, tempDir } from "./support/paths.ts";

setDefaultTimeout(60_000);

const SCREENSHOT = join(repoRoot, ".tmp", "live-page.png");
// The page's document, for the functions Playwright runs in the browser (this project's types have no DOM).
declare const document: any;
const browserPath = chromiumPath();
if (!browserPath) console.warn("live page test skipped: no Chromium found (scripts/setup.sh --test installs Debian's chromium)");

const pipeline = (out: string) => `
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
  - id: count
    use: zones
    with:
      lines: [{ id: entrance, from: [0.78, 0.24], to: [0.98, 0.42] }]
      zones: [{ id: shelf, polygon: [[0.28, 0.40], [0.52, 0.40], [0.52, 0.58], [0.28, 0.58]] }]
      countsInterval: 1
  - id: results
    use: sink-jsonl
    with: { path: "${out}" }
`;

describe.skipIf(!browserPath)("live page", () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let proc: PipelineProcess;
  let browser: Browser;

  beforeAll(async () => {
    dir = await tempDir();
    const file = join(dir.path, "plaza.yaml");
    await writeFile(file, pipeline(join(dir.path, "results.jsonl")));
    proc = await startPipelineProcess(file);
    browser = await openBrowser();
  });

  afterAll(async () => {
    await browser?.close();
    await proc?.child.stop();
    await dir?.remove();
  });

  test("loads, shows frames that update with boxes, stages and the model version; screenshot saved", async () => {
    const { page } = browser;
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(proc.url);
    await page.waitForFunction(() => Number(document.body.dataset.frames ?? 0) >= 3, undefined, { timeout: 45_000 });
    const first = Number(await page.getAttribute("[data-stream=cam]", "data-seq"));
    await page.waitForFunction((seq) => Number(document.querySelector("[data-stream=cam]").dataset.seq) > seq, first, { timeout: 20_000 });

    // The preview is a real picture: many distinct colours, not a blank canvas.
    const colours = await page.evaluate(() => {
      const c = document.querySelector("[data-stream=cam] canvas");
      const d: Uint8ClampedArray = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      const seen = new Set<number>();
      for (let i = 0; i < d.length; i += 4 * 97) seen.add((d[i] >> 4) * 256 + (d[i + 1] >> 4) * 16 + (d[i + 2] >> 4));
      return seen.size;
    });
    expect(colours).toBeGreaterThan(50);

    await page.waitForFunction(() => document.querySelectorAll("#stages tbody tr").length === 7, undefined, { timeout: 10_000 });
    const stages = await page.$$eval("#stages tbody tr td:first-child", (tds) => tds.map((td) => td.firstChild?.textContent));
    expect(stages).toEqual(["cam", "prep", "detect", "nms", "track", "count", "results"]);
    expect(await page.textContent("#ready")).toBe("ready");
    const status = (await (await fetch(`${proc.url}/api/status`)).json()) as { models: { active: { version: string } }[] };
    expect(await page.textContent("#models")).toContain(status.models[0].active.version);
    // The counting line's chip shows under the preview.
    await page.waitForFunction(() => document.querySelector("[data-stream=cam] .counts").textContent.includes("entrance"), undefined, { timeout: 10_000 });

    // Rates need two samples a second apart: wait for them, so the screenshot shows them.
    await page.waitForFunction(() => Number(document.querySelector("#stages tbody tr:nth-child(3) td:nth-child(2)").textContent) > 0, undefined, { timeout: 10_000 });
    await mkdir(join(repoRoot, ".tmp"), { recursive: true });
    await page.screenshot({ path: SCREENSHOT });
    expect(errors).toEqual([]);
  });
});
