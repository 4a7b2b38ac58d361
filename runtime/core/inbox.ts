import { codedError } from "./errors.ts";
import { isDroppable, type Message } from "./message.ts";

/** A push into an inbox that was closed (before or while the push waited for space). */
export const InboxClosedError = codedError("InboxClosedError", "E_INBOX_CLOSED");
export type InboxClosedError = InstanceType<typeof InboxClosedError>;

/** One stream's queue inside an inbox. */
interface Lane {
  items: Message[];
  /** Pushers waiting for space in this lane. */
  waiting: (() => void)[];
  dropped: number;
}

/**
 * A stage's bounded input queue, fair across streams. Each stream (camera)
 * has its own lane of `capacity` messages, and `take` serves the lanes
 * round-robin: under overload every stream gets an equal share of the stage,
 * and a 30 fps camera cannot starve a 5 fps one. When a lane is full, a live
 * message evicts that stream's oldest live frame (a live pipeline must not
 * build up latency; the drop is counted per stream); only when the lane holds
 * nothing droppable does a message wait for space (events and file frames
 * are never lost), and one blocked stream does not hold back the others.
 */
export class Inbox {
  private lanes = new Map<string, Lane>();
  /** Streams with queued messages, in round-robin order. */
  private ready: string[] = [];
  private turn = 0;
  private takers: ((m: Message | undefined) => void)[] = [];
  private closed = false;
  private count = 0;
  dropped = 0;

  /**
   * @param capacity messages per stream
   * @param onDrop   called with each evicted live frame
   * @example
   * const inbox = new Inbox(2, (m) => stats.dropped++);
   * await inbox.push(frame);
   * const next = await inbox.take(); // round-robin across streams
   */
  constructor(
    readonly capacity: number,
    private onDrop: (msg: Message) => void = () => {},
  ) {}

  /** Messages queued, all streams together. */
  get size(): number {
    return this.count;
  }

  /** Live frames dropped per stream. */
  drops(): Map<string, number> {
    return new Map([...this.lanes].filter(([, l]) => l.dropped > 0).map(([id, l]) => [id, l.dropped]));
  }

  private lane(stream: string): Lane {
    let l = this.lanes.get(stream);
    if (!l) this.lanes.set(stream, (l = { items: [], waiting: [], dropped: 0 }));
    return l;
  }

  /** Resolves when the message is queued (immediately unless it must wait for space in its stream's lane). */
  push(msg: Message): void | Promise<void> {
    if (this.closed) throw new InboxClosedError("inbox is closed");
    const taker = this.takers.shift();
    if (taker) return taker(msg);
    const lane = this.lane(msg.stream);
    if (lane.items.length < this.capacity) return this.enqueue(msg.stream, lane, msg);
    // A full lane makes room by dropping its oldest live frame, for a live frame or anything more important (an event, a file frame).
    const victim = lane.items.findIndex(isDroppable);
    if (victim >= 0) {
      const [old] = lane.items.splice(victim, 1);
      lane.dropped++;
      this.dropped++;
      this.onDrop(old);
      lane.items.push(msg);
      return;
    }
    return new Promise<void>((resolve) => lane.waiting.push(resolve)).then(() => this.push(msg));
  }

  private enqueue(stream: string, lane: Lane, msg: Message): void {
    if (lane.items.length === 0) this.ready.push(stream);
    lane.items.push(msg);
    this.count++;
  }

  /** Next message, taking streams in turn; undefined once closed and empty. */
  take(): Promise<Message | undefined> {
    if (this.ready.length) {
      if (this.turn >= this.ready.length) this.turn = 0;
      const stream = this.ready[this.turn];
      const lane = this.lanes.get(stream)!;
      const msg = lane.items.shift()!;
      this.count--;
      if (lane.items.length === 0) {
        this.ready.splice(this.turn, 1);
        // A lane left empty by a stream that is gone is dropped, so removed cameras leave nothing behind.
        if (lane.waiting.length === 0 && lane.dropped === 0) this.lanes.delete(stream);
      } else this.turn++;
      lane.waiting.shift()?.();
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
    for (const l of this.lanes.values()) for (const w of l.waiting.splice(0)) w();
  }

  /** Forgets a stream's drop count (the stream was removed). */
  forget(stream: string): void {
    const l = this.lanes.get(stream);
    if (l && l.items.length === 0 && l.waiting.length === 0) this.lanes.delete(stream);
  }
}
