/** sink-webhook against a local Bun.serve endpoint that fails, hangs or refuses on purpose. */
import { afterEach, expect, test } from "bun:test";
import * as v from "valibot";
import sinkWebhook from "../operators/sink-webhook.ts";
import type { Event, Frame } from "../runtime/core/message.ts";
import type { SinkInstance } from "../runtime/core/operator.ts";
import { captureLog, type CapturedLog } from "./support/pipeline.ts";
import { sleep } from "./support/wait.ts";

interface Received {
  body: Record<string, unknown>;
  key: string | null;
  auth: string | null;
}

/** An endpoint that answers request n (from 0) with `respond(n)`; every request that reaches the handler is recorded. */
function endpoint(respond: (n: number) => Response | Promise<Response>) {
  const requests: Received[] = [];
  const delivered: Received[] = [];
  const server = Bun.serve({
    port: 0,
    hostname: "127.0.0.1",
    async fetch(req) {
      const r: Received = { body: (await req.json()) as Record<string, unknown>, key: req.headers.get("idempotency-key"), auth: req.headers.get("authorization") };
      const n = requests.push(r) - 1;
      const res = await respond(n);
      if (res.ok) delivered.push(r);
      return res;
    },
  });
  return { url: `http://127.0.0.1:${server.port}/hook`, requests, delivered, stop: () => server.stop(true) };
}
let stopServer: (() => unknown) | undefined;
afterEach(() => stopServer?.());

async function makeSink(options: Record<string, unknown>): Promise<{ sink: SinkInstance; log: CapturedLog }> {
  const log = captureLog("hook");
  const sink = await sinkWebhook.create(v.parse(sinkWebhook.options, options), { stage: "hook", pipeline: "shop", log, signal: new AbortController().signal });
  return { sink, log };
}

const event = (seq: number): Event => ({ kind: "event", stream: "cam", seq, ts: 1_700_000_000_000 + seq, type: "cross", data: { line: "door", direction: seq % 2 ? "in" : "out", trackId: seq } });
const frame = (seq: number): Frame => ({ kind: "frame", stream: "cam", seq, ts: 0, live: false, image: { width: 1, height: 1, format: "rgb24", data: new Uint8Array(3) }, detections: [], timings: {} });

test("the endpoint fails the first requests: every event is delivered once, in order, after retries with backoff", async () => {
  const hook = endpoint((n) => (n < 4 ? new Response("overloaded", { status: 503 }) : new Response("ok")));
  stopServer = hook.stop;
  const { sink, log } = await makeSink({ url: hook.url, retryDelay: 0.01, headers: { Authorization: "Bearer t0ken" } });
  for (let i = 0; i < 10; i++) {
    await sink.process(frame(i)); // frames are not posted by default
    await sink.process(event(i));
  }
  await sink.close!();
  expect(hook.delivered.map((r) => r.body.seq)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  expect(hook.delivered[1].body).toEqual({ stream: "cam", seq: 1, ts: 1_700_000_000_001, type: "cross", line: "door", direction: "in", trackId: 1 });
  expect(hook.delivered[0].auth).toBe("Bearer t0ken");
  // The four failures were all the first event's attempts, with one key.
  expect(hook.requests.slice(0, 5).map((r) => r.body.seq)).toEqual([0, 0, 0, 0, 0]);
  expect(new Set(hook.requests.slice(0, 5).map((r) => r.key)).size).toBe(1);
  expect(new Set(hook.delivered.map((r) => r.key)).size).toBe(10);
  const retries = log.lines.filter((l) => l.includes("failed (HTTP 503: overloaded)"));
  expect(retries.map((l) => l.match(/retrying in ([\d.]+) s/)![1])).toEqual(["0.01", "0.02", "0.04", "0.08"]);
  expect(log.text()).toContain("event cam#0 (cross) delivered to http://127.0.0.1");
  expect(log.text()).toContain("10 results delivered");
});

test("a request that outlives the timeout is sent again with the same Idempotency-Key", async () => {
  const hook = endpoint(async (n) => {
    if (n === 0) await sleep(800);
    return new Response("ok");
  });
  stopServer = hook.stop;
  const { sink, log } = await makeSink({ url: hook.url, timeout: 0.2, retryDelay: 0.01 });
  await sink.process(event(0));
  await sink.process(event(1));
  await sleep(900); // let the slow first request finish on the server side
  await sink.close!();
  expect(log.text()).toContain("failed (no answer within 0.2 s)");
  // The receiver saw event 0 twice, but can tell: same key.
  const zero = hook.delivered.filter((r) => r.body.seq === 0);
  expect(zero).toHaveLength(2);
  expect(zero[0].key).toBe(zero[1].key!);
  expect(hook.delivered.map((r) => r.key).filter((k, i, all) => all.indexOf(k) === i)).toHaveLength(2);
});

test("after its retries a result is given up with a clear error, counted at close", async () => {
  const hook = endpoint(() => new Response("down", { status: 500 }));
  stopServer = hook.stop;
  const { sink, log } = await makeSink({ url: hook.url, retries: 2, retryDelay: 0.01 });
  await expect(sink.process(event(7))).rejects.toThrow(/^event cam#7 \(cross\) NOT delivered to http:\/\/127\.0\.0\.1:\d+\/hook \(gave up after 3 attempts; last: HTTP 500: down\) — 1 lost so far$/);
  expect(hook.requests).toHaveLength(3);
  await sink.close!();
  expect(log.lines.at(-1)).toBe(`error [hook] 0 results delivered to ${hook.url}; 1 NOT delivered (see the errors above)`);
});

test("a 4xx answer is not retried", async () => {
  const hook = endpoint(() => new Response("bad token", { status: 401 }));
  stopServer = hook.stop;
  const { sink } = await makeSink({ url: hook.url, retryDelay: 0.01 });
  await expect(sink.process(event(1))).rejects.toThrow("(not retryable; last: HTTP 401: bad token)");
  expect(hook.requests).toHaveLength(1);
});

test("an unreachable endpoint is retried, then given up", async () => {
  const hook = endpoint(() => new Response("ok"));
  const url = hook.url;
  hook.stop(); // nothing listens there any more
  const { sink, log } = await makeSink({ url, retries: 1, retryDelay: 0.01 });
  await expect(sink.process(event(2))).rejects.toThrow(/NOT delivered .*gave up after 2 attempts/);
  expect(log.lines.filter((l) => l.includes("retrying in"))).toHaveLength(1);
});

test("options are checked", () => {
  expect(v.safeParse(sinkWebhook.options, { url: "ftp://x/y" }).success).toBe(false);
  expect(v.safeParse(sinkWebhook.options, { url: "http://x/y", retries: -1 }).success).toBe(false);
  expect(v.safeParse(sinkWebhook.options, { url: "http://x/y", method: "PUT" }).success).toBe(false);
});
