/**
 * Triton model configuration (`config.pbtxt`): the subset framewire serve
 * runs, read from protobuf text (or from the JSON of a load request),
 * validated with valibot, and every problem reported as `file:line:column:
 * field: message`. `readModelConfig` checks what can be checked from the file
 * alone; `completeConfig` (config-complete.ts) then fills in and checks
 * against the ONNX model, as Triton's auto-complete does.
 *
 * Supported: name, platform "onnxruntime_onnx" / backend "onnxruntime",
 * version_policy, max_batch_size, one input and one output (name, data_type
 * TYPE_FP32, dims, label_filename), dynamic_batching (preferred_batch_size,
 * max_queue_delay_microseconds, preserve_ordering, default_queue_policy
 * max_queue_size), instance_group (count, kind, gpus), default_model_filename,
 * parameters (intra_op_thread_count), model_warmup. Known fields that would
 * change what the model computes (sequence batching, ensembles, reshape, ...)
 * are errors; fields that only tune Triton (optimization, metric_tags, ...)
 * are accepted with a warning.
 */
import * as v from "valibot";
import { ConfigError, type FileIssue } from "../core/errors.ts";
import { describeIssue, formatPath } from "../spec/issues.ts";
import { suggest } from "../spec/loader.ts";
import { PbtxtSyntaxError, parsePbtxt, toObject, type PbShape, type Pos } from "./pbtxt.ts";

/** A config that cannot be served; lists every problem with its place. */
export class ModelConfigError extends ConfigError {
  override name = "ModelConfigError";
  constructor(
    readonly file: string,
    readonly issues: FileIssue[],
  ) {
    super(issues.map((i) => `${i.line ? `${file}:${i.line}:${i.column}` : file}: ${i.path ? `${i.path}: ` : ""}${i.message}`).join("\n"), undefined, "E_MODEL_CONFIG");
  }
}

export const DATA_TYPES = [
  "TYPE_INVALID",
  "TYPE_BOOL",
  "TYPE_UINT8",
  "TYPE_UINT16",
  "TYPE_UINT32",
  "TYPE_UINT64",
  "TYPE_INT8",
  "TYPE_INT16",
  "TYPE_INT32",
  "TYPE_INT64",
  "TYPE_FP16",
  "TYPE_FP32",
  "TYPE_FP64",
  "TYPE_STRING",
  "TYPE_BF16",
] as const;
export type DataType = (typeof DATA_TYPES)[number];
export const INSTANCE_KINDS = ["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"] as const;
export type InstanceKind = (typeof INSTANCE_KINDS)[number];

/** Data type names from numpy, ONNX and PyTorch, and the Triton name each means. */
const TYPE_ALIASES: Record<string, string> = {
  FLOAT: "TYPE_FP32",
  FLOAT32: "TYPE_FP32",
  FLOAT16: "TYPE_FP16",
  HALF: "TYPE_FP16",
  DOUBLE: "TYPE_FP64",
  FLOAT64: "TYPE_FP64",
  BFLOAT16: "TYPE_BF16",
  INT: "TYPE_INT32",
  LONG: "TYPE_INT64",
};

/** The value meant by a misspelt one: a known alias, the name without its TYPE_/KIND_ prefix, or the nearest by edit distance. */
function hintFor(input: string, values: readonly string[]): string | undefined {
  const bare = input.toUpperCase().replace(/^TYPE_/, "");
  if (values.includes("TYPE_FP32") && TYPE_ALIASES[bare]) return TYPE_ALIASES[bare];
  const prefixed = values.find((x) => x.endsWith(`_${input.toUpperCase()}`));
  return prefixed ?? suggest(input, [...values]);
}

const pick = <const T extends readonly [string, ...string[]]>(values: T, what: string) =>
  v.picklist(values, (i) => {
    const hint = typeof i.input === "string" ? hintFor(i.input, values) : undefined;
    return `unknown ${what} ${JSON.stringify(i.input)}${hint ? ` (did you mean ${hint}?)` : ` (one of ${values.join(", ")})`}`;
  });
const int = (min: number, max: number) =>
  v.pipe(v.number("expected a number"), v.integer("expected a whole number"), v.minValue(min, `expected >= ${min}`), v.maxValue(max, `expected <= ${max}`));
