import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { DEFAULT_LIMITS } from "../runtime/media/image-decode.ts";
import { decodeInferResponse, encodeInferRequest, HEADER_LENGTH } from "../runtime/inference/kserve.ts";
import type { Frame } from "../runtime/core/message.ts";
import { readBytes } from "../runtime/platform/index.ts";
import { loadRegistry } from "../runtime/spec/registry.ts";
import { createServeApp } from "../runtime/serve/app.ts";
import { createServeMetrics } from "../runtime/serve/metrics.ts";
import { ModelRepository } from "../runtime/serve/repository.ts";
import { FileSource } from "../runtime/serve/sources.ts";
import { makeTransform, readAll, step } from "./support/operators.ts";
import { busImage, fp16ModelFile, modelFile, repoRoot, zidaneImage } from "./support/paths.ts";
import { captureLog } from "./support/pipeline.ts";
import { startProcess } from "./support/process.ts";
import { until } from "./support/wait.ts";
import { json, startServe, type ServeProcess } from "./support/serve.ts";

setDefaultTimeout(60_000);

let server: ServeProcess;
beforeAll(async () => {
  server = await startServe(["--model", modelFile, "--max-image-mb", "2"]);
});
afterAll(async () => {
  await server?.stop();
});

interface DetectBody {
  model: string;
  width: number;
  height: number;
  detections: { class: string; score: number; box: [number, number, number, number] }[];
  ms: number;
  timings: Record<string, number>;
}

const post = (path: string, body: string | Uint8Array | FormData, type?: string) =>
  fetch(`${server.url}${path}`, { method: "POST", body, headers: type ? { "content-type": type } : {} });

/** A JPEG whose frame header declares `w`×`h`, with no image data behind it. */
function jpegHeader(w: number, h: number): Uint8Array {
  return new Uint8Array([0xff, 0xd8, 0xff, 0xc0, 0x00, 0x11, 0x08, h >> 8, h & 0xff, w >> 8, w & 0xff, 0x03, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1, 0xff, 0xd9]);
}

/** A PNG signature and IHDR chunk declaring `w`×`h` (8-bit RGB), nothing else. */
function pngHeader(w: number, h: number): Uint8Array {
  const b = new Uint8Array(33);
  b.set([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, 0x49, 0x48, 0x44, 0x52]);
  const dv = new DataView(b.buffer);
  dv.setUint32(16, w);
  dv.setUint32(20, h);
  b.set([8, 2, 0, 0, 0], 24);
  return b;
}

