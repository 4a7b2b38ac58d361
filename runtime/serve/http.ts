/**
 * What the server's HTTP handlers share: the status each error answers with
 * (always JSON `{"error": "..."}`), the per-request values the metrics
 * middleware reads, and the model a route's parameters name.
 */
import type { Context } from "hono";
import { HTTPException } from "hono/http-exception";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { ConfigError, FramewireError } from "../core/errors.ts";
import { KServeProtocolError } from "../inference/kserve.ts";
import { CorruptImageError, ImageTooLargeError, UnsupportedImageError } from "../media/image-decode.ts";
import { BatchTooLargeError, OverloadedError, ShuttingDownError } from "./batcher.ts";
import type { ServedModel } from "./model.ts";
import { ModelControlError, ModelLoadFailedError, ModelNotFoundError, type ModelRepository } from "./repository.ts";

/** Per-request values handlers leave for the metrics middleware. */
export type ServeEnv = { Variables: { model: string } };

/**
 * The model a request's `:name` / `:version` route parameters name; remembered for the metrics.
 * @throws ModelNotFoundError (404) when no such version is READY.
 * @example
 * app.get("/v2/models/:name", (c) => c.json(lookup(c, repository).input));
 */
export function lookup(c: Context<ServeEnv>, repository: ModelRepository): ServedModel {
  const name = c.req.param("name")!;
  c.set("model", name);
  return repository.get(name, c.req.param("version"));
}

/** An error with the HTTP status it answers with (code `E_HTTP_<status>`). */
export class HttpError extends FramewireError {
  override name = "HttpError";
  constructor(
    readonly status: 400 | 404 | 413 | 415 | 503,
    message: string,
  ) {
    super(`E_HTTP_${status}`, message);
  }
}

/**
 * Status and message for an error a handler threw; `reason` labels refused images in the metrics,
 * `overloaded` 503s for a limit on work in flight (answered with `Retry-After: retryAfterS`).
 * @example
 * const { status, message } = classify(new ModelNotFoundError("unknown model")); // 404
 */
export function classify(err: unknown): { status: ContentfulStatusCode; message: string; reason?: string; retryAfterS?: number; overloaded?: string } {
  const message = (err as Error).message;
  if (err instanceof HttpError) {
    // A RetryLaterError (admission.ts, which imports this module) carries when to retry and which limit was reached.
    const { retryAfterS, reason } = err as { retryAfterS?: unknown; reason?: unknown };
    return { status: err.status, message, ...(typeof retryAfterS === "number" ? { retryAfterS, overloaded: String(reason) } : {}) };
  }
  if (err instanceof HTTPException) return { status: err.status as ContentfulStatusCode, message };
  if (err instanceof ModelNotFoundError) return { status: 404, message };
  if (err instanceof KServeProtocolError || err instanceof BatchTooLargeError || err instanceof ConfigError || err instanceof ModelControlError || err instanceof ModelLoadFailedError) return { status: 400, message };
  if (err instanceof CorruptImageError) return { status: 400, message, reason: "corrupt" };
  if (err instanceof UnsupportedImageError) return { status: 415, message, reason: "unsupported" };
  if (err instanceof ImageTooLargeError) return { status: 413, message, reason: "dimensions" };
  if (err instanceof OverloadedError) return { status: 503, message, retryAfterS: 1, overloaded: "batch-queue" };
  if (err instanceof ShuttingDownError) return { status: 503, message };
  return { status: 500, message: `internal error: ${message}` };
}
