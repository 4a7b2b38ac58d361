/**
 * The routes of a process's HTTP server (hono):
 *
 *   GET  /healthz                          always public: the process answers
 *   GET  /readyz                           always public: 200 ready, 503 not (and why)
 *   GET  /metrics                          Prometheus text
 *   GET  /api/status                       stages, workers, load, models and versions
 *   GET  /api/live                         the live page's feed (see live.ts)
 *   GET  /, /app.js, /live-records.js, /style.css   the live page
 *   POST /api/models/:stage/reload         { model?, canary? }   control: bearer token
 *   POST /api/models/:stage/promote        control
 *   POST /api/models/:stage/rollback       control
 *   GET  /api/streams                      per stream: connected, fps, drops, reconnects, last error
 *   POST /api/streams                      { id, url, ...options, stage? }   control
 *   PATCH /api/streams/:id                 { url?, ...options }               control
 *   DELETE /api/streams/:id                control
 *   GET  /api/clips, /clips/<path>         event clips (clips.ts)
 *   GET  /api/heatmaps, /api/streams/:id/heatmap.png|.json   heatmaps (heatmap.ts)
 *   GET  /api/zones, /api/zones/:stage/streams/:id, PUT the same (control)   zone geometry (zones-edit.ts)
 *
 * Read endpoints are public unless `publicMetrics: false`; control always
 * needs the token and is refused when none is configured.
 */
import * as v from "valibot";
import { Hono, type MiddlewareHandler } from "hono";
import { bearerAuth } from "hono/bearer-auth";
import { bodyLimit } from "hono/body-limit";
import { HTTPException } from "hono/http-exception";
import { secureHeaders } from "hono/secure-headers";
import type { Logger } from "../../core/log.ts";
import { renderMetrics } from "../metrics.ts";
import { ModelLoadError, NoCanaryError, type ModelControl } from "../../inference/model-lifecycle.ts";
import { dirname } from "node:path";
import { modelsDir, resolveModelWithin } from "../../platform/paths.ts";
import type { StatusView } from "../status.ts";
import { streamErrorStatus, streamOps } from "../streams.ts";
import { LIVE_CONTENT_TYPE, type LiveFeed } from "./live.ts";
import { registerPipelineBrowser } from "./browser.ts";
import type { HttpOptions } from "../../spec/http-options.ts";
import { registerClipRoutes } from "./clips.ts";
import { registerHeatmapRoutes } from "./heatmap.ts";
import { registerZoneRoutes } from "./zones-edit.ts";

/** Body of a reload request; all optional: `{}` reloads the model's file. */
export const ReloadBody = v.strictObject({
  /** Another model file (a path or a name under models/); default: the active version's file. */
  model: v.optional(v.pipe(v.string(), v.minLength(1), v.maxLength(4096))),
  /** Canary share for this version (0..1], or false to replace the active version directly; default: the stage's `canary` option. */
  canary: v.optional(v.union([v.pipe(v.number(), v.gtValue(0), v.maxValue(1)), v.literal(false)])),
});

export interface AppContext {
  view: StatusView;
  live: LiveFeed;
  options: HttpOptions;
  /** The effective control token (option or environment), if any. */
  token?: string;
  /** The live page's files by URL path. */
  assets: Map<string, { body: string; type: string }>;
  log: Logger;
}

/** A request the server refuses with a status and a message (JSON `{ error }`). */
class HttpError extends Error {
  constructor(
    readonly status: 400 | 401 | 403 | 404 | 409 | 413 | 422,
    message: string,
  ) {
    super(message);
  }
}

/** The page loads nothing from elsewhere; previews are blob: URLs. */
const CSP = {
  defaultSrc: ["'self'"],
  imgSrc: ["'self'", "blob:"],
  styleSrc: ["'self'"],
  scriptSrc: ["'self'"],
  connectSrc: ["'self'"],
  frameAncestors: ["'none'"],
};

/**
 * @example
 * const app = createApp({ view, live, options, token, assets, log });
 * const res = await app.request("/readyz");
 */
