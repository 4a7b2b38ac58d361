/**
 * The server side of one model instance (instance-worker.ts): start it with
 * a model loaded, run batches on it, release it. Runs are answered in order.
 */
import { ConfigError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import type { ModelOptions } from "../inference/onnx-model.ts";
import type { FromInstance, InstanceInfo, ToInstance } from "./instance-worker.ts";

export type { InstanceInfo };

/** A batch's output with the session run's start and end (ms since the epoch, on the instance's clock). */
export interface InstanceResult {
  data: Float32Array;
  dims: number[];
  startedAt: number;
  endedAt: number;
}

/** How long a release may take before the thread is ended anyway. */
const RELEASE_TIMEOUT_MS = 10_000;

/**
 * @example
 * const inst = await ServeInstance.start({ model: "yolov5n-batch.onnx", providers: ["cpu"], threads: 2 }, log);
 * const { data, dims } = await inst.run(input, [4, 3, 640, 640]);
 * await inst.release(); // session released, thread ended
 */
export class ServeInstance {
  private pending = new Map<number, { resolve(r: InstanceResult): void; reject(e: Error): void }>();
  private nextId = 0;
  private gone?: Error;
  private released?: () => void;

  private constructor(
    private worker: Worker,
    readonly info: InstanceInfo,
    private log: Logger,
  ) {
    worker.onmessage = (e: MessageEvent<FromInstance>) => this.receive(e.data);
    worker.onerror = (e) => this.fail(new Error(`model instance thread crashed: ${e.message}`));
  }

  /**
   * A thread with the model loaded.
   * @throws ConfigError when the model cannot be used (missing, not float32, not ONNX).
   */
  static start(options: ModelOptions, log: Logger): Promise<ServeInstance> {
    const worker = new Worker(new URL("./instance-worker.ts", import.meta.url).href, { type: "module" });
    return new Promise((resolve, reject) => {
      const fail = (err: Error) => {
        worker.terminate();
        reject(err);
      };
      worker.onmessage = (e: MessageEvent<FromInstance>) => {
        const m = e.data;
        if (m.type === "up") worker.postMessage({ type: "load", options } satisfies ToInstance);
        else if (m.type === "warn") log.warn(m.message);
        else if (m.type === "loaded") resolve(new ServeInstance(worker, m.info, log));
        else if (m.type === "failed") fail(m.config ? new ConfigError(m.message) : new Error(m.message));
      };
      worker.onerror = (e) => fail(new Error(`model instance thread crashed while loading: ${e.message}`));
    });
  }

  /**
   * Runs one batch. A whole-buffer input moves to the thread (the caller's array is empty afterwards); a view is copied.
   */
  run(input: Float32Array, dims: readonly number[]): Promise<InstanceResult> {
    if (this.gone) return Promise.reject(this.gone);
    const id = this.nextId++;
    const whole = input.byteOffset === 0 && input.byteLength === input.buffer.byteLength && input.buffer instanceof ArrayBuffer;
    const sent = (whole ? input : input.slice()) as Float32Array<ArrayBuffer>;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ type: "run", id, input: sent, dims: [...dims] } satisfies ToInstance, [sent.buffer]);
    });
  }

  /** Releases the onnxruntime session (its memory goes back), then ends the thread. */
  async release(): Promise<void> {
    if (this.gone) return;
    const done = new Promise<void>((resolve) => (this.released = resolve));
    this.worker.postMessage({ type: "release" } satisfies ToInstance);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<void>((resolve) => (timer = setTimeout(() => {
      this.log.warn(`${this.info.file}: the session was not released within ${RELEASE_TIMEOUT_MS} ms; ending its thread`);
      resolve();
    }, RELEASE_TIMEOUT_MS)));
    await Promise.race([done, late]);
    clearTimeout(timer);
    this.worker.terminate();
    this.fail(new Error("model instance released"));
  }

  private receive(m: FromInstance): void {
    if (m.type === "warn") return this.log.warn(m.message);
    if (m.type === "released" || (m.type === "failed" && m.id === undefined)) {
      if (m.type === "failed") this.log.warn(`${this.info.file}: releasing the session failed: ${m.message}`);
      this.released?.();
      return;
    }
    if (m.type !== "result" && m.type !== "failed") return;
    const p = this.pending.get(m.id!);
    if (!p) return;
    this.pending.delete(m.id!);
    if (m.type === "result") p.resolve({ data: m.data, dims: m.dims, startedAt: m.startedAt, endedAt: m.endedAt });
    else p.reject(new Error(m.message));
  }

  private fail(err: Error): void {
    this.gone = err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}
