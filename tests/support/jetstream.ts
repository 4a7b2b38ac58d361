/**
 * Real nats-server processes with JetStream for sink and store-and-forward
 * tests: a single server, or the shipped hub + edge leaf configs rewritten
 * to free 127.0.0.1 ports and temporary store folders. Servers are stopped
 * by PID; one left running by a failed test dies with the test process.
 */
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import { freePort } from "./ports.ts";
import { repoRoot } from "./paths.ts";
import { startProcess, type Child } from "./process.ts";

export interface NatsServer {
  /** nats://127.0.0.1:PORT (client port). */
  url: string;
  port: number;
  /** The server's log so far (stderr). */
  log(): string;
  /** SIGTERM by PID, then waits until it has exited; its store stays. */
  stop(): Promise<void>;
  /** Starts it again on the same ports with the same store. */
  start(): Promise<void>;
  /** Stops it and deletes its folder. */
  dispose(): Promise<void>;
}

const all = new Set<NatsServer>();

/** Starts nats-server on a config text written to a fresh temp folder; waits for "Server is ready". */
async function serve(config: (dir: string) => string, port: number, name: string): Promise<NatsServer> {
  const dir = await mkdtemp(join(tmpdir(), `fw-nats-${name}-`));
  const file = join(dir, "server.conf");
  await writeFile(file, config(dir));
  let child: Child | undefined;
  const server: NatsServer = {
    url: `nats://127.0.0.1:${port}`,
    port,
    log: () => child?.stderr() ?? "",
    async start() {
      if (child) throw new Error(`${name} is already running`);
      const c = startProcess(["nats-server", "-c", file]);
      child = c;
      try {
        await c.waitFor(/Server is ready/, 15_000);
      } catch (err) {
        await c.stop(500);
        child = undefined;
        throw new Error(`nats-server ${name} did not start: ${(err as Error).message}`);
      }
    },
    async stop() {
      const c = child;
      child = undefined;
      await c?.stop(5000);
    },
    async dispose() {
      all.delete(server);
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
  all.add(server);
  await server.start();
  return server;
}

/**
 * A standalone server with an 8MB max_payload and JetStream (store in a temp
 * folder) unless `jetstream: false`.
 * @example
 * const srv = await startJetStreamServer();
 * // ... srv.url ...
 * await srv.dispose();
 */
export async function startJetStreamServer(o: { jetstream?: boolean } = {}): Promise<NatsServer> {
  const port = await freePort();
  const js = (dir: string) => (o.jetstream === false ? "" : `jetstream { store_dir: "${join(dir, "js")}" }\n`);
  return serve((dir) => `listen: 127.0.0.1:${port}\nmax_payload: 8MB\n${js(dir)}`, port, "js");
}

/** Replaces each pattern once; throws when one is missing, so a changed shipped config fails loudly here. */
function rewrite(text: string, file: string, edits: [RegExp, string][]): string {
  for (const [re, to] of edits) {
    if (!re.test(text)) throw new Error(`${file}: no match for ${re} (the tests rewrite it to free ports and temp folders)`);
    text = text.replace(re, to);
  }
  return text;
}

export interface HubAndEdge {
  hub: NatsServer;
  edge: NatsServer;
  /** The hub's client URL with the shipped `cloud` user. */
  hubUrl: string;
  /** The edge's JetStream domain from edge-leaf.conf. */
  edgeDomain: string;
  dispose(): Promise<void>;
}

/**
 * pipelines/nats/hub.conf and edge-leaf.conf as shipped, on free ports and
 * temp stores; resolves once the edge's leaf link to the hub is up.
 */
export async function startHubAndEdge(): Promise<HubAndEdge> {
  const [hubPort, leafPort, edgePort] = [await freePort(), await freePort(), await freePort()];
  const hubText = await readFile(join(repoRoot, "pipelines/nats/hub.conf"), "utf8");
  const edgeText = await readFile(join(repoRoot, "pipelines/nats/edge-leaf.conf"), "utf8");
  const edgeDomain = /jetstream\s*\{[^}]*?domain:\s*(\S+)/.exec(edgeText)?.[1];
  if (!edgeDomain) throw new Error("edge-leaf.conf: no jetstream domain");
  const hub = await serve(
    (dir) =>
      rewrite(hubText, "hub.conf", [
        [/^listen: .*$/m, `listen: 127.0.0.1:${hubPort}`],
        [/(leafnodes\s*\{\s*listen: )\S+/, `$1127.0.0.1:${leafPort}`],
        [/store_dir: .*/, `store_dir: "${join(dir, "js")}"`],
      ]),
    hubPort,
    "hub",
  );
  const edge = await serve(
    (dir) =>
      rewrite(edgeText, "edge-leaf.conf", [
        [/^listen: .*$/m, `listen: 127.0.0.1:${edgePort}`],
        [/(nats-leaf:\/\/[^@"]*@)[^"]+/, `$1127.0.0.1:${leafPort}`],
        [/store_dir: .*/, `store_dir: "${join(dir, "js")}"`],
      ]),
    edgePort,
    "edge",
  );
  const pair: HubAndEdge = {
    hub,
    edge,
    hubUrl: `nats://cloud:cloud-secret@127.0.0.1:${hubPort}`,
    edgeDomain,
    dispose: async () => {
      await edge.dispose();
      await hub.dispose();
    },
  };
  try {
    await waitForLog(edge, /Leafnode connection created/);
  } catch (err) {
    await pair.dispose();
    throw err;
  }
  return pair;
}

async function waitForLog(s: NatsServer, re: RegExp, limitMs = 15_000): Promise<void> {
  const end = performance.now() + limitMs;
  while (!re.test(s.log())) {
    if (performance.now() > end) throw new Error(`no ${re} in the server log within ${limitMs} ms:\n${s.log()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A test client connection that keeps reconnecting (servers are restarted on purpose). */
export function client(url: string): Promise<NatsConnection> {
  const u = new URL(url);
  return connect({
    servers: `${u.hostname}:${u.port}`,
    user: u.username ? decodeURIComponent(u.username) : undefined,
    pass: u.password ? decodeURIComponent(u.password) : undefined,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 100,
  });
}

/** The JetStream manager of `nc`, retrying while JetStream is still starting after a (re)start. */
export async function manager(nc: NatsConnection, limitMs = 15_000): Promise<JetStreamManager> {
  const end = performance.now() + limitMs;
  for (;;) {
    try {
      return await jetstreamManager(nc);
    } catch (err) {
      if (performance.now() > end) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/**
 * Every message of `stream` from the first, in stream order, as parsed JSON
 * (an ordered consumer: no server-side state left behind).
 */
export async function readStream(nc: NatsConnection, stream: string): Promise<{ subject: string; msgId?: string; data: Record<string, unknown> }[]> {
  const jsm = await manager(nc);
  const total = (await jsm.streams.info(stream)).state.messages;
  const out: { subject: string; msgId?: string; data: Record<string, unknown> }[] = [];
  if (total === 0) return out;
  const consumer = await jetstream(nc).consumers.get(stream);
  const msgs = await consumer.consume();
  for await (const m of msgs) {
    out.push({ subject: m.subject, msgId: m.headers?.get("Nats-Msg-Id") || undefined, data: m.json() });
    if (m.info.pending === 0) break;
  }
  await msgs.close();
  return out;
}

/**
 * Resolves once `stream` holds at least `n` messages (errors while a server
 * restarts count as "not yet"); the limit only keeps a broken run from hanging.
 */
export async function waitForMessages(nc: NatsConnection, stream: string, n: number, limitMs = 60_000): Promise<number> {
  const end = performance.now() + limitMs;
  let have = 0;
  for (;;) {
    have = await jetstreamManager(nc)
      .then((jsm) => jsm.streams.info(stream))
      .then((si) => si.state.messages)
      .catch(() => have);
    if (have >= n) return have;
    if (performance.now() > end) throw new Error(`stream ${stream} holds ${have} messages, expected ${n}, after ${limitMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Stops every server this process started (for afterAll). */
export async function disposeAllNatsServers(): Promise<void> {
  await Promise.all([...all].map((s) => s.dispose()));
}
