import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Hono } from "hono";
import { ConfigError } from "../runtime/core/errors.ts";
import { decodeInferRequest, encodeInferResponse, HEADER_LENGTH } from "../runtime/inference/kserve.ts";
import type { Frame } from "../runtime/core/message.ts";
import type { OperatorMetric, TransformInstance } from "../runtime/core/operator.ts";
import { serve, type Listener } from "../runtime/platform/index.ts";
import { makeTransform, readAll, step } from "./support/operators.ts";
import { busImage, modelFile, sampleVideo, zidaneImage } from "./support/paths.ts";
import { freePort } from "./support/ports.ts";
import { json, startServe, type ServeProcess } from "./support/serve.ts";
import { batchModelFile, seedConfig, writeRepository } from "./support/repository.ts";
import { tempDir } from "./support/paths.ts";

setDefaultTimeout(60_000);

let server: ServeProcess;
let prep: TransformInstance;
let onnx: TransformInstance;
let nms: TransformInstance;
/** Decoded test frames: two photos and three video frames. */
let frames: Frame[];
beforeAll(async () => {
  server = await startServe(["--model", modelFile]);
  prep = (await makeTransform("resize", { width: 640, height: 640 })).instance;
  // The whole output (minScore 0), as a Triton server sends it: the stand-in servers below answer with it.
  onnx = (await makeTransform("infer-onnx", { model: modelFile, minScore: 0 })).instance;
  nms = (await makeTransform("nms", { conf: 0.25, iou: 0.45 })).instance;
  const video = await readAll({ url: sampleVideo, fps: 2 });
  frames = [...(await readAll({ url: busImage })), ...(await readAll({ url: zidaneImage })), ...video.slice(0, 3)];
});
afterAll(async () => {
  await onnx?.close?.();
  await server?.stop();
});

/** A fresh copy of a decoded frame, so each detector starts from the same input. */
const copy = (f: Frame): Frame => ({ ...f, image: { ...f.image }, timings: {}, tensor: undefined, predictions: undefined, detections: undefined });
const detectWith = async (infer: TransformInstance, f: Frame) => step(nms, await step(infer, await step(prep, copy(f))));

const failure = (p: Promise<unknown>) =>
  p.then(
    () => {
      throw new Error("expected a failure");
    },
    (e: Error) => e,
  );

describe("infer-triton against framewire serve", () => {
  for (const binary of [true, false]) {
    test(`${binary ? "binary" : "JSON"} tensors: the same detections as infer-onnx on the same frames`, async () => {
      const made = await makeTransform("infer-triton", { url: server.url, model: "yolov5n", binary });
      const triton = made.instance;
      expect(made.log.text()).toContain(
        `yolov5n ready on ${server.url} (onnxruntime_onnx): input images [1,3,640,640] FP32, output output0 [1,25200,85] FP32, ${binary ? "binary" : "JSON"} tensors, 80 classes; max_batch_size 0: one frame per request`,
      );
      // JSON tensors are ~10× larger: two frames are enough to compare.
      for (const f of binary ? frames : frames.slice(0, 2)) {
        const want = (await detectWith(onnx, f)).detections!;
        const got = (await detectWith(triton, f)).detections!;
        expect(got.length).toBeGreaterThan(0);
        expect(got.map((d) => d.class)).toEqual(want.map((d) => d.class));
        got.forEach((d, i) => {
          expect(d.score).toBeCloseTo(want[i].score, 4);
          d.box.forEach((x, k) => expect(Math.abs(x - want[i].box[k])).toBeLessThan(0.01));
        });
      }
      await triton.close?.();
    });
  }

  test("start checks: unknown model, unknown tensor name, and a stage input of the wrong size", async () => {
    const missing = await failure(makeTransform("infer-triton", { url: server.url, model: "resnet" }));
    expect(missing).toBeInstanceOf(ConfigError);
    expect(missing.message).toContain(`model resnet is not on ${server.url}`);
    const badInput = await failure(makeTransform("infer-triton", { url: server.url, model: "yolov5n", input: "pixels" }));
    expect(badInput.message).toBe('model yolov5n has no input "pixels" (it has "images")');

    const small = (await makeTransform("resize", { width: 320, height: 320 })).instance;
    const triton = (await makeTransform("infer-triton", { url: server.url, model: "yolov5n" })).instance;
    const err = await failure(Promise.resolve(triton.process(await step(small, copy(frames[0])))));
    expect(err.message).toBe("model yolov5n expects input [1,3,640,640] but gets [1,3,320,320]: set the resize stage's width/height to match");
    await triton.close?.();
  });

  test("a server that is not ready after startTimeout: the stage runs, says so once, and its frames fail with the server named", async () => {
    const port = await freePort();
    const { instance, log } = await makeTransform("infer-triton", { url: `http://127.0.0.1:${port}`, model: "yolov5n", startTimeout: 0.3, retryDelay: 0.05 });
    expect(log.text()).toContain(`model yolov5n on http://127.0.0.1:${port} is not ready after 0.3 s`);
    expect(log.text()).toContain("the stage runs: frames fail (counted) until it answers");
    const small = (await makeTransform("resize", { width: 640, height: 640 })).instance;
    const err = await failure(Promise.resolve(instance.process(await step(small, copy(frames[0])))));
    expect(err.name).toBe("TritonUnavailableError");
    expect(err.message).toContain(`http://127.0.0.1:${port}`);
    await instance.close?.();
  });
});

