import { codedError } from "../core/errors.ts";
import { decode as decodeJpeg, encode as encodeJpeg } from "jpeg-js";
import * as v from "valibot";
import { seal, type Frame, type Image, type Message } from "../core/message.ts";
import { scanJpeg } from "./jpeg-header.ts";

/**
 * framewire wire format v1 (see docs/wire-format.md).
 *
 * A frame crossing processes is one NATS message:
 *   "FWM1" (4 bytes) | meta length (uint32, big-endian) | meta (UTF-8 JSON) | blobs
 * `meta.blobs` lists the binary sections that follow, in order, with their
 * byte lengths: `image` (pixels as meta.image.format says, or a JPEG when
 * meta.image.encoding is "jpeg") and, when present, `tensor` (float32
 * little-endian) and `predictions` (float32 little-endian).
 * Events and results travel as plain JSON (no magic), readable by any client.
 */
export const WIRE_VERSION = 1;
const MAGIC = [0x46, 0x57, 0x4d, 0x31]; // "FWM1"

/** A message on a subject that is not framewire wire format v1. */
export const WireFormatError = codedError("WireFormatError", "E_WIRE_FORMAT");
export type WireFormatError = InstanceType<typeof WireFormatError>;

/**
 * A frame whose declared sizes are over the {@link WIRE_LIMITS} or out of
 * proportion to the bytes it carries (a decompression bomb, a tensor of
 * 10^15 values): refused before anything is decoded or allocated for it.
 * Also a WireFormatError; its own code is `E_WIRE_LIMIT`.
 * @example
 * try { decodeMessage(bytes); } catch (e) { if (e instanceof WireLimitError) console.log(e.code); } // "E_WIRE_LIMIT"
 */
export class WireLimitError extends WireFormatError {
  override name = "WireLimitError";
  override readonly code: string = "E_WIRE_LIMIT";
}

/**
 * What a received frame may declare. Raw images, tensors and predictions are
 * bounded by the bytes received (their blob must hold exactly what the meta
 * declares, every dimension at least 1); a JPEG blob, which a decoder
 * expands, by its pixels and by its compression ratio, both read from the
 * JPEG's own frame header before decoding.
 */
export const WIRE_LIMITS = {
  /** Longest image side (meta.image.width / height). */
  maxSide: 16_384,
  /** Most pixels a JPEG blob may decode to: 8K UHD (7680×4320). */
  maxJpegPixels: 7680 * 4320,
  /**
   * Most rgb24 bytes a JPEG blob may decode to per byte it holds. Baseline
   * JPEG needs at least 2 bits per 8×8 block, which caps a flat frame at
   * ~512:1 for 4:2:0 colour and 768:1 for grey (ffmpeg's flat 4K frame:
   * 509:1; jpeg-js, 4:4:4: ~110:1); a forged header declaring 8000×8000 in
   * 2 KB is ~87 000:1.
   */
  maxJpegRatio: 1024,
  /** Dimensions of a tensor or predictions. */
  maxDims: 8,
} as const;

const Letterbox = v.strictObject({
  scaleX: v.pipe(v.number(), v.finite(), v.gtValue(0)),
  scaleY: v.pipe(v.number(), v.finite(), v.gtValue(0)),
  padX: v.pipe(v.number(), v.finite()),
  padY: v.pipe(v.number(), v.finite()),
});
const Box = v.tuple([v.number(), v.number(), v.number(), v.number()]);
const DetectionSchema = v.object({
  class: v.string(),
  classId: v.pipe(v.number(), v.integer()),
  score: v.number(),
  box: Box,
  trackId: v.optional(v.pipe(v.number(), v.integer())),
});
const TrackSchema = v.object({
  id: v.pipe(v.number(), v.integer()),
  box: Box,
  state: v.picklist(["tracked", "lost"]),
  age: v.number(),
  hits: v.number(),
  class: v.string(),
  score: v.number(),
});
/** The frame's metadata bag: known keys checked, the rest (user operators' data) passed on as JSON. */
const MetaSchema = v.looseObject({ tracks: v.optional(v.array(TrackSchema)) });
/** Every dimension at least 1: a zero would let dims of any size claim an empty blob. */
const Dims = v.pipe(v.array(v.pipe(v.number(), v.integer(), v.minValue(1))), v.minLength(1), v.maxLength(WIRE_LIMITS.maxDims));
const Finite = v.pipe(v.number(), v.finite());

