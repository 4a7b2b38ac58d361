import * as v from "valibot";
import { codedError, ConfigError } from "../runtime/core/errors.ts";
import { derive, type Frame, type Image, type Message } from "../runtime/core/message.ts";
import {
  defineOperator,
  type Ingress,
  type IngressFrame,
  type IngressStream,
  type OperatorMetric,
  type StageContext,
  type TransformDefinition,
  type TransformInstance,
} from "../runtime/core/operator.ts";
import { decodeJpeg, encodeJpeg } from "../runtime/media/jpeg.ts";
import { describeIssue, formatPath } from "../runtime/spec/issues.ts";

/** A client's stream that cannot be opened or fed (id taken, too many streams, source not running). */
export const IngressError = codedError("IngressError", "E_INGRESS");
export type IngressError = InstanceType<typeof IngressError>;

/** Operators the server tier may run on frames without detections: each attaches `frame.predictions` from `frame.tensor`. */
const SERVER_OPERATORS = ["infer-onnx", "infer-triton", "infer-dispatch"] as const;

const Tier = v.strictObject({
  serverMaxLoad: v.optional(
    v.pipe(v.number(), v.minValue(0), v.maxValue(1), v.description("Server load (host CPU, 0..1) above which pages detect in the browser.")),
    0.8,
  ),
  maxRttMs: v.optional(
    v.pipe(v.number(), v.minValue(0), v.description("Round trip (ms, measured by the page) above which pages detect in the browser.")),
    150,
  ),
});

const Server = v.strictObject({
  use: v.pipe(v.picklist(SERVER_OPERATORS), v.description("The inference operator of the server tier.")),
  with: v.optional(v.pipe(v.record(v.string(), v.unknown()), v.description("That operator's options (checked against its schema).")), {}),
  width: v.optional(v.pipe(v.number(), v.integer(), v.minValue(8), v.maxValue(4096), v.description("Model input width.")), 640),
  height: v.optional(v.pipe(v.number(), v.integer(), v.minValue(8), v.maxValue(4096), v.description("Model input height.")), 640),
});

const Options = v.strictObject({
  tier: v.optional(
    v.pipe(Tier, v.description("Where pages detect (GET /browser/tier): in the browser when the server is loaded or the link is slow, else on the server.")),
    {},
  ),
  server: v.optional(
    v.pipe(
      Server,
      v.description("The server tier: frames a page sends without detections are letterboxed, inferred and decoded here. Without it pages always detect in the browser."),
    ),
  ),
  conf: v.optional(v.pipe(v.number(), v.minValue(0), v.maxValue(1), v.description("Minimum score, in the page and in the server tier (as nms's).")), 0.25),
  iou: v.optional(v.pipe(v.number(), v.minValue(0), v.maxValue(1), v.description("NMS IoU threshold, in the page and in the server tier.")), 0.45),
  frameFps: v.optional(
    v.pipe(
      v.number(),
      v.minValue(0),
      v.maxValue(30),
      v.description("Pictures per second a page attaches to its frames (0: none; frames carry a grey placeholder of their size)."),
    ),
    1,
  ),
  maxWidth: v.optional(
    v.pipe(v.number(), v.integer(), v.minValue(16), v.maxValue(4096), v.description("Pages scale wider frames down to this width (boxes with them).")),
    640,
  ),
  maxStreams: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(1000), v.description("Most pages publishing at once.")), 16),
  maxMessageBytes: v.optional(
    v.pipe(v.number(), v.integer(), v.minValue(1024), v.maxValue(16 << 20), v.description("Largest WebSocket message a page may send (a frame with its base64 JPEG); Bun refuses more than 16 MiB.")),
    4 << 20,
  ),
});
type Options = v.InferOutput<typeof Options>;

/** Grey placeholder pictures kept, by size. */
const MAX_PLACEHOLDERS = 8;

interface StreamState {
  seq: number;
  frames: number;
  /** The latest picture the page sent (shown with later frames until the next one). */
  picture?: { jpeg: Uint8Array; width: number; height: number; seq: number };
}

