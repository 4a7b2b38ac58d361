/**
 * Child processes for tests: output collected as text, waiting for a line,
 * stopping by PID with a grace period. Every child is tracked, so one left
 * running by a failed test is killed when the test process exits.
 * node:child_process, so the same helpers run under `bun test` and `deno test`.
 */
import { spawn, type ChildProcessByStdio } from "node:child_process";
import type { Readable } from "node:stream";

export interface Child {
  readonly pid: number;
  readonly proc: ChildProcessByStdio<null, Readable, Readable>;
  /** Everything written so far. */
  stdout(): string;
  stderr(): string;
  /** Resolves with the exit code (signal deaths give 128 + signal, as a shell would report). */
  readonly exited: Promise<number>;
  /** Resolves once `pattern` appears in stdout or stderr; rejects after `timeoutMs` or when the child exits first. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** Sends `signal` by PID; resolves with the exit code. */
  signal(signal: NodeJS.Signals): void;
  /** `signal` (SIGTERM), then SIGKILL after `graceMs`; resolves once the child is gone. */
  stop(graceMs?: number, signal?: NodeJS.Signals): Promise<number>;
  /** False once the child has exited. */
  alive(): boolean;
}

const live = new Set<number>();
process.on("exit", () => {
  for (const pid of live) killQuietly(pid, "SIGKILL");
});

function killQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // Already gone.
  }
}

export function startProcess(cmd: string[], opts: { cwd?: string; env?: Record<string, string | undefined> } = {}): Child {
  // Undefined values unset a variable, as they did with Bun.spawn.
  const env = opts.env ? Object.fromEntries(Object.entries({ ...process.env, ...opts.env }).filter((e): e is [string, string] => e[1] !== undefined)) : undefined;
  const proc = spawn(cmd[0], cmd.slice(1), { cwd: opts.cwd, env, stdio: ["ignore", "pipe", "pipe"] });
  // No PID: it could not start (not on PATH, not executable); a throw here, as Bun.spawn did.
  if (proc.pid === undefined) {
    proc.once("error", () => {});
    throw new Error(`cannot start ${cmd[0]}: not found or not executable`);
  }
  const pid = proc.pid;
  live.add(pid);
  const text = { out: "", err: "" };
  const listeners = new Set<() => void>();
  const notify = () => {
    for (const l of [...listeners]) l();
  };
  const pump = (stream: Readable, key: "out" | "err") => {
    const dec = new TextDecoder();
    stream.on("data", (chunk: Uint8Array) => {
      text[key] += dec.decode(chunk, { stream: true });
      notify();
    });
  };
  pump(proc.stdout, "out");
  pump(proc.stderr, "err");
  // "close" comes once the process has exited and both pipes have ended, so all output is in.
  const exited = new Promise<number>((resolve) =>
    proc.once("close", (code, sig) => {
      live.delete(pid);
      resolve(code ?? 128 + (sig ? signalNumber(sig) : 0));
    }),
  );
  let done = false;
  void exited.then(() => {
    done = true;
    notify();
  });

  const child: Child = {
    pid,
    proc,
    stdout: () => text.out,
    stderr: () => text.err,
    exited,
    waitFor(pattern, timeoutMs = 20_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const m = text.out.match(pattern) ?? text.err.match(pattern);
          if (m) return finish(() => resolve(m));
          if (done) finish(() => reject(new Error(`${cmd[0]} exited before printing ${pattern}\nstdout: ${text.out}\nstderr: ${text.err}`)));
        };
        const timer = setTimeout(
          () => finish(() => reject(new Error(`no ${pattern} from ${cmd.join(" ")} within ${timeoutMs} ms\nstdout: ${text.out}\nstderr: ${text.err}`))),
          timeoutMs,
        );
        const finish = (f: () => void) => {
          clearTimeout(timer);
          listeners.delete(check);
          f();
        };
        listeners.add(check);
        check();
      });
    },
    signal(sig) {
      if (!done) killQuietly(pid, sig);
    },
    alive: () => !done,
    async stop(graceMs = 3000, sig: NodeJS.Signals = "SIGTERM") {
      if (done) return exited;
      killQuietly(pid, sig);
      const timer = setTimeout(() => killQuietly(pid, "SIGKILL"), graceMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
  return child;
}

function signalNumber(name: string): number {
  return ({ SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15 } as Record<string, number>)[name] ?? 0;
}
