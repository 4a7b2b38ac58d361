import * as v from "valibot";
import { matchWithin } from "../runtime/tracking/assignment.ts";
import { kalmanInit, kalmanPredict, kalmanUpdate } from "../runtime/tracking/kalman.ts";
import { derive, type Detection, type Frame, type TrackInfo } from "../runtime/core/message.ts";
import { defineOperator } from "../runtime/core/operator.ts";

const Score = v.pipe(v.number(), v.minValue(0), v.maxValue(1));

const Options = v.pipe(
  v.strictObject({
    method: v.optional(
      v.pipe(
        v.picklist(["bytetrack", "sort"]),
        v.description("bytetrack: two-stage association (high, then low scores); sort: one stage on high scores, cheaper."),
      ),
      "bytetrack",
    ),
    trackThresh: v.optional(
      v.pipe(Score, v.description('Detections at or above this score are "high" (first stage, may start tracks).')),
      0.5,
    ),
    lowThresh: v.optional(
      v.pipe(
        Score,
        v.description("Detections below this score are ignored; between it and trackThresh they only continue tracks (bytetrack)."),
      ),
      0.1,
    ),
    newTrackThresh: v.optional(v.pipe(Score, v.description("Least score of an unmatched high detection that starts a new track.")), 0.6),
    matchThresh: v.optional(
      v.pipe(Score, v.description("Largest matching cost, 1 − IoU (× score for bytetrack), of a first-stage match.")),
      0.8,
    ),
    buffer: v.optional(
      v.pipe(
        v.number(),
        v.integer(),
        v.minValue(1),
        v.maxValue(100_000),
        v.description("Frames a lost track is kept for re-identification before it is dropped."),
      ),
      30,
    ),
    minHits: v.optional(
      v.pipe(
        v.number(),
        v.integer(),
        v.minValue(1),
        v.maxValue(1000),
        v.description(
          "Consecutive matches before a new track is confirmed and gets an id (tracks on a stream's first frame are confirmed at once).",
        ),
      ),
      2,
    ),
    classes: v.optional(
      v.pipe(
        v.array(v.string()),
        v.minLength(1),
        v.description("Track only these class names (default: all); other detections pass through untouched."),
      ),
    ),
    agnostic: v.optional(
      v.pipe(
        v.boolean(),
        v.description("Match detections to tracks of another class too (a track then takes its latest detection's class)."),
      ),
      false,
    ),
  }),
  v.check((o) => o.lowThresh <= o.trackThresh, "lowThresh must not exceed trackThresh"),
);
type Options = v.InferOutput<typeof Options>;

/** ByteTrack's fixed thresholds for the second (low-score) and unconfirmed-track stages, and duplicate removal. */
const LOW_MATCH = 0.5;
const TENTATIVE_MATCH = 0.7;
const DUPLICATE_IOU = 0.85;
/** Any cost above every threshold: pairs of different classes. */
const FORBIDDEN = 2;

interface Track {
  /** 0 while tentative. */
  id: number;
  classId: number;
  className: string;
  score: number;
  mean: Float64Array;
  cov: Float64Array;
  /** [x1, y1, x2, y2] from the mean, refreshed after every predict/update. */
  box: Float64Array;
  lost: boolean;
  hits: number;
  start: number;
  lastSeen: number;
}

interface StreamState {
  tracks: Track[];
  nextId: number;
  lastSeq: number;
  frames: number;
}

/** Per-frame candidates, grown on demand and shared (process() never awaits). */
let detBox = new Float64Array(256);
let costBuf = new Float64Array(1024);
const z = new Float64Array(4);

function iou(a: ArrayLike<number>, ai: number, b: ArrayLike<number>, bi: number): number {
  const w = Math.min(a[ai + 2], b[bi + 2]) - Math.max(a[ai], b[bi]);
  if (w <= 0) return 0;
  const h = Math.min(a[ai + 3], b[bi + 3]) - Math.max(a[ai + 1], b[bi + 1]);
  if (h <= 0) return 0;
  const inter = w * h;
  const union = (a[ai + 2] - a[ai]) * (a[ai + 3] - a[ai + 1]) + (b[bi + 2] - b[bi]) * (b[bi + 3] - b[bi + 1]) - inter;
  return union > 0 ? inter / union : 0;
}

/** [x1, y1, x2, y2] → [cx, cy, w/h, h] into `z`. */
function toXyah(b: Float64Array, i: number): Float64Array {
  const w = b[i + 2] - b[i];
  const h = b[i + 3] - b[i + 1];
  z[0] = b[i] + w / 2;
  z[1] = b[i + 1] + h / 2;
  z[2] = w / h;
  z[3] = h;
  return z;
}

