import * as v from "valibot";
import * as ort from "onnxruntime-node";
import { createHash } from "node:crypto";
import { basename } from "node:path";
import { ConfigError } from "../runtime/errors.ts";
import { hostLoad } from "../runtime/host-load.ts";
import { awaitDetections, confidenceOf, RotatingLog, type InferenceRecord } from "../runtime/inference-log.ts";
import type { Frame, Predictions, Tensor } from "../runtime/message.ts";
import { ModelLifecycle, type ModelVersion, type VersionLoader } from "../runtime/model-lifecycle.ts";
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
  watch: v.optional(
    v.pipe(v.boolean(), v.description("Load a new version when the model file changes; it takes over between frames (or as a canary, with `canary`).")),
    false,
  ),
  canary: v.optional(
    v.pipe(
      v.strictObject({
        share: v.optional(v.pipe(v.number(), v.gtValue(0), v.maxValue(1), v.description("Share of frames the new version runs while on trial.")), 0.1),
        frames: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.description("Canary inferences before the decision.")), 200),
        maxErrorRate: v.optional(
          v.pipe(v.number(), v.minValue(0), v.maxValue(1), v.description("Highest share of failed canary inferences; past it the canary is rolled back at once.")),
          0.01,
        ),
        maxLatencyRatio: v.optional(v.pipe(v.number(), v.minValue(1), v.description("Roll back when the canary's mean inference time exceeds the active version's by this factor."))),
        minConfidenceRatio: v.optional(
          v.pipe(v.number(), v.minValue(0), v.maxValue(1), v.description("Roll back when the canary's mean detection confidence falls below this share of the active version's.")),
        ),
      }),
      v.description(
        "New versions (file change, reload request) first run a share of the frames, then are promoted or rolled back; failed canary frames rerun on the active version.",
      ),
    ),
  ),
  inferenceLog: v.optional(
    v.pipe(
      v.strictObject({
        path: v.pipe(v.string(), v.minLength(1), v.description("The JSON Lines file (appended to).")),
        maxBytes: v.optional(v.pipe(v.number(), v.integer(), v.minValue(4096), v.description("Rotate before a file grows past this many bytes.")), 10 * 1024 * 1024),
        keep: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(100), v.description("Rotated files kept (path.1 newest).")), 5),
      }),
      v.description(
        "A JSON line per inference (model, version, input shape, time, detections, mean/max confidence, CPU/GPU %), rotated by size. Off unless given.",
      ),
    ),
  ),
});
type Options = v.InferOutput<typeof Options>;
/** What loading a model needs (callers outside the operator pass just these). */
type ModelOptions = Pick<Options, "model" | "providers" | "threads" | "names" | "layout">;

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
 * const m = await loadModel({ model: "yolov5n.onnx", providers: ["cuda", "cpu"], threads: 0, layout: "auto" });
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
  return { session, file, provider, inputName: input.name, outputName: output.name, inputDims: input.shape, classNames, version: await modelVersion(bytes) };
}

/** Which YOLO layout an output of these dims is, or an error message. */
export function detectLayout(dims: readonly number[], want: Options["layout"]): "yolov5" | "yolov8" {
  if (dims.length !== 3) throw new Error(`expected a 3-D YOLO output, got [${dims.join(", ")}]`);
  if (want !== "auto") return want;
  return dims[1] > dims[2] ? "yolov5" : "yolov8";
}

/** One loaded version of the stage's model, with what its first frame established. */
interface OnnxVersion {
  m: LoadedModel;
  name: string;
  checked: boolean;
  layout?: "yolov5" | "yolov8";
}

/**
 * Runs a new version once on zeros of the input size before it gets frames,
 * so a model that cannot run, or cannot take the frames, is refused at load.
 */
async function warmUp(m: LoadedModel, frameDims: readonly number[] | undefined, layout: Options["layout"]): Promise<void> {
  const fixed = (d: number | string): d is number => typeof d === "number" && d > 0;
  if (frameDims && m.inputDims.some((d, i) => fixed(d) && d !== frameDims[i])) {
    throw new ConfigError(`${basename(m.file)} expects input [${m.inputDims.join("x")}] but the frames are [${frameDims.join("x")}]`);
  }
  const dims = m.inputDims.map((d, i) => (fixed(d) ? d : (frameDims?.[i] ?? (i === 0 ? 1 : 0))));
  if (dims.some((d) => d === 0)) return; // a dynamic size no frame has shown yet
  const zeros = new Float32Array(dims.reduce((a, b) => a * b, 1));
  const out = (await m.session.run({ [m.inputName]: new ort.Tensor("float32", zeros, dims) }))[m.outputName];
  detectLayout(out.dims as number[], layout);
}

/** Inferences noted for the log with no nms in this process to finish them: then lines are written without confidence. */
const UNSETTLED_LIMIT = 100;

/**
 * Runs a YOLO-family ONNX detector on each frame's tensor with
 * onnxruntime-node, attaching raw predictions for `nms` to decode. New model
 * versions load beside the running one (file watch or HTTP control) and take
 * over between frames, directly or as a canary.
 */