const UINT32 = 4_294_967_295;
/** A field framewire serve knows but cannot honour: any value is an error, with the reason. */
const unsupported = (why: string) => v.optional(v.custom<never>(() => false, why));
/** A boolean only `false` (its default) of which is supported. */
const onlyFalse = (why: string) => v.optional(v.pipe(v.boolean("expected true or false"), v.value(false, why)));
/** Accepted and ignored (a warning names it): tuning that has no counterpart here. */
const ignored = v.optional(v.unknown());

const Dims = v.array(v.pipe(int(-1, 2 ** 31), v.notValue(0, "a dim is -1 (variable) or positive")));

const ModelInput = v.strictObject({
  name: v.pipe(v.string("expected a quoted name"), v.minLength(1, "the name is empty")),
  data_type: v.optional(pick(DATA_TYPES, "data type")),
  format: v.optional(pick(["FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW"] as const, "format")),
  dims: v.optional(Dims),
  reshape: unsupported("reshape is not supported by framewire serve: give dims as the model takes them"),
  is_shape_tensor: onlyFalse("shape tensors are a TensorRT feature; framewire serve has none"),
  allow_ragged_batch: onlyFalse("ragged batches are not supported by framewire serve"),
  optional: onlyFalse("optional inputs are not supported by framewire serve (a model has one input)"),
  is_non_linear_format_io: onlyFalse("non-linear IO formats are a TensorRT feature; framewire serve has none"),
});

const ModelOutput = v.strictObject({
  name: v.pipe(v.string("expected a quoted name"), v.minLength(1, "the name is empty")),
  data_type: v.optional(pick(DATA_TYPES, "data type")),
  dims: v.optional(Dims),
  label_filename: v.optional(v.pipe(v.string("expected a quoted file name"), v.minLength(1))),
  reshape: unsupported("reshape is not supported by framewire serve: give dims as the model produces them"),
  is_shape_tensor: onlyFalse("shape tensors are a TensorRT feature; framewire serve has none"),
  is_non_linear_format_io: onlyFalse("non-linear IO formats are a TensorRT feature; framewire serve has none"),
});

const DynamicBatching = v.strictObject({
  preferred_batch_size: v.optional(v.array(int(1, 1 << 20))),
  max_queue_delay_microseconds: v.optional(int(0, 3_600_000_000)),
  preserve_ordering: v.optional(v.boolean("expected true or false")),
  priority_levels: v.optional(v.pipe(int(0, UINT32), v.value(0, "priority levels are not supported by framewire serve"))),
  default_priority_level: v.optional(v.pipe(int(0, UINT32), v.value(0, "priority levels are not supported by framewire serve"))),
  default_queue_policy: v.optional(
    v.strictObject({
      max_queue_size: v.optional(int(0, 1 << 30)),
      timeout_action: v.optional(pick(["REJECT"] as const, "timeout action (framewire serve has REJECT only)")),
      default_timeout_microseconds: v.optional(v.pipe(int(0, 3_600_000_000), v.value(0, "queue timeouts are not supported by framewire serve"))),
      allow_timeout_override: v.optional(v.boolean("expected true or false")),
    }),
  ),
  priority_queue_policy: unsupported("priority queues are not supported by framewire serve"),
});

const InstanceGroup = v.strictObject({
  name: v.optional(v.string("expected a quoted name")),
  kind: v.optional(pick(INSTANCE_KINDS, "instance kind")),
  count: v.optional(int(1, 64)),
  gpus: v.optional(v.array(int(0, 1024))),
  profile: unsupported("optimization profiles are a TensorRT feature; framewire serve has none"),
  passive: onlyFalse("passive instances are not supported by framewire serve"),
  host_policy: v.optional(v.string()),
  secondary_devices: unsupported("secondary devices (NVDLA) are not supported by framewire serve"),
  rate_limiter: ignored,
});

const VersionPolicy = v.pipe(
  v.strictObject({
    latest: v.optional(v.strictObject({ num_versions: v.optional(int(1, 1 << 20)) })),
    all: v.optional(v.strictObject({})),
    specific: v.optional(v.strictObject({ versions: v.array(int(0, Number.MAX_SAFE_INTEGER)) })),
  }),
  v.check((p) => [p.latest, p.all, p.specific].filter(Boolean).length <= 1, "set one of latest, all or specific"),
);

const WarmupInput = v.pipe(
  v.strictObject({
    data_type: pick(DATA_TYPES, "data type"),
    dims: Dims,
    zero_data: v.optional(v.boolean("expected true or false")),
    random_data: v.optional(v.boolean("expected true or false")),
    input_data_file: v.optional(v.pipe(v.string("expected a quoted file name"), v.minLength(1))),
  }),
  v.check((i) => [i.zero_data, i.random_data, i.input_data_file].filter((x) => x !== undefined && x !== false).length === 1, "set one of zero_data, random_data or input_data_file"),
);

