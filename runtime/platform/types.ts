import type { UpgradeWebSocket } from "hono/ws";

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

/** A bound HTTP server. */
export interface Listener {
  /** The bound port (the one asked for, or the one picked for port 0). */
  readonly port: number;
  /** Stops listening and closes the connections (call it once requests in progress have answered). */
  stop(): Promise<void>;
}

export interface ServeOptions {
  hostname: string;
  port: number;
  /**
   * Bun only: bodies larger than this are cut off by the runtime itself; keep it above the app's own
   * limits so those answer first. Deno has no such limit, so the app's own limits are the only ones.
   */
  maxRequestBodySize?: number;
}

/** What a runtime adapter (Bun, Deno) provides; everything else is web-standard or node: APIs both implement. */
export interface Platform {
  name: string;
  spawn(cmd: string, args: string[], opts?: { env?: Record<string, string> }): ChildProcess;
  readText(path: string): Promise<string>;
  readBytes(path: string): Promise<Uint8Array>;
  /** Truncating, buffered writer (append mode is shared code in platform.ts). */
  openTruncating(path: string): FileWriter;
  which(cmd: string): string | undefined;
  env(name: string): string | undefined;
  args(): string[];
  onSignal(signal: "SIGINT" | "SIGTERM", fn: () => void): () => void;
  /**
   * Binds `fetch` to hostname:port; throws the runtime's own error when it cannot. WebSocket upgrades
   * made with {@link Platform.upgradeWebSocket} on requests of this server work (Bun: its `websocket` handler is wired).
   */
  serve(fetch: (req: Request) => Response | Promise<Response>, o: ServeOptions): Listener;
  /** hono's WebSocket upgrade helper for this runtime (`hono/bun` or `hono/deno`). */
  upgradeWebSocket: UpgradeWebSocket<any>;
  exit(code: number): never;
}