export default defineOperator({
  name: "infer-onnx",
  kind: "transform",
  description: "Run an ONNX YOLO detector (v5 or v8 layout) with onnxruntime-node; providers with cpu fallback, hot reload, canary, inference log.",
  options: Options,
  async create(o, ctx) {
    /** The tensor size frames arrive with (from the first frame): new versions must take it. */
    let frameDims: number[] | undefined;
    const load: VersionLoader<OnnxVersion> = async (file, known) => {
      const initial = known.length === 0;
      if (!initial && known.includes(await modelVersion(file))) return null;
      const m = await loadModel({ ...o, model: file }, (w) => ctx.log.warn(w));
      if (!initial) await warmUp(m, frameDims, o.layout).catch(async (err) => {
        await m.session.release();
        throw err;
      });
      const name = basename(m.file);
      ctx.log.info(`${name} loaded on ${m.provider} (input ${m.inputName} [${m.inputDims.join("x")}], ${m.classNames.length} classes)`);
      return { model: { m, name, checked: false }, version: m.version, file: m.file, detail: { provider: m.provider, input: m.inputDims.join("x") } };
    };
    const life = await ModelLifecycle.open(o.model, { stage: ctx.stage, load, release: (x) => x.m.session.release(), canary: o.canary, log: ctx.log });
    const log = o.inferenceLog
      ? await RotatingLog.open(o.inferenceLog.path, { ...o.inferenceLog, onError: (e) => ctx.log.error(`inference log ${o.inferenceLog!.path}: ${e.message}`) })
      : undefined;
    const releaseLoad = log ? hostLoad.acquire() : undefined;
    if (o.watch) life.watch(life.active.loaded.file);
    let noted = 0;
    let settled = 0;
    let unsettled = false;

    async function infer(ov: OnnxVersion, t: Tensor): Promise<Predictions> {
      const m = ov.m;
      if (!ov.checked) {
        const bad = m.inputDims.some((d, i) => typeof d === "number" && d > 0 && d !== t.dims[i]);
        if (bad) throw new ConfigError(`${ov.name} expects input [${m.inputDims.join("x")}] but gets [${t.dims.join("x")}]: set the resize stage's width/height to match`);
        ov.checked = true;
      }
      const out = (await m.session.run({ [m.inputName]: new ort.Tensor("float32", t.data, t.dims) }))[m.outputName];
      const dims = out.dims as number[];
      ov.layout ??= detectLayout(dims, o.layout);
      return { layout: ov.layout, dims, data: out.data as Float32Array, classNames: m.classNames, model: ov.name };
    }

    function line(f: Frame, ver: ModelVersion<OnnxVersion>, ms: number, at: number, dets: readonly { score: number }[] | null): string {
      const load = hostLoad.latest;
      const record: InferenceRecord = {
        ts: new Date(at).toISOString(),
        pipeline: ctx.pipeline,
        stage: ctx.stage,
        stream: f.stream,
        seq: f.seq,
        model: ver.model.name,
        version: ver.version,
        provider: ver.model.m.provider,
        inputShape: f.tensor!.dims,
        timeMs: Math.round(ms * 100) / 100,
        ...confidenceOf(dets),
        cpuPercent: Math.round(load.hostCpu * 1000) / 10,
        processCpuPercent: Math.round(load.processCpu * 1000) / 10,
        gpuPercent: load.gpus ? Math.round((load.gpus.reduce((a, g) => a + g.utilisation, 0) / load.gpus.length) * 1000) / 10 : null,
      };
      return JSON.stringify(record);
    }

    /** Log line and canary confidence, once nms in this process has decoded the predictions. */
    function follow(p: Predictions, f: Frame, ver: ModelVersion<OnnxVersion>, ms: number): void {
      const at = Date.now();
      if (unsettled) return void log?.write(line(f, ver, ms, at, null));
      awaitDetections(p, (dets) => {
        settled++;
        life.settle(ver, dets);
        log?.write(line(f, ver, ms, at, dets));
      });
      if (++noted === UNSETTLED_LIMIT && settled === 0 && log) {
        unsettled = true;
        ctx.log.warn(`inference log: no nms stage in this process decodes ${ctx.stage}'s output; writing lines without detections and confidence`);
      }
    }

    return {
      models: life as ModelLifecycle<unknown>,
      metrics: () => life.metrics(),
      async process(msg) {
        if (msg.kind !== "frame") return msg;
        const f: Frame = msg;
        if (!f.tensor) throw new Error("frame has no tensor: put a resize stage before infer-onnx");
        frameDims ??= f.tensor.dims;
        let ver = life.pick();
        for (;;) {
          const t0 = performance.now();
          try {
            const p = await infer(ver.model, f.tensor);
            const ms = performance.now() - t0;
            life.finish(ver, ms, true);
            f.predictions = p;
            if (log || life.comparing) follow(p, f, ver, ms);
            return f;
          } catch (err) {
            const trial = ver !== life.active;
            life.finish(ver, performance.now() - t0, false);
            if (!trial) throw err;
            // A canary's (or a just-replaced version's) failure must not cost the frame: the active version runs it.
            ver = life.fallback();
          }
        }
      },
      async close() {
        await life.close();
        await log?.close();
        releaseLoad?.();
      },
    };
  },
});
