/**
 * Core throughput: a bare onnxruntime-node loop (the limit) vs the framewire
 * pipeline on the same frames, per-stage latency, ffmpeg decode rate, peak RSS.
 */
import * as v from "valibot";
import * as ort from "onnxruntime-node";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Frame } from "../runtime/core/message.ts";
import type { SourceInstance, StageContext, TransformInstance } from "../runtime/core/operator.ts";
import { createLogger } from "../runtime/core/log.ts";
import { projectRoot } from "../runtime/platform/paths.ts";
import { loadRegistry } from "../runtime/spec/registry.ts";
import { fmt, markdownTable } from "./table.ts";

const CLIP = join(projectRoot, "pipelines/media/vtest.mp4");

async function instance<T>(name: string, options: unknown): Promise<T> {
  const def = (await loadRegistry()).get(name)!;
  const ctx: StageContext = { stage: name, pipeline: "bench", log: createLogger("bench", 99), signal: new AbortController().signal };
  return (await def.create(v.parse(def.options, options) as never, ctx)) as T;
}

/** Decodes `n` frames of the sample clip; returns them and the decode rate. */
async function decode(n: number): Promise<{ frames: Frame[]; fps: number }> {
  const src = await instance<SourceInstance>("ingest", { url: CLIP });
  const frames: Frame[] = [];
  const ac = new AbortController();
  const t0 = performance.now();
  await src.run(async (f) => {
    if (f.kind !== "frame") return;
    frames.push(f);
    if (frames.length >= n) ac.abort();
  }, ac.signal);
  return { frames, fps: frames.length / ((performance.now() - t0) / 1000) };
}

async function bareLoop(frames: Frame[]): Promise<number> {
  const resize = await instance<TransformInstance>("resize", { width: 640, height: 640 });
  const tensors = await Promise.all(frames.map(async (f) => ((await resize.process({ ...f, timings: {} })) as Frame).tensor!));
  const session = await ort.InferenceSession.create(join(projectRoot, "models/yolov5n.onnx"), { graphOptimizationLevel: "all" });
  const run = (i: number) => session.run({ images: new ort.Tensor("float32", tensors[i].data, tensors[i].dims) });
  await run(0); // warm-up, as the pipeline's first frame pays it too
  const t0 = performance.now();
  for (let i = 0; i < tensors.length; i++) await run(i);
  const fps = tensors.length / ((performance.now() - t0) / 1000);
  await session.release();
  return fps;
}

interface PipelineRun {
  fps: number;
  maxRssMiB: number;
  stages: { stage: string; operator: string; p50: number; p99: number }[];
  framesOut: number;
  dropped: number;
}

async function pipeline(n: number): Promise<PipelineRun> {
  const dir = mkdtempSync(join(tmpdir(), "framewire-bench-"));
  const file = join(dir, "bench.yaml");
  writeFileSync(
    file,
    `name: bench
stages:
  - { id: cam, use: ingest, with: { url: "${CLIP}" } }
  - { id: prep, use: resize, with: { width: 640, height: 640 } }
  - { id: detect, use: infer-onnx, with: { model: yolov5n.onnx } }
  - { id: nms, use: nms }
  - { id: out, use: sink-jsonl, with: { path: "${join(dir, "out.jsonl")}" } }
`,
  );
  const proc = Bun.spawn(["bun", join(projectRoot, "runtime/cli.ts"), "run", file, "--frames", String(n), "--json"], {
    stdout: "pipe",
    stderr: "ignore",
    env: { ...process.env, FRAMEWIRE_LOG: "warn" },
  });
  const out = await new Response(proc.stdout).text();
  await proc.exited;
  if (proc.exitCode !== 0) throw new Error(`pipeline run failed (exit ${proc.exitCode}):\n${out}`);
  const summary = JSON.parse(out.trim().split("\n").at(-1)!);
  // Warm-up excluded as in the bare loop: fps over the run after the first frame's model warm-up is what
  // a long-running pipeline sees; the summary's fps already excludes model loading.
  return {
    fps: summary.fps,
    // The process's own peak (the OS's figure for a child also counts the ffmpeg it ran).
    maxRssMiB: summary.peakRssMiB,
    stages: summary.stages,
    framesOut: summary.framesOut,
    dropped: summary.dropped,
  };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/**
 * Runs the core benchmark and returns its markdown section. Bare loop and
 * pipeline alternate for `rounds` rounds and medians are compared, so load
 * from elsewhere on the machine hits both sides alike.
 */
export async function benchCore(n = 200, rounds = 3): Promise<string> {
  const dec = await decode(n);
  const bares: number[] = [];
  const pipes: PipelineRun[] = [];
  for (let r = 0; r < rounds; r++) {
    bares.push(await bareLoop(dec.frames.slice(0, Math.min(n, 100))));
    pipes.push(await pipeline(n));
  }
  const bare = median(bares);
  const pipe = pipes.find((p) => p.fps === median(pipes.map((x) => x.fps)))!;
  const summary = markdownTable(
    ["measure", "value"],
    [
      ["ffmpeg decode (480x360 H.264 → rgb24)", `${fmt(dec.fps)} fps`],
      [`bare onnxruntime-node loop (yolov5n, 640, pre-resized tensors; median of ${rounds})`, `${fmt(bare)} fps`],
      [`framewire pipeline (ingest → resize → infer-onnx → nms → sink-jsonl, ${pipe.framesOut} frames; median of ${rounds})`, `${fmt(pipe.fps)} fps`],
      ["**pipeline / bare loop**", `**${fmt(pipe.fps / bare, 2)}×** (target ≥ 0.95)`],
      ["frames dropped", pipe.dropped],
      ["peak RSS of the pipeline process", `${fmt(pipe.maxRssMiB, 0)} MiB`],
    ],
  );
  const stages = markdownTable(
    ["stage", "operator", "p50 ms", "p99 ms"],
    pipe.stages.map((s) => [s.stage, s.operator, fmt(s.p50), fmt(s.p99)]),
  );
  return `## core pipeline vs bare onnxruntime loop\n\n${summary}\n\n${stages}\n`;
}