const ModelWarmup = v.strictObject({
  name: v.pipe(v.string("expected a quoted name"), v.minLength(1, "the name is empty")),
  batch_size: v.optional(int(1, 1 << 20)),
  inputs: v.record(v.string(), WarmupInput),
  count: v.optional(int(0, 10_000)),
});

/** A model configuration as written (Triton's JSON field names), validated. */
export const ModelConfigSchema = v.strictObject({
  name: v.optional(v.string("expected a quoted name")),
  platform: v.optional(v.string("expected a quoted platform name")),
  backend: v.optional(v.string("expected a quoted backend name")),
  runtime: v.optional(v.string()),
  version_policy: v.optional(VersionPolicy),
  max_batch_size: v.optional(int(0, 1 << 20)),
  input: v.optional(v.array(ModelInput)),
  output: v.optional(v.array(ModelOutput)),
  batch_input: v.optional(v.array(v.custom<never>(() => false, "batch inputs are not supported by framewire serve"))),
  batch_output: v.optional(v.array(v.custom<never>(() => false, "batch outputs are not supported by framewire serve"))),
  optimization: ignored,
  dynamic_batching: v.optional(DynamicBatching),
  sequence_batching: unsupported("sequence batching (stateful models) is not supported by framewire serve"),
  ensemble_scheduling: unsupported("ensembles are not supported by framewire serve: chain the models as stages of a pipeline"),
  instance_group: v.optional(v.array(InstanceGroup)),
  default_model_filename: v.optional(v.pipe(v.string("expected a quoted file name"), v.minLength(1))),
  cc_model_filenames: ignored,
  metric_tags: ignored,
  parameters: v.optional(v.record(v.string(), v.strictObject({ string_value: v.string("expected a quoted value") }))),
  model_warmup: v.optional(v.array(ModelWarmup)),
  model_operations: unsupported("model operations are not supported by framewire serve"),
  model_transaction_policy: v.optional(v.strictObject({ decoupled: onlyFalse("decoupled models are not supported by framewire serve") })),
  model_repository_agents: unsupported("repository agents are not supported by framewire serve"),
  response_cache: v.optional(v.strictObject({ enable: onlyFalse("the response cache is not supported by framewire serve") })),
});
export type ModelConfigInput = v.InferOutput<typeof ModelConfigSchema>;

/** Top-level fields accepted without effect (each gets a warning). */
const IGNORED = ["optimization", "cc_model_filenames", "metric_tags", "runtime"];
/** `parameters` keys the onnxruntime backend reads that framewire serve honours. */
const KNOWN_PARAMETERS = ["intra_op_thread_count"];

/** Field names that are repeated or maps in Triton's ModelConfig (and nested) messages. */
export const MODEL_CONFIG_SHAPE: PbShape = {
  repeated: new Set([
    "input",
    "output",
    "dims",
    "shape",
    "preferred_batch_size",
    "instance_group",
    "gpus",
    "profile",
    "model_warmup",
    "versions",
    "batch_input",
    "batch_output",
    "secondary_devices",
    "source_input",
    "resources",
    "gpu_execution_accelerator",
    "cpu_execution_accelerator",
    "step",
  ]),
  maps: new Set(["parameters", "inputs", "cc_model_filenames", "metric_tags", "priority_queue_policy", "input_map", "output_map"]),
};

/** A config read from its file, checked as far as the file alone allows. */
export interface ConfigDraft {
  /** Where it came from, for messages (`repo/yolov5/config.pbtxt`, or a description). */
  file: string;
  config: ModelConfigInput;
  /** Position of each field path (`input[0].dims`); empty for JSON. */
  positions: Map<string, Pos>;
  warnings: string[];
}

/**
 * The position of `path`, or of its nearest written parent.
 * @example
 * positionOf(draft.positions, ["input", 0, "dims", 2]); // { line: 11, column: 5 }
 */
export function positionOf(positions: Map<string, Pos>, path: (string | number)[]): Pos | undefined {
  for (let n = path.length; n >= 0; n--) {
    const p = positions.get(formatPath(path.slice(0, n)));
    if (p) return p;
  }
  return undefined;
}

/**
 * An issue at `path`, placed where the config wrote it.
 * @example
 * throw new ModelConfigError(draft.file, [issueAt(draft, ["max_batch_size"], "expected > 0")]);
 */
