import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import type { Frame, Predictions } from "../runtime/core/message.ts";
import type { TransformInstance } from "../runtime/core/operator.ts";
import { decodeDetections, decodeYolo, keepCandidates } from "../runtime/inference/yolo.ts";
import { decodeMessage, encodeMessage } from "../runtime/bus/wire.ts";
import { busImage, modelFile, zidaneImage } from "./support/paths.ts";
import { makeTransform, readAll, step } from "./support/operators.ts";

setDefaultTimeout(60_000);

/** Candidates only (the default minScore 0.001) against the whole output (minScore 0), on real images. */
let prep: TransformInstance;
let kept: TransformInstance;
let whole: TransformInstance;
const frames: Frame[] = [];
beforeAll(async () => {
  prep = (await makeTransform("resize", { width: 640, height: 640, mode: "letterbox" })).instance;
  kept = (await makeTransform("infer-onnx", { model: modelFile })).instance;
  whole = (await makeTransform("infer-onnx", { model: modelFile, minScore: 0 })).instance;
  for (const image of [busImage, zidaneImage]) frames.push(await step(prep, (await readAll({ url: image }))[0]));
});
afterAll(async () => {
  await kept?.close?.();
  await whole?.close?.();
});

const detect = (f: Frame, p: Predictions, conf: number) => decodeDetections(p, f.tensor!.letterbox, f.image.width, f.image.height, { conf, iou: 0.45 });

/** YOLOv5 rows (N×W) as a YOLOv8 head lays them out (W−1 values, no objectness: class scores already multiplied), column-major. */
function asYolov8(p: Predictions): Predictions {
  const [, n, w] = p.dims;
  const out = new Float32Array((w - 1) * n);
  for (let i = 0; i < n; i++) {
    const row = i * w;
    for (let k = 0; k < 4; k++) out[k * n + i] = p.data[row + k];
    for (let c = 5; c < w; c++) out[(c - 1) * n + i] = p.data[row + 4] * p.data[row + c];
  }
  return { ...p, layout: "yolov8", dims: [1, w - 1, n], data: out };
}

describe("only candidates leave the inference thread", () => {
  test("the predictions are the anchors that reach minScore, and decode exactly as the whole output does", async () => {
    for (const f of frames) {
      const small = (await step(kept, f)).predictions!;
      const full = (await step(whole, f)).predictions!;
      expect(full.dims).toEqual([1, 25200, 85]);
      expect(full.minScore).toBeUndefined();
      // Exactly the rows whose objectness reaches 0.001, in anchor order.
      const rows: number[] = [];
      for (let i = 0; i < 25200; i++) if (full.data[i * 85 + 4] >= 0.001) rows.push(i);
      expect(small.dims).toEqual([1, rows.length, 85]);
      expect(small.minScore).toBe(0.001);
      expect(rows.length).toBeGreaterThan(100);
      expect(rows.length).toBeLessThan(25200 / 2);
      for (const [j, i] of rows.entries()) expect(Array.from(small.data.subarray(j * 85, j * 85 + 85))).toEqual(Array.from(full.data.subarray(i * 85, i * 85 + 85)));
      for (const conf of [0.001, 0.01, 0.25, 0.5]) {
        const want = detect(f, full, conf);
        expect(detect(f, small, conf)).toEqual(want);
      }
      expect(detect(f, small, 0.25).length).toBeGreaterThan(2);
    }
  });

  test("YOLOv8 columns: the anchors whose best class reaches minScore, still in columns", async () => {
    const full = asYolov8((await step(whole, frames[0])).predictions!);
    const { data, counts } = keepCandidates(full.data, full.dims, "yolov8", 0.01);
    const n = counts[0];
    const want = decodeYolo(full, 0.01);
    expect(n).toBe(want.count);
    const small: Predictions = { ...full, dims: [1, 84, n], data };
    const f = frames[0];
    for (const conf of [0.01, 0.25]) expect(detect(f, small, conf)).toEqual(detect(f, full, conf));
  });

  test("a batch keeps each image's candidates apart", () => {
    // Two images of four anchors: objectness 0.5, 0, 0.002, 0.0009 and 0, 0, 0, 0.9.
    const w = 6;
    const data = new Float32Array(2 * 4 * w);
    [0.5, 0, 0.002, 0.0009, 0, 0, 0, 0.9].forEach((obj, a) => {
      data[a * w] = a; // cx: which anchor the row was
      data[a * w + 4] = obj;
      data[a * w + 5] = 1;
    });
    const r = keepCandidates(data, [2, 4, w], "yolov5", 0.001);
    expect(r.counts).toEqual([2, 1]);
    expect([0, 1, 2].map((j) => r.data[j * w])).toEqual([0, 2, 7]);
    const none = keepCandidates(data, [2, 4, w], "yolov5", 0.95);
    expect([none.counts, none.data.length]).toEqual([[0, 0], 0]);
  });

  test("no candidate at all is a valid, empty output that crosses the wire", async () => {
    const f = frames[0];
    const p: Predictions = { layout: "yolov5", dims: [1, 0, 85], data: new Float32Array(0), classNames: ["person"], model: "m.onnx", minScore: 0.5 };
    expect(detect(f, p, 0.5)).toEqual([]);
    const back = decodeMessage(encodeMessage({ ...f, predictions: p }));
    expect(back.kind).toBe("frame");
    const bp = (back as Frame).predictions!;
    expect([bp.dims, bp.data.length, bp.minScore]).toEqual([[1, 0, 85], 0, 0.5]);
    // An empty blob bounds no other axis: the values per anchor are bounded on their own.
    expect(() => decodeMessage(encodeMessage({ ...f, predictions: { ...p, dims: [1, 0, 5000] } }))).toThrow(/5000 values per anchor, more than the 4096/);
    expect(() => decodeMessage(encodeMessage({ ...f, predictions: { ...p, dims: [1, 3, 0] } }))).toThrow(/a yolov5 row needs 5/);
  });

  test("nms says once when its conf is below what the infer stage kept", async () => {
    const { instance: low, log } = await makeTransform("nms", { conf: 0.0005 });
    const f = await step(kept, frames[1]);
    await step(low, f);
    await step(low, f);
    const warnings = log.lines.filter((l) => l.includes("is below the 0.001"));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain("set the infer stage's minScore to 0.0005 or lower");
  });
});
