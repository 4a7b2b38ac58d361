/**
 * The model variants named by file name wherever a model is named
 * (infer-onnx, an infer-dispatch variant, `bun run serve --model`), and the
 * inference thread's byte input: real models, real ffmpeg.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFileSync } from "node:fs";
import type { Detection, Frame } from "../runtime/core/message.ts";
import type { TransformInstance } from "../runtime/core/operator.ts";
import { createLogger } from "../runtime/core/log.ts";
import { defaultThreads } from "../runtime/inference/onnx-model.ts";
import { OnnxThread } from "../runtime/inference/onnx-thread.ts";
import { tensorPixels } from "../runtime/inference/pixel-tensor.ts";
import { busImage } from "./support/paths.ts";
import { makeTransform, readAll, step } from "./support/operators.ts";
import { startServe, type ServeProcess } from "./support/serve.ts";

setDefaultTimeout(120_000);

let prep: TransformInstance;
let nms: TransformInstance;
let bus: Frame;
beforeAll(async () => {
  prep = (await makeTransform("resize", { width: 640, height: 640 })).instance;
  nms = (await makeTransform("nms", { conf: 0.25, iou: 0.45 })).instance;
  const [frame] = await readAll({ url: busImage });
  bus = await step(prep, frame);
});

const classes = (ds: readonly Detection[]) => ds.map((d) => d.class).sort();

async function detectWith(infer: TransformInstance): Promise<readonly Detection[]> {
  return (await step(nms, await step(infer, bus))).detections ?? [];
}

describe("yolov5n-int8.onnx named by file name", () => {
  let fp32: readonly Detection[];
  beforeAll(async () => {
    const { instance } = await makeTransform("infer-onnx", { model: "yolov5n.onnx" });
    fp32 = await detectWith(instance);
    await instance.close?.();
  });

  test("infer-onnx loads it from models/ and finds the bus and the persons fp32 finds", async () => {
    const { instance, log } = await makeTransform("infer-onnx", { model: "yolov5n-int8.onnx" }, "detect");
    try {
      expect(log.text()).toContain("yolov5n-int8.onnx loaded on cpu");
      const int8 = await detectWith(instance);
      const count = (ds: readonly Detection[], c: string) => ds.filter((d) => d.class === c).length;
      expect(count(int8, "bus")).toBe(count(fp32, "bus"));
      expect(count(int8, "person")).toBe(count(fp32, "person"));
    } finally {
      await instance.close?.();
    }
  });

  test("an infer-dispatch variant takes it like infer-onnx does", async () => {
    const { instance, log } = await makeTransform(
      "infer-dispatch",
      { variants: [{ id: "small", use: "infer-onnx", with: { model: "yolov5n-int8.onnx" } }] },
      "detect",
    );
    try {
      const f = await step(instance, bus);
      expect(Object.keys(f.timings)).toContain("detect@small");
      expect(log.text()).toContain("yolov5n-int8.onnx loaded on cpu");
      const dets = (await step(nms, f)).detections ?? [];
      expect(classes(dets)).toContain("bus");
    } finally {
      await instance.close?.();
    }
  });

  describe("bun run serve --model yolov5n-int8.onnx", () => {
    let server: ServeProcess;
    beforeAll(async () => {
      server = await startServe(["--model", "yolov5n-int8.onnx"]);
    });
    afterAll(async () => {
      await server?.stop();
    });

    test("serves it under its file name and detects on POST /detect", async () => {
      const meta = (await (await fetch(`${server.url}/v2/models/yolov5n-int8`)).json()) as { name: string; inputs: { shape: number[] }[] };
      expect(meta.name).toBe("yolov5n-int8");
      expect(meta.inputs[0].shape).toEqual([1, 3, 640, 640]);
      const res = await fetch(`${server.url}/detect`, { method: "POST", body: readFileSync(busImage), headers: { "content-type": "image/jpeg" } });
      expect(res.status).toBe(200);
      const body = (await res.json()) as { detections: { class: string }[] };
      expect(body.detections.map((d) => d.class)).toContain("bus");
    });
  });
});

describe("the inference thread takes bytes", () => {
  test("a uint8 tensor gives exactly the output of its float32 values (byte / 255)", async () => {
    const t = await OnnxThread.start({ model: "yolov5n.onnx", providers: ["cpu"], threads: 0 }, createLogger("test", 99));
    try {
      const bytes = tensorPixels(bus.tensor!)!;
      const fromBytes = await t.run(bytes, bus.tensor!.dims);
      const fromFloats = await t.run(bus.tensor!.data, bus.tensor!.dims);
      expect(fromBytes.dims).toEqual([1, 25200, 85]);
      let diff = 0;
      for (let i = 0; i < fromBytes.data.length; i++) diff = Math.max(diff, Math.abs(fromBytes.data[i] - fromFloats.data[i]));
      expect(diff).toBe(0);
      // Lent bytes come back for reuse, the caller's copy detached meanwhile.
      const lent = bytes.slice();
      const r = await t.run(lent, bus.tensor!.dims, true);
      expect(lent.length).toBe(0);
      expect(r.input).toBeInstanceOf(Uint8Array);
      expect(r.input.length).toBe(bytes.length);
    } finally {
      t.close();
    }
  });

  test("threads 0 means one intra-op thread per core, and the log says how many", async () => {
    const { instance, log } = await makeTransform("infer-onnx", { model: "yolov5n.onnx" }, "detect");
    try {
      expect(defaultThreads()).toBeGreaterThanOrEqual(1);
      expect(log.text()).toContain(`${defaultThreads()} intra-op thread(s)`);
    } finally {
      await instance.close?.();
    }
  });
});
