/**
 * The run summary's accounting, per stage: every message that reached a
 * transform or sink is sent on, absorbed, dropped, failed or still in
 * flight — under drops (a slow sink and a slow stage fed faster than they
 * go), failures (a stage that throws on some frames), replicas finishing
 * out of order (the reorder window gives up on slow ones), fan-out (two
 * consumers of one stage) and a transform that emits several outputs or
 * none.
 */
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as v from "valibot";
import { derive } from "../runtime/core/message.ts";
import { defineOperator } from "../runtime/core/operator.ts";
import { balance, totals } from "../runtime/core/stats.ts";
import { makeFrame } from "./support/frames.ts";
import { NatsBus } from "../runtime/bus/nats.ts";
import { Executor } from "../runtime/engine/executor.ts";
import { startNatsServer, stopAllNatsServers } from "./support/nats.ts";
import { captureLog, parse, registryWith, runPipeline } from "./support/pipeline.ts";

setDefaultTimeout(60_000);

const buses: NatsBus[] = [];
afterAll(async () => {
  for (const b of buses) await b.close();
  await stopAllNatsServers();
});

const burst = defineOperator({
  name: "acct-burst",
  kind: "source",
  description: "Test source: `n` live frames on `streams` streams, one every `gapMs` (the camera's rate).",
  options: v.strictObject({ n: v.number(), streams: v.number(), gapMs: v.number() }),
  create({ n, streams, gapMs }) {
    return {
      async run(emit) {
        for (let i = 0; i < n; i++) {
          await emit(makeFrame(Math.floor(i / streams), { live: true, stream: `s${i % streams}`, width: 4, height: 4 }));
          if (gapMs) await new Promise((r) => setTimeout(r, gapMs));
        }
      },
    };
  },
});

const flaky = defineOperator({
  name: "acct-flaky",
  kind: "transform",
  description: "Test stage: takes `ms` per message, throws on seq % 5 == 1.",
  options: v.strictObject({ ms: v.number() }),
  create({ ms }) {
    return {
      async process(msg) {
        await new Promise((r) => setTimeout(r, ms));
        if (msg.seq % 5 === 1) throw new Error(`bad frame ${msg.seq}`);
        return msg;
      },
    };
  },
});

const jitter = defineOperator({
  name: "acct-jitter",
  kind: "transform",
  description: "Test stage: `slowMs` on seq % slowEvery == 0 (so replicas finish out of order), 1 ms else; nothing for seq % 11 == 3, two outputs for seq % 13 == 2.",
  options: v.strictObject({ slowEvery: v.number(), slowMs: v.number() }),
  create({ slowEvery, slowMs }) {
    return {
      async process(msg) {
        await new Promise((r) => setTimeout(r, msg.seq % slowEvery === 0 ? slowMs : 1));
        if (msg.seq % 11 === 3) return null;
        if (msg.seq % 13 === 2 && msg.kind === "frame") return [msg, derive(msg, { meta: { copy: true } })];
        return msg;
      },
    };
  },
});

const slowSink = defineOperator({
  name: "acct-sink",
  kind: "sink",
  description: "Test sink: takes `ms` per message.",
  options: v.strictObject({ ms: v.number() }),
  create({ ms }) {
    return {
      async process() {
        if (ms) await new Promise((r) => setTimeout(r, ms));
      },
    };
  },
});

