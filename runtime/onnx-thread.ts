import { ConfigError } from "./errors.ts";
import type { Logger } from "./log.ts";
import type { ModelOptions } from "./onnx-model.ts";
import type { FromWorker, ModelInfo, ToWorker } from "./onnx-worker.ts";

export type { ModelInfo };

/**
 * A model loaded on its own inference thread (see onnx-worker.ts). Runs are
 * answered in order; several may be queued.
 * @example
 * const t = await OnnxThread.start({ model: "yolov5n.onnx", providers: ["cpu"], threads: 0 }, log);
 * const { data, dims } = await t.run(tensor.data, tensor.dims);
 * t.close();
 */
export class OnnxThread {
  private pending = new Map<number, { resolve(r: { data: Float32Array; dims: number[] }): void; reject(e: Error): void }>();
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

  /** Runs the model on one input; the input is copied to the thread, the output handed back without a copy. */
  run(input: Float32Array, dims: readonly number[]): Promise<{ data: Float32Array; dims: number[] }> {
    if (this.gone) return Promise.reject(this.gone);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      // Cloned, not transferred: the caller's frame (or request body) may still be read elsewhere.
      this.worker.postMessage({ type: "run", id, input, dims: [...dims] } satisfies ToWorker);
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
    if (m.type === "result") p.resolve({ data: m.data, dims: m.dims });
    else p.reject(new Error(m.message));
  }

  private fail(err: Error): void {
    this.gone = err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}
