/**
 * YOLO output decoding, shared by every stage and server that turns raw
 * predictions into detections (nms, /detect, the canary's confidence check):
 * layout detection, candidate decoding, greedy NMS and the letterbox inverse.
 */
import * as v from "valibot";
import type { Detection, Letterbox, Predictions } from "../core/message.ts";

/** Most candidates sorted into NMS, as in YOLOv5's val settings: the best by score are kept. */
export const MAX_CANDIDATES = 30_000;
/** Box offset per class, so class-aware NMS can compare boxes of different classes without overlap. */
const CLASS_OFFSET = 7680;

/** The `layout` option of every infer stage. */
export const LayoutOption = v.optional(
  v.pipe(
    v.picklist(["auto", "yolov5", "yolov8"]),
    v.description("Output layout; auto tells YOLOv5 (1×N×(5+C)) from YOLOv8 (1×(4+C)×N) by shape."),
  ),
  "auto",
);
export type LayoutChoice = v.InferOutput<typeof LayoutOption>;

/**
 * Which YOLO layout an output of these dims is; throws on a shape no YOLO head has.
 * @example
 * detectLayout([1, 25200, 85], "auto"); // "yolov5"
 */
export function detectLayout(dims: readonly number[], want: LayoutChoice): "yolov5" | "yolov8" {
  if (dims.length !== 3) throw new Error(`expected a 3-D YOLO output, got [${dims.join(", ")}]`);
  if (want !== "auto") return want;
  return dims[1] > dims[2] ? "yolov5" : "yolov8";
}

/** What {@link keepCandidates} gives: the kept anchors of every image, back to back, and how many each image kept. */
export interface KeptAnchors {
  data: Float32Array;
  counts: number[];
}

/**
 * The anchors of a raw YOLO output (a batch of images: B×N×(5+C) for
 * YOLOv5, B×(4+C)×N for YOLOv8) that can still become a detection at a
 * confidence of `minScore` or more: YOLOv5 rows whose objectness reaches it
 * (a score is objectness × class probability, so no other row can), YOLOv8
 * anchors whose best class score reaches it. Per image the kept anchors keep
 * the output's layout and order: image i is a 1×K×(5+C) (or 1×(4+C)×K)
 * output of `counts[i]` anchors, and {@link decodeYolo} finds in it exactly
 * what it finds in the whole output at any conf ≥ minScore. The inference
 * thread does this so that only candidates cross to the stages (about 0.75 MB
 * instead of 8.6 MB a frame on the sample clip, YOLOv5n at 640 and minScore 0.001).
 * @example
 * const { data, counts } = keepCandidates(out.data, [1, 25200, 85], "yolov5", 0.001);
 * const p = { layout: "yolov5", dims: [1, counts[0], 85], data, ... };
 */
export function keepCandidates(data: Float32Array, dims: readonly number[], layout: "yolov5" | "yolov8", minScore: number): KeptAnchors {
  if (dims.length !== 3) throw new Error(`expected a 3-D YOLO output, got [${dims.join(", ")}]`);
  const [batch] = dims;
  const v5 = layout === "yolov5";
  const n = v5 ? dims[1] : dims[2];
  const width = v5 ? dims[2] : dims[1];
  const per = n * width;
  // Which anchors pass, per image: one pass to size the result exactly.
  const pass = new Uint8Array(batch * n);
  const counts: number[] = [];
  for (let b = 0; b < batch; b++) {
    const base = b * per;
    let count = 0;
    for (let i = 0; i < n; i++) {
      let score: number;
      if (v5) score = data[base + i * width + 4];
      else {
        score = 0;
        for (let k = base + 4 * n + i, end = base + width * n; k < end; k += n) if (data[k] > score) score = data[k];
      }
      if (score >= minScore) {
        pass[b * n + i] = 1;
        count++;
      }
    }
    counts.push(count);
  }
  const out = new Float32Array(counts.reduce((a, c) => a + c, 0) * width);
  let o = 0;
  for (let b = 0; b < batch; b++) {
    const base = b * per;
    if (v5) {
      for (let i = 0; i < n; i++) {
        if (!pass[b * n + i]) continue;
        for (let k = base + i * width, end = k + width; k < end; k++) out[o++] = data[k];
      }
    } else {
      // Columns stay columns: row r of the image's K×… block holds value r of every kept anchor.
      const count = counts[b];
      for (let r = 0; r < width; r++) {
        let j = o + r * count;
        for (let i = 0, k = base + r * n; i < n; i++, k++) if (pass[b * n + i]) out[j++] = data[k];
      }
      o += count * width;
    }
  }
  return { data: out, counts };
}

