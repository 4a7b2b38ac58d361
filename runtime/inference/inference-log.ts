/**
 * The structured inference log: one JSON line per inference with the fields
 * the deployment this grew from logged (model and version, input shape, time,
 * mean/max confidence, detections, CPU and GPU use), in size-rotated files.
 *
 * The infer stage decodes its own predictions for the line (as nms would by
 * default), so the log is complete wherever nms runs.
 */
import { Buffer } from "node:buffer";
import { appendFile, mkdir, rename, rm, stat } from "node:fs/promises";
import { dirname } from "node:path";

/** One line of the inference log. Figures not known are null, never left out. */
export interface InferenceRecord {
  /** When the inference finished (ISO 8601). */
  ts: string;
  pipeline: string;
  stage: string;
  stream: string;
  seq: number;
  model: string;
  version: string;
  provider: string;
  inputShape: number[];
  timeMs: number;
  detections: number | null;
  meanConfidence: number | null;
  maxConfidence: number | null;
  /** Host CPU busy share (%), over the last second. */
  cpuPercent: number;
  /** This process's share of all cores (%), over the last second. */
  processCpuPercent: number;
  /** Mean GPU utilisation (%), null where no GPU can be read. */
  gpuPercent: number | null;
}

/** Count, mean and max score of a frame's detections (nulls for none). */
export function confidenceOf(detections: readonly { score: number }[] | null): Pick<InferenceRecord, "detections" | "meanConfidence" | "maxConfidence"> {
  if (!detections) return { detections: null, meanConfidence: null, maxConfidence: null };
  if (detections.length === 0) return { detections: 0, meanConfidence: null, maxConfidence: null };
  let sum = 0;
  let max = 0;
  for (const d of detections) {
    sum += d.score;
    if (d.score > max) max = d.score;
  }
  const r = (x: number) => Math.round(x * 10_000) / 10_000;
  return { detections: detections.length, meanConfidence: r(sum / detections.length), maxConfidence: r(max) };
}

export interface RotatingLogOptions {
  /** A file is rotated before it would grow past this many bytes. */
  maxBytes: number;
  /** Rotated files kept beside the current one (`path.1` newest ... `path.N`). */
  keep: number;
  /** Buffered lines are written at least this often. */
  flushMs?: number;
  /** Told about each failed write (the lines of that write are lost). */
  onError?: (err: Error) => void;
}

/** Buffered lines waiting past this many bytes are written without waiting for the timer. */
const EAGER_FLUSH_BYTES = 256 * 1024;

/**
 * An append-only JSON Lines file rotated by size: lines are buffered in
 * memory and appended once a second (or sooner when many wait), so writing
 * a line costs a string push.
 * @example
 * const log = await RotatingLog.open("out/inference.jsonl", { maxBytes: 10 << 20, keep: 5 });
 * log.write(JSON.stringify(record));
 * await log.close();
 */
export class RotatingLog {
  private pending: string[] = [];
  private pendingBytes = 0;
  private writing: Promise<void> = Promise.resolve();
  private timer: ReturnType<typeof setInterval>;
  private failure?: Error;

  private constructor(
    readonly path: string,
    private size: number,
    private o: RotatingLogOptions,
  ) {
    this.timer = setInterval(() => void this.flush(), o.flushMs ?? 1000);
    (this.timer as { unref?: () => void }).unref?.();
  }

  /** Opens (appending to) `path`, creating its folder. */
  static async open(path: string, o: RotatingLogOptions): Promise<RotatingLog> {
    await mkdir(dirname(path), { recursive: true });
    const size = await stat(path).then((s) => s.size, () => 0);
    return new RotatingLog(path, size, o);
  }

  /** Queues one line (a newline is added). */
  write(line: string): void {
    this.pending.push(line + "\n");
    this.pendingBytes += line.length + 1;
    if (this.pendingBytes >= EAGER_FLUSH_BYTES) void this.flush();
  }

  /** Writes what is queued; a file-system error goes to `onError` and is rethrown by `close`. */
  flush(): Promise<void> {
    this.writing = this.writing.then(() => this.drain()).catch((err: Error) => {
      this.failure ??= err;
      this.o.onError?.(err);
    });
    return this.writing;
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.flush();
    if (this.failure) throw this.failure;
  }

  private async drain(): Promise<void> {
    const lines = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    let chunk = "";
    let chunkBytes = 0;
    for (const line of lines) {
      const n = Buffer.byteLength(line);
      if (this.size + chunkBytes + n > this.o.maxBytes && this.size + chunkBytes > 0) {
        if (chunk) await appendFile(this.path, chunk);
        await this.rotate();
        chunk = "";
        chunkBytes = 0;
      }
      chunk += line;
      chunkBytes += n;
    }
    if (chunk) {
      await appendFile(this.path, chunk);
      this.size += chunkBytes;
    }
  }

  /** path → path.1 → ... → path.keep; the oldest is deleted. */
  private async rotate(): Promise<void> {
    const { keep } = this.o;
    if (keep === 0) await rm(this.path, { force: true });
    else {
      await rm(`${this.path}.${keep}`, { force: true });
      for (let i = keep - 1; i >= 1; i--) await rename(`${this.path}.${i}`, `${this.path}.${i + 1}`).catch(() => {});
      await rename(this.path, `${this.path}.1`);
    }
    this.size = 0;
  }
}
