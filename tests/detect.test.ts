import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import type { Detection, Frame } from "../runtime/core/message.ts";
import type { TransformInstance } from "../runtime/core/operator.ts";
import { busImage, modelFile, zidaneImage } from "./support/paths.ts";
import { makeTransform, readAll, step } from "./support/operators.ts";

setDefaultTimeout(60_000);

let prep: TransformInstance;
let infer: TransformInstance;
let nms: TransformInstance;
beforeAll(async () => {
  prep = (await makeTransform("resize", { width: 640, height: 640, mode: "letterbox" })).instance;
  infer = (await makeTransform("infer-onnx", { model: modelFile })).instance;
  nms = (await makeTransform("nms", { conf: 0.25, iou: 0.45 })).instance;
});
afterAll(async () => {
  await infer?.close?.();
});

/** ingest (ffmpeg decodes the JPEG as a one-frame file) → resize → infer-onnx → nms. */
async function detect(image: string): Promise<Frame> {
  const frames = await readAll({ url: image });
  expect(frames).toHaveLength(1);
  return step(nms, await step(infer, await step(prep, frames[0])));
}

const count = (ds: readonly Detection[], cls: string) => ds.filter((d) => d.class === cls).length;
const area = (b: Detection["box"]) => (b[2] - b[0]) * (b[3] - b[1]);

describe("detection with the real operators", () => {
  test("bus.jpg: a bus and at least 3 persons, boxes in source pixels", async () => {
    const f = await detect(busImage);
    expect([f.image.width, f.image.height, f.image.format]).toEqual([810, 1080, "rgb24"]);
    const ds = f.detections!;
    expect(count(ds, "bus")).toBeGreaterThanOrEqual(1);
    expect(count(ds, "person")).toBeGreaterThanOrEqual(3);
    for (const d of ds) {
      const [x1, y1, x2, y2] = d.box;
      expect(x1).toBeGreaterThanOrEqual(0);
      expect(y1).toBeGreaterThanOrEqual(0);
      expect(x2).toBeLessThanOrEqual(810);
      expect(y2).toBeLessThanOrEqual(1080);
      expect(x2).toBeGreaterThan(x1);
      expect(y2).toBeGreaterThan(y1);
      expect(d.score).toBeGreaterThanOrEqual(0.25);
      expect(d.score).toBeLessThanOrEqual(1);
    }
    // The bus spans most of the picture's width (it would be ~3/4 as wide if boxes stayed in model pixels).
    const bus = ds.find((d) => d.class === "bus")!;
    expect(bus.box[2] - bus.box[0]).toBeGreaterThan(600);
    expect(area(bus.box)).toBeGreaterThan(0.3 * 810 * 1080);
    // Persons stand in the lower part of the photo, below the letterbox's top band.
    for (const p of ds.filter((d) => d.class === "person")) expect(p.box[3]).toBeGreaterThan(700);
    // Raw predictions are consumed by nms; the tensor stays for later stages.
    expect(f.predictions).toBeUndefined();
    expect(f.timings).toEqual({});
  });

  test("zidane.jpg: two persons and a tie", async () => {
    const f = await detect(zidaneImage);
    expect([f.image.width, f.image.height]).toEqual([1280, 720]);
    const ds = f.detections!;
    expect(count(ds, "person")).toBe(2);
    expect(count(ds, "tie")).toBeGreaterThanOrEqual(1);
    // The tie is inside one of the persons' boxes.
    const tie = ds.find((d) => d.class === "tie")!;
    const inside = ds.filter((d) => d.class === "person").some((p) => tie.box[0] >= p.box[0] && tie.box[2] <= p.box[2] && tie.box[1] >= p.box[1] && tie.box[3] <= p.box[3]);
    expect(inside).toBe(true);
  });

  test("nms class filter keeps only the wanted classes", async () => {
    const persons = (await makeTransform("nms", { classes: ["person"] })).instance;
    const frames = await readAll({ url: busImage });
    const f = await step(persons, await step(infer, await step(prep, frames[0])));
    expect(f.detections!.length).toBeGreaterThanOrEqual(3);
    expect(new Set(f.detections!.map((d) => d.class))).toEqual(new Set(["person"]));
  });

  test("an unknown class name in nms.classes is a clear error", async () => {
    const bad = (await makeTransform("nms", { classes: ["persn"] })).instance;
    const frames = await readAll({ url: zidaneImage });
    const f = await step(infer, await step(prep, frames[0]));
    expect(() => bad.process(f)).toThrow('nms.classes: unknown class "persn"');
  });

  test("infer-onnx without a resize stage says what is missing", async () => {
    const frames = await readAll({ url: zidaneImage });
    await expect(infer.process(frames[0])).rejects.toThrow("put a resize stage before infer-onnx");
  });
});
