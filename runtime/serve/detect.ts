/**
 * The seed's `POST /detect`: an image in (raw JPEG/PNG or a multipart
 * upload), detections out, through the same resize (letterbox) and NMS
 * operators a pipeline runs. `?model=NAME` picks the model when several are
 * loaded.
 */
import type { Context, Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { HTTPException } from "hono/http-exception";
import * as v from "valibot";
import { ConfigError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import { derive, type Frame } from "../core/message.ts";
import type { TransformDefinition, TransformInstance } from "../core/operator.ts";
import { detectLayout } from "../inference/yolo.ts";
import { checkImageSize, decodeImage, readImageHeader, type DecodeLimits } from "../media/image-decode.ts";
import { describeIssue, formatPath } from "../spec/issues.ts";
import type { Registry } from "../spec/registry.ts";
import { DecodeBudget, RetryLaterError } from "./admission.ts";
import { HttpError, type ServeEnv } from "./http.ts";
import type { ServeMetrics } from "./metrics.ts";
import type { ServedModel } from "./model.ts";
import type { ModelRepository } from "./repository.ts";

export interface DetectOptions {
  repository: ModelRepository;
  metrics: ServeMetrics;
  registry: Registry;
  log: Logger;
  limits: DecodeLimits;
  maxImageBytes: number;
  decoders: number;
  maxWaiting: number;
  /** Decoded bytes requests may reserve at once (admission.ts); 0: no budget. */
  decodeBudgetBytes: number;
  conf: number;
  iou: number;
  /** Throws while the server drains. */
  notReady(): void;
}

const Num = v.pipe(v.string(), v.transform(Number), v.number("expected a number"));
const DetectQuery = v.strictObject({
  conf: v.optional(Num),
  iou: v.optional(Num),
  /** Comma-separated class names to keep. */
  classes: v.optional(v.pipe(v.string(), v.transform((s) => s.split(",").map((x) => x.trim()).filter(Boolean)))),
  /** The model to run, when several are loaded. */
  model: v.optional(v.pipe(v.string(), v.minLength(1))),
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
    else if (this.waiting.length >= this.maxWaiting) throw new RetryLaterError(`${this.waiting.length} images already wait for a decoder; retry later`, 1, "decoder-queue");
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

/** The model a /detect request runs: the one named, the only one loaded, or the only image detector loaded. */
function chooseModel(repository: ModelRepository, name: string | undefined): ServedModel {
  if (name) return repository.get(name);
  const ready = repository.ready();
  const latest = [...new Map(ready.map((m) => [m.name, repository.get(m.name)])).values()];
  if (latest.length === 1) return latest[0];
  const detectors = latest.filter((m) => "width" in m.detector);
  if (detectors.length === 1) return detectors[0];
  if (!latest.length) throw new HttpError(404, "POST /detect: no model is loaded");
  throw new HttpError(400, `POST /detect: ${detectors.length ? "several image detectors" : "no image detector"} loaded (${latest.map((m) => m.name).join(", ")}); name one with ?model=`);
}

/**
 * Adds `POST /detect` to the server.
 * @example
 * registerDetect(app, { repository, metrics, registry, log, limits: DEFAULT_LIMITS, maxImageBytes: 10 << 20, decoders: 2, maxWaiting: 64, decodeBudgetBytes: 1 << 30, conf: 0.25, iou: 0.45, notReady: () => {} });
 */
export function registerDetect(app: Hono<ServeEnv>, o: DetectOptions): void {
  const transform = (name: string) => {
    const def = o.registry.get(name);
    if (def?.kind !== "transform") throw new ConfigError(`operator ${name} is missing from the registry`);
    return def as TransformDefinition;
  };
  const ctx = (stage: string) => ({ stage, pipeline: "serve", log: o.log.child(stage), signal: new AbortController().signal });
  const nmsDef = transform("nms");
  const resizeDef = transform("resize");
  const resizers = new Map<string, Promise<TransformInstance>>();
  const resizer = (width: number, height: number) => {
    const key = `${width}x${height}`;
    const known = resizers.get(key);
    if (known) return known;
    const made = Promise.resolve(resizeDef.create(v.parse(resizeDef.options, { width, height, mode: "letterbox" }), ctx("resize")));
    resizers.set(key, made);
    return made;
  };
  const decoders = new Slots(o.decoders, o.maxWaiting);
  const budget = new DecodeBudget(o.decodeBudgetBytes);
  o.metrics.decodeBudgetBytes.set(o.decodeBudgetBytes);
  let seq = 0;
  const tooLarge = (c: Context) => {
    o.metrics.imagesRejected.inc({ reason: "body" });
    return c.json({ error: `request body exceeds the limit of ${o.maxImageBytes} bytes` }, 413);
  };

  app.post("/detect", bodyLimit({ maxSize: o.maxImageBytes, onError: tooLarge }), async (c) => {
    const query = v.safeParse(DetectQuery, c.req.query());
    if (!query.success) throw new HttpError(400, `query: ${explain(query.issues, DetectQuery)}`);
    const { model: wanted, ...nmsQuery } = query.output;
    const model = chooseModel(o.repository, wanted);
    c.set("model", model.name);
    const { detector } = model;
    if (!("width" in detector)) throw new HttpError(404, detector.unavailable);
    o.notReady();
    const t0 = performance.now();
    const nmsOptions = v.safeParse(nmsDef.options, { conf: o.conf, iou: o.iou, ...nmsQuery });
    if (!nmsOptions.success) throw new HttpError(400, `query: ${explain(nmsOptions.issues, nmsDef.options)}`);
    const bytes = await imageBytes(c);
    // Size checks before waiting for a decoder: a forged header costs nothing.
    const header = readImageHeader(bytes);
    checkImageSize(header, o.limits);
    // Held until the answer is built: the decoded image, its tensor and the predictions live that long.
    const unreserve = budget.reserve(header.width, header.height);
    o.metrics.decodeBytesInFlight.set(budget.inFlight);
    try {
      return await detectOne(c, model, bytes, nmsOptions.output, t0);
    } finally {
      unreserve();
      o.metrics.decodeBytesInFlight.set(budget.inFlight);
    }
  });

  async function detectOne(c: Context, model: ServedModel, bytes: Uint8Array, nmsOptions: unknown, t0: number): Promise<Response> {
    const { detector } = model;
    if (!("width" in detector)) throw new HttpError(404, detector.unavailable);
    const release = await decoders.acquire();
    let frame: Frame;
    const t1 = performance.now();
    try {
      frame = { kind: "frame", stream: "detect", seq: seq++, ts: Date.now(), live: false, image: await decodeImage(bytes, o.limits), timings: {} };
    } finally {
      release();
    }
    const t2 = performance.now();
    frame = (await (await resizer(detector.width, detector.height)).process(frame)) as Frame;
    const t3 = performance.now();
    const r = await model.batcher.submit(frame.tensor!.data, 1);
    o.metrics.queueSeconds.observe({ model: model.name, version: model.version }, r.queueMs / 1000);
    model.stats.success(1, performance.now() - t2, r);
    frame = derive(frame, { predictions: { layout: detectLayout(r.dims, "auto"), dims: r.dims, data: r.data, classNames: model.classNames, model: model.name } });
    const t4 = performance.now();
    frame = (await (await nmsDef.create(nmsOptions as never, ctx("nms"))).process(frame)) as Frame;
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
  }
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
