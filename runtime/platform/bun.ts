import { closeSync, openSync, writeSync } from "node:fs";
import { upgradeWebSocket, websocket } from "hono/bun";
import type { Platform } from "./types.ts";

/** Bun: Bun.spawn, Bun.file, node:fs for buffered writes, Bun.serve (with hono/bun's WebSocket handler). */
export const platform: Platform = {
  name: `bun ${Bun.version}`,
  spawn(cmd, args, opts = {}) {
    const proc = Bun.spawn([cmd, ...args], {
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
      env: opts.env ? { ...process.env, ...opts.env } : undefined,
    });
    return {
      pid: proc.pid,
      stdout: proc.stdout,
      stderr: proc.stderr,
      exited: proc.exited.then(() => proc.exitCode),
      kill: (signal = "SIGTERM") => proc.kill(signal),
    };
  },
  readText: (path) => Bun.file(path).text(),
  readBytes: async (path) => new Uint8Array(await Bun.file(path).arrayBuffer()),
  openTruncating(path) {
    // node:fs, not Bun's FileSink: FileSink drops write errors (ENOSPC, EIO) silently, and a sink must be able to report them.
    const fd = openSync(path, "w");
    let pending: (string | Uint8Array)[] = [];
    const flush = async () => {
      // The batch is handed over before writing: one that fails is lost (the caller counts it), not retried forever.
      const parts = pending;
      pending = [];
      if (parts.length) writeSync(fd, Buffer.concat(parts.map((p) => (typeof p === "string" ? Buffer.from(p) : p))));
    };
    return {
      write: (t) => void pending.push(t),
      flush,
      close: async () => {
        try {
          await flush();
        } finally {
          closeSync(fd);
        }
      },
    };
  },
  which: (cmd) => Bun.which(cmd) ?? undefined,
  env: (name) => process.env[name],
  args: () => process.argv.slice(2),
  onSignal(signal, fn) {
    process.on(signal, fn);
    return () => void process.off(signal, fn);
  },
  exit: (code) => process.exit(code),
  serve(fetch, o) {
    const server = Bun.serve({
      hostname: o.hostname,
      port: o.port,
      // Bun calls fetch(req, server): hono's upgradeWebSocket finds the server there, and `websocket` runs the sockets it upgrades.
      fetch,
      websocket,
      maxRequestBodySize: o.maxRequestBodySize,
      // Seconds a connection may sit silent (Bun's default is 10): a request can wait in a deep queue or return a large body.
      idleTimeout: 120,
    });
    return { port: server.port ?? o.port, stop: () => server.stop(true) };
  },
  upgradeWebSocket,
};
