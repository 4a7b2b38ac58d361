/**
 * One version of a model as `framewire serve` serves it: the instances its
 * config asks for (instance_group; each an onnxruntime session on its own
 * thread), the config completed against the model, warm-up (model_warmup, or
 * one zero batch per instance), a batcher in front (dynamic_batching), its
 * statistics, and the KServe metadata clients see.
 */
import * as ort from "onnxruntime-node";
import { basename } from "node:path";
import { ConfigError } from "../core/errors.ts";
import type { TensorMetadata } from "../inference/kserve.ts";
import type { Logger } from "../core/log.ts";
import type { Provider } from "../inference/onnx-model.ts";
import { Batcher, type Runner } from "./batcher.ts";
import type { ConfigDraft } from "./config.ts";
import { completeConfig, instancePlan, threadsFor, type AutoDefaults, type ServeConfig, type WarmupSample } from "./config-complete.ts";
import type { ResolvedKinds } from "./config-json.ts";
import { ServeInstance } from "./instance.ts";
import { ModelStats } from "./stats.ts";

/** What loading one version needs. */
export interface VersionPlan {
  name: string;
  version: string;
  /** The model file: a path, or a file name under models/. */
  file: string;
  /** The model's directory in a repository (labels, warm-up files); undefined for a lone file. */
  dir?: string;
  draft: ConfigDraft;
  defaults: AutoDefaults;
  /** Intra-op threads per instance when the config does not say; 0 shares the cores out. */
  threads: number;
}

export interface ServedModel {
  name: string;
  version: string;
  /** The model file as loaded. */
  file: string;
  config: ServeConfig;
  /** The kind each instance group runs as (a KIND_GPU group without CUDA runs on the CPU and says so in the log). */
  kinds: ResolvedKinds;
  /** Input and output as KServe metadata: -1 marks the batch axis. */
  input: TensorMetadata;
  output: TensorMetadata;
  classNames: string[];
  batcher: Batcher;
  stats: ModelStats;
  /** Instances running (threads with a session each). */
  instances: number;
  /** Model input size for POST /detect, or why this model cannot serve it. */
  detector: { width: number; height: number } | { unavailable: string };
  /** Finishes what is queued, then releases every session and ends their threads. */
  close(): Promise<void>;
}

const cudaBundled = () => ort.listSupportedBackends().some((b) => b.name === "cuda" && b.bundled);
/** Whether the CUDA provider loaded the last time an instance tried it (undefined: not tried yet in this process). */
let cudaLoads: boolean | undefined;

/** Execution providers to try for an instance group's kind; the CPU is always the last resort. */
function providersFor(kind: string): Provider[] {
  if (kind === "KIND_CPU" || cudaLoads === false) return ["cpu"];
  if (kind === "KIND_GPU") return ["cuda", "cpu"];
  return cudaBundled() ? ["cuda", "cpu"] : ["cpu"];
}

/** A logger that says each distinct warning once (N instances fail over to the CPU the same way). */
function once(log: Logger): Logger {
  const said = new Set<string>();
  return {
    ...log,
    warn: (m) => {
      if (!said.has(m)) log.warn(m);
      said.add(m);
    },
  };
}

/** One batch item's worth of warm-up input, repeated to the batch size. */
function warmupInput(s: WarmupSample, itemSize: number): Float32Array {
  const out = new Float32Array(itemSize * s.batchSize);
  if (s.data === "random") for (let i = 0; i < out.length; i++) out[i] = Math.random();
  else if (s.data !== "zero") for (let b = 0; b < s.batchSize; b++) out.set(s.data, b * itemSize);
  return out;
}

/**
 * Loads one version: its instances, checked config, warm-up and batcher.
 * @throws ModelConfigError (file:line) when the config disagrees with the model; ConfigError when the model cannot be served.
 * @example
 * const m = await loadServedModel({ name: "yolov5", version: "1", file: "repo/yolov5/1/model.onnx", dir: "repo/yolov5", draft, defaults, threads: 0 }, log);
 * const { data, dims } = await m.batcher.submit(tensor, 1);
 */