/** Decoded candidates, boxes x1 y1 x2 y2 in model pixels. */
export interface Candidates {
  boxes: Float32Array;
  scores: Float32Array;
  classes: Int32Array;
  count: number;
}

/**
 * Candidates above `conf` from a YOLOv5 (1×N×(5+C)) or YOLOv8 (1×(4+C)×N)
 * output, best class per anchor; when more than {@link MAX_CANDIDATES} pass,
 * the best-scoring ones are kept (not the first in anchor order).
 * @example
 * const c = decodeYolo(frame.predictions, 0.25); // c.count candidates
 */
export function decodeYolo(p: Predictions, conf: number, allowed?: Set<number>): Candidates {
  const { data, dims, layout } = p;
  const v5 = layout === "yolov5";
  const n = v5 ? dims[1] : dims[2];
  const width = v5 ? dims[2] : dims[1];
  const nc = width - (v5 ? 5 : 4);
  // Sized for a typical frame and grown on demand: most anchors fall below conf.
  let cap = Math.min(n, 1024);
  let out: Candidates = { boxes: new Float32Array(cap * 4), scores: new Float32Array(cap), classes: new Int32Array(cap), count: 0 };
  const push = (cx: number, cy: number, w: number, h: number, score: number, cls: number) => {
    if (out.count === cap) {
      cap = Math.min(n, cap * 2);
      const grown: Candidates = { boxes: new Float32Array(cap * 4), scores: new Float32Array(cap), classes: new Int32Array(cap), count: out.count };
      grown.boxes.set(out.boxes);
      grown.scores.set(out.scores);
      grown.classes.set(out.classes);
      out = grown;
    }
    const j = out.count++;
    out.boxes[j * 4] = cx - w / 2;
    out.boxes[j * 4 + 1] = cy - h / 2;
    out.boxes[j * 4 + 2] = cx + w / 2;
    out.boxes[j * 4 + 3] = cy + h / 2;
    out.scores[j] = score;
    out.classes[j] = cls;
  };
  if (v5) {
    // Rows of cx cy w h obj c0..cN: an anchor whose objectness is below conf cannot score above it.
    for (let i = 0, row = 0; i < n; i++, row += width) {
      const obj = data[row + 4];
      if (obj < conf) continue;
      let best = -1;
      let bestScore = 0;
      for (let c = 0, k = row + 5; c < nc; c++, k++) {
        if (data[k] > bestScore) {
          bestScore = data[k];
          best = c;
        }
      }
      const score = obj * bestScore;
      if (best < 0 || score < conf || (allowed && !allowed.has(best))) continue;
      push(data[row], data[row + 1], data[row + 2], data[row + 3], score, best);
    }
  } else {
    // Columns: row k holds value k of every anchor.
    for (let i = 0; i < n; i++) {
      let best = -1;
      let bestScore = 0;
      for (let c = 0, k = 4 * n + i; c < nc; c++, k += n) {
        if (data[k] > bestScore) {
          bestScore = data[k];
          best = c;
        }
      }
      if (best < 0 || bestScore < conf || (allowed && !allowed.has(best))) continue;
      push(data[i], data[n + i], data[2 * n + i], data[3 * n + i], bestScore, best);
    }
  }
  return out.count > MAX_CANDIDATES ? best(out, MAX_CANDIDATES) : out;
}

