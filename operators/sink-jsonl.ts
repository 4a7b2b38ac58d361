import * as v from "valibot";
import type { Message } from "../runtime/message.ts";
import { defineOperator } from "../runtime/operator.ts";
import { openWriter } from "../runtime/platform.ts";

const Options = v.strictObject({
  path: v.pipe(v.string(), v.minLength(1), v.description("Output file (parent folders are created).")),
  append: v.optional(v.pipe(v.boolean(), v.description("Append to an existing file instead of starting it anew.")), false),
  precision: v.optional(
    v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(6), v.description("Decimals kept in box coordinates and scores.")),
    2,
  ),
  flushInterval: v.optional(v.pipe(v.number(), v.minValue(0.05), v.description("Seconds between flushes to disk.")), 1),
});

/** One line per frame (also frames without detections) or event. */
export function toJsonLine(msg: Message, precision: number): string {
  const k = 10 ** precision;
  const r = (x: number) => Math.round(x * k) / k;
  if (msg.kind === "event") return JSON.stringify({ stream: msg.stream, seq: msg.seq, ts: msg.ts, type: msg.type, ...msg.data });
  return JSON.stringify({
    stream: msg.stream,
    seq: msg.seq,
    ts: msg.ts,
    detections: (msg.detections ?? []).map((d) => ({
      class: d.class,
      score: r(d.score),
      box: d.box.map(r),
      ...(d.trackId !== undefined ? { trackId: d.trackId } : {}),
    })),
  });
}

/** Writes results as JSON Lines, one line for every frame. */
export default defineOperator({
  name: "sink-jsonl",
  kind: "sink",
  description: "Write one JSON line per frame (stream, seq, ts, detections) or event to a file.",
  options: Options,
  async create(o, ctx) {
    const out = await openWriter(o.path, o.append);
    ctx.log.info(`writing ${o.path}`);
    const timer = setInterval(() => void out.flush().catch((e) => ctx.log.error(`flush ${o.path}: ${e.message}`)), o.flushInterval * 1000);
    return {
      process(msg) {
        out.write(toJsonLine(msg, o.precision) + "\n");
      },
      async close() {
        clearInterval(timer);
        await out.close();
      },
    };
  },
});
