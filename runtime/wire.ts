import * as v from "valibot";
import type { Frame, Message } from "./message.ts";

/**
 * framewire wire format v1 (see docs/wire-format.md).
 *
 * A frame crossing processes is one NATS message:
 *   "FWM1" (4 bytes) | meta length (uint32, big-endian) | meta (UTF-8 JSON) | blobs
 * `meta.blobs` lists the binary sections that follow, in order, with their
 * byte lengths: `image` (pixels as meta.image.format says) and, when present,
 * `tensor` (float32 little-endian) and `predictions` (float32 little-endian).
 * Events and results travel as plain JSON (no magic), readable by any client.
 */
export const WIRE_VERSION = 1;
const MAGIC = [0x46, 0x57, 0x4d, 0x31]; // "FWM1"

/** A message on a subject that is not framewire wire format v1. */
export class WireFormatError extends Error {
  override name = "WireFormatError";
}

const Letterbox = v.strictObject({ scaleX: v.number(), scaleY: v.number(), padX: v.number(), padY: v.number() });
const Box = v.tuple([v.number(), v.number(), v.number(), v.number()]);
const DetectionSchema = v.object({
  class: v.string(),
  classId: v.pipe(v.number(), v.integer()),
  score: v.number(),
  box: Box,
  trackId: v.optional(v.pipe(v.number(), v.integer())),
});
const Dims = v.pipe(v.array(v.pipe(v.number(), v.integer(), v.minValue(0))), v.maxLength(8));

const FrameMeta = v.strictObject({
  v: v.literal(WIRE_VERSION),
  kind: v.literal("frame"),
  stream: v.string(),
  seq: v.pipe(v.number(), v.integer(), v.minValue(0)),
  ts: v.number(),
  live: v.boolean(),
  image: v.strictObject({
    width: v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(16384)),
    height: v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(16384)),
    format: v.picklist(["rgb24", "bgr24", "jpeg"]),
  }),
  tensor: v.optional(v.strictObject({ dims: Dims, dtype: v.literal("float32"), letterbox: Letterbox })),
  predictions: v.optional(
    v.strictObject({ layout: v.picklist(["yolov5", "yolov8"]), dims: Dims, classNames: v.array(v.string()), model: v.string() }),
  ),
  detections: v.optional(v.array(DetectionSchema)),
  timings: v.record(v.string(), v.number()),
  blobs: v.array(v.strictObject({ name: v.picklist(["image", "tensor", "predictions"]), length: v.pipe(v.number(), v.integer(), v.minValue(0)) })),
});

const EventSchema = v.object({
  kind: v.literal("event"),
  stream: v.string(),
  seq: v.pipe(v.number(), v.integer()),
  ts: v.number(),
  type: v.string(),
  data: v.record(v.string(), v.unknown()),
});

const enc = new TextEncoder();
const dec = new TextDecoder();

/**
 * Serialises a message for NATS: frames as the binary envelope, events as JSON.
 * @example
 * const bytes = encodeMessage(frame);
 * const same = decodeMessage(bytes); // same stream, seq, pixels
 */
export function encodeMessage(msg: Message): Uint8Array {
  if (msg.kind === "event") return enc.encode(JSON.stringify(msg));
  const f: Frame = msg;
  const blobs: { name: "image" | "tensor" | "predictions"; bytes: Uint8Array }[] = [{ name: "image", bytes: f.image.data }];
  if (f.tensor) blobs.push({ name: "tensor", bytes: floatBytes(f.tensor.data) });
  if (f.predictions) blobs.push({ name: "predictions", bytes: floatBytes(f.predictions.data) });
  const meta = enc.encode(
    JSON.stringify({
      v: WIRE_VERSION,
      kind: "frame",
      stream: f.stream,
      seq: f.seq,
      ts: f.ts,
      live: f.live,
      image: { width: f.image.width, height: f.image.height, format: f.image.format },
      ...(f.tensor ? { tensor: { dims: f.tensor.dims, dtype: f.tensor.dtype, letterbox: f.tensor.letterbox } } : {}),
      ...(f.predictions ? { predictions: { layout: f.predictions.layout, dims: f.predictions.dims, classNames: f.predictions.classNames, model: f.predictions.model } } : {}),
      ...(f.detections ? { detections: f.detections } : {}),
      timings: f.timings,
      blobs: blobs.map((b) => ({ name: b.name, length: b.bytes.length })),
    }),
  );
  const total = 8 + meta.length + blobs.reduce((a, b) => a + b.bytes.length, 0);
  const out = new Uint8Array(total);
  out.set(MAGIC, 0);
  new DataView(out.buffer).setUint32(4, meta.length);
  out.set(meta, 8);
  let off = 8 + meta.length;
  for (const b of blobs) {
    out.set(b.bytes, off);
    off += b.bytes.length;
  }
  return out;
}

