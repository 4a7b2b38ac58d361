/**
 * One model instance of `framewire serve`: an onnxruntime session on its own
 * thread (under Bun, a session's run() holds the calling JS thread, so each
 * instance gets a worker). Besides running batches it times the session run
 * on its own clock (for Triton's compute_infer statistic) and releases the
 * session on request, so an unloaded model's memory is given back before the
 * thread ends. Messages are `ToInstance` / `FromInstance`.
 */
import * as ort from "onnxruntime-node";
import { ConfigError } from "../core/errors.ts";
import { loadModel, type LoadedModel, type ModelOptions } from "../inference/onnx-model.ts";

/** What the server learns about the loaded model. */
export interface InstanceInfo {
  file: string;
  provider: string;
  inputName: string;
  outputName: string;
  inputDims: (number | string)[];
  outputDims: (number | string)[];
  classNames: string[];
}

export type ToInstance =
  | { type: "load"; options: ModelOptions }
  | { type: "run"; id: number; input: Float32Array; dims: number[] }
  | { type: "release" };

export type FromInstance =
  | { type: "up" }
  | { type: "loaded"; info: InstanceInfo }
  /** `startedAt`/`endedAt`: the session run, in ms since the epoch (performance.timeOrigin + now()). */
  | { type: "result"; id: number; data: Float32Array; dims: number[]; startedAt: number; endedAt: number }
  | { type: "failed"; id?: number; message: string; config: boolean }
  | { type: "warn"; message: string }
  | { type: "released" };

declare const self: {
  onmessage: ((e: MessageEvent<ToInstance>) => void) | null;
  postMessage(msg: FromInstance, transfer?: ArrayBufferLike[]): void;
};

const now = () => performance.timeOrigin + performance.now();
let model: LoadedModel | undefined;

self.onmessage = async (e) => {
  const msg = e.data;
  try {
    if (msg.type === "load") {
      const m = await loadModel(msg.options, (message) => self.postMessage({ type: "warn", message }));
      const out = m.session.outputMetadata[0];
      if (out?.isTensor && out.type !== "float32") {
        await m.session.release();
        throw new ConfigError(`${m.file}: output ${m.outputName} is ${out.type}; framewire serve runs float32 models`);
      }
      model = m;
      self.postMessage({
        type: "loaded",
        info: {
          file: m.file,
          provider: m.provider,
          inputName: m.inputName,
          outputName: m.outputName,
          inputDims: [...m.inputDims],
          outputDims: out?.isTensor ? [...out.shape] : [],
          classNames: m.classNames,
        },
      });
    } else if (msg.type === "run") {
      if (!model) throw new Error("run before load");
      const feeds = { [model.inputName]: new ort.Tensor("float32", msg.input, msg.dims) };
      const startedAt = now();
      const out = (await model.session.run(feeds))[model.outputName];
      const endedAt = now();
      const data = out.data as Float32Array;
      self.postMessage({ type: "result", id: msg.id, data, dims: [...out.dims], startedAt, endedAt }, [data.buffer]);
    } else {
      await model?.session.release();
      model = undefined;
      self.postMessage({ type: "released" });
    }
  } catch (err) {
    self.postMessage({ type: "failed", id: msg.type === "run" ? msg.id : undefined, message: (err as Error).message, config: err instanceof ConfigError });
  }
};
// Messages sent before this module finished evaluating can be lost: say when to start.
self.postMessage({ type: "up" });
