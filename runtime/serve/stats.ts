/**
 * Per model version statistics in the shape of Triton's statistics extension
 * (`GET /v2/models[/{name}[/versions/{v}]]/stats`): request counts and
 * cumulative durations (success, fail, queue, compute_input, compute_infer,
 * compute_output), one entry per executed batch size, inference and
 * execution counts, and the time of the last inference. Durations are in
 * nanoseconds; the request-level compute durations of a request are those of
 * the batch it ran in, as Triton counts them.
 */
import type { BatchResult, BatchTimings } from "./batcher.ts";

/** A count and a cumulative duration in ns. */
export interface DurationStat {
  count: number;
  ns: number;
}

export interface BatchStat {
  batch_size: number;
  compute_input: DurationStat;
  compute_infer: DurationStat;
  compute_output: DurationStat;
}

/** One model version's `model_stats` entry. */
export interface ModelStatJson {
  name: string;
  version: string;
  last_inference: number;
  inference_count: number;
  execution_count: number;
  inference_stats: {
    success: DurationStat;
    fail: DurationStat;
    queue: DurationStat;
    compute_input: DurationStat;
    compute_infer: DurationStat;
    compute_output: DurationStat;
    cache_hit: DurationStat;
    cache_miss: DurationStat;
  };
  batch_stats: BatchStat[];
  memory_usage: unknown[];
}

const ns = (ms: number) => Math.max(0, Math.round(ms * 1e6));
const zero = (): DurationStat => ({ count: 0, ns: 0 });
const add = (d: DurationStat, ms: number) => {
  d.count++;
  d.ns += ns(ms);
};

/**
 * @example
 * const stats = new ModelStats();
 * batcher.onBatch((b) => stats.batch(b));
 * stats.success(1, totalMs, result);
 * stats.toJson("yolov5", "1").inference_count; // 1
 */
export class ModelStats {
  private inference = { success: zero(), fail: zero(), queue: zero(), compute_input: zero(), compute_infer: zero(), compute_output: zero() };
  private batches = new Map<number, BatchStat>();
  private inferenceCount = 0;
  private executionCount = 0;
  private lastInference = 0;

  /** An executed batch (a model execution). */
  batch(b: BatchTimings): void {
    this.executionCount++;
    let s = this.batches.get(b.size);
    if (!s) this.batches.set(b.size, (s = { batch_size: b.size, compute_input: zero(), compute_infer: zero(), compute_output: zero() }));
    add(s.compute_input, b.inputMs);
    add(s.compute_infer, b.inferMs);
    add(s.compute_output, b.outputMs);
  }

  /** A request of `items` batch items answered after `totalMs`, with the batch result it got. */
  success(items: number, totalMs: number, r: BatchResult): void {
    this.inferenceCount += items;
    this.lastInference = Date.now();
    add(this.inference.success, totalMs);
    add(this.inference.queue, r.queueMs);
    add(this.inference.compute_input, r.inputMs);
    add(this.inference.compute_infer, r.inferMs);
    add(this.inference.compute_output, r.outputMs);
  }

  /** A request for this model that failed after `totalMs` (bad input, full queue, a failed execution). */
  failure(totalMs: number): void {
    this.lastInference = Date.now();
    add(this.inference.fail, totalMs);
  }

  toJson(name: string, version: string): ModelStatJson {
    const copy = (d: DurationStat) => ({ ...d });
    return {
      name,
      version,
      last_inference: this.lastInference,
      inference_count: this.inferenceCount,
      execution_count: this.executionCount,
      inference_stats: {
        success: copy(this.inference.success),
        fail: copy(this.inference.fail),
        queue: copy(this.inference.queue),
        compute_input: copy(this.inference.compute_input),
        compute_infer: copy(this.inference.compute_infer),
        compute_output: copy(this.inference.compute_output),
        cache_hit: zero(),
        cache_miss: zero(),
      },
      batch_stats: [...this.batches.values()]
        .sort((a, b) => a.batch_size - b.batch_size)
        .map((s) => ({ batch_size: s.batch_size, compute_input: copy(s.compute_input), compute_infer: copy(s.compute_infer), compute_output: copy(s.compute_output) })),
      memory_usage: [],
    };
  }
}
