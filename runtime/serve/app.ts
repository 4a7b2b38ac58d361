/**
 * The HTTP surface of `framewire serve` (hono): the KServe v2 endpoints for
 * every loaded model and version, Triton's model configuration, statistics
 * and model repository extensions (extensions.ts), the seed's `POST /detect`
 * (detect.ts) and Prometheus `/metrics`. Every error is JSON
 * `{"error": "..."}`: 400 bad input, 404 unknown model or route, 413 too
 * large, 415 wrong content type, 503 not ready or overloaded (with
 * `Retry-After` when overloaded: admission.ts).
 */
import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { routePath } from "hono/route";
import pkg from "../../package.json" with { type: "json" };
import type { DecodeLimits } from "../media/image-decode.ts";
import { decodeInferRequest, encodeInferResponse, HEADER_LENGTH } from "../inference/kserve.ts";
import type { Logger } from "../core/log.ts";
import type { Registry } from "../spec/registry.ts";
import { registerDetect } from "./detect.ts";
import { registerBrowser } from "../observe/http/browser.ts";
import { registerExtensions } from "./extensions.ts";
import { classify, HttpError, lookup, type ServeEnv } from "./http.ts";
import type { ServeMetrics } from "./metrics.ts";
import type { ServedModel } from "./model.ts";
import type { ModelRepository } from "./repository.ts";

export { HttpError };

