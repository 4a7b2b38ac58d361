/**
 * `framewire serve`: a Triton model repository (`--model-repository DIR`) or
 * one model file (`--model FILE`) behind the KServe v2 HTTP protocol with
 * Triton's configuration, statistics and repository extensions, POST /detect
 * and /metrics, until SIGINT/SIGTERM, then a drain (readiness goes to 503,
 * requests in progress finish).
 */
import { cpus } from "node:os";
import { parseArgs } from "node:util";
import * as v from "valibot";
import { ConfigError } from "../core/errors.ts";
import { describeIssue } from "../spec/issues.ts";
import { suggest } from "../spec/loader.ts";
import { createLogger } from "../core/log.ts";
import { onShutdownSignal, serve } from "../platform/index.ts";
import { loadRegistry } from "../spec/registry.ts";
import { defaultDecodeBudgetMb } from "./admission.ts";
import { createServeApp } from "./app.ts";
import type { AutoDefaults } from "./config-complete.ts";
import { createServeMetrics } from "./metrics.ts";
import { ModelRepository } from "./repository.ts";
import { FileSource, RepositorySource, type ModelSource } from "./sources.ts";

export const SERVE_USAGE = `usage: bun run serve --model-repository DIR [--model-control-mode none|explicit] [--load-model NAME|*]...
       bun run serve --model FILE [--name NAME]
  [--port 8000] [--host 127.0.0.1] [--instances 1] [--threads 0] [--max-batch 32] [--preferred-batch 4,8,16]
  [--max-queue-delay-us 500] [--max-queue 64] [--max-image-mb 10] [--max-body-mb 256] [--max-pixels 40000000]
  [--decoders N] [--decode-budget-mb N] [--size 640] [--conf 0.25] [--iou 0.45]
The batching and instance flags fill in what a model's config.pbtxt leaves out (and configure --model).
--decode-budget-mb: decoded image bytes (width x height x 3) POST /detect requests may hold at once; past it 503 with
Retry-After, an image alone over it 413 (default: 1/32 of this machine's memory, 256..1024; 0: no budget).`;

const whole = (min: number, max: number, dflt: string) =>
  v.optional(v.pipe(v.string(), v.regex(/^\d+$/, "expected a whole number"), v.transform(Number), v.minValue(min), v.maxValue(max)), dflt);
const real = (min: number, max: number, dflt: string) =>
  v.optional(v.pipe(v.string(), v.transform(Number), v.number("expected a number"), v.minValue(min), v.maxValue(max)), dflt);

const Flags = v.pipe(
  v.strictObject({
    model: v.optional(v.pipe(v.string(), v.minLength(1))),
    "model-repository": v.optional(v.pipe(v.string(), v.minLength(1))),
    "model-control-mode": v.optional(
      v.pipe(
        v.string(),
        v.check((m) => m !== "poll", "poll is not supported: use explicit and POST /v2/repository/models/{name}/load after changing the repository"),
        v.picklist(["none", "explicit"], "expected none or explicit"),
      ),
      "none",
    ),
    "load-model": v.optional(v.array(v.pipe(v.string(), v.regex(/^([\w.-]+|\*)$/, "expected a model name or *")))),
    name: v.optional(v.pipe(v.string(), v.regex(/^[\w.-]+$/, "expected letters, digits, _, . and -"))),
    host: v.optional(v.string(), "127.0.0.1"),
    port: whole(0, 65535, "8000"),
    instances: whole(1, 64, "1"),
    threads: whole(0, 256, "0"),
    "max-batch": whole(1, 1024, "32"),
    "preferred-batch": v.optional(
      v.pipe(
        v.string(),
        v.regex(/^(\d+(,\d+)*)?$/, "expected sizes like 4,8,16"),
        v.transform((s) => (s ? s.split(",").map(Number) : [])),
        v.check((xs) => xs.every((x) => x > 0), "batch sizes must be positive"),
      ),
      "4,8,16",
    ),
    "max-queue-delay-us": whole(0, 60_000_000, "500"),
    "max-queue": whole(1, 1_000_000, "64"),
    "max-image-mb": real(0.001, 1024, "10"),
    "max-body-mb": real(0.001, 4096, "256"),
    "max-pixels": whole(1, 1_000_000_000, "40000000"),
    decoders: whole(1, 64, String(Math.max(2, cpus().length))),
    "decode-budget-mb": whole(0, 1_048_576, String(defaultDecodeBudgetMb())),
    size: whole(32, 8192, "640"),
    conf: real(0, 1, "0.25"),
    iou: real(0, 1, "0.45"),
    help: v.optional(v.boolean()),
  }),
  v.check((f) => f.help === true || (f.model === undefined) !== (f["model-repository"] === undefined), "give --model FILE or --model-repository DIR (one of them)"),
  v.check((f) => f.name === undefined || f.model !== undefined, "--name goes with --model (a repository model is named by its directory)"),
  v.check((f) => f["load-model"] === undefined || f["model-control-mode"] === "explicit", "--load-model needs --model-control-mode explicit (mode none loads every model at start)"),
);

