/**
 * Running a pipeline from a program: the bus it names, the executor, the
 * HTTP server it asks for, and the summary once it has drained. The command
 * line (`bun run pipeline`) and embedders both go through here.
 */
import { basename } from "node:path";
import { MemoryBus } from "./bus/memory.ts";
import { NatsBus } from "./bus/nats.ts";
import type { Bus } from "./core/bus.ts";
import { ConfigError } from "./core/errors.ts";
import { createLogger, type Logger } from "./core/log.ts";
import type { PipelineSummary } from "./core/stats.ts";
import { Executor, type RunOptions } from "./engine/executor.ts";
import { observe } from "./observe/index.ts";
import { env } from "./platform/index.ts";
import { httpOptions } from "./spec/http-options.ts";
import { loadPipeline, type NatsConfig, type PipelineSpec } from "./spec/loader.ts";
import { loadRegistry } from "./spec/registry.ts";

/**
 * The bus a pipeline names: the in-memory bus, or a NATS connection (the
 * file's object `bus:` wins; NATS_CREDS / NATS_CA / NATS_CERT / NATS_KEY
 * serve a plain URL).
 * @example
 * const bus = await createBus("nats://127.0.0.1:4222", undefined, log, signal);
 */
export async function createBus(url: string, cfg: NatsConfig | undefined, log: Logger, signal: AbortSignal): Promise<Bus> {
  if (url === "memory") return new MemoryBus();
  if (!/^(nats|tls):\/\//.test(url)) throw new ConfigError(`bus: expected "memory" or a nats:// URL, got "${url}"`);
  const { reconnectBufferMB, ...auth } = cfg ?? {};
  const hint = natsServerHint(url, log);
  return NatsBus.connect({
    url,
    ...auth,
    creds: auth.creds ?? env("NATS_CREDS"),
    tls: auth.tls ?? (env("NATS_CA") || env("NATS_CERT") ? { ca: env("NATS_CA"), cert: env("NATS_CERT"), key: env("NATS_KEY") } : undefined),
    reconnectBuffer: reconnectBufferMB === undefined ? undefined : reconnectBufferMB * 1024 * 1024,
    name: `framewire ${basename(url)}`,
    log,
    signal,
  }).finally(hint);
}

/**
 * While a NATS connection is not up, says which server to start (after 1 s,
 * then after 5, 15, 30 and every 60 s); the returned function stops it.
 * @example
 * const stop = natsServerHint("nats://127.0.0.1:4222", log);
 * await NatsBus.connect({ url, log }).finally(stop);
 */
export function natsServerHint(url: string, log: Logger): () => void {
  let u: URL | undefined;
  try {
    u = new URL(url.replace(/^tls:/, "https:").replace(/^nats:/, "http:"));
  } catch {
    // The connect reports a URL it cannot use.
  }
  const host = u?.hostname || "127.0.0.1";
  const port = u?.port || "4222";
  const where = url.replace(/\/\/[^@/]*@/, "//");
  const local = /^(127\.|localhost$|\[?::1\]?$)/.test(host);
  const text =
    `no NATS server answers at ${where} yet; ` +
    (local
      ? `start one: nats-server -js -a ${host} -p ${port} (or nats-server -c pipelines/nats/local.conf, edge-leaf.conf or hub.conf; docs/distributed.md), `
      : `start nats-server on ${host}:${port} or point --nats / NATS_URL at one, `) +
    `or drop --nats / NATS_URL for the in-memory bus; still retrying`;
  const delays = [1000, 4000, 10_000, 15_000];
  let timer: ReturnType<typeof setTimeout> | undefined;
  let i = 0;
  const next = () => {
    timer = setTimeout(() => {
      log.warn(text);
      next();
    }, delays[i++] ?? 60_000);
  };
  next();
  return () => clearTimeout(timer);
}

/** How {@link runPipeline} runs a pipeline; the executor's options plus bus and HTTP. */
export interface PipelineRunOptions extends Omit<RunOptions, "log"> {
  /** Override the file's bus ("memory" or a NATS URL). */
  bus?: string;
  /** Start the file's HTTP server (`http:`), on this port if given. */
  httpPort?: string;
  log?: Logger;
  /** Aborting stops the sources; the pipeline then drains. */
  signal?: AbortSignal;
}

/** A running pipeline. */
export interface PipelineRun {
  spec: PipelineSpec;
  executor: Executor;
  /** Resolves with the summary once the pipeline has drained and its bus closed. */
  done: Promise<PipelineSummary>;
  /** Stops the sources; `done` resolves after the drain. */
  stop(reason?: string): void;
}

/**
 * Loads (when given a path) and runs a pipeline in this process.
 * @example
 * import { runPipeline } from "framewire";
 * const run = await runPipeline("pipelines/demo.yaml", { frames: 50 });
 * const summary = await run.done;
 */
export async function runPipeline(pipeline: string | PipelineSpec, o: PipelineRunOptions = {}): Promise<PipelineRun> {
  const spec = typeof pipeline === "string" ? await loadPipeline(pipeline, await loadRegistry()) : pipeline;
  const log = o.log ?? createLogger(spec.name);
  const bus = await createBus(o.bus ?? spec.bus, spec.nats, log.child("bus"), o.signal ?? new AbortController().signal);
  if (o.stages && bus.kind === "memory") {
    await bus.close();
    throw new ConfigError("--stages/--placement need a NATS bus (--nats nats://host:port or bus: in the file)");
  }
  const { bus: _bus, httpPort, signal, ...runOptions } = o;
  const executor = new Executor(spec, bus, { ...runOptions, log });
  // Health and readiness answer while the models load.
  const observing = await observe(executor, { http: httpOptions(spec.http, httpPort), log });
  try {
    await executor.start();
  } catch (err) {
    await observing.close();
    await bus.close();
    throw err;
  }
  if (signal?.aborted) executor.stop("stopped while starting");
  else signal?.addEventListener("abort", () => executor.stop("aborted"), { once: true });
  const done = executor.done.then(async (summary) => {
    await observing.close();
    await bus.drain();
    return summary;
  });
  return { spec, executor, done, stop: (reason) => executor.stop(reason) };
}