/** The server tier: letterbox, inference and NMS operators made from the pipeline's registry. */
interface ServerTier {
  resize: TransformInstance;
  infer: TransformInstance;
  nms: TransformInstance;
  close(): Promise<void>;
}

/**
 * A source fed by browser pages: each page (`GET /browser`) that publishes
 * opens a stream `browser-<id>` over the HTTP server's `/browser/ws` and
 * sends one message per frame, with the detections it computed in the
 * browser (onnxruntime-web) and, at `frameFps`, the frame as a JPEG. The
 * frames are live (dropped under overload like a camera's), so tracker,
 * zones and sinks work on them as on any camera. A page that goes away ends
 * its stream with a `stream-end` event.
 *
 * `tier` is the policy the page follows when it asks where to detect; with
 * `server`, frames that a page sends without detections (its server tier)
 * are detected here with the registry's resize, the given inference
 * operator and nms.
 */
export default defineOperator({
  name: "browser",
  kind: "source",
  description: "Browser pages (GET /browser) publish their in-browser detections (onnxruntime-web) as live streams browser-<id>; tier policy, optional server tier.",
  options: Options,
  async create(o: Options, ctx) {
    const streams = new Map<string, StreamState>();
    const placeholders = new Map<string, Uint8Array>();
    let emit: ((msg: Message) => Promise<void>) | undefined;
    let stopped = false;
    let opened = 0;
    const tier = o.server ? await serverTier(o.server, o, ctx) : undefined;

    const placeholder = (width: number, height: number): Uint8Array => {
      const key = `${width}x${height}`;
      let jpeg = placeholders.get(key);
      if (!jpeg) {
        if (placeholders.size >= MAX_PLACEHOLDERS) placeholders.clear();
        jpeg = encodeJpeg({ width, height, data: new Uint8Array(width * height * 4).fill(64) }, 50);
        placeholders.set(key, jpeg);
      }
      return jpeg;
    };

    const detectHere = async (frame: Frame, jpeg: Uint8Array): Promise<Frame> => {
      const t0 = performance.now();
      const rgba = decodeJpeg(jpeg);
      const rgb = new Uint8Array(rgba.width * rgba.height * 3);
      for (let i = 0, j = 0; j < rgb.length; i += 4, j += 3) [rgb[j], rgb[j + 1], rgb[j + 2]] = [rgba.data[i], rgba.data[i + 1], rgba.data[i + 2]];
      let f: Frame = derive(frame, { image: { width: rgba.width, height: rgba.height, format: "rgb24", data: rgb } });
      for (const step of [tier!.resize, tier!.infer, tier!.nms]) {
        const out = await step.process(f);
        if (!out || Array.isArray(out) || out.kind !== "frame") throw new Error("the server tier's stages must give one frame");
        f = out;
      }
      // On the bus the frame keeps the page's JPEG (smaller than its pixels).
      return derive(frame, { detections: f.detections ?? [], timings: { ...frame.timings, [`${ctx.stage}@server`]: performance.now() - t0 } });
    };

    const ingress: Ingress = {
      settings: {
        frameFps: o.frameFps,
        maxWidth: o.maxWidth,
        maxMessageBytes: o.maxMessageBytes,
        conf: o.conf,
        iou: o.iou,
        tier: o.tier,
        serverTier: !!tier,
      },
      open(id: string): IngressStream {
        if (!emit || stopped) throw new IngressError(`${ctx.stage} is not running`);
        if (streams.has(id)) throw new IngressError(`stream ${id} is already being published`);
        if (streams.size >= o.maxStreams) throw new IngressError(`${ctx.stage} takes at most ${o.maxStreams} streams (maxStreams)`);
        const s: StreamState = { seq: 0, frames: 0 };
        streams.set(id, s);
        opened++;
        ctx.log.info(`stream ${id} opened by a browser page (${streams.size} now)`);
        let closed = false;
        return {
          id,
          async push(input: IngressFrame): Promise<Frame> {
            if (closed || !emit || stopped) throw new IngressError(`stream ${id} is closed`);
            if (!input.detections && !input.jpeg) throw new IngressError(`frame ${s.seq} of ${id} has neither detections nor a picture`);
            if (!input.detections && !tier) throw new IngressError(`frame ${s.seq} of ${id} has no detections and ${ctx.stage} has no server tier (option server)`);
            const seq = s.seq++;
            if (input.jpeg) s.picture = { jpeg: input.jpeg, width: input.width, height: input.height, seq };
            const pic = s.picture && s.picture.width === input.width && s.picture.height === input.height ? s.picture : undefined;
            const image: Image = { width: input.width, height: input.height, format: "jpeg", data: pic ? pic.jpeg : placeholder(input.width, input.height) };
            let frame: Frame = {
              kind: "frame",
              stream: id,
              seq,
              // The page's clock may run ahead: a capture time is never later than its arrival.
              ts: Math.min(input.ts, Date.now()),
              live: true,
              image,
              ...(input.detections ? { detections: input.detections } : {}),
              meta: { ...input.meta, browser: { ...((input.meta?.browser as object | undefined) ?? {}), picture: pic ? pic.seq : null, tier: input.detections ? "browser" : "server" } },
              timings: {},
            };
            if (!input.detections) frame = await detectHere(frame, input.jpeg!);
            s.frames++;
            await emit(frame);
            return frame;
          },
          async close(reason: string): Promise<void> {
            if (closed) return;
            closed = true;
            streams.delete(id);
            ctx.log.info(`stream ${id} closed (${reason}) after ${s.frames} frames`);
            await emit?.({ kind: "event", stream: id, seq: s.seq, ts: Date.now(), type: "stream-end", data: { reason } });
          },
        };
      },
    };

    return {
      ingress,
      metrics(): OperatorMetric[] {
        return [
          { name: "browser_streams", help: "Browser pages publishing now", type: "gauge", value: streams.size },
          { name: "browser_streams_opened_total", help: "Browser streams opened since start", type: "counter", value: opened },
        ];
      },
      async run(send, signal) {
        emit = send;
        ctx.log.info(`waiting for browser pages (GET /browser on the HTTP server; tier: server load ≤ ${o.tier.serverMaxLoad}, round trip ≤ ${o.tier.maxRttMs} ms${tier ? `, server tier ${o.server!.use}` : ", no server tier"})`);
        if (!signal.aborted) await new Promise((resolve) => signal.addEventListener("abort", resolve, { once: true }));
        stopped = true;
      },
      async close() {
        stopped = true;
        await tier?.close();
      },
    };
  },
});

