/**
 * `bun run eval mot --gt FILE --pred FILE [--iou 0.5]`: CLEAR-MOT and
 * identity metrics of a tracker's MOTChallenge text output against ground
 * truth, computed as the official MOTChallenge evaluation (TrackEval) does.
 */
import { parseArgs } from "node:util";
import { solveAssignment } from "../tracking/assignment.ts";
import { ConfigError } from "../core/errors.ts";
import { readText } from "../platform/index.ts";

/** One parsed line of a MOTChallenge file. */
export interface MotRow {
  frame: number;
  id: number;
  /** x, y, w, h in pixels (top-left corner, size). */
  box: [number, number, number, number];
  /** Column 7: confidence in results; in ground truth 0 marks a box not to be evaluated. */
  flag: number;
  /** Column 8 in ground truth (1 = pedestrian), 1 when absent or −1. */
  cls: number;
}

export interface MotMetrics {
  frames: number;
  gt: number;
  pred: number;
  mota: number;
  motp: number;
  idf1: number;
  idp: number;
  idr: number;
  idsw: number;
  fp: number;
  fn: number;
  tp: number;
  recall: number;
  precision: number;
  gtIds: number;
  predIds: number;
  /** Ground-truth trajectories tracked for ≥ 80 %, 20–80 %, < 20 % of their frames. */
  mt: number;
  pt: number;
  ml: number;
}

/** MOTChallenge classes whose matched predictions are ignored, not counted as false positives. */
const DISTRACTORS = new Set([2, 7, 8, 12]);
const PEDESTRIAN = 1;
const EPS = 1e-9;

/**
 * Parses MOTChallenge text (`frame,id,x,y,w,h[,conf|flag[,class[,visibility,...]]]`).
 * @throws ConfigError naming `file:line` for a malformed line or a repeated (frame, id)
 * @example
 * parseMot("1,1,10,20,30,40,1,1,1\n", "gt.txt"); // [{ frame: 1, id: 1, box: [10, 20, 30, 40], flag: 1, cls: 1 }]
 */
export function parseMot(text: string, file: string): MotRow[] {
  const rows: MotRow[] = [];
  const seen = new Set<string>();
  const lines = text.split("\n");
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n].trim();
    if (!line) continue;
    const at = `${file}:${n + 1}`;
    const cols = line.split(/\s*,\s*/).map(Number);
    if (cols.length < 6 || cols.some((c) => !Number.isFinite(c))) {
      throw new ConfigError(`${at}: expected comma-separated numbers frame,id,x,y,w,h[,conf,...], got "${line.slice(0, 80)}"`);
    }
    const [frame, id, x, y, w, h] = cols;
    if (!Number.isInteger(frame) || frame < 1) throw new ConfigError(`${at}: frame must be an integer >= 1, got ${frame}`);
    if (!Number.isInteger(id) || id < 0) throw new ConfigError(`${at}: id must be an integer >= 0, got ${id}`);
    if (w < 0 || h < 0) throw new ConfigError(`${at}: width and height must not be negative, got ${w}x${h}`);
    const key = `${frame}:${id}`;
    if (seen.has(key)) throw new ConfigError(`${at}: id ${id} appears twice in frame ${frame}`);
    seen.add(key);
    const cls = cols.length >= 8 && cols[7] !== -1 ? cols[7] : PEDESTRIAN;
    rows.push({ frame, id, box: [x, y, w, h], flag: cols.length >= 7 ? cols[6] : 1, cls });
  }
  return rows;
}

function iou(a: MotRow["box"], b: MotRow["box"]): number {
  const w = Math.min(a[0] + a[2], b[0] + b[2]) - Math.max(a[0], b[0]);
  const h = Math.min(a[1] + a[3], b[1] + b[3]) - Math.max(a[1], b[1]);
  if (w <= 0 || h <= 0) return 0;
  const inter = w * h;
  return inter / (a[2] * a[3] + b[2] * b[3] - inter);
}

function byFrame(rows: MotRow[]): Map<number, MotRow[]> {
  const m = new Map<number, MotRow[]>();
  for (const r of rows) {
    const list = m.get(r.frame);
    if (list) list.push(r);
    else m.set(r.frame, [r]);
  }
  return m;
}

