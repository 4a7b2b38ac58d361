/**
 * The HTTP surface of `framewire serve` (hono): the KServe v2 endpoints, the
 * seed's `POST /detect` (image in, detections out) and Prometheus `/metrics`.
 * Every error is JSON `{"error": "..."}`: 400 bad input, 404 unknown model or
 * route, 413 too large, 415 wrong content type, 503 not ready or overloaded.
 */
import { Hono, type Context } from "hono";
import { bodyLimit } from "hono/body-limit";
import { HTTPException } from "hono/http-exception";
import { routePath } from "hono/route";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import * as v from "valibot";
import { detectLayout } from "../inference/yolo.ts";
import pkg from "../../package.json" with { type: "json" };
import { ConfigError } from "../core/errors.ts";
import {
  checkImageSize,
  CorruptImageError,
  decodeImage,
  ImageTooLargeError,
  readImageHeader,
  UnsupportedImageError,
  type DecodeLimits,
} from "../media/image-decode.ts";
import { describeIssue, formatPath } from "../spec/issues.ts";
import { decodeInferRequest, encodeInferResponse, HEADER_LENGTH, KServeProtocolError } from "../inference/kserve.ts";
import type { Logger } from "../core/log.ts";
import { derive, type Frame } from "../core/message.ts";
import type { TransformDefinition, TransformInstance } from "../core/operator.ts";
import type { Registry } from "../spec/registry.ts";
import { OverloadedError, ShuttingDownError } from "./batcher.ts";
import type { ServeMetrics } from "./metrics.ts";
import type { ServedModel } from "./model.ts";

/** An error with the HTTP status it answers with. */
export class HttpError extends Error {
  override name = "HttpError";
  constructor(
    readonly status: 400 | 404 | 413 | 415 | 503,
    message: string,
  ) {
    super(message);
  }
}

export interface AppOptions {
  model: ServedModel;
  metrics: ServeMetrics;
  /** Operators (resize and nms come from here, so /detect decodes exactly as a pipeline does). */
  registry: Registry;
  log: Logger;
  limits: DecodeLimits;
  /** Largest POST /detect body. */
  maxImageBytes: number;
  /** Largest inference request body. */
  maxBodyBytes: number;
  /** Images decoded at once (ffmpeg children); more wait, up to `maxWaiting`, then get 503. */
  decoders: number;
  maxWaiting: number;
  /** NMS defaults for /detect (a request may override them in its query). */
  conf: number;
  iou: number;
}

export interface ServeApp {
  fetch(req: Request): Response | Promise<Response>;
  /** Readiness as /v2/health/ready reports it; false while draining. */
  ready: boolean;
  /** Turns readiness off, runs what is queued and waits (30 s at most) for requests in progress to answer. */
  drain(): Promise<void>;
}

const Num = v.pipe(v.string(), v.transform(Number), v.number("expected a number"));
const DetectQuery = v.strictObject({
  conf: v.optional(Num),
  iou: v.optional(Num),
  /** Comma-separated class names to keep. */
  classes: v.optional(v.pipe(v.string(), v.transform((s) => s.split(",").map((x) => x.trim()).filter(Boolean)))),
});

const IMAGE_TYPES = new Set(["image/jpeg", "image/png"]);

/** Bounded concurrency with a bounded waiting line. */
class Slots {
  private waiting: (() => void)[] = [];
  private used = 0;
  constructor(
    private limit: number,
    private maxWaiting: number,
  ) {}

  async acquire(): Promise<() => void> {
    if (this.used < this.limit) this.used++;
    else if (this.waiting.length >= this.maxWaiting) throw new OverloadedError(`${this.waiting.length} images already wait for a decoder; retry later`);
    else await new Promise<void>((r) => this.waiting.push(r));
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      // The slot passes straight to the next waiter.
      if (next) next();
      else this.used--;
    };
  }
}

/** `conf: expected number <= 1, got 2; ...` */
function explain(issues: v.BaseIssue<unknown>[], schema: v.GenericSchema): string {
  return issues.map((i) => `${formatPath((i.path ?? []).map((p) => p.key as string))}: ${describeIssue(i, schema)}`).join("; ");
}

/** Status and message for an error a handler threw. */
function classify(err: unknown): { status: ContentfulStatusCode; message: string; reason?: string } {
  const message = (err as Error).message;
  if (err instanceof HttpError) return { status: err.status, message };
  if (err instanceof HTTPException) return { status: err.status as ContentfulStatusCode, message };
  if (err instanceof KServeProtocolError || err instanceof ConfigError) return { status: 400, message };
  if (err instanceof CorruptImageError) return { status: 400, message, reason: "corrupt" };
  if (err instanceof UnsupportedImageError) return { status: 415, message, reason: "unsupported" };
  if (err instanceof ImageTooLargeError) return { status: 413, message, reason: "dimensions" };
  if (err instanceof OverloadedError || err instanceof ShuttingDownError) return { status: 503, message };
  return { status: 500, message: `internal error: ${message}` };
}

