/**
 * A model as `framewire serve` serves it: N onnxruntime sessions (Triton's
 * instance count), each on its own inference thread, behind one batcher, with
 * the KServe metadata clients see.
 */
import { cpus } from "node:os";
import { basename } from "node:path";
import { ConfigError } from "../core/errors.ts";
import type { TensorMetadata } from "../inference/kserve.ts";
import type { Logger } from "../core/log.ts";
import { Batcher, type Runner } from "./batcher.ts";
import { OnnxThread } from "../inference/onnx-thread.ts";

export interface ServeModelOptions {
  /** A path, or a file name under models/. */
  model: string;
  /** Name clients use in /v2/models/{name}; default: the file name without .onnx. */
  name?: string;
  instances: number;
  /** Intra-op threads per instance; 0 shares the cores out among the instances. */
  threads: number;
  maxBatch: number;
  preferredBatch: number[];
  maxQueueDelayUs: number;
  maxQueue: number;
  /** Input height and width used when the model leaves them dynamic. */
  size: number;
}

export interface ServedModel {
  name: string;
  version: string;
  file: string;
  /** Input and output as KServe metadata: -1 marks the dynamic batch axis. */
  input: TensorMetadata;
  output: TensorMetadata;
  classNames: string[];
  /** True when requests are batched together (the model has a dynamic batch axis). */
  dynamic: boolean;
  maxBatch: number;
  batcher: Batcher;
  /** Model input size for POST /detect, or why this model cannot serve it. */
  detector: { width: number; height: number } | { unavailable: string };
  close(): Promise<void>;
}

/** -1 for symbolic or unknown dims, as KServe metadata writes them. */
const dimOf = (d: number | string) => (typeof d === "number" && d > 0 ? d : -1);

/**
 * Loads `instances` sessions of a model (a worker thread each), warms each
 * up, and puts a batcher in front.
 * @throws ConfigError when the model cannot be served (missing, float16, dynamic non-batch dims).
 * @example
 * const m = await loadServedModel({ model: "yolov5n.onnx", instances: 1, threads: 0, maxBatch: 32, preferredBatch: [4, 8, 16], maxQueueDelayUs: 500, maxQueue: 64, size: 640 }, log);
 */
export async function loadServedModel(o: ServeModelOptions, log: Logger): Promise<ServedModel> {
  const threads = o.threads || Math.max(1, Math.floor(cpus().length / o.instances));
  const instances: OnnxThread[] = [];
  const release = () => instances.forEach((i) => i.close());
  try {
    // One at a time: peak memory stays at one model being optimised.
    for (let i = 0; i < o.instances; i++) instances.push(await OnnxThread.start({ model: o.model, providers: ["cpu"], threads }, log));
  } catch (err) {
    release();
    throw err;
  }
  const first = instances[0].info;
  const file = basename(first.file);
  const name = o.name ?? file.replace(/\.onnx$/i, "");
  const inDims = first.inputDims.map(dimOf);
  const outDims = first.outputDims.map(dimOf);
  // Height and width of an image model may be dynamic: --size fixes them, as every request must then match.
  const shape = inDims.map((d, i) => (d === -1 && i >= 2 && inDims.length === 4 ? o.size : d));
  const bad = shape.findIndex((d, i) => i > 0 && d === -1);
  if (bad >= 0) {
    release();
    throw new ConfigError(`${file}: input dim ${bad} of [${first.inputDims.join(", ")}] is dynamic; framewire serve needs fixed dims besides the batch`);
  }
  const dynamic = shape[0] === -1;
  const maxBatch = dynamic ? o.maxBatch : shape[0];
  const itemShape = shape.slice(1);
  const itemSize = itemShape.reduce((a, d) => a * d, 1);

  const runners: Runner[] = instances.map((inst) => (input, batch) => inst.run(input, [batch, ...itemShape]));
  // Warm-up: the first run of a session allocates and tunes; no request should pay for it.
  const warm = dynamic ? 1 : maxBatch;
  await Promise.all(runners.map((run) => run(new Float32Array(itemSize * warm), warm)));

  const batcher = new Batcher(runners, {
    itemSize,
    dynamic,
    maxBatch,
    preferred: o.preferredBatch,
    maxQueueDelayMs: o.maxQueueDelayUs / 1000,
    maxQueue: o.maxQueue,
  });
  const detector =
    shape.length === 4 && shape[1] === 3 && outDims.length === 3
      ? { width: shape[3], height: shape[2] }
      : { unavailable: `POST /detect needs an image detector (input N×3×H×W, 3-D output); ${name} has input [${shape}] and output [${outDims}]` };
  log.info(
    dynamic
      ? `${name}: dynamic batching on (max batch ${maxBatch}, preferred ${o.preferredBatch.join("/") || "none"}, max queue delay ${o.maxQueueDelayUs} µs) over ${o.instances} instance(s), ${threads} thread(s) each`
      : `${name}: input [${first.inputDims.join(", ")}] has a fixed batch of ${maxBatch}, so dynamic batching is off; requests queue for ${o.instances} instance(s), ${threads} thread(s) each`,
  );
  return {
    name,
    version: "1",
    file: first.file,
    input: { name: first.inputName, datatype: "FP32", shape },
    output: { name: first.outputName, datatype: "FP32", shape: dynamic ? [-1, ...outDims.slice(1)] : outDims },
    classNames: first.classNames,
    dynamic,
    maxBatch,
    batcher,
    detector,
    async close() {
      await batcher.close();
      release();
    },
  };
}