/** Row → column pairs maximising the total of `score` (row-major), keeping pairs scoring above zero. */
function bestPairs(score: Float64Array, rows: number, cols: number): [number, number][] {
  const cost = score.map((s) => -s);
  const match = solveAssignment(cost, rows, cols);
  const pairs: [number, number][] = [];
  for (let i = 0; i < rows; i++) if (match[i] >= 0 && score[i * cols + match[i]] > EPS) pairs.push([i, match[i]]);
  return pairs;
}

function similarities(gt: MotRow[], pred: MotRow[], thr: number): Float64Array {
  const s = new Float64Array(gt.length * pred.length);
  for (let i = 0; i < gt.length; i++) {
    for (let j = 0; j < pred.length; j++) {
      const v = iou(gt[i].box, pred[j].box);
      s[i * pred.length + j] = v >= thr - EPS ? v : 0;
    }
  }
  return s;
}

/**
 * CLEAR-MOT (MOTA, MOTP, FP, FN, ID switches, MT/PT/ML) and identity
 * metrics (IDF1 with a global optimal ID assignment) at an IoU threshold.
 * Ground truth with flag 0 or a non-pedestrian class is not evaluated, and
 * predictions matching a distractor class are dropped, as MOTChallenge does.
 * @example
 * const m = evaluateMot(parseMot(gtText, "gt.txt"), parseMot(predText, "pred.txt"), 0.5);
 * console.log(m.mota, m.idf1);
 */
export function evaluateMot(gtRows: MotRow[], predRows: MotRow[], thr = 0.5): MotMetrics {
  const gtFrames = byFrame(gtRows);
  const predFrames = byFrame(predRows);
  let frames = 0;
  for (const f of [...gtFrames.keys(), ...predFrames.keys()]) frames = Math.max(frames, f);

  // Per frame: drop predictions matched to distractors, keep evaluated ground truth.
  const gtBy: MotRow[][] = [];
  const predBy: MotRow[][] = [];
  for (let f = 1; f <= frames; f++) {
    const g = gtFrames.get(f) ?? [];
    let p = predFrames.get(f) ?? [];
    if (g.some((r) => DISTRACTORS.has(r.cls)) && p.length) {
      const drop = new Set<number>();
      for (const [i, j] of bestPairs(similarities(g, p, 0.5), g.length, p.length)) if (DISTRACTORS.has(g[i].cls)) drop.add(j);
      p = p.filter((_, j) => !drop.has(j));
    }
    gtBy.push(g.filter((r) => r.flag !== 0 && r.cls === PEDESTRIAN));
    predBy.push(p);
  }

  const gtIndex = new Map<number, number>();
  const predIndex = new Map<number, number>();
  for (const list of gtBy) for (const r of list) if (!gtIndex.has(r.id)) gtIndex.set(r.id, gtIndex.size);
  for (const list of predBy) for (const r of list) if (!predIndex.has(r.id)) predIndex.set(r.id, predIndex.size);
  const G = gtIndex.size;
  const P = predIndex.size;
  const gtCount = new Float64Array(G);
  const matchedCount = new Float64Array(G);
  const potential = new Float64Array(G * P);
  const lastMatch = new Int32Array(G).fill(-1);
  let prevStep = new Int32Array(G).fill(-1);
  let tp = 0, fp = 0, fn = 0, idsw = 0, motpSum = 0, numPred = 0;

  for (let f = 0; f < frames; f++) {
    const g = gtBy[f];
    const p = predBy[f];
    numPred += p.length;
    const gi = g.map((r) => gtIndex.get(r.id)!);
    const pj = p.map((r) => predIndex.get(r.id)!);
    for (const i of gi) gtCount[i]++;
    const sim = similarities(g, p, thr);
    // Identity: every pair that could match counts, not only the ones chosen this frame.
    for (let a = 0; a < g.length; a++) for (let b = 0; b < p.length; b++) if (sim[a * p.length + b] > 0) potential[gi[a] * P + pj[b]]++;
    // CLEAR: keep last frame's correspondences whenever still valid, then maximise overlap.
    const score = new Float64Array(sim.length);
    for (let a = 0; a < g.length; a++) {
      for (let b = 0; b < p.length; b++) {
        const s = sim[a * p.length + b];
        if (s > 0) score[a * p.length + b] = s + (prevStep[gi[a]] === pj[b] ? 1000 : 0);
      }
    }
    const pairs = bestPairs(score, g.length, p.length);
    const step = new Int32Array(G).fill(-1);
    for (const [a, b] of pairs) {
      const gid = gi[a];
      if (lastMatch[gid] >= 0 && lastMatch[gid] !== pj[b]) idsw++;
      lastMatch[gid] = pj[b];
      step[gid] = pj[b];
      matchedCount[gid]++;
      motpSum += sim[a * p.length + b];
    }
    prevStep = step;
    tp += pairs.length;
    fn += g.length - pairs.length;
    fp += p.length - pairs.length;
  }

  // IDF1: the one-to-one ID mapping maximising identity true positives (equivalently minimising IDFP + IDFN).
  let idtp = 0;
  if (G && P) for (const [i, j] of bestPairs(potential, G, P)) idtp += potential[i * P + j];
  const numGt = tp + fn;
  if (numGt === 0) throw new ConfigError("the ground truth has no boxes to evaluate (all flagged 0 or not pedestrians)");
  let mt = 0, pt = 0, ml = 0;
  for (let i = 0; i < G; i++) {
    const ratio = matchedCount[i] / gtCount[i];
    if (ratio >= 0.8) mt++;
    else if (ratio >= 0.2) pt++;
    else ml++;
  }
  const div = (a: number, b: number) => (b > 0 ? a / b : 0);
  return {
    frames,
    gt: numGt,
    pred: numPred,
    mota: 1 - (fn + fp + idsw) / numGt,
    motp: div(motpSum, tp),
    idf1: div(2 * idtp, numGt + numPred),
    idp: div(idtp, numPred),
    idr: div(idtp, numGt),
    idsw,
    fp,
    fn,
    tp,
    recall: div(tp, numGt),
    precision: div(tp, numPred),
    gtIds: G,
    predIds: P,
    mt,
    pt,
    ml,
  };
}

