import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as v from "valibot";
import zones from "../operators/zones.ts";
import type { Logger } from "../runtime/core/log.ts";
import type { Event, Frame, Message } from "../runtime/core/message.ts";

/** [trackId, x, y] of a track's anchor (bottom centre) in normalised coordinates, optionally its class. */
type Pos = [number, number, number, string?];

const tmp = mkdtempSync(join(tmpdir(), "fw-zones-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

// A horizontal door across the middle (in = walking down the image) and a shelf square at the top right.
const SCENE = {
  lines: [{ id: "door", from: [0.1, 0.5], to: [0.9, 0.5] }],
  zones: [{ id: "shelf", polygon: [[0.6, 0.1], [0.8, 0.1], [0.8, 0.3], [0.6, 0.3]] }],
  fps: 10,
  countsInterval: 1,
};

function capture(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const log = { lines, debug() {}, info: (m: string) => void lines.push(`info ${m}`), warn: (m: string) => void lines.push(`warn ${m}`), error: (m: string) => void lines.push(`error ${m}`), child: () => log };
  return log;
}

async function scene(options: Record<string, unknown> = {}) {
  const log = capture();
  const inst = await zones.create(v.parse(zones.options, { ...SCENE, ...options }), { stage: "count", pipeline: "test", log, signal: new AbortController().signal });
  const events: Event[] = [];
  let seq = 0;
  /** Feeds one frame per entry (1000×1000 image, 40×80 boxes); returns the events it produced. */
  const feed = async (...steps: Pos[][]) => {
    const out: Event[] = [];
    for (const step of steps) {
      const f: Frame = {
        kind: "frame",
        stream: "cam",
        seq,
        ts: 5_000 + seq * 37,
        live: false,
        image: { width: 1000, height: 1000, format: "rgb24", data: new Uint8Array(0) },
        detections: step.map(([id, x, y, cls = "person"]) => ({ class: cls, classId: 0, score: 0.9, box: [x * 1000 - 20, y * 1000 - 80, x * 1000 + 20, y * 1000], trackId: id })),
        timings: {},
      };
      seq++;
      const res = [await inst.process(f)].flat() as Message[];
      expect(res[0]).toBe(f);
      for (const m of res.slice(1)) out.push(m as Event);
    }
    events.push(...out);
    return out;
  };
  return { inst, feed, events, log, seqNow: () => seq };
}

/** One track walking in a straight line, `n` frames. */
function walk(id: number, x0: number, y0: number, x1: number, y1: number, n: number): Pos[][] {
  return Array.from({ length: n }, (_, i) => [[id, x0 + ((x1 - x0) * i) / (n - 1), y0 + ((y1 - y0) * i) / (n - 1)]]);
}

/** Several walks side by side, frame by frame. */
function together(...walks: Pos[][][]): Pos[][] {
  const n = Math.max(...walks.map((w) => w.length));
  return Array.from({ length: n }, (_, i) => walks.flatMap((w) => w[i] ?? []));
}

const summary = (events: Event[], type: string) => events.filter((e) => e.type === type).map((e) => e.data);

describe("lines", () => {
  test("exact in/out counts; a pass beyond the segment's end does not count", async () => {
    const s = await scene();
    await s.feed(...together(walk(1, 0.3, 0.3, 0.3, 0.7, 21), walk(2, 0.5, 0.7, 0.5, 0.3, 21), walk(3, 0.95, 0.3, 0.95, 0.7, 21)));
    expect(summary(s.events, "cross")).toEqual([
      { line: "door", direction: "in", trackId: 1, class: "person" },
      { line: "door", direction: "out", trackId: 2, class: "person" },
    ]);
    // Committed on the second frame past the dead band: y = 0.52, 0.54 is frame 12.
    const first = s.events.find((e) => e.type === "cross")!;
    expect(first).toMatchObject({ kind: "event", stream: "cam", seq: 12, ts: 5_000 + 12 * 37 });
    const counts = summary(s.events, "counts");
    expect(counts.at(-1)).toEqual({ lines: { door: { in: 1, out: 1 } }, zones: { shelf: { occupancy: 0, entries: 0 } } });
  });

  test("jitter on the line is not counted; a real crossing is, once", async () => {
    const s = await scene();
    const at = (y: number): Pos[] => [[1, 0.3, y]];
    await s.feed(at(0.4), at(0.4));
    // Inside the dead band (±0.01): no side at all.
    for (let i = 0; i < 10; i++) await s.feed(at(i % 2 ? 0.495 : 0.505));
    // Past the band but never two frames in a row on the far side.
    for (let i = 0; i < 10; i++) await s.feed(at(i % 2 ? 0.47 : 0.53));
    expect(summary(s.events, "cross")).toEqual([]);
    await s.feed(at(0.55), at(0.6), at(0.6), at(0.54), at(0.53));
    expect(summary(s.events, "cross")).toEqual([{ line: "door", direction: "in", trackId: 1, class: "person" }]);

    // Without the debounce the same jitter would count every flip.
    const raw = await scene({ minFrames: 1 });
    await raw.feed(at(0.4));
    for (let i = 0; i < 10; i++) await raw.feed(at(i % 2 ? 0.47 : 0.53));
    expect(summary(raw.events, "cross").length).toBe(10);
  });

  test("walking across and back counts one in and one out", async () => {
    const s = await scene();
    await s.feed(...walk(7, 0.4, 0.4, 0.4, 0.6, 11), ...walk(7, 0.4, 0.6, 0.4, 0.4, 11));
    expect(summary(s.events, "cross").map((d) => d.direction)).toEqual(["in", "out"]);
  });

  test("direction follows from → to: the reversed line swaps in and out", async () => {
    const s = await scene({ lines: [{ id: "door", from: [0.9, 0.5], to: [0.1, 0.5] }] });
    await s.feed(...walk(1, 0.3, 0.3, 0.3, 0.7, 21));
    expect(summary(s.events, "cross").map((d) => d.direction)).toEqual(["out"]);
  });

  test("classes and untracked detections are ignored", async () => {
    const s = await scene({ classes: ["person"] });
    await s.feed(...walk(1, 0.3, 0.3, 0.3, 0.7, 21).map((step) => step.map(([id, x, y]): Pos => [id, x, y, "car"])));
    expect(summary(s.events, "cross")).toEqual([]);
  });
});

describe("zones", () => {
  test("enter, exit with dwell time, occupancy and entries", async () => {
    const s = await scene();
    const outside: Pos = [1, 0.5, 0.5];
    const inside = (id: number): Pos => [id, 0.7, 0.2];
    const frames: Pos[][] = [];
    // Track 1 inside from seq 5 to 24; track 2 inside from seq 10 on.
    for (let seq = 0; seq < 35; seq++) {
      const step: Pos[] = [seq >= 5 && seq < 25 ? inside(1) : outside];
      if (seq >= 10) step.push(inside(2));
      frames.push(step);
    }
    await s.feed(...frames);
    const enters = s.events.filter((e) => e.type === "enter");
    expect(enters.map((e) => [e.seq, e.data.trackId])).toEqual([[6, 1], [11, 2]]);
    const exits = s.events.filter((e) => e.type === "exit");
    // First frame outside is seq 25, first inside seq 5: 20 frames at 10 fps.
    expect(exits.map((e) => [e.seq, e.data])).toEqual([[26, { zone: "shelf", trackId: 1, class: "person", dwellMs: 2000 }]]);
    const counts = s.events.filter((e) => e.type === "counts").map((e) => [e.seq, (e.data.zones as any).shelf]);
    expect(counts).toEqual([
      [10, { occupancy: 1, entries: 1 }],
      [20, { occupancy: 2, entries: 2 }],
      [30, { occupancy: 1, entries: 2 }],
    ]);
    expect(s.log.lines).toContain("info counts cam: door in 0 out 0 | shelf 2 inside, 2 entered");
  });

  test("a track that vanishes inside leaves after lostAfter, dwelling until last seen", async () => {
    const s = await scene({ lostAfter: 1 });
    await s.feed(...Array.from({ length: 5 }, (): Pos[] => [[3, 0.7, 0.2]]));
    const out = await s.feed(...Array.from({ length: 16 }, (): Pos[] => []));
    const exit = out.find((e) => e.type === "exit")!;
    // Last seen at seq 4 (400 ms), gone for more than 1 s at seq 15.
    expect(exit.seq).toBe(15);
    expect(exit.data).toEqual({ zone: "shelf", trackId: 3, class: "person", dwellMs: 400 });
    expect(summary(s.events, "counts").at(-1)).toMatchObject({ zones: { shelf: { occupancy: 0, entries: 1 } } });
  });

  test("live frames keep time by their capture timestamps", async () => {
    const log = capture();
    const inst = await zones.create(v.parse(zones.options, SCENE), { stage: "count", pipeline: "test", log, signal: new AbortController().signal });
    const types: string[] = [];
    for (let seq = 0; seq < 6; seq++) {
      const f: Frame = { kind: "frame", stream: "cam", seq, ts: seq * 500, live: true, image: { width: 100, height: 100, format: "rgb24", data: new Uint8Array(0) }, detections: [], timings: {} };
      for (const m of ([await inst.process(f)].flat() as Message[]).slice(1)) types.push(`${seq}:${(m as Event).type}`);
    }
    expect(types).toEqual(["2:counts", "4:counts"]);
  });
});

describe("state file", () => {
  test("counts survive a restart; the file is replaced atomically", async () => {
    const state = join(tmp, "restart", "counts.json");
    const a = await scene({ state });
    await a.feed(...walk(1, 0.3, 0.3, 0.3, 0.7, 21), ...walk(2, 0.7, 0.4, 0.7, 0.2, 5));
    // Written at most once a second while running: the first change is written at once.
    for (let i = 0; i < 100 && !existsSync(state); i++) await Bun.sleep(20);
    expect(existsSync(state)).toBe(true);
    await a.inst.close!();
    expect(JSON.parse(readFileSync(state, "utf8"))).toEqual({ version: 1, streams: { cam: { lines: { door: { in: 1, out: 0 } }, zones: { shelf: { entries: 1 } } } } });
    expect(readdirSync(join(tmp, "restart"))).toEqual(["counts.json"]);

    const b = await scene({ state });
    await b.feed(...walk(5, 0.4, 0.3, 0.4, 0.7, 21));
    // Totals carry on; occupancy does not (the tracks of before are gone).
    expect(summary(b.events, "counts").at(-1)).toEqual({ lines: { door: { in: 2, out: 0 } }, zones: { shelf: { occupancy: 0, entries: 1 } } });
    await b.inst.close!();
    expect(JSON.parse(readFileSync(state, "utf8")).streams.cam.lines.door).toEqual({ in: 2, out: 0 });
  });

  test("an unreadable state file is moved aside and counting starts from zero", async () => {
    const state = join(tmp, "corrupt.json");
    writeFileSync(state, "{ not json");
    const s = await scene({ state });
    expect(existsSync(`${state}.corrupt`)).toBe(true);
    expect(s.log.lines.some((l) => l.startsWith("warn") && l.includes("corrupt"))).toBe(true);
    await s.feed(...walk(1, 0.3, 0.3, 0.3, 0.7, 21));
    expect(summary(s.events, "counts").at(-1)).toMatchObject({ lines: { door: { in: 1, out: 0 } } });
    await s.inst.close!();
  });
});

test("options are validated", () => {
  const valid = (o: Record<string, unknown>) => v.safeParse(zones.options, o).success;
  expect(valid({})).toBe(false);
  expect(valid({ lines: [{ id: "a", from: [0, 0], to: [1, 1] }, { id: "a", from: [0, 1], to: [1, 0] }] })).toBe(false);
  expect(valid({ zones: [{ id: "z", polygon: [[0, 0], [1, 1]] }] })).toBe(false);
  expect(valid({ lines: [{ id: "a", from: [0, 1.5], to: [1, 1] }] })).toBe(false);
  expect(valid({ lines: [{ id: "a", from: [0, 1], to: [1, 1], colour: "red" }] })).toBe(false);
  expect(valid({ lines: [{ id: "a", from: [0.5, 0.5], to: [0.5, 0.5] }] })).toBe(false);
  expect(valid({ lines: [{ id: "a", from: [0, 1], to: [1, 1] }] })).toBe(true);
});
