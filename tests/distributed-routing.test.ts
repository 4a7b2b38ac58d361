/**
 * Routing across "processes": each node is an Executor with its own NATS
 * connection to a real nats-server, running part of the same pipeline with
 * test operators (a counting source, a sleeping stage, a collecting sink).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as v from "valibot";
import { Executor, type RunOptions } from "../runtime/engine/executor.ts";
import type { Message } from "../runtime/core/message.ts";
import { NatsBus } from "../runtime/bus/nats.ts";
import { defineOperator } from "../runtime/core/operator.ts";
import type { Registry } from "../runtime/spec/registry.ts";
import type { PipelineSummary } from "../runtime/core/stats.ts";
import { makeFrame } from "./support/frames.ts";
import { startNatsServer, stopAllNatsServers, type NatsServer } from "./support/nats.ts";
import { captureLog, parse, registryWith, type CapturedLog } from "./support/pipeline.ts";
import { collected, testOperators } from "./support/test-operators.ts";
import { sleep, until } from "./support/wait.ts";

/** Test source: `frames` small file (non-live) frames, `everyMs` apart. */
const countSource = defineOperator({
  name: "test-count",
  kind: "source",
  description: "Test source: numbered 8x8 frames.",
  options: v.strictObject({ frames: v.number(), everyMs: v.optional(v.number(), 0) }),
  create: ({ frames, everyMs }) => ({
    async run(emit, signal) {
      for (let i = 0; i < frames && !signal.aborted; i++) {
        await emit(makeFrame(i, { width: 8, height: 8 }));
        if (everyMs) await sleep(everyMs);
      }
    },
  }),
});

/** src → work (sleeps MS per frame, routed by ROUTE) → out (collected under KEY). */
const PIPELINE = (name: string) => `
name: ${name}
stages:
  - id: src
    use: test-count
    with:
      frames: \${FRAMES:-40}
      everyMs: \${EVERY:-0}
    placement: edge
  - id: work
    use: test-slow
    with:
      ms: \${MS:-5}
    route: \${ROUTE:-least-loaded}
  - id: out
    use: test-collect
    with: { key: ${name} }
    placement: edge
`;

let registry: Registry;
let server: NatsServer;
const buses: NatsBus[] = [];

beforeAll(async () => {
  registry = await registryWith(countSource, ...testOperators);
  server = await startNatsServer();
});
afterAll(async () => {
  for (const b of buses) await b.close();
  await stopAllNatsServers();
});

interface Node {
  exec: Executor;
  bus: NatsBus;
  log: CapturedLog;
  done: Promise<PipelineSummary>;
}

/** Starts one node running `stages` of the pipeline on its own connection. */
async function node(name: string, stages: string[], env: Record<string, string> = {}, opts: RunOptions & { url?: string } = {}): Promise<Node> {
  const log = captureLog(opts.workerId ?? stages.join(","));
  const bus = await NatsBus.connect({ url: opts.url ?? server.url, log: log.child("bus") });
  buses.push(bus);
  const exec = new Executor(parse(PIPELINE(name), registry, env), bus, { log, stages, requestTimeoutMs: 3000, ...opts });
  await exec.start();
  return { exec, bus, log, done: exec.done };
}

const seqs = (key: string) => (collected.get(key) ?? []).map((m: Message) => m.seq);
const range = (n: number) => Array.from({ length: n }, (_, i) => i);
const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b);