describe("infer-triton against a server that speaks like Triton", () => {
  // Triton's conventions the framewire server does not use: -1 batch dims in metadata, FP16 tensors
  // (a TensorRT plan built with --half), empty health bodies, 503 while overloaded.
  let stub: Listener;
  let busOutput: Float32Array;
  const seen: { datatype: string; shape: number[]; maxDiff: number }[] = [];
  let overloaded = 0;
  let expected: Float32Array;

  beforeAll(async () => {
    const bus = await step(onnx, await step(prep, copy(frames[0])));
    busOutput = bus.predictions!.data;
    expected = bus.tensor!.data;
    const app = new Hono();
    app.get("/v2/models/yolo_trt/ready", (c) => c.body(null, 200));
    app.get("/v2/models/:name/ready", (c) => c.json({ error: `Request for unknown model: '${c.req.param("name")}' is not found` }, 400));
    app.get("/v2/models/yolo_trt", (c) =>
      c.json({
        name: "yolo_trt",
        versions: ["1"],
        platform: "tensorrt_plan",
        inputs: [{ name: "images", datatype: "FP16", shape: [-1, 3, 640, 640] }],
        outputs: [{ name: "output0", datatype: "FP16", shape: [-1, -1, 85] }],
      }),
    );
    app.post("/v2/models/yolo_trt/infer", async (c) => {
      if (overloaded > 0) {
        overloaded--;
        return c.json({ error: "Server is overloaded" }, 503);
      }
      const req = decodeInferRequest(new Uint8Array(await c.req.arrayBuffer()), c.req.header(HEADER_LENGTH) ?? null);
      const input = req.inputs[0];
      let maxDiff = 0;
      for (let i = 0; i < input.data.length; i++) maxDiff = Math.max(maxDiff, Math.abs(input.data[i] - expected[i]));
      seen.push({ datatype: input.datatype, shape: input.shape, maxDiff });
      const out = encodeInferResponse("yolo_trt", "1", undefined, [{ name: "output0", datatype: "FP16", shape: [1, 25200, 85], data: busOutput }], req.binaryOutput);
      return new Response(out.body, { headers: out.headers });
    });
    stub = serve(app.fetch, { hostname: "127.0.0.1", port: await freePort(), maxRequestBodySize: 64 << 20 });
  });
  afterAll(async () => {
    await stub?.stop();
  });

  test("FP16 in and out, -1 dims, class names from the stage: the same objects as float32 in process", async () => {
    const names = JSON.parse((await json(await fetch(`${server.url}/v2/models/yolov5n`))).parameters.class_names);
    const made = await makeTransform("infer-triton", { url: `http://127.0.0.1:${stub.port}`, model: "yolo_trt", names });
    const got = (await detectWith(made.instance, frames[0])).detections!;
    const want = (await detectWith(onnx, frames[0])).detections!;
    // The tensor went out as FP16 (half precision: within 1e-3 of the 0..1 pixels).
    expect(seen.at(-1)).toMatchObject({ datatype: "FP16", shape: [1, 3, 640, 640] });
    expect(seen.at(-1)!.maxDiff).toBeLessThan(1e-3);
    expect(got.map((d) => d.class)).toEqual(want.map((d) => d.class));
    got.forEach((d, i) => {
      expect(Math.abs(d.score - want[i].score)).toBeLessThan(0.01);
      d.box.forEach((x, k) => expect(Math.abs(x - want[i].box[k])).toBeLessThan(2));
    });
    await made.instance.close?.();
  });

  test("Triton's 400 for an unknown model fails the stage at once (no waiting for startTimeout)", async () => {
    const err = await failure(makeTransform("infer-triton", { url: `http://127.0.0.1:${stub.port}`, model: "yolo_fp32", startTimeout: 600 }));
    expect(err).toBeInstanceOf(ConfigError);
    expect(err.message).toBe(`model yolo_fp32 is not on http://127.0.0.1:${stub.port} (HTTP 400: Request for unknown model: 'yolo_fp32' is not found)`);
  });

  test("503s are retried with backoff; the retries show in the stage's metrics", async () => {
    const made = await makeTransform("infer-triton", { url: `http://127.0.0.1:${stub.port}`, model: "yolo_trt", retries: 2, retryDelay: 0.01 });
    expect(made.log.text()).toContain("names no classes: detections will carry class ids; set `names`");
    // This server has no model configuration extension: frames go one per request, whatever `batch` says.
    expect(made.log.text()).toContain("no model configuration from the server (HTTP 404: 404 Not Found): one frame per request");
    overloaded = 2;
    const f = await detectWith(made.instance, frames[0]);
    expect(f.detections!.some((d) => d.class === "5")).toBe(true); // the bus, by class id
    const metrics = made.instance.metrics!() as OperatorMetric[];
    expect(metrics.find((m) => m.name === "infer_triton_retries_total")).toEqual({ name: "infer_triton_retries_total", help: expect.any(String), type: "counter", value: 2 });
    overloaded = 3;
    const err = await failure(Promise.resolve(made.instance.process(await step(prep, copy(frames[0])))));
    expect(err.message).toBe(`infer yolo_trt: http://127.0.0.1:${stub.port} failed after 3 attempt(s): HTTP 503: Server is overloaded`);
    await made.instance.close?.();
  });
});

