/**
 * `bun run bench precision`: fp32 against int8 (and fp16, where onnxruntime
 * runs it) in one run: pipeline fps on the sample clip, inference ms on the
 * inference thread, and mAP50 / mAP50-95 from `bun run eval coco` on the 96
 * shared coco128 images.
 */
import { join } from "node:path";
import type { Frame, Tensor } from "../runtime/core/message.ts";
import { createLogger } from "../runtime/core/log.ts";
import { defaultThreads } from "../runtime/inference/onnx-model.ts";
import { OnnxThread } from "../runtime/inference/onnx-thread.ts";
import { tensorPixels } from "../runtime/inference/pixel-tensor.ts";
import { projectRoot } from "../runtime/platform/paths.ts";
import { loadRegistry } from "../runtime/spec/registry.ts";
import { benchPython, CLIP, KEEP_PAGES, loadAverage, median, pipelineRun, type PipelineRun } from "./core.ts";
import { fmt, markdownTable } from "./table.ts";
import * as v from "valibot";
import type { SourceInstance, StageContext, TransformInstance } from "../runtime/core/operator.ts";

const COCO = join(projectRoot, "../shared/data/coco128");
const FP16 = join(projectRoot, "../shared/models/yolov5n-fp16.onnx");

interface Variant {
  label: string;
  /** As a pipeline names it: a file under models/, or a path. */
  model: string;
}

const VARIANTS: Variant[] = [
  { label: "fp32 (`yolov5n.onnx`)", model: "yolov5n.onnx" },
  { label: "int8 (`yolov5n-int8.onnx`, static QDQ)", model: "yolov5n-int8.onnx" },
  { label: "fp16 (`../shared/models/yolov5n-fp16.onnx`)", model: FP16 },
];

/** One letterboxed frame of the clip, as bytes: what the inference thread gets in a pipeline. */
async function sampleTensor(): Promise<Tensor> {
  const reg = await loadRegistry();
  const ctx = (stage: string): StageContext => ({ stage, pipeline: "bench", log: createLogger("bench", 99), signal: new AbortController().signal });
  const ingest = reg.get("ingest")!;
  const src = (await ingest.create(v.parse(ingest.options, { url: CLIP }) as never, ctx("cam"))) as SourceInstance;
  const ac = new AbortController();
  let frame: Frame | undefined;
  await src.run(async (m) => {
    if (m.kind === "frame" && m.seq === 30) {
      frame = m;
      ac.abort();
    }
  }, ac.signal);
  const resize = reg.get("resize")!;
  const prep = (await resize.create(v.parse(resize.options, {}) as never, ctx("prep"))) as TransformInstance;
  return ((await prep.process(frame!)) as Frame).tensor!;
}

/** Median ms of `runs` inferences on the inference thread (the pipeline's settings), or why the model cannot run there. */
async function threadMs(model: string, t: Tensor, runs = 30): Promise<number | { error: string }> {
  let m: OnnxThread;
  try {
    m = await OnnxThread.start({ model, providers: ["cpu"], threads: defaultThreads() }, createLogger("bench", 99));
  } catch (err) {
    return { error: (err as Error).message };
  }
  try {
    let input = tensorPixels(t)!.slice();
    const ms: number[] = [];
    for (let i = 0; i < runs + 3; i++) {
      const t0 = performance.now();
      input = (await m.run(input, t.dims, true)).input;
      if (i >= 3) ms.push(performance.now() - t0);
    }
    return median(ms);
  } finally {
    m.close();
  }
}

/** `bun run eval coco` on the shared coco128 images: its closing JSON line. */
async function evalCoco(model: string): Promise<{ map50: number; map50_95: number; images: number } | { error: string }> {
  const proc = Bun.spawn(
    ["bun", join(projectRoot, "runtime/cli.ts"), "eval", "coco", "--images", join(COCO, "images"), "--labels", join(COCO, "labels"), "--model", model],
    { stdout: "pipe", stderr: "pipe", env: { ...process.env, FRAMEWIRE_LOG: "warn" } },
  );
  const [out, err] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
  await proc.exited;
  if (proc.exitCode !== 0) return { error: (err.trim().split("\n").find((l) => l.includes("E_") || l.toLowerCase().includes("error")) ?? err.trim()).slice(0, 300) };
  return JSON.parse(out.trim().split("\n").at(-1)!);
}

/** Median ms in Python onnxruntime (bench/peer_loop.py --time), for a model Bun cannot run. */
function pythonMs(model: string): number | undefined {
  const py = benchPython();
  if (!("python" in py)) return undefined;
  const r = Bun.spawnSync([py.python, join(projectRoot, "bench/peer_loop.py"), "--time", model, "30", String(defaultThreads())]);
  if (r.exitCode !== 0) return undefined;
  return JSON.parse(r.stdout.toString().trim().split("\n").at(-1)!).ms as number;
}

