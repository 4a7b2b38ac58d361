/**
 * The live page's feed: per stream, the latest frame that reached this
 * process's sinks, as a JPEG with its detections, track ids and counts.
 *
 * Nothing happens while nobody watches: the first viewer installs taps (a
 * reference kept per frame, no copy), the last one removes them. Frames are
 * encoded at most `fps` times a second per stream, once for all viewers,
 * scaled down to `width` first.
 *
 * Wire format of `GET /api/live` (application/x-framewire-live), records
 * back to back: uint32 BE header length | header (UTF-8 JSON) | uint32 BE
 * JPEG length | JPEG. Headers have `type` "frame" (with the JPEG) or "ping"
 * (every few seconds without frames; JPEG length 0).
 */
import * as v from "valibot";
import type { Subscription } from "../../core/bus.ts";
import type { Executor } from "../../engine/executor.ts";
import { encodeJpeg } from "../../media/jpeg.ts";
import type { Event, Frame, Image } from "../../core/message.ts";
import { subjectMatches } from "../../core/subject.ts";

export interface LiveCounts {
  lines: Record<string, { in: number; out: number }>;
  zones: Record<string, { occupancy: number; entries: number }>;
}

/** What the page gets with each preview frame. */
export interface LiveFrameHeader {
  type: "frame";
  stream: string;
  seq: number;
  ts: number;
  /** The frame's size; boxes are in these pixels. */
  width: number;
  height: number;
  /** The preview's size. */
  jpegWidth: number;
  jpegHeight: number;
  /** class, score, box [x1, y1, x2, y2], track id. */
  detections: { c: string; s: number; b: number[]; t?: number }[];
  counts: LiveCounts;
  timings: Record<string, number>;
}

export const LIVE_CONTENT_TYPE = "application/x-framewire-live";
const HEARTBEAT_MS = 2000;
const JPEG_QUALITY = 70;

/** Totals as a `counts` event of the zones operator carries them. */
const CountsData = v.object({
  lines: v.optional(v.record(v.string(), v.object({ in: v.number(), out: v.number() })), {}),
  zones: v.optional(v.record(v.string(), v.object({ occupancy: v.number(), entries: v.number() })), {}),
});
const Named = v.object({ line: v.optional(v.string()), zone: v.optional(v.string()), direction: v.optional(v.string()) });

interface StreamState {
  frame?: Frame;
  counts: LiveCounts;
  encoded?: { frame: Frame; bytes: Uint8Array };
}

const enc = new TextEncoder();

function pack(header: object, jpeg: Uint8Array): Uint8Array {
  const h = enc.encode(JSON.stringify(header));
  const out = new Uint8Array(8 + h.length + jpeg.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, h.length);
  out.set(h, 4);
  dv.setUint32(4 + h.length, jpeg.length);
  out.set(jpeg, 8 + h.length);
  return out;
}

/**
 * A JPEG no wider than `maxWidth` (integer subsampling: cheap, and a preview
 * needs no filtering). JPEG frames pass through as they are.
 */
export function previewJpeg(image: Image, maxWidth: number): { jpeg: Uint8Array; width: number; height: number } {
  if (image.format === "jpeg") return { jpeg: image.data, width: image.width, height: image.height };
  const step = Math.max(1, Math.ceil(image.width / maxWidth));
  const w = Math.floor(image.width / step);
  const h = Math.floor(image.height / step);
  const src = image.data;
  const [r, b] = image.format === "bgr24" ? [2, 0] : [0, 2];
  const rgba = new Uint8Array(w * h * 4);
  for (let y = 0, k = 0; y < h; y++) {
    let i = y * step * image.width * 3;
    for (let x = 0; x < w; x++, k += 4, i += step * 3) {
      rgba[k] = src[i + r];
      rgba[k + 1] = src[i + 1];
      rgba[k + 2] = src[i + b];
      rgba[k + 3] = 255;
    }
  }
  return { jpeg: encodeJpeg({ width: w, height: h, data: rgba }, JPEG_QUALITY), width: w, height: h };
}

/**
 * @example
 * const feed = new LiveFeed(exec, { fps: 5, width: 640 });
 * return new Response(feed.open(c.req.raw.signal), { headers: { "content-type": LIVE_CONTENT_TYPE } });
 */
export class LiveFeed {
  private streams = new Map<string, StreamState>();
  private taps: Subscription[] = [];
  private viewers = 0;
  private wakers = new Set<() => void>();
  private closed = false;

  constructor(
    private exec: Executor,
    private o: { fps: number; width: number },
  ) {}

