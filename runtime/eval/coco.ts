/**
 * COCO-style detection metric, pure (arrays in, numbers out): greedy
 * matching by score per image and class at IoU 0.50:0.05:0.95, precision
 * envelope, 101-point interpolated AP. Gives pycocotools' bbox AP (area
 * "all") to within float rounding, without its crowd flags and its cap of
 * 100 detections per image.
 */

/** [x1, y1, x2, y2], any unit as long as truths and predictions share it. */
export type Box = readonly [number, number, number, number];

export interface Truth {
  classId: number;
  box: Box;
}

export interface Prediction {
  classId: number;
  score: number;
  box: Box;
}

/**
 * `n` evenly spaced values from `start` to `stop`, computed as numpy's
 * linspace does (i·step + start, the last one exactly `stop`). pycocotools
 * takes its thresholds from it, and the rounding matters: its recall point
 * 0.35 is 0.35000000000000003, which a recall of 7/20 does not reach.
 */
function linspace(start: number, stop: number, n: number): number[] {
  const step = (stop - start) / (n - 1);
  return Array.from({ length: n }, (_, i) => (i === n - 1 ? stop : i * step + start));
}

/** IoU thresholds 0.50:0.05:0.95, bit for bit as pycocotools (0.9 is 0.8999999999999999). */
export const IOU_THRESHOLDS: readonly number[] = linspace(0.5, 0.95, 10);

/** Recall points 0, 0.01, ..., 1 of the 101-point interpolation, as pycocotools. */
const RECALL_POINTS: readonly number[] = linspace(0, 1, 101);

/** Confidence grid searched for the table's P and R (as YOLOv5). */
const CONF_GRID: readonly number[] = Array.from({ length: 1000 }, (_, i) => i / 999);

export interface ClassMetrics {
  classId: number;
  /** images with at least one ground-truth box of this class */
  images: number;
  /** ground-truth boxes */
  instances: number;
  /** precision and recall at IoU 0.5 and the confidence that maximises mean F1 over classes */
  precision: number;
  recall: number;
  /** AP per IoU threshold, aligned with IOU_THRESHOLDS */
  ap: number[];
  ap50: number;
  ap50_95: number;
}

export interface CocoResult {
  images: number;
  /** classes with ground truth, by class id */
  classes: ClassMetrics[];
  /** means over `classes` */
  precision: number;
  recall: number;
  map50: number;
  map50_95: number;
  /** the confidence threshold behind `precision` and `recall` */
  conf: number;
}

/**
 * Intersection over union of two boxes (0 when either is empty).
 * @example
 * iou([0, 0, 10, 10], [5, 0, 15, 10]); // 1/3
 */
export function iou(a: Box, b: Box): number {
  const iw = Math.min(a[2], b[2]) - Math.max(a[0], b[0]);
  const ih = Math.min(a[3], b[3]) - Math.max(a[1], b[1]);
  if (iw <= 0 || ih <= 0) return 0;
  const inter = iw * ih;
  return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter);
}

/**
 * 101-point interpolated AP from a ranked list: `hits[i]` says whether the
 * i-th best prediction is a true positive; `truths` is the number of
 * ground-truth boxes. Precision is made monotone (its envelope), then read at
 * recall 0, 0.01, ..., 1 (0 where that recall is never reached).
 * @example
 * averagePrecision([true, false, true], 2); // (51 * 1 + 50 * 2/3) / 101
 */
export function averagePrecision(hits: readonly boolean[], truths: number): number {
  if (truths === 0) return 0;
  const n = hits.length;
  const recall = new Float64Array(n);
  const precision = new Float64Array(n);
  let tp = 0;
  for (let i = 0; i < n; i++) {
    if (hits[i]) tp++;
    recall[i] = tp / truths;
    precision[i] = tp / (i + 1);
  }
  for (let i = n - 1; i > 0; i--) precision[i - 1] = Math.max(precision[i - 1], precision[i]);
  let sum = 0;
  let i = 0;
  for (const r of RECALL_POINTS) {
    while (i < n && recall[i] < r) i++;
    if (i === n) break;
    sum += precision[i];
  }
  return sum / RECALL_POINTS.length;
}

/** Per-class state: every prediction's score and a bitmask of the thresholds it matched at. */
interface ClassState {
  scores: number[];
  hits: number[];
  instances: number;
  images: number;
}

/**
 * Accumulates images one at a time (so a large set needs no boxes kept),
 * then summarises.
 * @example
 * const acc = new CocoAccumulator();
 * acc.add([{ classId: 0, box: [0, 0, 10, 10] }], [{ classId: 0, score: 0.9, box: [0, 0, 10, 10] }]);
 * acc.result().map50; // 1
 */
export class CocoAccumulator {
  private readonly classes = new Map<number, ClassState>();
  private images = 0;