/** The `max` best-scoring candidates. */
function best(c: Candidates, max: number): Candidates {
  const order = Array.from({ length: c.count }, (_, i) => i).sort((a, b) => c.scores[b] - c.scores[a]);
  const out: Candidates = { boxes: new Float32Array(max * 4), scores: new Float32Array(max), classes: new Int32Array(max), count: max };
  for (let j = 0; j < max; j++) {
    const i = order[j];
    out.boxes.set(c.boxes.subarray(i * 4, i * 4 + 4), j * 4);
    out.scores[j] = c.scores[i];
    out.classes[j] = c.classes[i];
  }
  return out;
}

/**
 * Greedy NMS; returns kept candidate indices, best first.
 * @example
 * const keep = suppress(decodeYolo(p, 0.25), 0.45, false, 300);
 */
export function suppress(c: Candidates, iou: number, agnostic: boolean, max: number): number[] {
  const order = Array.from({ length: c.count }, (_, i) => i).sort((a, b) => c.scores[b] - c.scores[a]);
  const keep: number[] = [];
  const b = c.boxes;
  const off = (i: number) => (agnostic ? 0 : c.classes[i] * CLASS_OFFSET);
  const removed = new Uint8Array(c.count);
  for (let oi = 0; oi < order.length && keep.length < max; oi++) {
    const i = order[oi];
    if (removed[i]) continue;
    keep.push(i);
    const oI = off(i);
    const ax1 = b[i * 4] + oI,
      ay1 = b[i * 4 + 1] + oI,
      ax2 = b[i * 4 + 2] + oI,
      ay2 = b[i * 4 + 3] + oI;
    const areaA = (ax2 - ax1) * (ay2 - ay1);
    for (let oj = oi + 1; oj < order.length; oj++) {
      const j = order[oj];
      if (removed[j]) continue;
      const oJ = off(j);
      const bx1 = b[j * 4] + oJ,
        by1 = b[j * 4 + 1] + oJ,
        bx2 = b[j * 4 + 2] + oJ,
        by2 = b[j * 4 + 3] + oJ;
      const iw = Math.min(ax2, bx2) - Math.max(ax1, bx1);
      if (iw <= 0) continue;
      const ih = Math.min(ay2, by2) - Math.max(ay1, by1);
      if (ih <= 0) continue;
      const inter = iw * ih;
      if (inter / (areaA + (bx2 - bx1) * (by2 - by1) - inter) > iou) removed[j] = 1;
    }
  }
  return keep;
}

/** Maps a model-pixel box back to source-image pixels, clipped to the image. */
function unletterbox(b: Float32Array, i: number, lb: Letterbox, w: number, h: number): [number, number, number, number] {
  const clip = (x: number, hi: number) => Math.min(Math.max(x, 0), hi);
  return [
    clip((b[i * 4] - lb.padX) / lb.scaleX, w),
    clip((b[i * 4 + 1] - lb.padY) / lb.scaleY, h),
    clip((b[i * 4 + 2] - lb.padX) / lb.scaleX, w),
    clip((b[i * 4 + 3] - lb.padY) / lb.scaleY, h),
  ];
}

/** What {@link decodeDetections} needs besides the predictions. */
export interface DecodeOptions {
  conf: number;
  iou: number;
  agnostic?: boolean;
  maxDetections?: number;
  /** Class ids to keep (all when absent). */
  allowed?: Set<number>;
}

/**
 * Predictions to detections in source-image pixels: confidence and class
 * filters, NMS, the letterbox undone.
 * @example
 * const dets = decodeDetections(p, tensor.letterbox, 640, 480, { conf: 0.25, iou: 0.45 });
 */
export function decodeDetections(p: Predictions, lb: Letterbox, width: number, height: number, o: DecodeOptions): Detection[] {
  const cands = decodeYolo(p, o.conf, o.allowed);
  const keep = suppress(cands, o.iou, o.agnostic ?? false, o.maxDetections ?? 300);
  return keep.map(
    (i): Detection => ({
      class: p.classNames[cands.classes[i]] ?? String(cands.classes[i]),
      classId: cands.classes[i],
      score: cands.scores[i],
      box: unletterbox(cands.boxes, i, lb, width, height),
    }),
  );
}
