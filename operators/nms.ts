import * as v from "valibot";
import { ConfigError } from "../runtime/errors.ts";
import { settleDetections } from "../runtime/inference-log.ts";
import type { Detection, Frame, Letterbox, Predictions } from "../runtime/message.ts";
import { defineOperator } from "../runtime/operator.ts";

const Options = v.strictObject({
  conf: v.optional(
    v.pipe(v.number(), v.minValue(0), v.maxValue(1), v.description("Minimum score (objectness × class probability for YOLOv5).")),
    0.25,
  ),
  iou: v.optional(
    v.pipe(v.number(), v.minValue(0), v.maxValue(1), v.description("Boxes overlapping a better one by more than this IoU are suppressed.")),
    0.45,
  ),
  classes: v.optional(v.pipe(v.array(v.string()), v.minLength(1), v.description("Keep only these class names (default: all)."))),
  agnostic: v.optional(v.pipe(v.boolean(), v.description("Suppress across classes, not only within one.")), false),
  maxDetections: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1)), 300),
});
type Options = v.InferOutput<typeof Options>;

/** Most candidates sorted into NMS, as in YOLOv5's val settings. */
const MAX_CANDIDATES = 30_000;
/** Box offset per class, so class-aware NMS can compare boxes of different classes without overlap. */
const CLASS_OFFSET = 7680;

interface Candidates {
  boxes: Float32Array; // x1 y1 x2 y2 in model pixels
  scores: Float32Array;
  classes: Int32Array;
  count: number;
}

/**
 * Candidates above `conf` from a YOLOv5 (1×N×(5+C)) or YOLOv8 (1×(4+C)×N) output,
 * best class per anchor.
 */
export function decodeYolo(p: Predictions, conf: number, allowed?: Set<number>): Candidates {
  const { data, dims, layout } = p;
  const v5 = layout === "yolov5";
  const n = v5 ? dims[1] : dims[2];
  const width = v5 ? dims[2] : dims[1];
  const nc = width - (v5 ? 5 : 4);
  const cap = Math.min(n, MAX_CANDIDATES);
  const out: Candidates = { boxes: new Float32Array(cap * 4), scores: new Float32Array(cap), classes: new Int32Array(cap), count: 0 };
  const at = v5 ? (i: number, k: number) => data[i * width + k] : (i: number, k: number) => data[k * n + i];
  const first = v5 ? 5 : 4;
  for (let i = 0; i < n; i++) {
    const obj = v5 ? data[i * width + 4] : 1;
    if (obj < conf) continue;
    let best = -1;
    let bestScore = 0;
    for (let c = 0; c < nc; c++) {
      const s = at(i, first + c);
      if (s > bestScore) [best, bestScore] = [c, s];
    }
    const score = obj * bestScore;
    if (best < 0 || score < conf || (allowed && !allowed.has(best))) continue;
    if (out.count === cap) break;
    const cx = at(i, 0),
      cy = at(i, 1),
      w = at(i, 2),
      h = at(i, 3);
    const j = out.count++;
    out.boxes.set([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], j * 4);
    out.scores[j] = score;
    out.classes[j] = best;
  }
  return out;
}

/** Greedy NMS; returns kept candidate indices, best first. */
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

function classIds(wanted: string[], names: string[]): Set<number> {
  const ids = new Set<number>();
  for (const w of wanted) {
    const id = names.indexOf(w);
    if (id < 0) throw new ConfigError(`nms.classes: unknown class "${w}"; the model knows: ${names.join(", ")}`);
    ids.add(id);
  }
  return ids;
}

/**
 * Decodes YOLO predictions into detections: confidence filter, class filter,
 * class-aware (or agnostic) non-maximum suppression, boxes in source pixels.
 */
export default defineOperator({
  name: "nms",
  kind: "transform",
  description: "Decode YOLO predictions: confidence and class filters, non-maximum suppression, boxes in source-image pixels.",
  options: Options,
  create(o: Options) {
    let allowed: Set<number> | undefined;
    let namesSeen: string[] | undefined;
    return {
      process(msg) {
        if (msg.kind !== "frame") return msg;
        const f: Frame = msg;
        const p = f.predictions;
        if (!p || !f.tensor) throw new Error("frame has no predictions: put an infer stage before nms");
        if (o.classes && namesSeen !== p.classNames) {
          allowed = classIds(o.classes, p.classNames);
          namesSeen = p.classNames;
        }
        const cands = decodeYolo(p, o.conf, allowed);
        const keep = suppress(cands, o.iou, o.agnostic, o.maxDetections);
        const lb = f.tensor.letterbox;
        f.detections = keep.map((i): Detection => ({
          class: p.classNames[cands.classes[i]] ?? String(cands.classes[i]),
          classId: cands.classes[i],
          score: cands.scores[i],
          box: unletterbox(cands.boxes, i, lb, f.image.width, f.image.height),
        }));
        // The inference log and canary comparison wait for these (a WeakMap look-up otherwise).
        settleDetections(p, f.detections);
        // The raw output is large (8.5 MB for YOLOv5 at 640) and now consumed.
        f.predictions = undefined;
        return f;
      },
    };
  },
});