export function issueAt(draft: Pick<ConfigDraft, "positions">, path: (string | number)[], message: string): FileIssue {
  const p = positionOf(draft.positions, path);
  return { line: p?.line ?? 0, column: p?.column ?? 0, path: formatPath(path), message };
}

const TENSORRT =
  "this server runs ONNX models with onnxruntime, not TensorRT plans. Export the model to ONNX " +
  '(YOLOv5: python export.py --weights yolov5n.pt --include onnx --dynamic), put it at <model>/<version>/model.onnx and set platform: "onnxruntime_onnx"; ' +
  "or keep this model on NVIDIA Triton and point infer-triton at that server";

/**
 * Why a platform/backend pair cannot be served here (undefined: it can).
 * @example
 * platformProblem("tensorrt_plan", undefined)?.message; // '"tensorrt_plan": this server runs ONNX models ...'
 */
export function platformProblem(platform: string | undefined, backend: string | undefined): { field: "platform" | "backend"; message: string } | undefined {
  if (platform === "tensorrt_plan") return { field: "platform", message: `"tensorrt_plan": ${TENSORRT}` };
  if (backend === "tensorrt") return { field: "backend", message: `"tensorrt": ${TENSORRT}` };
  if (platform !== undefined && platform !== "onnxruntime_onnx") {
    return { field: "platform", message: `"${platform}" is not served here: framewire serve runs ONNX models (platform "onnxruntime_onnx", backend "onnxruntime")` };
  }
  if (backend !== undefined && backend !== "onnxruntime") {
    return { field: "backend", message: `"${backend}" is not served here: framewire serve runs ONNX models (backend "onnxruntime")` };
  }
  return undefined;
}

/**
 * The message for a model file kind framewire serve cannot run (model.plan and friends); undefined for others.
 * @example
 * modelFileProblem("repo/yolov5/1/model.plan"); // "repo/yolov5/1/model.plan is a TensorRT plan: ..."
 */
export function modelFileProblem(file: string): string | undefined {
  if (/\.(plan|engine)$/i.test(file)) return `${file} is a TensorRT plan: ${TENSORRT}`;
  if (/\.(pt|pth|torchscript|savedmodel|graphdef|py)$/i.test(file)) return `${file}: framewire serve runs ONNX models (model.onnx); export this model to ONNX`;
  return undefined;
}

/** The checks that need only the config itself. */
function checkDraft(draft: ConfigDraft, modelName: string | undefined): void {
  const c = draft.config;
  const issues: FileIssue[] = [];
  if (modelName !== undefined && c.name !== undefined && c.name !== modelName) {
    issues.push(issueAt(draft, ["name"], `"${c.name}" does not match the model's directory name "${modelName}"`));
  }
  const platform = platformProblem(c.platform, c.backend);
  if (platform) issues.push(issueAt(draft, [platform.field], platform.message));
  const maxBatch = c.max_batch_size;
  if (c.dynamic_batching && maxBatch === 0) {
    issues.push(issueAt(draft, ["dynamic_batching"], "dynamic batching needs max_batch_size > 0 (a model with max_batch_size 0 has no batch axis)"));
  }
  c.dynamic_batching?.preferred_batch_size?.forEach((p, i) => {
    if (maxBatch !== undefined && maxBatch > 0 && p > maxBatch) issues.push(issueAt(draft, ["dynamic_batching", "preferred_batch_size", i], `${p} is larger than max_batch_size ${maxBatch}`));
  });
  for (const [key, list] of [
    ["input", c.input],
    ["output", c.output],
  ] as const) {
    if (list && list.length > 1) issues.push(issueAt(draft, [key, 1], `framewire serve runs models with one ${key}; this config lists ${list.length}`));
    list?.forEach((t, i) => {
      if (t.data_type && t.data_type !== "TYPE_FP32") {
        const why = t.data_type === "TYPE_FP16" ? " (float16 tensors fail inside onnxruntime-node under Bun: use the float32 export of the model)" : "";
        issues.push(issueAt(draft, [key, i, "data_type"], `${t.data_type} is not supported: framewire serve runs TYPE_FP32 tensors${why}`));
      }
    });
  }
  c.model_warmup?.forEach((w, i) => {
    for (const [name, input] of Object.entries(w.inputs)) {
      if (input.data_type !== "TYPE_FP32") issues.push(issueAt(draft, ["model_warmup", i, "inputs", name, "data_type"], `${input.data_type} is not supported: warm-up inputs are TYPE_FP32`));
    }
  });
  if (issues.length) throw new ModelConfigError(draft.file, issues);
  for (const key of IGNORED) if (c[key as keyof ModelConfigInput] !== undefined) draft.warnings.push(warningAt(draft, [key], "has no effect in framewire serve; ignored"));
  for (const key of Object.keys(c.parameters ?? {})) {
    if (!KNOWN_PARAMETERS.includes(key)) draft.warnings.push(warningAt(draft, ["parameters", key], `has no effect in framewire serve (it reads ${KNOWN_PARAMETERS.join(", ")}); ignored`));
  }
  c.instance_group?.forEach((g, i) => {
    if (g.rate_limiter !== undefined) draft.warnings.push(warningAt(draft, ["instance_group", i, "rate_limiter"], "has no effect in framewire serve; ignored"));
  });
}