export async function loadServedModel(plan: VersionPlan, log: Logger): Promise<ServedModel> {
  const { name, version, draft } = plan;
  const quiet = once(log);
  const groups = instancePlan(draft.config, name, plan.defaults.instances);
  const total = groups.reduce((a, g) => a + g.count, 0);
  const threads = threadsFor(draft.config, total, plan.threads);
  const instances: ServeInstance[] = [];
  const kinds = new Map<string, "KIND_CPU" | "KIND_GPU">();
  const release = () => Promise.all(instances.map((i) => i.release()));
  let config: ServeConfig;
  try {
    // One at a time: peak memory stays at one model being optimised.
    for (const g of groups) {
      for (let i = 0; i < g.count; i++) {
        const providers = providersFor(g.kind);
        const inst = await ServeInstance.start({ model: plan.file, providers, threads }, quiet);
        instances.push(inst);
        // One failed try is enough: later instances do not print onnxruntime's error again.
        if (providers.includes("cuda")) cudaLoads = inst.info.provider === "cuda";
        kinds.set(g.name, inst.info.provider === "cpu" ? "KIND_CPU" : "KIND_GPU");
        if (g.kind === "KIND_GPU" && inst.info.provider === "cpu" && i === 0) {
          quiet.warn(`${name} version ${version}: instance_group ${g.name} is KIND_GPU, but no CUDA execution provider loads in this onnxruntime-node build; its ${g.count} instance(s) run on the CPU`);
        }
        if (instances.length === 1) {
          const info = inst.info;
          config = await completeConfig(draft, name, { ...info, file: basename(info.file) }, plan.defaults, plan.dir, threads);
        }
      }
    }
  } catch (err) {
    await release();
    throw err;
  }
  config = config!;
  const info = instances[0].info;
  const batched = config.maxBatchSize > 0;
  const itemSize = config.input.dims.reduce((a, d) => a * d, 1);
  const runners: Runner[] = instances.map((inst) => (input, batch) => inst.run(input, batched ? [batch, ...config.input.dims] : config.input.dims));

  // Warm-up: the first runs of a session allocate and tune; no request should pay for them.
  const samples: WarmupSample[] = config.warmup.length ? config.warmup : [{ name: "default", batchSize: 1, count: 1, data: "zero" }];
  try {
    for (const s of samples) {
      const t0 = performance.now();
      await Promise.all(
        runners.map(async (run) => {
          for (let k = 0; k < s.count; k++) await run(warmupInput(s, itemSize), s.batchSize);
        }),
      );
      if (config.warmup.length) {
        log.info(`${name} version ${version}: warm-up "${s.name}" (batch ${s.batchSize}, ${s.data === "zero" ? "zeros" : s.data === "random" ? "random data" : "data file"}) ${s.count}× on ${instances.length} instance(s) in ${(performance.now() - t0).toFixed(0)} ms`);
      }
    }
  } catch (err) {
    await release();
    throw new ConfigError(`${draft.file}: ${name} version ${version}: warm-up failed: ${(err as Error).message}`, { cause: err });
  }

  const db = config.dynamicBatching;
  const batcher = new Batcher(runners, {
    itemSize,
    dynamic: db !== undefined,
    maxBatch: Math.max(1, config.maxBatchSize),
    preferred: db?.preferred ?? [],
    maxQueueDelayMs: (db?.maxQueueDelayUs ?? 0) / 1000,
    maxQueue: config.maxQueue,
  });
  const stats = new ModelStats();
  batcher.onBatch((b) => stats.batch(b));

  const inShape = batched ? [-1, ...config.input.dims] : config.input.dims;
  const outShape = batched ? [-1, ...config.output.dims] : config.output.dims;
  const fullIn = batched ? [1, ...config.input.dims] : config.input.dims;
  const detector =
    fullIn.length === 4 && fullIn[0] === 1 && fullIn[1] === 3 && outShape.length === 3
      ? { width: fullIn[3], height: fullIn[2] }
      : { unavailable: `POST /detect needs an image detector (input 1×3×H×W, 3-D output); ${name} has input [${inShape}] and output [${outShape}]` };
  const where = `${instances.length} instance(s) (${[...new Set(instances.map((i) => i.info.provider))].join(", ")}), ${threads} thread(s) each`;
  const modelIn = info.inputDims;
  log.info(
    db
      ? `${name} version ${version}: dynamic batching on (max batch ${config.maxBatchSize}, preferred ${db.preferred.join("/") || "none"}, max queue delay ${db.maxQueueDelayUs} µs) over ${where}`
      : batched
        ? `${name} version ${version}: max batch ${config.maxBatchSize}, dynamic batching off (no dynamic_batching in the config): each request runs alone on ${where}`
        : typeof modelIn[0] === "number" && modelIn.length === config.input.dims.length
          ? `${name} version ${version}: input [${modelIn.join(", ")}] has a fixed batch of ${modelIn[0]}, so dynamic batching is off; requests queue for ${where}`
          : `${name} version ${version}: max_batch_size 0 (no batch axis), so dynamic batching is off; requests queue for ${where}`,
  );
  for (const w of draft.warnings) log.warn(w);
  return {
    name,
    version,
    file: info.file,
    config,
    kinds,
    input: { name: config.input.name, datatype: "FP32", shape: inShape },
    output: { name: config.output.name, datatype: "FP32", shape: outShape },
    classNames: config.classNames,
    batcher,
    stats,
    instances: instances.length,
    detector,
    async close() {
      await batcher.close();
      await release();
    },
  };
}
