import * as v from "valibot";
import { basename } from "node:path";
import { ConfigError } from "../runtime/core/errors.ts";
import { hostLoad } from "../runtime/platform/host-load.ts";
import { confidenceOf, RotatingLog, type InferenceRecord } from "../runtime/inference/inference-log.ts";
import { decodeDetections, detectLayout, LayoutOption, type LayoutChoice } from "../runtime/inference/yolo.ts";
import { derive, type Frame, type Predictions, type Tensor } from "../runtime/core/message.ts";
import { ModelLifecycle, type ModelVersion, type VersionLoader } from "../runtime/inference/model-lifecycle.ts";
import { modelVersion, PROVIDERS } from "../runtime/inference/onnx-model.ts";
import { OnnxThread } from "../runtime/inference/onnx-thread.ts";
import { defineOperator } from "../runtime/core/operator.ts";
import { resolveModel } from "../runtime/platform/paths.ts";

const Options = v.strictObject({
  model: v.pipe(
    v.string(),
    v.check((m) => resolveModel(m) !== undefined, "model file not found (looked in the working directory and models/)"),
    v.description("A path, or a file name under models/."),
  ),
  providers: v.optional(
    v.pipe(
      v.array(v.picklist(PROVIDERS)),
      v.minLength(1),
      v.description("Execution providers in order of preference; cpu is always the last resort."),
    ),
    ["cpu"],
  ),
  threads: v.optional(
    v.pipe(
      v.number(),
      v.integer(),
      v.minValue(0),
      v.maxValue(256),
      v.description("Intra-op threads (0 = onnxruntime's default, one per core)."),
    ),
    0,
  ),
  names: v.optional(v.pipe(v.array(v.string()), v.description("Class names, when the model's metadata has none."))),
  layout: LayoutOption,
  watch: v.optional(
    v.pipe(
      v.boolean(),
      v.description("Load a new version when the model file changes; it takes over between frames (or as a canary, with `canary`)."),
    ),
    false,
  ),
  canary: v.optional(
    v.pipe(
      v.strictObject({
        share: v.optional(
          v.pipe(v.number(), v.gtValue(0), v.maxValue(1), v.description("Share of frames the new version runs while on trial.")),
          0.1,
        ),
        frames: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.description("Canary inferences before the decision.")), 200),
        maxErrorRate: v.optional(
          v.pipe(
            v.number(),
            v.minValue(0),
            v.maxValue(1),
            v.description("Highest share of failed canary inferences; past it the canary is rolled back at once."),
          ),
          0.01,
        ),
        maxLatencyRatio: v.optional(
          v.pipe(
            v.number(),
            v.minValue(1),
            v.description("Roll back when the canary's mean inference time exceeds the active version's by this factor."),
          ),
        ),
        minConfidenceRatio: v.optional(
          v.pipe(
            v.number(),
            v.minValue(0),
            v.maxValue(1),
            v.description("Roll back when the canary's mean detection confidence falls below this share of the active version's."),
          ),
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
        maxBytes: v.optional(
          v.pipe(v.number(), v.integer(), v.minValue(4096), v.description("Rotate before a file grows past this many bytes.")),
          10 * 1024 * 1024,
        ),
        keep: v.optional(
          v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(100), v.description("Rotated files kept (path.1 newest).")),
          5,
        ),
      }),
      v.description(
        "A JSON line per inference (model, version, input shape, time, detections, mean/max confidence, CPU/GPU %), rotated by size. Off unless given.",
      ),
    ),
  ),
});
type Options = v.InferOutput<typeof Options>;

/** One loaded version of the stage's model, with what its first frame established. */
interface OnnxVersion {
  m: OnnxThread;
  name: string;
  checked: boolean;
  layout?: "yolov5" | "yolov8";
}

/**
 * Runs a new version once on zeros of the input size before it gets frames,
 * so a model that cannot run, or cannot take the frames, is refused at load.
 */
async function warmUp(m: OnnxThread, frameDims: readonly number[] | undefined, layout: LayoutChoice): Promise<void> {
  const { inputDims, file } = m.info;
  const fixed = (d: number | string): d is number => typeof d === "number" && d > 0;
  if (frameDims && inputDims.some((d, i) => fixed(d) && d !== frameDims[i])) {
    throw new ConfigError(`${basename(file)} expects input [${inputDims.join("x")}] but the frames are [${frameDims.join("x")}]`);
  }
  const dims = inputDims.map((d, i) => (fixed(d) ? d : (frameDims?.[i] ?? (i === 0 ? 1 : 0))));
  if (dims.some((d) => d === 0)) return; // a dynamic size no frame has shown yet
  const out = await m.run(new Float32Array(dims.reduce((a, b) => a * b, 1)), dims);
  detectLayout(out.dims, layout);
}

