/**
 * Wire format v2 against v1, per 768×576 frame of the sample clip (640×640
 * model input): bytes on the wire, encode + decode time, how many 10 fps
 * cameras a 1 Gbit/s link carries, and one hop through a real nats-server
 * (publish → subscriber has it decoded, sequential, loopback) for:
 * - v1 raw, before inference: image + float32 tensor (v1 is gone: its
 *   envelope is rebuilt here, float32 tensor computed from the bytes as a
 *   v1 sender did, and read back as a v1 reader did);
 * - v2 raw: image + uint8 tensor (a resize → infer link);
 * - v2 after infer-onnx: image + tensor + candidate anchors (an infer → nms link);
 * - v2 after nms: image + detections (an nms → sink link);
 * - v2 JPEG q85 of the camera frame (a cam → resize link), sharp vs jpeg-js;
 * - v2 H.264 access units as `ingest` with `decode: false` relays them.
 * Codec rounds cycle through the kind's frames; bytes are their mean.
 */
import * as v from "valibot";
import { join } from "node:path";
import { NatsBus } from "../runtime/bus/nats.ts";
import { decodeMessage, decodeMessageAsync, encodeMessage, encodeMessageAsync, wireJpegCodec, type WireOptions } from "../runtime/bus/wire.ts";
import { Histogram } from "../runtime/core/histogram.ts";
import { createLogger } from "../runtime/core/log.ts";
import { derive, type Frame } from "../runtime/core/message.ts";
import type { SourceInstance, StageContext, TransformInstance } from "../runtime/core/operator.ts";
import { pixelTensor, tensorPixels } from "../runtime/inference/pixel-tensor.ts";
import { projectRoot } from "../runtime/platform/paths.ts";
import { loadRegistry } from "../runtime/spec/registry.ts";
import { startNatsServer } from "../tests/support/nats.ts";
import { fmt, markdownTable } from "./table.ts";

const CLIP = join(projectRoot, "pipelines/media/vtest.mp4");
const quiet = createLogger("bench", 99);
/** 1 Gbit/s in bytes per second. */
const GBIT = 1e9 / 8;
const FPS = 10;

async function operator<T>(name: string, options: unknown): Promise<T> {
  const registry = await loadRegistry();
  const def = registry.get(name)!;
  const ctx: StageContext = { stage: name, pipeline: "bench", log: quiet, signal: new AbortController().signal, operators: registry };
  return (await def.create(v.parse(def.options, options) as never, ctx)) as T;
}

/** The clip's first `n` frames as ingest gives them (scaled by ffmpeg to 768×576 rgb24, or relayed undecoded). */
async function clipFrames(options: Record<string, unknown>, n: number): Promise<Frame[]> {
  const src = await operator<SourceInstance>("ingest", { url: CLIP, ...options });
  const ac = new AbortController();
  const frames: Frame[] = [];
  await src.run(async (f) => {
    if (f.kind !== "frame" || frames.length >= n) return;
    frames.push(f);
    if (frames.length === n) ac.abort();
  }, ac.signal);
  await src.close?.();
  return frames;
}

async function step(t: TransformInstance, f: Frame): Promise<Frame> {
  return (await t.process(f)) as Frame;
}

/** A frame message as wire v1 wrote it: "FWM1", meta, image, float32 tensor (computed from the bytes on the sender, as v1's `tensor.data` did). */
function encodeV1(f: Frame): Uint8Array {
  const t = f.tensor!;
  const floats = pixelTensor(t.dims, tensorPixels(t)!, t.letterbox).data; // a fresh tensor: the float32 conversion counts, as in v1
  const tensor = new Uint8Array(floats.buffer, floats.byteOffset, floats.byteLength);
  const meta = new TextEncoder().encode(
    JSON.stringify({
      v: 1,
      kind: "frame",
      stream: f.stream,
      seq: f.seq,
      ts: f.ts,
      live: f.live,
      image: { width: f.image.width, height: f.image.height, format: f.image.format },
      tensor: { dims: t.dims, dtype: "float32", letterbox: t.letterbox },
      timings: f.timings,
      blobs: [
        { name: "image", length: f.image.data.length },
        { name: "tensor", length: tensor.length },
      ],
    }),
  );
  const out = new Uint8Array(8 + meta.length + f.image.data.length + tensor.length);
  out.set([0x46, 0x57, 0x4d, 0x31]);
  new DataView(out.buffer).setUint32(4, meta.length);
  out.set(meta, 8);
  out.set(f.image.data, 8 + meta.length);
  out.set(tensor, 8 + meta.length + f.image.data.length);
  return out;
}

