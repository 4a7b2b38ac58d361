/**
 * Distribution over NATS, against a real nats-server on loopback:
 * - one hop of a 640x640 frame: memory bus vs NATS, raw and JPEG;
 * - least-loaded vs queue routing when one of two workers is 3x slower;
 * - 1 vs 2 inference worker processes (`bun run pipeline --stages`).
 */
import * as v from "valibot";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Executor } from "../runtime/engine/executor.ts";
import { parsePipeline } from "../runtime/spec/loader.ts";
import { createLogger } from "../runtime/core/log.ts";
import { MemoryBus } from "../runtime/bus/memory.ts";
import type { Frame } from "../runtime/core/message.ts";
import { NatsBus } from "../runtime/bus/nats.ts";
import { defineOperator, type SourceInstance, type StageContext } from "../runtime/core/operator.ts";
import { projectRoot } from "../runtime/platform/paths.ts";
import { loadRegistry } from "../runtime/spec/registry.ts";
import type { PipelineSummary } from "../runtime/core/stats.ts";
import { Histogram } from "../runtime/core/histogram.ts";
import { decodeMessage, encodeMessage } from "../runtime/bus/wire.ts";
import { pixelTensor } from "../runtime/inference/pixel-tensor.ts";
import { startNatsServer, type NatsServer } from "../tests/support/nats.ts";
import { startProcess, type Child } from "../tests/support/process.ts";
import { fmt, markdownTable } from "./table.ts";
import { KEEP_PAGES } from "./core.ts";

const CLIP = join(projectRoot, "pipelines/media/vtest.mp4");
const quiet = createLogger("bench", 99);

/** One decoded frame of the sample clip, scaled to 640x640. */
async function clipFrame(): Promise<Frame> {
  const def = (await loadRegistry()).get("ingest")!;
  const ctx: StageContext = { stage: "cam", pipeline: "bench", log: quiet, signal: new AbortController().signal };
  const src = (await def.create(v.parse(def.options, { url: CLIP, width: 640, height: 640 }) as never, ctx)) as SourceInstance;
  const ac = new AbortController();
  let frame: Frame | undefined;
  await src.run(async (f) => {
    if (f.kind !== "frame") return;
    frame ??= f;
    ac.abort();
  }, ac.signal);
  await src.close?.();
  return frame!;
}

interface Hop {
  p50: number;
  p99: number;
  bytes: number;
}

/** Publishes `n` copies of `frame` one at a time and times each until the subscriber has it decoded. */
async function hops(publish: (f: Frame) => Promise<void>, subscribe: (h: () => void) => Promise<void>, frame: Frame, n: number): Promise<Hop> {
  const hist = new Histogram();
  let arrived: (() => void) | undefined;
  await subscribe(() => arrived?.());
  for (let i = 0; i < n + 5; i++) {
    const got = new Promise<void>((r) => (arrived = r));
    const t0 = performance.now();
    await publish({ ...frame, seq: i, timings: {} });
    await got;
    if (i >= 5) hist.record(performance.now() - t0); // the first few warm up the JIT and the sockets
  }
  return { p50: hist.quantile(0.5), p99: hist.quantile(0.99), bytes: 0 };
}

/** Mean time to encode and decode `frame` in wire format v2 (raw). */
function codecMs(frame: Frame, n = 50): number {
  const t0 = performance.now();
  for (let i = 0; i < n; i++) decodeMessage(encodeMessage(frame));
  return (performance.now() - t0) / n;
}