describe("framewire serve: KServe v2 endpoints", () => {
  test("health, server and model metadata; the fixed batch is announced at start", async () => {
    expect(server.child.stderr()).toContain("has a fixed batch of 1, so dynamic batching is off");
    expect((await fetch(`${server.url}/v2/health/live`)).status).toBe(200);
    expect(await json(await fetch(`${server.url}/v2/health/ready`))).toEqual({ ready: true });
    expect(await json(await fetch(`${server.url}/v2`))).toMatchObject({
      name: "framewire",
      extensions: expect.arrayContaining(["binary_tensor_data", "model_configuration", "statistics", "model_repository"]),
    });
    const meta = await json(await fetch(`${server.url}/v2/models/yolov5n`));
    expect(meta).toMatchObject({
      name: "yolov5n",
      versions: ["1"],
      inputs: [{ name: "images", datatype: "FP32", shape: [1, 3, 640, 640] }],
      outputs: [{ name: "output0", datatype: "FP32", shape: [1, 25200, 85] }],
    });
    expect(JSON.parse(meta.parameters.class_names)).toHaveLength(80);
    expect((await fetch(`${server.url}/v2/models/yolov5n/versions/1/ready`)).status).toBe(200);
  });

  test("unknown model or version: 404 with a JSON error naming what exists", async () => {
    for (const path of ["/v2/models/resnet", "/v2/models/yolov5n/versions/7/ready", "/v2/models/resnet/infer"]) {
      const res = await fetch(`${server.url}${path}`, path.endsWith("infer") ? { method: "POST", body: "{}" } : {});
      expect(res.status).toBe(404);
      expect((await json(res)).error).toContain("this server has yolov5n (version 1)");
    }
  });

  test("binary inference gives the same output as onnxruntime in process", async () => {
    const [frame] = await readAll({ url: busImage });
    const prep = (await makeTransform("resize", { width: 640, height: 640 })).instance;
    const tensor = (await step(prep, frame)).tensor!;
    const req = encodeInferRequest([{ name: "images", datatype: "FP32", shape: tensor.dims, data: tensor.data }], ["output0"], true, "bus-1");
    const res = await fetch(`${server.url}/v2/models/yolov5n/infer`, { method: "POST", body: req.body, headers: req.headers });
    expect(res.status).toBe(200);
    expect(res.headers.get(HEADER_LENGTH)).toMatch(/^\d+$/);
    const [out] = decodeInferResponse(new Uint8Array(await res.arrayBuffer()), res.headers.get(HEADER_LENGTH));
    expect(out.shape).toEqual([1, 25200, 85]);

    const session = await ort.InferenceSession.create(modelFile);
    const local = (await session.run({ images: new ort.Tensor("float32", tensor.data, tensor.dims) })).output0.data as Float32Array;
    await session.release();
    let maxDiff = 0;
    for (let i = 0; i < local.length; i++) maxDiff = Math.max(maxDiff, Math.abs(local[i] - out.data[i]));
    expect(maxDiff).toBeLessThan(1e-3);
  });

  test("JSON inference: a wrong shape is a 400 that says what the model takes", async () => {
    const req = encodeInferRequest([{ name: "images", datatype: "FP32", shape: [1, 3, 2, 2], data: new Float32Array(12) }], ["output0"], false);
    const res = await fetch(`${server.url}/v2/models/yolov5n/infer`, { method: "POST", body: req.body, headers: req.headers });
    expect(res.status).toBe(400);
    expect((await json(res)).error).toBe("input images has shape [1,3,640,640] (max_batch_size 0: exactly this shape), got [1,3,2,2]");
    const broken = await fetch(`${server.url}/v2/models/yolov5n/infer`, { method: "POST", body: '{"inputs": [{"name": "images"}]}' });
    expect(broken.status).toBe(400);
    expect((await json(broken)).error).toContain("inference request: inputs.0.shape");
  });
});

describe("framewire serve: Triton's extensions for the one-model shorthand", () => {
  test("config and stats of --model; the index lists it; load and unload are refused in model control mode none", async () => {
    const config = await json(await fetch(`${server.url}/v2/models/yolov5n/config`));
    expect(config).toMatchObject({
      name: "yolov5n",
      platform: "onnxruntime_onnx",
      backend: "onnxruntime",
      max_batch_size: 0,
      input: [{ name: "images", data_type: "TYPE_FP32", dims: [1, 3, 640, 640] }],
      output: [{ name: "output0", data_type: "TYPE_FP32", dims: [1, 25200, 85] }],
      instance_group: [{ name: "yolov5n_0", kind: "KIND_CPU", count: 1 }],
    });
    // A fixed batch of 1 is no batch axis for Triton: no dynamic batching.
    expect(config.dynamic_batching).toBeUndefined();

    const statsOf = async () => (await json(await fetch(`${server.url}/v2/models/yolov5n/stats`))).model_stats[0];
    const before = await statsOf();
    const req = encodeInferRequest([{ name: "images", datatype: "FP32", shape: [1, 3, 640, 640], data: new Float32Array(3 * 640 * 640) }], ["output0"], true);
    expect((await fetch(`${server.url}/v2/models/yolov5n/infer`, { method: "POST", body: req.body, headers: req.headers })).status).toBe(200);
    const after = await statsOf();
    expect([after.inference_count - before.inference_count, after.execution_count - before.execution_count]).toEqual([1, 1]);
    const ones = (s: any) => s.batch_stats.find((b: { batch_size: number }) => b.batch_size === 1)?.compute_infer.count ?? 0;
    expect(ones(after) - ones(before)).toBe(1);

    const index = await fetch(`${server.url}/v2/repository/index`, { method: "POST" });
    expect(await index.json()).toEqual([{ name: "yolov5n", version: "1", state: "READY", reason: "" }]);
    for (const op of ["load", "unload"]) {
      const res = await fetch(`${server.url}/v2/repository/models/yolov5n/${op}`, { method: "POST" });
      expect(res.status).toBe(400);
      expect((await json(res)).error).toBe(`explicit model ${op} is not allowed with --model-control-mode none; start the server with --model-control-mode explicit`);
    }
  });
});

