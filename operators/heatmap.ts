/**
 * Occupancy heatmaps: per stream, a grid of the seconds that tracks' anchor
 * points (the feet, by default) spent in each cell, over a sliding window.
 * The grids are served by the HTTP server as PNG and JSON
 * (`GET /api/streams/:id/heatmap.png`) through the instance's `heatmap`
 * member, and survive restarts in a state file.
 */
import * as v from "valibot";
import { Buffer } from "node:buffer";
import { rename } from "node:fs/promises";
import type { Frame, Message } from "../runtime/core/message.ts";
import { defineOperator, type HeatmapGrid } from "../runtime/core/operator.ts";
import { exists, readText } from "../runtime/platform/index.ts";
import { writeFileAtomic } from "../runtime/platform/atomic-file.ts";

/** The window is kept as this many slices; the oldest is dropped as a new one begins. */
const SLICES = 30;
/** State file writes at most this often (and at close). */
const SAVE_EVERY_MS = 5000;

const Options = v.strictObject({
  cols: v.optional(v.pipe(v.number(), v.integer(), v.minValue(2), v.maxValue(512), v.description("Grid cells across the picture.")), 64),
  rows: v.optional(v.pipe(v.number(), v.integer(), v.minValue(2), v.maxValue(512), v.description("Grid cells down the picture.")), 36),
  window: v.optional(
    v.pipe(
      v.number(),
      v.minValue(1),
      v.maxValue(90 * 86400),
      v.description(`Seconds of history the heatmap shows (kept in ${SLICES} slices: what is older than the window drops out a slice at a time).`),
    ),
    3600,
  ),
  anchor: v.optional(
    v.pipe(v.picklist(["bottom-center", "center"]), v.description("The point of a box that stands for the track: its bottom centre (the feet) or its centre.")),
    "bottom-center",
  ),
  classes: v.optional(v.pipe(v.array(v.string()), v.minLength(1), v.description("Count only these class names (default: all)."))),
  tracked: v.optional(v.pipe(v.boolean(), v.description("Count only detections with a track id (after `tracker`); false counts every detection.")), true),
  fps: v.optional(
    v.pipe(
      v.number(),
      v.minValue(0.01),
      v.maxValue(1000),
      v.description("Frame rate of file sources: their time is then seq/fps, exact at any processing speed. Live frames use capture time."),
    ),
  ),
  maxGap: v.optional(
    v.pipe(v.number(), v.gtValue(0), v.maxValue(60), v.description("Longest time step in seconds one frame counts for (a stream that paused does not paint its last positions for the whole pause).")),
    1,
  ),
  state: v.optional(
    v.pipe(v.string(), v.minLength(1), v.description("JSON file keeping the grids across restarts (written atomically, at most every 5 s, and at close).")),
  ),
});
type Options = v.InferOutput<typeof Options>;

interface StreamHeat {
  /** One grid per slice, and which slice number (time / slice length) each holds; -1: empty. */
  slices: Float32Array[];
  index: number[];
  /** Stream time, ms: capture time for live frames, counted time (restart-proof) for files. */
  clock: number;
  /** The last frame's raw time (seq/fps or ts), for the next step. */
  lastRaw?: number;
}

interface StateFile {
  version: 1;
  cols: number;
  rows: number;
  window: number;
  slices: number;
  /** Per stream: its clock (ms), which slice number each slot holds, and the slots as base64 float32 ("" when empty). */
  streams: Record<string, { clock: number; index: number[]; data: string[] }>;
}

/** A slice as base64 of its float32s; "" for an empty one. */
const toBase64 = (a: Float32Array) => (a.some((x) => x !== 0) ? Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString("base64") : "");
function fromBase64(text: string, n: number): Float32Array {
  if (text === "") return new Float32Array(n);
  const b = Buffer.from(text, "base64");
  if (b.byteLength !== n * 4) throw new Error(`a slice of ${b.byteLength} bytes, expected ${n * 4}`);
  const out = new Float32Array(n);
  new Uint8Array(out.buffer).set(b);
  return out;
}

/**
 * Accumulates, per stream, how long tracks stood in each cell of a
 * `cols × rows` grid over the last `window` seconds; frames pass unchanged.
 */
