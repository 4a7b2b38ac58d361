/**
 * Child processes for tests: output collected as text, waiting for a line,
 * stopping by PID with a grace period. Every child is tracked, so one left
 * running by a failed test is killed when the test process exits.
 */
import type { Subprocess } from "bun";

export interface Child {
  readonly pid: number;
  readonly proc: Subprocess<"ignore", "pipe", "pipe">;
  /** Everything written so far. */
  stdout(): string;
  stderr(): string;
  /** Resolves with the exit code (signal deaths give 128 + signal, as a shell would report). */
  readonly exited: Promise<number>;
  /** Resolves once `pattern` appears in stdout or stderr; rejects after `timeoutMs` or when the child exits first. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** Sends `signal` by PID; resolves with the exit code. */
  signal(signal: NodeJS.Signals): void;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the child is gone. */
  stop(graceMs?: number): Promise<number>;
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
  const proc = Bun.spawn(cmd, {
    cwd: opts.cwd,
    env: opts.env ? { ...process.env, ...opts.env } : undefined,
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const pid = proc.pid;
  live.add(pid);
  const text = { out: "", err: "" };
  const listeners = new Set<() => void>();
  const notify = () => {
    for (const l of [...listeners]) l();
  };
  const pump = async (stream: ReadableStream<Uint8Array>, key: "out" | "err") => {
    const dec = new TextDecoder();
    for await (const chunk of stream) {
      text[key] += dec.decode(chunk, { stream: true });
      notify();
    }
  };
  const pumps = Promise.all([pump(proc.stdout, "out"), pump(proc.stderr, "err")]);
  const exited = proc.exited.then(async () => {
    live.delete(pid);
    await pumps.catch(() => {});
    return proc.exitCode ?? 128 + (proc.signalCode ? signalNumber(String(proc.signalCode)) : 0);
  });
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
    async stop(graceMs = 3000) {
      if (done) return exited;
      killQuietly(pid, "SIGTERM");
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