/** How the log and the canary check decode predictions (nms's defaults). */
const FOLLOW_DECODE = { conf: 0.25, iou: 0.45 } as const;

/**
 * Runs a YOLO-family ONNX detector on each frame's tensor with
 * onnxruntime-node, attaching raw predictions for `nms` to decode. New model
 * versions load beside the running one (file watch or HTTP control) and take
 * over between frames, directly or as a canary.
 */
export default defineOperator({
  name: "infer-onnx",
  kind: "transform",
  description:
    "Run an ONNX YOLO detector (v5 or v8 layout) with onnxruntime-node; providers with cpu fallback, hot reload, canary, inference log.",
  options: Options,
  async create(o, ctx) {
    /** The tensor size frames arrive with (from the first frame): new versions must take it. */
    let frameDims: number[] | undefined;
    const load: VersionLoader<OnnxVersion> = async (file, known) => {
      const initial = known.length === 0;
      if (!initial && known.includes(await modelVersion(file))) return null;
      const m = await OnnxThread.start({ model: file, providers: o.providers, threads: o.threads, names: o.names }, ctx.log);
      if (!initial)
        await warmUp(m, frameDims, o.layout).catch((err) => {
          m.close();
          throw err;
        });
      const { info } = m;
      const name = basename(info.file);
      ctx.log.info(
        `${name} loaded on ${info.provider} (input ${info.inputName} [${info.inputDims.join("x")}], ${info.classNames.length} classes)`,
      );
      return {
        model: { m, name, checked: false },
        version: info.version,
        file: info.file,
        detail: { provider: info.provider, input: info.inputDims.join("x") },
      };
    };
    const life = await ModelLifecycle.open(o.model, {
      stage: ctx.stage,
      load,
      release: async (x) => x.m.close(),
      canary: o.canary,
      log: ctx.log,
    });
    const log = o.inferenceLog
      ? await RotatingLog.open(o.inferenceLog.path, {
          ...o.inferenceLog,
          onError: (e) => ctx.log.error(`inference log ${o.inferenceLog!.path}: ${e.message}`),
        })
      : undefined;
    const releaseLoad = log ? hostLoad.acquire() : undefined;
    if (o.watch) life.watch(life.active.loaded.file);
    /** Input buffers this stage owns: a frame's tensor is shared with other subscribers, so the inference thread gets a copy it may keep while it runs. */
    const spare: Float32Array[] = [];

    async function infer(ov: OnnxVersion, t: Tensor): Promise<Predictions> {
      const { inputDims, classNames } = ov.m.info;
      if (!ov.checked) {
        const bad = inputDims.some((d, i) => typeof d === "number" && d > 0 && d !== t.dims[i]);
        if (bad)
          throw new ConfigError(
            `${ov.name} expects input [${inputDims.join("x")}] but gets [${t.dims.join("x")}]: set the resize stage's width/height to match`,
          );
        ov.checked = true;
      }
      // An owned copy of the tensor is lent to the inference thread and handed back, even when the run fails.
      let buf = spare.pop();
      if (buf?.length !== t.data.length) buf = new Float32Array(t.data.length);
      buf.set(t.data);
      const out = await ov.m.run(buf, t.dims, true).catch((err: Error & { input?: Float32Array }) => {
        if (err.input) spare.push(err.input);
        throw err;
      });
      spare.push(out.input);
      ov.layout ??= detectLayout(out.dims, o.layout);
      return { layout: ov.layout, dims: out.dims, data: out.data, classNames, model: ov.name };
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
        provider: ver.model.m.info.provider,
        inputShape: f.tensor!.dims,
        timeMs: Math.round(ms * 100) / 100,
        ...confidenceOf(dets),
        cpuPercent: Math.round(load.hostCpu * 1000) / 10,
        processCpuPercent: Math.round(load.processCpu * 1000) / 10,
        gpuPercent: load.gpus ? Math.round((load.gpus.reduce((a, g) => a + g.utilisation, 0) / load.gpus.length) * 1000) / 10 : null,
      };
      return JSON.stringify(record);
    }

    /**
     * Log line and canary confidence: the predictions decoded here as nms
     * would with its defaults, so both work wherever nms runs (another
     * process included). Only done while a log is kept or a canary compared.
     */
    function follow(p: Predictions, f: Frame, ver: ModelVersion<OnnxVersion>, ms: number): void {
      const dets = decodeDetections(p, f.tensor!.letterbox, f.image.width, f.image.height, FOLLOW_DECODE);
      life.settle(ver, dets);
      log?.write(line(f, ver, ms, Date.now(), dets));
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
            if (log || life.comparing) follow(p, f, ver, ms);
            return derive(f, { predictions: p });
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