const FrameMeta = v.strictObject({
  v: v.literal(WIRE_VERSION),
  kind: v.literal("frame"),
  stream: v.string(),
  seq: v.pipe(v.number(), v.integer(), v.minValue(0)),
  ts: Finite,
  live: v.boolean(),
  image: v.strictObject({
    width: v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(WIRE_LIMITS.maxSide)),
    height: v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(WIRE_LIMITS.maxSide)),
    format: v.picklist(["rgb24", "bgr24", "jpeg"]),
    /** How the image blob is coded on the wire; absent means as `format` says. */
    encoding: v.optional(v.literal("jpeg")),
  }),
  tensor: v.optional(v.strictObject({ dims: Dims, dtype: v.literal("float32"), letterbox: Letterbox })),
  predictions: v.optional(
    v.strictObject({ layout: v.picklist(["yolov5", "yolov8"]), dims: Dims, classNames: v.array(v.string()), model: v.string() }),
  ),
  detections: v.optional(v.array(DetectionSchema)),
  meta: v.optional(MetaSchema),
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

/** How a link puts frames on the wire (a stage's `link:` in the pipeline file). */
export interface WireOptions {
  /** `jpeg` compresses rgb24/bgr24 images (lossy, ~20x smaller); tensors and predictions always travel raw. */
  encoding?: "raw" | "jpeg";
  /** JPEG quality 1..100. */
  quality?: number;
}

/**
 * Serialises a message for NATS: frames as the binary envelope, events as JSON.
 * @example
 * const bytes = encodeMessage(frame, { encoding: "jpeg", quality: 85 });
 * const same = decodeMessage(bytes); // same stream, seq; pixels within JPEG error
 */
