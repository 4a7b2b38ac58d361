/**
 * The one place that touches runtime-specific APIs (Bun today; a Deno adapter
 * implements the same surface). Everything else uses web-standard APIs and
 * this module, so porting framewire means porting this file only.
 */

// node:fs is implemented by Bun and Deno alike.
import { existsSync as fsExistsSync } from "node:fs";

/** A running child process with byte streams. */
export interface ChildProcess {
  readonly pid: number;
  readonly stdout: ReadableStream<Uint8Array>;
  readonly stderr: ReadableStream<Uint8Array>;
  /** Resolves with the exit code (or null when killed by a signal). */
  readonly exited: Promise<number | null>;
  kill(signal?: "SIGTERM" | "SIGKILL" | "SIGINT"): void;
}

/** An append-only buffered file writer. */
export interface FileWriter {
  write(text: string | Uint8Array): void;
  flush(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Starts a child process with piped stdout/stderr and no stdin.
 * @example
 * const p = spawn("ffmpeg", ["-version"]);
 * console.log(await new Response(p.stdout).text());
 */
export function spawn(cmd: string, args: string[], opts: { env?: Record<string, string> } = {}): ChildProcess {
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
}

/** True when a file (or directory) exists at `path`. */
export async function exists(path: string): Promise<boolean> {
  try {
    const { stat } = await import("node:fs/promises");
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

export async function readText(path: string): Promise<string> {
  return Bun.file(path).text();
}

export async function readBytes(path: string): Promise<Uint8Array> {
  return new Uint8Array(await Bun.file(path).arrayBuffer());
}

/**
 * Opens `path` for buffered writing (truncating unless `append`), creating
 * parent directories.
 */
export async function openWriter(path: string, append = false): Promise<FileWriter> {
  const { mkdir, appendFile } = await import("node:fs/promises");
  const { dirname } = await import("node:path");
  await mkdir(dirname(path), { recursive: true });
  if (append) {
    // Bun's FileSink truncates; buffer here and append on flush instead.
    let pending: (string | Uint8Array)[] = [];
    const flush = async () => {
      if (pending.length === 0) return;
      const parts = pending;
      pending = [];
      for (const p of parts) await appendFile(path, p);
    };
    return { write: (t) => void pending.push(t), flush, close: flush };
  }
  const sink = Bun.file(path).writer({ highWaterMark: 1 << 16 });
  return {
    write: (t) => void sink.write(t),
    flush: async () => void (await sink.flush()),
    close: async () => void (await sink.end()),
  };
}

/** Full path of an executable on PATH, or undefined. */
export function which(cmd: string): string | undefined {
  return Bun.which(cmd) ?? undefined;
}

export function env(name: string): string | undefined {
  return process.env[name];
}

export function args(): string[] {
  return process.argv.slice(2);
}

/** Calls `fn` on SIGINT/SIGTERM; returns a function that removes the handler. */
export function onShutdownSignal(fn: (signal: string) => void): () => void {
  const handler = (sig: string) => fn(sig);
  process.on("SIGINT", handler);
  process.on("SIGTERM", handler);
  return () => {
    process.off("SIGINT", handler);
    process.off("SIGTERM", handler);
  };
}

export function exit(code: number): never {
  process.exit(code);
}

/** CPU time (user + system) this process has used, in ms. */
export function cpuTime(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** Resident set size of this process in bytes. */
export function rss(): number {
  return process.memoryUsage().rss;
}

export const runtimeName = `bun ${Bun.version}`;