function refreshBox(t: Track): void {
  const m = t.mean;
  const cx = m[0],
    cy = m[1],
    h = m[3];
  const w = m[2] * h;
  t.box[0] = cx - w / 2;
  t.box[1] = cy - h / 2;
  t.box[2] = cx + w / 2;
  t.box[3] = cy + h / 2;
}

/**
 * Multi-object tracking per stream: ByteTrack (Zhang et al., 2022) or SORT
 * (Bewley et al., 2016) — Kalman motion model, optimal IoU assignment.
 * `update` returns the frame's detections with `trackId` where tracked (new
 * objects; the frame is not touched) and the confirmed tracks.
 * @example
 * import op, { createTracker } from "./tracker.ts";
 * const tracker = createTracker(v.parse(op.options, { method: "bytetrack" }));
 * const { detections, tracks } = tracker.update(frame);
 */
export function createTracker(o: Options) {
  const byte = o.method === "bytetrack";
  const allowed = o.classes ? new Set(o.classes) : undefined;
  const streams = new Map<string, StreamState>();

  /**
   * Optimal matching of tracks `ti` to candidates `di` (indices into detBox/dets);
   * matched pairs are passed to `onMatch`, the leftovers are returned.
   */
  function associate(
    tracks: Track[],
    ti: number[],
    dets: readonly Detection[],
    di: number[],
    fuse: boolean,
    thresh: number,
    onMatch: (t: Track, d: number) => void,
  ) {
    const rows = ti.length;
    const cols = di.length;
    if (rows === 0 || cols === 0) return { tracks: ti, dets: di };
    if (costBuf.length < rows * cols) costBuf = new Float64Array(rows * cols * 2);
    for (let r = 0; r < rows; r++) {
      const t = tracks[ti[r]];
      for (let c = 0; c < cols; c++) {
        const d = dets[di[c]];
        const k = r * cols + c;
        if (!o.agnostic && d.classId !== t.classId) costBuf[k] = FORBIDDEN;
        else costBuf[k] = 1 - iou(t.box, 0, detBox, di[c] * 4) * (fuse ? d.score : 1);
      }
    }
    const match = matchWithin(costBuf.subarray(0, rows * cols), rows, cols, thresh);
    const taken = new Uint8Array(cols);
    const leftTracks: number[] = [];
    for (let r = 0; r < rows; r++) {
      if (match[r] < 0) leftTracks.push(ti[r]);
      else {
        taken[match[r]] = 1;
        onMatch(tracks[ti[r]], di[match[r]]);
      }
    }
    return { tracks: leftTracks, dets: di.filter((_, c) => !taken[c]) };
  }

  /** Tracks one frame; returns its detections with track ids and the confirmed tracks. */
  function update(f: Frame): { detections: Detection[]; tracks: TrackInfo[] } {
    let s = streams.get(f.stream);
    if (!s || f.seq <= s.lastSeq) {
      // New stream, or its source restarted (sequence went back): start over, keeping ids unique.
      s = { tracks: [], nextId: s?.nextId ?? 1, lastSeq: f.seq - 1, frames: 0 };
      streams.set(f.stream, s);
    }
    const seq = f.seq;
    const steps = Math.min(seq - s.lastSeq, o.buffer + 1);
    s.lastSeq = seq;
    s.frames++;
    const st = s;

    // Candidates: indices into f.detections, boxes copied into detBox.
    const dets: { -readonly [K in keyof Detection]: Detection[K] }[] = (f.detections ?? []).map((d) => ({ ...d }));
    if (detBox.length < dets.length * 4) detBox = new Float64Array(dets.length * 8);
    const high: number[] = [];
    const low: number[] = [];
    for (let i = 0; i < dets.length; i++) {
      const d = dets[i];
      const [x1, y1, x2, y2] = d.box;
      if (d.score < o.lowThresh || (allowed && !allowed.has(d.class)) || !(x2 > x1 && y2 > y1)) continue;
      detBox.set(d.box, i * 4);
      if (d.score >= o.trackThresh) high.push(i);
      else if (byte) low.push(i);
    }

    const tracks = s.tracks;
    const pool: number[] = [];
    const tentative: number[] = [];
    const wasTracked = new Uint8Array(tracks.length);
    for (let i = 0; i < tracks.length; i++) {
      const t = tracks[i];
      // ByteTrack freezes the height velocity of lost tracks so their boxes do not blow up.
      if (t.lost) t.mean[7] = 0;
      for (let k = 0; k < steps; k++) kalmanPredict(t.mean, t.cov);
      refreshBox(t);
      if (t.id === 0) tentative.push(i);
      else {
        pool.push(i);
        wasTracked[i] = t.lost ? 0 : 1;
      }
    }

    const matched = (t: Track, d: number) => {
      kalmanUpdate(t.mean, t.cov, toXyah(detBox, d * 4));
      refreshBox(t);
      t.lost = false;
      t.hits++;
      t.lastSeen = seq;
      t.score = dets[d].score;
      if (o.agnostic) [t.classId, t.className] = [dets[d].classId, dets[d].class];
      if (t.id === 0 && t.hits >= o.minHits) t.id = st.nextId++;
      if (t.id !== 0) dets[d].trackId = t.id;
    };

    // 1: high-score detections against every confirmed track, tracked or lost.
    const first = associate(tracks, pool, dets, high, byte, o.matchThresh, matched);
    // 2 (bytetrack): low-score detections continue tracks that were tracked until now.
    let unmatched = first.tracks;
    if (byte) {
      const stillTracked = first.tracks.filter((i) => wasTracked[i]);
      const second = associate(tracks, stillTracked, dets, low, false, LOW_MATCH, matched);
      unmatched = second.tracks.concat(first.tracks.filter((i) => !wasTracked[i]));
    }
    for (const i of unmatched) tracks[i].lost = true;
    // 3: tentative tracks against the remaining high detections; unmatched tentative ones die.
    const third = associate(tracks, tentative, dets, first.dets, byte, byte ? TENTATIVE_MATCH : o.matchThresh, matched);
    const dead = new Set(third.tracks);

    for (const d of third.dets) {
      if (dets[d].score < o.newTrackThresh) continue;
      const t: Track = {
        id: 0,
        classId: dets[d].classId,
        className: dets[d].class,
        score: dets[d].score,
        mean: new Float64Array(8),
        cov: new Float64Array(64),
        box: new Float64Array(detBox.subarray(d * 4, d * 4 + 4)),
        lost: false,
        hits: 1,
        start: seq,
        lastSeen: seq,
      };
      kalmanInit(toXyah(detBox, d * 4), t.mean, t.cov);
      if (o.minHits <= 1 || st.frames === 1) {
        t.id = st.nextId++;
        dets[d].trackId = t.id;
      }
      tracks.push(t);
    }

    let alive = tracks.filter((t, i) => !dead.has(i) && seq - t.lastSeen <= o.buffer);
    if (byte) alive = dropDuplicates(alive);
    s.tracks = alive;

    const out: TrackInfo[] = [];
    for (const t of alive) {
      if (t.id === 0) continue;
      out.push({
        id: t.id,
        box: [t.box[0], t.box[1], t.box[2], t.box[3]],
        state: t.lost ? "lost" : "tracked",
        age: seq - t.start + 1,
        hits: t.hits,
        class: t.className,
        score: t.score,
      });
    }
    return { detections: dets, tracks: out };
  }

  /** Frees a stream's tracks (the stream ended or was removed). */
  function forget(stream: string): void {
    streams.delete(stream);
  }

  return { update, forget };
}

