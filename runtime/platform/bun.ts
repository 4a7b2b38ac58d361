import type { Platform } from "./types.ts";

/** Bun: Bun.spawn, Bun.file and its buffered FileSink, Bun.serve. */
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
    const sink = Bun.file(path).writer({ highWaterMark: 1 << 16 });
    return {
      write: (t) => void sink.write(t),
      flush: async () => void (await sink.flush()),
      close: async () => void (await sink.end()),
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
      fetch,
      maxRequestBodySize: o.maxRequestBodySize,
      // Seconds a connection may sit silent (Bun's default is 10): a request can wait in a deep queue or return a large body.
      idleTimeout: 120,
    });
    return { port: server.port ?? o.port, stop: () => server.stop(true) };
  },
};