/**
 * Builds the server's request handler around a loaded model.
 * @example
 * const app = await createServeApp({ model, metrics, registry: await loadRegistry(), log, limits: DEFAULT_LIMITS, maxImageBytes: 10 << 20, maxBodyBytes: 256 << 20, decoders: 4, maxWaiting: 64, conf: 0.25, iou: 0.45 });
 * serve(app.fetch, { hostname: "127.0.0.1", port: 8000 }); // runtime/platform/index.ts
 */
export async function createServeApp(o: AppOptions): Promise<ServeApp> {
  const { model, metrics, log } = o;
  const transform = (name: string) => {
    const def = o.registry.get(name);
    if (def?.kind !== "transform") throw new ConfigError(`operator ${name} is missing from the registry`);
    return def as TransformDefinition;
  };
  const ctx = (stage: string) => ({ stage, pipeline: "serve", log: log.child(stage), signal: new AbortController().signal });
  const nmsDef = transform("nms");
  const resizeDef = transform("resize");
  const { detector } = model;
  const resize: TransformInstance | undefined =
    "width" in detector
      ? await resizeDef.create(v.parse(resizeDef.options, { width: detector.width, height: detector.height, mode: "letterbox" }), ctx("resize"))
      : undefined;
  const decoders = new Slots(o.decoders, o.maxWaiting);
  const app = new Hono();
  let seq = 0;
  let active = 0;
  const state: ServeApp = {
    fetch: app.fetch,
    ready: true,
    async drain() {
      state.ready = false;
      await model.batcher.close();
      const end = performance.now() + 30_000;
      while (active > 0 && performance.now() < end) await new Promise((r) => setTimeout(r, 10));
    },
  };

  app.use("*", async (c, next) => {
    const t0 = performance.now();
    active++;
    try {
      await next();
    } finally {
      active--;
    }
    const path = routePath(c, -1);
    const route = path === "*" || path === "/*" ? "unmatched" : path;
    metrics.requests.inc({ route, code: String(c.res.status) });
    metrics.requestSeconds.observe({ route }, (performance.now() - t0) / 1000);
  });
  app.onError((err, c) => {
    const { status, message, reason } = classify(err);
    if (reason) metrics.imagesRejected.inc({ reason });
    if (status === 500) log.error(`${c.req.method} ${c.req.path}: ${(err as Error).stack ?? message}`);
    return c.json({ error: message }, status);
  });
  app.notFound((c) => c.json({ error: `no route ${c.req.method} ${c.req.path}` }, 404));

  const tooLarge = (limit: number) => (c: Context) => {
    metrics.imagesRejected.inc({ reason: "body" });
    return c.json({ error: `request body exceeds the limit of ${limit} bytes` }, 413);
  };
  const notReady = () => {
    if (!state.ready) throw new HttpError(503, "the server is shutting down");
  };

  app.get("/v2", (c) => c.json({ name: "framewire", version: pkg.version, extensions: ["binary_tensor_data"] }));
  app.get("/v2/health/live", (c) => c.json({ live: true }));
  app.get("/v2/health/ready", (c) => c.json({ ready: state.ready }, state.ready ? 200 : 503));

  const lookup = (c: Context) => {
    const name = c.req.param("name");
    const version = c.req.param("version");
    if (name !== model.name || (version !== undefined && version !== model.version)) {
      throw new HttpError(404, `unknown model "${name}"${version ? ` version ${version}` : ""}; this server has ${model.name} (version ${model.version})`);
    }
  };
  for (const base of ["/v2/models/:name", "/v2/models/:name/versions/:version"]) {
    app.get(base, (c) => {
      lookup(c);
      return c.json({
        name: model.name,
        versions: [model.version],
        platform: "onnxruntime_onnx",
        inputs: [model.input],
        outputs: [model.output],
        // Not in the protocol: lets infer-triton name classes without a `names` option.
        parameters: { class_names: JSON.stringify(model.classNames) },
      });
    });
    app.get(`${base}/ready`, (c) => {
      lookup(c);
      return c.json({ name: model.name, ready: state.ready }, state.ready ? 200 : 503);
    });
    app.post(`${base}/infer`, bodyLimit({ maxSize: o.maxBodyBytes, onError: tooLarge(o.maxBodyBytes) }), async (c) => {
      lookup(c);
      notReady();
      const req = decodeInferRequest(new Uint8Array(await c.req.arrayBuffer()), c.req.header(HEADER_LENGTH) ?? null);
      const want = model.input;
      const input = req.inputs[0];
      if (req.inputs.length !== 1 || input.name !== want.name) {
        throw new HttpError(400, `${model.name} takes one input "${want.name}"; got ${req.inputs.map((i) => `"${i.name}"`).join(", ")}`);
      }
      if (input.datatype !== "FP32") throw new HttpError(400, `input ${want.name} is FP32, got ${input.datatype}`);
      const batch = input.shape[0];
      const shapeOk = input.shape.length === want.shape.length && input.shape.every((d, i) => i === 0 || d === want.shape[i]);
      const batchOk = model.dynamic ? batch >= 1 && batch <= model.maxBatch : batch === model.maxBatch;
      if (!shapeOk || !batchOk) {
        const batchRule = model.dynamic ? `a batch of 1..${model.maxBatch}` : `a fixed batch of ${model.maxBatch}`;
        throw new HttpError(400, `input ${want.name} has shape [${want.shape}] (${batchRule}), got [${input.shape}]`);
      }
      const unknown = req.header.outputs?.map((x) => x.name).filter((n) => n !== model.output.name) ?? [];
      if (unknown.length) throw new HttpError(400, `unknown output ${unknown.join(", ")}; ${model.name} has "${model.output.name}"`);
      const r = await model.batcher.submit(input.data, batch);
      metrics.queueSeconds.observe(r.queueMs / 1000);
      const out = encodeInferResponse(model.name, model.version, req.header.id, [{ name: model.output.name, datatype: "FP32", shape: r.dims, data: r.data }], req.binaryOutput);
      return new Response(out.body, { headers: out.headers });
    });
  }

  app.post("/detect", bodyLimit({ maxSize: o.maxImageBytes, onError: tooLarge(o.maxImageBytes) }), async (c) => {
    if (!resize) throw new HttpError(404, "unavailable" in detector ? detector.unavailable : "POST /detect is not available");
    notReady();
    const t0 = performance.now();
    const query = v.safeParse(DetectQuery, c.req.query());
    if (!query.success) throw new HttpError(400, `query: ${explain(query.issues, DetectQuery)}`);
    const nmsOptions = v.safeParse(nmsDef.options, { conf: o.conf, iou: o.iou, ...query.output });
    if (!nmsOptions.success) throw new HttpError(400, `query: ${explain(nmsOptions.issues, nmsDef.options)}`);
    const bytes = await imageBytes(c);
    // Size check before waiting for a decoder: a forged header costs nothing.
    checkImageSize(readImageHeader(bytes), o.limits);
    const release = await decoders.acquire();
    let frame: Frame;
    const t1 = performance.now();
    try {
      frame = { kind: "frame", stream: "detect", seq: seq++, ts: Date.now(), live: false, image: await decodeImage(bytes, o.limits), timings: {} };
    } finally {
      release();
    }
    const t2 = performance.now();
    frame = (await resize.process(frame)) as Frame;
    const t3 = performance.now();
    const r = await model.batcher.submit(frame.tensor!.data, 1);
    metrics.queueSeconds.observe(r.queueMs / 1000);
    frame = derive(frame, { predictions: { layout: detectLayout(r.dims, "auto"), dims: r.dims, data: r.data, classNames: model.classNames, model: model.name } });
    const t4 = performance.now();
    frame = (await (await nmsDef.create(nmsOptions.output, ctx("nms"))).process(frame)) as Frame;
    const t5 = performance.now();
    const round = (x: number, k: number) => Math.round(x * k) / k;
    return c.json({
      model: model.name,
      width: frame.image.width,
      height: frame.image.height,
      detections: (frame.detections ?? []).map((d) => ({ class: d.class, score: round(d.score, 1e4), box: d.box.map((x) => round(x, 10)) })),
      ms: round(t5 - t0, 100),
      timings: {
        decode: round(t2 - t1, 100),
        preprocess: round(t3 - t2, 100),
        queue: round(r.queueMs, 100),
        infer: round(r.inferMs, 100),
        nms: round(t5 - t4, 100),
      },
    });
  });

  app.get("/metrics", async (c) => c.body(await metrics.registry.metrics(), 200, { "content-type": metrics.registry.contentType }));

  return state;
}

/** The image of a raw `image/jpeg|png` body or of a multipart upload (field `image`, else the first file). */
async function imageBytes(c: Context): Promise<Uint8Array> {
  const type = (c.req.header("content-type") ?? "").split(";")[0].trim().toLowerCase();
  let bytes: Uint8Array;
  if (IMAGE_TYPES.has(type)) bytes = new Uint8Array(await c.req.arrayBuffer());
  else if (type === "multipart/form-data") {
    let form: Record<string, unknown>;
    try {
      form = await c.req.parseBody();
    } catch (err) {
      // A body-limit overflow keeps its own status.
      if (err instanceof HTTPException) throw err;
      throw new HttpError(400, `malformed multipart body: ${(err as Error).message}`);
    }
    const file = form.image instanceof File ? form.image : Object.values(form).find((x) => x instanceof File);
    if (!(file instanceof File)) throw new HttpError(400, "the multipart upload has no file (send the image as field \"image\")");
    bytes = new Uint8Array(await file.arrayBuffer());
  } else {
    throw new HttpError(415, `content-type "${type || "(none)"}" is not accepted; send image/jpeg, image/png or multipart/form-data`);
  }
  if (!bytes.byteLength) throw new HttpError(400, "the image is empty");
  return bytes;
}
