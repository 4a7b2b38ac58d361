/**
 * The one place that touches runtime-specific APIs. The adapter for the
 * running runtime (Bun or Deno) is chosen at start; operators and the rest
 * of runtime/ use only these functions, web-standard APIs and node: modules
 * that both runtimes implement.
 */
import { existsSync as fsExistsSync, readFileSync } from "node:fs";
import { appendFile, mkdir, stat } from "node:fs/promises";
import { dirname } from "node:path";
import { cpuUsage, memoryUsage, resourceUsage } from "node:process";
import { ConfigError } from "../core/errors.ts";
import type { ChildProcess, FileWriter, Listener, Platform, ServeOptions } from "./types.ts";

export type { ChildProcess, FileWriter, Listener, ServeOptions };

const impl: Platform = "Deno" in globalThis ? (await import("./deno.ts")).platform : (await import("./bun.ts")).platform;

/** "bun 1.4.5" or "deno 2.9.6". */
export const runtimeName = impl.name;

/**
 * Starts a child process with piped stdout/stderr and no stdin.
 * @example
 * const p = spawn("ffmpeg", ["-version"]);
 * console.log(await new Response(p.stdout).text());
 */
export const spawn = impl.spawn;
export const readText = impl.readText;
export const readBytes = impl.readBytes;
/** Full path of an executable on PATH, or undefined. */
export const which = impl.which;
export const env = impl.env;
/** Command-line arguments after the script. */
export const args = impl.args;
export const exit = impl.exit;

/**
 * Serves `fetch` (a hono app's, say) on hostname:port with Bun.serve or Deno.serve.
 * @throws ConfigError when the address cannot be bound (port taken, no such interface).
 * @example
 * const l = serve(app.fetch, { hostname: "127.0.0.1", port: 0 });
 * console.log(`http://127.0.0.1:${l.port}/`);
 * await l.stop();
 */
export function serve(fetch: (req: Request) => Response | Promise<Response>, o: ServeOptions): Listener {
  try {
    return impl.serve(fetch, o);
  } catch (err) {
    throw new ConfigError(`cannot listen on ${o.hostname}:${o.port}: ${(err as Error).message}`);
  }
}

/**
 * hono's WebSocket upgrade for the running runtime (`hono/bun` or `hono/deno`); sockets upgraded on a
 * server started with {@link serve} work on both.
 * @example
 * app.get("/echo", upgradeWebSocket(() => ({ onMessage: (e, ws) => ws.send(String(e.data)) })));
 */
export const upgradeWebSocket = impl.upgradeWebSocket;

/** True when a file (or directory) exists at `path`. */
export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Synchronous existence check, for schema validation that cannot await. */
export function existsSync(path: string): boolean {
  return fsExistsSync(path);
}

/**
 * Opens `path` for buffered writing (truncating unless `append`), creating
 * parent directories.
 * @example
 * const out = await openWriter("out/run.jsonl");
 * out.write("{}\n");
 * await out.close();
 */
export async function openWriter(path: string, append = false): Promise<FileWriter> {
  await mkdir(dirname(path), { recursive: true });
  if (!append) return impl.openTruncating(path);
  let pending: (string | Uint8Array)[] = [];
  const flush = async () => {
    const parts = pending;
    pending = [];
    for (const p of parts) await appendFile(path, p);
  };
  return { write: (t) => void pending.push(t), flush, close: flush };
}

/** Calls `fn` on SIGINT/SIGTERM; returns a function that removes the handlers. */
export function onShutdownSignal(fn: (signal: string) => void): () => void {
  const offs = (["SIGINT", "SIGTERM"] as const).map((s) => impl.onSignal(s, () => fn(s)));
  return () => offs.forEach((off) => off());
}

/** CPU time (user + system) this process has used, in ms. */
export function cpuTime(): number {
  const u = cpuUsage();
  return (u.user + u.system) / 1000;
}

/**
 * Peak resident set size of this process (not its children) in bytes. On
 * Linux from /proc (VmHWM): getrusage's figure survives exec, so a process
 * spawned by a large one would report its parent's size.
 */
export function peakRss(): number {
  try {
    const kb = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"))?.[1];
    if (kb) return Number(kb) * 1024;
  } catch {
    // Not Linux: fall back to getrusage.
  }
  return resourceUsage().maxRSS * 1024;
}

/** Resident set size of this process in bytes. */
export function rss(): number {
  return memoryUsage().rss;
}
