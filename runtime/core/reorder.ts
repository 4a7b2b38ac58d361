/**
 * Puts the outputs of concurrent workers back in arrival order. A stage with
 * `replicas` > 1 takes messages in order but finishes them in any order; its
 * outputs are released in the order the messages were taken, so a stateful
 * stage downstream (a tracker) sees each stream's frames in sequence.
 *
 * The window is bounded: when more than `window` finished messages wait
 * behind one still running, that one is skipped (its output, if it ever
 * comes, is dropped) and counted, so one stuck worker cannot hold the stage.
 */
export class Reorder<T> {
  private next = 0;
  private issued = 0;
  private finished = new Map<number, readonly T[] | null>();
  private flushing: Promise<void> = Promise.resolve();
  /** Messages given up on because the window filled behind them. */
  skipped = 0;
  /** Outputs that arrived after their message had been skipped (dropped). */
  late = 0;

  /**
   * @param window finished messages that may wait behind a running one
   * @param send   delivers one output downstream (awaited: backpressure)
   * @example
   * const order = new Reorder(8, (m) => publish(m));
   * const t = order.ticket();            // when a message is taken
   * await order.complete(t, [output]);   // when it is done (null: nothing to send)
   */
  constructor(
    private readonly window: number,
    private readonly send: (item: T) => Promise<void>,
  ) {}

  /** The next ticket, in the order messages are taken. */
  ticket(): number {
    return this.issued++;
  }

  /**
   * Hands in a ticket's outputs (null when it produced nothing or failed);
   * resolves once they, and all before them, have been sent.
   */
  complete(ticket: number, outputs: readonly T[] | null): Promise<void> {
    if (ticket < this.next) {
      if (outputs?.length) this.late++;
      return this.flushing;
    }
    this.finished.set(ticket, outputs);
    while (this.finished.size > this.window && !this.finished.has(this.next)) {
      this.next++;
      this.skipped++;
    }
    this.flushing = this.flushing.then(() => this.flush());
    return this.flushing;
  }

  /** Messages taken whose outputs have not been released yet. */
  get pending(): number {
    return this.issued - this.next;
  }

  private async flush(): Promise<void> {
    while (this.finished.has(this.next)) {
      const outputs = this.finished.get(this.next)!;
      this.finished.delete(this.next);
      this.next++;
      if (outputs) for (const o of outputs) await this.send(o);
    }
  }
}