/** The precision table, from one run. */
export async function benchPrecision(frames = 200, rounds = 3): Promise<string> {
  const loadBefore = loadAverage();
  const tensor = await sampleTensor();
  const ms = new Map<string, number | { error: string }>();
  for (const x of VARIANTS) ms.set(x.model, await threadMs(x.model, tensor));
  const runnable = VARIANTS.filter((x) => typeof ms.get(x.model) === "number");
  const pipes = new Map<string, PipelineRun[]>(runnable.map((x) => [x.model, []]));
  const kept = new Map<string, PipelineRun[]>(runnable.map((x) => [x.model, []]));
  for (let r = 0; r < rounds; r++)
    for (const x of runnable) {
      pipes.get(x.model)!.push(await pipelineRun({ frames, model: x.model }));
      kept.get(x.model)!.push(await pipelineRun({ frames, model: x.model, env: KEEP_PAGES }));
    }
  const acc = new Map<string, Awaited<ReturnType<typeof evalCoco>>>();
  for (const x of VARIANTS) acc.set(x.model, typeof ms.get(x.model) === "number" ? await evalCoco(x.model) : { error: "not run" });

  const medianRun = (runs: Map<string, PipelineRun[]>, model: string) => {
    const rs = runs.get(model);
    return rs ? rs.find((p) => p.fps === median(rs.map((y) => y.fps))) : undefined;
  };
  const pipeOf = (model: string) => medianRun(pipes, model);
  const keptOf = (model: string) => medianRun(kept, model);
  const rows = VARIANTS.map((x) => {
    const t = ms.get(x.model)!;
    const p = pipeOf(x.model);
    const a = acc.get(x.model)!;
    if (typeof t !== "number") {
      const py = pythonMs(x.model);
      const why = t.error.includes("float16") ? "fp16 input fails inside onnxruntime-node under Bun (infer-onnx refuses the model)" : t.error;
      return [x.label, `— (${why})`, "—", py === undefined ? "—" : `${fmt(py)} in Python onnxruntime`, "—", "—", "—"];
    }
    const k = keptOf(x.model);
    const detect = k?.stages.find((s) => s.stage === "detect");
    return [
      x.label,
      k ? `${fmt(k.fps)} (${kept.get(x.model)!.map((y) => fmt(y.fps)).join(", ")})` : "—",
      p ? `${fmt(p.fps)} (${pipes.get(x.model)!.map((y) => fmt(y.fps)).join(", ")})` : "—",
      fmt(t),
      detect ? fmt(detect.p50) : "—",
      "error" in a ? `— (${a.error})` : fmt(a.map50, 3),
      "error" in a ? "—" : fmt(a.map50_95, 3),
    ];
  });
  const fp32 = pipeOf("yolov5n.onnx");
  const int8 = pipeOf("yolov5n-int8.onnx");
  const a32 = acc.get("yolov5n.onnx")!;
  const a8 = acc.get("yolov5n-int8.onnx")!;
  const t32 = ms.get("yolov5n.onnx");
  const t8 = ms.get("yolov5n-int8.onnx");
  const summary = markdownTable(
    ["measure", "value"],
    [
      [
        "int8 / fp32 pipeline fps, as `bun run pipeline` starts it",
        keptOf("yolov5n.onnx") && keptOf("yolov5n-int8.onnx") ? `${fmt(keptOf("yolov5n-int8.onnx")!.fps / keptOf("yolov5n.onnx")!.fps, 2)}× (target ≥ 1.8)` : "n/a",
      ],
      ["int8 / fp32 pipeline fps with mimalloc's default purge", fp32 && int8 ? `${fmt(int8.fps / fp32.fps, 2)}×` : "n/a"],
      ["int8 / fp32 inference speed (inference thread, batch 1)", typeof t32 === "number" && typeof t8 === "number" ? `${fmt(t32 / t8, 2)}×` : "n/a"],
      ["int8 mAP50-95 loss against fp32", !("error" in a32) && !("error" in a8) ? `${fmt(a32.map50_95 - a8.map50_95, 3)} (target ≤ 0.02)` : "n/a"],
    ],
  );
  const table = markdownTable(
    ["model", `pipeline fps as \`bun run pipeline\` starts it (median of ${rounds}; all runs)`, "pipeline fps, mimalloc's default purge", "inference ms (inference thread, median of 30)", "detect stage p50 ms", "mAP50 (96 coco128)", "mAP50-95"],
    rows,
  );
  return (
    `## precision: fp32 vs int8 (vs fp16)\n\nLoad average before ${loadBefore}, after ${loadAverage()} (2 cores). Pipeline: ingest → resize → infer-onnx → nms → sink-jsonl on ${frames} frames of the clip, ${defaultThreads()} intra-op threads; ` +
    `mAP from \`bun run eval coco\` (conf 0.001, IoU 0.6, YOLOv5 val.py defaults) on the 96 images of ../shared/data/coco128.\n\n${table}\n\n${summary}\n`
  );
}
