import { byteTensor, tensorPixels } from "../core/byte-tensor.ts";
import { codedError } from "../core/errors.ts";
import { createLogger } from "../core/log.ts";
import { decode as jsDecodeJpeg, encode as jsEncodeJpeg } from "jpeg-js";
import * as v from "valibot";
import { seal, type Event, type Frame, type Image, type Message, type Predictions } from "../core/message.ts";
import { scanJpeg } from "./jpeg-header.ts";

/**
 * framewire wire format v2 (see docs/wire-format.md).
 *
 * A frame crossing processes is one NATS message:
 *   "FWM2" (4 bytes) | meta length (uint32, big-endian) | meta (UTF-8 JSON) | blobs
 * `meta.blobs` lists the binary sections that follow, in order, with their
 * byte lengths: `image` (pixels as meta.image.format says, a JPEG when
 * meta.image.encoding is "jpeg", or one H.264/HEVC access unit) and, when
 * present, `tensor` (uint8, the letterboxed model input; values are byte/255)
 * and `predictions` (float32 little-endian).
 * Events and results travel as plain JSON (no magic), readable by any client.
 *
 * Two entry points each way: {@link encodeMessageAsync} / {@link decodeMessageAsync}
 * code JPEG links with sharp (libvips, off the JavaScript thread) and are
 * what the NATS bus uses; {@link encodeMessage} / {@link decodeMessage} are
 * synchronous and code JPEG with jpeg-js (pure JavaScript, ~10× slower), for
 * callers that cannot wait (NatsBus.encode as routing.ts calls it). Both
 * write and read the same bytes.
 */
export const WIRE_VERSION = 2;
const MAGIC = [0x46, 0x57, 0x4d, 0x32]; // "FWM2"
const MAGIC_V1 = [0x46, 0x57, 0x4d, 0x31]; // "FWM1"

/** A message on a subject that is not framewire wire format v2. */
export const WireFormatError = codedError("WireFormatError", "E_WIRE_FORMAT");
export type WireFormatError = InstanceType<typeof WireFormatError>;

/**
 * A frame whose declared sizes are over the {@link WIRE_LIMITS} or out of
 * proportion to the bytes it carries (a decompression bomb, a tensor of
 * 10^15 values, a 100 MB video packet): refused before anything is decoded
 * or allocated for it. Also a WireFormatError; its own code is `E_WIRE_LIMIT`.
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
 * JPEG's own frame header before decoding; a video access unit by its bytes.
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
  /**
   * Largest H.264/HEVC access unit (format h264/hevc): 8 MiB, far above a
   * 4K keyframe at broadcast bitrates (~1-2 MB) and the NATS max_payload
   * pipelines/nats/*.conf set.
   */
  maxPacketBytes: 8 * 1024 * 1024,
  /** Dimensions of a tensor or predictions. */
  maxDims: 8,
  /**
   * Values per anchor of predictions (4 box values, objectness for YOLOv5,
   * a score per class): bounds an axis an empty blob cannot (no anchor kept).
   * LVIS's 1 203 classes fit.
   */
  maxYoloValues: 4096,
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
const Finite = v.pipe(v.number(), v.finite());
/** `frame.meta.video` of an encoded access unit: its codec, presentation time (ms) and whether it starts a GOP. */
const VideoSchema = v.strictObject({ codec: v.picklist(["h264", "hevc"]), pts: Finite, keyframe: v.boolean() });
/** The frame's metadata bag: known keys checked, the rest (user operators' data) passed on as JSON. */
const MetaSchema = v.looseObject({ tracks: v.optional(v.array(TrackSchema)), video: v.optional(VideoSchema) });
/** Every dimension at least 1: a zero would let dims of any size claim an empty blob. */
const Dims = v.pipe(v.array(v.pipe(v.number(), v.integer(), v.minValue(1))), v.minLength(1), v.maxLength(WIRE_LIMITS.maxDims));
/** Predictions may hold no anchor at all (infer-onnx's minScore keeps only candidates); checkYolo checks the rest. */
const PredictionDims = v.pipe(v.array(v.pipe(v.number(), v.integer(), v.minValue(0))), v.minLength(1), v.maxLength(WIRE_LIMITS.maxDims));