describe("infer-triton reads the model configuration", () => {
  let repoServer: ServeProcess;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  beforeAll(async () => {
    dir = await tempDir();
    const names = JSON.parse((await json(await fetch(`${server.url}/v2/models/yolov5n`))).parameters.class_names) as string[];
    // The seed's config (max_batch_size 32, preferred 4/8/16, 500 µs) with one instance: enough here.
    await writeRepository(dir.path, {
      yolov5: { config: seedConfig().replace("count: 4", "count: 1"), versions: { "1": batchModelFile }, files: { "labels.txt": names.join("\n") } },
    });
    repoServer = await startServe(["--model-repository", dir.path]);
  });
  afterAll(async () => {
    await repoServer?.stop();
    await dir?.remove();
  });

  const stats = async () => (await json(await fetch(`${repoServer.url}/v2/models/yolov5/stats`))).model_stats[0];

  test("max_batch_size 32 with dynamic batching: frames that arrive together go as one request, each gets its own detections", async () => {
    const made = await makeTransform("infer-triton", { url: repoServer.url, model: "yolov5", batch: 4 });
    expect(made.log.text()).toContain(
      `yolov5 ready on ${repoServer.url} (onnxruntime_onnx): input images [-1,3,640,640] FP32, output output0 [-1,25200,85] FP32, binary tensors, 80 classes; ` +
        "max_batch_size 32, dynamic batching (preferred 4/8/16, max queue delay 500 µs): up to 4 frames per request",
    );
    const before = await stats();
    const four = await Promise.all(frames.slice(0, 4).map((f) => step(prep, copy(f))));
    // As a stage with replicas: four frames in the stage at once.
    const results = await Promise.all(four.map((f) => step(made.instance, f)));
    const after = await stats();
    expect(after.inference_stats.success.count - before.inference_stats.success.count).toBe(1);
    expect(after.inference_count - before.inference_count).toBe(4);
    expect(after.batch_stats.find((b: { batch_size: number }) => b.batch_size === 4)?.compute_infer.count).toBe(1);
    for (const [i, f] of frames.slice(0, 4).entries()) {
      const want = (await detectWith(onnx, f)).detections!;
      const got = (await step(nms, results[i])).detections!;
      expect(got.length).toBeGreaterThan(0);
      expect(got.map((d) => d.class)).toEqual(want.map((d) => d.class));
      got.forEach((d, k) => expect(d.score).toBeCloseTo(want[k].score, 3));
    }
    const metrics = Object.fromEntries((made.instance.metrics!() as OperatorMetric[]).map((m) => [m.name, "value" in m ? m.value : undefined]));
    expect(metrics).toMatchObject({ infer_triton_requests_total: 1, infer_triton_frames_total: 4, infer_triton_max_batch_size: 32, infer_triton_batch_limit: 4 });
    // One frame at a time is still one frame per request.
    await step(made.instance, await step(prep, copy(frames[4])));
    expect((await stats()).inference_stats.success.count - after.inference_stats.success.count).toBe(1);
    await made.instance.close?.();
  });

  test("batch: 1 sends each frame alone; the server's max_batch_size caps a larger batch", async () => {
    const alone = await makeTransform("infer-triton", { url: repoServer.url, model: "yolov5", batch: 1 });
    expect(alone.log.text()).toContain("max_batch_size 32, dynamic batching (preferred 4/8/16, max queue delay 500 µs): one frame per request");
    const before = await stats();
    const two = await Promise.all(frames.slice(0, 2).map((f) => step(prep, copy(f))));
    await Promise.all(two.map((f) => step(alone.instance, f)));
    expect((await stats()).inference_stats.success.count - before.inference_stats.success.count).toBe(2);
    await alone.instance.close?.();
    const capped = await makeTransform("infer-triton", { url: repoServer.url, model: "yolov5", batch: 100 });
    expect(capped.log.text()).toContain("up to 32 frames per request");
    await capped.instance.close?.();
  });
});
