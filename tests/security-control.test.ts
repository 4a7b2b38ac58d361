/**
 * Control messages signed with the pipeline's shared key (FRAMEWIRE_CONTROL_KEY
 * or `controlKey`): a forged end of stream (with a worker id read from the
 * public load advert), a forged advert, one signed with another key and a
 * replay are refused, counted by reason and logged rate-limited, and the
 * pipeline runs on. Real nats-server on a free port; each node is an
 * Executor with its own connection, as in a split pipeline.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as v from "valibot";
import { connect, headers, type NatsConnection } from "@nats-io/transport-node";
import { ControlSigner, MAC_HEADER, TS_HEADER } from "../runtime/bus/control-auth.ts";
import { NatsBus } from "../runtime/bus/nats.ts";
import { EndOfStream, eosSubject, loadSubject } from "../runtime/bus/routing.ts";
import { ConfigError } from "../runtime/core/errors.ts";
import type { Message } from "../runtime/core/message.ts";
import { defineOperator } from "../runtime/core/operator.ts";
import type { PipelineSummary } from "../runtime/core/stats.ts";
import { Executor } from "../runtime/engine/executor.ts";
import type { Registry } from "../runtime/spec/registry.ts";
import { makeFrame } from "./support/frames.ts";
import { startNatsServer, stopAllNatsServers, type NatsServer } from "./support/nats.ts";
import { captureLog, parse, registryWith, type CapturedLog } from "./support/pipeline.ts";
import { collected, testOperators } from "./support/test-operators.ts";
import { until } from "./support/wait.ts";

setDefaultTimeout(60_000);

const KEY = "test-control-key-0123456789abcdef";

/** Gates a test source holds its frames at until the test opens them. */
const gates = new Map<string, { open: () => void; opened: Promise<void> }>();
function gate(key: string): () => void {
  let open!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  gates.set(key, { open, opened });
  return open;
}

/** Test source: `frames` file frames of stream "cam"; before frame `pauseAt` it waits for its gate. */
const gatedSource = defineOperator({
  name: "test-gated",
  kind: "source",
  description: "Test source: numbered frames, held at a gate.",
  options: v.strictObject({ key: v.string(), frames: v.number(), pauseAt: v.number() }),
  create: ({ key, frames, pauseAt }) => ({
    async run(emit, signal) {
      for (let i = 0; i < frames && !signal.aborted; i++) {
        if (i === pauseAt) await gates.get(key)!.opened;
        await emit(makeFrame(i, { width: 8, height: 8, stream: "cam" }));
      }
    },
  }),
});

const PIPELINE = (name: string) => `
name: ${name}
stages:
  - id: src
    use: test-gated
    with: { key: ${name}, frames: 60, pauseAt: 20 }
  - id: work
    use: test-slow
    with: { ms: 1 }
    route: least-loaded
  - id: out
    use: test-collect
    with: { key: ${name} }
`;

let registry: Registry;
let server: NatsServer;
const buses: NatsBus[] = [];
const conns: NatsConnection[] = [];

beforeAll(async () => {
  registry = await registryWith(gatedSource, ...testOperators);
  server = await startNatsServer();
});
afterAll(async () => {
  for (const b of buses) await b.close();
  for (const c of conns) await c.close();
  await stopAllNatsServers();
});

interface Node {
  exec: Executor;
  bus: NatsBus;
  log: CapturedLog;
  done: Promise<PipelineSummary>;
  finished: () => boolean;
}

async function node(name: string, stages: string[], workerId: string, controlKey: string | null = KEY): Promise<Node> {
  const log = captureLog(workerId);
  const bus = await NatsBus.connect({ url: server.url, log: log.child("bus"), controlKey });
  buses.push(bus);
  const exec = new Executor(parse(PIPELINE(name), registry), bus, { log, stages, workerId, requestTimeoutMs: 3000 });
  await exec.start();
  let finished = false;
  const done = exec.done.finally(() => (finished = true));
  return { exec, bus, log, done, finished: () => finished };
}

/** A client outside the pipeline: it knows the subjects, not the key. */
async function attacker(): Promise<NatsConnection> {
  const nc = await connect({ servers: `127.0.0.1:${server.port}` });
  conns.push(nc);
  return nc;
}

/** The worker id in the first load advert of `stage`, as anyone subscribed to the control subjects reads it. */
async function workerIdFromAdvert(nc: NatsConnection, pipeline: string, stage: string): Promise<string> {
  let id: string | undefined;
  const sub = nc.subscribe(loadSubject(pipeline, stage), {
    callback: (_e, m) => {
      id ??= (m.json() as { worker: string }).worker;
    },
  });
  await until(() => id !== undefined, `an advert of ${stage}`);
  sub.unsubscribe();
  return id!;
}

const seqs = (key: string) => (collected.get(key) ?? []).map((m: Message) => m.seq).sort((a, b) => a - b);
const range = (n: number) => Array.from({ length: n }, (_, i) => i);

