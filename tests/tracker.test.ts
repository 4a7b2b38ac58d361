import { describe, expect, test } from "bun:test";
import * as v from "valibot";
import tracker from "../operators/tracker.ts";
import { createLogger } from "../runtime/core/log.ts";
import type { Detection, Frame, TrackInfo } from "../runtime/core/message.ts";

/** The tracker's output frame with its tracks (frame.meta.tracks) at hand. */
type TrackedFrame = Frame & { tracks: readonly TrackInfo[] };

type Box = [number, number, number, number];
/** [box, score, class] of one synthetic detection. */
type Det = [Box, number?, string?];

const ctx = { stage: "track", pipeline: "test", log: createLogger("test", 99), signal: new AbortController().signal };

async function makeTracker(options: Record<string, unknown> = {}) {
  const inst = await tracker.create(v.parse(tracker.options, options), ctx);
  return (f: Frame): TrackedFrame => {
    const out = inst.process(f) as Frame;
    return Object.assign(Object.create(null), out, { tracks: out.meta?.tracks ?? [], original: out });
  };
}

function frame(seq: number, dets: Det[], stream = "cam"): Frame {
  const detections: Detection[] = dets.map(([box, score = 0.9, cls = "person"]) => ({ class: cls, classId: cls === "person" ? 0 : 2, score, box }));
  return { kind: "frame", stream, seq, ts: 1_000 + seq * 100, live: false, image: { width: 640, height: 480, format: "rgb24", data: new Uint8Array(0) }, detections, timings: {} };
}

/** A 40×100 box whose left edge is at x and top at y. */
const person = (x: number, y: number): Box => [x, y, x + 40, y + 100];
const ids = (f: TrackedFrame) => f.detections!.map((d) => d.trackId);

for (const method of ["bytetrack", "sort"] as const) {
  describe(`${method}`, () => {
    test("two people whose paths cross keep their ids", async () => {
      const track = await makeTracker({ method });
      const seen: (number | undefined)[][] = [];
      for (let t = 0; t < 45; t++) {
        // A walks right, B walks left 20 px lower: their boxes overlap by IoU ~0.67 when they meet at t = 20.
        seen.push(ids(track(frame(t, [[person(10 * t, 100)], [person(400 - 10 * t, 120)]]))));
      }
      expect(seen[0]).toEqual([1, 2]);
      for (const s of seen) expect(s).toEqual([1, 2]);
    });

    test("a short occlusion keeps the id, and the track shows as lost meanwhile", async () => {
      const track = await makeTracker({ method });
      const states: string[] = [];
      for (let t = 0; t < 30; t++) {
        const hidden = t >= 10 && t < 16;
        const f = track(frame(t, hidden ? [] : [[person(50 + 8 * t, 200)]]));
        if (!hidden) expect(ids(f)).toEqual([1]);
        states.push(f.tracks.map((k) => k.state).join());
        if (t === 15) {
          // The lost track's box is a prediction that keeps moving.
          expect(f.tracks[0].box[0]).toBeGreaterThan(50 + 8 * 12);
          expect(f.tracks[0].hits).toBe(10);
          expect(f.tracks[0].age).toBe(16);
        }
      }
      expect(states.slice(10, 16)).toEqual(Array(6).fill("lost"));
      expect(states[16]).toBe("tracked");
    });

    test("a new object gets a new id once confirmed (minHits)", async () => {
      const track = await makeTracker({ method, minHits: 3 });
      for (let t = 0; t < 20; t++) {
        const dets: Det[] = [[person(100 + 5 * t, 100)]];
        if (t >= 10) dets.push([person(500 - 5 * (t - 10), 300)]);
        const got = ids(track(frame(t, dets)));
        // Tracks on the stream's first frame are confirmed at once; later ones after 3 hits.
        expect(got).toEqual(t < 10 ? [1] : t < 12 ? [1, undefined] : [1, 2]);
      }
    });

    test("a track lost for longer than the buffer is dropped; the object comes back with a new id", async () => {
      const track = await makeTracker({ method, buffer: 5 });
      for (let t = 0; t < 5; t++) track(frame(t, [[person(100, 100)]]));
      for (let t = 5; t < 11; t++) expect(track(frame(t, [])).tracks).toHaveLength(t - 4 <= 5 ? 1 : 0);
      track(frame(11, [[person(100, 100)]]));
      expect(ids(track(frame(12, [[person(100, 100)]])))).toEqual([2]);
    });

    test("missing frames (seq gaps) advance the motion model by the gap", async () => {
      const track = await makeTracker({ method });
      for (let t = 0; t < 10; t++) expect(ids(track(frame(t, [[person(15 * t, 100)]])))).toEqual([1]);
      // Every third frame only: 45 px jumps, more than the 40 px box width.
      for (let t = 12; t < 40; t += 3) expect(ids(track(frame(t, [[person(15 * t, 100)]])))).toEqual([1]);
    });
  });
}

