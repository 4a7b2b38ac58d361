/**
 * Overload and soak: a live camera (ingest, realtime, looped) at twice what a
 * slow stage sustains. A live pipeline must keep latency bounded by dropping
 * (counted) stale frames, and its memory must stay flat.
 *   bun run bench overload            # 60 s at 2x capacity
 *   bun run bench soak --minutes 10   # RSS and latency slope over N minutes
 */
import * as v from "valibot";
import { Executor } from "../runtime/engine/executor.ts";
import { parsePipeline } from "../runtime/spec/loader.ts";
import { MemoryBus } from "../runtime/bus/memory.ts";
import { defineOperator } from "../runtime/core/operator.ts";
import { rss } from "../runtime/platform/index.ts";
import { loadRegistry } from "../runtime/spec/registry.ts";
import { fmt, markdownTable } from "./table.ts";

const SOURCE_FPS = 10;
/** The slow stage's time per frame: capacity 5 fps, half the source's rate. */
const STAGE_MS = 200;

/** Capture-to-sink latencies (ms) of the current sampling window. */
let window: number[] = [];

const slowStage = defineOperator({
  name: "bench-slow",
  kind: "transform",
  description: "Bench stage: a fixed time per frame (a detector the host cannot keep up with).",
  options: v.strictObject({ ms: v.number() }),
  create: ({ ms }) => ({ process: async (msg) => (await new Promise((r) => setTimeout(r, ms)), msg) }),
});

const latencySink = defineOperator({
  name: "bench-latency",
  kind: "sink",
  description: "Bench sink: records capture-to-sink latency.",
  options: v.strictObject({}),
  create: () => ({ process: (msg) => void window.push(Date.now() - msg.ts) }),
});

const quantile = (xs: number[], q: number) => (xs.length ? [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))] : NaN);

/** Least-squares slope of y over x. */
function slope(xs: number[], ys: number[]): number {
  const n = xs.length;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  const num = xs.reduce((a, x, i) => a + (x - mx) * (ys[i] - my), 0);
  const den = xs.reduce((a, x) => a + (x - mx) ** 2, 0);
  return den ? num / den : 0;
}

interface Sample {
  minute: number;
  rssMiB: number;
  p99: number;
}

async function overloaded(seconds: number, sampleS: number) {
  const registry = new Map(await loadRegistry());
  for (const d of [slowStage, latencySink]) registry.set(d.name, d);
  const spec = parsePipeline(
    `name: overload
stages:
  - { id: cam, use: ingest, with: { url: pipelines/media/vtest.mp4, realtime: true, loop: true, fps: ${SOURCE_FPS} } }
  - { id: detect, use: bench-slow, with: { ms: ${STAGE_MS} } }
  - { id: out, use: bench-latency }
`,
    "overload.yaml",
    registry,
    () => undefined,
  );
  const bus = new MemoryBus();
  const exec = new Executor(spec, bus);
  await exec.start();
  const samples: Sample[] = [];
  const all: number[] = [];
  const t0 = performance.now();
  while (performance.now() - t0 < seconds * 1000) {
    await new Promise((r) => setTimeout(r, sampleS * 1000));
    all.push(...window);
    samples.push({ minute: (performance.now() - t0) / 60_000, rssMiB: rss() / 1048576, p99: quantile(window, 0.99) });
    window = [];
  }
  exec.stop();
  const summary = await exec.done;
  await bus.close();
  const stage = (id: string) => summary.stages.find((s) => s.stage === id)!;
  // The first samples include start-up (module loading, first allocations); the slope is over the rest.
  const steady = samples.slice(Math.min(2, samples.length - 2));
  return {
    seconds: summary.seconds,
    sent: stage("cam").sent,
    delivered: stage("out").received,
    dropped: summary.stages.reduce((a, s) => a + s.dropped, 0),
    failed: summary.stages.reduce((a, s) => a + s.failed, 0),
    p50: quantile(all, 0.5),
    p99: quantile(all, 0.99),
    samples,
    rssStart: samples[0].rssMiB,
    rssEnd: samples.at(-1)!.rssMiB,
    rssSlope: slope(steady.map((s) => s.minute), steady.map((s) => s.rssMiB)),
    p99Slope: slope(steady.map((s) => s.minute), steady.map((s) => s.p99)),
  };
}

function report(title: string, r: Awaited<ReturnType<typeof overloaded>>): string {
  const rows: (string | number)[][] = [
    ["run", `${fmt(r.seconds)} s; source ${SOURCE_FPS} fps into a stage of ${1000 / STAGE_MS} fps capacity (2x overload)`],
    ["frames from the source / delivered / dropped (counted) / failed", `${r.sent} / ${r.delivered} / ${r.dropped} / ${r.failed}`],
    ["frames unaccounted for (sent - delivered - dropped)", r.sent - r.delivered - r.dropped],
    ["capture-to-sink latency p50 / p99", `${fmt(r.p50, 0)} / ${fmt(r.p99, 0)} ms`],
    ["p99 latency slope (after warm-up)", `${fmt(r.p99Slope, 1)} ms/min`],
    ["RSS start / end", `${fmt(r.rssStart)} / ${fmt(r.rssEnd)} MiB`],
    ["RSS slope (after warm-up)", `${fmt(r.rssSlope, 2)} MiB/min`],
  ];
  return `## ${title}\n\n${markdownTable(["measure", "value"], rows)}\n`;
}

export async function benchOverload(): Promise<string> {
  return report("reliability: 60 s at 2x capacity", await overloaded(60, 5));
}

export async function benchSoak(): Promise<string> {
  // Minutes long: only when asked for by name, not in a plain `bun run bench`.
  if (!process.argv.includes("soak")) return "## reliability: soak\n\nskipped: run `bun run bench soak --minutes N`\n";
  const i = process.argv.indexOf("--minutes");
  const minutes = i > 0 ? Number(process.argv[i + 1]) : 10;
  if (!(minutes > 0)) throw new Error("--minutes expects a positive number");
  return report(`reliability: soak, ${minutes} min at 2x capacity`, await overloaded(minutes * 60, 10));
}
