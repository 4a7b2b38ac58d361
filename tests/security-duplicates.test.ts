/**
 * Duplicate frames are refused at the receiving side: a (stream, seq) a
 * subscription or worker endpoint already took (a replay, a forged copy with
 * an older capture time, a sender's retry) is counted as `duplicate`,
 * answered `duplicate` and never reaches the stage; a restarted source
 * (seq from 0 again, later capture times) and a sink fed by two stages are
 * not mistaken for duplicates. Real nats-server on a free port.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { DuplicateWindow } from "../runtime/bus/dedupe.ts";
import { NatsBus } from "../runtime/bus/nats.ts";
import { encodeMessage } from "../runtime/bus/wire.ts";
import { derive, type Frame, type Message } from "../runtime/core/message.ts";
import { makeEvent, makeFrame } from "./support/frames.ts";
import { startNatsServer, stopAllNatsServers, type NatsServer } from "./support/nats.ts";
import { captureLog, type CapturedLog } from "./support/pipeline.ts";
import { until } from "./support/wait.ts";

setDefaultTimeout(60_000);

let server: NatsServer;
const buses: NatsBus[] = [];
let nc: NatsConnection;

beforeAll(async () => {
  server = await startNatsServer();
  nc = await connect({ servers: `127.0.0.1:${server.port}` });
});
afterAll(async () => {
  await nc?.close();
  for (const b of buses) await b.close();
  await stopAllNatsServers();
});

async function bus(): Promise<{ bus: NatsBus; log: CapturedLog }> {
  const log = captureLog("bus");
  const b = await NatsBus.connect({ url: server.url, log });
  buses.push(b);
  return { bus: b, log };
}

const frame = (seq: number, ts: number, timings: Record<string, number> = { detect: 1 }): Frame => derive(makeFrame(seq, { stream: "cam" }), { ts, timings });

describe("duplicate frames", () => {
  test("48 copies of a frame a worker already took are answered `duplicate`, counted, and never reach it", async () => {
    const { bus: b, log } = await bus();
    const taken: Message[] = [];
    b.serve("fw.dup._w.sink.w1", async (m) => {
      taken.push(m);
      return "done";
    });
    await b.nc.flush();
    const bytes = encodeMessage(frame(1, 1_000));
    expect((await nc.request("fw.dup._w.sink.w1", bytes, { timeout: 5000 })).string()).toBe("done");
    const replies: string[] = [];
    for (let i = 0; i < 48; i++) replies.push((await nc.request("fw.dup._w.sink.w1", bytes, { timeout: 5000 })).string());
    expect(replies).toEqual(Array(48).fill("duplicate"));
    expect(taken.map((m) => m.seq)).toEqual([1]);
    expect(b.stats.rejectedBy.duplicate).toBe(48);
    expect(b.stats.received).toBe(1);
    const lines = log.lines.filter((l) => l.includes("duplicate frame cam#1"));
    expect(lines.length).toBeGreaterThanOrEqual(1);
    expect(lines.length).toBeLessThanOrEqual(6); // rate-limited
  });

  test("a forged copy with an older capture time is refused; a restarted source is taken from seq 0 again", async () => {
    const { bus: b } = await bus();
    const got: Frame[] = [];
    b.subscribe("fw.dup.out", (m) => void got.push(m as Frame));
    await b.nc.flush();
    for (let s = 0; s < 5; s++) nc.publish("fw.dup.out", encodeMessage(frame(s, 10_000 + s)));
    nc.publish("fw.dup.out", encodeMessage(frame(1, 5))); // forged: seq 1 again, an older capture time
    nc.publish("fw.dup.out", encodeMessage(frame(4, 10_004))); // a replay of the newest
    // The camera process restarted: it counts from 0 again, with later capture times.
    for (let s = 0; s < 3; s++) nc.publish("fw.dup.out", encodeMessage(frame(s, 20_000 + s)));
    nc.publish("fw.dup.out", encodeMessage(frame(2, 20_002))); // and a retry of its newest
    nc.publish("fw.dup.out", encodeMessage(frame(99, 20_003)));
    await until(() => got.some((f) => f.seq === 99), "the last frame");
    expect(got.map((f) => `${f.seq}@${f.ts}`)).toEqual(["0@10000", "1@10001", "2@10002", "3@10003", "4@10004", "0@20000", "1@20001", "2@20002", "99@20003"]);
    expect(b.stats.rejectedBy.duplicate).toBe(3);
  });

  test("a sink fed by two stages takes each frame from both; events sharing a frame's seq are all taken", async () => {
    const { bus: b } = await bus();
    const got: Message[] = [];
    b.subscribe("fw.dup.both", (m) => void got.push(m));
    await b.nc.flush();
    nc.publish("fw.dup.both", encodeMessage(frame(7, 1, { detect: 1 })));
    nc.publish("fw.dup.both", encodeMessage(frame(7, 1, { detect: 1, nms: 1 })));
    for (const type of ["cross", "cross", "enter"]) nc.publish("fw.dup.both", encodeMessage({ ...makeEvent(7, type), stream: "cam" }));
    await until(() => got.length === 5, "2 frames and 3 events");
    expect(b.stats.rejectedBy.duplicate).toBe(0);
  });

  test("a subscription that wants duplicates can have them", async () => {
    const { bus: b } = await bus();
    const got: Message[] = [];
    b.subscribe("fw.dup.all", (m) => void got.push(m), { rejectDuplicates: false });
    await b.nc.flush();
    const bytes = encodeMessage(frame(1, 1));
    for (let i = 0; i < 3; i++) nc.publish("fw.dup.all", bytes);
    await until(() => got.length === 3, "3 copies");
  });
});

describe("DuplicateWindow", () => {
  test("is bounded per stream and in streams, forgetting the oldest", () => {
    const w = new DuplicateWindow(4, 2);
    for (let s = 0; s < 6; s++) expect(w.admit("a", s, s)).toBe(true);
    expect(w.admit("a", 5, 5)).toBe(false);
    expect(w.admit("a", 2, 2)).toBe(false); // 2..5 remembered
    expect(w.admit("a", 1, 1)).toBe(true); // forgotten: out of the window of 4
    expect(w.admit("b", 0, 0)).toBe(true);
    expect(w.admit("c", 0, 0)).toBe(true); // "a" was seen least recently: forgotten
    expect(w.size).toBe(2);
    expect(w.admit("a", 5, 5)).toBe(true);
    expect(w.admit("c", 0, 0)).toBe(false);
  });
});
