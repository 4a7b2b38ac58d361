/**
 * Store-and-forward with real nats-servers stopped and restarted mid-stream:
 * every event must arrive exactly once and in order.
 *  - edge leaf + hub (the shipped configs): the hub goes away, the edge's
 *    JetStream stream keeps the events, the hub's stream sources them once
 *    it is back;
 *  - the JetStream server the sink publishes to goes away: the sink holds
 *    the events back and retries (same Msg-Id) until it is back.
 */
import { afterAll, expect, test } from "bun:test";
import * as v from "valibot";
import sinkJetStream from "../operators/sink-jetstream.ts";
import type { Event } from "../runtime/core/message.ts";
import { NatsBus } from "../runtime/bus/nats.ts";
import type { SinkInstance, StageContext } from "../runtime/core/operator.ts";
import { client, disposeAllNatsServers, manager, readStream, startHubAndEdge, startJetStreamServer, waitForMessages } from "./support/jetstream.ts";
import { captureLog, type CapturedLog } from "./support/pipeline.ts";
import { sleep } from "./support/wait.ts";

afterAll(disposeAllNatsServers);

const event = (seq: number): Event => ({ kind: "event", stream: "cam", seq, ts: 1_700_000_000_000 + seq, type: seq % 3 ? "enter" : "cross", data: { trackId: seq } });
const seqs = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i);

async function jetStreamSink(url: string, options: Record<string, unknown>): Promise<{ sink: SinkInstance; log: CapturedLog; bus: NatsBus }> {
  const log = captureLog("publish");
  const bus = await NatsBus.connect({ url, log: log.child("bus") });
  const ctx: StageContext = { stage: "publish", pipeline: "retail", log, signal: new AbortController().signal, nats: bus };
  const sink = await sinkJetStream.create(v.parse(sinkJetStream.options, options), ctx);
  return { sink, log, bus };
}

/** Feeds events one after another as the executor does: each waits until the sink is done with the previous one. */
async function feed(sink: SinkInstance, from: number, to: number): Promise<void> {
  for (const i of seqs(from, to)) await sink.process(event(i));
}

test("edge leaf + hub: the hub stops for seconds mid-stream; its stream, sourcing the edge's, gets every event once, in order", async () => {
  const { hub, edge, hubUrl, edgeDomain, dispose } = await startHubAndEdge();
  const { sink, log, bus } = await jetStreamSink(edge.url, { subject: "retail.store1", stream: { name: "RETAIL" } });
  const hubNc = await client(hubUrl);
  const edgeNc = await client(edge.url);
  // The cloud side, as docs/retail.md sets it up: a stream sourcing the edge's across the leaf link.
  await (await manager(hubNc)).streams.add({ name: "RETAIL_ALL", sources: [{ name: "RETAIL", domain: edgeDomain }] });

  await feed(sink, 0, 20);
  await waitForMessages(hubNc, "RETAIL_ALL", 20);
  await hub.stop();
  await feed(sink, 20, 45); // the cloud link is down: the edge keeps them
  expect((await (await manager(edgeNc)).streams.info("RETAIL")).state.messages).toBe(45);
  await sleep(2000);
  await hub.start();
  await feed(sink, 45, 60);
  await waitForMessages(hubNc, "RETAIL_ALL", 60);
  await sink.close!();

  const got = await readStream(hubNc, "RETAIL_ALL");
  expect(got.map((m) => m.data.seq)).toEqual(seqs(0, 60));
  expect(got.map((m) => m.subject)).toEqual(seqs(0, 60).map((i) => `retail.store1.cam.events.${event(i).type}`));
  // Sourcing keeps each event's Msg-Id: a hub consumer can still deduplicate its own redeliveries.
  expect(new Set(got.map((m) => m.msgId)).size).toBe(60);
  expect(got.every((m) => m.msgId?.startsWith("retail.cam."))).toBe(true);
  expect(log.text()).toContain("stored 60 results");
  await Promise.all([edgeNc.close(), hubNc.close(), bus.close()]);
  await dispose();
}, 120_000);

test("the JetStream server itself stops for seconds mid-stream: the sink holds events back and retries; each is stored once, in order", async () => {
  const server = await startJetStreamServer();
  const { sink, log, bus } = await jetStreamSink(server.url, { subject: "shop", stream: { name: "SHOP" }, ackTimeout: 1, maxRetryDelay: 0.5 });
  await feed(sink, 0, 15);
  await server.stop();
  // Meanwhile events keep coming; the executor would wait on each process() just as this loop does.
  const rest = feed(sink, 15, 40);
  await sleep(3000);
  await server.start();
  await rest;
  await sink.close!();

  const nc = await client(server.url);
  const got = await readStream(nc, "SHOP");
  expect(got.map((m) => m.data.seq)).toEqual(seqs(0, 40));
  expect((await (await manager(nc)).streams.info("SHOP")).state.messages).toBe(40);
  expect(log.text()).toMatch(/storing event cam#15 \(cross\) on shop\.cam\.events\.cross failed .*retrying/);
  expect(log.text()).toMatch(/event cam#15 \(cross\) stored after \d+ attempts/);
  expect(log.text()).not.toContain("NOT stored");
  await Promise.all([nc.close(), bus.close()]);
  await server.dispose();
}, 120_000);
