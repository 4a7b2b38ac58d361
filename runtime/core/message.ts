/**
 * Messages that flow between stages. In one process they are passed by
 * reference and shared by every subscriber, so a message is immutable once
 * emitted: a stage that adds something returns a new message
 * ({@link derive}) sharing the read-only pixel and tensor buffers of the one
 * it received. The runtime freezes what stages emit, so a stage that writes
 * into a received frame fails loudly instead of corrupting its neighbours.
 */

/**
 * How `Image.data` is coded: raw pixels (rgb24, bgr24: 3 bytes a pixel, no
 * padding), a JPEG file, or one encoded video access unit (h264, hevc:
 * Annex B, parameter sets in-band before each keyframe; `meta.video` says
 * pts and keyframe) as `ingest` with `decode: false` relays it.
 */
export type PixelFormat = "rgb24" | "bgr24" | "jpeg" | "h264" | "hevc";

export interface Image {
  width: number;
  height: number;
  format: PixelFormat;
  data: Uint8Array;
}

/** How a source image was fitted into a model input, so boxes map back. */
export interface Letterbox {
  /** model pixels per source pixel, per axis (equal for letterbox, may differ for stretch) */
  scaleX: number;
  scaleY: number;
  padX: number;
  padY: number;
}

export interface Tensor {
  dims: number[];
  dtype: "float32";
  data: Float32Array;
  letterbox: Letterbox;
}

/** Raw model output, decoded into detections by `nms`. */
export interface Predictions {
  layout: "yolov5" | "yolov8";
  dims: number[];
  data: Float32Array;
  classNames: string[];
  model: string;
  /**
   * Anchors that could not reach this score were left out before the
   * predictions were made (infer-onnx's `minScore`): decoding at a lower
   * confidence finds nothing more.
   */
  minScore?: number;
}

export interface Detection {
  readonly class: string;
  readonly classId: number;
  readonly score: number;
  /** [x1, y1, x2, y2] in source-image pixels. */
  readonly box: readonly [number, number, number, number];
  readonly trackId?: number;
}

/** One confirmed track, as the tracker reports it in `frame.meta.tracks`. */
export interface TrackInfo {
  readonly id: number;
  /** [x1, y1, x2, y2] in source pixels: the filter's estimate, also while lost. */
  readonly box: readonly [number, number, number, number];
  readonly state: "tracked" | "lost";
  /** Frames since the track started. */
  readonly age: number;
  readonly hits: number;
  readonly class: string;
  /** Score of the last matched detection. */
  readonly score: number;
}

/**
 * The typed, extensible metadata bag of a frame: what stages attach besides
 * detections (the tracker's tracks, a user operator's data). Carried in
 * memory and on the NATS wire (as JSON). Operators add their own keys by
 * declaration merging:
 * @example
 * declare module "framewire" {
 *   interface FrameMeta { blur?: { faces: number } }
 * }
 */
/** What `meta.video` says of an encoded access unit. */
export interface VideoPacketInfo {
  codec: "h264" | "hevc";
  pts: number;
  keyframe: boolean;
}

export interface FrameMeta {
  /** Every confirmed track after the tracker (tracked and lost). */
  tracks?: readonly TrackInfo[];
  /** On an encoded access unit (image.format h264/hevc): its codec, presentation time (ms from the stream's start) and whether it is a keyframe. */
  video?: VideoPacketInfo;
  [key: string]: unknown;
}

export interface Frame {
  readonly kind: "frame";
  /** The stream (camera) id; per-stream state is keyed by it. */
  readonly stream: string;
  /** Per-stream sequence number, increasing. */
  readonly seq: number;
  /** Capture time, ms since the Unix epoch. */
  readonly ts: number;
  /** Live frames may be dropped under overload; file frames are backpressured instead. */
  readonly live: boolean;
  readonly image: Image;
  readonly tensor?: Tensor;
  readonly predictions?: Predictions;
  readonly detections?: readonly Detection[];
  /** Typed metadata of later stages (see {@link FrameMeta}). */
  readonly meta?: Readonly<FrameMeta>;
  /** Milliseconds spent in each stage, by stage id. */
  readonly timings: Readonly<Record<string, number>>;
}

/** Results that must never be dropped (analytics events and the like). */
export interface Event {
  readonly kind: "event";
  readonly stream: string;
  readonly seq: number;
  readonly ts: number;
  readonly type: string;
  readonly data: Readonly<Record<string, unknown>>;
}

export type Message = Frame | Event;

/** True when this message may be dropped under overload. */
export function isDroppable(msg: Message): boolean {
  return msg.kind === "frame" && msg.live;
}

/** What {@link derive} may change; `meta` entries are merged into the frame's bag. */
export type FrameChanges = Partial<Omit<Frame, "kind" | "meta">> & { meta?: Partial<FrameMeta> };

/**
 * A new frame: `frame` with `changes` applied (a key set to undefined is
 * removed), metadata merged. The buffers are shared, never copied; the
 * result is frozen like every emitted message.
 * @example
 * return derive(frame, { detections, predictions: undefined });
 */
export function derive(frame: Frame, changes: FrameChanges): Frame {
  const out: Record<string, unknown> = { ...frame, ...changes };
  if (changes.meta) out.meta = Object.freeze({ ...frame.meta, ...changes.meta });
  for (const k of Object.keys(changes)) if (out[k] === undefined) delete out[k];
  return seal(out as unknown as Frame);
}

/**
 * Freezes a message and its small parts (detections, timings, metadata) so a
 * stage cannot change what other stages share; pixel and tensor buffers are
 * read-only by contract (typed arrays cannot be frozen). Idempotent and cheap.
 */
export function seal<M extends Message>(msg: M): M {
  if (Object.isFrozen(msg)) return msg;
  if (msg.kind === "frame") {
    const f = msg as Frame;
    if (f.detections) {
      for (const d of f.detections) Object.freeze(d);
      Object.freeze(f.detections);
    }
    Object.freeze(f.timings);
    if (f.meta) Object.freeze(f.meta);
  } else Object.freeze(msg.data);
  return Object.freeze(msg);
}
