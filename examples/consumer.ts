#!/usr/bin/env bun
/**
 * A downstream consumer of framewire results: subscribes to what a
 * `sink-nats` stage publishes (plain JSON, see docs/wire-format.md) and
 * prints one line per result. It uses only the NATS client, as a service in
 * any language would.
 *
 *   bun examples/consumer.ts [--nats nats://127.0.0.1:4222] [--subject demo.results] [--count N]
 *
 * A pipeline that publishes such results: pipelines/shop.yaml (subject shop.results):
 *   bun run pipeline shop.yaml & bun examples/consumer.ts --subject shop.results
 *
 * The same with the NATS CLI:  nats sub 'demo.results.>'   (or without it: bun run sub 'demo.results.>')
 */
import { parseArgs } from "node:util";
import { connect } from "@nats-io/transport-node";

interface Detection {
  class: string;
  score: number;
  box: [number, number, number, number];
  trackId?: number;
}
/** A frame's result, on `<prefix>.<stream>.frames`. */
interface FrameResult {
  stream: string;
  seq: number;
  ts: number;
  detections: Detection[];
}
/** An event (line crossing, zone enter/exit, counts), on `<prefix>.<stream>.events.<type>`: its data fields sit beside these. */
interface EventResult {
  stream: string;
  seq: number;
  ts: number;
  type: string;
}

const { values } = parseArgs({
  options: {
    nats: { type: "string", default: process.env.NATS_URL ?? "nats://127.0.0.1:4222" },
    subject: { type: "string", default: "demo.results" },
    count: { type: "string" },
  },
});
const limit = values.count === undefined ? Infinity : Number(values.count);

const nc = await connect({ servers: values.nats, name: "framewire example consumer" });
const sub = nc.subscribe(`${values.subject}.>`);
await nc.flush(); // the server has the subscription: nothing published from now on is missed
console.error(`listening on ${values.subject}.> at ${values.nats}`);

let seen = 0;
for await (const m of sub) {
  let r: FrameResult | EventResult;
  try {
    r = m.json<FrameResult | EventResult>();
  } catch {
    console.error(`skipping a non-JSON message on ${m.subject}`);
    continue;
  }
  if ("detections" in r) {
    const people = r.detections.filter((d) => d.class === "person").length;
    console.log(JSON.stringify({ subject: m.subject, stream: r.stream, seq: r.seq, detections: r.detections.length, people }));
  } else {
    console.log(JSON.stringify({ subject: m.subject, ...r }));
  }
  if (++seen >= limit) break;
}
await nc.drain();
