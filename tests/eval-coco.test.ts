import { describe, expect, test } from "bun:test";
import { averagePrecision, evaluate, iou, IOU_THRESHOLDS, type Box, type Prediction, type Truth } from "../runtime/eval/coco.ts";

/** A 100×100 box with its top-left corner at (x, y). */
const sq = (x: number, y = 0): Box => [x, y, x + 100, y + 100];
const gt = (box: Box, classId = 0): Truth => ({ classId, box });
const pred = (box: Box, score: number, classId = 0): Prediction => ({ classId, score, box });

describe("iou", () => {
  test("identical, disjoint, touching and partial overlaps", () => {
    expect(iou(sq(0), sq(0))).toBe(1);
    expect(iou(sq(0), sq(200))).toBe(0);
    expect(iou(sq(0), sq(100))).toBe(0);
    expect(iou([0, 0, 10, 10], [5, 0, 15, 10])).toBeCloseTo(1 / 3, 15);
  });

  test("thresholds are 0.50:0.05:0.95 with pycocotools' rounding", () => {
    expect(IOU_THRESHOLDS).toEqual([0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.8999999999999999, 0.95]);
  });
});

describe("averagePrecision (101-point)", () => {
  test("all hits is 1; no predictions or no truths is 0", () => {
    expect(averagePrecision([true, true], 2)).toBe(1);
    expect(averagePrecision([], 3)).toBe(0);
    expect(averagePrecision([false], 0)).toBe(0);
  });

  test("uses the precision envelope, read at recall 0, 0.01, ..., 1", () => {
    // recall 0.5 then 1, precision 1 then 2/3: points 0..0.5 read 1, points 0.51..1 read 2/3.
    expect(averagePrecision([true, false, true], 2)).toBeCloseTo((51 + 50 * (2 / 3)) / 101, 12);
    // The envelope lifts the dip at the first miss: precision [0, 1/2, 2/3] becomes 2/3 everywhere.
    expect(averagePrecision([false, true, true], 2)).toBeCloseTo(2 / 3, 12);
  });
});

