/**
 * Duplicate frames at the receiving side: each subscription remembers the
 * last frames it took per stream, so a (stream, seq) it has already
 * received (a sender's retry after a lost answer, a replayed message) is
 * refused instead of being processed and written twice.
 */

/** One stream's recent frames: seq → capture time, oldest first. */
interface StreamWindow {
  seqs: Map<number, number>;
  /** Latest capture time seen: a frame later than every one seen means the source started over. */
  newest: number;
}

/** Frames remembered per stream. */
export const DEDUPE_WINDOW = 1024;
/** Streams remembered per subscription (least recently seen forgotten first). */
export const DEDUPE_STREAMS = 1024;

/**
 * A bounded per-stream window of the frames received. A frame whose seq is
 * in its stream's window is a duplicate, unless its capture time (`ts`) is
 * later than every frame the window holds: that is a source which started
 * over (a restarted camera process counts from 0 again), and the window
 * restarts with it. Memory is bounded by `perStream × streams` entries.
 * Duplicates and replays are what it catches; frames forged with a new
 * capture time are kept out by the server's permissions (docs/distributed.md).
 * @example
 * const w = new DuplicateWindow();
 * w.admit("cam", 1, 1000); // true
 * w.admit("cam", 1, 1000); // false: the same frame again
 * w.admit("cam", 1, 5000); // true: the source started over
 */
export class DuplicateWindow {
  private streams = new Map<string, StreamWindow>();

  constructor(
    readonly perStream = DEDUPE_WINDOW,
    readonly maxStreams = DEDUPE_STREAMS,
  ) {}

  /** True (and remembered) when the frame is new; false for a duplicate. */
  admit(key: string, seq: number, ts: number): boolean {
    let s = this.streams.get(key);
    if (s) {
      // Most recently seen last: the first entry is the one to forget.
      this.streams.delete(key);
    } else {
      if (this.streams.size >= this.maxStreams) this.streams.delete(this.streams.keys().next().value!);
      s = { seqs: new Map(), newest: -Infinity };
    }
    this.streams.set(key, s);
    if (s.seqs.has(seq)) {
      if (!(ts > s.newest)) return false;
      s.seqs.clear();
    }
    s.seqs.set(seq, ts);
    if (s.seqs.size > this.perStream) s.seqs.delete(s.seqs.keys().next().value!);
    if (ts > s.newest) s.newest = ts;
    return true;
  }

  /** Streams currently remembered. */
  get size(): number {
    return this.streams.size;
  }
}
