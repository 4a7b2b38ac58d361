/**
 * Request scheduling in front of a model's instances, with Triton's
 * dynamic-batching knobs: requests queue; a free instance takes the largest
 * preferred batch size the queue can form right away, or a full batch, or
 * whatever is queued once the oldest request has waited `maxQueueDelayMs`.
 * A model with a fixed batch size runs one request per instance call.
 */
import { codedError } from "../core/errors.ts";

/** The queue is full: the caller should answer 503 and the client retry later. */
export const OverloadedError = codedError("OverloadedError", "E_OVERLOADED");
export type OverloadedError = InstanceType<typeof OverloadedError>;

/** A request of more items than one batch may hold (a dynamic batcher could never dispatch it). */
export const BatchTooLargeError = codedError("BatchTooLargeError", "E_BATCH_TOO_LARGE");
export type BatchTooLargeError = InstanceType<typeof BatchTooLargeError>;

/** Work submitted after `close()`. */
export const ShuttingDownError = codedError("ShuttingDownError", "E_SHUTTING_DOWN");
export type ShuttingDownError = InstanceType<typeof ShuttingDownError>;

/**
 * Runs one model instance on `batch` items laid out back to back; output dim 0 is the batch.
 * An instance on another thread may say when the model itself started and ended (ms since the epoch).
 */
export type Runner = (input: Float32Array, batch: number) => Promise<{ data: Float32Array; dims: number[]; startedAt?: number; endedAt?: number }>;

/** Where one batch's time went, in ms (Triton's compute_input / compute_infer / compute_output). */
export interface BatchPhases {
  /** From taking the batch until the model started: assembling the input and handing it to the instance. */
  inputMs: number;
  /** The model run. */
  inferMs: number;
  /** From the model's end until each request had its slice of the output. */
  outputMs: number;
}

/** One executed batch, as batch listeners see it. */
export interface BatchTimings extends BatchPhases {
  size: number;
}

/** Splits a batch's time into phases, on the instance's own clock when it gave one. */
function phases(start: number, assembled: number, returned: number, end: number, out: { startedAt?: number; endedAt?: number }): BatchPhases {
  if (out.startedAt === undefined || out.endedAt === undefined) return { inputMs: assembled - start, inferMs: returned - assembled, outputMs: end - returned };
  const epoch = performance.timeOrigin;
  // Clocks of two threads can disagree by a little: no phase goes below zero.
  const inputMs = Math.max(0, out.startedAt - (epoch + start));
  const inferMs = Math.max(0, out.endedAt - out.startedAt);
  return { inputMs, inferMs, outputMs: Math.max(0, end - start - inputMs - inferMs) };
}

export interface BatcherOptions {
  /** Floats per batch item (product of the input's non-batch dims). */
  itemSize: number;
  /** True to combine queued requests into batches of up to maxBatch items; false runs each request alone. */
  dynamic: boolean;
  maxBatch: number;
  /** Batch sizes to dispatch as soon as the queue can form one (largest first). */
  preferred: number[];
  maxQueueDelayMs: number;
  /** Most batch items waiting before new requests are refused. */
  maxQueue: number;
}

export interface BatchResult extends BatchPhases {
  data: Float32Array;
  dims: number[];
  /** Time from submit until an instance took the request. */
  queueMs: number;
  /** Items in the batch this request ran in. */
  batchSize: number;
}

interface Job {
  data: Float32Array;
  batch: number;
  enqueued: number;
  resolve(r: BatchResult): void;
  reject(e: unknown): void;
}

/**
 * @example
 * const b = new Batcher([runA, runB], { itemSize: 3 * 640 * 640, dynamic: true, maxBatch: 32, preferred: [4, 8, 16], maxQueueDelayMs: 0.5, maxQueue: 64 });
 * const { data, dims } = await b.submit(tensor, 1);
 */
export class Batcher {
  private queue: Job[] = [];
  private free: Runner[];
  private timer?: ReturnType<typeof setTimeout>;
  private closing?: { resolve(): void; done: Promise<void> };
  private preferred: number[];
  /** Items waiting in the queue. */
  queued = 0;
  private listeners: ((b: BatchTimings) => void)[] = [];

  constructor(
    private runners: Runner[],
    private o: BatcherOptions,
  ) {
    if (!runners.length) throw new Error("a batcher needs at least one instance");
    this.free = [...runners];
    this.preferred = [...new Set(o.preferred)].filter((p) => p <= o.maxBatch).sort((a, b) => b - a);
  }

  /**
   * Calls `fn` after every executed batch (statistics and metrics).
   * @example
   * batcher.onBatch((b) => histogram.observe(b.size));
   */
  onBatch(fn: (b: BatchTimings) => void): void {
    this.listeners.push(fn);
  }

