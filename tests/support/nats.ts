/**
 * Real nats-server processes for tests and the bench: each on a free
 * 127.0.0.1 port with a config generated in a temp folder, stopped by PID.
 * Every server started here is tracked; `stopAllNatsServers()` (afterAll)
 * stops what a failed test left behind, and the process helper kills any
 * child still running when the test process exits.
 */
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { tempDir } from "./paths.ts";
import { freePort } from "./ports.ts";
import { startProcess, type Child } from "./process.ts";

export interface NatsServerOptions {
  /** Client port (default: a free one). */
  port?: number;
  /** max_payload as nats-server writes it (default 8MB, as the shipped configs). */
  maxPayload?: string;
  /** Accept leaf-node connections (a hub): on this port, or a free one when true. */
  leafListen?: number | true;
  /** Connect as a leaf node to these hub leaf ports (an edge server). */
  leafRemotes?: number[];
  /** More config lines (authorization, tls, ...). */
  extra?: string;
  /** Seconds the server may take to say it is ready. */
  readyTimeoutS?: number;
}

export interface NatsServer {
  url: string;
  port: number;
  /** The leaf-node port when the server is a hub. */
  leafPort?: number;
  readonly pid: number;
  /** Everything the server logged so far. */
  log(): string;
  /** Resolves once `pattern` appears in the server's log. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** SIGTERM by PID (SIGKILL after a grace period); waits until it has exited. */
  stop(): Promise<void>;
  /** Starts it again (after stop) on the same ports with the same config. */
  start(): Promise<void>;
  /** Stops it and deletes its config folder. */
  dispose(): Promise<void>;
}

const running = new Set<NatsServer>();

/**
 * Starts nats-server and waits for "Server is ready".
 * @example
 * const hub = await startNatsServer({ leafListen: true });
 * const edge = await startNatsServer({ leafRemotes: [hub.leafPort!] });
 * await hub.waitFor(/Leafnode connection created/);
 */
export async function startNatsServer(o: NatsServerOptions = {}): Promise<NatsServer> {
  const port = o.port ?? (await freePort());
  const leafPort = o.leafListen === true ? await freePort() : o.leafListen;
  const dir = await tempDir("framewire-nats-");
  const lines = [`listen: 127.0.0.1:${port}`, `max_payload: ${o.maxPayload ?? "8MB"}`];
  if (leafPort) lines.push(`leafnodes { listen: 127.0.0.1:${leafPort} }`);
  if (o.leafRemotes?.length) {
    lines.push(`leafnodes { remotes: [ ${o.leafRemotes.map((p) => `{ url: "nats-leaf://127.0.0.1:${p}" }`).join(", ")} ] }`);
  }
  if (o.extra) lines.push(o.extra);
  const config = join(dir.path, "nats.conf");
  await writeFile(config, lines.join("\n") + "\n");

  let child: Child | undefined;
  let before = "";
  const launch = async () => {
    child = startProcess(["nats-server", "-c", config]);
    try {
      await child.waitFor(/Server is ready/, (o.readyTimeoutS ?? 15) * 1000);
    } catch (err) {
      await child.stop(500);
      throw new Error(`nats-server on port ${port} did not start: ${(err as Error).message}`);
    }
  };
  const stop = async () => {
    if (!child) return;
    const c = child;
    child = undefined;
    await c.stop(2000);
    before += c.stderr() + c.stdout();
  };
  await launch();
  const server: NatsServer = {
    url: `nats://127.0.0.1:${port}`,
    port,
    leafPort,
    get pid() {
      return child?.pid ?? -1;
    },
    log: () => before + (child ? child.stderr() + child.stdout() : ""),
    waitFor: (pattern, timeoutMs) => {
      if (!child) return Promise.reject(new Error(`nats-server on port ${port} is not running`));
      return child.waitFor(pattern, timeoutMs);
    },
    stop,
    start: async () => {
      if (!child) await launch();
    },
    dispose: async () => {
      running.delete(server);
      await stop();
      await dir.remove();
    },
  };
  running.add(server);
  return server;
}

/** Stops every server this process started and deletes their folders (for afterAll). */
export async function stopAllNatsServers(): Promise<void> {
  await Promise.all([...running].map((s) => s.dispose()));
}
