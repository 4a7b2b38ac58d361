/**
 * Opening an ONNX model with onnxruntime-node: execution providers in order
 * with cpu as the last resort, input type check, class names from the
 * model's metadata, and a content-hash version. Runs on whichever thread
 * calls it (inference threads call it; see onnx-thread.ts).
 */
import * as ort from "onnxruntime-node";
import { createHash } from "node:crypto";
import { availableParallelism } from "node:os";
import { basename } from "node:path";
import { ConfigError } from "../core/errors.ts";
import { parseClassNames, readOnnxMetadata } from "./onnx-metadata.ts";
import { resolveModel } from "../platform/paths.ts";
import { readBytes } from "../platform/index.ts";

export const PROVIDERS = ["cpu", "cuda", "tensorrt", "webgpu", "dml", "coreml"] as const;
export type Provider = (typeof PROVIDERS)[number];

/** What loading a model needs. */
export interface ModelOptions {
  /** A path, or a file name under models/. */
  model: string;
  providers: readonly Provider[];
  /** Intra-op threads (0 = {@link defaultThreads}). */
  threads: number;
  /** Class names, when the model's metadata has none. */
  names?: string[];
  /**
   * onnxruntime's CPU memory arena (default on): it keeps the largest set of
   * activations the session ever needed. Off saves ~60 MB of peak RSS for a
   * batch-1 detector; batches need it (their activations exceed what the C
   * allocator keeps between runs, so each run would map and fault them in again).
   * Off also turns off its memory pattern (one block per run for all
   * activations, planned from the first runs), which the C allocator cannot
   * share between the run's tensors: a batch-1 pipeline measured 342 against
   * 359 MiB peak RSS (median of 3) at the same fps.
   */
  memoryArena?: boolean;
}

export interface LoadedModel {
  session: ort.InferenceSession;
  file: string;
  provider: string;
  inputName: string;
  outputName: string;
  inputDims: readonly (number | string)[];
  classNames: string[];
  /** The first 12 hex digits of the file's SHA-256: a new file is a new version. */
  version: string;
}

/**
 * Intra-op threads when none are configured: one per core but one, which is
 * left to the JavaScript thread (ingest, resize, NMS, sinks) and ffmpeg.
 * Measured on 2 cores (docs/performance.md), a pipeline with one intra-op
 * thread runs faster than with two: onnxruntime's two threads wait on each
 * other whenever decoding or preprocessing takes one of the cores.
 * @example
 * defaultThreads(); // 1 on a 2-core machine, 7 on 8 cores
 */
export function defaultThreads(): number {
  return Math.max(1, availableParallelism() - 1);
}

/**
 * The version of a model file: its content hash.
 * @example
 * await modelVersion("models/yolov5n.onnx"); // "3f2a9c1b4d5e"
 */
export async function modelVersion(fileOrBytes: string | Uint8Array): Promise<string> {
  const bytes = typeof fileOrBytes === "string" ? await readBytes(fileOrBytes) : fileOrBytes;
  return createHash("sha256").update(bytes).digest("hex").slice(0, 12);
}

/**
 * Opens a model with the first execution provider that loads, checks its
 * input type and reads class names from its metadata.
 * @example
 * const m = await loadModel({ model: "yolov5n.onnx", providers: ["cuda", "cpu"], threads: 0 });
 */
export async function loadModel(o: ModelOptions, warn: (msg: string) => void = () => {}): Promise<LoadedModel> {
  const file = resolveModel(o.model);
  if (!file) throw new ConfigError(`model ${o.model} not found`);
  const bytes = await readBytes(file);
  let meta: Record<string, string> = {};
  try {
    meta = readOnnxMetadata(bytes);
  } catch (err) {
    throw new ConfigError(`${file} is not a readable ONNX model: ${(err as Error).message}`);
  }
  const available = new Set(ort.listSupportedBackends().map((b) => b.name));
  const wanted = [...new Set([...o.providers, "cpu" as const])];
  let session: ort.InferenceSession | undefined;
  let provider = "cpu";
  for (const p of wanted) {
    if (!available.has(p)) {
      warn(`execution provider ${p} is not available in this onnxruntime-node build; trying the next`);
      continue;
    }
    try {
      session = await ort.InferenceSession.create(bytes, {
        executionProviders: [p],
        graphOptimizationLevel: "all",
        // No busy-waiting between runs: the inference threads share the cores with decoding and preprocessing.
        extra: { session: { intra_op: { allow_spinning: "0" }, inter_op: { allow_spinning: "0" } } },
        enableCpuMemArena: o.memoryArena ?? true,
        enableMemPattern: o.memoryArena ?? true,
        intraOpNumThreads: o.threads || defaultThreads(),
      });
      provider = p;
      break;
    } catch (err) {
      warn(`execution provider ${p} failed (${(err as Error).message.split("\n")[0]}); trying the next`);
    }
  }
  if (!session) throw new ConfigError(`could not load ${file} with any execution provider`);
  const input = session.inputMetadata[0];
  const output = session.outputMetadata[0];
  if (!input?.isTensor || !output?.isTensor) throw new ConfigError(`${basename(file)}: expected tensor input and output`);
  if (input.type !== "float32") {
    await session.release();
    throw new ConfigError(
      `${basename(file)} takes ${input.type} input; infer-onnx feeds float32 (float16 tensors fail inside onnxruntime-node under Bun). ` +
        "Use the float32 export of the model (e.g. yolov5n.onnx).",
    );
  }
  const classNames = o.names ?? parseClassNames(meta.names) ?? [];
  return { session, file, provider, inputName: input.name, outputName: output.name, inputDims: input.shape, classNames, version: await modelVersion(bytes) };
}

