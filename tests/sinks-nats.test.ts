/** sink-nats and sink-jetstream against a real nats-server with JetStream (free 127.0.0.1 port, temp store). */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as v from "valibot";
import type { NatsConnection } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import sinkJetStream from "../operators/sink-jetstream.ts";
import sinkNats from "../operators/sink-nats.ts";
import { resultId } from "../runtime/bus/results.ts";
import { toJsonLine } from "../runtime/core/record.ts";
import type { Event, Frame } from "../runtime/core/message.ts";
import { NatsBus } from "../runtime/bus/nats.ts";
import type { SinkDefinition, SinkInstance, StageContext } from "../runtime/core/operator.ts";
import { client, disposeAllNatsServers, manager, readStream, startJetStreamServer, type NatsServer } from "./support/jetstream.ts";
import { captureLog, type CapturedLog } from "./support/pipeline.ts";
import { sleep, until } from "./support/wait.ts";

let server: NatsServer;
let nc: NatsConnection;
let bus: NatsBus;

beforeAll(async () => {
  server = await startJetStreamServer();
  nc = await client(server.url);
  bus = await NatsBus.connect({ url: server.url, log: captureLog("bus") });
});
afterAll(async () => {
  await bus?.close();
  await nc?.close();
  // Also any server a failed test left behind.
  await disposeAllNatsServers();
});

function frame(seq: number): Frame {
  return {
    kind: "frame",
    stream: "cam",
    seq,
    ts: 1_700_000_000_000 + seq * 100,
    live: false,
    image: { width: 64, height: 48, format: "rgb24", data: new Uint8Array(64 * 48 * 3) },
    detections: [{ class: "person", classId: 0, score: 0.91234, box: [1.234, 2, 30.5, 40], trackId: 7 }],
    timings: {},
  };
}
const event = (seq: number, type = "cross", data: Record<string, unknown> = { line: "door", direction: "in", trackId: 7 }): Event => ({ kind: "event", stream: "cam", seq, ts: 1_700_000_000_000 + seq * 100, type, data });

async function makeSink(def: SinkDefinition<any>, options: unknown, withBus = true): Promise<{ sink: SinkInstance; log: CapturedLog }> {
  const log = captureLog(def.name);
  const ctx: StageContext = { stage: "out", pipeline: "shop", log, signal: new AbortController().signal, ...(withBus ? { nats: bus } : {}) };
  return { sink: await def.create(v.parse(def.options, options), ctx), log };
}

describe("sink-nats", () => {
  test("publishes each frame's detections and each event as plain JSON on per-stream subjects", async () => {
    const got: { subject: string; data: unknown }[] = [];
    const sub = nc.subscribe("shop1.>", { callback: (_e, m) => void got.push({ subject: m.subject, data: m.json() }) });
    await nc.flush();
    const { sink } = await makeSink(sinkNats, { subject: "shop1" });
    await sink.process(frame(3));
    await sink.process(event(3));
    await sink.process(event(4, "counts", { lines: { door: { in: 1, out: 0 } } }));
    await sink.close!();
    await until(() => got.length === 3, "3 results on shop1.>");
    sub.unsubscribe();
    expect(got).toEqual([
      { subject: "shop1.cam.frames", data: { stream: "cam", seq: 3, ts: 1_700_000_000_300, detections: [{ class: "person", score: 0.91, box: [1.23, 2, 30.5, 40], trackId: 7 }] } },
      { subject: "shop1.cam.events.cross", data: { stream: "cam", seq: 3, ts: 1_700_000_000_300, type: "cross", line: "door", direction: "in", trackId: 7 } },
      { subject: "shop1.cam.events.counts", data: { stream: "cam", seq: 4, ts: 1_700_000_000_400, type: "counts", lines: { door: { in: 1, out: 0 } } } },
    ]);
  });

  test("with its own url and frames: false it publishes events only", async () => {
    const got: string[] = [];
    const sub = nc.subscribe("shop2.>", { callback: (_e, m) => void got.push(m.subject) });
    await nc.flush();
    const { sink, log } = await makeSink(sinkNats, { subject: "shop2", url: server.url, frames: false }, false);
    for (let i = 0; i < 5; i++) {
      await sink.process(frame(i));
      await sink.process(event(i, "enter", { zone: "shelf", trackId: i }));
    }
    await sink.close!();
    await until(() => got.length === 5, "5 events on shop2.>");
    await nc.flush();
    sub.unsubscribe();
    expect(got).toEqual(Array(5).fill("shop2.cam.events.enter"));
    expect(log.text()).toContain("publishing events on shop2");
  });

  test("while the server restarts, events wait in order and reach it once it is back", async () => {
    const own = await startJetStreamServer();
    const ownBus = await NatsBus.connect({ url: own.url, log: captureLog("bus") });
    const ownNc = await client(own.url);
    // A stream stands in for a subscriber: it is back with the server, whoever reconnects first.
    await (await manager(ownNc)).streams.add({ name: "LIVE", subjects: ["shop4.>"] });
    const log = captureLog("sink-nats");
    const sink = await sinkNats.create(v.parse(sinkNats.options, { subject: "shop4" }), { stage: "out", pipeline: "shop", log, signal: new AbortController().signal, nats: ownBus });
    await sink.process(event(0));
    await own.stop();
    await until(() => !ownBus.stats.connected, "the client to notice the disconnect");
    const rest = (async () => {
      for (let i = 1; i < 6; i++) await sink.process(event(i));
    })();
    await sleep(1000);
    await own.start();
    await rest;
    expect(log.text()).toContain("NATS link down while publishing event cam#1 (cross)");
    expect((await readStream(ownNc, "LIVE")).map((m) => m.data.seq)).toEqual([0, 1, 2, 3, 4, 5]);
    await Promise.all([ownBus.close(), ownNc.close()]);
    await own.dispose();
  }, 30_000);

  test("on a memory bus without url it says once that it is idle and publishes nothing", async () => {
    const { sink, log } = await makeSink(sinkNats, { subject: "shop3" }, false);
    await sink.process(frame(0));
    await sink.process(event(0));
    await sink.close?.();
    expect(log.lines.filter((l) => l.includes("idle"))).toHaveLength(1);
    expect(log.text()).toContain("sink-nats is idle: the pipeline's bus is memory");
  });
});

