import * as v from "valibot";
import { rename } from "node:fs/promises";
import type { Event, Frame, Message } from "../runtime/core/message.ts";
import { defineOperator, type GeometryControl, type Overlays, type StreamGeometry, type ZoneTotals } from "../runtime/core/operator.ts";
import { codedError } from "../runtime/core/errors.ts";
import { exists, readText } from "../runtime/platform/index.ts";
import { writeFileAtomic } from "../runtime/platform/atomic-file.ts";

const Norm = v.pipe(v.number(), v.minValue(0), v.maxValue(1));
const Point = v.tuple([Norm, Norm]);
const Id = v.pipe(v.string(), v.regex(/^[\w-]+$/, "expected an id of letters, digits, _ and -"));
const Line = v.pipe(
  v.strictObject({ id: Id, from: Point, to: Point }),
  v.check((l) => l.from[0] !== l.to[0] || l.from[1] !== l.to[1], "a line's from and to must differ"),
);
const unique = <T extends { id: string }>(items: T[]) => new Set(items.map((i) => i.id)).size === items.length;

const LinesOption = v.optional(
  v.pipe(
    v.array(Line),
    v.check(unique, "line ids must be unique"),
    v.description(
      "Directed counting lines in normalised image coordinates (0..1). A track moving to the right-hand side of from→to (as drawn on the image, y down) counts `in`, the reverse `out`: a line drawn left to right counts people walking down the image as `in`.",
    ),
  ),
  [],
);
const ZonesOption = v.optional(
  v.pipe(
    v.array(v.strictObject({ id: Id, polygon: v.pipe(v.array(Point), v.minLength(3)) })),
    v.check(unique, "zone ids must be unique"),
    v.description("Polygons in normalised image coordinates (0..1), at least 3 points."),
  ),
  [],
);

const Options = v.pipe(
  v.strictObject({
    lines: LinesOption,
    zones: ZonesOption,
    streams: v.optional(
      v.pipe(
        v.record(v.pipe(v.string(), v.regex(/^[\w-]+$/, "expected a stream id")), v.strictObject({ lines: v.optional(LinesOption.wrapped), zones: v.optional(ZonesOption.wrapped) })),
        v.description("Per-stream geometry: `{ <stream id>: { lines, zones } }`; streams not listed use the stage's lines and zones."),
      ),
    ),
    anchor: v.optional(
      v.pipe(
        v.picklist(["bottom-center", "center"]),
        v.description("The point of a box that stands for the track: its bottom centre (the feet) or its centre."),
      ),
      "bottom-center",
    ),
    classes: v.optional(
      v.pipe(v.array(v.string()), v.minLength(1), v.description("Count only these class names (default: all tracked detections).")),
    ),
    margin: v.optional(
      v.pipe(
        v.number(),
        v.minValue(0),
        v.maxValue(0.5),
        v.description("Half-width of the dead band around each line (normalised units): moves inside it change no side."),
      ),
      0.01,
    ),
    minFrames: v.optional(
      v.pipe(
        v.number(),
        v.integer(),
        v.minValue(1),
        v.maxValue(1000),
        v.description("Frames a track must stay on a new side (or in/out of a zone) before it counts: jitter never does."),
      ),
      2,
    ),
    fps: v.optional(
      v.pipe(
        v.number(),
        v.minValue(0.01),
        v.maxValue(1000),
        v.description(
          "Frame rate of file sources: their stream time is then seq/fps, exact at any processing speed (a file frame's capture time is when it was decoded). Live frames, and files without it, use capture time.",
        ),
      ),
    ),
    countsInterval: v.optional(
      v.pipe(v.number(), v.minValue(0.1), v.description("Seconds of stream time between `counts` events (and log lines).")),
      10,
    ),
    lostAfter: v.optional(
      v.pipe(v.number(), v.minValue(0.1), v.description("Seconds a track may go unseen before it is forgotten (leaving its zones).")),
      5,
    ),
    state: v.optional(
      v.pipe(
        v.string(),
        v.minLength(1),
        v.description("JSON file keeping the totals across restarts (written atomically, at most once a second, and at close)."),
      ),
    ),
  }),
  v.check(
    (o) => o.lines.length + o.zones.length > 0 || Object.values(o.streams ?? {}).some((g) => (g.lines?.length ?? 0) + (g.zones?.length ?? 0) > 0),
    "give at least one line or zone (for all streams, or per stream under streams)",
  ),
);
type Options = v.InferOutput<typeof Options>;

