/**
 * `framewire serve --model FILE [--port N] ...`: one model behind the KServe
 * v2 HTTP protocol, POST /detect and /metrics, until SIGINT/SIGTERM, then a
 * drain (readiness goes to 503, requests in progress finish).
 */
import { cpus } from "node:os";
import { parseArgs } from "node:util";
import * as v from "valibot";
import { ConfigError } from "../core/errors.ts";
import { describeIssue } from "../spec/issues.ts";
import { createLogger } from "../core/log.ts";
import { onShutdownSignal, serve } from "../platform/index.ts";
import { loadRegistry } from "../spec/registry.ts";
import { createServeApp } from "./app.ts";
import { createServeMetrics } from "./metrics.ts";
import { loadServedModel } from "./model.ts";

export const SERVE_USAGE = `usage: bun run serve --model FILE [--port 8000] [--host 127.0.0.1] [--name NAME]
  [--instances 1] [--threads 0] [--max-batch 32] [--preferred-batch 4,8,16] [--max-queue-delay-us 500] [--max-queue 64]
  [--max-image-mb 10] [--max-body-mb 256] [--max-pixels 40000000] [--decoders N] [--size 640] [--conf 0.25] [--iou 0.45]`;

const whole = (min: number, max: number, dflt: string) =>
  v.optional(v.pipe(v.string(), v.regex(/^\d+$/, "expected a whole number"), v.transform(Number), v.minValue(min), v.maxValue(max)), dflt);
const real = (min: number, max: number, dflt: string) =>
  v.optional(v.pipe(v.string(), v.transform(Number), v.number("expected a number"), v.minValue(min), v.maxValue(max)), dflt);

const Flags = v.strictObject({
  model: v.pipe(v.string("is required"), v.minLength(1)),
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
  size: whole(32, 8192, "640"),
  conf: real(0, 1, "0.25"),
  iou: real(0, 1, "0.45"),
});

const MiB = 1 << 20;

/**
 * Runs the server until a shutdown signal; returns the exit code.
 * @throws ConfigError for bad flags or a model that cannot be served.
 * @example
 * process.exit(await runServe(["--model", "yolov5n.onnx", "--port", "8000"]));
 */
export async function runServe(rest: string[]): Promise<number> {
  const { values } = parseArgs({
    args: rest,
    strict: true,
    options: Object.fromEntries(Object.keys(Flags.entries).map((k) => [k, { type: "string" as const }])),
  });
  const parsed = v.safeParse(Flags, values);
  if (!parsed.success) {
    const i = parsed.issues[0];
    throw new ConfigError(`--${i.path?.[0]?.key ?? "?"}: ${describeIssue(i, Flags)}\n${SERVE_USAGE}`);
  }
  const f = parsed.output;
  const log = createLogger("serve");
  // Installed first: a signal that comes while the model loads, or right after "listening", still drains.
  let stopRequested!: (signal: string) => void;
  const stop = new Promise<string>((resolve) => (stopRequested = resolve));
  const off = onShutdownSignal((sig) => {
    off();
    stopRequested(sig);
  });
  const model = await loadServedModel(
    {
      model: f.model,
      name: f.name,
      instances: f.instances,
      threads: f.threads,
      maxBatch: f["max-batch"],
      preferredBatch: f["preferred-batch"],
      maxQueueDelayUs: f["max-queue-delay-us"],
      maxQueue: f["max-queue"],
      size: f.size,
    },
    log,
  );
  const maxBodyBytes = Math.round(f["max-body-mb"] * MiB);
  const maxImageBytes = Math.round(f["max-image-mb"] * MiB);
  const app = await createServeApp({
    model,
    metrics: createServeMetrics(model),
    registry: await loadRegistry(),
    log,
    limits: { maxPixels: f["max-pixels"], maxSide: 16_384 },
    maxImageBytes,
    maxBodyBytes,
    decoders: f.decoders,
    maxWaiting: f["max-queue"],
    conf: f.conf,
    iou: f.iou,
  });
  const listener = serve(app.fetch, { hostname: f.host, port: f.port, maxRequestBodySize: Math.max(maxBodyBytes, maxImageBytes) + MiB });
  log.info(`${model.name} listening on http://${f.host}:${listener.port} (KServe v2 under /v2, POST /detect, GET /metrics)`);

  const signal = await stop;
  log.info(`${signal}: draining (not ready; requests in progress finish)`);
  await app.drain();
  await listener.stop();
  await model.close();
  log.info("stopped");
  return 0;
}