async function hopSection(server: NatsServer, n = 100): Promise<string> {
  const frame = await clipFrame();
  const withTensor: Frame = { ...frame, tensor: pixelTensor([1, 3, 640, 640], new Uint8Array(3 * 640 * 640).fill(128), { scaleX: 1, scaleY: 1, padX: 0, padY: 0 }) };
  const memory = new MemoryBus();
  const mem = await hops((f) => memory.publish("h", f), async (h) => void memory.subscribe("h", h), frame, n);
  const pub = await NatsBus.connect({ url: server.url, log: quiet });
  const sub = await NatsBus.connect({ url: server.url, log: quiet });
  const viaNats = async (subject: string, f: Frame, wire?: { encoding: "raw" | "jpeg"; quality?: number }): Promise<Hop> => {
    let s: { unsubscribe(): void } | undefined;
    const r = await hops(
      (x) => pub.publish(subject, x, wire),
      async (h) => {
        s = sub.subscribe(subject, h);
        await sub.nc.flush(); // the server knows the subscription before the first publish
      },
      f,
      n,
    );
    s?.unsubscribe();
    return { ...r, bytes: encodeMessage(f, wire).length };
  };
  // The client library's own cost for the same bytes: no framewire encoding or decoding.
  const bytes = encodeMessage(frame);
  const bare = await hops(
    async () => pub.nc.publish("h.bare", bytes),
    async (h) => {
      sub.nc.subscribe("h.bare", { callback: h, max: n + 5 });
      await sub.nc.flush();
    },
    frame,
    n,
  );
  const raw = await viaNats("h.raw", frame);
  const jpeg = await viaNats("h.jpeg", frame, { encoding: "jpeg", quality: 85 });
  const tensor = await viaNats("h.tensor", withTensor);
  await pub.close();
  await sub.close();
  const row = (what: string, h: Hop, bytes: number) => [what, fmt(h.p50, 2), fmt(h.p99, 2), fmt(bytes / 1024, 0), h === mem ? "—" : `+${fmt(h.p50 - mem.p50, 2)}`];
  return markdownTable(
    ["one hop, 640x640 rgb24 frame (sequential, loopback)", "p50 ms", "p99 ms", "KiB on the wire", "p50 added by NATS"],
    [
      row("memory bus (by reference)", mem, 0),
      row("bare nats.js publish → subscribe, same bytes (the client's floor)", bare, bytes.length),
      row("NATS, raw pixels", raw, raw.bytes),
      row("NATS, JPEG q85 (encode + decode included)", jpeg, jpeg.bytes),
      row("NATS, raw pixels + 640x640 uint8 tensor (a prep → detect link)", tensor, tensor.bytes),
    ],
  ) +
    `\n\nTarget: NATS adds < 2 ms p50 on loopback for the raw frame: **${raw.p50 - mem.p50 < 2 ? "met" : "missed"}** (+${fmt(raw.p50 - mem.p50, 2)} ms; ` +
    `framewire's encode + decode take ${fmt(codecMs(frame), 2)} ms of it, the rest is nats.js and the server moving ${fmt(bytes.length / 1048576, 1)} MiB).`;
}

/** A file source of small numbered frames, as fast as backpressure lets it. */
const countSource = defineOperator({
  name: "bench-count",
  kind: "source",
  description: "Bench source: numbered 16x16 file frames.",
  options: v.strictObject({ frames: v.number() }),
  create: ({ frames }) => ({
    async run(emit, signal) {
      for (let i = 0; i < frames && !signal.aborted; i++) {
        const data = new Uint8Array(16 * 16 * 3);
        await emit({ kind: "frame", stream: "b", seq: i, ts: Date.now(), live: false, image: { width: 16, height: 16, format: "rgb24", data }, timings: {} });
      }
    },
  }),
});

/** A worker stage that takes `ms` per frame (sleeping, so both workers get a core's worth regardless of load). */
const sleepStage = defineOperator({
  name: "bench-sleep",
  kind: "transform",
  description: "Bench stage: sleeps `ms` per message.",
  options: v.strictObject({ ms: v.number() }),
  create: ({ ms }) => ({ process: async (m) => (await new Promise((r) => setTimeout(r, ms)), m) }),
});

/** When each frame reached the sink (throughput from first to last arrival: startup and drain excluded). */
let arrivals: number[] = [];
const sinkStage = defineOperator({
  name: "bench-sink",
  kind: "sink",
  description: "Bench sink: notes arrival times.",
  options: v.strictObject({}),
  create: () => ({ process: () => void arrivals.push(performance.now()) }),
});