const MiB = 1 << 20;
const FLAG_NAMES = Object.keys(Flags.pipe[0].entries);

/** The flags, validated. */
function readFlags(rest: string[]): v.InferOutput<typeof Flags> {
  let values: Record<string, unknown>;
  try {
    values = parseArgs({
      args: rest,
      strict: true,
      options: Object.fromEntries(
        FLAG_NAMES.map((k) => [k, k === "help" ? { type: "boolean" as const } : k === "load-model" ? { type: "string" as const, multiple: true } : { type: "string" as const }]),
      ),
    }).values;
  } catch (err) {
    const typed = /'(--?[\w-]+)'/.exec((err as Error).message)?.[1];
    if (!typed) throw err;
    const flags = FLAG_NAMES.map((k) => `--${k}`);
    const hint = suggest(typed, flags) ?? flags.find((f) => f.startsWith(typed));
    throw new ConfigError(`unknown option ${typed}${hint ? ` (did you mean ${hint}?)` : ""}\n${SERVE_USAGE}`);
  }
  // --load-model a,b is --load-model a --load-model b.
  if (Array.isArray(values["load-model"])) values["load-model"] = (values["load-model"] as string[]).flatMap((s) => s.split(",").map((x) => x.trim()).filter(Boolean));
  const parsed = v.safeParse(Flags, values);
  if (!parsed.success) {
    const i = parsed.issues[0];
    const flag = i.path?.[0]?.key;
    throw new ConfigError(`${flag ? `--${String(flag)}: ` : ""}${describeIssue(i, Flags)}\n${SERVE_USAGE}`);
  }
  return parsed.output;
}

/**
 * Runs the server until a shutdown signal; returns the exit code.
 * @throws ConfigError for bad flags, a bad config.pbtxt (file:line) or a model that cannot be served.
 * @example
 * process.exit(await runServe(["--model-repository", "examples/model_repository", "--port", "8000"]));
 */
export async function runServe(rest: string[]): Promise<number> {
  const f = readFlags(rest);
  if (f.help) {
    console.log(SERVE_USAGE);
    return 0;
  }
  const log = createLogger("serve");
  // Installed first: a signal that comes while the models load, or right after "listening", still drains.
  let stopRequested!: (signal: string) => void;
  const stop = new Promise<string>((resolve) => (stopRequested = resolve));
  const off = onShutdownSignal((sig) => {
    off();
    stopRequested(sig);
  });
  const defaults: AutoDefaults = {
    maxBatchSize: f["max-batch"],
    dynamicBatching: { preferred: f["preferred-batch"], maxQueueDelayUs: f["max-queue-delay-us"] },
    maxQueue: f["max-queue"],
    instances: f.instances,
    size: f.size,
  };
  let source: ModelSource;
  if (f["model-repository"]) {
    const dir = new RepositorySource(f["model-repository"], defaults, f.threads);
    await dir.open();
    source = dir;
  } else source = new FileSource(f.model!, f.name, defaults, f.threads);
  const repository = new ModelRepository(source, f["model-control-mode"], log);
  // Mode none (and --model) loads everything; explicit loads what --load-model names.
  await repository.loadAtStart(f["model-control-mode"] === "none" || f.model ? "*" : f["load-model"]?.includes("*") ? "*" : (f["load-model"] ?? []));
  const maxBodyBytes = Math.round(f["max-body-mb"] * MiB);
  const maxImageBytes = Math.round(f["max-image-mb"] * MiB);
  const app = await createServeApp({
    repository,
    metrics: createServeMetrics(repository),
    registry: await loadRegistry(),
    log,
    limits: { maxPixels: f["max-pixels"], maxSide: 16_384 },
    maxImageBytes,
    maxBodyBytes,
    decoders: f.decoders,
    maxWaiting: f["max-queue"],
    decodeBudgetBytes: f["decode-budget-mb"] * MiB,
    conf: f.conf,
    iou: f.iou,
  });
  let listener;
  try {
    listener = serve(app.fetch, { hostname: f.host, port: f.port, maxRequestBodySize: Math.max(maxBodyBytes, maxImageBytes) + MiB });
  } catch (err) {
    await repository.close();
    throw err;
  }
  const loaded = repository.ready().map((m) => `${m.name}/${m.version}`);
  const budget = f["decode-budget-mb"] ? `decode budget ${f["decode-budget-mb"]} MiB` : "no decode budget";
  log.info(
    `listening on http://${f.host}:${listener.port} (${source.describe}, model control ${f["model-control-mode"]}; ${loaded.length ? `serving ${loaded.join(", ")}` : "no model loaded"}; KServe v2 and Triton extensions under /v2, POST /detect (${budget}), GET /metrics)`,
  );

  const signal = await stop;
  log.info(`${signal}: draining (not ready; requests in progress finish)`);
  await app.drain();
  await listener.stop();
  await repository.close();
  log.info("stopped");
  return 0;
}
