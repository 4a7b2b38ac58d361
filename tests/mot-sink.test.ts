import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as v from "valibot";
import sinkMot, { toMotLines } from "../operators/sink-mot.ts";
import { parseMot } from "../runtime/eval/mot.ts";
import { createLogger } from "../runtime/core/log.ts";
import type { Detection, Frame } from "../runtime/core/message.ts";

const tmp = mkdtempSync(join(tmpdir(), "fw-mot-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const ctx = { stage: "mot", pipeline: "test", log: createLogger("test", 99), signal: new AbortController().signal };

function frame(stream: string, seq: number, detections: Detection[]): Frame {
  return { kind: "frame", stream, seq, ts: 0, live: false, image: { width: 640, height: 480, format: "rgb24", data: new Uint8Array(0) }, detections, timings: {} };
}
const det = (box: Detection["box"], score: number, trackId?: number): Detection => ({ class: "person", classId: 0, score, box, ...(trackId ? { trackId } : {}) });

test("one MOTChallenge line per tracked detection, frame = seq + 1", () => {
  const f = frame("cam", 0, [det([10, 20, 30, 60], 0.9, 3), det([1, 1, 5, 5], 0.8), det([100.123, 50, 150.456, 170], 0.456789, 4)]);
  expect(toMotLines(f, 2)).toBe("1,3,10,20,20,40,0.9,-1,-1,-1\n1,4,100.12,50,50.33,120,0.46,-1,-1,-1\n");
  // What it writes, the evaluation reads.
  expect(parseMot(toMotLines(f, 2), "x").map((r) => [r.frame, r.id, r.box])).toEqual([
    [1, 3, [10, 20, 20, 40]],
    [1, 4, [100.12, 50, 50.33, 120]],
  ]);
});

test("writes a file, or one per stream with {stream}", async () => {
  const single = await sinkMot.create(v.parse(sinkMot.options, { path: join(tmp, "all.txt") }), ctx);
  const perStream = await sinkMot.create(v.parse(sinkMot.options, { path: join(tmp, "by", "{stream}.txt") }), ctx);
  for (const sink of [single, perStream]) {
    await sink.process(frame("a", 4, [det([0, 0, 10, 10], 0.5, 1)]));
    await sink.process(frame("b", 0, [det([5, 5, 15, 25], 0.75, 1)]));
    await sink.process({ kind: "event", stream: "a", seq: 5, ts: 0, type: "cross", data: {} });
    await sink.close!();
  }
  expect(readFileSync(join(tmp, "all.txt"), "utf8")).toBe("5,1,0,0,10,10,0.5,-1,-1,-1\n1,1,5,5,10,20,0.75,-1,-1,-1\n");
  expect(readFileSync(join(tmp, "by", "a.txt"), "utf8")).toBe("5,1,0,0,10,10,0.5,-1,-1,-1\n");
  expect(readFileSync(join(tmp, "by", "b.txt"), "utf8")).toBe("1,1,5,5,10,20,0.75,-1,-1,-1\n");
});

test("an empty result is still a file", async () => {
  const sink = await sinkMot.create(v.parse(sinkMot.options, { path: join(tmp, "empty.txt") }), ctx);
  await sink.process(frame("cam", 0, [det([0, 0, 10, 10], 0.5)]));
  await sink.close!();
  expect(readFileSync(join(tmp, "empty.txt"), "utf8")).toBe("");
});
