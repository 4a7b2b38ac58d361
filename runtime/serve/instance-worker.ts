/**
 * One model instance of `framewire serve` on its own thread. Under Bun,
 * onnxruntime-node's run() holds the calling JS thread for the whole
 * inference, so sessions on the server's thread would stall HTTP, image
 * decoding and each other; in workers they run side by side and the server
 * stays responsive. Messages are the `ToInstance` / `FromInstance` types.
 */
import * as ort from "onnxruntime-node";
import { loadModel, type LoadedModel } from "../../operators/infer-onnx.ts";
import { ConfigError } from "../errors.ts";

export interface InstanceInfo {
  file: string;
  inputName: string;
  outputName: string;
  inputDims: (number | string)[];
  outputDims: (number | string)[];
  classNames: string[];
}

export type ToInstance = { type: "load"; model: string; threads: number } | { type: "run"; input: Float32Array; dims: number[] };

export type FromInstance =
  | { type: "up" }
  | { type: "loaded"; info: InstanceInfo }
  | { type: "result"; data: Float32Array; dims: number[] }
  | { type: "failed"; message: string; config: boolean }
  | { type: "warn"; message: string };

/** The worker side of the message channel (Bun and Deno both give workers a `self` like this). */
declare const self: {
  onmessage: ((e: MessageEvent<ToInstance>) => void) | null;
  postMessage(msg: FromInstance, transfer?: ArrayBufferLike[]): void;
};

let model: LoadedModel | undefined;

self.onmessage = async (e) => {
  const msg = e.data;
  try {
    if (msg.type === "load") {
      const m = await loadModel({ model: msg.model, providers: ["cpu"], threads: msg.threads, layout: "auto" }, (message) => self.postMessage({ type: "warn", message }));
      model = m;
      const out = m.session.outputMetadata[0];
      const info: InstanceInfo = {
        file: m.file,
        inputName: m.inputName,
        outputName: m.outputName,
        inputDims: [...m.inputDims],
        outputDims: out?.isTensor ? [...out.shape] : [],
        classNames: m.classNames,
      };
      self.postMessage({ type: "loaded", info });
    } else {
      if (!model) throw new Error("run before load");
      const out = (await model.session.run({ [model.inputName]: new ort.Tensor("float32", msg.input, msg.dims) }))[model.outputName];
      const data = out.data as Float32Array;
      // The output is this thread's own buffer: hand it over rather than copy 8 MB.
      self.postMessage({ type: "result", data, dims: [...out.dims] }, [data.buffer]);
    }
  } catch (err) {
    self.postMessage({ type: "failed", message: (err as Error).message, config: err instanceof ConfigError });
  }
};
// Messages sent before this module finished evaluating (its imports use top-level await) can be lost: say when to start.
self.postMessage({ type: "up" });
