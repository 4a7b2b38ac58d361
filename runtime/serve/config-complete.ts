/**
 * A model's configuration completed against the ONNX model it describes, as
 * Triton's auto-complete does: what the config leaves out (inputs, outputs,
 * dims, max_batch_size) comes from the model, and what it writes must agree
 * with the model. Problems name the config's file:line. The result is what
 * the server runs and what GET .../config reports.
 */
import { join } from "node:path";
import { cpus } from "node:os";
import type { FileIssue } from "../core/errors.ts";
import { readBytes, readText, exists } from "../platform/index.ts";
import { issueAt, ModelConfigError, type ConfigDraft, type InstanceKind, type ModelConfigInput } from "./config.ts";

/** What the loaded ONNX model says about itself. */
export interface ModelTensors {
  /** The model file as messages name it. */
  file: string;
  inputName: string;
  outputName: string;
  /** Symbolic dims are strings or -1. */
  inputDims: readonly (number | string)[];
  outputDims: readonly (number | string)[];
  classNames: string[];
}

/** Values for what neither the config nor the model settles. */
export interface AutoDefaults {
  /** max_batch_size for a model with a dynamic batch axis when the config has none (Triton: 4). */
  maxBatchSize: number;
  /** Dynamic batching to turn on with that auto-completed max_batch_size (Triton turns it on, with no preferred sizes and no delay). */
  dynamicBatching: { preferred: number[]; maxQueueDelayUs: number };
  /** Batch items waiting per model before requests get 503, when the config sets no max_queue_size. */
  maxQueue: number;
  /** Instances when the config has no instance_group (`--instances`; Triton: 1). */
  instances: number;
  /** Height and width for an image model that leaves them dynamic (`--size`); undefined: the config must write them. */
  size?: number;
}

export interface InstanceGroupPlan {
  name: string;
  kind: InstanceKind;
  /** Instances in this group (count per listed GPU). */
  count: number;
  gpus: number[];
}

export interface WarmupSample {
  name: string;
  batchSize: number;
  /** Executions per instance (Triton's count; 0 counts as 1). */
  count: number;
  /** One batch item's input: zeros, random values in [0, 1), or the contents of a warmup/ file. */
  data: "zero" | "random" | Float32Array;
}

/** A configuration the server can run: complete and checked against the model. */
export interface ServeConfig {
  name: string;
  /** 0: no batch axis (requests carry exactly `input.dims`); N > 0: requests carry 1..N items. */
  maxBatchSize: number;
  /** Dims without the batch axis when maxBatchSize > 0 (Triton's convention); all fixed. */
  input: { name: string; dims: number[] };
  /** Dims without the batch axis when maxBatchSize > 0; -1 where the model leaves them variable. */
  output: { name: string; dims: number[]; labelFilename?: string };
  /** Set when requests are combined into batches. */
  dynamicBatching?: { preferred: number[]; maxQueueDelayUs: number; preserveOrdering: boolean; maxQueueSize: number };
  /** Most batch items waiting before requests are refused. */
  maxQueue: number;
  instanceGroups: InstanceGroupPlan[];
  /** onnxruntime intra-op threads per instance. */
  threads: number;
  defaultModelFilename: string;
  warmup: WarmupSample[];
  classNames: string[];
  /** The config as written (with the model's name), for the parts reported as given. */
  written: ModelConfigInput;
}

const dimOf = (d: number | string) => (typeof d === "number" && d > 0 ? d : -1);
const show = (dims: readonly number[]) => `[${dims.join(", ")}]`;

/**
 * The instances a config asks for, known before the model loads.
 * @example
 * instancePlan(draft.config, "yolov5"); // [{ name: "yolov5_0", kind: "KIND_GPU", count: 4, gpus: [] }]
 */
export function instancePlan(config: ModelConfigInput, name: string, defaultCount = 1): InstanceGroupPlan[] {
  const groups = config.instance_group?.length ? config.instance_group : [{}];
  return groups.map((g, i) => {
    const gpus = g.gpus ?? [];
    const kind = g.kind ?? "KIND_AUTO";
    // No instance_group at all: one group of `defaultCount`; a group without count has 1, as in Triton.
    const per = g.count ?? (config.instance_group?.length ? 1 : defaultCount);
    return { name: g.name ?? `${name}_${i}`, kind, count: per * (kind === "KIND_CPU" || !gpus.length ? 1 : gpus.length), gpus };
  });
}

/**
 * Threads per instance: the config's intra_op_thread_count, else `fallback`, else the cores shared out.
 * @example
 * threadsFor(draft.config, 4); // 1 on a 2-core machine
 */
export function threadsFor(config: ModelConfigInput, instances: number, fallback = 0): number {
  const written = Number(config.parameters?.intra_op_thread_count?.string_value);
  if (Number.isInteger(written) && written > 0) return written;
  return fallback || Math.max(1, Math.floor(cpus().length / instances));
}

