/**
 * Binds an HTTP handler to a port: Bun.serve or Deno.serve. runtime/platform.ts
 * has no server yet; this is the one place `framewire serve` touches a
 * runtime-specific API, shaped so it can move there unchanged.
 */
import { ConfigError } from "../errors.ts";

export interface Listener {
  /** The bound port (the one asked for, or the one picked for port 0). */
  port: number;
  /** Stops listening and closes the connections (call it once requests in progress have answered). */
  stop(): Promise<void>;
}

export interface ListenOptions {
  hostname: string;
  port: number;
  /** Bodies larger than this are cut off by the runtime itself; keep it above the app's own limits so those answer first. */
  maxRequestBodySize: number;
}

/** The slice of Deno.serve used here (bun-types has no Deno types). */
declare const Deno: {
  serve(
    o: { hostname: string; port: number; onListen?: () => void },
    handler: (req: Request) => Response | Promise<Response>,
  ): { addr: { port: number }; shutdown(): Promise<void> };
};

/**
 * @throws ConfigError when the address cannot be bound (port taken, no such interface).
 * @example
 * const l = listen(app.fetch, { hostname: "127.0.0.1", port: 8000, maxRequestBodySize: 512 << 20 });
 * await l.stop();
 */
export function listen(fetch: (req: Request) => Response | Promise<Response>, o: ListenOptions): Listener {
  if ("Deno" in globalThis) {
    const server = Deno.serve({ hostname: o.hostname, port: o.port, onListen: () => {} }, fetch);
    return { port: server.addr.port, stop: () => server.shutdown() };
  }
  let server: ReturnType<typeof Bun.serve>;
  try {
    server = Bun.serve({
      hostname: o.hostname,
      port: o.port,
      fetch,
      maxRequestBodySize: o.maxRequestBodySize,
      // Seconds a connection may sit silent; a request can wait in a deep queue or return a large JSON tensor.
      idleTimeout: 120,
    });
  } catch (err) {
    throw new ConfigError(`cannot listen on ${o.hostname}:${o.port}: ${(err as Error).message}`);
  }
  return { port: server.port ?? o.port, stop: () => server.stop(true) };
}
