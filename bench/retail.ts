/**
 * Retail analytics: tracker cost per frame on synthetic crowds, and the
 * retail pipeline (tracker, zones, JSONL, snapshots, NATS sink) against the
 * bare detector pipeline on the same frames of the sample clip.
 */
import * as v from "valibot";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import tracker, { createTracker } from "../operators/tracker.ts";
import type { Detection, Frame } from "../runtime/core/message.ts";
import { pipelinesDir, projectRoot } from "../runtime/platform/paths.ts";
import { fmt, markdownTable } from "./table.ts";

/** A deterministic PRNG (mulberry32): the same crowd on every run. */
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * `frames` frames of `n` people walking straight across a 1920×1080 view
 * (bouncing at the edges), with box jitter, a fifth at low scores and one in
 * twenty missed per frame: work for both association stages.
 */
function crowd(n: number, frames: number): Frame[] {
  const rnd = random(n);
  const people = Array.from({ length: n }, () => ({ x: rnd() * 1880, y: rnd() * 980, vx: (rnd() - 0.5) * 16, vy: (rnd() - 0.5) * 8, low: rnd() < 0.2 }));
  const image = { width: 1920, height: 1080, format: "rgb24" as const, data: new Uint8Array(0) };
  return Array.from({ length: frames }, (_, seq) => {
    const detections: Detection[] = [];
    for (const p of people) {
      p.x += p.vx;
      p.y += p.vy;
      if (p.x < 0 || p.x > 1880) p.vx = -p.vx;
      if (p.y < 0 || p.y > 980) p.vy = -p.vy;
      if (rnd() < 0.05) continue;
      const j = () => (rnd() - 0.5) * 4;
      const score = p.low ? 0.2 + rnd() * 0.25 : 0.6 + rnd() * 0.4;
      detections.push({ class: "person", classId: 0, score, box: [p.x + j(), p.y + j(), p.x + 40 + j(), p.y + 100 + j()] });
    }
    return { kind: "frame", stream: "bench", seq, ts: seq * 100, live: false, image, detections, timings: {} };
  });
}

/** Mean µs per tracked frame after a warm-up, over at least `minMs` of work. */
function trackerCost(method: "bytetrack" | "sort", n: number, minMs = 1500): { us: number; tracks: number } {
  const frames = crowd(n, 600);
  const t = createTracker(v.parse(tracker.options, { method }));
  for (let i = 0; i < 50; i++) t.update(frames[i]);
  let done = 0;
  let tracks = 0;
  const t0 = performance.now();
  for (let i = 50; ; i = i + 1 < frames.length ? i + 1 : 50) {
    // Wrapping round restarts the stream (seq goes back): the tracker starts over, as it would for a restarted source.
    tracks = t.update(frames[i]).tracks.length;
    done++;
    if (done >= 200 && performance.now() - t0 >= minMs) break;
  }
  return { us: ((performance.now() - t0) * 1000) / done, tracks };
}

interface Run {
  fps: number;
  frames: number;
  stages: { stage: string; operator: string; p50: number; p99: number }[];
}

/** Runs a pipeline file through the CLI in `cwd` (its relative outputs land there); returns its --json summary. */
async function runPipeline(file: string, frames: number, cwd: string): Promise<Run> {
  const env: Record<string, string | undefined> = { ...process.env, FRAMEWIRE_LOG: "warn" };
  // The no-server default: memory bus, shipped clip.
  delete env.NATS_URL;
  delete env.CAMERAS;
  const proc = Bun.spawn(["bun", join(projectRoot, "runtime/cli.ts"), "run", file, "--frames", String(frames), "--json"], { cwd, stdout: "pipe", stderr: "pipe", env });
  const [out, err] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
  await proc.exited;
  if (proc.exitCode !== 0) throw new Error(`${file} failed (exit ${proc.exitCode}):\n${err.slice(-2000)}`);
  const s = JSON.parse(out.trim().split("\n").at(-1)!);
  return { fps: s.fps, frames: s.framesOut, stages: s.stages };
}

/** Runs the retail benchmark and returns its markdown section. */
export async function benchRetail(frames = 200): Promise<string> {
  const rows: (string | number)[][] = [];
  for (const n of [10, 50, 200]) {
    const byte = trackerCost("bytetrack", n);
    const sort = trackerCost("sort", n);
    rows.push([n, fmt(byte.us), fmt(sort.us), fmt(byte.us / sort.us, 2), `${byte.tracks} / ${sort.tracks}`]);
  }
  const trackers = markdownTable(["objects per frame", "bytetrack µs/frame", "sort µs/frame", "bytetrack / sort", "confirmed tracks (last frame)"], rows);

  const dir = mkdtempSync(join(tmpdir(), "framewire-bench-retail-"));
  try {
    const bareFile = join(dir, "bare.yaml");
    // retail.yaml's first four stages, as they are there: same clip, same fps cap, same model and filters.
    writeFileSync(
      bareFile,
      `name: bare
stages:
  - { id: cam, use: ingest, with: { url: pipelines/media/vtest.mp4, fps: 10 } }
  - { id: prep, use: resize, with: { width: 640, height: 640, mode: letterbox } }
  - { id: detect, use: infer-onnx, with: { model: yolov5n.onnx } }
  - { id: nms, use: nms, with: { conf: 0.25, iou: 0.45, classes: [person] } }
  - { id: results, use: sink-jsonl, with: { path: out/bare.jsonl } }
`,
    );
    const bare = await runPipeline(bareFile, frames, dir);
    const retail = await runPipeline(join(pipelinesDir, "retail.yaml"), frames, dir);
    const summary = markdownTable(
      ["measure", "value"],
      [
        [`bare detector (ingest → resize → infer-onnx → nms → sink-jsonl, ${bare.frames} frames)`, `${fmt(bare.fps)} fps`],
        [`retail.yaml (+ tracker, zones, sink-log, sink-snapshot, sink-jetstream idle; ${retail.frames} frames)`, `${fmt(retail.fps)} fps`],
        ["**retail / bare detector**", `**${fmt(retail.fps / bare.fps, 2)}×**`],
      ],
    );
    const added = new Set(["tracker", "zones", "sink-log", "sink-snapshot", "sink-jetstream", "sink-jsonl"]);
    const stages = markdownTable(
      ["retail stage", "operator", "p50 ms", "p99 ms"],
      retail.stages.filter((s) => added.has(s.operator)).map((s) => [s.stage, s.operator, fmt(s.p50, 2), fmt(s.p99, 2)]),
    );
    return `## retail: tracker cost and pipeline vs bare detector\n\n${trackers}\n\n${summary}\n\n${stages}\n`;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