const PIXEL_FORMATS = ["rgb24", "bgr24", "jpeg", "h264", "hevc"] as const;
const isPacket = (format: string): format is "h264" | "hevc" => format === "h264" || format === "hevc";

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
    format: v.picklist(PIXEL_FORMATS),
    /** How the image blob is coded on the wire; absent means as `format` says. */
    encoding: v.optional(v.literal("jpeg")),
  }),
  tensor: v.optional(v.strictObject({ dims: Dims, dtype: v.literal("uint8"), letterbox: Letterbox })),
  predictions: v.optional(
    v.strictObject({
      layout: v.picklist(["yolov5", "yolov8"]),
      dims: PredictionDims,
      dtype: v.literal("float32"),
      classNames: v.array(v.string()),
      model: v.string(),
      minScore: v.optional(v.pipe(v.number(), v.minValue(0), v.maxValue(1))),
    }),
  ),
  detections: v.optional(v.array(DetectionSchema)),
  meta: v.optional(MetaSchema),
  timings: v.record(v.string(), v.number()),
  blobs: v.array(v.strictObject({ name: v.picklist(["image", "tensor", "predictions"]), length: v.pipe(v.number(), v.integer(), v.minValue(0)) })),
});
type FrameMeta = v.InferOutput<typeof FrameMeta>;

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
  /**
   * `jpeg` compresses rgb24/bgr24 images (lossy, ~20x smaller); tensors
   * (uint8) and predictions always travel raw, and so do JPEG and
   * H.264/HEVC images, which are coded already.
   */
  encoding?: "raw" | "jpeg";
  /** JPEG quality 1..100. */
  quality?: number;
}

/** rgb24/bgr24 pixels to a JPEG file and back, as the wire's JPEG links need. */
interface JpegCodec {
  readonly name: "sharp" | "jpeg-js";
  encode(img: Image, quality: number): Uint8Array | Promise<Uint8Array>;
  /** Called only after the blob's frame header passed {@link checkJpeg}. */
  decode(blob: Uint8Array, width: number, height: number, format: "rgb24" | "bgr24"): Uint8Array | Promise<Uint8Array>;
}

interface SyncJpegCodec extends JpegCodec {
  encode(img: Image, quality: number): Uint8Array;
  decode(blob: Uint8Array, width: number, height: number, format: "rgb24" | "bgr24"): Uint8Array;
}

/**
 * Serialises a message for NATS, synchronously: frames as the binary
 * envelope, events as JSON. A JPEG link is coded with jpeg-js here; prefer
 * {@link encodeMessageAsync} (sharp) where the caller can wait.
 * @throws WireFormatError for a tensor without its uint8 bytes (wire v2 carries no float32 tensors); WireLimitError for a video packet over WIRE_LIMITS.maxPacketBytes.
 * @example
 * const bytes = encodeMessage(frame); // Uint8Array starting "FWM2"
 * const same = decodeMessage(bytes);  // same stream, seq, pixels
 */
export function encodeMessage(msg: Message, o: WireOptions = {}): Uint8Array {
  if (msg.kind === "event") return enc.encode(JSON.stringify(msg));
  const jpeg = linkJpeg(msg, o);
  return assemble(msg, jpeg ? jsJpeg.encode(msg.image, o.quality ?? 85) : msg.image.data, jpeg);
}

/**
 * Serialises a message for NATS, JPEG links coded by sharp (libvips, in its
 * own threads): what the NATS bus publishes with.
 * @throws as {@link encodeMessage}.
 * @example
 * const bytes = await encodeMessageAsync(frame, { encoding: "jpeg", quality: 85 });
 * const same = await decodeMessageAsync(bytes); // same stream, seq; pixels within JPEG error
 */