/**
 * A small aligned table of the headline metrics (percentages and counts).
 * @example
 * console.log(formatMotTable(evaluateMot(gt, pred)));
 */
export function formatMotTable(m: MotMetrics): string {
  const pct = (x: number) => (100 * x).toFixed(1);
  const head = ["MOTA", "IDF1", "MOTP", "IDP", "IDR", "Rcll", "Prcn", "IDsw", "FP", "FN", "MT", "PT", "ML", "GT ids", "frames"];
  const row = [pct(m.mota), pct(m.idf1), pct(m.motp), pct(m.idp), pct(m.idr), pct(m.recall), pct(m.precision), m.idsw, m.fp, m.fn, m.mt, m.pt, m.ml, m.gtIds, m.frames].map(String);
  const w = head.map((h, i) => Math.max(h.length, row[i].length));
  return [head, row].map((r) => r.map((c, i) => c.padStart(w[i])).join("  ")).join("\n");
}

const USAGE = "usage: bun run eval mot --gt FILE --pred FILE [--iou 0.5]";

/**
 * Command-line entry: prints the table, then one JSON line with every metric.
 * @returns the exit code (0)
 * @throws ConfigError for bad flags or input files (the CLI exits 2)
 * @example
 * await runMotEval(["--gt", "gt.txt", "--pred", "out/mot.txt"]);
 */
export async function runMotEval(args: string[]): Promise<number> {
  let values: { gt?: string; pred?: string; iou?: string };
  try {
    ({ values } = parseArgs({ args, options: { gt: { type: "string" }, pred: { type: "string" }, iou: { type: "string" } } }));
  } catch (err) {
    throw new ConfigError(`${(err as Error).message}\n${USAGE}`);
  }
  if (!values.gt || !values.pred) throw new ConfigError(`--gt and --pred are required\n${USAGE}`);
  const thr = values.iou === undefined ? 0.5 : Number(values.iou);
  if (!(thr > 0 && thr <= 1)) throw new ConfigError(`--iou: expected a number in (0, 1], got "${values.iou}"`);
  const read = async (file: string) => {
    try {
      return parseMot(await readText(file), file);
    } catch (err) {
      if (err instanceof ConfigError) throw err;
      throw new ConfigError(`${file}: cannot read (${(err as Error).message})`);
    }
  };
  const gt = await read(values.gt);
  const pred = await read(values.pred);
  let m: MotMetrics;
  try {
    m = evaluateMot(gt, pred, thr);
  } catch (err) {
    throw err instanceof ConfigError ? new ConfigError(`${values.gt}: ${err.message}`) : err;
  }
  console.log(formatMotTable(m));
  const round = (x: number) => Math.round(x * 1e6) / 1e6;
  console.log(JSON.stringify(Object.fromEntries(Object.entries(m).map(([k, x]) => [k, round(x)]))));
  return 0;
}
