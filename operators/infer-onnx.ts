import * as v from "valibot";
import * as ort from "onnxruntime-node";
import { basename } from "node:path";
import { ConfigError } from "../runtime/errors.ts";
import type { Frame, Predictions } from "../runtime/message.ts";
import { parseClassNames, readOnnxMetadata } from "../runtime/onnx-metadata.ts";
import { defineOperator } from "../runtime/operator.ts";
import { resolveModel } from "../runtime/paths.ts";
import { readBytes } from "../runtime/platform.ts";

const PROVIDERS = ["cpu", "cuda", "tensorrt", "webgpu", "dml", "coreml"] as const;

const Options = v.strictObject({
  /** A path, or a file name under models/. */
  model: v.pipe(v.string(), v.check((m) => resolveModel(m) !== undefined, "model file not found (looked in the working directory and models/)")),
  /** Execution providers in order of preference; cpu is always the last resort. */
  providers: v.optional(v.pipe(v.array(v.picklist(PROVIDERS)), v.minLength(1)), ["cpu"]),
  /** Intra-op threads (0 = onnxruntime's default, one per core). */
  threads: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(256)), 0),
  /** Class names, when the model's metadata has none. */
  names: v.optional(v.array(v.string())),
  /** Output layout; auto tells YOLOv5 (1×N×(5+C)) from YOLOv8 (1×(4+C)×N) by shape. */
  layout: v.optional(v.picklist(["auto", "yolov5", "yolov8"]), "auto"),
});
type Options = v.InferOutput<typeof Options>;

export interface LoadedModel {
  session: ort.InferenceSession;
  file: string;
  provider: string;
  inputName: string;
  outputName: string;
  inputDims: readonly (number | string)[];
  classNames: string[];
}

/**
 * Opens a model with the first execution provider that loads, checks its
 * input type and reads class names from its metadata.
 * @example
 * const m = await loadModel({ model: "yolov5n.onnx", providers: ["cuda", "cpu"], threads: 0, layout: "auto" });
 */
export async function loadModel(o: Options, warn: (msg: string) => void = () => {}): Promise<LoadedModel> {
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
        ...(o.threads ? { intraOpNumThreads: o.threads } : {}),
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
  return { session, file, provider, inputName: input.name, outputName: output.name, inputDims: input.shape, classNames };
}

/** Which YOLO layout an output of these dims is, or an error message. */
export function detectLayout(dims: readonly number[], want: Options["layout"]): "yolov5" | "yolov8" {
  if (dims.length !== 3) throw new Error(`expected a 3-D YOLO output, got [${dims.join(", ")}]`);
  if (want !== "auto") return want;
  return dims[1] > dims[2] ? "yolov5" : "yolov8";
}

/**
 * Runs a YOLO-family ONNX detector on each frame's tensor with
 * onnxruntime-node, attaching raw predictions for `nms` to decode.
 */
export default defineOperator({
  name: "infer-onnx",
  kind: "transform",
  description: "Run an ONNX YOLO detector (v5 or v8 layout) with onnxruntime-node; execution providers with fallback to cpu.",
  options: Options,
  async create(o, ctx) {
    const m = await loadModel(o, (w) => ctx.log.warn(w));
    const name = basename(m.file);
    ctx.log.info(`${name} loaded on ${m.provider} (input ${m.inputName} [${m.inputDims.join("x")}], ${m.classNames.length} classes)`);
    let checked = false;
    let layout: "yolov5" | "yolov8" | undefined;
    return {
      async process(msg) {
        if (msg.kind !== "frame") return msg;
        const f: Frame = msg;
        if (!f.tensor) throw new Error("frame has no tensor: put a resize stage before infer-onnx");
        if (!checked) {
          const bad = m.inputDims.some((d, i) => typeof d === "number" && d > 0 && d !== f.tensor!.dims[i]);
          if (bad) throw new ConfigError(`${name} expects input [${m.inputDims.join("x")}] but gets [${f.tensor.dims.join("x")}]: set the resize stage's width/height to match`);
          checked = true;
        }
        const feeds = { [m.inputName]: new ort.Tensor("float32", f.tensor.data, f.tensor.dims) };
        const out = (await m.session.run(feeds))[m.outputName];
        const dims = out.dims as number[];
        layout ??= detectLayout(dims, o.layout);
        const predictions: Predictions = { layout, dims, data: out.data as Float32Array, classNames: m.classNames, model: name };
        f.predictions = predictions;
        return f;
      },
      async close() {
        await m.session.release();
      },
    };
  },
});
