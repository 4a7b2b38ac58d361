import * as v from "valibot";
import { basename, join } from "node:path";
import { ConfigError } from "../runtime/core/errors.ts";
import { hostLoad } from "../runtime/platform/host-load.ts";
import { confidenceOf, RotatingLog, type InferenceRecord } from "../runtime/inference/inference-log.ts";
import { decodeDetections, detectLayout, LayoutOption, type LayoutChoice } from "../runtime/inference/yolo.ts";
import { derive, type Frame, type Predictions, type Tensor } from "../runtime/core/message.ts";
import { ModelLifecycle, type ModelVersion, type VersionLoader } from "../runtime/inference/model-lifecycle.ts";
import { BatchGatherer } from "../runtime/inference/batch-gather.ts";
import { defaultThreads, modelVersion, PROVIDERS } from "../runtime/inference/onnx-model.ts";
import { OnnxThread, type ModelInput } from "../runtime/inference/onnx-thread.ts";
import { tensorPixels } from "../runtime/inference/pixel-tensor.ts";
import { defineOperator, type OperatorMetric } from "../runtime/core/operator.ts";
import { resolveModel } from "../runtime/platform/paths.ts";
import { RolloutWorker } from "../runtime/bus/model-store.ts";

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
      v.description("Intra-op threads (0 = fitted to the cores: one per core but one, left to decoding and the other stages; see docs/performance.md)."),
    ),
    0,
  ),
  batch: v.optional(
    v.pipe(
      v.strictObject({
        max: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(64), v.description("Most frames in one inference.")), 8),
        maxDelayMs: v.optional(
          v.pipe(v.number(), v.minValue(0), v.maxValue(1000), v.description("Longest a frame waits for others before its batch runs.")),
          10,
        ),
      }),
      v.description(
        "Run frames (of any streams) together as one inference; needs a model with a dynamic batch axis (yolov5n-batch.onnx). Outputs are split back per frame; detections are those of batch 1.",
      ),
    ),
  ),
  names: v.optional(v.pipe(v.array(v.string()), v.description("Class names, when the model's metadata has none."))),
  layout: LayoutOption,
  minScore: v.optional(
    v.pipe(
      v.number(),
      v.minValue(0),
      v.maxValue(1),
      v.description(
        "Only anchors that can still score this much (YOLOv5 objectness, YOLOv8 best class score) leave the inference thread as predictions (about 0.75 MB a frame instead of 8.6 for YOLOv5n at 640 on the sample clip), decoded by nms exactly as the whole output would be at any conf at or above it. Keep it at or below nms's conf; 0 hands over the whole output.",
      ),
    ),
    0.001,
  ),
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
  rollout: v.optional(
    v.pipe(
      v.union([
        v.literal(false),
        v.strictObject({
          cache: v.optional(
            v.pipe(
              v.string(),
              v.minLength(1),
              v.description("Folder for the fetched model files (default out/model-cache/<pipeline>, beside the pipeline's outputs)."),
            ),
          ),
        }),
      ]),
      v.description(
        "Fleet rollout on a NATS bus with JetStream (`bun run models put`): follow the stage's wanted version, fetch it into the cache and hot-swap it (with `canary`, on trial first), reporting per worker. `false` turns it off.",
      ),
    ),
    {},
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

/** A frame's tensor waiting for its batch. */
interface BatchItem {
  t: Tensor;
}

/** One loaded version of the stage's model, with what its first frame established. */
interface OnnxVersion {
  m: OnnxThread;
  name: string;
  checked: boolean;
  layout?: "yolov5" | "yolov8";
  /** Gathers frames into batches, when the stage batches. */
  gather?: BatchGatherer<BatchItem, Predictions>;
}

const fixed = (d: number | string): d is number => typeof d === "number" && d > 0;

/**
 * Refuses batching on a model whose batch axis is fixed.
 * @throws ConfigError naming the model and the dynamic-batch variant.
 */
function checkBatchable(m: OnnxThread, max: number): void {
  const d = m.info.inputDims[0];
  if (max > 1 && fixed(d)) {
    throw new ConfigError(
      `${basename(m.info.file)} has a fixed batch of ${d} (input [${m.info.inputDims.join("x")}]), so batch.max ${max} cannot run: ` +
        "use a model with a dynamic batch axis (e.g. yolov5n-batch.onnx, see docs/models.md) or leave batch out",
    );
  }
}

/**
 * Runs a version once on zeros of the input size (and of the largest batch)
 * before it gets frames: the first frame does not pay the session's
 * first-run set-up, and a model that cannot run, or cannot take the frames,
 * is refused at load.
 */
async function warmUp(m: OnnxThread, frameDims: readonly number[] | undefined, layout: LayoutChoice, batch: number): Promise<void> {
  const { inputDims, file } = m.info;
  if (frameDims && inputDims.some((d, i) => i > 0 && fixed(d) && d !== frameDims[i])) {
    throw new ConfigError(`${basename(file)} expects input [${inputDims.join("x")}] but the frames are [${frameDims.join("x")}]`);
  }
  const dims = inputDims.map((d, i) => (fixed(d) ? d : i === 0 ? 1 : (frameDims?.[i] ?? 0)));
  if (dims.some((d) => d === 0)) return; // a dynamic size no frame has shown yet
  for (const n of fixed(inputDims[0]) || batch === 1 ? [dims[0]] : [1, batch]) {
    const shape = [n, ...dims.slice(1)];
    const out = await m.run(new Uint8Array(shape.reduce((a, b) => a * b, 1)), shape);
    detectLayout(out.dims, layout);
  }
}

/** How the log and the canary check decode predictions (nms's defaults). */
const FOLLOW_DECODE = { conf: 0.25, iou: 0.45 } as const;

/**
 * Runs a YOLO-family ONNX detector on each frame's tensor with
 * onnxruntime-node, attaching raw predictions for `nms` to decode. The model
 * runs on its own thread, which gets the tensor as bytes where resize made
 * them. With `batch`, concurrent frames (of any streams) run as one
 * inference on a dynamic-batch model. New model versions load beside the
 * running one (file watch or HTTP control) and take over between frames,
 * directly or as a canary.
 */
/**
 * Frames handed to the inference thread at once without batching: while one
 * runs, the next is already waiting in the thread's queue (it runs them one
 * at a time), so the thread never idles while the JavaScript thread finishes
 * the last frame and prepares the next. Outputs leave in arrival order.
 */
const IN_FLIGHT = 2;

export default defineOperator({
  name: "infer-onnx",
  kind: "transform",
  description:
    "Run an ONNX YOLO detector (v5 or v8 layout) with onnxruntime-node on its own thread; providers with cpu fallback, cross-stream batching, hot reload, canary, inference log.",
  options: Options,
  async create(o, ctx) {
    /** The tensor size frames arrive with (from the first frame): new versions must take it. */
    let frameDims: number[] | undefined;
    const threads = o.threads || defaultThreads();
    const maxBatch = o.batch?.max ?? 1;
    // Fleet rollout: the stage's wanted version (KV) decides the first file, then new ones arrive as reloads.
    const rollout =
      ctx.nats && o.rollout !== false
        ? await RolloutWorker.open({
            nc: ctx.nats.nc,
            pipeline: ctx.pipeline,
            stage: ctx.stage,
            baseFile: resolveModel(o.model)!,
            cacheDir: o.rollout.cache ?? join("out", "model-cache", ctx.pipeline.replace(/[^A-Za-z0-9_-]/g, "_")),
            log: ctx.log,
            ...(ctx.worker ? { worker: ctx.worker } : {}),
          })
        : undefined;
    const load: VersionLoader<OnnxVersion> = async (file, known) => {
      const initial = known.length === 0;
      if (!initial && known.includes(await modelVersion(file))) return null;
      // Batch 1 runs without onnxruntime's arena (~60 MB less peak RSS, the same speed); batches keep it.
      const m = await OnnxThread.start({ model: file, providers: o.providers, threads, names: o.names, memoryArena: maxBatch > 1 }, ctx.log);
      try {
        checkBatchable(m, maxBatch);
        await warmUp(m, frameDims, o.layout, maxBatch);
      } catch (err) {
        m.close();
        throw err;
      }
      const { info } = m;
      const name = basename(info.file);
      ctx.log.info(
        `${name} loaded on ${info.provider} (input ${info.inputName} [${info.inputDims.join("x")}], ${info.classNames.length} classes, ${threads} intra-op thread(s)` +
          `${maxBatch > 1 ? `, batches of up to ${maxBatch} within ${o.batch!.maxDelayMs} ms` : ""})`,
      );
      const ov: OnnxVersion = { m, name, checked: false };
      if (maxBatch > 1) ov.gather = new BatchGatherer((items) => inferBatch(ov, items.map((x) => x.t)), maxBatch, o.batch!.maxDelayMs);
      return {
        model: ov,
        version: info.version,
        file: info.file,
        detail: { provider: info.provider, input: info.inputDims.join("x"), ...(rollout?.labelOf(info.file) ? { rollout: rollout.labelOf(info.file) } : {}) },
      };
    };
    const lifeOptions = {
      stage: ctx.stage,
      load,
      release: async (x: OnnxVersion) => {
        x.gather?.close();
        x.m.close();
      },
      canary: o.canary,
      log: ctx.log,
    };
    const rolledOut = await rollout?.initialFile();
    let life: ModelLifecycle<OnnxVersion>;
    try {
      life = await ModelLifecycle.open(rolledOut ?? o.model, lifeOptions);
    } catch (err) {
      if (!rolledOut) {
        await rollout?.close();
        throw err;
      }
      // A rolled-out version that does not load here: the pipeline file's model runs, and the worker says so.
      rollout!.startFailed((err as Error).message);
      ctx.log.error(`rolled-out model ${basename(rolledOut)} did not load (${(err as Error).message}); starting on ${o.model}`);
      life = await ModelLifecycle.open(o.model, lifeOptions);
    }
    rollout?.attach(life);
    const log = o.inferenceLog
      ? await RotatingLog.open(o.inferenceLog.path, {
          ...o.inferenceLog,
          onError: (e) => ctx.log.error(`inference log ${o.inferenceLog!.path}: ${e.message}`),
        })
      : undefined;
    const releaseLoad = log ? hostLoad.acquire() : undefined;
    if (o.watch) life.watch(life.active.loaded.file);
    /**
     * Input buffers this stage owns: a frame's tensor is shared with other
     * subscribers, so the inference thread gets a copy it may keep while it
     * runs (bytes where resize made them, 4× less than floats), handed back
     * after each run and reused.
     */
    const spare: ModelInput[] = [];
    const takeBuffer = (bytes: boolean, length: number): ModelInput => {
      const i = spare.findIndex((b) => b.length === length && b instanceof Uint8Array === bytes);
      if (i >= 0) return spare.splice(i, 1)[0];
      return bytes ? new Uint8Array(length) : new Float32Array(length);
    };
    const giveBack = (b: ModelInput | undefined) => {
      if (b && b.length && spare.length < 2 * maxBatch + 2) spare.push(b);
    };

    function check(ov: OnnxVersion, t: Tensor): void {
      if (ov.checked) return;
      const { inputDims } = ov.m.info;
      const bad = inputDims.some((d, i) => (i > 0 || maxBatch === 1) && fixed(d) && d !== t.dims[i]);
      if (bad)
        throw new ConfigError(
          `${ov.name} expects input [${inputDims.join("x")}] but gets [${t.dims.join("x")}]: set the resize stage's width/height to match`,
        );
      ov.checked = true;
    }

    /** Only the candidate anchors come back from the inference thread (minScore 0: the whole output). */
    const keep = o.minScore > 0 ? { minScore: o.minScore, layout: o.layout } : undefined;

    /** One run on `tensors` stacked along the batch axis; each frame's predictions are its slice of the output. */
    async function inferBatch(ov: OnnxVersion, tensors: Tensor[]): Promise<Predictions[]> {
      const { classNames } = ov.m.info;
      for (const t of tensors) check(ov, t);
      const item = tensors[0].dims;
      if (tensors.some((t) => t.dims.length !== item.length || t.dims.some((d, i) => d !== item[i]))) {
        throw new Error(`frames of different tensor sizes cannot share a batch: [${tensors.map((t) => t.dims.join("x")).join("], [")}]`);
      }
      const pixels = tensors.map(tensorPixels);
      const bytes = pixels.every((p) => p !== undefined);
      const per = item.reduce((a, b) => a * b, 1);
      const buf = takeBuffer(bytes, per * tensors.length);
      tensors.forEach((t, i) => buf.set(bytes ? pixels[i]! : t.data, i * per));
      const dims = tensors.length === 1 ? item : [tensors.length * item[0], ...item.slice(1)];
      const out = await ov.m.run(buf, dims, true, keep).catch((err: Error & { input?: ModelInput }) => {
        giveBack(err.input);
        throw err;
      });
      giveBack(out.input);
      ov.layout ??= out.kept?.layout ?? detectLayout(out.dims, o.layout);
      const n = tensors.length;
      if (out.dims[0] !== n) throw new Error(`${ov.name}: a batch of ${n} gave an output of [${out.dims.join("x")}]`);
      if (out.kept) {
        // Each frame's candidates, back to back in one buffer: views, read-only like every buffer of a frame.
        const v5 = ov.layout === "yolov5";
        const width = v5 ? out.dims[2] : out.dims[1];
        let at = 0;
        return out.kept.counts.map((count) => {
          const data = out.data.subarray(at, at + count * width);
          at += count * width;
          return { layout: ov.layout!, dims: v5 ? [1, count, width] : [1, width, count], data, classNames, model: ov.name, minScore: o.minScore };
        });
      }
      if (n === 1) return [{ layout: ov.layout, dims: out.dims, data: out.data, classNames, model: ov.name }];
      const size = out.data.length / n;
      const frameDims = [1, ...out.dims.slice(1)];
      // Views into the one output buffer: read-only, like every buffer of a frame.
      return tensors.map((_, i) => ({ layout: ov.layout!, dims: frameDims, data: out.data.subarray(i * size, (i + 1) * size), classNames, model: ov.name }));
    }

    /** Batches run and the frames they held, per loaded version (only while batching). */
    function batchMetrics(): OperatorMetric[] {
      return [life.active, ...(life.canary ? [life.canary] : [])].flatMap((ver) => {
        const g = ver.model.gather;
        if (!g) return [];
        const labels = { model: ver.model.name, version: ver.version };
        return [
          { name: "inference_batches_total", type: "counter" as const, help: "Batched inferences run (batch option), by model version.", value: g.batches, labels },
          { name: "inference_batch_frames_total", type: "counter" as const, help: "Frames those batches held; divided by the batches, the mean batch size.", value: g.items, labels },
        ];
      });
    }

    const infer = (ov: OnnxVersion, t: Tensor): Promise<Predictions> =>
      ov.gather ? ov.gather.submit({ t }) : inferBatch(ov, [t]).then((p) => p[0]);

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
      concurrency: maxBatch > 1 ? maxBatch : IN_FLIGHT,
      models: life as ModelLifecycle<unknown>,
      metrics: () => [...life.metrics(), ...batchMetrics()],
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
        await rollout?.close();
        await life.close();
        await log?.close();
        releaseLoad?.();
      },
    };
  },
});
