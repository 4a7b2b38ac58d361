/**
 * End to end without a model: a synthetic crowd (fixtures/mot/crowd.ts),
 * the tracker operator, sink-mot's text format and the MOT evaluation.
 */
import { describe, expect, test } from "bun:test";
import * as v from "valibot";
import tracker from "../operators/tracker.ts";
import { toMotLines } from "../operators/sink-mot.ts";
import { evaluateMot, parseMot, type MotMetrics } from "../runtime/eval/mot.ts";
import { createLogger } from "../runtime/core/log.ts";
import type { Frame } from "../runtime/core/message.ts";
import { H, synthesize, W } from "./fixtures/mot/crowd.ts";

async function trackAndScore(method: "bytetrack" | "sort", seed: number): Promise<MotMetrics> {
  const { gt, detections } = synthesize(seed);
  const ctx = { stage: "track", pipeline: "test", log: createLogger("test", 99), signal: new AbortController().signal };
  const inst = await tracker.create(v.parse(tracker.options, { method }), ctx);
  let pred = "";
  detections.forEach((dets, seq) => {
    const f: Frame = { kind: "frame", stream: "syn", seq, ts: seq * 40, live: false, image: { width: W, height: H, format: "rgb24", data: new Uint8Array(0) }, detections: dets, timings: {} };
    pred += toMotLines(inst.process(f) as Frame, 2);
  });
  return evaluateMot(parseMot(gt, "gt"), parseMot(pred, "pred"), 0.5);
}

describe("tracking a synthetic crowd, scored with the MOT evaluation", () => {
  test("ByteTrack tracks well and beats SORT on the same detections", async () => {
    let byteSum = 0;
    let sortSum = 0;
    for (const seed of [1, 2, 3]) {
      const byte = await trackAndScore("bytetrack", seed);
      const sort = await trackAndScore("sort", seed);
      expect(byte.mota).toBeGreaterThan(0.75);
      expect(byte.idf1).toBeGreaterThan(0.75);
      expect(sort.mota).toBeGreaterThan(0.6);
      byteSum += byte.mota + byte.idf1;
      sortSum += sort.mota + sort.idf1;
    }
    // Low-score detections of partly hidden people are what the second stage recovers.
    expect(byteSum).toBeGreaterThan(sortSum);
  });
});
