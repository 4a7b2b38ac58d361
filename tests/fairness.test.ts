/** Fair share under overload: a stage saturated by several live streams serves them in turn. */
import { describe, expect, test } from "bun:test";
import * as v from "valibot";
import { defineOperator, type Frame } from "../runtime/index.ts";
import { parse, registryWith, runPipeline } from "./support/pipeline.ts";

/** Live streams at their own rates (frames per second), for `seconds`. */
const cameras = defineOperator({
  name: "cameras",
  kind: "source",
  description: "test source: live frames per stream on timers",
  options: v.strictObject({ rates: v.record(v.string(), v.number()), seconds: v.number() }),
  create: (o) => ({
    async run(emit, signal) {
      const end = performance.now() + o.seconds * 1000;
      await Promise.all(
        Object.entries(o.rates).map(async ([stream, fps]) => {
          for (let seq = 0; performance.now() < end && !signal.aborted; seq++) {
            await emit({ kind: "frame", stream, seq, ts: Date.now(), live: true, image: { width: 4, height: 4, format: "rgb24", data: new Uint8Array(48) }, timings: {} });
            await Bun.sleep(1000 / fps);
          }
        }),
      );
    },
  }),
});

/** Takes 25 ms a frame: 40 frames a second at most. */
const slow = defineOperator({
  name: "slow",
  kind: "transform",
  description: "test transform",
  options: v.strictObject({}),
  create: () => ({ process: async (m) => (await Bun.sleep(25), m) }),
});

const counts = new Map<string, number>();
const count = defineOperator({
  name: "count",
  kind: "sink",
  description: "test sink",
  options: v.strictObject({}),
  create: () => ({ process: (m) => void (m.kind === "frame" && counts.set((m as Frame).stream, (counts.get(m.stream) ?? 0) + 1)) }),
});

describe("fair share", () => {
  test("under 3x overload each stream gets an equal share (±20%), a 60 fps camera does not starve 20 fps ones", async () => {
    const reg = await registryWith(cameras, slow, count);
    // Offered 60 + 3 × 20 = 120 frames a second to a stage that does 40: 3× overload.
    const spec = parse(`name: fair\nstages:\n  - id: cams\n    use: cameras\n    with: { rates: { busy: 60, a: 20, b: 20, c: 20 }, seconds: 4 }\n  - id: work\n    use: slow\n  - id: out\n    use: count\n`, reg);
    const run = await runPipeline(spec);
    const got = ["busy", "a", "b", "c"].map((s) => counts.get(s) ?? 0);
    const mean = got.reduce((a, b) => a + b, 0) / got.length;
    for (const n of got) expect(Math.abs(n - mean) / mean).toBeLessThanOrEqual(0.2);
    // The overload was real: frames were dropped, each stream only its own.
    expect(run.stage("work").dropped).toBeGreaterThan(0);
  });
});