/**
 * Parses and validates a wire message.
 * @throws WireFormatError saying what is wrong (never a crash on foreign input).
 */
export function decodeMessage(bytes: Uint8Array): Message {
  if (bytes.length >= 8 && MAGIC.every((b, i) => bytes[i] === b)) return decodeFrame(bytes);
  let json: unknown;
  try {
    json = JSON.parse(dec.decode(bytes));
  } catch {
    throw new WireFormatError(`not framewire wire format v${WIRE_VERSION} (no FWM1 header, not JSON; ${bytes.length} bytes)`);
  }
  const r = v.safeParse(EventSchema, json);
  if (!r.success) throw new WireFormatError(`JSON message is not a framewire event: ${issuePath(r.issues[0])}`);
  return r.output as Message;
}

function decodeFrame(bytes: Uint8Array): Frame {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const metaLen = view.getUint32(4);
  if (8 + metaLen > bytes.length) throw new WireFormatError(`frame meta length ${metaLen} exceeds the message (${bytes.length} bytes)`);
  let json: unknown;
  try {
    json = JSON.parse(dec.decode(bytes.subarray(8, 8 + metaLen)));
  } catch {
    throw new WireFormatError("frame meta is not valid JSON");
  }
  const r = v.safeParse(FrameMeta, json);
  if (!r.success) throw new WireFormatError(`frame meta invalid: ${issuePath(r.issues[0])}`);
  const m = r.output;
  const expected = 8 + metaLen + m.blobs.reduce((a, b) => a + b.length, 0);
  if (expected !== bytes.length) throw new WireFormatError(`frame is ${bytes.length} bytes, its meta declares ${expected}`);
  const blobs = new Map<string, Uint8Array>();
  let off = 8 + metaLen;
  for (const b of m.blobs) {
    blobs.set(b.name, bytes.subarray(off, off + b.length));
    off += b.length;
  }
  const image = blobs.get("image");
  if (!image) throw new WireFormatError("frame has no image blob");
  if (m.image.format !== "jpeg" && image.length !== m.image.width * m.image.height * 3) {
    throw new WireFormatError(`image blob is ${image.length} bytes, ${m.image.width}x${m.image.height} ${m.image.format} needs ${m.image.width * m.image.height * 3}`);
  }
  const frame: Frame = { kind: "frame", stream: m.stream, seq: m.seq, ts: m.ts, live: m.live, image: { ...m.image, data: image }, timings: m.timings };
  if (m.tensor) {
    const data = floats(blobs.get("tensor"), m.tensor.dims, "tensor");
    frame.tensor = { dims: m.tensor.dims, dtype: "float32", data, letterbox: m.tensor.letterbox };
  }
  if (m.predictions) {
    frame.predictions = { ...m.predictions, data: floats(blobs.get("predictions"), m.predictions.dims, "predictions") };
  }
  if (m.detections) frame.detections = m.detections;
  return frame;
}

function floatBytes(a: Float32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** Float32 view of a blob; copies only when the blob is not 4-byte aligned. */
function floats(blob: Uint8Array | undefined, dims: number[], name: string): Float32Array {
  const n = dims.reduce((a, b) => a * b, 1);
  if (!blob || blob.length !== n * 4) throw new WireFormatError(`${name} blob is ${blob?.length ?? 0} bytes, dims [${dims.join(",")}] need ${n * 4}`);
  if (blob.byteOffset % 4 === 0) return new Float32Array(blob.buffer, blob.byteOffset, n);
  return new Float32Array(blob.slice().buffer);
}

function issuePath(issue: v.BaseIssue<unknown>): string {
  const path = (issue.path ?? []).map((p) => String(p.key)).join(".");
  return `${path || "(root)"}: ${issue.message}`;
}