describe("run summary accounting", () => {
  test("per stage, arrived = sent on + absorbed + dropped + failed + in flight (drops, failures, replicas, fan-out)", async () => {
    const registry = await registryWith(burst, flaky, jitter, slowSink);
    const N = 600;
    const spec = parse(
      `name: accounting
stages:
  - id: cam
    use: acct-burst
    with: { n: ${N}, streams: 3, gapMs: 1 }
  - id: check
    use: acct-flaky
    with: { ms: 4 }
    inbox: 2
  - id: tap
    use: acct-sink
    in: check
    with: { ms: 0 }
  - id: spread
    use: acct-jitter
    in: check
    with: { slowEvery: 7, slowMs: 30 }
    replicas: 3
    inbox: 4
  - id: slow
    use: acct-sink
    in: spread
    with: { ms: 15 }
    inbox: 2
  - id: fast
    use: acct-sink
    in: spread
    with: { ms: 0 }
`,
      registry,
    );
    const run = await runPipeline(spec);
    const rows = balance(run.summary);
    // Every stage adds up; the table says which one does not.
    expect(rows.filter((r) => !r.balanced)).toEqual([]);
    expect(rows.map((r) => r.stage)).toEqual(["check", "tap", "spread", "slow", "fast"]);

    const cam = run.stage("cam");
    const check = run.stage("check");
    const spread = run.stage("spread");
    expect(cam.sent).toBe(N);
    // Fan-out: both consumers of `check` and of `spread` see every message their producer sent.
    expect(check.arrived).toBe(N);
    expect(run.stage("tap").arrived).toBe(check.sent);
    expect(spread.arrived).toBe(check.sent);
    expect(run.stage("slow").arrived).toBe(spread.sent);
    expect(run.stage("fast").arrived).toBe(spread.sent);
    // The run exercised what it is meant to: drops at the fast-fed stages, failures, outputs several and none, sinks absorbing.
    expect(check.dropped).toBeGreaterThan(0);
    expect(check.failed).toBeGreaterThan(0);
    expect(run.stage("slow").dropped).toBeGreaterThan(0);
    expect(spread.absorbed).toBeGreaterThan(0);
    expect(spread.extraOutputs).toBeGreaterThan(0);
    expect(run.stage("fast").absorbed).toBe(run.stage("fast").received);
    // Nothing is in flight once a run has drained.
    expect(rows.every((r) => r.inFlight === 0)).toBe(true);
    expect(totals(run.summary).dropped).toBe(run.summary.stages.reduce((a, s) => a + s.dropped, 0));
  });

  test("replicas behind a slow one: a message given up on by the reorder window is dropped once, not twice", async () => {
    const registry = await registryWith(burst, jitter, slowSink);
    // A big inbox, so that drops come only from the reorder window: every 60th message takes 150 ms, and the other two replicas fill the window of 12 behind it.
    const spec = parse(
      `name: reorder
stages:
  - id: cam
    use: acct-burst
    with: { n: 300, streams: 1, gapMs: 0 }
  - id: spread
    use: acct-jitter
    with: { slowEvery: 60, slowMs: 150 }
    replicas: 3
    inbox: 400
  - id: out
    use: acct-sink
    with: { ms: 0 }
    inbox: 400
`,
      registry,
    );
    const run = await runPipeline(spec);
    const spread = run.stage("spread");
    expect(run.log.text()).toContain("reorder window full behind a slow replica");
    expect(spread.arrived).toBe(300);
    expect(spread.dropped).toBeGreaterThan(0);
    expect(balance(run.summary).filter((r) => !r.balanced)).toEqual([]);
    // What the sink got is what spread says it sent on.
    expect(run.stage("out").received).toBe(spread.sent);
  });

  test("a drain that times out on a stuck stage: what it held is in flight, and the stage still adds up", async () => {
    const hang = defineOperator({ name: "acct-hang", kind: "transform", description: "Test stage: never answers.", options: v.strictObject({}), create: () => ({ process: () => new Promise<never>(() => {}) }) });
    const registry = await registryWith(burst, hang, slowSink);
    const spec = parse(
      `name: abandon
stages:
  - id: cam
    use: acct-burst
    with: { n: 10, streams: 1, gapMs: 0 }
  - id: stuck
    use: acct-hang
    inbox: 2
  - id: out
    use: acct-sink
    with: { ms: 0 }
`,
      registry,
    );
    const run = await runPipeline(spec, { drainTimeoutMs: 200 });
    const summary = run.summary;
    expect(run.log.text()).toContain("drain timed out; closing stages with messages still in flight");
    const [stuck] = balance(summary).filter((r) => r.stage === "stuck");
    // One in work, two queued (its inbox), the other seven dropped from the inbox (live frames).
    expect(stuck).toEqual({ stage: "stuck", arrived: 10, out: 0, absorbed: 0, dropped: 7, failed: 0, inFlight: 3, balanced: true });
    expect(balance(summary).every((r) => r.balanced)).toBe(true);
  }, 30_000);

  test("across processes (NATS): a stage whose outputs are dropped on their way to a slow remote worker still adds up", async () => {
    const registry = await registryWith(burst, flaky, slowSink);
    const server = await startNatsServer();
    const text = `name: remote
stages:
  - id: cam
    use: acct-burst
    with: { n: 200, streams: 2, gapMs: 1 }
  - id: check
    use: acct-flaky
    with: { ms: 0 }
  - id: far
    use: acct-sink
    with: { ms: 20 }
`;
    const node = async (stages: string[], workerId: string) => {
      const log = captureLog(workerId);
      const bus = await NatsBus.connect({ url: server.url, log: log.child("bus") });
      buses.push(bus);
      const exec = new Executor(parse(text, registry), bus, { log, stages, workerId, requestTimeoutMs: 3000 });
      await exec.start();
      return exec;
    };
    const worker = await node(["far"], "far-worker");
    const edge = await node(["cam", "check"], "edge");
    const summary = await edge.done;
    const remote = await worker.done;
    const check = summary.stages.find((x) => x.stage === "check")!;
    // Live frames into a worker 20x slower than the camera: most outputs of check are dropped on the way (no worker has room), after check sent them on.
    expect(check.droppedOnRoute).toBeGreaterThan(0);
    expect(check.failed).toBeGreaterThan(0);
    expect(balance(summary).filter((r) => !r.balanced)).toEqual([]);
    expect(balance(remote).filter((r) => !r.balanced)).toEqual([]);
    const far = remote.stages.find((x) => x.stage === "far")!;
    expect(far.arrived).toBeGreaterThan(0);
    expect(far.arrived).toBeLessThanOrEqual(check.sent);
  });
});