describe("bytetrack specifics", () => {
  test("low-score detections continue a track (second stage); sort ignores them", async () => {
    const byte = await makeTracker({ method: "bytetrack" });
    const sort = await makeTracker({ method: "sort" });
    for (let t = 0; t < 25; t++) {
      // Partly occluded from t = 10 to 19: the detector's score drops below trackThresh.
      const score = t >= 10 && t < 20 ? 0.3 : 0.9;
      const det: Det[] = [[person(100 + 6 * t, 100), score]];
      expect(ids(byte(frame(t, det)))).toEqual([1]);
      expect(ids(sort(frame(t, det)))).toEqual([score < 0.5 ? undefined : 1]);
    }
  });

  test("low-score detections never start a track, nor do ones below lowThresh count", async () => {
    const track = await makeTracker();
    for (let t = 0; t < 5; t++) {
      const f = track(frame(t, [[person(100, 100), 0.3], [person(300, 100), 0.05]]));
      expect(ids(f)).toEqual([undefined, undefined]);
      expect(f.tracks).toEqual([]);
    }
  });

  test("newTrackThresh: high detections below it continue tracks but start none", async () => {
    const track = await makeTracker({ newTrackThresh: 0.8 });
    for (let t = 0; t < 4; t++) expect(ids(track(frame(t, [[person(100, 100), 0.7]])))).toEqual([undefined]);
    expect(ids(track(frame(4, [[person(100, 100), 0.9]])))).toEqual([undefined]);
    expect(ids(track(frame(5, [[person(100, 100), 0.7]])))).toEqual([1]);
  });
});

describe("output contract", () => {
  test("detections keep every field and order; frame.tracks lists confirmed tracks", async () => {
    const track = await makeTracker();
    const f0 = frame(0, [[person(100, 100), 0.9], [person(300, 100), 0.95, "car"]]);
    const before = structuredClone(f0.detections);
    const out = track(f0);
    // A new frame: the input (shared with any other subscriber) is left as it was.
    expect(f0.detections).toEqual(before!);
    expect(f0.detections!.every((d) => d.trackId === undefined)).toBe(true);
    expect(Object.isFrozen((out as unknown as { original: Frame }).original)).toBe(true);
    expect(out.detections!.map(({ trackId, ...d }) => d)).toEqual([...before!]);
    expect(ids(out)).toEqual([1, 2]);
    expect(out.tracks.map((k) => [k.id, k.class, k.state, k.age, k.hits, k.score])).toEqual([
      [1, "person", "tracked", 1, 1, 0.9],
      [2, "car", "tracked", 1, 1, 0.95],
    ]);
    expect(out.tracks[0].box.map(Math.round)).toEqual([100, 100, 140, 200]);
  });

  test("classes: other classes pass through untracked; classes never swap ids", async () => {
    const only = await makeTracker({ classes: ["person"] });
    expect(ids(only(frame(0, [[person(100, 100)], [person(300, 100), 0.9, "car"]])))).toEqual([1, undefined]);
    const aware = await makeTracker();
    aware(frame(0, [[person(100, 100)]]));
    // Same place, other class: not the same object.
    expect(ids(aware(frame(1, [[person(100, 100), 0.9, "car"]])))).toEqual([undefined]);
    const agnostic = await makeTracker({ agnostic: true });
    agnostic(frame(0, [[person(100, 100)]]));
    const f = agnostic(frame(1, [[person(100, 100), 0.9, "car"]]));
    expect(ids(f)).toEqual([1]);
    expect(f.tracks[0].class).toBe("car");
  });

  test("streams are tracked independently, each with ids from 1", async () => {
    const track = await makeTracker();
    for (let t = 0; t < 5; t++) {
      expect(ids(track(frame(t, [[person(100 + 5 * t, 100)], [person(400, 100)]], "a")))).toEqual([1, 2]);
      expect(ids(track(frame(t, [[person(200, 300)]], "b")))).toEqual([1]);
    }
  });

  test("a stream whose sequence goes back (source restart) starts over with fresh ids", async () => {
    const track = await makeTracker();
    for (let t = 0; t < 5; t++) track(frame(t, [[person(100, 100)]]));
    expect(ids(track(frame(0, [[person(100, 100)]])))).toEqual([2]);
  });

  test("events pass through untouched", async () => {
    const inst = await tracker.create(v.parse(tracker.options, {}), ctx);
    const ev = { kind: "event" as const, stream: "cam", seq: 1, ts: 0, type: "x", data: {} };
    expect(inst.process(ev)).toBe(ev);
  });

  test("options are validated", () => {
    expect(v.safeParse(tracker.options, { lowThresh: 0.6, trackThresh: 0.5 }).success).toBe(false);
    expect(v.safeParse(tracker.options, { method: "deepsort" }).success).toBe(false);
    expect(v.safeParse(tracker.options, { buffer: 0 }).success).toBe(false);
    expect(v.safeParse(tracker.options, { trackthresh: 0.5 }).success).toBe(false);
  });
});