export interface AppOptions {
  repository: ModelRepository;
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
  /** Decoded bytes (width × height × 3) POST /detect requests may hold at once; more get 503 + Retry-After, an image alone over it 413. 0: no budget. */
  decodeBudgetBytes: number;
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

/** The server's extensions, as GET /v2 lists them. */
export const EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics", "model_repository", "model_repository(unload_dependents)"];

const sortVersions = (vs: string[]) => [...vs].sort((a, b) => Number(a) - Number(b));

/**
 * Builds the server's request handler around a model repository.
 * @example
 * const app = await createServeApp({ repository, metrics, registry: await loadRegistry(), log, limits: DEFAULT_LIMITS, maxImageBytes: 10 << 20, maxBodyBytes: 256 << 20, decoders: 4, maxWaiting: 64, decodeBudgetBytes: 1 << 30, conf: 0.25, iou: 0.45 });
 * serve(app.fetch, { hostname: "127.0.0.1", port: 8000 }); // runtime/platform/index.ts
 */
export async function createServeApp(o: AppOptions): Promise<ServeApp> {
  const { repository, metrics, log } = o;
  const app = new Hono<ServeEnv>();
  let active = 0;
  const state: ServeApp = {
    fetch: app.fetch,
    ready: true,
    async drain() {
      state.ready = false;
      await repository.drain();
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
    const model = c.get("model");
    metrics.requests.inc({ route, code: String(c.res.status), ...(model ? { model } : {}) });
    metrics.requestSeconds.observe({ route }, (performance.now() - t0) / 1000);
  });
  app.onError((err, c) => {
    const { status, message, reason, retryAfterS, overloaded } = classify(err);
    if (reason) metrics.imagesRejected.inc({ reason });
    if (status === 500) log.error(`${c.req.method} ${c.req.path}: ${(err as Error).stack ?? message}`);
    if (retryAfterS !== undefined) {
      metrics.overloaded.inc({ reason: overloaded ?? "unknown" });
      return c.json({ error: message }, status, { "retry-after": String(retryAfterS) });
    }
    return c.json({ error: message }, status);
  });
  app.notFound((c) => c.json({ error: `no route ${c.req.method} ${c.req.path}` }, 404));

  const notReady = () => {
    if (!state.ready) throw new HttpError(503, "the server is shutting down");
  };

  app.get("/v2", (c) => c.json({ name: "framewire", version: pkg.version, extensions: EXTENSIONS }));
  app.get("/v2/health/live", (c) => c.json({ live: true }));
  app.get("/v2/health/ready", (c) => c.json({ ready: state.ready }, state.ready ? 200 : 503));

  // Before /v2/models/:name, so that "stats" is not read as a model name.
  registerExtensions(app, { repository, log });

  for (const base of ["/v2/models/:name", "/v2/models/:name/versions/:version"]) {
    app.get(base, (c) => {
      const m = lookup(c, repository);
      const versions = c.req.param("version") ? [m.version] : sortVersions(repository.versionsOf(m.name));
      return c.json({
        name: m.name,
        versions,
        platform: "onnxruntime_onnx",
        inputs: [m.input],
        outputs: [m.output],
        // Not in the protocol: lets infer-triton name classes without a `names` option.
        parameters: { class_names: JSON.stringify(m.classNames) },
      });
    });
    app.get(`${base}/ready`, async (c) => {
      const name = c.req.param("name")!;
      c.set("model", name);
      let m: ServedModel | undefined;
      try {
        m = repository.get(name, c.req.param("version"));
      } catch (err) {
        // A model the repository has but that is not loaded (yet) is "not ready", not "unknown": a client may wait for it.
        if (!(await repository.known(name, c.req.param("version")))) throw err;
        return c.json({ name, ready: false, error: (err as Error).message }, 503);
      }
      return c.json({ name: m.name, ready: state.ready }, state.ready ? 200 : 503);
    });
    app.post(`${base}/infer`, bodyLimit({ maxSize: o.maxBodyBytes, onError: (c) => c.json({ error: `request body exceeds the limit of ${o.maxBodyBytes} bytes` }, 413) }), async (c) => {
      const t0 = performance.now();
      const m = lookup(c, repository);
      try {
        notReady();
        const req = decodeInferRequest(new Uint8Array(await c.req.arrayBuffer()), c.req.header(HEADER_LENGTH) ?? null);
        const want = m.input;
        const input = req.inputs[0];
        if (req.inputs.length !== 1 || input.name !== want.name) {
          throw new HttpError(400, `${m.name} takes one input "${want.name}"; got ${req.inputs.map((i) => `"${i.name}"`).join(", ")}`);
        }
        if (input.datatype !== "FP32") throw new HttpError(400, `input ${want.name} is FP32, got ${input.datatype}`);
        const maxBatch = m.config.maxBatchSize;
        const dims = m.config.input.dims;
        const items = maxBatch > 0 ? input.shape[0] : 1;
        const rest = maxBatch > 0 ? input.shape.slice(1) : input.shape;
        const shapeOk = rest.length === dims.length && rest.every((d, i) => d === dims[i]) && items >= 1 && items <= Math.max(1, maxBatch);
        if (!shapeOk) {
          const rule = maxBatch > 0 ? `a batch of 1..${maxBatch}` : "max_batch_size 0: exactly this shape";
          throw new HttpError(400, `input ${want.name} has shape [${want.shape}] (${rule}), got [${input.shape}]`);
        }
        const unknown = req.header.outputs?.map((x) => x.name).filter((n) => n !== m.output.name) ?? [];
        if (unknown.length) throw new HttpError(400, `unknown output ${unknown.join(", ")}; ${m.name} has "${m.output.name}"`);
        const r = await m.batcher.submit(input.data, items);
        metrics.queueSeconds.observe({ model: m.name, version: m.version }, r.queueMs / 1000);
        const out = encodeInferResponse(m.name, m.version, req.header.id, [{ name: m.output.name, datatype: "FP32", shape: r.dims, data: r.data }], req.binaryOutput);
        m.stats.success(items, performance.now() - t0, r);
        return new Response(out.body, { headers: out.headers });
      } catch (err) {
        m.stats.failure(performance.now() - t0);
        throw err;
      }
    });
  }

  registerDetect(app, { ...o, notReady });
  // The browser tier's page (/browser): detection in the page, or here through /detect.
  registerBrowser(app, { log: o.log, detectPath: "/detect", conf: o.conf, iou: o.iou });

  app.get("/metrics", async (c) => c.body(await metrics.registry.metrics(), 200, { "content-type": metrics.registry.contentType }));

  return state;
}
