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
  exit(code: number): never;
}