export default defineOperator({
  name: "heatmap",
  kind: "transform",
  stateful: true,
  description:
    "Occupancy heatmap per stream: seconds of track anchor points per grid cell over a sliding window; PNG at /api/streams/:id/heatmap.png; survives restarts.",
  options: Options,
  async create(o, ctx) {
    const cells = o.cols * o.rows;
    const sliceMs = (o.window * 1000) / SLICES;
    const allowed = o.classes ? new Set(o.classes) : undefined;
    const streams = new Map<string, StreamHeat>();
    let dirty = false;
    let lastWrite = 0;
    let writing: Promise<void> = Promise.resolve();

    const fresh = (): StreamHeat => ({ slices: Array.from({ length: SLICES }, () => new Float32Array(cells)), index: new Array<number>(SLICES).fill(-1), clock: 0 });

    if (o.state && (await exists(o.state))) {
      try {
        const s = JSON.parse(await readText(o.state)) as StateFile;
        if (s?.version !== 1 || typeof s.streams !== "object") throw new Error("not a heatmap state file (version 1)");
        if (s.cols !== o.cols || s.rows !== o.rows || s.window !== o.window || s.slices !== SLICES) {
          ctx.log.warn(`${o.state}: kept for a ${s.cols}×${s.rows} grid over ${s.window} s, not ${o.cols}×${o.rows} over ${o.window} s; starting from an empty heatmap`);
        } else {
          for (const [id, saved] of Object.entries(s.streams)) {
            const h = fresh();
            h.clock = Number(saved.clock) || 0;
            saved.data.forEach((d, i) => (h.slices[i] = fromBase64(d, cells)));
            h.index = saved.index.map(Number);
            streams.set(id, h);
          }
          ctx.log.info(`heatmaps of ${streams.size} stream(s) from ${o.state}`);
        }
      } catch (err) {
        await rename(o.state, `${o.state}.corrupt`);
        ctx.log.warn(`${o.state}: ${(err as Error).message}; moved to ${o.state}.corrupt, starting from an empty heatmap`);
      }
    }

    function save(): Promise<void> {
      if (!o.state || !dirty) return writing;
      dirty = false;
      lastWrite = Date.now();
      const file: StateFile = { version: 1, cols: o.cols, rows: o.rows, window: o.window, slices: SLICES, streams: {} };
      for (const [id, h] of streams) file.streams[id] = { clock: h.clock, index: [...h.index], data: h.slices.map(toBase64) };
      const path = o.state;
      const text = JSON.stringify(file);
      writing = writing.then(() => writeFileAtomic(path, text)).catch((e) => ctx.log.error(`writing ${path}: ${(e as Error).message}`));
      return writing;
    }

    function onFrame(f: Frame): void {
      let h = streams.get(f.stream);
      if (!h) streams.set(f.stream, (h = fresh()));
      const raw = o.fps && !f.live ? (f.seq * 1000) / o.fps : f.ts;
      const step = h.lastRaw === undefined ? 0 : Math.min(Math.max(raw - h.lastRaw, 0), o.maxGap * 1000);
      h.lastRaw = raw;
      h.clock = f.live ? Math.max(h.clock, f.ts) : h.clock + step;
      const n = Math.floor(h.clock / sliceMs);
      const slot = n % SLICES;
      if (h.index[slot] !== n) {
        h.slices[slot].fill(0);
        h.index[slot] = n;
      }
      if (step === 0) return;
      const grid = h.slices[slot];
      const W = f.image.width;
      const H = f.image.height;
      const dt = step / 1000;
      for (const d of f.detections ?? []) {
        if ((o.tracked && d.trackId === undefined) || (allowed && !allowed.has(d.class))) continue;
        const [x1, y1, x2, y2] = d.box;
        const x = (x1 + x2) / 2 / W;
        const y = (o.anchor === "center" ? (y1 + y2) / 2 : y2) / H;
        const cx = Math.min(o.cols - 1, Math.max(0, Math.floor(x * o.cols)));
        const cy = Math.min(o.rows - 1, Math.max(0, Math.floor(y * o.rows)));
        grid[cy * o.cols + cx] += dt;
        dirty = true;
      }
      if (dirty && Date.now() - lastWrite >= SAVE_EVERY_MS) void save();
    }

    function grid(stream: string): HeatmapGrid | undefined {
      const h = streams.get(stream);
      if (!h) return undefined;
      const now = Math.floor(h.clock / sliceMs);
      const sum = new Float32Array(cells);
      for (let i = 0; i < SLICES; i++) {
        if (h.index[i] < 0 || h.index[i] <= now - SLICES || h.index[i] > now) continue;
        const s = h.slices[i];
        for (let k = 0; k < cells; k++) sum[k] += s[k];
      }
      return { cols: o.cols, rows: o.rows, cells: sum, windowSeconds: o.window, updated: h.clock };
    }

    return {
      heatmap: { streams: () => [...streams.keys()], grid },
      process(msg: Message) {
        if (msg.kind === "frame") onFrame(msg);
        return msg;
      },
      async close() {
        await save();
      },
    };
  },
});
