/**
 * Triton's HTTP extensions beyond KServe v2:
 *   model configuration  GET  /v2/models/{name}[/versions/{v}]/config
 *   statistics           GET  /v2/models[/{name}[/versions/{v}]]/stats
 *   model repository     POST /v2/repository/index
 *                        POST /v2/repository/models/{name}/load | /unload
 * Request bodies are validated with valibot; a successful load or unload
 * answers 200 with an empty body, as Triton does.
 */
import type { Context, Hono } from "hono";
import * as v from "valibot";
import type { Logger } from "../core/log.ts";
import { describeIssue, formatPath } from "../spec/issues.ts";
import { tritonConfigJson } from "./config-json.ts";
import { HttpError, lookup, type ServeEnv } from "./http.ts";
import type { ModelRepository } from "./repository.ts";

export interface ExtensionOptions {
  repository: ModelRepository;
  log: Logger;
}

const Parameter = v.union([v.string(), v.number(), v.boolean()], "expected a string, number or boolean");
const IndexRequest = v.strictObject({ ready: v.optional(v.boolean("expected true or false")) });
const LoadRequest = v.strictObject({
  parameters: v.optional(
    v.pipe(
      v.record(v.string(), Parameter),
      v.check((p) => Object.keys(p).every((k) => k === "config"), "framewire serve reads only the config parameter (file: overrides are not supported)"),
    ),
  ),
});
const UnloadRequest = v.strictObject({
  parameters: v.optional(v.strictObject({ unload_dependents: v.optional(v.boolean("expected true or false")) })),
});

/** A request's JSON body (empty counts as `{}`), validated. */
async function body<S extends v.GenericSchema>(c: Context, schema: S, what: string): Promise<v.InferOutput<S>> {
  const text = await c.req.text();
  let json: unknown = {};
  if (text.trim()) {
    try {
      json = JSON.parse(text);
    } catch (err) {
      throw new HttpError(400, `${what}: the body is not JSON: ${(err as Error).message}`);
    }
  }
  const r = v.safeParse(schema, json);
  if (!r.success) {
    const why = r.issues.map((i) => `${formatPath((i.path ?? []).map((p) => p.key as string)) || "body"}: ${describeIssue(i, schema)}`).join("; ");
    throw new HttpError(400, `${what}: ${why}`);
  }
  return r.output;
}

/**
 * Adds the configuration, statistics and repository endpoints.
 * @example
 * registerExtensions(app, { repository, log });
 */
export function registerExtensions(app: Hono<ServeEnv>, { repository, log }: ExtensionOptions): void {
  app.get("/v2/models/stats", (c) => c.json({ model_stats: repository.ready().map((m) => m.stats.toJson(m.name, m.version)) }));
  app.get("/v2/models/:name/stats", (c) => {
    const name = c.req.param("name");
    c.set("model", name);
    // Any READY version will do to check the name; the answer lists them all.
    repository.get(name);
    return c.json({ model_stats: repository.ready().filter((m) => m.name === name).map((m) => m.stats.toJson(m.name, m.version)) });
  });
  app.get("/v2/models/:name/versions/:version/stats", (c) => {
    const m = lookup(c, repository);
    return c.json({ model_stats: [m.stats.toJson(m.name, m.version)] });
  });

  for (const base of ["/v2/models/:name", "/v2/models/:name/versions/:version"]) {
    app.get(`${base}/config`, (c) => {
      const m = lookup(c, repository);
      return c.json(tritonConfigJson(m.config, m.kinds));
    });
  }

  app.post("/v2/repository/index", async (c) => {
    const req = await body(c, IndexRequest, "repository index");
    return c.json(await repository.index(req.ready ?? false));
  });
  app.post("/v2/repository/models/:name/load", async (c) => {
    const name = c.req.param("name");
    c.set("model", name);
    const req = await body(c, LoadRequest, `load ${name}`);
    const raw = req.parameters?.config;
    let config: unknown;
    if (raw !== undefined) {
      if (typeof raw !== "string") throw new HttpError(400, `load ${name}: parameters.config is a JSON string (the model configuration)`);
      try {
        config = JSON.parse(raw);
      } catch (err) {
        throw new HttpError(400, `load ${name}: parameters.config is not JSON: ${(err as Error).message}`);
      }
    }
    try {
      await repository.load(name, config);
    } catch (err) {
      log.warn(`load ${name}: ${(err as Error).message}`);
      throw err;
    }
    return c.body(null, 200);
  });
  app.post("/v2/repository/models/:name/unload", async (c) => {
    const name = c.req.param("name");
    c.set("model", name);
    await body(c, UnloadRequest, `unload ${name}`);
    await repository.unload(name);
    return c.body(null, 200);
  });
}
