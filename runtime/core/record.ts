/**
 * The result record: the JSON that every result sink writes for a frame or
 * an event (a sink-jsonl line, a sink-nats payload, a webhook body).
 */
import * as v from "valibot";
import type { Message } from "./message.ts";

/** Decimals kept in box coordinates and scores. */
export const Precision = v.optional(
  v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(6), v.description("Decimals kept in box coordinates and scores.")),
  2,
);


/**
 * One line per frame (also frames without detections) or event.
 * @example
 * toJsonLine(frame, 2); // '{"stream":"cam","seq":1,"ts":0,"detections":[]}'
 */
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

