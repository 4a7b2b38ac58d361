/**
 * An inference thread: one onnxruntime session in a worker. Under Bun,
 * onnxruntime-node's run() holds the calling JS thread for the whole
 * inference, so a session on the main thread would stall decoding,
 * preprocessing, HTTP and every other stage; in a worker it runs beside them.
 * Messages are the `ToWorker` / `FromWorker` types.
 */
import * as ort from "onnxruntime-node";
import { ConfigError } from "../core/errors.ts";
import { loadModel, type LoadedModel, type ModelOptions } from "./onnx-model.ts";

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

export type ToWorker = { type: "load"; options: ModelOptions } | { type: "run"; id: number; input: Float32Array; dims: number[] };

export type FromWorker =
  | { type: "up" }
  | { type: "loaded"; info: ModelInfo }
  | { type: "result"; id: number; data: Float32Array; dims: number[]; input: Float32Array }
  | { type: "failed"; id?: number; message: string; config: boolean; input?: Float32Array }
  | { type: "warn"; message: string };

/** The worker side of the channel (Bun and Deno both give workers a `self` like this). */
declare const self: {
  onmessage: ((e: MessageEvent<ToWorker>) => void) | null;
  postMessage(msg: FromWorker, transfer?: ArrayBufferLike[]): void;
};

let model: LoadedModel | undefined;

self.onmessage = async (e) => {
  const msg = e.data;
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
      const out = (await model.session.run({ [model.inputName]: new ort.Tensor("float32", msg.input, msg.dims) }))[model.outputName];
      const data = out.data as Float32Array;
      // The output is this thread's own buffer: hand it over rather than copy 8 MB; the input goes back the same way.
      self.postMessage({ type: "result", id: msg.id, data, dims: [...out.dims], input: msg.input }, [data.buffer, msg.input.buffer]);
    }
  } catch (err) {
    const failed: FromWorker = { type: "failed", message: (err as Error).message, config: err instanceof ConfigError };
    if (msg.type === "run") self.postMessage({ ...failed, id: msg.id, input: msg.input }, [msg.input.buffer]);
    else self.postMessage(failed);
  }
};
// Messages sent before this module finished evaluating (its imports use top-level await) can be lost: say when to start.
self.postMessage({ type: "up" });
