import { isDroppable, type Message } from "./message.ts";

/**
 * A stage's bounded input queue. When full, a live frame evicts the oldest
 * live frame (a live pipeline must not build up latency; the drop is
 * counted); anything else waits for space, so results are never lost.
 */
export class Inbox {
  private items: Message[] = [];
  private takers: ((m: Message | undefined) => void)[] = [];
  private spaceWaiters: (() => void)[] = [];
  private closed = false;
  dropped = 0;

  constructor(
    readonly capacity: number,
    private onDrop: (msg: Message) => void = () => {},
  ) {}

  get size(): number {
    return this.items.length;
  }

  /** Resolves when the message is queued (immediately unless it must wait for space). */
  push(msg: Message): void | Promise<void> {
    if (this.closed) throw new Error("inbox is closed");
    const taker = this.takers.shift();
    if (taker) return taker(msg);
    if (this.items.length < this.capacity) {
      this.items.push(msg);
      return;
    }
    if (isDroppable(msg)) {
      const victim = this.items.findIndex(isDroppable);
      if (victim >= 0) {
        const [old] = this.items.splice(victim, 1);
        this.dropped++;
        this.onDrop(old);
        this.items.push(msg);
        return;
      }
    }
    return this.waitForSpace().then(() => this.push(msg));
  }

  /** Next message, or undefined once closed and empty. */
  take(): Promise<Message | undefined> {
    const msg = this.items.shift();
    if (msg) {
      this.spaceWaiters.shift()?.();
      return Promise.resolve(msg);
    }
    if (this.closed) return Promise.resolve(undefined);
    return new Promise((resolve) => this.takers.push(resolve));
  }

  /** No more pushes; takers get what is queued, then undefined. */
  close(): void {
    this.closed = true;
    for (const t of this.takers.splice(0)) t(undefined);
  }

  private waitForSpace(): Promise<void> {
    return new Promise((resolve) => this.spaceWaiters.push(resolve));
  }
}