/** Source + sink in one node, two workers (fast: `ms`, slow: 3x) in two others; returns the source node's summary. */
async function routed(server: NatsServer, route: string, frames: number, ms: number): Promise<{ fps: number; p50: number; p99: number; slowShare: number }> {
  const registry = new Map(await loadRegistry());
  for (const d of [countSource, sleepStage, sinkStage]) registry.set(d.name, d);
  const name = `route-${route}-${Math.random().toString(36).slice(2, 8)}`;
  const text = (workMs: number) => `name: ${name}
stages:
  - { id: src, use: bench-count, with: { frames: ${frames} } }
  - { id: work, use: bench-sleep, with: { ms: ${workMs} }, route: ${route} }
  - { id: out, use: bench-sink }
`;
  const node = async (stages: string[], workMs: number, workerId: string) => {
    const bus = await NatsBus.connect({ url: server.url, log: quiet });
    const exec = new Executor(parsePipeline(text(workMs), "bench.yaml", registry, () => undefined), bus, { stages, workerId, log: quiet });
    await exec.start();
    return { exec, bus };
  };
  const fast = await node(["work"], ms, "fast");
  const slow = await node(["work"], ms * 3, "slow");
  await new Promise((r) => setTimeout(r, 300)); // both workers advertised
  arrivals = [];
  const src = await node(["src", "out"], ms, "src");
  const summary: PipelineSummary = await src.exec.done;
  const [f, s] = await Promise.all([fast.exec.done, slow.exec.done]);
  for (const n of [fast, slow, src]) await n.bus.close();
  const out = summary.stages.find((x) => x.stage === "out")!;
  const worked = (x: PipelineSummary) => x.stages.find((st) => st.stage === "work")!.received;
  return { fps: (arrivals.length - 1) / ((arrivals.at(-1)! - arrivals[0]) / 1000), p50: out.e2eP50 ?? 0, p99: out.e2eP99 ?? 0, slowShare: worked(s) / (worked(f) + worked(s)) };
}

async function routingSection(server: NatsServer, frames = 150, ms = 10): Promise<string> {
  const queue = await routed(server, "queue", frames, ms);
  const ll = await routed(server, "least-loaded", frames, ms);
  const row = (what: string, r: typeof queue) => [what, fmt(r.fps), fmt(r.p50), fmt(r.p99), `${fmt(r.slowShare * 100, 0)} %`];
  return markdownTable(
    [`routing: 2 workers (${ms} ms and ${ms * 3} ms per frame), ${frames} file frames`, "frames/s", "e2e p50 ms", "e2e p99 ms", "share on the slow worker"],
    [row("queue (NATS queue group)", queue), row("least-loaded (load adverts)", ll)],
  ) + `\n\nleast-loaded / queue: **${fmt(ll.fps / queue.fps, 2)}×** throughput (target ≥ 1.5), p99 ${fmt(ll.p99)} vs ${fmt(queue.p99)} ms (target lower).`;
}

/**
 * `bun run pipeline` processes: an edge process (ingest, resize, sink) and
 * `workers` inference processes; with `relay`, the edge relays the clip's
 * H.264 undecoded (ingest `decode: false`) and sinks the results, the worker
 * decodes, resizes and detects (docs/relay.md).
 */
