/** config.pbtxt: the protobuf text parser, the config checks with file:line, completion against a model, Triton's JSON. */
import { describe, expect, test } from "bun:test";
import { FramewireError } from "../runtime/core/errors.ts";
import { completeConfig, type AutoDefaults, type ModelTensors } from "../runtime/serve/config-complete.ts";
import { tritonConfigJson } from "../runtime/serve/config-json.ts";
import { configFromJson, ModelConfigError, readModelConfig } from "../runtime/serve/config.ts";
import { parsePbtxt, PbtxtSyntaxError, toObject } from "../runtime/serve/pbtxt.ts";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { repoRoot } from "./support/paths.ts";
import { seedConfig } from "./support/repository.ts";

const shape = { repeated: new Set(["dims", "input", "tags"]), maps: new Set(["parameters"]) };
const obj = (text: string) => toObject(parsePbtxt(text), shape).value;

function thrown(f: () => unknown): Error {
  try {
    f();
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected an error");
}
async function rejected(p: Promise<unknown>): Promise<Error> {
  return p.then(
    () => {
      throw new Error("expected a rejection");
    },
    (e: Error) => e,
  );
}

describe("protobuf text format", () => {
  test("fields, nested messages in all three spellings, lists, comments, separators", () => {
    const text = `# a comment
name: "m"   # trailing comment
max_batch_size: 32,
dims: [ 3, 640, 640 ];
dims: 7
input [ { name: "a" }, { name: "b" } ]
input { name: "c" }
input: < name: "d" >
`;
    expect(obj(text)).toEqual({ name: "m", max_batch_size: 32, dims: [3, 640, 640, 7], input: [{ name: "a" }, { name: "b" }, { name: "c" }, { name: "d" }] });
  });

  test("scalars: negative, hex, float with f, inf and nan, enums, booleans, escapes and joined strings", () => {
    const v = obj(String.raw`a: -1 b: 0x1F c: 2.5e-1f d: -inf e: nan f: KIND_GPU g: true h: False i: "tab\there \"q\" \x41\101\u00e9" j: 'single' "joined"`);
    expect(v.a).toBe(-1);
    expect(v.b).toBe(31);
    expect(v.c).toBe(0.25);
    expect(v.d).toBe(-Infinity);
    expect(Number.isNaN(v.e)).toBe(true);
    expect([v.f, v.g, v.h]).toEqual(["KIND_GPU", true, false]);
    expect(v.i).toBe('tab\there "q" AAé');
    expect(v.j).toBe("singlejoined");
  });

  test("maps become objects; positions are kept per path", () => {
    const parsed = toObject(parsePbtxt('parameters { key: "k1" value: { string_value: "1" } }\nparameters {\n  key: "k2"\n  value: { string_value: "2" } }\ndims: [1,\n 2]'), shape);
    expect(parsed.value).toEqual({ parameters: { k1: { string_value: "1" }, k2: { string_value: "2" } }, dims: [1, 2] });
    expect(parsed.positions.get("parameters.k2")).toEqual({ line: 3, column: 3 });
    expect(parsed.positions.get("dims[1]")).toEqual({ line: 6, column: 2 });
  });

  test("syntax errors carry line and column", () => {
    const cases: [string, string][] = [
      ['name: "open', "1:7: unterminated string"],
      ["a {\n  b: 1\n", '3:1: expected "}", found the end of the file'],
      ["dims: [1 2]", '1:10: expected "," or "]" in the list opened at 1:7, found "2"'],
      ["a: @", '1:4: unexpected character "@"'],
      ["a 1", '1:3: expected ":" or "{" after a, found "1"'],
      ["a: 12abc", '1:4: malformed number "12a"'],
      ["[ext]: 1", "1:1: extension and Any fields ([...]) are not supported"],
      ["a: 1\na: 2", "2:1: a is set twice (first at 1:1); it is not a repeated field"],
      ["a: [1, 2]", "1:1: a is not a repeated field: write one value, not a [list]"],
    ];
    for (const [text, message] of cases) {
      const err = thrown(() => obj(text));
      expect(err).toBeInstanceOf(PbtxtSyntaxError);
      expect(err.message).toBe(message);
    }
  });
});

describe("config.pbtxt checks", () => {
  const file = "repo/yolov5/config.pbtxt";

  test("the seed's config reads as written", () => {
    const draft = readModelConfig(file, seedConfig(), "yolov5");
    expect(draft.config).toEqual({
      name: "yolov5",
      platform: "onnxruntime_onnx",
      max_batch_size: 32,
      input: [{ name: "images", data_type: "TYPE_FP32", dims: [3, 640, 640] }],
      output: [{ name: "output0", data_type: "TYPE_FP32", dims: [25200, 85], label_filename: "labels.txt" }],
      dynamic_batching: { preferred_batch_size: [4, 8, 16], max_queue_delay_microseconds: 500 },
      instance_group: [{ count: 4, kind: "KIND_GPU" }],
    });
    expect(draft.warnings).toEqual([]);
  });

  test("the shipped examples/model_repository: yolov5 is the seed's config, yolov5n a fixed-batch model with warm-up", () => {
    const read = (name: string) => readModelConfig(name, readFileSync(join(repoRoot, "examples/model_repository", name, "config.pbtxt"), "utf8"), name);
    const yolov5 = read("yolov5");
    expect(yolov5.config).toEqual(readModelConfig(file, seedConfig(), "yolov5").config);
    expect(yolov5.warnings).toEqual([]);
    const yolov5n = read("yolov5n");
    expect(yolov5n.config).toMatchObject({ max_batch_size: 0, input: [{ dims: [1, 3, 640, 640] }], instance_group: [{ count: 1, kind: "KIND_CPU" }] });
    expect(yolov5n.config.model_warmup).toEqual([{ name: "zeros", batch_size: 1, inputs: { images: { data_type: "TYPE_FP32", dims: [1, 3, 640, 640], zero_data: true } } }]);
  });

  test("mistakes are ModelConfigErrors at file:line:column, all of them at once", () => {
    const text = `name: "yolov5"
max_batch_size: 8
input [ { name: "images", data_type: TYPE_FLOAT32, dims: [ 3, 0, 640 ] } ]
dynamic_batching { preferred_batch_size: [ 4, 16 ], max_queue_delay: 100 }
instance_group [ { count: 2, kind: KIND_TPU } ]
`;
    const err = thrown(() => readModelConfig(file, text, "yolov5"));
    expect(err).toBeInstanceOf(ModelConfigError);
    expect((err as FramewireError).code).toBe("E_MODEL_CONFIG");
    expect(err.message.split("\n")).toEqual([
      `${file}:3:27: input[0].data_type: unknown data type "TYPE_FLOAT32" (did you mean TYPE_FP32?)`,
      `${file}:3:63: input[0].dims[1]: a dim is -1 (variable) or positive`,
      `${file}:4:53: dynamic_batching.max_queue_delay: unknown field (did you mean max_queue_delay_microseconds?); the fields here are preferred_batch_size, max_queue_delay_microseconds, preserve_ordering, priority_levels, default_priority_level, default_queue_policy, priority_queue_policy`,
      `${file}:5:30: instance_group[0].kind: unknown instance kind "KIND_TPU" (did you mean KIND_GPU?)`,
    ]);
  });

  test("semantic checks: platform, name, batching against max_batch_size, data types", () => {
    const cases: [string, string][] = [
      ['name: "other"', `${file}:1:1: name: "other" does not match the model's directory name "yolov5"`],
      ['platform: "pytorch_libtorch"', `${file}:1:1: platform: "pytorch_libtorch" is not served here: framewire serve runs ONNX models (platform "onnxruntime_onnx", backend "onnxruntime")`],
      ["max_batch_size: 0\ndynamic_batching { }", `${file}:2:1: dynamic_batching: dynamic batching needs max_batch_size > 0 (a model with max_batch_size 0 has no batch axis)`],
      ["max_batch_size: 8\ndynamic_batching { preferred_batch_size: [4, 16] }", `${file}:2:46: dynamic_batching.preferred_batch_size[1]: 16 is larger than max_batch_size 8`],
      [
        'input [ { name: "images" data_type: TYPE_FP16 } ]',
        `${file}:1:26: input[0].data_type: TYPE_FP16 is not supported: framewire serve runs TYPE_FP32 tensors (float16 tensors fail inside onnxruntime-node under Bun: use the float32 export of the model)`,
      ],
      ["sequence_batching { }", `${file}:1:1: sequence_batching: sequence batching (stateful models) is not supported by framewire serve`],
      ['input [ { name: "a" reshape: { shape: [1] } } ]', `${file}:1:21: input[0].reshape: reshape is not supported by framewire serve: give dims as the model takes them`],
    ];
    for (const [text, message] of cases) expect(thrown(() => readModelConfig(file, text, "yolov5")).message).toBe(message);
  });

  test("a tensorrt_plan model is refused with the alternative named", () => {
    for (const text of ['platform: "tensorrt_plan"', 'backend: "tensorrt"']) {
      const err = thrown(() => readModelConfig(file, `name: "yolov5"\n${text}\nmax_batch_size: 32`, "yolov5"));
      expect(err.message).toStartWith(`${file}:2:1: `);
      expect(err.message).toContain("this server runs ONNX models with onnxruntime, not TensorRT plans");
      expect(err.message).toContain("Export the model to ONNX");
      expect(err.message).toContain("point infer-triton at that server");
    }
  });

  test("tuning without effect is accepted with a warning naming its line", () => {
    const draft = readModelConfig(file, 'optimization { graph { level: 1 } }\nparameters { key: "enable_mem_arena" value: { string_value: "1" } }', "yolov5");
    expect(draft.warnings).toEqual([
      `${file}:1:1: optimization: has no effect in framewire serve; ignored`,
      `${file}:2:14: parameters.enable_mem_arena: has no effect in framewire serve (it reads intra_op_thread_count); ignored`,
    ]);
  });

  test("a load request's JSON config is checked the same way, by path", () => {
    expect(configFromJson("the load request", { max_batch_size: 4, dynamic_batching: {} }, "m").config.max_batch_size).toBe(4);
    expect(thrown(() => configFromJson("the load request", { max_batch_size: "4" }, "m")).message).toBe("the load request: max_batch_size: expected a number");
  });
});

describe("completing a config against the model", () => {
  const batchModel: ModelTensors = { file: "model.onnx", inputName: "images", outputName: "output0", inputDims: ["batch", 3, 640, 640], outputDims: ["batch", 25200, 85], classNames: ["person"] };
  const fixedModel: ModelTensors = { ...batchModel, inputDims: [1, 3, 640, 640], outputDims: [1, 25200, 85] };
  const defaults: AutoDefaults = { maxBatchSize: 4, dynamicBatching: { preferred: [], maxQueueDelayUs: 0 }, maxQueue: 64, instances: 1 };
  const file = "repo/m/config.pbtxt";
  const complete = (text: string, model: ModelTensors, d = defaults, name = "m") => completeConfig(readModelConfig(file, text, name), name, model, d, undefined);

  test("nothing written: everything from the model, dynamic batching on as Triton's auto-complete does", async () => {
    const c = await complete("", batchModel);
    expect([c.maxBatchSize, c.input, c.output.dims, c.dynamicBatching]).toEqual([4, { name: "images", dims: [3, 640, 640] }, [25200, 85], { preferred: [], maxQueueDelayUs: 0, preserveOrdering: false, maxQueueSize: 0 }]);
    const fixed = await complete("", fixedModel);
    expect([fixed.maxBatchSize, fixed.input.dims, fixed.dynamicBatching]).toEqual([0, [1, 3, 640, 640], undefined]);
  });

  test("what the config writes must agree with the model, at its line", async () => {
    const cases: [string, ModelTensors, string][] = [
      [
        "max_batch_size: 32",
        fixedModel,
        `${file}:1:1: max_batch_size: 32 needs a model with a dynamic batch axis, and the model's input images is [1, 3, 640, 640] (a fixed batch of 1): set max_batch_size: 0 and dims: [1, 3, 640, 640], or use a model exported with a dynamic batch (e.g. models/yolov5n-batch.onnx)`,
      ],
      ['max_batch_size: 8\ninput [ { name: "pixels" } ]', batchModel, `${file}:2:11: input[0].name: "pixels" is not an input of model.onnx: its input is "images"`],
      [
        'max_batch_size: 8\ninput [ { name: "images" dims: [3, 320, 640] } ]',
        batchModel,
        `${file}:2:36: input[0].dims[1]: is 320, but the model's input images is [-1, 3, 640, 640]`,
      ],
      [
        'max_batch_size: 8\ninput [ { name: "images" dims: [1, 3, 640, 640] } ]',
        batchModel,
        `${file}:2:26: input[0].dims: [1, 3, 640, 640] has 4 dims; the model's input images is [-1, 3, 640, 640], so dims has 3 (without the batch axis): [3, 640, 640]`,
      ],
      ['output [ { name: "output0" label_filename: "labels.txt" } ]', batchModel, `${file}:1:28: output[0].label_filename: labels.txt is not in the model's directory`],
      [
        'max_batch_size: 4\nmodel_warmup [ { name: "w" batch_size: 8 inputs { key: "images" value: { data_type: TYPE_FP32 dims: [3, 640, 640] zero_data: true } } } ]',
        batchModel,
        `${file}:2:28: model_warmup[0].batch_size: 8 is larger than max_batch_size 4`,
      ],
      [
        'model_warmup [ { name: "w" inputs { key: "images" value: { data_type: TYPE_FP32 dims: [3, 640] zero_data: true } } } ]',
        batchModel,
        `${file}:1:81: model_warmup[0].inputs.images.dims: [3, 640] is not the input's dims [3, 640, 640] (without the batch axis)`,
      ],
    ];
    for (const [text, model, message] of cases) {
      const err = await rejected(complete(text, model));
      expect(err).toBeInstanceOf(ModelConfigError);
      expect(err.message).toBe(message);
    }
  });

  test("dynamic height and width: --size fills them, a repository config must write them", async () => {
    const dynamic: ModelTensors = { ...batchModel, inputDims: ["batch", 3, "h", "w"] };
    expect((await complete("", dynamic, { ...defaults, size: 320 })).input.dims).toEqual([3, 320, 320]);
    expect((await rejected(complete("", dynamic))).message).toBe(
      `${file}: the model's input images is [-1, 3, -1, -1], with dim 2 variable; framewire serve needs fixed dims besides the batch: write input dims in the config\n` +
        `${file}: the model's input images is [-1, 3, -1, -1], with dim 3 variable; framewire serve needs fixed dims besides the batch: write input dims in the config`,
    );
    expect((await complete("input [ { name: \"images\" dims: [3, 480, 480] } ]", dynamic)).input.dims).toEqual([3, 480, 480]);
  });

  test("Triton's JSON: every field, proto names, int64 as numbers", async () => {
    const c = await complete(seedConfig().replace('label_filename: "labels.txt"', ""), batchModel, defaults, "yolov5");
    const json = tritonConfigJson(c, new Map());
    expect(json).toEqual({
      name: "yolov5",
      platform: "onnxruntime_onnx",
      backend: "onnxruntime",
      runtime: "",
      version_policy: { latest: { num_versions: 1 } },
      max_batch_size: 32,
      input: [{ name: "images", data_type: "TYPE_FP32", format: "FORMAT_NONE", dims: [3, 640, 640], is_shape_tensor: false, allow_ragged_batch: false, optional: false, is_non_linear_format_io: false }],
      output: [{ name: "output0", data_type: "TYPE_FP32", dims: [25200, 85], label_filename: "", is_shape_tensor: false, is_non_linear_format_io: false }],
      batch_input: [],
      batch_output: [],
      dynamic_batching: { preferred_batch_size: [4, 8, 16], max_queue_delay_microseconds: 500, preserve_ordering: false, priority_levels: 0, default_priority_level: 0, priority_queue_policy: {} },
      instance_group: [{ name: "yolov5_0", kind: "KIND_GPU", count: 4, gpus: [], secondary_devices: [], profile: [], passive: false, host_policy: "" }],
      default_model_filename: "model.onnx",
      cc_model_filenames: {},
      metric_tags: {},
      parameters: {},
      model_warmup: [],
    });
  });
});