describe("signed control messages", () => {
  test("a forged end of stream with the worker id from the advert does not stop a worker; every frame arrives", async () => {
    const open = gate("eos");
    const work = await node("eos", ["work"], "worker-1");
    const src = await node("eos", ["src", "out"], "camera-1");
    await until(() => seqs("eos").length === 20, "the first 20 frames");

    const nc = await attacker();
    const victim = await workerIdFromAdvert(nc, "eos", "src");
    expect(victim).toBe("camera-1");
    nc.publish(eosSubject("eos"), JSON.stringify({ stage: "src", worker: victim }));
    // Signed with another key, and a replay of a genuinely signed one from 10 minutes ago.
    const body = JSON.stringify({ stage: "src", worker: victim });
    const forgeries: [ControlSigner, number][] = [
      [new ControlSigner("some-other-key-0123456789"), Date.now()],
      [new ControlSigner(KEY), Date.now() - 10 * 60_000],
    ];
    for (const [signer, at] of forgeries) {
      const { ts, mac } = signer.sign(eosSubject("eos"), body, at);
      const h = headers();
      h.set(TS_HEADER, ts);
      h.set(MAC_HEADER, mac);
      nc.publish(eosSubject("eos"), body, { headers: h });
    }
    await nc.flush();
    const refused = () => work.bus.stats.rejectedBy.unsigned + work.bus.stats.rejectedBy["bad-signature"] + work.bus.stats.rejectedBy.stale;
    await until(() => refused() === 3 || work.finished(), "the worker refusing the three forged ends of stream (or stopping)");
    expect(work.finished()).toBe(false);
    expect(work.bus.stats.rejectedBy).toMatchObject({ unsigned: 1, "bad-signature": 1, stale: 1 });
    expect(work.log.text()).toContain(`refused control message on ${eosSubject("eos")} (1 so far): not signed`);

    open();
    const [s, w] = await Promise.all([src.done, work.done]);
    expect(seqs("eos")).toEqual(range(60));
    expect(w.reason).toBe("upstream stages finished");
    expect(s.stages.every((st) => st.dropped === 0 && st.failed === 0)).toBe(true);
  });

  test("a forged load advert does not add a worker: no frame is sent to it", async () => {
    const open = gate("adv");
    const work = await node("adv", ["work"], "worker-1");
    const src = await node("adv", ["src", "out"], "camera-1");
    await until(() => seqs("adv").length === 20, "the first 20 frames");
    const nc = await attacker();
    // A fake worker that looks idle and fast: a sender that believed it would send it everything.
    const fake = { worker: "evil", stage: "work", placement: "any", capacity: 1000, replicas: 64, inflight: 0, latencyMs: 0.001, cpu: 0, ts: Date.now() };
    const before = src.bus.stats.rejectedBy.unsigned;
    nc.publish(loadSubject("adv", "work"), JSON.stringify(fake));
    await nc.flush();
    await until(() => src.bus.stats.rejectedBy.unsigned > before, "the sender refusing the forged advert");
    open();
    await Promise.all([src.done, work.done]);
    expect(Object.keys(src.exec.routing().work)).toEqual(["worker-1"]);
    expect(seqs("adv")).toEqual(range(60));
  });

  test("a process without the key is refused by those with it, and the log says why", async () => {
    const keyed = await NatsBus.connect({ url: server.url, log: captureLog("sender"), controlKey: KEY });
    const log = captureLog("receiver");
    const keyedLog = await NatsBus.connect({ url: server.url, log, controlKey: KEY });
    const plain = await NatsBus.connect({ url: server.url, log: captureLog("plain"), controlKey: null });
    buses.push(keyed, keyedLog, plain);
    const eos = new EndOfStream(keyedLog, "mixed", ["cam"]);
    try {
      await keyedLog.nc.flush();
      plain.publishJson(eosSubject("mixed"), { stage: "cam", worker: "w1" });
      await until(() => keyedLog.stats.rejectedBy.unsigned === 1, "the unsigned end of stream refused");
      expect(eos.finished("cam")).toBe(false);
      expect(log.text()).toContain("every process of the pipeline needs the same FRAMEWIRE_CONTROL_KEY");
      keyed.publishJson(eosSubject("mixed"), { stage: "cam", worker: "w1" });
      await until(() => eos.finished("cam"), "the signed end of stream");
    } finally {
      eos.close();
    }
  });

  test("FRAMEWIRE_CONTROL_KEY turns signing on; a key under 16 characters is a ConfigError", async () => {
    process.env.FRAMEWIRE_CONTROL_KEY = KEY;
    try {
      const b = await NatsBus.connect({ url: server.url, log: captureLog("env") });
      buses.push(b);
      expect(b.signsControl).toBe(true);
    } finally {
      delete process.env.FRAMEWIRE_CONTROL_KEY;
    }
    const err = await NatsBus.connect({ url: server.url, log: captureLog("short"), controlKey: "short" }).then(() => undefined, (e: Error) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect(err!.message).toContain("use at least 16");
  });
});

describe("garbage on control subjects", () => {
  test("is counted by reason and logged rate-limited; a valid message after it still counts", async () => {
    const log = captureLog("bus");
    const bus = await NatsBus.connect({ url: server.url, log, controlKey: null });
    buses.push(bus);
    const eos = new EndOfStream(bus, "junk", ["cam"]);
    try {
      await bus.nc.flush();
      const nc = await attacker();
      for (let i = 0; i < 150; i++) nc.publish(eosSubject("junk"), `not json ${i}`);
      for (let i = 0; i < 150; i++) nc.publish(eosSubject("junk"), JSON.stringify({ stage: i, worker: [] }));
      nc.publish(eosSubject("junk"), JSON.stringify({ stage: "cam", worker: "w1" }));
      await until(() => eos.finished("cam"), "the valid end of stream after the garbage");
      expect(bus.stats.rejectedBy["control-malformed"]).toBe(300);
      expect(bus.stats.rejected).toBe(300);
      const lines = log.lines.filter((l) => l.includes(`refused control message on ${eosSubject("junk")}`));
      expect(lines.length).toBeGreaterThanOrEqual(1);
      expect(lines.length).toBeLessThanOrEqual(6);
      expect(lines[0]).toContain("(1 so far): not JSON");
    } finally {
      eos.close();
    }
  });
});