export async function encodeMessageAsync(msg: Message, o: WireOptions = {}): Promise<Uint8Array> {
  if (msg.kind === "event") return enc.encode(JSON.stringify(msg));
  const jpeg = linkJpeg(msg, o);
  if (!jpeg) return assemble(msg, msg.image.data, false);
  checkSendable(msg);
  return assemble(msg, await (await jpegCodec()).encode(msg.image, o.quality ?? 85), true);
}

/**
 * Parses and validates a wire message, synchronously (a JPEG-coded image is
 * decoded by jpeg-js; prefer {@link decodeMessageAsync}).
 * @throws WireFormatError saying what is wrong (never a crash on foreign input); WireLimitError for declared sizes over the limits.
 * @example
 * const msg = decodeMessage(bytes); // a Frame or an Event
 */
export function decodeMessage(bytes: Uint8Array): Message {
  const p = parse(bytes);
  if (p.kind === "event") return p;
  return build(p, p.jpeg ? jpegDecode(jsJpeg, p) : p.blob);
}

/**
 * Parses and validates a wire message; a JPEG-coded image is decoded by
 * sharp, after its header passed every size check: what the NATS bus
 * receives with.
 * @throws as {@link decodeMessage} (the promise rejects).
 * @example
 * const msg = await decodeMessageAsync(m.data);
 */
export async function decodeMessageAsync(bytes: Uint8Array): Promise<Message> {
  const p = parse(bytes);
  if (p.kind === "event") return p;
  return build(p, p.jpeg ? await jpegDecode(await jpegCodec(), p) : p.blob);
}

/**
 * Which JPEG codec {@link encodeMessageAsync} and {@link decodeMessageAsync}
 * use: "sharp", or "jpeg-js" where sharp cannot load (logged once).
 * @example
 * await wireJpegCodec(); // "sharp"
 */
export async function wireJpegCodec(): Promise<"sharp" | "jpeg-js"> {
  return (await jpegCodec()).name;
}

/** Whether a link's `encoding: jpeg` applies to this frame: only raw pixels are JPEG-coded. */
function linkJpeg(f: Frame, o: WireOptions): boolean {
  return o.encoding === "jpeg" && (f.image.format === "rgb24" || f.image.format === "bgr24");
}

/** What the sender can check before coding anything: the tensor has its bytes, a packet is within the limit. */
function checkSendable(f: Frame): Uint8Array | undefined {
  const fmt = f.image.format;
  if (isPacket(fmt)) {
    const n = f.image.data.length;
    if (n < 1 || n > WIRE_LIMITS.maxPacketBytes) {
      throw new (n ? WireLimitError : WireFormatError)(`${fmt} access unit of ${describe(f)} is ${n} bytes; the wire carries 1..${WIRE_LIMITS.maxPacketBytes}`);
    }
    if (!f.meta?.video) throw new WireFormatError(`${describe(f)} is a ${fmt} access unit without meta.video (codec, pts, keyframe)`);
  }
  if (!f.tensor) return undefined;
  const pixels = tensorPixels(f.tensor);
  if (!pixels) {
    throw new WireFormatError(
      `${describe(f)} has a float32 tensor without its uint8 bytes (not made by resize): wire v2 carries tensors as uint8 only; ` +
        "keep the stage that made it and the one that reads it in one process",
    );
  }
  return pixels;
}

const describe = (f: Frame) => `frame ${f.stream}#${f.seq}`;

