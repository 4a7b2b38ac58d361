/**
 * An inference thread: one onnxruntime session in a worker. Under Bun,
 * onnxruntime-node's run() holds the calling JS thread for the whole
 * inference, so a session on the main thread would stall decoding,
 * preprocessing, HTTP and every other stage; in a worker it runs beside them.
 * Messages are the `ToWorker` / `FromWorker` types.
 */
import * as ort from "onnxruntime-node";
import { ConfigError } from "../core/errors.ts";
import { Normaliser } from "./letterbox.ts";
import { loadModel, type LoadedModel, type ModelOptions } from "./onnx-model.ts";
import { reclaimer } from "./reclaim.ts";
import { detectLayout, keepCandidates, type LayoutChoice } from "./yolo.ts";

/** What the main thread learns about the loaded model. */
export interface ModelInfo {
  file: string;
  provider: string;
  version: string;
  inputName: string;
  outputName: string;
  inputDims: (number | string)[];
  outputDims: (number | string)[];
  classNames: string[];
}

/** A model input: float32 values, or bytes that stand for byte / 255 (see pixel-tensor.ts). */
export type ModelInput = Float32Array | Uint8Array;

/** Keep only the YOLO anchors that can reach `minScore` (see keepCandidates in yolo.ts); the whole output stays here. */
export interface KeepOptions {
  minScore: number;
  layout: LayoutChoice;
}

export type ToWorker =
  | { type: "load"; options: ModelOptions }
  | { type: "run"; id: number; input: ModelInput; dims: number[]; keep?: KeepOptions };

export type FromWorker =
  | { type: "up" }
  | { type: "loaded"; info: ModelInfo }
  /** With `keep`: `data` holds the kept anchors of each image (`counts`), `dims` are the whole output's. */
  | { type: "result"; id: number; data: Float32Array; dims: number[]; input: ModelInput; kept?: { layout: "yolov5" | "yolov8"; counts: number[] } }
  | { type: "failed"; id?: number; message: string; config: boolean; input?: ModelInput }
  | { type: "warn"; message: string };

/** The worker side of the channel (Bun and Deno both give workers a `self` like this). */
declare const self: {
  onmessage: ((e: MessageEvent<ToWorker>) => void) | null;
  postMessage(msg: FromWorker, transfer?: ArrayBufferLike[]): void;
};

let model: LoadedModel | undefined;
/** Bytes become float32 here, in this thread's own reused buffer. */
const normaliser = new Normaliser();

/**
 * Outputs dropped here (8.6 MB for YOLOv5n at 640) are reclaimed after every
 * two (reclaim.ts; a full collection of this thread's small heap takes about
 * 1 ms): measured on the sample clip, peak RSS 380 MiB when reclaiming every
 * 64 MB and 405 MiB leaving it to the collector, against about 350 MiB at
 * this setting, the fps unchanged.
 */
const dropped = reclaimer(16 * 1024 * 1024);

/** Messages are handled one at a time: a run's input sits in the normaliser's buffer until onnxruntime has read it. */
let queue: Promise<void> = Promise.resolve();
self.onmessage = (e) => {
  queue = queue.then(() => handle(e.data));
};

async function handle(msg: ToWorker): Promise<void> {
  try {
    if (msg.type === "load") {
      const m = await loadModel(msg.options, (message) => self.postMessage({ type: "warn", message }));
      model = m;
      const out = m.session.outputMetadata[0];
      self.postMessage({
        type: "loaded",
        info: {
          file: m.file,
          provider: m.provider,
          version: m.version,
          inputName: m.inputName,
          outputName: m.outputName,
          inputDims: [...m.inputDims],
          outputDims: out?.isTensor ? [...out.shape] : [],
          classNames: m.classNames,
        },
      });
    } else {
      if (!model) throw new Error("run before load");
      const values = msg.input instanceof Uint8Array ? normaliser.run(msg.input) : msg.input;
      const out = (await model.session.run({ [model.inputName]: new ort.Tensor("float32", values, msg.dims) }))[model.outputName];
      const data = out.data as Float32Array;
      const dims = [...out.dims];
      if (msg.keep) {
        // Only the candidates leave: the whole output (8.6 MB for YOLOv5n at 640) dies here, young.
        const layout = detectLayout(dims, msg.keep.layout);
        const kept = keepCandidates(data, dims, layout, msg.keep.minScore);
        dropped(data.byteLength);
        self.postMessage({ type: "result", id: msg.id, data: kept.data, dims, input: msg.input, kept: { layout, counts: kept.counts } }, [
          kept.data.buffer,
          msg.input.buffer,
        ]);
        return;
      }
      // The output is this thread's own buffer: hand it over rather than copy 8 MB; the input goes back the same way.
      self.postMessage({ type: "result", id: msg.id, data, dims, input: msg.input }, [data.buffer, msg.input.buffer]);
    }
  } catch (err) {
    const failed: FromWorker = { type: "failed", message: (err as Error).message, config: err instanceof ConfigError };
    if (msg.type === "run") self.postMessage({ ...failed, id: msg.id, input: msg.input }, [msg.input.buffer]);
    else self.postMessage(failed);
  }
}
// Messages sent before this module finished evaluating (its imports use top-level await) can be lost: say when to start.
self.postMessage({ type: "up" });
