/**
 * The `http:` key of a pipeline file (and `--http-port`): the per-process
 * HTTP server for health, metrics, status, the live page and model control.
 * Kept apart from the server so the loader does not pull in hono.
 */
import * as v from "valibot";
import { ConfigError } from "../core/errors.ts";

/** What an HTTP bearer token may contain (RFC 6750). */
export const TOKEN = /^[A-Za-z0-9._~+/-]+=*$/;

export const HttpSchema = v.strictObject({
  /** TCP port; 0 picks a free one (the log says which). */
  port: v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(65535)),
  /** Interface to listen on: loopback unless you mean to expose it. */
  host: v.optional(v.pipe(v.string(), v.minLength(1)), "127.0.0.1"),
  /**
   * Bearer token for control requests (model reload, promote, rollback), and
   * for everything but /healthz and /readyz when `publicMetrics` is false.
   * Without one, control requests are refused. Default: $FRAMEWIRE_HTTP_TOKEN.
   */
  token: v.optional(v.pipe(v.string(), v.minLength(16, "expected a token of at least 16 characters"), v.regex(TOKEN, "expected letters, digits and . _ ~ + / - (hex or base64 works)"))),
  /** /metrics, /api/status and the live page need no token. */
  publicMetrics: v.optional(v.boolean(), true),
  /** Largest request body accepted, in bytes. */
  maxBodyBytes: v.optional(v.pipe(v.number(), v.integer(), v.minValue(256), v.maxValue(16 * 1024 * 1024)), 64 * 1024),
  /** Most preview frames per second per stream on the live page (encoded only while someone watches). */
  liveFps: v.optional(v.pipe(v.number(), v.minValue(0.2), v.maxValue(30)), 5),
  /** Preview frames wider than this are scaled down before JPEG encoding. */
  liveWidth: v.optional(v.pipe(v.number(), v.integer(), v.minValue(64), v.maxValue(4096)), 640),
});

export type HttpOptions = v.InferOutput<typeof HttpSchema>;

/**
 * The server settings for this run: the file's `http:` key, with `--http-port`
 * overriding its port (or switching the server on with the defaults).
 * @throws ConfigError for a port flag that is not a port number.
 * @example
 * httpOptions(undefined, "9464"); // { port: 9464, host: "127.0.0.1", ... }
 */
export function httpOptions(fromFile: HttpOptions | undefined, portFlag: string | undefined): HttpOptions | undefined {
  if (portFlag === undefined) return fromFile;
  const port = Number(portFlag);
  if (!/^\d+$/.test(portFlag) || port > 65535) throw new ConfigError(`--http-port: expected a port number 0..65535 (0 picks a free one), got "${portFlag}"`);
  return { ...(fromFile ?? v.parse(HttpSchema, { port })), port };
}
