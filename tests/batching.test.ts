/**
 * Cross-stream batching in infer-onnx (`batch: { max, maxDelayMs }`) with the
 * real dynamic-batch model and real ffmpeg: frames of several streams run as
 * one inference and get exactly the detections they get one at a time.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import { FramewireError } from "../runtime/core/errors.ts";
import { derive, type Detection, type Frame, type Message } from "../runtime/core/message.ts";
import type { OperatorMetric, TransformInstance } from "../runtime/core/operator.ts";
import { resolveFfmpeg } from "../runtime/media/ffmpeg.ts";
import { makeTransform, readAll, step } from "./support/operators.ts";
import { parse, registryWith, runPipeline } from "./support/pipeline.ts";
import { sampleVideo, tempDir } from "./support/paths.ts";
import { startProcess } from "./support/process.ts";
import { collected, collectSink } from "./support/test-operators.ts";

setDefaultTimeout(120_000);

const BATCH_MODEL = "yolov5n-batch.onnx";
/** Frames per clip: two clips from different parts of the sample video stand for two cameras. */
const FRAMES = 8;

let dir: { path: string; remove(): Promise<void> };
const clips: string[] = [];
let prep: TransformInstance;
let nms: TransformInstance;
/** The batch model run one frame at a time: the reference. */
let single: TransformInstance;
/** Decoded frames of both clips, stream "a" then "b", with their tensors. */
let frames: Frame[] = [];

beforeAll(async () => {
  dir = await tempDir("framewire-batching-");
  for (const [i, start] of [0, 20].entries()) {
    const clip = join(dir.path, `clip${i}.mp4`);
    const ff = startProcess([resolveFfmpeg(), "-loglevel", "error", "-y", "-ss", String(start), "-i", sampleVideo, "-frames:v", String(FRAMES), "-an", "-c:v", "libx264", "-preset", "ultrafast", clip]);
    expect(await ff.exited).toBe(0);
    clips.push(clip);
  }
  prep = (await makeTransform("resize", { width: 640, height: 640 })).instance;
  nms = (await makeTransform("nms", { conf: 0.25, iou: 0.45 })).instance;
  single = (await makeTransform("infer-onnx", { model: BATCH_MODEL })).instance;
  for (const [i, clip] of clips.entries()) {
    for (const f of await readAll({ url: clip })) frames.push(await step(prep, derive(f, { stream: i ? "b" : "a" })));
  }
});
afterAll(async () => {
  await single?.close?.();
  await dir?.remove();
});

/** What nms keeps of a frame that went through an infer stage. */
async function detections(infer: TransformInstance, f: Frame): Promise<readonly Detection[]> {
  return (await step(nms, await step(infer, f))).detections ?? [];
}

const metric = (ms: OperatorMetric[], name: string) => {
  const m = ms.find((x) => x.name === name);
  return m && "value" in m ? m.value : undefined;
};

describe("cross-stream batching (infer-onnx batch option)", () => {
  test("the clips decode to two streams of frames", () => {
    expect(frames).toHaveLength(2 * FRAMES);
    expect(new Set(frames.map((f) => f.stream))).toEqual(new Set(["a", "b"]));
  });

  test("concurrent frames of two streams run in batches of max and get the detections of batch 1, frame by frame", async () => {
    const { instance: batched } = await makeTransform("infer-onnx", { model: BATCH_MODEL, batch: { max: 4, maxDelayMs: 1000 } });
    try {
      expect(batched.concurrency).toBe(4);
      // The executor hands a stage `concurrency` frames at once: here all of them, streams interleaved.
      const order = frames.map((_, i) => frames[(i % 2) * FRAMES + Math.floor(i / 2)]);
      const outs = await Promise.all(order.map((f) => step(batched, f)));
      const ms = batched.metrics!();
      expect(metric(ms, "inference_batches_total")).toBe(order.length / 4);
      expect(metric(ms, "inference_batch_frames_total")).toBe(order.length);
      let total = 0;
      for (const [i, f] of order.entries()) {
        const out = outs[i];
        expect([out.stream, out.seq]).toEqual([f.stream, f.seq]);
        // Each frame's predictions are its own candidates of the batch's output, shaped as a batch of one.
        const [one, kept, width] = out.predictions!.dims;
        expect([one, width, out.predictions!.minScore]).toEqual([1, 85, 0.001]);
        expect(kept).toBeGreaterThan(0);
        expect(kept).toBeLessThan(25200);
        const got = (await step(nms, out)).detections ?? [];
        const want = await detections(single, f);
        expect(got).toEqual(want);
        total += want.length;
      }
      // The clip shows people and cars: the comparison is not between empty lists.
      expect(total).toBeGreaterThan(order.length);
    } finally {
      await batched.close?.();
    }
  });

  test("a batch that does not fill runs after maxDelayMs", async () => {
    const { instance: batched } = await makeTransform("infer-onnx", { model: BATCH_MODEL, batch: { max: 8, maxDelayMs: 20 } });
    try {
      const three = frames.slice(0, 3);
      const outs = await Promise.all(three.map((f) => step(batched, f)));
      expect(metric(batched.metrics!(), "inference_batches_total")).toBe(1);
      expect(metric(batched.metrics!(), "inference_batch_frames_total")).toBe(3);
      for (const [i, f] of three.entries()) expect((await step(nms, outs[i])).detections).toEqual(await detections(single, f));
    } finally {
      await batched.close?.();
    }
  });

  test("batching a model with a fixed batch axis is a config error naming the model and the dynamic-batch variant", async () => {
    for (const model of ["yolov5n.onnx", "yolov5n-int8.onnx"]) {
      const err = await makeTransform("infer-onnx", { model, batch: { max: 4 } }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(FramewireError);
      expect((err as FramewireError).code).toBe("E_CONFIG");
      expect((err as Error).message).toContain(`${model} has a fixed batch of 1`);
      expect((err as Error).message).toContain("yolov5n-batch.onnx");
    }
  });

  test("in a pipeline, two cameras through one batched stage: every frame, in order per stream, with the detections of an unbatched run", async () => {
    const registry = await registryWith(collectSink);
    const pipeline = (key: string, batch: string) =>
      parse(
        `name: batch-${key}
stages:
  - { id: a, use: ingest, with: { url: "${clips[0]}" } }
  - { id: b, use: ingest, with: { url: "${clips[1]}" } }
  - { id: prep, use: resize, in: [a, b], with: { width: 640, height: 640 } }
  - { id: detect, use: infer-onnx, with: { model: ${BATCH_MODEL}${batch} } }
  - { id: nms, use: nms }
  - { id: out, use: test-collect, with: { key: ${key} } }
`,
        registry,
      );
    const runs = { batched: ", batch: { max: 4, maxDelayMs: 10 }", unbatched: "" };
    const byFrame: Record<string, Map<string, readonly Detection[]>> = {};
    for (const [key, batch] of Object.entries(runs)) {
      const run = await runPipeline(pipeline(key, batch));
      expect(run.stage("detect").failed).toBe(0);
      const got = (collected.get(key) ?? []).filter((m: Message): m is Frame => m.kind === "frame");
      expect(got).toHaveLength(2 * FRAMES);
      for (const s of ["a", "b"]) {
        const seqs = got.filter((f) => f.stream === s).map((f) => f.seq);
        expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
        expect(seqs).toHaveLength(FRAMES);
      }
      byFrame[key] = new Map(got.map((f) => [`${f.stream}/${f.seq}`, f.detections ?? []]));
    }
    for (const [id, want] of byFrame.unbatched) expect({ id, dets: byFrame.batched.get(id) }).toEqual({ id, dets: want });
  });
});