describe("framewire serve: POST /detect", () => {
  test("bus.jpg as a raw body: the bus and at least 3 persons, boxes in image pixels", async () => {
    const res = await post("/detect", await readBytes(busImage), "image/jpeg");
    expect(res.status).toBe(200);
    const body = (await json(res)) as DetectBody;
    expect([body.model, body.width, body.height]).toEqual(["yolov5n", 810, 1080]);
    const persons = body.detections.filter((d) => d.class === "person");
    const bus = body.detections.find((d) => d.class === "bus");
    expect(persons.length).toBeGreaterThanOrEqual(3);
    expect(bus).toBeDefined();
    // Image pixels, not model pixels: the bus spans most of the 810-px width.
    expect(bus!.box[2] - bus!.box[0]).toBeGreaterThan(600);
    for (const d of body.detections) {
      expect(d.box[0]).toBeGreaterThanOrEqual(0);
      expect(d.box[2]).toBeLessThanOrEqual(810);
      expect(d.box[3]).toBeLessThanOrEqual(1080);
      expect(d.score).toBeGreaterThanOrEqual(0.25);
    }
    expect(Object.keys(body.timings)).toEqual(["decode", "preprocess", "queue", "infer", "nms"]);
  });

  test("a multipart upload detects the same as the pipeline operators on that image", async () => {
    const form = new FormData();
    form.append("image", new Blob([await readBytes(zidaneImage)], { type: "image/jpeg" }), "zidane.jpg");
    const res = await fetch(`${server.url}/detect`, { method: "POST", body: form });
    expect(res.status).toBe(200);
    const body = (await json(res)) as DetectBody;

    const [frame] = await readAll({ url: zidaneImage });
    const prep = (await makeTransform("resize", { width: 640, height: 640 })).instance;
    const infer = (await makeTransform("infer-onnx", { model: modelFile })).instance;
    const nms = (await makeTransform("nms", {})).instance;
    const f: Frame = await step(nms, await step(infer, await step(prep, frame)));
    await infer.close?.();
    expect(body.detections.map((d) => d.class)).toEqual(f.detections!.map((d) => d.class));
    body.detections.forEach((d, i) => {
      expect(d.score).toBeCloseTo(f.detections![i].score, 3);
      d.box.forEach((x, k) => expect(Math.abs(x - f.detections![i].box[k])).toBeLessThan(0.5));
    });
  });

  test("query overrides NMS settings; bad ones are a 400", async () => {
    const bytes = await readBytes(busImage);
    const only = (await json(await post("/detect?classes=person&conf=0.5", bytes, "image/jpeg"))) as DetectBody;
    expect(only.detections.length).toBeGreaterThanOrEqual(3);
    expect(new Set(only.detections.map((d) => d.class))).toEqual(new Set(["person"]));
    const bad = await post("/detect?conf=2", bytes, "image/jpeg");
    expect(bad.status).toBe(400);
    expect(await json(bad)).toEqual({ error: "query: conf: expected <= 1, got 2" });
    const unknownClass = await post("/detect?classes=unicorn", bytes, "image/jpeg");
    expect(unknownClass.status).toBe(400);
    expect((await json(unknownClass)).error).toContain('unknown class "unicorn"');
    const unknownParam = await post("/detect?threshold=1", bytes, "image/jpeg");
    expect(unknownParam.status).toBe(400);
  });

  test("a corrupt or truncated image is a 400 JSON error", async () => {
    const garbage = await post("/detect", new Uint8Array(2000).fill(7), "image/jpeg");
    expect(garbage.status).toBe(400);
    expect((await json(garbage)).error).toContain("not a JPEG or PNG");
    const truncated = await post("/detect", (await readBytes(busImage)).slice(0, 60_000), "image/jpeg");
    expect(truncated.status).toBe(400);
    expect((await json(truncated)).error).toContain("jpeg could not be decoded");
  });

  test("wrong content types are a 415; a GIF is named as such", async () => {
    const text = await post("/detect", "hello", "text/plain");
    expect(text.status).toBe(415);
    expect((await json(text)).error).toContain("send image/jpeg, image/png or multipart/form-data");
    const gif = await post("/detect", new TextEncoder().encode("GIF89a\x01\x00\x01\x00"), "image/png");
    expect(gif.status).toBe(415);
    expect((await json(gif)).error).toBe("GIF images are not supported; send JPEG or PNG");
  });

  test("a body over --max-image-mb is a 413", async () => {
    const res = await post("/detect", new Uint8Array(3 * 1024 * 1024), "image/jpeg");
    expect(res.status).toBe(413);
    expect((await json(res)).error).toBe(`request body exceeds the limit of ${2 * 1024 * 1024} bytes`);
  });

  test("headers declaring 60000x60000 pixels are refused before decoding (413)", async () => {
    for (const [bytes, type] of [
      [jpegHeader(60000, 60000), "image/jpeg"],
      [pngHeader(60000, 60000), "image/png"],
      [pngHeader(9000, 9000), "image/png"],
    ] as const) {
      const res = await post("/detect", bytes, type);
      expect(res.status).toBe(413);
      expect((await json(res)).error).toMatch(/^image declares (60000x60000|9000x9000) pixels/);
    }
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toMatch(/framewire_serve_images_rejected_total\{reason="dimensions"\} 3/);
  });

  test("/metrics counts requests by route and code, and shows the queue and batch sizes", async () => {
    const text = await (await fetch(`${server.url}/metrics`)).text();
    expect(text).toMatch(/framewire_serve_requests_total\{route="\/detect",code="200",model="yolov5n"\} [1-9]/);
    expect(text).toMatch(/framewire_serve_requests_total\{route="\/detect",code="415",model="yolov5n"\} 2/);
    expect(text).toContain('framewire_serve_queue_depth{model="yolov5n",version="1"} 0');
    expect(text).toContain('framewire_serve_instances{model="yolov5n",version="1"} 1');
    expect(text).toMatch(/framewire_serve_batch_size_bucket\{le="1",model="yolov5n",version="1"\} [1-9]/);
    expect(text).toContain("framewire_serve_process_cpu_seconds_total");
  });
});