/** Creates the server tier's stages from the registry (none of them imported: the registry is the pipeline's). */
async function serverTier(s: NonNullable<Options["server"]>, nmsOptions: { conf: number; iou: number }, ctx: StageContext): Promise<ServerTier> {
  const known = ctx.operators;
  if (!known) throw new ConfigError(`${ctx.stage}: the server tier needs the pipeline's operators (run it in a pipeline)`);
  const make = async (name: string, options: unknown, path: (string | number)[]): Promise<TransformInstance> => {
    const def = known.get(name);
    if (def?.kind !== "transform") throw new ConfigError(`${ctx.stage}: operator ${name} is missing from the registry`);
    const r = v.safeParse((def as TransformDefinition).options, options, { abortEarly: false });
    if (!r.success) {
      throw new ConfigError(`${ctx.stage}: ${r.issues.map((is) => `${formatPath([...path, ...(is.path ?? []).map((p) => p.key as string)])}: ${describeIssue(is, def.options)}`).join("; ")}`);
    }
    return (def as TransformDefinition).create(r.output, { ...ctx, stage: `${ctx.stage}/${name}`, log: ctx.log.child(name) });
  };
  const resize = await make("resize", { width: s.width, height: s.height, mode: "letterbox" }, ["server"]);
  const infer = await make(s.use, s.with, ["server", "with"]);
  const nms = await make("nms", { conf: nmsOptions.conf, iou: nmsOptions.iou }, []);
  return {
    resize,
    infer,
    nms,
    async close() {
      for (const x of [resize, infer, nms]) await x.close?.();
    },
  };
}