/** A stream's geometry set at runtime (`geometry.set`, PUT /api/zones/:stage/streams/:id): the same rules as the options. */
const StreamGeometrySchema = v.strictObject({ lines: LinesOption, zones: ZonesOption });
/** Geometry given at runtime that breaks the options' rules (E_GEOMETRY). */
const GeometryError = codedError("GeometryError", "E_GEOMETRY");

/** Totals per stream as kept in the state file. */
interface SavedCounts {
  lines: Record<string, { in: number; out: number }>;
  zones: Record<string, { entries: number }>;
}
interface StateFile {
  version: 1;
  streams: Record<string, SavedCounts>;
}

interface TrackMemo {
  cls: string;
  lastSeen: number;
  /** Per line: committed side (−1, 0 = not yet known, +1), the side it is moving to and for how many frames. */
  side: Int8Array;
  pend: Int8Array;
  pendN: Uint16Array;
  /** Per line: last anchor on the committed side (x, y), where a crossing path starts. */
  last: Float64Array;
  /** Per zone: inside (committed), frames of the opposite state, when that streak began, when it entered. */
  inside: Uint8Array;
  zPendN: Uint16Array;
  zPendSince: Float64Array;
  enteredAt: Float64Array;
}

/** A stream's lines and zones, and what is computed from them once. */
interface Geometry {
  lines: Options["lines"];
  zones: Options["zones"];
  /** Per line: start point, unit direction and length. */
  geo: Float64Array;
  polys: Float64Array[];
}

function makeGeometry(lines: Options["lines"], zones: Options["zones"]): Geometry {
  const geo = new Float64Array(lines.length * 5);
  lines.forEach(({ from, to }, i) => {
    const len = Math.hypot(to[0] - from[0], to[1] - from[1]);
    geo.set([from[0], from[1], (to[0] - from[0]) / len, (to[1] - from[1]) / len, len], i * 5);
  });
  return { lines, zones, geo, polys: zones.map((z) => new Float64Array(z.polygon.flat())) };
}

interface StreamState {
  g: Geometry;
  crossIn: Float64Array;
  crossOut: Float64Array;
  entries: Float64Array;
  occupancy: Int32Array;
  tracks: Map<number, TrackMemo>;
  lastCounts: number;
}

