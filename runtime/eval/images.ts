/**
 * Runs the pipeline operators (ingest → resize → infer-onnx → nms) on still
 * images, so the eval measures exactly what a pipeline would detect.
 */
import * as v from "valibot";
import { ConfigError } from "../core/errors.ts";
import { describeIssue } from "../spec/issues.ts";
import type { Logger } from "../core/log.ts";
import type { Detection, Frame, Message } from "../core/message.ts";
import type { OperatorDefinition, SourceDefinition, SourceInstance, StageContext, TransformDefinition, TransformInstance } from "../core/operator.ts";
import type { Registry } from "../spec/registry.ts";

export interface DetectorOptions {
  /** model path or file name under models/ */
  model: string;
  /** square model input size (letterbox) */
  size: number;
  conf: number;
  iou: number;
}

export interface ImageDetections {
  width: number;
  height: number;
  /** boxes in source-image pixels */
  detections: readonly Detection[];
}

export interface ImageDetector {
  /** Decodes one image file and detects objects in it. */
  detect(file: string): Promise<ImageDetections>;
  /** The model's class names (empty until the first image has run, or when the model has none). */
  classNames(): string[];
  close(): Promise<void>;
}

/** NMS settings of YOLOv5's val.py besides conf/iou. */
const VAL_MAX_DETECTIONS = 300;

/**
 * Builds the detector once (the model loads here) from the registry's
 * operator definitions; every option goes through the operator's schema
 * before anything is created, and a rejected one is reported under the
 * `eval coco` flag it came from (--size, --model, --conf, --iou).
 * @example
 * const det = await createImageDetector(await loadRegistry(), { model: "yolov5n.onnx", size: 640, conf: 0.001, iou: 0.6 }, log);
 * const { detections } = await det.detect("bus.jpg");
 * await det.close();
 */
export async function createImageDetector(reg: Registry, o: DetectorOptions, log: Logger): Promise<ImageDetector> {
  const ingest = definition(reg, "ingest", "source");
  const resize = definition(reg, "resize", "transform");
  const infer = definition(reg, "infer-onnx", "transform");
  const nms = definition(reg, "nms", "transform");
  const resizeOptions = validate(resize, { width: o.size, height: o.size, mode: "letterbox" }, { width: "--size", height: "--size" });
  // Candidates down to the evaluated confidence leave the inference thread, so the scores are exactly the whole output's.
  const inferOptions = validate(infer, { model: o.model, minScore: o.conf }, { model: "--model", minScore: "--conf" });
  const nmsOptions = validate(nms, { conf: o.conf, iou: o.iou, maxDetections: VAL_MAX_DETECTIONS }, { conf: "--conf", iou: "--iou" });

  const abort = new AbortController();
  const ctx = (stage: string, stageLog = log.child(stage)): StageContext => ({ stage, pipeline: "eval", log: stageLog, signal: abort.signal });
  const prep = await resize.create(resizeOptions, ctx("resize"));
  const detect = await infer.create(inferOptions, ctx("infer-onnx"));
  const suppress = await nms.create(nmsOptions, ctx("nms"));
  // ingest logs two info lines per file: fine for a stream, noise for thousands of images.
  const ingestLog = quiet(log.child("ingest"));
  let names: string[] = [];

  return {
    async detect(file) {
      const source = await ingest.create(validate(ingest, { url: file }, {}), ctx("ingest", ingestLog));
      let frame = await firstFrame(source, file);
      await source.close?.();
      frame = await step(detect, await step(prep, frame));
      // nms drops the raw predictions, which carry the class names.
      if (frame.predictions) names = frame.predictions.classNames;
      frame = await step(suppress, frame);
      return { width: frame.image.width, height: frame.image.height, detections: frame.detections ?? [] };
    },
    classNames: () => names,
    async close() {
      abort.abort();
      await Promise.all([prep, detect, suppress].map((s) => s.close?.()));
    },
  };
}

/** Runs a source until its first frame, then stops it (a still image decodes to one frame). */
async function firstFrame(source: SourceInstance, file: string): Promise<Frame> {
  const ac = new AbortController();
  let frame: Frame | undefined;
  try {
    await source.run(async (f) => {
      if (f.kind !== "frame") return;
      frame ??= f;
      ac.abort();
    }, ac.signal);
  } catch (err) {
    throw new ConfigError(`cannot decode ${file}: ${(err as Error).message}`);
  }
  if (!frame) throw new ConfigError(`cannot decode ${file}: no frame`);
  return frame;
}

/** One transform on one frame; the eval chain is 1:1, so anything else is a bug in an operator. */
async function step(stage: TransformInstance, frame: Frame): Promise<Frame> {
  const out: Message | Message[] | null = await stage.process(frame);
  if (!out || Array.isArray(out) || out.kind !== "frame") throw new Error("eval expects each operator to return the frame it was given");
  return out;
}

function definition(reg: Registry, name: string, kind: "source"): SourceDefinition;
function definition(reg: Registry, name: string, kind: "transform"): TransformDefinition;
function definition(reg: Registry, name: string, kind: OperatorDefinition["kind"]): OperatorDefinition {
  const def = reg.get(name);
  if (!def || def.kind !== kind) throw new Error(`operator "${name}" (${kind}) is missing from operators/`);
  return def;
}

/**
 * `input` checked and defaulted by the operator's own schema; a failure
 * names the flag it came from (or `operator.option`).
 */
function validate(def: OperatorDefinition, input: Record<string, unknown>, flags: Record<string, string>): never {
  try {
    // `never`: create()'s parameter type is erased in the registry; the schema is what vouches for it.
    return v.parse(def.options, input) as never;
  } catch (err) {
    if (!(err instanceof v.ValiError)) throw err;
    const issue = err.issues[0] as v.BaseIssue<unknown>;
    const key = issue.path?.[0]?.key;
    const where = key === undefined ? def.name : (flags[String(key)] ?? `${def.name}.${String(key)}`);
    throw new ConfigError(`${where}: ${describeIssue(issue, def.options)}`);
  }
}

/** `log` without info/debug lines. */
function quiet(log: Logger): Logger {
  return { ...log, info: () => {}, debug: () => {}, child: (s) => quiet(log.child(s)) };
}
