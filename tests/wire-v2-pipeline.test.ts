/**
 * Wire v2 on the detection path, with the real operators (ffmpeg ingest,
 * resize, infer-onnx on models/yolov5n.onnx, nms) and a real nats-server:
 * a tensor crosses as its uint8 bytes and the far side's inference equals
 * the in-process one exactly; nms's frame carries no tensor and no
 * predictions, so a hop after nms ships only the image (and the detections
 * in the meta).
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import type { Msg, Subscription } from "@nats-io/transport-node";
import { NatsBus } from "../runtime/bus/nats.ts";
import { tensorPixels } from "../runtime/core/byte-tensor.ts";
import type { Frame, Message } from "../runtime/core/message.ts";
import type { TransformInstance } from "../runtime/core/operator.ts";
import { startNatsServer, stopAllNatsServers, type NatsServer } from "./support/nats.ts";
import { makeTransform, readAll, step } from "./support/operators.ts";
import { busImage, modelFile } from "./support/paths.ts";
import { captureLog } from "./support/pipeline.ts";
import { until } from "./support/wait.ts";

setDefaultTimeout(60_000);

let server: NatsServer;
let sender: NatsBus;
let receiver: NatsBus;
let prep: TransformInstance;
let infer: TransformInstance;
let nms: TransformInstance;
/** bus.jpg as ingest decodes it. */
let source: Frame;

beforeAll(async () => {
  // The shipped server configs' limit: the hop after infer-onnx fits it, as only candidate anchors cross (not YOLOv5's 8.6 MB output).
  server = await startNatsServer({ maxPayload: "8MB" });
  sender = await NatsBus.connect({ url: server.url, log: captureLog("edge") });
  receiver = await NatsBus.connect({ url: server.url, log: captureLog("cloud") });
  prep = (await makeTransform("resize", { width: 640, height: 640, mode: "letterbox" })).instance;
  infer = (await makeTransform("infer-onnx", { model: modelFile, threads: 1 })).instance;
  nms = (await makeTransform("nms", { conf: 0.25, iou: 0.45 })).instance;
  const frames = await readAll({ url: busImage });
  expect(frames).toHaveLength(1);
  source = frames[0];
});
afterAll(async () => {
  await infer?.close?.();
  await sender?.close();
  await receiver?.close();
  await stopAllNatsServers();
});

/** Publishes `f` on `subject` and returns it as the receiving bus decoded it, with the raw message bytes. */
async function hop(subject: string, f: Frame): Promise<{ frame: Frame; bytes: Uint8Array }> {
  const got: Message[] = [];
  const raw: Uint8Array[] = [];
  const sub = receiver.subscribe(subject, (m) => void got.push(m));
  const tap: Subscription = sender.nc.subscribe(subject, { callback: (_e: unknown, m: Msg) => void raw.push(m.data.slice()) });
  await receiver.nc.flush();
  await sender.nc.flush();
  await sender.publish(subject, f);
  await until(() => got.length === 1 && raw.length === 1, `the frame on ${subject}`);
  sub.unsubscribe();
  tap.unsubscribe();
  return { frame: got[0] as Frame, bytes: raw[0] };
}

/** The meta of a wire v2 frame message, as docs/wire-format.md tells a reader to find it. */
function metaOf(bytes: Uint8Array): any {
  expect(new TextDecoder().decode(bytes.subarray(0, 4))).toBe("FWM2");
  const len = new DataView(bytes.buffer, bytes.byteOffset).getUint32(4);
  return JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + len)));
}

describe("wire v2 on the detection path", () => {
  test("resize's tensor crosses NATS as uint8 and inference on the far side equals the in-process result", async () => {
    const prepared = await step(prep, source);
    const local = await step(nms, await step(infer, prepared));
    const localRaw = await step(infer, prepared);

    const { frame: received, bytes } = await hop("fw.v2.prep", prepared);
    const meta = metaOf(bytes);
    expect(meta.tensor).toEqual({ dims: [1, 3, 640, 640], dtype: "uint8", letterbox: prepared.tensor!.letterbox });
    expect(meta.blobs).toEqual([
      { name: "image", length: 810 * 1080 * 3 },
      { name: "tensor", length: 3 * 640 * 640 },
    ]);
    // 1.2 MB of tensor where v1 sent 4.9 MB of float32.
    expect(bytes.length).toBeLessThan(810 * 1080 * 3 + 3 * 640 * 640 + 2048);
    // The same lazy byte tensor as resize's: infer-onnx sends the bytes to its thread.
    expect(tensorPixels(received.tensor!)).toEqual(tensorPixels(prepared.tensor!)!);

    const remoteRaw = await step(infer, received);
    expect(remoteRaw.predictions!.dims).toEqual(localRaw.predictions!.dims);
    expect(Buffer.from(remoteRaw.predictions!.data.buffer, remoteRaw.predictions!.data.byteOffset, remoteRaw.predictions!.data.byteLength)).toEqual(
      Buffer.from(localRaw.predictions!.data.buffer, localRaw.predictions!.data.byteOffset, localRaw.predictions!.data.byteLength),
    );
    const remote = await step(nms, remoteRaw);
    expect(remote.detections).toEqual(local.detections!);
    expect(local.detections!.some((d) => d.class === "bus")).toBe(true);
  });

  test("infer-onnx's predictions cross as float32 and nms on the far side gives the same detections", async () => {
    const inferred = await step(infer, await step(prep, source));
    const { frame: received, bytes } = await hop("fw.v2.detect", inferred);
    const meta = metaOf(bytes);
    expect(meta.predictions).toMatchObject({ layout: "yolov5", dtype: "float32", dims: inferred.predictions!.dims, minScore: 0.001 });
    expect(meta.blobs.map((b: { name: string }) => b.name)).toEqual(["image", "tensor", "predictions"]);
    // The candidate anchors only: a few thousand rows of 85 floats, not 25 200.
    const [, kept] = meta.predictions.dims;
    expect(kept).toBeGreaterThan(100);
    expect(kept).toBeLessThan(5000);
    expect(bytes.length).toBeLessThan(810 * 1080 * 3 + 3 * 640 * 640 + 5000 * 85 * 4 + 4096);
    expect([...received.predictions!.data]).toEqual([...inferred.predictions!.data]);
    expect((await step(nms, received)).detections).toEqual((await step(nms, inferred)).detections!);
  });

  test("nms's frame has no tensor and no predictions: a hop after nms ships only the image and the detections", async () => {
    const detected = await step(nms, await step(infer, await step(prep, source)));
    expect(detected.tensor).toBeUndefined();
    expect(detected.predictions).toBeUndefined();
    expect("tensor" in detected || "predictions" in detected).toBe(false);
    const { frame: received, bytes } = await hop("fw.v2.nms", detected);
    const meta = metaOf(bytes);
    expect(meta.blobs).toEqual([{ name: "image", length: 810 * 1080 * 3 }]);
    expect(meta.tensor).toBeUndefined();
    expect(meta.predictions).toBeUndefined();
    expect(bytes.length).toBeLessThan(810 * 1080 * 3 + 8192);
    expect(received.detections).toEqual(detected.detections!);
    expect(received.image.data).toEqual(detected.image.data);
  });
});
