import * as v from "valibot";
import type { Frame } from "../runtime/core/message.ts";
import { defineOperator } from "../runtime/core/operator.ts";
import { openWriter, type FileWriter } from "../runtime/platform/index.ts";

const Options = v.strictObject({
  path: v.pipe(
    v.string(),
    v.minLength(1),
    v.description(
      "Output file; `{stream}` in it is replaced by the stream id (one file per stream, as MOTChallenge wants one per sequence).",
    ),
  ),
  precision: v.optional(
    v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(6), v.description("Decimals kept in box coordinates and scores.")),
    2,
  ),
});

/**
 * MOTChallenge lines (`frame,id,x,y,w,h,conf,-1,-1,-1`, frame = seq + 1)
 * for a frame's tracked detections.
 * @example
 * toMotLines({ seq: 0, detections: [{ box: [10, 20, 30, 60], score: 0.9, trackId: 3, ... }], ... }, 2);
 * // "1,3,10,20,20,40,0.9,-1,-1,-1\n"
 */
export function toMotLines(f: Frame, precision: number): string {
  const k = 10 ** precision;
  const r = (x: number) => Math.round(x * k) / k;
  let out = "";
  for (const d of f.detections ?? []) {
    if (d.trackId === undefined) continue;
    const [x1, y1, x2, y2] = d.box;
    out += `${f.seq + 1},${d.trackId},${r(x1)},${r(y1)},${r(x2 - x1)},${r(y2 - y1)},${r(d.score)},-1,-1,-1\n`;
  }
  return out;
}

/** Writes tracking results for MOTChallenge-style evaluation (`bun run eval mot`). */
export default defineOperator({
  name: "sink-mot",
  kind: "sink",
  description: "Write tracked detections in MOTChallenge text format (frame,id,x,y,w,h,conf,-1,-1,-1).",
  options: Options,
  async create(o, ctx) {
    const perStream = o.path.includes("{stream}");
    const writers = new Map<string, Promise<FileWriter>>();
    const writer = (stream: string) => {
      const key = perStream ? stream : "";
      let w = writers.get(key);
      if (!w) {
        const path = o.path.replaceAll("{stream}", stream);
        ctx.log.info(`writing ${path}`);
        writers.set(key, (w = openWriter(path)));
      }
      return w;
    };
    // A single file exists even when nothing gets tracked: an empty result is still a result.
    if (!perStream) await writer("");
    return {
      async process(msg) {
        if (msg.kind !== "frame") return;
        const lines = toMotLines(msg, o.precision);
        if (lines) (await writer(msg.stream)).write(lines);
      },
      async close() {
        for (const w of writers.values()) await (await w).close();
      },
    };
  },
});