export function encodeMessage(msg: Message, o: WireOptions = {}): Uint8Array {
  if (msg.kind === "event") return enc.encode(JSON.stringify(msg));
  const f: Frame = msg;
  const jpeg = o.encoding === "jpeg" && f.image.format !== "jpeg";
  const blobs: { name: "image" | "tensor" | "predictions"; bytes: Uint8Array }[] = [
    { name: "image", bytes: jpeg ? toJpeg(f.image, o.quality ?? 85) : f.image.data },
  ];
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
      image: { width: f.image.width, height: f.image.height, format: f.image.format, ...(jpeg ? { encoding: "jpeg" } : {}) },
      ...(f.tensor ? { tensor: { dims: f.tensor.dims, dtype: f.tensor.dtype, letterbox: f.tensor.letterbox } } : {}),
      ...(f.predictions ? { predictions: { layout: f.predictions.layout, dims: f.predictions.dims, classNames: f.predictions.classNames, model: f.predictions.model } } : {}),
      ...(f.detections ? { detections: f.detections } : {}),
      ...(f.meta ? { meta: f.meta } : {}),
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
  const version = (json as { v?: unknown } | null)?.v;
  if (version === undefined) throw new WireFormatError("frame meta has no wire format version (v)");
  if (version !== WIRE_VERSION) throw new WireFormatError(`frame is wire format v${String(version)}; this framewire reads v${WIRE_VERSION}`);
  const r = v.safeParse(FrameMeta, json);
  if (!r.success) throw new WireFormatError(`frame meta invalid: ${issuePath(r.issues[0])}`);
  const m = r.output;
  // Every size is checked against the bytes received before anything is decoded or allocated.
  const expected = 8 + metaLen + m.blobs.reduce((a, b) => a + b.length, 0);
  if (expected !== bytes.length) throw new WireFormatError(`frame is ${bytes.length} bytes, its meta declares ${expected}`);
  const blobs = new Map<string, Uint8Array>();
  let off = 8 + metaLen;
  for (const b of m.blobs) {
    if (blobs.has(b.name)) throw new WireFormatError(`frame lists the ${b.name} blob twice`);
    blobs.set(b.name, bytes.subarray(off, off + b.length));
    off += b.length;
  }
  const blob = blobs.get("image");
  if (!blob) throw new WireFormatError("frame has no image blob");
  for (const name of ["tensor", "predictions"] as const) {
    if (blobs.has(name) !== (m[name] !== undefined)) {
      throw new WireFormatError(m[name] ? `frame meta has ${name} but no ${name} blob` : `frame has a ${name} blob but no ${name} in its meta`);
    }
  }
  const { encoding, ...img } = m.image;
  const jpeg = encoding === "jpeg" || img.format === "jpeg";
  if (jpeg) checkJpeg(blob, img.width, img.height);
  else if (blob.length !== img.width * img.height * 3) {
    throw new WireFormatError(`image blob is ${blob.length} bytes, ${img.width}x${img.height} ${img.format} needs ${img.width * img.height * 3}`);
  }
  const tensor = m.tensor && floats(blobs.get("tensor"), m.tensor.dims, "tensor");
  if (m.predictions) checkYolo(m.predictions.layout, m.predictions.dims);
  const predictions = m.predictions && floats(blobs.get("predictions"), m.predictions.dims, "predictions");
  const image = encoding === "jpeg" && img.format !== "jpeg" ? fromJpeg(blob, img.width, img.height, img.format) : blob;
  return seal({
    kind: "frame",
    stream: m.stream,
    seq: m.seq,
    ts: m.ts,
    live: m.live,
    image: { ...img, data: image },
    timings: m.timings,
    ...(m.tensor && tensor ? { tensor: { dims: m.tensor.dims, dtype: "float32", data: tensor, letterbox: m.tensor.letterbox } } : {}),
    ...(m.predictions && predictions ? { predictions: { ...m.predictions, data: predictions } } : {}),
    ...(m.detections ? { detections: m.detections } : {}),
    ...(m.meta ? { meta: m.meta } : {}),
  } satisfies Frame);
}

/**
 * A JPEG blob's own frame header against the meta and the limits, before a
 * decoder sees it: the size it declares must be the meta's, at most
 * {@link WIRE_LIMITS}.maxJpegPixels, and at most maxJpegRatio times the
 * blob's bytes once decoded.
 */
function checkJpeg(blob: Uint8Array, width: number, height: number): void {
  const scan = scanJpeg(blob);
  if (!scan.ok) throw new WireFormatError(`image blob is not a decodable JPEG: ${scan.reason}`);
  const f = scan.frame;
  if (f.width !== width || f.height !== height) throw new WireFormatError(`JPEG frame header declares ${f.width}x${f.height}, meta says ${width}x${height}`);
  const pixels = width * height;
  if (pixels > WIRE_LIMITS.maxJpegPixels) {
    throw new WireLimitError(`JPEG frame header declares ${width}x${height} (${(pixels / 1e6).toFixed(1)} MP); the wire limit is ${(WIRE_LIMITS.maxJpegPixels / 1e6).toFixed(1)} MP`);
  }
  const ratio = (pixels * 3) / blob.length;
  if (ratio > WIRE_LIMITS.maxJpegRatio) {
    throw new WireLimitError(
      `JPEG frame header declares ${width}x${height} (${pixels * 3} bytes decoded) in a ${blob.length}-byte blob: ` +
        `${Math.round(ratio)}:1, more than the ${WIRE_LIMITS.maxJpegRatio}:1 any real JPEG reaches`,
    );
  }
}

