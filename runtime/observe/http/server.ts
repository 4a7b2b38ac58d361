/**
 * Starts a process's HTTP server: the hono routes (app.ts) bound with
 * the platform's `serve` (Bun.serve or Deno.serve, shared with `framewire serve`).
 */
import * as v from "valibot";
import { join } from "node:path";
import { ConfigError } from "../../core/errors.ts";
import type { Logger } from "../../core/log.ts";
import { projectRoot } from "../../platform/paths.ts";
import { env, readText } from "../../platform/index.ts";
import { serve, type Listener } from "../../platform/index.ts";
import type { StatusView } from "../status.ts";
import { createApp } from "./app.ts";
import { LiveFeed } from "./live.ts";
import { TOKEN, type HttpOptions } from "../../spec/http-options.ts";

export interface HttpServer {
  /** http://host:port, with the port actually bound (useful with port 0). */
  url: string;
  port: number;
  /** Ends live streams and closes the listener. */
  stop(): Promise<void>;
}

/** The live page's static files (web/ at the top of the project), read once. */
const ASSETS: [path: string, file: string, type: string][] = [
  ["/", "index.html", "text/html; charset=utf-8"],
  ["/app.js", "app.js", "text/javascript; charset=utf-8"],
  ["/live-records.js", "live-records.js", "text/javascript; charset=utf-8"],
  ["/style.css", "style.css", "text/css; charset=utf-8"],
];

const EnvToken = v.pipe(v.string(), v.minLength(16), v.regex(TOKEN));

/**
 * @throws ConfigError when the port is taken or the token settings do not add up.
 * @example
 * const http = await startHttpServer(view, { port: 0, host: "127.0.0.1", publicMetrics: true, maxBodyBytes: 65536, liveFps: 5, liveWidth: 640 }, log);
 * console.log(`${http.url}/metrics`);
 * await http.stop();
 */
export async function startHttpServer(view: StatusView, options: HttpOptions, log: Logger): Promise<HttpServer> {
  const fromEnv = env("FRAMEWIRE_HTTP_TOKEN");
  if (!options.token && fromEnv && !v.is(EnvToken, fromEnv)) {
    throw new ConfigError("FRAMEWIRE_HTTP_TOKEN: expected at least 16 characters of letters, digits and . _ ~ + / -");
  }
  const token = options.token ?? (fromEnv || undefined);
  if (!options.publicMetrics && !token) throw new ConfigError("http.publicMetrics: false needs a token (http.token or FRAMEWIRE_HTTP_TOKEN)");
  const assets = new Map<string, { body: string; type: string }>();
  for (const [path, file, type] of ASSETS) assets.set(path, { body: await readText(join(projectRoot, "web", file)), type });
  const live = new LiveFeed(view.exec, { fps: options.liveFps, width: options.liveWidth });
  const app = createApp({ view, live, options, token, assets, log });
  let server: Listener;
  try {
    // The runtime's limit is a backstop that drops the connection; bodies just over ours get hono's 413 first.
    server = serve(app.fetch, { hostname: options.host, port: options.port, maxRequestBodySize: Math.max(1 << 20, 4 * options.maxBodyBytes) });
  } catch (err) {
    throw new ConfigError(`http: cannot listen on ${options.host}:${options.port}: ${(err as Error).message}`);
  }
  const url = `http://${options.host.includes(":") ? `[${options.host}]` : options.host}:${server.port}`;
  log.info(`listening on ${url} — live page /, /metrics, /healthz, /readyz, /api/status; control ${token ? "enabled (bearer token)" : "disabled (no token)"}`);
  return {
    url,
    port: server.port,
    async stop() {
      live.close();
      await server.stop();
    },
  };
}
