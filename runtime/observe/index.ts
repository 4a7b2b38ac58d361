/**
 * Observing a running pipeline: the status view, the HTTP server (health,
 * metrics, status API, live page) and the NATS status responder.
 */
import type { Logger } from "../core/log.ts";
import type { Executor } from "../engine/executor.ts";
import type { HttpOptions } from "../spec/http-options.ts";
import { serveStatus } from "./cluster.ts";
import { startHttpServer } from "./http/server.ts";
import { StatusView } from "./status.ts";
import { serveStreamControl } from "./streams.ts";
import { registerService } from "./service.ts";
import type { Subscription } from "../core/bus.ts";
import { env } from "../platform/index.ts";

/** What observing a running pipeline holds open; `close()` after the executor is done. */
export interface Observing {
  view: StatusView;
  /** The HTTP server's base URL, when it runs. */
  url?: string;
  close(): Promise<void>;
}

/**
 * Starts what watches a pipeline: the HTTP server when `http` is given, the
 * NATS status and stream-control responders when the bus is NATS. Call before `exec.start()` so
 * health and readiness answer while models load.
 * @example
 * const obs = await observe(exec, { http: { port: 9464, host: "127.0.0.1", publicMetrics: true, maxBodyBytes: 65536, liveFps: 5, liveWidth: 640 }, log });
 * await exec.start();
 * await exec.done;
 * await obs.close();
 */
export async function observe(exec: Executor, o: { http?: HttpOptions; log: Logger }): Promise<Observing> {
  const view = new StatusView(exec);
  view.start();
  const nats = view.natsBus();
  const sub = nats ? serveStatus(nats, view) : undefined;
  // Stream control over NATS (`bun run streams`), with the HTTP server's token.
  const token = o.http?.token ?? (env("FRAMEWIRE_HTTP_TOKEN") || undefined);
  const control = nats ? serveStreamControl(nats, exec, token, o.log.child("streams")) : undefined;
  // A NATS micro service (`nats micro ls`), registered once the stages exist (see start below).
  let service: Subscription | undefined;
  const offStarted = nats ? exec.onStarted(() => (service = registerService(nats, exec))) : undefined;
  const server = o.http ? await startHttpServer(view, o.http, o.log.child("http")) : undefined;
  return {
    view,
    url: server?.url,
    async close() {
      sub?.unsubscribe();
      control?.unsubscribe();
      offStarted?.();
      service?.unsubscribe();
      await server?.stop();
      view.stop();
    },
  };
}