describe("distributed routing", () => {
  test("least-loaded sends more frames to the faster of two workers, and every frame arrives once", async () => {
    const fast = await node("ll", ["work"], { MS: "5" }, { workerId: "fast" });
    const slow = await node("ll", ["work"], { MS: "15" }, { workerId: "slow" });
    const src = await node("ll", ["src", "out"]);
    const summary = await src.done;
    await Promise.all([fast.done, slow.done]);
    const sent = src.exec.routing().work;
    expect(sent.fast + sent.slow).toBe(40);
    expect(sent.fast).toBeGreaterThan(sent.slow);
    expect(sorted(seqs("ll"))).toEqual(range(40));
    expect(summary.stages.every((s) => s.dropped === 0 && s.failed === 0)).toBe(true);
    // Workers end by themselves once the source's stages announced end of stream.
    expect((await fast.done).reason).toBe("upstream stages finished");
  });

  test("queue: a NATS queue group shares the frames, with backpressure across NATS for a file source", async () => {
    const a = await node("q", ["work"], { ROUTE: "queue", MS: "10" }, { workerId: "a" });
    const b = await node("q", ["work"], { ROUTE: "queue", MS: "10" }, { workerId: "b" });
    const src = await node("q", ["src", "out"], { ROUTE: "queue" });
    // Frames emitted but not yet collected: bounded by the workers' capacity, not the 40 frames of the file.
    let emitted = 0;
    let ahead = 0;
    const probe = setInterval(() => {
      emitted = src.exec.live().find((s) => s.id === "src")!.stats.sent;
      ahead = Math.max(ahead, emitted - seqs("q").length);
    }, 2);
    await src.done;
    clearInterval(probe);
    const [sa, sb] = await Promise.all([a.done, b.done]);
    const got = (s: PipelineSummary) => s.stages.find((x) => x.stage === "work")!.received;
    expect(got(sa) + got(sb)).toBe(40);
    expect(got(sa)).toBeGreaterThan(0);
    expect(got(sb)).toBeGreaterThan(0);
    expect(sorted(seqs("q"))).toEqual(range(40));
    // 2 workers x capacity 3 in flight, plus the sink's inbox and one being handed over.
    expect(ahead).toBeLessThanOrEqual(10);
  });

  test("a worker joining mid-stream gets work; one leaving mid-stream hands over without losing or repeating a frame", async () => {
    const first = await node("join", ["work"], { MS: "10", FRAMES: "80" }, { workerId: "first" });
    const src = await node("join", ["src", "out"], { FRAMES: "80" });
    await until(() => seqs("join").length >= 15, "15 frames through the first worker");
    const second = await node("join", ["work"], { MS: "10", FRAMES: "80" }, { workerId: "second" });
    await until(() => (src.exec.routing().work?.second ?? 0) >= 5, "5 frames to the second worker");
    first.exec.stop("leaving");
    expect((await first.done).reason).toBe("leaving");
    await src.done;
    await second.done;
    expect(src.log.text()).toContain("worker second (any) joined stage work");
    // Exactly once: a frame sent to the first worker as it stopped taking work was re-sent to the second (no responders).
    expect(sorted(seqs("join"))).toEqual(range(80));
    expect(src.exec.routing().work.first).toBeGreaterThanOrEqual(15);
  });

  test("foreign messages on a worker's subjects are rejected and logged with the subject; the stream goes on", async () => {
    const w = await node("foreign", ["work"], { FRAMES: "20" }, { workerId: "w1" });
    const raw = w.bus.nc;
    raw.publish("fw.foreign._w.work.w1", "not a frame");
    const reply = await raw.request("fw.foreign._w.work.w1", new Uint8Array([0x46, 0x57, 0x4d, 0x32, 0, 0, 0, 2, 0x7b, 0x7d]), { timeout: 3000 });
    expect(reply.string()).toBe("rejected");
    const src = await node("foreign", ["src", "out"], { FRAMES: "20" });
    await src.done;
    await w.done;
    expect(sorted(seqs("foreign"))).toEqual(range(20));
    expect(w.bus.stats.rejected).toBe(2);
    expect(w.log.text()).toContain("rejected message on fw.foreign._w.work.w1 (1 so far): not framewire wire format v2");
    expect(w.log.text()).toContain("rejected message on fw.foreign._w.work.w1 (2 so far): frame meta has no wire format version (v)");
  });

  test("file frames never drop for want of a worker: they wait past the request timeout, said in the log, and all arrive once one starts", async () => {
    const src = await node("nowork", ["src", "out"], { FRAMES: "20" }, { requestTimeoutMs: 400 });
    await until(() => src.log.text().includes("still waiting (start one, or stop the pipeline)"), "the waiting message");
    await until(() => (src.log.text().match(/still waiting/g) ?? []).length >= 2, "a second waiting message, one timeout later");
    const w = await node("nowork", ["work"], { FRAMES: "20" }, { workerId: "late" });
    const summary = await src.done;
    await w.done;
    expect(sorted(seqs("nowork"))).toEqual(range(20));
    expect(summary.stages.every((s) => s.dropped === 0 && s.failed === 0)).toBe(true);
    expect(src.log.text()).toMatch(/frame s#0 has waited \d+ s for a worker of stage work/);
  });

  test("NATS restarting mid-stream: the pipeline reconnects and finishes by itself", async () => {
    const own = await startNatsServer();
    const w = await node("restart", ["work"], { MS: "10", FRAMES: "60" }, { url: own.url, workerId: "w" });
    const src = await node("restart", ["src", "out"], { FRAMES: "60" }, { url: own.url });
    await until(() => seqs("restart").length >= 15, "15 frames before the restart");
    await own.stop();
    await until(() => !src.bus.stats.connected, "the source node to notice");
    await own.start();
    const summary = await src.done;
    await w.done;
    expect(src.bus.stats.reconnects).toBe(1);
    expect(w.bus.stats.reconnects).toBe(1);
    // At least once: every frame arrives; one in flight at the cut may arrive twice.
    expect([...new Set(seqs("restart"))].sort((a, b) => a - b)).toEqual(range(60));
    expect(summary.reason).toBe("sources finished");
  }, 60_000);
});

describe("prefer-local over a leaf node", () => {
  let hub: NatsServer;
  let edge: NatsServer;
  beforeAll(async () => {
    hub = await startNatsServer({ leafListen: true });
    edge = await startNatsServer({ leafRemotes: [hub.leafPort!] });
    await hub.waitFor(/Leafnode connection created/);
  });

  const run = async (name: string, env: Record<string, string>) => {
    const e = { ROUTE: "prefer-local", ...env };
    const local = await node(name, ["work"], e, { url: edge.url, workerId: "edge-1", placement: "edge" });
    const cloud = await node(name, ["work"], e, { url: hub.url, workerId: "cloud-1", placement: "cloud" });
    const src = await node(name, ["src", "out"], e, { url: edge.url });
    await until(() => src.log.text().includes("worker cloud-1 (cloud) joined"), "the cloud worker's advert across the leaf link");
    await src.done;
    await Promise.all([local.done, cloud.done]);
    return src.exec.routing().work;
  };

  test("edge workers take everything while they keep up", async () => {
    // A frame every 30 ms, 2 ms of work: the edge worker never has 3 frames waiting.
    const sent = await run("pl-easy", { FRAMES: "20", EVERY: "30", MS: "2" });
    expect(sent["edge-1"]).toBe(20);
    expect(sent["cloud-1"] ?? 0).toBe(0);
    expect(sorted(seqs("pl-easy"))).toEqual(range(20));
  });

  test("a saturated edge spills to the cloud worker over the leaf link", async () => {
    const sent = await run("pl-spill", { FRAMES: "30", MS: "20" });
    expect(sent["edge-1"]).toBeGreaterThan(0);
    expect(sent["cloud-1"]).toBeGreaterThan(0);
    expect(sent["edge-1"] + sent["cloud-1"]).toBe(30);
    expect(sorted(seqs("pl-spill"))).toEqual(range(30));
  });
});
