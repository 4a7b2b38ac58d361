import { describe, expect, test } from "bun:test";
import { assignmentCost, matchWithin, solveAssignment } from "../runtime/tracking/assignment.ts";
import { rng } from "./support/random.ts";


/** Optimal total by trying every injective map of the smaller side: the reference. */
function bruteForce(cost: number[], rows: number, cols: number): number {
  const small = Math.min(rows, cols);
  const big = Math.max(rows, cols);
  const at = (s: number, b: number) => (rows <= cols ? cost[s * cols + b] : cost[b * cols + s]);
  let best = Infinity;
  const used = new Array(big).fill(false);
  const go = (s: number, total: number) => {
    if (s === small) return void (best = Math.min(best, total));
    for (let b = 0; b < big; b++) {
      if (used[b]) continue;
      used[b] = true;
      go(s + 1, total + at(s, b));
      used[b] = false;
    }
  };
  go(0, 0);
  return best;
}

function expectValid(match: Int32Array, rows: number, cols: number) {
  const cols_ = match.filter((c) => c >= 0);
  expect(cols_.length).toBe(Math.min(rows, cols));
  expect(new Set(cols_).size).toBe(cols_.length);
  for (const c of cols_) expect(c).toBeLessThan(cols);
}

describe("solveAssignment", () => {
  test("3x3 textbook matrix", () => {
    const cost = [4, 1, 3, 2, 0, 5, 3, 2, 2];
    const m = solveAssignment(cost, 3, 3);
    expect([...m]).toEqual([1, 0, 2]);
    expect(assignmentCost(cost, 3, m)).toBe(5);
  });

  test("4x4 matrix where the greedy choice is wrong", () => {
    const cost = [82, 83, 69, 92, 77, 37, 49, 92, 11, 69, 5, 86, 8, 9, 98, 23];
    const m = solveAssignment(cost, 4, 4);
    expect(assignmentCost(cost, 4, m)).toBe(140);
    expect([...m]).toEqual([2, 1, 0, 3]);
  });

  test("wide (2x3) and tall (3x2) matrices", () => {
    const wide = [1, 2, 3, 2, 4, 6];
    const w = solveAssignment(wide, 2, 3);
    expect([...w]).toEqual([1, 0]); // 2 + 2 beats 1 + 4
    expect(assignmentCost(wide, 3, w)).toBe(4);
    const tall = [10, 1, 1, 10, 5, 5];
    const t = solveAssignment(tall, 3, 2);
    expectValid(t, 3, 2);
    expect([...t]).toEqual([1, 0, -1]);
    expect(assignmentCost(tall, 2, t)).toBe(2);
  });

  test("matches brute force on random square and rectangular matrices", () => {
    const rand = rng(7).next;
    for (let trial = 0; trial < 300; trial++) {
      const rows = 1 + Math.floor(rand() * 6);
      const cols = 1 + Math.floor(rand() * 6);
      // Integers with ties as well as spread values.
      const cost = Array.from({ length: rows * cols }, () => (trial % 2 ? Math.floor(rand() * 5) : rand() * 100 - 50));
      const m = solveAssignment(cost, rows, cols);
      expectValid(m, rows, cols);
      expect(assignmentCost(cost, cols, m)).toBeCloseTo(bruteForce(cost, rows, cols), 9);
    }
  });

  test("empty sides and non-finite costs", () => {
    expect([...solveAssignment([], 0, 3)]).toEqual([]);
    expect([...solveAssignment([], 2, 0)]).toEqual([-1, -1]);
    expect(() => solveAssignment([1, Infinity], 1, 2)).toThrow(/finite/);
    expect(() => solveAssignment([1], 1, 2)).toThrow(/expected 1x2/);
  });
});

describe("matchWithin", () => {
  test("keeps only pairs within the threshold", () => {
    expect([...matchWithin([0.1, 0.9, 0.95, 0.2], 2, 2, 0.8)]).toEqual([0, 1]);
    expect([...matchWithin([0.9, 0.1], 2, 1, 0.8)]).toEqual([-1, 0]);
    expect([...matchWithin([0.85, 0.9], 1, 2, 0.8)]).toEqual([-1]);
  });

  test("maximises matches where greedy lowest-cost-first would lose one", () => {
    // Greedy takes (0,0)=0.1, leaving (1,1)=0.9 > 0.8: one match. Optimal: (0,1)+(1,0) = 0.35, two matches.
    expect([...matchWithin([0.1, 0.2, 0.15, 0.9], 2, 2, 0.8)]).toEqual([1, 0]);
  });

  test("equals the extended-matrix formulation (lapjv cost_limit) on random matrices", () => {
    const rand = rng(11).next;
    for (let trial = 0; trial < 200; trial++) {
      const rows = 1 + Math.floor(rand() * 5);
      const cols = 1 + Math.floor(rand() * 5);
      const limit = 0.3 + rand() * 0.6;
      const cost = Array.from({ length: rows * cols }, () => rand());
      const m = matchWithin(cost, rows, cols, limit);
      // Objective: matched costs + limit/2 for every unmatched row and column.
      const objective = (x: Int32Array) => {
        const matched = [...x].filter((c) => c >= 0).length;
        return assignmentCost(cost, cols, x) + (limit / 2) * (rows - matched + cols - matched);
      };
      const n = rows + cols;
      const ext = new Array(n * n).fill(limit / 2);
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) if (i >= rows && j >= cols) ext[i * n + j] = 0;
      for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) ext[i * n + j] = cost[i * cols + j];
      const best = assignmentCost(ext, n, solveAssignment(ext, n, n));
      expect(objective(m)).toBeCloseTo(best, 9);
      for (let i = 0; i < rows; i++) if (m[i] >= 0) expect(cost[i * cols + m[i]]).toBeLessThanOrEqual(limit);
    }
  });
});
