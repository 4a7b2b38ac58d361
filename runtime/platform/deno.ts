import { accessSync, constants, openSync, writeSync, closeSync, fsyncSync } from "node:fs";
import { Socket } from "node:net";
import { delimiter, join } from "node:path";
import { upgradeWebSocket } from "hono/deno";
import type { Platform } from "./types.ts";

/*
 * Deno 2.9's node:net can still emit a read error (ECONNRESET) on a socket
 * its owner has already destroyed: nats.js removes its listeners and
 * destroys the socket when a server refuses it, then the reset arrives as an
 * uncaught exception that ends the process. Node emits nothing there once a
 * socket is destroyed; neither does this.
 */
const emit = Socket.prototype.emit;
Socket.prototype.emit = function (this: Socket, event: string | symbol, ...args: unknown[]): boolean {
  const err = args[0] as { syscall?: string } | undefined;
  if (event === "error" && this.destroyed && err?.syscall === "read" && this.listenerCount("error") === 0) return false;
  return emit.call(this, event, ...args);
};

/** The slice of the Deno namespace this adapter uses (bun-types has no Deno types). */
declare const Deno: {
  version: { deno: string };
  Command: new (
    cmd: string,
    o: { args: string[]; stdin: "null"; stdout: "piped"; stderr: "piped"; env?: Record<string, string> },
  ) => {
    spawn(): {
      pid: number;
      stdout: ReadableStream<Uint8Array>;
      stderr: ReadableStream<Uint8Array>;
      status: Promise<{ code: number; signal: string | null }>;
      kill(signal?: string): void;
    };
  };
  readTextFile(path: string): Promise<string>;
  readFile(path: string): Promise<Uint8Array>;
  env: { get(name: string): string | undefined };
  args: string[];
  addSignalListener(signal: string, fn: () => void): void;
  removeSignalListener(signal: string, fn: () => void): void;
  exit(code: number): never;
  serve(
    o: { hostname: string; port: number; onListen?: () => void },
    handler: (req: Request) => Response | Promise<Response>,
  ): { addr: { port: number }; shutdown(): Promise<void> };
};

/** Deno: Deno.Command, Deno.readFile, signal listeners, Deno.serve (WebSockets through hono/deno). */
export const platform: Platform = {
  name: `deno ${Deno.version.deno}`,
  spawn(cmd, args, opts = {}) {
    const child = new Deno.Command(cmd, { args, stdin: "null", stdout: "piped", stderr: "piped", env: opts.env }).spawn();
    return {
      pid: child.pid,
      stdout: child.stdout,
      stderr: child.stderr,
      exited: child.status.then((s) => (s.signal ? null : s.code)),
      kill: (signal = "SIGTERM") => {
        try {
          child.kill(signal);
        } catch {
          // Already exited.
        }
      },
    };
  },
  readText: (path) => Deno.readTextFile(path),
  readBytes: (path) => Deno.readFile(path),
  openTruncating(path) {
    // Plain buffered writes through node:fs, which Deno implements.
    const fd = openSync(path, "w");
    let pending: Uint8Array[] = [];
    const enc = new TextEncoder();
    const flush = async () => {
      for (const p of pending) writeSync(fd, p);
      pending = [];
    };
    return {
      write: (t) => void pending.push(typeof t === "string" ? enc.encode(t) : t),
      flush,
      close: async () => {
        await flush();
        fsyncSync(fd);
        closeSync(fd);
      },
    };
  },
  which(cmd) {
    for (const dir of (Deno.env.get("PATH") ?? "").split(delimiter)) {
      const p = join(dir, cmd);
      try {
        accessSync(p, constants.X_OK);
        return p;
      } catch {
        // Not in this directory.
      }
    }
    return undefined;
  },
  env: (name) => Deno.env.get(name),
  args: () => Deno.args,
  onSignal(signal, fn) {
    Deno.addSignalListener(signal, fn);
    return () => Deno.removeSignalListener(signal, fn);
  },
  exit: (code) => Deno.exit(code),
  serve(fetch, o) {
    // onListen: Deno would otherwise print its own "Listening on" line; callers log the URL themselves.
    const server = Deno.serve({ hostname: o.hostname, port: o.port, onListen: () => {} }, fetch);
    return { port: server.addr.port, stop: () => server.shutdown() };
  },
  // Deno.upgradeWebSocket needs no server-side handler.
  upgradeWebSocket,
};
