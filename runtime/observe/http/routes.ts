/**
 * What route modules (clips.ts, heatmap.ts, zones-edit.ts) get from
 * createApp: the status view and the access middlewares, so each registers
 * its routes with one call and the same rules as app.ts.
 */
import { HTTPException } from "hono/http-exception";
import type { MiddlewareHandler } from "hono";
import type { Logger } from "../../core/log.ts";
import type { StatusView } from "../status.ts";

export interface RouteDeps {
  view: StatusView;
  /** Read endpoints: public unless `publicMetrics: false`. */
  read: MiddlewareHandler;
  /** Control endpoints: the bearer token, refused when none is configured. */
  control: MiddlewareHandler;
  /** The request body limit (413). */
  limit: MiddlewareHandler;
  log: Logger;
}

/**
 * An error answered as `{ "error": message }` with `status` (app.ts's onError
 * passes HTTPExceptions through).
 * @example
 * throw httpError(404, `no stage "${stage}" in this process`);
 */
export function httpError(status: 400 | 404 | 409 | 416 | 422, message: string): HTTPException {
  return new HTTPException(status, { message, res: Response.json({ error: message }, { status }) });
}

/**
 * The request's JSON body (an empty body is `{}`).
 * @throws HTTPException 400 when it is not JSON.
 * @example
 * const body = await readJson(c.req.raw);
 */
export async function readJson(req: Request): Promise<unknown> {
  const text = await req.text();
  if (!text.trim()) return {};
  try {
    return JSON.parse(text);
  } catch {
    throw httpError(400, "body is not JSON");
  }
}
