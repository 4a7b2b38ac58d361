/**
 * The inference log: one line per inference with every field of the
 * deployment it grew from, written once nms has decoded the detections;
 * without nms in the process, lines say so (null detections); files rotate
 * by size and keep the configured number of old files.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as v from "valibot";
import { readdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { modelVersion } from "../runtime/inference/onnx-model.ts";
import { RotatingLog } from "../runtime/inference/inference-log.ts";
import { scaledModel, startTinyRun } from "./lifecycle-support.ts";
import { modelFile, repoRoot, tempDir } from "./support/paths.ts";
import { parse, registryWith, runPipeline } from "./support/pipeline.ts";
import { testOperators } from "./support/test-operators.ts";
import { until } from "./support/wait.ts";

setDefaultTimeout(60_000);

const Percent = v.pipe(v.number(), v.minValue(0), v.maxValue(100));
const Confidence = v.nullable(v.pipe(v.number(), v.minValue(0), v.maxValue(1)));
/** Exactly these keys: a line missing one, or with an unexpected one, fails. */
const Line = v.strictObject({
  ts: v.pipe(v.string(), v.isoTimestamp()),
  pipeline: v.string(),
  stage: v.string(),
  stream: v.string(),
  seq: v.pipe(v.number(), v.integer(), v.minValue(0)),
  model: v.string(),
  version: v.pipe(v.string(), v.regex(/^[0-9a-f]{12}$/)),
  provider: v.string(),
  inputShape: v.array(v.number()),
  timeMs: v.pipe(v.number(), v.minValue(0)),
  detections: v.nullable(v.pipe(v.number(), v.integer(), v.minValue(0))),
  meanConfidence: Confidence,
  maxConfidence: Confidence,
  cpuPercent: Percent,
  processCpuPercent: Percent,
  gpuPercent: v.nullable(Percent),
});
type Line = v.InferOutput<typeof Line>;

let dir: Awaited<ReturnType<typeof tempDir>>;
beforeAll(async () => {
  dir = await tempDir();
});
afterAll(async () => {
  await dir.remove();
});

async function lines(path: string): Promise<Line[]> {
  const text = await readFile(path, "utf8");
  return text
    .trim()
    .split("\n")
    .map((l) => v.parse(Line, JSON.parse(l)));
}

describe("inference log", () => {
  test("the real detector on the sample clip: a line per inference with every field", async () => {
    const path = join(dir.path, "real.jsonl");
    const yaml = `
name: logged
stages:
  - id: cam
    use: ingest
    with: { url: "${join(repoRoot, "pipelines/media/vtest.mp4")}" }
  - id: prep
    use: resize
    with: { width: 640, height: 640, mode: letterbox }
  - id: detect
    use: infer-onnx
    with: { model: "${modelFile}", inferenceLog: { path: "${path}" } }
  - id: nms
    use: nms
    with: { conf: 0.25, iou: 0.45 }
  - id: out
    use: test-collect
    with: { key: inference-log-real }
`;
    const run = await runPipeline(parse(yaml, await registryWith(...testOperators)), { frames: 4 });
    expect(run.stage("detect").failed).toBe(0);
    const got = await lines(path);
    expect(got.map((l) => l.seq)).toEqual([0, 1, 2, 3]);
    const version = await modelVersion(modelFile);
    for (const l of got) {
      expect(l).toMatchObject({ pipeline: "logged", stage: "detect", stream: "cam", model: "yolov5n.onnx", version, provider: "cpu", inputShape: [1, 3, 640, 640] });
      // The plaza clip always has people in view.
      expect(l.detections!).toBeGreaterThan(0);
      expect(l.meanConfidence!).toBeGreaterThanOrEqual(0.25);
      expect(l.maxConfidence!).toBeGreaterThanOrEqual(l.meanConfidence!);
      expect(l.timeMs).toBeGreaterThan(0);
    }
  });

  test("without nms in the process (nms elsewhere), lines still carry detections and confidence", async () => {
    const model = join(dir.path, "tiny.onnx");
    await writeFile(model, scaledModel(1));
    const path = join(dir.path, "no-nms.jsonl");
    const run = await startTinyRun({ model, inferenceLog: { path } }, { nms: false });
    await until(() => run.received().length >= 150, "150 frames");
    await run.stop();
    const got = await lines(path);
    expect(got.length).toBeGreaterThanOrEqual(50);
    // The infer stage decodes for its own log: no side channel to an nms stage that may run in another process.
    for (const l of got) {
      expect(typeof l.detections).toBe("number");
      if (l.detections! > 0) expect(l.maxConfidence!).toBeGreaterThanOrEqual(l.meanConfidence!);
    }
    expect(got.some((l) => l.detections! > 0)).toBe(true);
  });

  test("rotates by size, keeps the newest files, loses no line it kept", async () => {
    const path = join(dir.path, "rotate", "inference.jsonl");
    const log = await RotatingLog.open(path, { maxBytes: 4096, keep: 2 });
    // 150 lines of 100 bytes, 40 to a 4 KiB file: 40, 40, 40, 30; the oldest 40 rotate away.
    for (let i = 0; i < 150; i++) log.write(JSON.stringify({ i, pad: "x".repeat(100 - 1 - JSON.stringify({ i, pad: "" }).length) }));
    await log.close();
    const files = (await readdir(join(dir.path, "rotate"))).sort();
    expect(files).toEqual(["inference.jsonl", "inference.jsonl.1", "inference.jsonl.2"]);
    for (const f of files) expect((await stat(join(dir.path, "rotate", f))).size).toBeLessThanOrEqual(4096);
    const read = async (f: string) => (await readFile(join(dir.path, "rotate", f), "utf8")).trim().split("\n").map((l) => (JSON.parse(l) as { i: number }).i);
    const kept = [...(await read("inference.jsonl.2")), ...(await read("inference.jsonl.1")), ...(await read("inference.jsonl"))];
    expect(kept).toEqual(Array.from({ length: 110 }, (_, k) => 40 + k));
  });

  test("appends to an existing file and counts its size towards rotation", async () => {
    const path = join(dir.path, "existing.jsonl");
    await writeFile(path, "x".repeat(4000) + "\n");
    const log = await RotatingLog.open(path, { maxBytes: 4096, keep: 1 });
    log.write("y".repeat(199));
    await log.close();
    expect((await readFile(`${path}.1`, "utf8")).length).toBe(4001);
    expect(await readFile(path, "utf8")).toBe("y".repeat(199) + "\n");
  });
});
