/**
 * Constant-memory latency histogram with logarithmic buckets (≈2 % relative
 * error), so a pipeline that runs for months keeps a fixed footprint.
 */
const GROWTH = 1.04;
const MIN_MS = 0.01;
const BUCKETS = Math.ceil(Math.log(1e6 / MIN_MS) / Math.log(GROWTH)) + 1;
/** Upper edge of each bucket in ms (bucket i holds values in (edge[i-1], edge[i]]). */
const EDGES = Float64Array.from({ length: BUCKETS }, (_, i) => MIN_MS * GROWTH ** i);

export class Histogram {
  private counts = new Uint32Array(BUCKETS);
  count = 0;
  sum = 0;
  max = 0;

  record(ms: number): void {
    const i = ms <= MIN_MS ? 0 : Math.min(BUCKETS - 1, Math.ceil(Math.log(ms / MIN_MS) / Math.log(GROWTH)));
    this.counts[i]++;
    this.count++;
    this.sum += ms;
    if (ms > this.max) this.max = ms;
  }

  /** Value at quantile q (0..1), in ms; 0 when empty. */
  quantile(q: number): number {
    if (this.count === 0) return 0;
    const rank = Math.max(1, Math.ceil(q * this.count));
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.counts[i];
      if (seen >= rank) return Math.min(this.max, MIN_MS * GROWTH ** i);
    }
    return this.max;
  }

  /**
   * How many recorded values lie at or below each bound (ms, ascending): the
   * cumulative buckets of a Prometheus histogram, computed at scrape time. A
   * log bucket straddling a bound counts above it (within the 4 % bucket width).
   * @example
   * h.cumulative([1, 10, 100]); // e.g. [0, 12, 40] with h.count === 41
   */
  cumulative(boundsMs: readonly number[]): number[] {
    const out: number[] = [];
    let seen = 0;
    for (let i = 0; i < BUCKETS && out.length < boundsMs.length; i++) {
      while (out.length < boundsMs.length && EDGES[i] > boundsMs[out.length]) out.push(seen);
      seen += this.counts[i];
    }
    while (out.length < boundsMs.length) out.push(this.count);
    return out;
  }

  get mean(): number {
    return this.count ? this.sum / this.count : 0;
  }
}