/** What a v1 reader did with it: meta parsed, image a view, tensor a float32 view (copied when unaligned). */
function decodeV1(b: Uint8Array): { seq: number; tensor: Float32Array } {
  const m = new DataView(b.buffer, b.byteOffset).getUint32(4);
  const meta = JSON.parse(new TextDecoder().decode(b.subarray(8, 8 + m)));
  const off = 8 + m + meta.blobs[0].length;
  const blob = b.subarray(off, off + meta.blobs[1].length);
  const tensor = blob.byteOffset % 4 === 0 ? new Float32Array(blob.buffer, blob.byteOffset, blob.length / 4) : new Float32Array(blob.slice().buffer);
  return { seq: meta.seq, tensor };
}

interface Kind {
  what: string;
  /** The frames sent, in turn. */
  frames: Frame[];
  encode(f: Frame): Promise<Uint8Array> | Uint8Array;
  decode(b: Uint8Array): Promise<unknown> | unknown;
  /** One hop through NATS: resolves once the subscriber has the frame decoded. */
  wire?: WireOptions;
  v1?: boolean;
}

async function codecP50(k: Kind, n: number): Promise<{ ms: number; bytes: number }> {
  const h = new Histogram();
  let bytes = 0;
  for (let i = 0; i < n + 3; i++) {
    const t0 = performance.now();
    const b = await k.encode({ ...k.frames[i % k.frames.length], seq: i });
    await k.decode(b);
    if (i >= 3) h.record(performance.now() - t0);
    if (i >= 3) bytes += b.length;
  }
  return { ms: h.quantile(0.5), bytes: bytes / n };
}

/** Sequential hops publish → decoded on the subscriber, p50 in ms. */
async function hopP50(pub: NatsBus, sub: NatsBus, k: Kind, n: number, subject: string): Promise<number> {
  const h = new Histogram();
  let arrived: (() => void) | undefined;
  const done = () => arrived?.();
  let unsubscribe: () => void;
  if (k.v1) {
    const s = sub.nc.subscribe(subject, { callback: (_e, m) => (decodeV1(m.data), done()) });
    unsubscribe = () => s.unsubscribe();
  } else unsubscribe = sub.subscribe(subject, () => done(), { rejectDuplicates: false }).unsubscribe;
  await sub.nc.flush();
  for (let i = 0; i < n + 3; i++) {
    const got = new Promise<void>((r) => (arrived = r));
    const t0 = performance.now();
    const f = { ...k.frames[i % k.frames.length], seq: i };
    if (k.v1) pub.nc.publish(subject, encodeV1(f));
    else await pub.publish(subject, f, k.wire);
    await got;
    if (i >= 3) h.record(performance.now() - t0);
  }
  unsubscribe();
  return h.quantile(0.5);
}