/** A lost track overlapping a tracked one almost entirely is the same object twice: keep the older. */
function dropDuplicates(tracks: Track[]): Track[] {
  const drop = new Set<Track>();
  for (const p of tracks) {
    if (p.lost || p.id === 0) continue;
    for (const q of tracks) {
      if (!q.lost || q.id === 0 || iou(p.box, 0, q.box, 0) <= DUPLICATE_IOU) continue;
      drop.add(p.lastSeen - p.start > q.lastSeen - q.start ? q : p);
    }
  }
  return drop.size ? tracks.filter((t) => !drop.has(t)) : tracks;
}

/**
 * Gives detections stable per-stream track ids. Tracked detections get
 * `trackId`; the frame also gets `meta.tracks` (every confirmed track).
 */
export default defineOperator({
  name: "tracker",
  kind: "transform",
  stateful: true,
  description: "Track detections across frames (ByteTrack or SORT: Kalman filter + optimal IoU assignment); adds trackId and frame.meta.tracks.",
  options: Options,
  create(o) {
    const tracker = createTracker(o);
    return {
      process(msg) {
        if (msg.kind !== "frame") {
          if (msg.type === "stream-end") tracker.forget(msg.stream);
          return msg;
        }
        const { detections, tracks } = tracker.update(msg);
        return derive(msg, { detections, meta: { tracks } });
      },
    };
  },
});