describe("evaluate (COCO mAP)", () => {
  test("perfect predictions score 1 at every threshold", () => {
    const r = evaluate([
      { truths: [gt(sq(0)), gt(sq(200)), gt(sq(0, 300), 2)], predictions: [pred(sq(0), 0.9), pred(sq(200), 0.4), pred(sq(0, 300), 0.7, 2)] },
      { truths: [gt(sq(50))], predictions: [pred(sq(50), 0.2)] },
    ]);
    expect(r.images).toBe(2);
    expect(r.map50).toBe(1);
    expect(r.map50_95).toBe(1);
    expect([r.precision, r.recall]).toEqual([1, 1]);
    expect(r.classes.map((c) => [c.classId, c.images, c.instances])).toEqual([
      [0, 2, 3],
      [2, 1, 1],
    ]);
  });

  test("no predictions score 0, and the class is still reported", () => {
    const r = evaluate([{ truths: [gt(sq(0)), gt(sq(200))], predictions: [] }]);
    expect([r.map50, r.map50_95]).toEqual([0, 0]);
    expect(r.classes).toHaveLength(1);
    expect([r.classes[0].precision, r.classes[0].recall]).toEqual([1, 0]);
  });

  test("boxes with IoU 0.613 count at thresholds 0.50, 0.55 and 0.60 only", () => {
    // Shifted by 24 px: IoU = 76·100 / (2·100·100 − 76·100) = 76/124 ≈ 0.613.
    const r = evaluate([
      { truths: [gt(sq(0))], predictions: [pred(sq(24), 0.9)] },
      { truths: [gt(sq(0))], predictions: [pred(sq(-24), 0.8)] },
    ]);
    expect(r.classes[0].ap).toEqual([1, 1, 1, 0, 0, 0, 0, 0, 0, 0]);
    expect(r.map50).toBe(1);
    expect(r.map50_95).toBeCloseTo(0.3, 15);
  });

  test("an IoU exactly at a threshold counts (>=, as pycocotools)", () => {
    // Shifted by 25 px: IoU = 75/125 = 0.6 exactly.
    expect(iou(sq(0), sq(25))).toBe(0.6);
    const r = evaluate([{ truths: [gt(sq(0))], predictions: [pred(sq(25), 0.9)] }]);
    expect(r.classes[0].ap).toEqual([1, 1, 1, 0, 0, 0, 0, 0, 0, 0]);
  });

  test("finding half the objects with perfect boxes gives 51/101, not 0.5", () => {
    // Recall stops at 0.5 with precision 1: recall points 0, 0.01, ..., 0.50 (51 of 101) read 1.
    const r = evaluate([
      { truths: [gt(sq(0)), gt(sq(200))], predictions: [pred(sq(0), 0.9)] },
      { truths: [gt(sq(0)), gt(sq(200))], predictions: [pred(sq(200), 0.6)] },
    ]);
    expect(r.map50).toBeCloseTo(51 / 101, 15);
    expect(r.map50_95).toBeCloseTo(51 / 101, 15);
    expect(r.recall).toBe(0.5);
  });

  test("false positives scored below every true positive do not lower AP", () => {
    const r = evaluate([
      { truths: [gt(sq(0))], predictions: [pred(sq(0), 0.9), pred(sq(500), 0.1)] },
      { truths: [gt(sq(0))], predictions: [pred(sq(0), 0.8), pred(sq(300), 0.05)] },
    ]);
    expect(r.map50).toBe(1);
    expect(r.map50_95).toBe(1);
  });

  test("a false positive scored above every true positive costs a third (2 objects)", () => {
    // Ranked across images: FP 0.95, TP 0.9, TP 0.8 → precision envelope 2/3 at every recall.
    const r = evaluate([
      { truths: [gt(sq(0))], predictions: [pred(sq(0), 0.9), pred(sq(500), 0.95)] },
      { truths: [gt(sq(0))], predictions: [pred(sq(0), 0.8)] },
    ]);
    expect(r.map50).toBeCloseTo(2 / 3, 12);
    expect(r.map50_95).toBeCloseTo(2 / 3, 12);
  });

  test("a false positive between the true positives costs only the recall above 0.5", () => {
    // TP 0.9, FP 0.85, TP 0.8: precision 1 up to recall 0.5 (51 points), then 2/3 (50 points).
    const r = evaluate([{ truths: [gt(sq(0)), gt(sq(200))], predictions: [pred(sq(0), 0.9), pred(sq(500), 0.85), pred(sq(200), 0.8)] }]);
    expect(r.map50).toBeCloseTo((51 + 50 * (2 / 3)) / 101, 12);
  });

  test("each object is matched at most once: a duplicate is a false positive", () => {
    const r = evaluate([{ truths: [gt(sq(0)), gt(sq(200))], predictions: [pred(sq(0), 0.9), pred(sq(0), 0.85), pred(sq(200), 0.8)] }]);
    expect(r.map50).toBeCloseTo((51 + 50 * (2 / 3)) / 101, 12);
  });

  test("matching is greedy by score: the best-scored prediction takes the object", () => {
    // 0.9 overlaps the object at IoU 0.739 (shift 15), 0.5 overlaps it exactly.
    // Up to 0.70 the 0.9 box matches and the exact one is a duplicate (AP 1);
    // from 0.75 the 0.9 box misses, so the exact one matches after a FP (AP 1/2).
    expect(iou(sq(0), sq(15))).toBeCloseTo(85 / 115, 15);
    const r = evaluate([{ truths: [gt(sq(0))], predictions: [pred(sq(15), 0.9), pred(sq(0), 0.5)] }]);
    expect(r.classes[0].ap).toEqual([1, 1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.5]);
    expect(r.map50_95).toBeCloseTo(0.75, 15);
  });

  test("a right box with the wrong class is a miss", () => {
    const r = evaluate([{ truths: [gt(sq(0), 0)], predictions: [pred(sq(0), 0.9, 1)] }]);
    expect(r.classes.map((c) => c.classId)).toEqual([0]);
    expect(r.map50).toBe(0);
  });

  test("mAP is the mean over classes with ground truth", () => {
    const r = evaluate([
      {
        truths: [gt(sq(0), 0), gt(sq(0), 1), gt(sq(200), 1), gt(sq(400), 3)],
        // class 0 perfect, class 1 half found, class 2 has no ground truth (ignored), class 3 missed.
        predictions: [pred(sq(0), 0.9, 0), pred(sq(0), 0.8, 1), pred(sq(600), 0.7, 2)],
      },
    ]);
    expect(r.classes.map((c) => [c.classId, c.ap50])).toEqual([
      [0, 1],
      [1, 51 / 101],
      [3, 0],
    ]);
    expect(r.map50).toBeCloseTo((1 + 51 / 101 + 0) / 3, 15);
    expect(r.map50_95).toBeCloseTo((1 + 51 / 101 + 0) / 3, 15);
  });

  test("recall points carry pycocotools' rounding: a recall of 7/20 does not reach its 0.35", () => {
    // 20 objects, 7 hits, a miss, 13 hits. Point 0.35000000000000003 reads the precision
    // envelope after the miss (20/21), not 1. pycocotools 2.0.11 gives 0.968882602545969.
    const truths = Array.from({ length: 20 }, (_, i) => gt(sq(200 * i)));
    const predictions = truths.map((t, i) => pred(t.box, 1 - (i < 7 ? i : i + 1) / 100));
    predictions.push(pred(sq(0, 500), 0.93));
    const r = evaluate([{ truths, predictions }]);
    expect(r.map50).toBeCloseTo((35 + 66 * (20 / 21)) / 101, 12);
    expect(r.map50).toBeCloseTo(0.968882602545969, 12);
  });

  test("P and R are read at the confidence with the best mean F1", () => {
    // At conf <= 0.3 the FP makes P = 2/3; above it (up to 0.8) P = R = 1.
    const r = evaluate([{ truths: [gt(sq(0)), gt(sq(200))], predictions: [pred(sq(0), 0.9), pred(sq(200), 0.8), pred(sq(500), 0.3)] }]);
    expect([r.precision, r.recall]).toEqual([1, 1]);
    expect(r.conf).toBeGreaterThan(0.3);
    expect(r.conf).toBeLessThanOrEqual(0.8);
  });
});
