import { ConfigError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import type { ModelOptions } from "./onnx-model.ts";
import { reclaimer } from "./reclaim.ts";
import type { FromWorker, KeepOptions, ModelInfo, ModelInput, ToWorker } from "./onnx-worker.ts";

export type { KeepOptions, ModelInfo, ModelInput };

/** What a run resolves with: the output, and the input handed back. */
export interface RunResult<I extends ModelInput = ModelInput> {
  /** The output, or with `keep` the kept anchors of each image back to back (`kept.counts`). */
  data: Float32Array;
  /** The whole output's dims (also with `keep`). */
  dims: number[];
  input: I;
  /** With `keep`: the layout the output was read in and how many anchors each image kept. */
  kept?: { layout: "yolov5" | "yolov8"; counts: number[] };
}

/**
 * Outputs received from an inference thread (the whole output, with
 * minScore 0: 8.6 MB a frame for YOLOv5 at 640) are reclaimed every 64 MB
 * (reclaim.ts).
 */
const noteReceived = reclaimer(64 * 1024 * 1024);

/**
 * A model loaded on its own inference thread (see onnx-worker.ts). Runs are
 * answered in order; several may be queued.
 * @example
 * const t = await OnnxThread.start({ model: "yolov5n.onnx", providers: ["cpu"], threads: 0 }, log);
 * const { data, dims, input } = await t.run(tensor.data, tensor.dims, true);
 * tensor.data = input; // lent to the thread, handed back
 * t.close();
 */
export class OnnxThread {
  private pending = new Map<number, { resolve(r: RunResult): void; reject(e: Error): void }>();
  private nextId = 0;
  /** Set once the thread crashed or was closed: later runs fail at once instead of waiting forever. */
  private gone?: Error;

  private constructor(
    private worker: Worker,
    readonly info: ModelInfo,
    private log: Logger,
  ) {
    worker.onmessage = (e: MessageEvent<FromWorker>) => this.receive(e.data);
    worker.onerror = (e) => this.fail(new Error(`inference thread crashed: ${e.message}`));
  }

  /**
   * A thread with the model loaded.
   * @throws ConfigError when the model cannot be used (missing, float16, no provider).
   */
  static start(options: ModelOptions, log: Logger): Promise<OnnxThread> {
    const worker = new Worker(new URL("./onnx-worker.ts", import.meta.url).href, { type: "module" });
    return new Promise((resolve, reject) => {
      const fail = (err: Error) => {
        worker.terminate();
        reject(err);
      };
      worker.onmessage = (e: MessageEvent<FromWorker>) => {
        const m = e.data;
        if (m.type === "up") worker.postMessage({ type: "load", options } satisfies ToWorker);
        else if (m.type === "warn") log.warn(m.message);
        else if (m.type === "loaded") resolve(new OnnxThread(worker, m.info, log));
        else if (m.type === "failed") fail(m.config ? new ConfigError(m.message) : new Error(m.message));
      };
      worker.onerror = (e) => fail(new Error(`inference thread crashed while loading: ${e.message}`));
    });
  }

  /**
   * Runs the model on one input and resolves with the output and the input.
   * A Uint8Array input stands for byte / 255 (the thread makes the floats:
   * a quarter of the bytes cross). With `lend`, the input's memory moves to
   * the thread and comes back as `input` (no copy either way; until then the
   * caller's array is empty); otherwise, or when the input is a view into a
   * larger buffer, it is copied. With `keep`, the output is a YOLO head's and
   * only its candidate anchors come back (keepCandidates in yolo.ts): the
   * thread reads the whole output, the caller a small part of it.
   */
  run<I extends ModelInput>(input: I, dims: readonly number[], lend = false, keep?: KeepOptions): Promise<RunResult<I>> {
    if (this.gone) return Promise.reject(this.gone);
    const id = this.nextId++;
    const whole = lend && input.byteOffset === 0 && input.byteLength === input.buffer.byteLength && input.buffer instanceof ArrayBuffer;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (r: RunResult) => void, reject });
      const msg: ToWorker = { type: "run", id, input: whole ? input : input.slice(), dims: [...dims], ...(keep ? { keep } : {}) };
      this.worker.postMessage(msg, whole ? [input.buffer] : []);
    });
  }

  close(): void {
    this.worker.terminate();
    this.fail(new Error("inference thread closed"));
  }

  private receive(m: FromWorker): void {
    if (m.type === "warn") return this.log.warn(m.message);
    if (m.type !== "result" && m.type !== "failed") return;
    const p = m.id === undefined ? undefined : this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id!);
    if (m.type === "result") {
      p.resolve({ data: m.data, dims: m.dims, input: m.input, ...(m.kept ? { kept: m.kept } : {}) });
      noteReceived(m.data.byteLength);
    }
    else p.reject(Object.assign(new Error(m.message), { input: m.input }));
  }

  private fail(err: Error): void {
    this.gone = err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}