/** Runs the wire benchmark and returns its markdown section. */
export async function benchWire(n = 20): Promise<string> {
  const [camera] = await clipFrames({ width: 768, height: 576 }, 1);
  // The clip's own H.264 (480×360, 227 kb/s), relayed undecoded: what `ingest` with `decode: false` sends.
  const packets = await clipFrames({ decode: false }, 100).catch((e: Error) => (console.error(`bench wire: no H.264 relay (${e.message})`), []));
  const prep = await operator<TransformInstance>("resize", { width: 640, height: 640 });
  const infer = await operator<TransformInstance>("infer-onnx", { model: "yolov5n.onnx", threads: 1 });
  const nms = await operator<TransformInstance>("nms", {});
  const prepared = await step(prep, camera);
  // infer-onnx hands on only the anchors that can reach its minScore (0.001): what crosses an infer → nms link.
  const inferred = await step(infer, prepared);
  const detected = await step(nms, inferred);
  const kept = inferred.predictions!.dims[1];
  await infer.close?.();
  const codec = await wireJpegCodec();
  const kinds: Kind[] = [
    { what: "v1 raw, before inference (image + float32 tensor)", frames: [prepared], encode: encodeV1, decode: decodeV1, v1: true },
    { what: "v2 raw, before inference (image + uint8 tensor)", frames: [prepared], encode: (f) => encodeMessageAsync(f), decode: decodeMessageAsync },
    {
      what: `v2 after infer-onnx (image + tensor + ${kept} of 25200 anchors, minScore 0.001)`,
      frames: [inferred],
      encode: (f) => encodeMessageAsync(f),
      decode: decodeMessageAsync,
    },
    { what: `v2 after nms (image + ${detected.detections!.length} detections)`, frames: [derive(detected, {})], encode: (f) => encodeMessageAsync(f), decode: decodeMessageAsync },
    {
      what: `v2 JPEG q85 of the camera frame, ${codec}`,
      frames: [camera],
      encode: (f) => encodeMessageAsync(f, { encoding: "jpeg", quality: 85 }),
      decode: decodeMessageAsync,
      wire: { encoding: "jpeg", quality: 85 },
    },
    {
      what: "v2 JPEG q85 of the camera frame, jpeg-js (synchronous path)",
      frames: [camera],
      encode: (f) => encodeMessage(f, { encoding: "jpeg", quality: 85 }),
      decode: decodeMessage,
    },
    ...(packets.length
      ? [{ what: `v2 H.264 access unit (the clip's 480×360 stream relayed, mean of ${packets.length})`, frames: packets, encode: (f: Frame) => encodeMessageAsync(f), decode: decodeMessageAsync }]
      : []),
  ];
  const server = await startNatsServer();
  const pub = await NatsBus.connect({ url: server.url, log: quiet });
  const sub = await NatsBus.connect({ url: server.url, log: quiet });
  const rows: (string | number)[][] = [];
  try {
    for (const [i, k] of kinds.entries()) {
      const c = await codecP50(k, n);
      // The bus codes JPEG with sharp; jpeg-js's hop is the bus with its codec swapped: not measured, its codec time says the difference.
      const hop = k.what.includes("jpeg-js") ? undefined : await hopP50(pub, sub, k, n, `bench.wire.${i}`);
      rows.push([k.what, fmt(c.bytes / 1e6, 3), fmt(c.ms, 2), Math.floor(GBIT / (c.bytes * FPS)), hop === undefined ? "—" : fmt(hop, 2)]);
    }
  } finally {
    await pub.close();
    await sub.close();
    await server.dispose();
  }
  const v1 = camera.image.data.length + 4 * 3 * 640 * 640;
  return (
    `## wire format (768×576 frame of the sample clip, 640×640 model input; ${n} rounds, p50)\n\n` +
    markdownTable(["frame on the wire", "MB", "encode + decode ms", `10 fps cameras on 1 Gbit/s`, "NATS hop p50 ms"], rows) +
    `\n\nv1 before inference was image + 4·3·640·640 = ${fmt(v1 / 1e6, 2)} MB of blobs; v2 sends ${fmt((camera.image.data.length + 3 * 640 * 640) / 1e6, 2)} MB ` +
    `(**${fmt(v1 / (camera.image.data.length + 3 * 640 * 640), 2)}×** less), ${fmt(camera.image.data.length / 1e6, 2)} MB after nms. ` +
    `Between infer-onnx and nms the whole YOLO output would add ${fmt((25200 * 85 * 4) / 1e6, 2)} MB (over the shipped 8 MB max_payload); its ${kept} candidate anchors add ${fmt((kept * 85 * 4) / 1e6, 3)} MB.\n`
  );
}
