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
  return NatsBus.connect({
    url,
    ...auth,
    creds: auth.creds ?? env("NATS_CREDS"),
    tls: auth.tls ?? (env("NATS_CA") || env("NATS_CERT") ? { ca: env("NATS_CA"), cert: env("NATS_CERT"), key: env("NATS_KEY") } : undefined),
    reconnectBuffer: reconnectBufferMB === undefined ? undefined : reconnectBufferMB * 1024 * 1024,
    name: `framewire ${basename(url)}`,
    log,
    signal,
  });
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