async function workersRun(server: NatsServer, dir: string, workers: number, frames: number, relay = false): Promise<number> {
  const file = join(dir, `w${workers}${relay ? "-relay" : ""}.yaml`);
  const out = `  - { id: out, use: sink-jsonl, with: { path: "${join(dir, `w${workers}.jsonl`)}" }, placement: edge }`;
  writeFileSync(
    file,
    relay
      ? `name: bench-relay-w${workers}
stages:
  - { id: cam, use: ingest, with: { url: "${CLIP}", decode: false }, placement: edge }
  - { id: dec, use: decode, placement: cloud }
  - { id: prep, use: resize, with: { width: 640, height: 640 }, placement: cloud }
  - { id: detect, use: infer-onnx, with: { model: yolov5n.onnx, threads: 1 }, placement: cloud }
  - { id: nms, use: nms, placement: cloud }
${out}
`
      : `name: bench-w${workers}
stages:
  - { id: cam, use: ingest, with: { url: "${CLIP}" }, placement: edge }
  - { id: prep, use: resize, with: { width: 640, height: 640 }, placement: edge }
  - { id: detect, use: infer-onnx, with: { model: yolov5n.onnx, threads: 1 }, route: least-loaded, placement: cloud }
  - { id: nms, use: nms, placement: cloud }
${out}
`,
  );
  const cli = (args: string[]): Child => startProcess(["bun", join(projectRoot, "runtime/cli.ts"), "run", file, "--nats", server.url, ...args], { env: { FRAMEWIRE_LOG: "info", ...KEEP_PAGES } });
  if (workers === 0) {
    // The same stages in one process on the memory bus (no --nats), for the split's ratio.
    const one = startProcess(["bun", join(projectRoot, "runtime/cli.ts"), "run", file, "--frames", String(frames), "--json"], { env: { FRAMEWIRE_LOG: "info", ...KEEP_PAGES } });
    if ((await one.exited) !== 0) throw new Error(`single process failed:\n${one.stderr()}`);
    return JSON.parse(one.stdout().trim().split("\n").at(-1)!).fps;
  }
  const ws = Array.from({ length: workers }, (_, i) => cli(["--placement", "cloud", "--worker-id", `w${i}`]));
  await Promise.all(ws.map((w) => w.waitFor(/active/, 30_000)));
  const edge = cli(["--placement", "edge", "--frames", String(frames), "--json"]);
  if ((await edge.exited) !== 0) throw new Error(`edge process failed:\n${edge.stderr()}`);
  await Promise.all(ws.map((w) => w.exited));
  return JSON.parse(edge.stdout().trim().split("\n").at(-1)!).fps;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Alternating rounds, medians compared: load from elsewhere on the machine hits both sides alike. */
async function workersSection(server: NatsServer, frames = 100, rounds = 3): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), "framewire-bench-nats-"));
  try {
    const singles: number[] = [];
    const ones: number[] = [];
    const twos: number[] = [];
    const relays: number[] = [];
    for (let r = 0; r < rounds; r++) {
      singles.push(await workersRun(server, dir, 0, frames));
      ones.push(await workersRun(server, dir, 1, frames));
      twos.push(await workersRun(server, dir, 2, frames));
      relays.push(await workersRun(server, dir, 1, frames, true));
    }
    const [single, one, two, relay] = [median(singles), median(ones), median(twos), median(relays)];
    return markdownTable(
      [`inference workers (yolov5n, 1 onnxruntime thread each, separate processes; ${frames} frames, median of ${rounds})`, "frames/s"],
      [
        ["one process, no NATS (the same stages on the memory bus)", fmt(single)],
        ["split: edge process (ingest, resize, sink) + 1 worker process (detect, nms)", fmt(one)],
        ["**split / one process**", `**${fmt(one / single, 2)}×** (target ≥ 0.9)`],
        ["relay split: edge process (ingest `decode: false`, sink) + 1 worker process (decode, resize, detect, nms)", fmt(relay)],
        ["**relay split / one process**", `**${fmt(relay / single, 2)}×** (target ≥ 0.9)`],
        ["split with 2 workers", fmt(two)],
        ["**2 / 1 workers**", `**${fmt(two / one, 2)}×**`],
      ],
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Runs the NATS benchmark and returns its markdown section. */
export async function benchNats(): Promise<string> {
  const server = await startNatsServer();
  try {
    const parts = [await hopSection(server), await routingSection(server), await workersSection(server)];
    return `## distribution over NATS (nats-server on loopback)\n\n${parts.join("\n\n")}\n`;
  } finally {
    await server.dispose();
  }
}
