import { codedError } from "./errors.ts";
import { isDroppable, type Message } from "./message.ts";

/** A push into an inbox that was closed (before or while the push waited for space). */
export const InboxClosedError = codedError("InboxClosedError", "E_INBOX_CLOSED");
export type InboxClosedError = InstanceType<typeof InboxClosedError>;

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
    if (this.closed) throw new InboxClosedError("inbox is closed");
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

  /**
   * No more pushes; takers get what is queued, then undefined. Pushers still
   * waiting for space are settled too: their promises reject with
   * InboxClosedError (nothing waits forever on a closed inbox).
   */
  close(): void {
    this.closed = true;
    for (const t of this.takers.splice(0)) t(undefined);
    for (const w of this.spaceWaiters.splice(0)) w();
  }

  private waitForSpace(): Promise<void> {
    return new Promise((resolve) => this.spaceWaiters.push(resolve));
  }
}