/** The envelope around an image blob already coded as it travels. */
function assemble(f: Frame, image: Uint8Array, jpeg: boolean): Uint8Array {
  const tensor = checkSendable(f);
  const blobs: { name: "image" | "tensor" | "predictions"; bytes: Uint8Array }[] = [{ name: "image", bytes: image }];
  if (f.tensor && tensor) blobs.push({ name: "tensor", bytes: tensor });
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
      ...(f.tensor ? { tensor: { dims: f.tensor.dims, dtype: "uint8", letterbox: f.tensor.letterbox } } : {}),
      ...(f.predictions ? { predictions: predictionsMeta(f.predictions) } : {}),
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

/** A frame message checked in full but for decoding its JPEG image, if it has one. */
interface Parsed {
  kind: "parsed";
  m: FrameMeta;
  /** The image blob as it travelled. */
  blob: Uint8Array;
  /** The blob is a JPEG of the rgb24/bgr24 pixels meta.image describes (a link's `encoding: jpeg`). */
  jpeg: boolean;
  tensor?: Uint8Array;
  predictions?: Float32Array;
}

/** Every check on a received message: an event, or a frame all of whose sizes are within its bytes and the limits. */
function parse(bytes: Uint8Array): Parsed | Event {
  if (bytes.length >= 8 && MAGIC.every((b, i) => bytes[i] === b)) return parseFrame(bytes);
  if (bytes.length >= 4 && MAGIC_V1.every((b, i) => bytes[i] === b)) {
    throw new WireFormatError(`frame is wire format v1 (FWM1); this framewire reads v${WIRE_VERSION}: upgrade the sender`);
  }
  let json: unknown;
  try {
    json = JSON.parse(dec.decode(bytes));
  } catch {
    throw new WireFormatError(`not framewire wire format v${WIRE_VERSION} (no FWM2 header, not JSON; ${bytes.length} bytes)`);
  }
  const r = v.safeParse(EventSchema, json);
  if (!r.success) throw new WireFormatError(`JSON message is not a framewire event: ${issuePath(r.issues[0])}`);
  return r.output as Event;
}

function parseFrame(bytes: Uint8Array): Parsed {
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
  const { encoding, width, height, format } = m.image;
  if (isPacket(format)) checkPacket(m, blob);
  else if (encoding === "jpeg" || format === "jpeg") checkJpeg(blob, width, height);
  else if (blob.length !== width * height * 3) {
    throw new WireFormatError(`image blob is ${blob.length} bytes, ${width}x${height} ${format} needs ${width * height * 3}`);
  }
  const tensor = m.tensor && sized(blobs.get("tensor"), m.tensor.dims, 1, "tensor");
  if (m.predictions) checkYolo(m.predictions.layout, m.predictions.dims);
  const predictions = m.predictions && floats(sized(blobs.get("predictions"), m.predictions.dims, 4, "predictions"), m.predictions.dims);
  return { kind: "parsed", m, blob, jpeg: encoding === "jpeg" && format !== "jpeg", tensor, predictions };
}

/** A video access unit: 1..maxPacketBytes, never JPEG-coded, its meta.video saying the same codec. */
function checkPacket(m: FrameMeta, blob: Uint8Array): void {
  const format = m.image.format;
  if (m.image.encoding) throw new WireFormatError(`a ${format} access unit cannot be ${m.image.encoding}-encoded`);
  if (blob.length > WIRE_LIMITS.maxPacketBytes) {
    throw new WireLimitError(`${format} access unit is ${blob.length} bytes; the wire limit is ${WIRE_LIMITS.maxPacketBytes}`);
  }
  if (blob.length === 0) throw new WireFormatError(`${format} access unit is empty`);
  const video = m.meta?.video;
  if (!video) throw new WireFormatError(`a ${format} frame needs meta.video (codec, pts, keyframe)`);
  if (video.codec !== format) throw new WireFormatError(`meta.video.codec is ${video.codec}, meta.image.format is ${format}`);
}

/** The blob decoded by `codec`, checked to be the size its meta (and its own header) declared. */
function jpegDecode<R>(codec: { decode(blob: Uint8Array, width: number, height: number, format: "rgb24" | "bgr24"): R }, p: Parsed): R {
  const { width, height, format } = p.m.image;
  return codec.decode(p.blob, width, height, format as "rgb24" | "bgr24");
}

function build(p: Parsed, image: Uint8Array): Frame {
  const { m } = p;
  const { encoding: _, ...img } = m.image;
  return seal({
    kind: "frame",
    stream: m.stream,
    seq: m.seq,
    ts: m.ts,
    live: m.live,
    image: { ...img, data: image },
    timings: m.timings,
    // The same lazy tensor `resize` makes: inference copies the bytes and normalises in its own thread.
    ...(m.tensor && p.tensor ? { tensor: byteTensor(m.tensor.dims, p.tensor, m.tensor.letterbox) } : {}),
    ...(m.predictions && p.predictions
      ? { predictions: { ...withoutDtype(m.predictions), data: p.predictions } }
      : {}),
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

/** The predictions' description in the meta: every field but the values, which travel as the blob. */
function predictionsMeta({ data: _values, ...described }: Predictions): v.InferOutput<typeof FrameMeta>["predictions"] {
  return { ...described, dtype: "float32" };
}

/** The predictions' description read back (the dtype is always float32, so the frame does not carry it). */
function withoutDtype({ dtype: _dtype, ...described }: NonNullable<v.InferOutput<typeof FrameMeta>["predictions"]>): Omit<Predictions, "data"> {
  return described;
}

/** Predictions must have a YOLO head's shape: 1×N×(5+C) (YOLOv5) or 1×(4+C)×N (YOLOv8), C ≥ 1. */
function checkYolo(layout: "yolov5" | "yolov8", dims: number[]): void {
  const shape = `[${dims.join(",")}]`;
  if (dims.length !== 3 || dims[0] !== 1) throw new WireFormatError(`predictions dims ${shape} are not a YOLO output (expected 1×N×(5+C) or 1×(4+C)×N)`);
  // The anchor axis may be 0 (no candidate kept); the values per anchor are bounded on their own, as an empty blob bounds nothing.
  const values = dims[layout === "yolov5" ? 2 : 1];
  if (values > WIRE_LIMITS.maxYoloValues) {
    throw new WireLimitError(`predictions dims ${shape}: ${values} values per anchor, more than the ${WIRE_LIMITS.maxYoloValues} the wire accepts`);
  }
  if (layout === "yolov5" && dims[2] < 6) throw new WireFormatError(`predictions dims ${shape}: a yolov5 row needs 5 + at least 1 class values`);
  if (layout === "yolov8" && dims[1] < 5) throw new WireFormatError(`predictions dims ${shape}: a yolov8 column needs 4 + at least 1 class values`);
}

/**
 * A blob whose length is exactly product(dims) × `width` bytes (every dim
 * is at least 1, so no dim exceeds the values the blob holds).
 */
function sized(blob: Uint8Array | undefined, dims: number[], width: number, name: string): Uint8Array {
  const need = dims.reduce((a, b) => a * b, 1) * width;
  if (!blob || blob.length !== need) {
    const said = Number.isSafeInteger(need) ? String(need) : `${need.toExponential(2)}`;
    throw new (need > (blob?.length ?? 0) ? WireLimitError : WireFormatError)(`${name} blob is ${blob?.length ?? 0} bytes, dims [${dims.join(",")}] need ${said}`);
  }
  return blob;
}

/** Float32 view of a sized blob; copies only when the blob is not 4-byte aligned. */
function floats(blob: Uint8Array, dims: number[]): Float32Array {
  const n = dims.reduce((a, b) => a * b, 1);
  if (blob.byteOffset % 4 === 0) return new Float32Array(blob.buffer, blob.byteOffset, n);
  // A real copy: on a Node Buffer (what nats.js may hand over) slice() is a view of the whole socket buffer.
  const copy = new Uint8Array(blob.length);
  copy.set(blob);
  return new Float32Array(copy.buffer, 0, n);
}

function floatBytes(a: Float32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** rgb24 from bgr24 or back: a new array with the first and third byte of each pixel swapped. */
function swapRB(px: Uint8Array): Uint8Array {
  const out = new Uint8Array(px.length);
  for (let i = 0; i < px.length; i += 3) {
    out[i] = px[i + 2];
    out[i + 1] = px[i + 1];
    out[i + 2] = px[i];
  }
  return out;
}

/** jpeg-js: pure JavaScript, synchronous (RGBA in, RGB out). */
const jsJpeg: SyncJpegCodec = {
  name: "jpeg-js",
  encode(img, quality) {
    const n = img.width * img.height;
    const rgba = new Uint8Array(n * 4);
    const [r, b] = img.format === "bgr24" ? [2, 0] : [0, 2];
    for (let i = 0, j = 0; i < n * 3; i += 3, j += 4) {
      rgba[j] = img.data[i + r];
      rgba[j + 1] = img.data[i + 1];
      rgba[j + 2] = img.data[i + b];
      rgba[j + 3] = 255;
    }
    const out = jsEncodeJpeg({ width: img.width, height: img.height, data: rgba }, quality).data;
    return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
  },
  decode(blob, width, height, format) {
    let img;
    try {
      img = jsDecodeJpeg(blob, { useTArray: true, formatAsRGBA: false, maxResolutionInMP: Math.ceil(WIRE_LIMITS.maxJpegPixels / 1e6) });
    } catch (e) {
      throw new WireFormatError(`image blob is not a decodable JPEG: ${(e as Error).message}`);
    }
    if (img.width !== width || img.height !== height) throw new WireFormatError(`JPEG is ${img.width}x${img.height}, meta says ${width}x${height}`);
    const px = img.data;
    if (format === "bgr24") {
      for (let i = 0; i < px.length; i += 3) [px[i], px[i + 2]] = [px[i + 2], px[i]];
    }
    return px;
  },
};

type Sharp = typeof import("sharp").default;

/** sharp (libvips): coding runs in libvips' threads, the JavaScript thread only awaits. */
function sharpJpeg(sharp: Sharp): JpegCodec {
  // Frames are never coded twice: the operation cache would only hold buffers.
  sharp.cache(false);
  return {
    name: "sharp",
    async encode(img, quality) {
      const rgb = img.format === "bgr24" ? swapRB(img.data) : img.data;
      const out = await sharp(rgb, { raw: { width: img.width, height: img.height, channels: 3 } })
        .jpeg({ quality, chromaSubsampling: "4:2:0" })
        .toBuffer();
      return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
    },
    async decode(blob, width, height, format) {
      let r;
      try {
        r = await sharp(blob, { limitInputPixels: WIRE_LIMITS.maxJpegPixels, failOn: "warning", autoOrient: false })
          .toColourspace("srgb")
          .removeAlpha()
          .raw()
          .toBuffer({ resolveWithObject: true });
      } catch (e) {
        throw new WireFormatError(`image blob is not a decodable JPEG: ${(e as Error).message}`);
      }
      const { info, data } = r;
      if (info.width !== width || info.height !== height || info.channels !== 3 || data.length !== width * height * 3) {
        throw new WireFormatError(`JPEG decoded to ${info.width}x${info.height}x${info.channels}, meta says ${width}x${height}x3`);
      }
      const px = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      return format === "bgr24" ? swapRB(px) : px;
    },
  };
}

let codec: Promise<JpegCodec> | undefined;

/** sharp, loaded on first use; jpeg-js (one log line) where it cannot load. */
function jpegCodec(): Promise<JpegCodec> {
  return (codec ??= import("sharp").then(
    (m) => sharpJpeg(m.default),
    (e: Error) => {
      createLogger("wire").warn(`sharp cannot load (${e.message}): JPEG links are coded with jpeg-js (pure JavaScript, ~10x slower)`);
      return jsJpeg;
    },
  ));
}

function issuePath(issue: v.BaseIssue<unknown>): string {
  const path = (issue.path ?? []).map((p) => String(p.key)).join(".");
  return `${path || "(root)"}: ${issue.message}`;
}
