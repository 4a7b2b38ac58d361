/**
 * Optimal linear assignment (the "Hungarian" problem) for dense cost
 * matrices, by shortest augmenting paths with dual potentials — the
 * Jonker–Volgenant scheme, O(n²·m) for n = min(rows, cols). Trackers and
 * MOT evaluation build on it; no greedy shortcut anywhere.
 */

/** Scratch buffers, grown on demand: per-frame tracking calls this often with small sizes. */
let u = new Float64Array(0);
let v = new Float64Array(0);
let minv = new Float64Array(0);
let p = new Int32Array(0);
let way = new Int32Array(0);
let used = new Uint8Array(0);
let scratch = new Float64Array(0);

function ensure(n: number, m: number): void {
  if (u.length < n + 1) u = new Float64Array(n + 1);
  if (v.length < m + 1) {
    v = new Float64Array(m + 1);
    minv = new Float64Array(m + 1);
    p = new Int32Array(m + 1);
    way = new Int32Array(m + 1);
    used = new Uint8Array(m + 1);
  }
}

/** Core solver for n <= m on a row-major n×m matrix; writes row→column into `out`. */
function solveWide(a: ArrayLike<number>, n: number, m: number, out: Int32Array): void {
  ensure(n, m);
  u.fill(0, 0, n + 1);
  v.fill(0, 0, m + 1);
  p.fill(0, 0, m + 1);
  for (let i = 1; i <= n; i++) {
    p[0] = i;
    let j0 = 0;
    minv.fill(Infinity, 0, m + 1);
    used.fill(0, 0, m + 1);
    do {
      used[j0] = 1;
      const i0 = p[j0];
      const row = (i0 - 1) * m - 1;
      const ui = u[i0];
      let delta = Infinity;
      let j1 = 0;
      for (let j = 1; j <= m; j++) {
        if (used[j]) continue;
        const cur = a[row + j] - ui - v[j];
        if (cur < minv[j]) {
          minv[j] = cur;
          way[j] = j0;
        }
        if (minv[j] < delta) {
          delta = minv[j];
          j1 = j;
        }
      }
      for (let j = 0; j <= m; j++) {
        if (used[j]) {
          u[p[j]] += delta;
          v[j] -= delta;
        } else minv[j] -= delta;
      }
      j0 = j1;
    } while (p[j0] !== 0);
    do {
      const j1 = way[j0];
      p[j0] = p[j1];
      j0 = j1;
    } while (j0);
  }
  out.fill(-1);
  for (let j = 1; j <= m; j++) if (p[j]) out[p[j] - 1] = j - 1;
}

/**
 * Minimum-total-cost assignment of rows to columns. Every row is assigned
 * when rows <= cols, otherwise every column is. Costs must be finite
 * (use a large number for "forbidden" and filter afterwards).
 * @param cost row-major rows×cols matrix
 * @returns for each row its column, or -1
 * @example
 * solveAssignment([4, 1, 3, 2, 0, 5, 3, 2, 2], 3, 3); // Int32Array [1, 0, 2] (total 5)
 */
export function solveAssignment(cost: ArrayLike<number>, rows: number, cols: number): Int32Array {
  if (cost.length < rows * cols) throw new RangeError(`cost matrix has ${cost.length} entries, expected ${rows}x${cols}`);
  for (let k = 0; k < rows * cols; k++) if (!Number.isFinite(cost[k])) throw new RangeError(`cost[${k}] is ${cost[k]}: costs must be finite`);
  const out = new Int32Array(rows).fill(-1);
  if (rows === 0 || cols === 0) return out;
  if (rows <= cols) {
    solveWide(cost, rows, cols, out);
    return out;
  }
  // Tall: solve the transpose (columns as rows), then invert.
  const t = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) t[j * rows + i] = cost[i * cols + j];
  const colToRow = new Int32Array(cols);
  solveWide(t, cols, rows, colToRow);
  for (let j = 0; j < cols; j++) if (colToRow[j] >= 0) out[colToRow[j]] = j;
  return out;
}

/**
 * Optimal matching where a pair may only be matched if its cost is at most
 * `maxCost`: minimises the matched costs plus `maxCost` for every row left
 * unmatched — the same optimum as lapjv's `extend_cost` with
 * `cost_limit = maxCost` (ByteTrack's `linear_assignment`), without
 * building the (rows+cols)² extended matrix.
 * @returns for each row its column, or -1
 * @example
 * matchWithin([0.1, 0.9, 0.95, 0.2], 2, 2, 0.8); // Int32Array [0, 1]
 * matchWithin([0.9, 0.1], 2, 1, 0.8);           // Int32Array [-1, 0]
 */
export function matchWithin(cost: ArrayLike<number>, rows: number, cols: number, maxCost: number): Int32Array {
  const size = rows * cols;
  if (scratch.length < size) scratch = new Float64Array(Math.max(size, scratch.length * 2));
  // A clamped pair costs exactly what leaving its row unmatched costs, so clamping keeps the optimum.
  const limit = maxCost + 1e-9;
  for (let k = 0; k < size; k++) scratch[k] = cost[k] < limit ? cost[k] : limit;
  const out = solveAssignment(scratch, rows, cols);
  for (let i = 0; i < rows; i++) if (out[i] >= 0 && !(cost[i * cols + out[i]] <= maxCost)) out[i] = -1;
  return out;
}

/**
 * Total cost of an assignment as returned by {@link solveAssignment}.
 * @example
 * assignmentCost([4, 1, 3, 2, 0, 5, 3, 2, 2], 3, solveAssignment([4, 1, 3, 2, 0, 5, 3, 2, 2], 3, 3)); // 5
 */
export function assignmentCost(cost: ArrayLike<number>, cols: number, rowToCol: Int32Array): number {
  let total = 0;
  for (let i = 0; i < rowToCol.length; i++) if (rowToCol[i] >= 0) total += cost[i * cols + rowToCol[i]];
  return total;
}