/**
 * Completes and checks a config against the model it serves.
 * @param dir the model's directory (labels and warm-up files are read from it); undefined for a lone model file.
 * @throws ModelConfigError naming the config's file:line where it disagrees with the model.
 * @example
 * const config = await completeConfig(draft, "yolov5", thread.info, { maxBatchSize: 4, dynamicBatching: { preferred: [], maxQueueDelayUs: 0 }, maxQueue: 64, instances: 1 }, "repo/yolov5");
 */
export async function completeConfig(
  draft: ConfigDraft,
  name: string,
  model: ModelTensors,
  defaults: AutoDefaults,
  dir: string | undefined,
  threadsFallback = 0,
): Promise<ServeConfig> {
  const c = draft.config;
  const issues: FileIssue[] = [];
  const at = (path: (string | number)[], message: string) => issues.push(issueAt(draft, path, message));
  const modelIn = model.inputDims.map(dimOf);
  const modelOut = model.outputDims.map(dimOf);
  const modelInShow = `the model's input ${model.inputName} is ${show(modelIn)}`;

  // max_batch_size, and whether auto-complete turned dynamic batching on.
  let maxBatch = c.max_batch_size;
  let autoBatching = false;
  let batchAxisOk = true;
  if (maxBatch === undefined) {
    maxBatch = modelIn.length > 1 && modelIn[0] === -1 ? defaults.maxBatchSize : 0;
    autoBatching = maxBatch > 0 && !c.dynamic_batching;
  } else if (maxBatch > 0) {
    const ok = modelIn.length > 1 && (modelIn[0] === -1 || (modelIn[0] === 1 && maxBatch === 1));
    batchAxisOk = ok;
    if (!ok) {
      const fixed = modelIn.length > 1 ? ` (a fixed batch of ${modelIn[0]})` : "";
      at(
        ["max_batch_size"],
        `${maxBatch} needs a model with a dynamic batch axis, and ${modelInShow}${fixed}: set max_batch_size: 0 and dims: ${show(modelIn)}, or use a model exported with a dynamic batch (e.g. models/yolov5n-batch.onnx)`,
      );
    }
  }
  const batched = maxBatch > 0;

  // The input.
  const inCfg = c.input?.[0];
  if (inCfg && inCfg.name !== model.inputName) at(["input", 0, "name"], `"${inCfg.name}" is not an input of ${model.file}: its input is "${model.inputName}"`);
  const itemIn = batched ? modelIn.slice(1) : modelIn;
  let inDims: number[] = [];
  if (inCfg?.dims) {
    if (inCfg.dims.length !== itemIn.length) {
      at(["input", 0, "dims"], `${show(inCfg.dims)} has ${inCfg.dims.length} dims; ${modelInShow}, so dims has ${itemIn.length}${batched ? " (without the batch axis)" : ""}: ${show(itemIn)}`);
    } else {
      inDims = inCfg.dims.map((d, i) => {
        const m = itemIn[i];
        if (m > 0 && d !== -1 && d !== m) at(["input", 0, "dims", i], `is ${d}, but ${modelInShow}`);
        if (d === -1 && m === -1) at(["input", 0, "dims", i], `framewire serve needs fixed input dims besides the batch: write the size (${modelInShow})`);
        return d === -1 ? m : d;
      });
    }
  } else {
    inDims = itemIn.map((d, i) => {
      const image = itemIn.length === (batched ? 3 : 4) && i >= itemIn.length - 2;
      if (d === -1 && image && defaults.size) return defaults.size;
      if (d === -1) {
        at(inCfg ? ["input", 0] : [], `${modelInShow}, with dim ${i + (batched ? 1 : 0)} variable; framewire serve needs fixed dims besides the batch: write input dims in the config`);
      }
      return d;
    });
  }

  // The output.
  const outCfg = c.output?.[0];
  if (outCfg && outCfg.name !== model.outputName) at(["output", 0, "name"], `"${outCfg.name}" is not an output of ${model.file}: its output is "${model.outputName}"`);
  if (batched && batchAxisOk && modelOut.length > 0 && modelOut[0] > 0 && !(modelOut[0] === 1 && maxBatch === 1)) {
    at(["max_batch_size"], `${maxBatch} needs a batch axis on the output too, and the model's output ${model.outputName} is ${show(modelOut)}`);
  }
  const itemOut = batched ? modelOut.slice(1) : modelOut;
  let outDims = itemOut;
  if (outCfg?.dims) {
    if (outCfg.dims.length !== itemOut.length) {
      at(["output", 0, "dims"], `${show(outCfg.dims)} has ${outCfg.dims.length} dims; the model's output ${model.outputName} is ${show(modelOut)}, so dims has ${itemOut.length}${batched ? " (without the batch axis)" : ""}`);
    } else {
      outCfg.dims.forEach((d, i) => {
        if (itemOut[i] > 0 && d !== -1 && d !== itemOut[i]) at(["output", 0, "dims", i], `is ${d}, but the model's output ${model.outputName} is ${show(modelOut)}`);
      });
      outDims = outCfg.dims.map((d, i) => (d === -1 ? itemOut[i] : d));
    }
  }

  // Class names: the label file, else the model's metadata.
  let classNames = model.classNames;
  const labelFilename = outCfg?.label_filename;
  if (labelFilename) {
    const file = dir ? join(dir, labelFilename) : undefined;
    if (!file || !(await exists(file))) at(["output", 0, "label_filename"], `${labelFilename} is not in the model's directory${dir ? ` (${dir})` : ""}`);
    else classNames = (await readText(file)).split(/\r?\n/).map((l) => l.trim()).filter(Boolean);
  }

  // Dynamic batching, written or auto-completed.
  const db = c.dynamic_batching;
  let dynamicBatching: ServeConfig["dynamicBatching"];
  if (db && batched) {
    const preferred = db.preferred_batch_size ?? [];
    preferred.forEach((p, i) => {
      if (p > maxBatch) at(["dynamic_batching", "preferred_batch_size", i], `${p} is larger than max_batch_size ${maxBatch}`);
    });
    dynamicBatching = {
      preferred,
      maxQueueDelayUs: db.max_queue_delay_microseconds ?? 0,
      preserveOrdering: db.preserve_ordering ?? false,
      maxQueueSize: db.default_queue_policy?.max_queue_size ?? 0,
    };
  } else if (autoBatching) {
    dynamicBatching = { ...defaults.dynamicBatching, preserveOrdering: false, maxQueueSize: 0 };
  }

  // Warm-up samples.
  const warmup: WarmupSample[] = [];
  for (const [i, w] of (c.model_warmup ?? []).entries()) {
    const batchSize = w.batch_size ?? 1;
    if (!batched && batchSize !== 1) at(["model_warmup", i, "batch_size"], `is ${batchSize}; a model with max_batch_size 0 warms up with batch_size 1`);
    if (batched && batchSize > maxBatch) at(["model_warmup", i, "batch_size"], `${batchSize} is larger than max_batch_size ${maxBatch}`);
    const names = Object.keys(w.inputs);
    for (const n of names) if (n !== model.inputName) at(["model_warmup", i, "inputs", n], `the model has no input "${n}" (its input is "${model.inputName}")`);
    const input = w.inputs[model.inputName];
    if (!input) {
      if (!names.length) at(["model_warmup", i, "inputs"], `needs the input "${model.inputName}"`);
      continue;
    }
    if (input.dims.length !== inDims.length || input.dims.some((d, k) => d !== inDims[k])) {
      at(["model_warmup", i, "inputs", model.inputName, "dims"], `${show(input.dims)} is not the input's dims ${show(inDims)}${batched ? " (without the batch axis)" : ""}`);
      continue;
    }
    let data: WarmupSample["data"] = input.random_data ? "random" : "zero";
    if (input.input_data_file) {
      const file = dir ? join(dir, "warmup", input.input_data_file) : undefined;
      const want = inDims.reduce((a, d) => a * d, 1) * 4;
      if (!file || !(await exists(file))) {
        at(["model_warmup", i, "inputs", model.inputName, "input_data_file"], `${input.input_data_file} is not in the model's warmup/ directory`);
        continue;
      }
      const bytes = await readBytes(file);
      if (bytes.byteLength !== want) {
        at(["model_warmup", i, "inputs", model.inputName, "input_data_file"], `warmup/${input.input_data_file} has ${bytes.byteLength} bytes; ${show(inDims)} TYPE_FP32 is ${want}`);
        continue;
      }
      data = new Float32Array(bytes.slice().buffer);
    }
    warmup.push({ name: w.name, batchSize, count: Math.max(1, w.count ?? 0), data });
  }

  if (issues.length) throw new ModelConfigError(draft.file, issues);
  const instanceGroups = instancePlan(c, name, defaults.instances);
  const instances = instanceGroups.reduce((a, g) => a + g.count, 0);
  const maxQueueSize = dynamicBatching?.maxQueueSize ?? 0;
  return {
    name,
    maxBatchSize: maxBatch,
    input: { name: model.inputName, dims: inDims },
    output: { name: model.outputName, dims: outDims, ...(labelFilename ? { labelFilename } : {}) },
    dynamicBatching,
    maxQueue: maxQueueSize > 0 ? maxQueueSize : defaults.maxQueue,
    instanceGroups,
    threads: threadsFor(c, instances, threadsFallback),
    defaultModelFilename: c.default_model_filename ?? "model.onnx",
    warmup,
    classNames,
    written: { ...c, name },
  };
}