/** Predictions must have a YOLO head's shape: 1×N×(5+C) (YOLOv5) or 1×(4+C)×N (YOLOv8), C ≥ 1. */
function checkYolo(layout: "yolov5" | "yolov8", dims: number[]): void {
  const shape = `[${dims.join(",")}]`;
  if (dims.length !== 3 || dims[0] !== 1) throw new WireFormatError(`predictions dims ${shape} are not a YOLO output (expected 1×N×(5+C) or 1×(4+C)×N)`);
  if (layout === "yolov5" && dims[2] < 6) throw new WireFormatError(`predictions dims ${shape}: a yolov5 row needs 5 + at least 1 class values`);
  if (layout === "yolov8" && dims[1] < 5) throw new WireFormatError(`predictions dims ${shape}: a yolov8 column needs 4 + at least 1 class values`);
}

/** rgb24/bgr24 pixels as a baseline JPEG (jpeg-js wants RGBA in RGB order). */
function toJpeg(img: Image, quality: number): Uint8Array {
  const n = img.width * img.height;
  const rgba = new Uint8Array(n * 4);
  const [r, b] = img.format === "bgr24" ? [2, 0] : [0, 2];
  for (let i = 0, j = 0; i < n * 3; i += 3, j += 4) {
    rgba[j] = img.data[i + r];
    rgba[j + 1] = img.data[i + 1];
    rgba[j + 2] = img.data[i + b];
    rgba[j + 3] = 255;
  }
  const out = encodeJpeg({ width: img.width, height: img.height, data: rgba }, quality).data;
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

/** A JPEG blob back to the pixel format the sender had. */
function fromJpeg(blob: Uint8Array, width: number, height: number, format: "rgb24" | "bgr24"): Uint8Array {
  let img;
  try {
    img = decodeJpeg(blob, { useTArray: true, formatAsRGBA: false, maxResolutionInMP: Math.ceil(WIRE_LIMITS.maxJpegPixels / 1e6) });
  } catch (e) {
    throw new WireFormatError(`image blob is not a decodable JPEG: ${(e as Error).message}`);
  }
  if (img.width !== width || img.height !== height) throw new WireFormatError(`JPEG is ${img.width}x${img.height}, meta says ${width}x${height}`);
  const px = img.data;
  if (format === "bgr24") {
    for (let i = 0; i < px.length; i += 3) [px[i], px[i + 2]] = [px[i + 2], px[i]];
  }
  return px;
}

function floatBytes(a: Float32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/**
 * Float32 view of a blob whose length is exactly product(dims) × 4 (every
 * dim is at least 1, so no dim exceeds the values the blob holds); copies
 * only when the blob is not 4-byte aligned.
 */
function floats(blob: Uint8Array | undefined, dims: number[], name: string): Float32Array {
  const n = dims.reduce((a, b) => a * b, 1);
  if (!blob || blob.length !== n * 4) {
    const need = Number.isSafeInteger(n * 4) ? String(n * 4) : `${(n * 4).toExponential(2)}`;
    throw new (n * 4 > (blob?.length ?? 0) ? WireLimitError : WireFormatError)(`${name} blob is ${blob?.length ?? 0} bytes, dims [${dims.join(",")}] need ${need}`);
  }
  if (blob.byteOffset % 4 === 0) return new Float32Array(blob.buffer, blob.byteOffset, n);
  // A real copy: on a Node Buffer (what nats.js may hand over) slice() is a view of the whole socket buffer.
  const copy = new Uint8Array(blob.length);
  copy.set(blob);
  return new Float32Array(copy.buffer, 0, n);
}

function issuePath(issue: v.BaseIssue<unknown>): string {
  const path = (issue.path ?? []).map((p) => String(p.key)).join(".");
  return `${path || "(root)"}: ${issue.message}`;
}