/** Even–odd rule on a flat [x0, y0, x1, y1, ...] polygon. */
function inPolygon(x: number, y: number, poly: Float64Array): boolean {
  let inside = false;
  const n = poly.length / 2;
  for (let i = 0, j = n - 1; i < n; j = i++) {
    const xi = poly[2 * i],
      yi = poly[2 * i + 1],
      xj = poly[2 * j],
      yj = poly[2 * j + 1];
    if (yi > y !== yj > y && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

/** The state file's totals, or an empty state when there is none; an unreadable one is moved aside. */
async function loadState(path: string, warn: (m: string) => void): Promise<StateFile> {
  if (!(await exists(path))) return { version: 1, streams: {} };
  try {
    const s = JSON.parse(await readText(path)) as StateFile;
    if (s?.version === 1 && typeof s.streams === "object" && s.streams) return s;
    throw new Error("not a zones state file (version 1)");
  } catch (err) {
    await rename(path, `${path}.corrupt`);
    warn(`${path}: ${(err as Error).message}; moved to ${path}.corrupt, counting from zero`);
    return { version: 1, streams: {} };
  }
}

/**
 * Counts line crossings and zone visits per track and emits them as events;
 * periodic `counts` events carry the totals.
 */
export default defineOperator({
  name: "zones",
  kind: "transform",
  stateful: true,
  description:
    "Line crossings (in/out) and zone enter/exit/dwell/occupancy per track, as events; periodic counts; totals survive restarts.",
  options: Options,
  overlays: (o) => ({
    lines: o.lines.map((l) => ({ id: l.id, from: [l.from[0], l.from[1]], to: [l.to[0], l.to[1]] })),
    zones: o.zones.map((z) => ({ id: z.id, polygon: z.polygon.map((p) => [p[0], p[1]] as [number, number]) })),
  }),
  async create(o, ctx) {
    /** Per stream: its lines and zones (the stage's unless `streams` gives its own), with what is computed once. */
    const geometries = new Map<string, Geometry>();
    const geometryOf = (id: string): Geometry => {
      let g = geometries.get(id);
      if (!g) geometries.set(id, (g = makeGeometry(o.streams?.[id]?.lines ?? o.lines, o.streams?.[id]?.zones ?? o.zones)));
      return g;
    };
    const allowed = o.classes ? new Set(o.classes) : undefined;
    const saved: StateFile = o.state ? await loadState(o.state, (m) => ctx.log.warn(m)) : { version: 1, streams: {} };
    const streams = new Map<string, StreamState>();
    let dirty = false;
    let lastWrite = 0;
    let writing: Promise<void> = Promise.resolve();

    function stream(id: string, now: number): StreamState {
      let s = streams.get(id);
      if (s) return s;
      const prev = saved.streams[id];
      const g = geometryOf(id);
      s = {
        g,
        crossIn: Float64Array.from(g.lines, (l) => prev?.lines?.[l.id]?.in ?? 0),
        crossOut: Float64Array.from(g.lines, (l) => prev?.lines?.[l.id]?.out ?? 0),
        entries: Float64Array.from(g.zones, (z) => prev?.zones?.[z.id]?.entries ?? 0),
        occupancy: new Int32Array(g.zones.length),
        tracks: new Map(),
        lastCounts: now,
      };
      streams.set(id, s);
      return s;
    }

    function totals(s: StreamState): SavedCounts {
      const out: SavedCounts = { lines: {}, zones: {} };
      s.g.lines.forEach((l, i) => (out.lines[l.id] = { in: s.crossIn[i], out: s.crossOut[i] }));
      s.g.zones.forEach((z, i) => (out.zones[z.id] = { entries: s.entries[i] }));
      return out;
    }

    function save(): Promise<void> {
      if (!o.state || !dirty) return writing;
      dirty = false;
      lastWrite = Date.now();
      for (const [id, s] of streams) saved.streams[id] = totals(s);
      const path = o.state;
      const snapshot = structuredClone(saved);
      writing = writing.then(() => writeFileAtomic(path, JSON.stringify(snapshot, null, 1))).catch((e) => ctx.log.error(`writing ${path}: ${(e as Error).message}`));
      return writing;
    }

    function countsLine(id: string, s: StreamState): string {
      const parts = [
        ...s.g.lines.map((l, i) => `${l.id} in ${s.crossIn[i]} out ${s.crossOut[i]}`),
        ...s.g.zones.map((z, i) => `${z.id} ${s.occupancy[i]} inside, ${s.entries[i]} entered`),
      ];
      return `counts ${id}: ${parts.join(" | ")}`;
    }

    function memo(cls: string, L: number, Z: number): TrackMemo {
      return {
        cls,
        lastSeen: 0,
        side: new Int8Array(L),
        pend: new Int8Array(L),
        pendN: new Uint16Array(L),
        last: new Float64Array(L * 2),
        inside: new Uint8Array(Z),
        zPendN: new Uint16Array(Z),
        zPendSince: new Float64Array(Z),
        enteredAt: new Float64Array(Z),
      };
    }

    function onFrame(f: Frame): Message[] {
      const now = o.fps && !f.live ? (f.seq * 1000) / o.fps : f.ts;
      const s = stream(f.stream, now);
      const { lines, zones, geo, polys } = s.g;
      const L = lines.length;
      const Z = zones.length;
      const events: Event[] = [];
      const emit = (type: string, data: Record<string, unknown>) =>
        events.push({ kind: "event", stream: f.stream, seq: f.seq, ts: f.ts, type, data });
      const W = f.image.width;
      const H = f.image.height;

      for (const d of f.detections ?? []) {
        const id = d.trackId;
        if (id === undefined || (allowed && !allowed.has(d.class))) continue;
        let t = s.tracks.get(id);
        if (!t) s.tracks.set(id, (t = memo(d.class, L, Z)));
        t.lastSeen = now;
        const [x1, y1, x2, y2] = d.box;
        const x = (x1 + x2) / 2 / W;
        const y = (o.anchor === "center" ? (y1 + y2) / 2 : y2) / H;

        for (let i = 0; i < L; i++) {
          const fx = geo[i * 5],
            fy = geo[i * 5 + 1],
            ux = geo[i * 5 + 2],
            uy = geo[i * 5 + 3];
          // Signed distance: positive on the right-hand side of from→to (y points down).
          const dist = ux * (y - fy) - uy * (x - fx);
          const side = dist > o.margin ? 1 : dist < -o.margin ? -1 : 0;
          if (side === 0) continue; // in the dead band: no evidence either way
          if (t.side[i] === 0 || side === t.side[i]) {
            t.side[i] = side;
            t.pendN[i] = 0;
            t.last[i * 2] = x;
            t.last[i * 2 + 1] = y;
            continue;
          }
          t.pendN[i] = t.pend[i] === side ? t.pendN[i] + 1 : 1;
          t.pend[i] = side;
          if (t.pendN[i] < o.minFrames) continue;
          // Committed: count it if the path crossed the segment itself, not its extension.
          const px = t.last[i * 2],
            py = t.last[i * 2 + 1];
          const dp = ux * (py - fy) - uy * (px - fx);
          const k = dp / (dp - dist);
          const along = ((px + (x - px) * k - fx) * ux + (py + (y - py) * k - fy) * uy) / geo[i * 5 + 4];
          t.side[i] = side;
          t.pendN[i] = 0;
          t.last[i * 2] = x;
          t.last[i * 2 + 1] = y;
          if (along < 0 || along > 1) continue;
          if (side > 0) s.crossIn[i]++;
          else s.crossOut[i]++;
          dirty = true;
          emit("cross", { line: lines[i].id, direction: side > 0 ? "in" : "out", trackId: id, class: d.class });
        }

        for (let i = 0; i < Z; i++) {
          const inside = inPolygon(x, y, polys[i]) ? 1 : 0;
          if (inside === t.inside[i]) {
            t.zPendN[i] = 0;
            continue;
          }
          if (t.zPendN[i]++ === 0) t.zPendSince[i] = now;
          if (t.zPendN[i] < o.minFrames) continue;
          t.inside[i] = inside;
          t.zPendN[i] = 0;
          if (inside) {
            t.enteredAt[i] = t.zPendSince[i];
            s.occupancy[i]++;
            s.entries[i]++;
            dirty = true;
            emit("enter", { zone: zones[i].id, trackId: id, class: d.class });
          } else {
            s.occupancy[i]--;
            emit("exit", { zone: zones[i].id, trackId: id, class: d.class, dwellMs: Math.round(t.zPendSince[i] - t.enteredAt[i]) });
          }
        }
      }

      // Tracks gone for good leave their zones when last seen.
      for (const [id, t] of s.tracks) {
        if (now - t.lastSeen <= o.lostAfter * 1000) continue;
        for (let i = 0; i < Z; i++) {
          if (!t.inside[i]) continue;
          s.occupancy[i]--;
          emit("exit", { zone: zones[i].id, trackId: id, class: t.cls, dwellMs: Math.round(t.lastSeen - t.enteredAt[i]) });
        }
        s.tracks.delete(id);
      }

      if (now - s.lastCounts >= o.countsInterval * 1000) {
        s.lastCounts = now;
        const c = totals(s);
        const zoneCounts = Object.fromEntries(zones.map((z, i) => [z.id, { occupancy: s.occupancy[i], entries: s.entries[i] }]));
        emit("counts", { lines: c.lines, zones: zoneCounts });
        ctx.log.info(countsLine(f.stream, s));
      }
      if (dirty && Date.now() - lastWrite >= 1000) void save();
      return events.length ? [f, ...events] : [f];
    }

    /** A stream that ended (removed camera): its totals are saved, its tracks and state freed. */
    function endStream(id: string): void {
      const s = streams.get(id);
      if (!s) return;
      saved.streams[id] = totals(s);
      dirty = true;
      ctx.log.info(countsLine(id, s));
      streams.delete(id);
      void save();
    }

    /** A stream's geometry without keeping it (HTTP may ask about any id). */
    const peekGeometry = (id: string): Geometry =>
      geometries.get(id) ?? makeGeometry(o.streams?.[id]?.lines ?? o.lines, o.streams?.[id]?.zones ?? o.zones);

    /** The stream's lines and zones as plain data (the shape of `overlays`). */
    function plain(g: Geometry): Overlays {
      return {
        lines: g.lines.map((l) => ({ id: l.id, from: [l.from[0], l.from[1]], to: [l.to[0], l.to[1]] })),
        zones: g.zones.map((z) => ({ id: z.id, polygon: z.polygon.map((p) => [p[0], p[1]] as [number, number]) })),
      };
    }

    function countsOf(id: string): ZoneTotals {
      const s = streams.get(id);
      if (s) {
        const c = totals(s);
        return { lines: c.lines, zones: Object.fromEntries(s.g.zones.map((z, i) => [z.id, { occupancy: s.occupancy[i], entries: s.entries[i] }])) };
      }
      const g = peekGeometry(id);
      const prev = saved.streams[id];
      return {
        lines: Object.fromEntries(g.lines.map((l) => [l.id, { in: prev?.lines?.[l.id]?.in ?? 0, out: prev?.lines?.[l.id]?.out ?? 0 }])),
        zones: Object.fromEntries(g.zones.map((z) => [z.id, { occupancy: 0, entries: prev?.zones?.[z.id]?.entries ?? 0 }])),
      };
    }

    /** A running stream takes new geometry: totals and track state follow the ids that stay. */
    function remap(id: string, s: StreamState, ng: Geometry): void {
      const old = s.g;
      const prev = saved.streams[id];
      const li = ng.lines.map((l) => old.lines.findIndex((x) => x.id === l.id));
      const zi = ng.zones.map((z) => old.zones.findIndex((x) => x.id === z.id));
      // A line that moved: which side a track is on must be learnt again, or the move itself would count.
      const sameLine = ng.lines.map((l, i) => li[i] >= 0 && JSON.stringify([l.from, l.to]) === JSON.stringify([old.lines[li[i]].from, old.lines[li[i]].to]));
      s.crossIn = Float64Array.from(ng.lines, (l, i) => (li[i] >= 0 ? s.crossIn[li[i]] : (prev?.lines?.[l.id]?.in ?? 0)));
      s.crossOut = Float64Array.from(ng.lines, (l, i) => (li[i] >= 0 ? s.crossOut[li[i]] : (prev?.lines?.[l.id]?.out ?? 0)));
      s.entries = Float64Array.from(ng.zones, (z, i) => (zi[i] >= 0 ? s.entries[zi[i]] : (prev?.zones?.[z.id]?.entries ?? 0)));
      s.occupancy = Int32Array.from(ng.zones, (_, i) => (zi[i] >= 0 ? s.occupancy[zi[i]] : 0));
      const L = ng.lines.length;
      const Z = ng.zones.length;
      for (const [tid, t] of s.tracks) {
        const n = memo(t.cls, L, Z);
        n.lastSeen = t.lastSeen;
        for (let i = 0; i < L; i++) {
          if (!sameLine[i]) continue;
          const j = li[i];
          n.side[i] = t.side[j];
          n.pend[i] = t.pend[j];
          n.pendN[i] = t.pendN[j];
          n.last[i * 2] = t.last[j * 2];
          n.last[i * 2 + 1] = t.last[j * 2 + 1];
        }
        for (let i = 0; i < Z; i++) {
          const j = zi[i];
          if (j < 0) continue;
          n.inside[i] = t.inside[j];
          n.zPendN[i] = t.zPendN[j];
          n.zPendSince[i] = t.zPendSince[j];
          n.enteredAt[i] = t.enteredAt[j];
        }
        s.tracks.set(tid, n);
      }
      s.g = ng;
    }

    const geometry: GeometryControl = {
      streams: () => [...new Set([...Object.keys(o.streams ?? {}), ...geometries.keys(), ...streams.keys()])],
      get: (id): StreamGeometry => ({ geometry: plain(peekGeometry(id)), counts: countsOf(id) }),
      set(id, body): StreamGeometry {
        const r = v.safeParse(StreamGeometrySchema, body, { abortEarly: false });
        if (!r.success) throw new GeometryError(`geometry of ${id}: ${r.issues.map((i) => `${v.getDotPath(i) ?? "(body)"}: ${i.message}`).join("; ")}`);
        const ng = makeGeometry(r.output.lines, r.output.zones);
        const s = streams.get(id);
        if (s) remap(id, s, ng);
        geometries.set(id, ng);
        dirty = true;
        void save();
        ctx.log.info(`geometry of ${id} changed: ${ng.lines.length} line(s) ${ng.lines.map((l) => l.id).join(", ")}; ${ng.zones.length} zone(s) ${ng.zones.map((z) => z.id).join(", ")}`);
        return { geometry: plain(ng), counts: countsOf(id) };
      },
    };

    return {
      geometry,
      process: (msg) => {
        if (msg.kind === "frame") return onFrame(msg);
        if (msg.type === "stream-end") endStream(msg.stream);
        return msg;
      },
      async close() {
        for (const [id, s] of streams) ctx.log.info(countsLine(id, s));
        await save();
      },
    };
  },
});