  /** Instances running a batch now. */
  get busy(): number {
    return this.runners.length - this.free.length;
  }

  /**
   * Queues `batch` items (`data` holds batch × itemSize floats) and resolves with their slice of the output.
   * The batcher owns `data` from here on (an instance on another thread may take its buffer).
   * @throws OverloadedError when the queue is full, ShuttingDownError after close(), BatchTooLargeError for more than maxBatch items (dynamic batching).
   */
  submit(data: Float32Array, batch: number): Promise<BatchResult> {
    if (this.closing) return Promise.reject(new ShuttingDownError("the server is shutting down"));
    if (data.length !== batch * this.o.itemSize) return Promise.reject(new Error(`expected ${batch * this.o.itemSize} floats for batch ${batch}, got ${data.length}`));
    // Queued, it would never fit a batch and would hold back every request behind it.
    if (this.o.dynamic && batch > this.o.maxBatch) {
      return Promise.reject(new BatchTooLargeError(`a request of ${batch} items exceeds the model's max_batch_size ${this.o.maxBatch}; split it into requests of at most ${this.o.maxBatch}`));
    }
    if (this.queued + batch > this.o.maxQueue) {
      return Promise.reject(new OverloadedError(`queue full (${this.queued} waiting, limit ${this.o.maxQueue}); retry later`));
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ data, batch, enqueued: performance.now(), resolve, reject });
      this.queued += batch;
      this.pump();
    });
  }

  /** Refuses new work and resolves once everything queued has run. */
  close(): Promise<void> {
    if (!this.closing) {
      let resolve!: () => void;
      const done = new Promise<void>((r) => (resolve = r));
      this.closing = { resolve, done };
      // Requests waiting for a fuller batch go now.
      this.pump();
      this.settleIfIdle();
    }
    return this.closing.done;
  }

  private pump(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    while (this.free.length && this.queue.length) {
      const take = this.pick();
      if (take === 0) {
        const wait = this.queue[0].enqueued + this.o.maxQueueDelayMs - performance.now();
        this.timer = setTimeout(() => this.pump(), Math.max(0, wait));
        return;
      }
      const jobs = this.queue.splice(0, take);
      for (const j of jobs) this.queued -= j.batch;
      void this.run(this.free.pop()!, jobs);
    }
  }

  /** How many queued jobs to dispatch now; 0 means wait for more. */
  private pick(): number {
    if (!this.o.dynamic) return 1;
    const sums: number[] = [];
    let total = 0;
    for (const j of this.queue) {
      if (total + j.batch > this.o.maxBatch) break;
      total += j.batch;
      sums.push(total);
    }
    // Full, or the next request would not fit: waiting cannot make this batch bigger.
    if (total === this.o.maxBatch || sums.length < this.queue.length) return sums.length;
    for (const p of this.preferred) {
      const i = sums.indexOf(p);
      if (i >= 0) return i + 1;
    }
    const waited = performance.now() - this.queue[0].enqueued;
    return waited >= this.o.maxQueueDelayMs || this.closing ? sums.length : 0;
  }

  private async run(runner: Runner, jobs: Job[]): Promise<void> {
    const start = performance.now();
    const batch = jobs.reduce((a, j) => a + j.batch, 0);
    let input = jobs[0].data;
    if (jobs.length > 1) {
      input = new Float32Array(batch * this.o.itemSize);
      let off = 0;
      for (const j of jobs) {
        input.set(j.data, off);
        off += j.data.length;
      }
    }
    const assembled = performance.now();
    try {
      const out = await runner(input, batch);
      const returned = performance.now();
      if (this.o.dynamic && out.dims[0] !== batch) throw new Error(`model returned batch ${out.dims[0]} for a batch of ${batch}`);
      const per = out.data.length / batch;
      let at = 0;
      const slices = jobs.map((j) => {
        const data = jobs.length === 1 ? out.data : out.data.subarray(at * per, (at + j.batch) * per);
        at += j.batch;
        return { data, dims: jobs.length === 1 ? out.dims : [j.batch, ...out.dims.slice(1)] };
      });
      const t = phases(start, assembled, returned, performance.now(), out);
      const timings: BatchTimings = { size: batch, ...t };
      for (const l of this.listeners) l(timings);
      jobs.forEach((j, i) => j.resolve({ ...slices[i], queueMs: start - j.enqueued, ...t, batchSize: batch }));
    } catch (err) {
      for (const j of jobs) j.reject(err);
    } finally {
      this.free.push(runner);
      this.pump();
      this.settleIfIdle();
    }
  }

  private settleIfIdle(): void {
    if (this.closing && !this.queue.length && this.busy === 0) this.closing.resolve();
  }
}