describe("framewire serve: start and stop", () => {
  test("the float16 model is refused at start with a clear error", async () => {
    const child = startProcess(["bun", join(repoRoot, "runtime/cli.ts"), "serve", "--model", fp16ModelFile, "--port", "0"]);
    expect(await child.exited).toBe(2);
    expect(child.stderr()).toContain("yolov5n-fp16.onnx takes float16 input");
  });

  test("a bad flag is refused with the usage", async () => {
    const child = startProcess(["bun", join(repoRoot, "runtime/cli.ts"), "serve", "--model", modelFile, "--preferred-batch", "4,x"]);
    expect(await child.exited).toBe(2);
    expect(child.stderr()).toContain("--preferred-batch: expected sizes like 4,8,16");
  });

  test("a port already in use is a clear error", async () => {
    const child = startProcess(["bun", join(repoRoot, "runtime/cli.ts"), "serve", "--model", modelFile, "--port", String(server.port)]);
    expect(await child.exited).toBe(2);
    expect(child.stderr()).toContain(`error: cannot listen on 127.0.0.1:${server.port}`);
  });

  test("SIGTERM drains and exits 0", async () => {
    const s = await startServe(["--model", modelFile]);
    expect(await s.stop()).toBe(0);
    expect(s.child.stderr()).toMatch(/SIGTERM: draining \(not ready; requests in progress finish\)\n.*stopped/);
  });

  test("a drain lets the request in progress finish, then answers 503", async () => {
    const log = captureLog("serve");
    const defaults = { maxBatchSize: 32, dynamicBatching: { preferred: [], maxQueueDelayUs: 0 }, maxQueue: 8, instances: 1, size: 640 };
    const repository = new ModelRepository(new FileSource(modelFile, undefined, defaults, 0), "none", log);
    await repository.loadAtStart("*");
    const model = repository.get("yolov5n");
    const app = await createServeApp({
      repository,
      metrics: createServeMetrics(repository),
      registry: await loadRegistry(),
      log,
      limits: DEFAULT_LIMITS,
      maxImageBytes: 10 << 20,
      maxBodyBytes: 10 << 20,
      decoders: 1,
      maxWaiting: 1,
      decodeBudgetBytes: 0,
      conf: 0.25,
      iou: 0.45,
    });
    const detect = async () =>
      app.fetch(new Request("http://serve/detect", { method: "POST", body: await readBytes(busImage), headers: { "content-type": "image/jpeg" } }));
    const inProgress = detect();
    await until(() => model.batcher.busy > 0, "the request to reach the model");
    await app.drain();
    expect((await inProgress).status).toBe(200);
    expect((await app.fetch(new Request("http://serve/v2/health/ready"))).status).toBe(503);
    const late = await detect();
    expect([late.status, await json(late)]).toEqual([503, { error: "the server is shutting down" }]);
    await repository.close();
  });
});