function warningAt(draft: ConfigDraft, path: (string | number)[], message: string): string {
  const i = issueAt(draft, path, message);
  return `${i.line ? `${draft.file}:${i.line}:${i.column}` : draft.file}: ${i.path}: ${message}`;
}

/** The allowed name sharing the longest start with `key`, if that is at least half of it (max_queue_delay → max_queue_delay_microseconds). */
function longestCommonPrefix(key: string, allowed: string[]): string | undefined {
  let best: string | undefined;
  let bestLength = Math.max(4, Math.ceil(key.length / 2)) - 1;
  for (const a of allowed) {
    let n = 0;
    while (n < a.length && n < key.length && a[n] === key[n]) n++;
    if (n > bestLength) [best, bestLength] = [a, n];
  }
  return best;
}

/** A valibot issue in words; an unknown field names the field it probably meant. */
function explain(issue: v.BaseIssue<unknown>, path: (string | number)[]): string {
  const message = describeIssue(issue, ModelConfigSchema);
  const allowed = /^unknown key \(allowed: (.*)\)$/.exec(message)?.[1]?.split(", ");
  if (!allowed) return message;
  const key = String(path.at(-1));
  const hint = suggest(key, allowed) ?? longestCommonPrefix(key, allowed);
  return `unknown field${hint ? ` (did you mean ${hint}?)` : ""}; the fields here are ${allowed.join(", ")}`;
}

function validate(file: string, value: unknown, positions: Map<string, Pos>, modelName: string | undefined): ConfigDraft {
  const r = v.safeParse(ModelConfigSchema, value);
  if (!r.success) {
    const draft = { positions };
    const issues = r.issues.map((i) => {
      const path = (i.path ?? []).map((p) => p.key as string | number);
      return issueAt(draft, path, explain(i, path));
    });
    throw new ModelConfigError(file, issues);
  }
  const draft: ConfigDraft = { file, config: r.output, positions, warnings: [] };
  checkDraft(draft, modelName);
  return draft;
}

/**
 * Reads a config.pbtxt's text.
 * @param file where it came from, as messages should name it.
 * @param modelName the model's directory name (`name`, when written, must match it).
 * @throws ModelConfigError with file:line:column for syntax errors, unknown or mistyped fields and unsupported settings.
 * @example
 * const draft = readModelConfig("repo/yolov5/config.pbtxt", await readText("repo/yolov5/config.pbtxt"), "yolov5");
 * draft.config.max_batch_size; // 32
 */
export function readModelConfig(file: string, text: string, modelName?: string): ConfigDraft {
  let parsed;
  try {
    parsed = toObject(parsePbtxt(text), MODEL_CONFIG_SHAPE);
  } catch (err) {
    if (err instanceof PbtxtSyntaxError) throw new ModelConfigError(file, [{ line: err.line, column: err.column, path: "", message: err.reason }]);
    throw err;
  }
  return validate(file, parsed.value, parsed.positions, modelName);
}

/**
 * A config given as JSON (the `config` parameter of a load request), checked like a file.
 * @throws ModelConfigError naming field paths (no lines: JSON is one string).
 * @example
 * const draft = configFromJson("the load request's config parameter", JSON.parse(param), "yolov5");
 */
export function configFromJson(file: string, json: unknown, modelName?: string): ConfigDraft {
  return validate(file, json, new Map(), modelName);
}

/**
 * A config draft with nothing written: everything comes from the model (Triton's auto-complete).
 * @example
 * const draft = emptyDraft("--model yolov5n.onnx");
 */
export function emptyDraft(file: string): ConfigDraft {
  const draft: ConfigDraft = { file, config: {}, positions: new Map(), warnings: [] };
  checkDraft(draft, undefined);
  return draft;
}