export function createApp(ctx: AppContext): Hono {
  const app = new Hono();
  const { view, live, options, token } = ctx;
  registerPipelineBrowser(app, ctx); // first: /browser sets its own headers (COOP/COEP, a CSP that allows WebAssembly)

  app.use("*", secureHeaders({ contentSecurityPolicy: CSP, crossOriginResourcePolicy: "same-origin" }));

  const auth = (kind: string): MiddlewareHandler =>
    token
      ? bearerAuth({
          token,
          realm: "framewire",
          noAuthenticationHeader: { message: { error: `${kind} needs Authorization: Bearer <token>` } },
          invalidAuthenticationHeader: { message: { error: "malformed Authorization header (expected: Bearer <token>)" } },
          invalidToken: { message: { error: "invalid token" } },
        })
      : async () => {
          throw new HttpError(403, `${kind} is disabled: set http.token in the pipeline file or FRAMEWIRE_HTTP_TOKEN`);
        };
  const read: MiddlewareHandler = options.publicMetrics ? async (_c, next) => next() : auth("this endpoint");
  const control = auth("a control request");
  const limit = bodyLimit({
    maxSize: options.maxBodyBytes,
    onError: () => {
      throw new HttpError(413, `request body over ${options.maxBodyBytes} bytes`);
    },
  });

  app.get("/healthz", (c) => c.json({ status: "ok" }));
  app.get("/readyz", (c) => {
    const r = view.readiness();
    return c.json(r, r.ready ? 200 : 503);
  });
  app.get("/metrics", read, async (c) => {
    const m = await renderMetrics(view);
    return c.body(m.body, 200, { "content-type": m.contentType });
  });
  app.get("/api/status", read, (c) => c.json(view.snapshot()));
  app.get("/api/live", read, (c) =>
    c.body(live.open(c.req.raw.signal), 200, { "content-type": LIVE_CONTENT_TYPE, "cache-control": "no-store", "x-accel-buffering": "no" }),
  );

  const lifecycle = (stage: string): ModelControl => {
    const s = view.exec.live().find((x) => x.id === stage);
    if (!s) throw new HttpError(404, `no stage "${stage}" in this process`);
    if (!s.instance.models) throw new HttpError(404, `stage "${stage}" (${s.operator}) serves no model`);
    return s.instance.models;
  };
  app.post("/api/models/:stage/reload", control, limit, async (c) => {
    const life = lifecycle(c.req.param("stage"));
    const body = v.safeParse(ReloadBody, await jsonBody(c.req.raw));
    if (!body.success) throw new HttpError(400, `invalid body: ${body.issues.map((i) => `${v.getDotPath(i) ?? "body"}: ${i.message}`).join("; ")}`);
    let file: string | undefined;
    if (body.output.model) {
      const current = dirname(life.status().active.file);
      file = resolveModelWithin(body.output.model, [modelsDir, current]);
      if (!file) throw new HttpError(422, `model file not found: ${body.output.model} (a request may name files in models/ or ${current} only)`);
    }
    const result = await life.reload({ file, canary: body.output.canary });
    ctx.log.info(`reload of ${c.req.param("stage")} requested: ${result.outcome} ${result.version}`);
    return c.json({ ...result, models: life.status() });
  });
  app.post("/api/models/:stage/promote", control, limit, (c) => {
    const life = lifecycle(c.req.param("stage"));
    const version = life.promote();
    return c.json({ outcome: "promoted", version, models: life.status() });
  });
  app.post("/api/models/:stage/rollback", control, limit, (c) => {
    const life = lifecycle(c.req.param("stage"));
    const version = life.rollback();
    return c.json({ outcome: "rolled-back", version, models: life.status() });
  });

  const streams = streamOps(view.exec);
  app.get("/api/streams", read, (c) => c.json({ streams: streams.list() }));
  app.post("/api/streams", control, limit, async (c) => {
    const body = await jsonBody(c.req.raw);
    const { stage, ...spec } = (body && typeof body === "object" ? body : {}) as { stage?: unknown };
    if (stage !== undefined && typeof stage !== "string") throw new HttpError(400, "stage: expected a source stage id");
    const info = await streams.add(spec, stage);
    ctx.log.info(`stream ${info.id} added to ${info.stage} over HTTP`);
    return c.json(info, 201);
  });
  app.patch("/api/streams/:id", control, limit, async (c) => c.json(await streams.update(c.req.param("id"), await jsonBody(c.req.raw))));
  app.delete("/api/streams/:id", control, limit, async (c) => {
    await streams.remove(c.req.param("id"));
    ctx.log.info(`stream ${c.req.param("id")} removed over HTTP`);
    return c.json({ removed: c.req.param("id") });
  });

  const routeDeps = { view, read, control, limit, log: ctx.log };
  registerClipRoutes(app, routeDeps);
  registerHeatmapRoutes(app, routeDeps);
  registerZoneRoutes(app, routeDeps);

  for (const [path, asset] of ctx.assets) {
    app.get(path, (c) => c.body(asset.body, 200, { "content-type": asset.type, "cache-control": "no-cache" }));
  }

  app.notFound((c) => c.json({ error: `no route ${c.req.method} ${c.req.path}` }, 404));
  app.onError((err, c) => {
    if (err instanceof HttpError) return c.json({ error: err.message }, err.status);
    if (err instanceof HTTPException) return err.getResponse();
    if (err instanceof ModelLoadError) return c.json({ error: err.message }, 422);
    if (err instanceof NoCanaryError) return c.json({ error: err.message }, 409);
    const streamStatus = streamErrorStatus(err);
    if (streamStatus) return c.json({ error: err.message, code: (err as { code?: string }).code }, streamStatus);
    ctx.log.error(`${c.req.method} ${c.req.path}: ${err.stack ?? err.message}`);
    return c.json({ error: "internal error (see the pipeline's log)" }, 500);
  });
  return app;
}

/** The request's JSON body; an empty body is `{}`. */
async function jsonBody(req: Request): Promise<unknown> {
  const text = await req.text();
  if (!text.trim()) return {};
  try {
    return JSON.parse(text);
  } catch {
    throw new HttpError(400, "body is not JSON");
  }
}