  /** Where previews come from: what this process's sinks read, else the outputs no local stage reads. */
  subjects(): string[] {
    const local = new Set(this.exec.live().map((s) => s.id));
    const stages = this.exec.spec.stages.filter((s) => local.has(s.id));
    const sinks = stages.filter((s) => s.def.kind === "sink");
    if (sinks.length) return [...new Set(sinks.flatMap((s) => s.inputs))];
    const read = stages.flatMap((s) => s.inputs);
    return stages.filter((s) => !read.some((i) => subjectMatches(i, s.output))).map((s) => s.output);
  }

  /** A stream of records for one viewer, until it disconnects (`signal`) or the feed closes. */
  open(signal: AbortSignal): ReadableStream<Uint8Array> {
    const shown = new Map<string, Frame>();
    const shownAt = new Map<string, number>();
    let lastRecord = performance.now();
    let left = false;
    const leave = () => {
      if (left) return;
      left = true;
      signal.removeEventListener("abort", leave);
      this.leave();
    };
    this.join();
    signal.addEventListener("abort", leave, { once: true });
    const interval = 1000 / this.o.fps;
    return new ReadableStream<Uint8Array>(
      {
        pull: async (controller) => {
          for (;;) {
            if (left || this.closed) {
              leave();
              controller.close();
              return;
            }
            const now = performance.now();
            let wait = HEARTBEAT_MS - (now - lastRecord);
            for (const [id, s] of this.streams) {
              if (!s.frame || shown.get(id) === s.frame) continue;
              const due = interval - (now - (shownAt.get(id) ?? -Infinity));
              if (due <= 0) {
                shown.set(id, s.frame);
                shownAt.set(id, now);
                lastRecord = now;
                controller.enqueue(this.record(id, s));
                return;
              }
              wait = Math.min(wait, due);
            }
            if (wait <= 0) {
              lastRecord = now;
              controller.enqueue(pack({ type: "ping", ts: Date.now() }, new Uint8Array(0)));
              return;
            }
            await this.sleep(wait);
          }
        },
        cancel: leave,
      },
      { highWaterMark: 0 },
    );
  }

  /** Ends every viewer's stream. */
  close(): void {
    this.closed = true;
    for (const w of [...this.wakers]) w();
  }

  private join(): void {
    if (this.viewers++ > 0) return;
    this.taps = this.subjects().map((s) => this.exec.tap(s, (msg) => (msg.kind === "frame" ? this.onFrame(msg) : this.onEvent(msg))));
  }

  private leave(): void {
    if (--this.viewers > 0) return;
    for (const t of this.taps) t.unsubscribe();
    this.taps = [];
    // Do not keep frames alive for nobody; counts stay (events arrive rarely).
    for (const s of this.streams.values()) [s.frame, s.encoded] = [undefined, undefined];
  }

  private stream(id: string): StreamState {
    let s = this.streams.get(id);
    if (!s) this.streams.set(id, (s = { counts: { lines: {}, zones: {} } }));
    return s;
  }

  private onFrame(f: Frame): void {
    this.stream(f.stream).frame = f;
    for (const w of [...this.wakers]) w();
  }

  /** Keeps line and zone totals from the zones operator's events. */
  private onEvent(e: Event): void {
    const c = this.stream(e.stream).counts;
    if (e.type === "counts") {
      const r = v.safeParse(CountsData, e.data);
      if (r.success) {
        c.lines = r.output.lines;
        c.zones = r.output.zones;
      }
      return;
    }
    const r = v.safeParse(Named, e.data);
    if (!r.success) return;
    const { line, zone, direction } = r.output;
    if (e.type === "cross" && line && (direction === "in" || direction === "out")) {
      c.lines[line] ??= { in: 0, out: 0 };
      c.lines[line][direction]++;
    } else if (zone && (e.type === "enter" || e.type === "exit")) {
      const z = (c.zones[zone] ??= { occupancy: 0, entries: 0 });
      if (e.type === "enter") {
        z.occupancy++;
        z.entries++;
      } else z.occupancy = Math.max(0, z.occupancy - 1);
    }
  }

  private record(id: string, s: StreamState): Uint8Array {
    const f = s.frame!;
    if (s.encoded?.frame === f) return s.encoded.bytes;
    const p = previewJpeg(f.image, this.o.width);
    const header: LiveFrameHeader = {
      type: "frame",
      stream: id,
      seq: f.seq,
      ts: f.ts,
      width: f.image.width,
      height: f.image.height,
      jpegWidth: p.width,
      jpegHeight: p.height,
      detections: (f.detections ?? []).map((d) => ({ c: d.class, s: Math.round(d.score * 1000) / 1000, b: d.box.map((x) => Math.round(x)), ...(d.trackId !== undefined ? { t: d.trackId } : {}) })),
      counts: s.counts,
      timings: f.timings,
    };
    const bytes = pack(header, p.jpeg);
    s.encoded = { frame: f, bytes };
    return bytes;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wakers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakers.add(done);
    });
  }
}