  /** Adds one image's ground truth and predictions. */
  add(truths: readonly Truth[], predictions: readonly Prediction[]): void {
    this.images++;
    const ids = new Set([...truths.map((t) => t.classId), ...predictions.map((p) => p.classId)]);
    for (const id of ids) {
      const gt = truths.filter((t) => t.classId === id);
      // Stable sort: equal scores keep their input order, as pycocotools' mergesort.
      const dt = predictions.filter((p) => p.classId === id).sort((a, b) => b.score - a.score);
      const s = this.state(id);
      s.instances += gt.length;
      if (gt.length) s.images++;
      const masks = matchImage(gt, dt);
      for (let d = 0; d < dt.length; d++) {
        s.scores.push(dt[d].score);
        s.hits.push(masks[d]);
      }
    }
  }

  /** Metrics over everything added so far. */
  result(): CocoResult {
    const ranked = [...this.classes]
      .filter(([, s]) => s.instances > 0)
      .sort(([a], [b]) => a - b)
      .map(([classId, s]) => ({ classId, s, ...rank(s) }));
    const conf = bestConfidence(ranked.map((r) => ({ scores: r.scores, tp50: r.tp50, instances: r.s.instances })));
    const classes = ranked.map(({ classId, s, scores, tp50, order }): ClassMetrics => {
      const ap = IOU_THRESHOLDS.map((_, k) => averagePrecision(order.map((i) => (s.hits[i] & (1 << k)) !== 0), s.instances));
      const { precision, recall } = precisionRecallAt(scores, tp50, s.instances, conf);
      return { classId, images: s.images, instances: s.instances, precision, recall, ap, ap50: ap[0], ap50_95: mean(ap) };
    });
    return {
      images: this.images,
      classes,
      precision: mean(classes.map((c) => c.precision)),
      recall: mean(classes.map((c) => c.recall)),
      map50: mean(classes.map((c) => c.ap50)),
      map50_95: mean(classes.map((c) => c.ap50_95)),
      conf,
    };
  }

  private state(id: number): ClassState {
    let s = this.classes.get(id);
    if (!s) this.classes.set(id, (s = { scores: [], hits: [], instances: 0, images: 0 }));
    return s;
  }
}

/**
 * Metrics for a whole set at once.
 * @example
 * const r = evaluate([{ truths: [{ classId: 0, box: [0, 0, 10, 10] }], predictions: [] }]);
 * r.map50_95; // 0
 */
export function evaluate(images: readonly { truths: readonly Truth[]; predictions: readonly Prediction[] }[]): CocoResult {
  const acc = new CocoAccumulator();
  for (const im of images) acc.add(im.truths, im.predictions);
  return acc.result();
}

/**
 * For predictions of one class in one image (best first), a bitmask per
 * prediction: bit k set when it matched a ground truth at IOU_THRESHOLDS[k].
 * At each threshold every prediction, best first, takes the unmatched ground
 * truth it overlaps most (IoU >= threshold), as pycocotools does.
 */
function matchImage(gt: readonly Truth[], dt: readonly Prediction[]): number[] {
  const ious = dt.map((d) => gt.map((g) => iou(d.box, g.box)));
  const masks = new Array<number>(dt.length).fill(0);
  IOU_THRESHOLDS.forEach((t, k) => {
    const taken = new Uint8Array(gt.length);
    for (let d = 0; d < dt.length; d++) {
      let best = -1;
      let bestIou = t;
      for (let g = 0; g < gt.length; g++) {
        if (!taken[g] && ious[d][g] >= bestIou) [best, bestIou] = [g, ious[d][g]];
      }
      if (best >= 0) {
        taken[best] = 1;
        masks[d] |= 1 << k;
      }
    }
  });
  return masks;
}

/** One class's predictions ranked over all images: order, sorted scores, cumulative TPs at IoU 0.5. */
function rank(s: ClassState) {
  const order = s.scores.map((_, i) => i).sort((a, b) => s.scores[b] - s.scores[a]);
  const scores = order.map((i) => s.scores[i]);
  const tp50 = new Int32Array(order.length);
  order.forEach((i, j) => (tp50[j] = (j ? tp50[j - 1] : 0) + (s.hits[i] & 1)));
  return { order, scores, tp50 };
}

/** Precision and recall of the predictions scoring at least `conf` (precision 1 when there are none). */
function precisionRecallAt(scores: readonly number[], tp50: Int32Array, instances: number, conf: number) {
  // scores are descending: binary-search how many reach conf.
  let lo = 0;
  let hi = scores.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (scores[mid] >= conf) lo = mid + 1;
    else hi = mid;
  }
  if (lo === 0) return { precision: 1, recall: 0 };
  return { precision: tp50[lo - 1] / lo, recall: tp50[lo - 1] / instances };
}

/** The confidence on a 1000-point grid with the highest mean F1 over classes (the first, on ties). */
function bestConfidence(classes: { scores: readonly number[]; tp50: Int32Array; instances: number }[]): number {
  let best = 0;
  let bestF1 = -1;
  for (const conf of CONF_GRID) {
    const f1 = mean(
      classes.map((c) => {
        const { precision: p, recall: r } = precisionRecallAt(c.scores, c.tp50, c.instances, conf);
        return p + r > 0 ? (2 * p * r) / (p + r) : 0;
      }),
    );
    if (f1 > bestF1) [best, bestF1] = [conf, f1];
  }
  return best;
}

function mean(xs: readonly number[]): number {
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0;
}
