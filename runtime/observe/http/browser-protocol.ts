/**
 * What the browser page and the server say to each other: the page's
 * configuration (`GET /browser/config`), the tier answer (`GET /browser/tier`)
 * and the WebSocket messages of `/browser/ws`, as valibot schemas. The
 * server validates every message at its edge with them
 * (runtime/observe/http/browser.ts); the page is bundled with the same file.
 * Pure valibot: no DOM, no runtime APIs.
 *
 * The WebSocket, text frames of JSON only:
 *
 *   page → server   hello   { type, id?, token?, backend?, model? }     once, first
 *                   frame   { type, seq, ts, width, height, detections?, jpeg?, ms?, backend? }
 *   server → page   ready   { type, stream, frameFps, maxWidth }        after a valid hello
 *                   ack     { type, seq, detections? }                  each frame once on the bus (detections: server tier)
 *                   error   { type, error, fatal, seq? }                a refused message; fatal ones close the socket
 */
import * as v from "valibot";

/** Largest side of a published frame, in pixels. */
export const MAX_SIDE = 16_384;
/** Most detections one frame may carry. */
export const MAX_DETECTIONS = 1000;

const Finite = v.pipe(v.number(), v.finite());
const Side = v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(MAX_SIDE));

/** A detection as `POST /detect` answers it: class name, score, [x1, y1, x2, y2] in image pixels. */
export const WireDetection = v.strictObject({
  class: v.pipe(v.string(), v.minLength(1), v.maxLength(128)),
  score: v.pipe(v.number(), v.minValue(0), v.maxValue(1)),
  box: v.tuple([Finite, Finite, Finite, Finite]),
});
export type WireDetection = v.InferOutput<typeof WireDetection>;

/** A detection as the page publishes it: with the model's class id, which the tracker keeps tracks apart by. */
export const PublishedDetection = v.strictObject({
  ...WireDetection.entries,
  classId: v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(1_000_000)),
});
export type PublishedDetection = v.InferOutput<typeof PublishedDetection>;

/** A client-chosen stream suffix: the stream is `browser-<id>`. */
export const StreamSuffix = v.pipe(v.string(), v.regex(/^[A-Za-z0-9_-]{1,40}$/, "expected 1 to 40 of A-Z a-z 0-9 _ -"));

export const HelloMessage = v.strictObject({
  type: v.literal("hello"),
  /** The stream is `browser-<id>`; the server picks one when absent. */
  id: v.optional(StreamSuffix),
  /** The HTTP server's control token, where it has one. */
  token: v.optional(v.pipe(v.string(), v.maxLength(512))),
  /** Where the page runs its model: "wasm", "webgpu" (shown in the frames' metadata). */
  backend: v.optional(v.pipe(v.string(), v.maxLength(32))),
  model: v.optional(v.pipe(v.string(), v.maxLength(256))),
});
export type HelloMessage = v.InferOutput<typeof HelloMessage>;

export const FrameMessage = v.strictObject({
  type: v.literal("frame"),
  /** Increasing per connection. */
  seq: v.pipe(v.number(), v.integer(), v.minValue(0)),
  /** Capture time, ms since the Unix epoch. */
  ts: Finite,
  /** The frame's size: detection boxes are in these pixels, and a `jpeg` must have this size. */
  width: Side,
  height: Side,
  /** Detections computed in the browser; absent: the server tier detects them (needs `jpeg`). */
  detections: v.optional(v.pipe(v.array(PublishedDetection), v.maxLength(MAX_DETECTIONS))),
  /** The frame as a base64 JPEG (at a low rate, if asked). */
  jpeg: v.optional(v.pipe(v.string(), v.minLength(4), v.regex(/^[A-Za-z0-9+/]+={0,2}$/, "expected base64"))),
  /** In-browser inference time of this frame, ms. */
  ms: v.optional(v.pipe(v.number(), v.minValue(0))),
  backend: v.optional(v.pipe(v.string(), v.maxLength(32))),
});
export type FrameMessage = v.InferOutput<typeof FrameMessage>;

/** Any message from the page. */
export const ClientMessage = v.variant("type", [HelloMessage, FrameMessage]);
export type ClientMessage = v.InferOutput<typeof ClientMessage>;

export const ReadyMessage = v.strictObject({
  type: v.literal("ready"),
  stream: v.string(),
  /** Frames per second the page should attach a JPEG to (0: none). */
  frameFps: v.number(),
  /** Frames wider than this are scaled down before publishing (boxes with them). */
  maxWidth: v.number(),
});
export const AckMessage = v.strictObject({
  type: v.literal("ack"),
  seq: v.number(),
  /** The server tier's detections, in the frame's pixels. */
  detections: v.optional(v.array(PublishedDetection)),
});
export const ErrorMessage = v.strictObject({
  type: v.literal("error"),
  error: v.string(),
  /** A fatal error closes the connection; otherwise only the frame `seq` (when given) was refused. */
  fatal: v.boolean(),
  seq: v.optional(v.number()),
});
/** Any message from the server. */
export const ServerMessage = v.variant("type", [ReadyMessage, AckMessage, ErrorMessage]);
export type ServerMessage = v.InferOutput<typeof ServerMessage>;

export const Tier = v.picklist(["browser", "server"]);
export type Tier = v.InferOutput<typeof Tier>;

/** `GET /browser/tier?rtt=MS`. */
export const TierQuery = v.strictObject({
  /** The page's measured round trip to the server, ms. */
  rtt: v.optional(v.pipe(v.string(), v.regex(/^\d+(\.\d+)?$/, "expected a number of ms"), v.transform(Number), v.maxValue(600_000))),
});

export const TierAnswer = v.strictObject({
  tier: Tier,
  reason: v.string(),
  /** The server's load, 0..1. */
  load: v.number(),
  rttMs: v.nullable(v.number()),
  policy: v.strictObject({ serverMaxLoad: v.number(), maxRttMs: v.number() }),
});
export type TierAnswer = v.InferOutput<typeof TierAnswer>;

/** `GET /browser/config`: what the page needs to start. */
export const BrowserConfig = v.strictObject({
  model: v.strictObject({
    name: v.string(),
    url: v.string(),
    classNames: v.array(v.string()),
    /** Model input size when the file fixes it, else the default 640. */
    width: v.number(),
    height: v.number(),
  }),
  conf: v.number(),
  iou: v.number(),
  /** Where the server tier detects an image (`POST`, JPEG body; framewire serve's /detect), or null. */
  detectPath: v.nullable(v.string()),
  /** The pipeline's browser stage, when the page may publish to it (`/browser/ws`). */
  publish: v.nullable(v.strictObject({ stage: v.string(), frameFps: v.number(), maxWidth: v.number(), token: v.boolean(), serverTier: v.boolean() })),
  /** Where onnxruntime-web's .mjs and .wasm files are served. */
  wasmPaths: v.string(),
});
export type BrowserConfig = v.InferOutput<typeof BrowserConfig>;