describe("sink-jetstream", () => {
  test("creates the stream, and a JetStream consumer reads every event in order, with its Msg-Id", async () => {
    const { sink, log } = await makeSink(sinkJetStream, { subject: "store", stream: { name: "STORE" } });
    const events = Array.from({ length: 20 }, (_, i) => event(i, i % 2 ? "enter" : "cross", { trackId: i }));
    await sink.process(frame(0)); // frames are not stored by default
    for (const e of events) await sink.process(e);
    await sink.close!();
    expect(log.text()).toContain("created stream STORE (store.>, file storage");

    const got = await readStream(nc, "STORE");
    expect(got.map((m) => m.data.seq)).toEqual(events.map((e) => e.seq));
    expect(got.map((m) => m.subject)).toEqual(events.map((e) => `store.cam.events.${e.type}`));
    expect(got[0].data).toEqual({ stream: "cam", seq: 0, ts: 1_700_000_000_000, type: "cross", trackId: 0 });
    expect(got.map((m) => m.msgId)).toEqual(events.map((e) => resultId("shop", e, toJsonLine(e, 2))));
  });

  test("a result published again with the same Msg-Id is stored once", async () => {
    const { sink, log } = await makeSink(sinkJetStream, { subject: "dup", stream: { name: "DUP" } });
    const e = event(1);
    await sink.process(e);
    await sink.process(e); // as a retry after a lost ack would
    await sink.process(event(2));
    // Any other publisher reusing the id is deduplicated as well.
    const ack = await jetstream(nc).publish("dup.cam.events.cross", toJsonLine(e, 2), { msgID: resultId("shop", e, toJsonLine(e, 2)) });
    expect(ack.duplicate).toBe(true);
    await sink.close!();
    expect(log.text()).toContain("stored 2 results, 1 retries recognised as duplicates");
    const jsm = await manager(nc);
    expect((await jsm.streams.info("DUP")).state.messages).toBe(2);
    expect((await readStream(nc, "DUP")).map((m) => m.data.seq)).toEqual([1, 2]);
  });

  test("stores frame results too when asked, into an existing stream", async () => {
    const jsm = await manager(nc);
    await jsm.streams.add({ name: "LIVE", subjects: ["live.>"] });
    const { sink, log } = await makeSink(sinkJetStream, { subject: "live", frames: true, events: false });
    await sink.process(frame(5));
    await sink.process(event(5));
    await sink.close!();
    expect(log.text()).toContain("storing in stream LIVE");
    const got = await readStream(nc, "LIVE");
    expect(got.map((m) => m.subject)).toEqual(["live.cam.frames"]);
    expect(got[0].data.detections).toEqual([{ class: "person", score: 0.91, box: [1.23, 2, 30.5, 40], trackId: 7 }]);
  });

  test("without a stream for its subject it refuses to start, saying how to fix it", async () => {
    await expect(makeSink(sinkJetStream, { subject: "nowhere" })).rejects.toThrow(/no JetStream stream captures nowhere\.> .*set this stage's stream: \{ name: … \}/);
  });

  test("on a server without JetStream it refuses to start, saying so", async () => {
    const plain = await startJetStreamServer({ jetstream: false });
    try {
      await expect(makeSink(sinkJetStream, { subject: "x", url: plain.url, stream: { name: "X" } }, false)).rejects.toThrow(/^JetStream is not enabled on 127\.0\.0\.1:\d+: run nats-server with -js/);
    } finally {
      await plain.dispose();
    }
  });

  test("closed while the server is away, it reports the event it could not store", async () => {
    const own = await startJetStreamServer();
    const { sink, log } = await makeSink(sinkJetStream, { subject: "gone", url: own.url, stream: { name: "GONE" }, ackTimeout: 0.2, retryDelay: 0.05 }, false);
    await sink.process(event(0));
    await own.stop();
    const outcome = Promise.resolve(sink.process(event(1))).then(() => "stored", (e: Error) => e.message);
    await until(() => log.text().includes("storing event cam#1 (cross) on gone.cam.events.cross failed"), "a failed attempt");
    await sink.close!();
    expect(await outcome).toMatch(/^event cam#1 \(cross\) NOT stored on gone\.cam\.events\.cross: stage closed while JetStream was unreachable/);
    expect(log.lines.filter((l) => l.startsWith("error"))).toEqual(["error [sink-jetstream] stored 1 results; event cam#1 (cross) NOT stored: the stage closed while JetStream was unreachable"]);
    await own.dispose();
  }, 30_000);

  test("on a memory bus without url it says once that it is idle", async () => {
    const { sink, log } = await makeSink(sinkJetStream, { subject: "x" }, false);
    await sink.process(event(0));
    expect(log.lines.filter((l) => l.includes("sink-jetstream is idle"))).toHaveLength(1);
  });
});
