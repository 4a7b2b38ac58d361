/**
 * Gathers concurrent requests into batches: the first request of a batch
 * waits at most `maxDelayMs` for others, a batch of `max` goes at once.
 * infer-onnx uses it to run the frames of several streams as one inference
 * (its stage declares `concurrency` = max, so the executor hands it that
 * many frames at a time).
 */

/** Runs one batch: an output for each item, in order (or a failure for all of them). */
export type BatchRunner<I, O> = (items: I[]) => Promise<O[]>;

/**
 * @example
 * const g = new BatchGatherer<number, number>(async (xs) => xs.map((x) => x * 2), 8, 10);
 * await Promise.all([g.submit(1), g.submit(2)]); // [2, 4], one batch of 2 after ≤ 10 ms
 */
export class BatchGatherer<I, O> {
  private waiting: { item: I; resolve(o: O): void; reject(e: Error): void }[] = [];
  private timer?: ReturnType<typeof setTimeout>;
  /** Batches run so far and the items they held, for the stage's metrics. */
  batches = 0;
  items = 0;

  constructor(
    private readonly run: BatchRunner<I, O>,
    readonly max: number,
    readonly maxDelayMs: number,
  ) {}

  /** Resolves with this item's output once its batch has run. */
  submit(item: I): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      this.waiting.push({ item, resolve, reject });
      if (this.waiting.length >= this.max) this.flush();
      else this.timer ??= setTimeout(() => this.flush(), this.maxDelayMs);
    });
  }

  /** Sends what waits now as one batch (up to `max`). */
  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const batch = this.waiting.splice(0, this.max);
    if (this.waiting.length) this.timer = setTimeout(() => this.flush(), this.maxDelayMs);
    if (!batch.length) return;
    this.batches++;
    this.items += batch.length;
    this.run(batch.map((b) => b.item)).then(
      (outs) => {
        if (outs.length !== batch.length) throw new Error(`a batch of ${batch.length} gave ${outs.length} outputs`);
        batch.forEach((b, i) => b.resolve(outs[i]));
      },
      (err: Error) => batch.forEach((b) => b.reject(err)),
    ).catch((err: Error) => batch.forEach((b) => b.reject(err)));
  }

  /** Fails whatever still waits (the stage is closing). */
  close(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    for (const b of this.waiting.splice(0)) b.reject(new Error("inference stage closed"));
  }
}
