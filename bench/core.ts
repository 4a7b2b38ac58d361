/**
 * Core throughput: the framewire pipeline against a bare onnxruntime-node
 * loop (the limit) and against the Python script a user would write
 * (OpenCV + onnxruntime), on the same clip; per-stage latency, peak RSS.
 * `bench profile`: CPU ms per frame per stage, ffmpeg included, and the
 * intra-op thread count. `bench batch`: cross-stream batching on this CPU.
 */
import * as v from "valibot";
import * as ort from "onnxruntime-node";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Frame, Message } from "../runtime/core/message.ts";
import type { SinkInstance, SourceInstance, StageContext, TransformInstance } from "../runtime/core/operator.ts";
import { createLogger } from "../runtime/core/log.ts";
import { Letterboxer, makePlan, Normaliser } from "../runtime/inference/letterbox.ts";
import { defaultThreads } from "../runtime/inference/onnx-model.ts";
import { describeFfmpeg, findFfmpeg, shippedFfmpeg } from "../runtime/media/ffmpeg.ts";
import { ffmpegArgs } from "../runtime/media/camera.ts";
import { projectRoot } from "../runtime/platform/paths.ts";
import { loadRegistry } from "../runtime/spec/registry.ts";
import { fmt, markdownTable } from "./table.ts";

export const CLIP = join(projectRoot, "pipelines/media/vtest.mp4");
const CLIP_NAME = "pipelines/media/vtest.mp4 (480x360 H.264)";

/** The machine's load, for the table captions: benches on a shared machine are only as good as its quiet. */
export function loadAverage(): string {
  try {
    return readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
  } catch {
    return "n/a";
  }
}

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

/**
 * What a user writing the loop in Bun gets: one session on the JS thread,
 * onnxruntime's default settings, float32 tensors made beforehand.
 */
async function bareLoop(frames: Frame[], model = "yolov5n.onnx"): Promise<number> {
  const resize = await instance<TransformInstance>("resize", { width: 640, height: 640 });
  const tensors = await Promise.all(frames.map(async (f) => ((await resize.process({ ...f, timings: {} })) as Frame).tensor!));
  const floats = tensors.map((t) => t.data.slice());
  const session = await ort.InferenceSession.create(join(projectRoot, "models", model), { graphOptimizationLevel: "all" });
  const run = (i: number) => session.run({ images: new ort.Tensor("float32", floats[i], tensors[i].dims) });
  await run(0); // warm-up, as the pipeline's load does
  const t0 = performance.now();
  for (let i = 0; i < tensors.length; i++) await run(i);
  const fps = tensors.length / ((performance.now() - t0) / 1000);
  await session.release();
  return fps;
}

export interface PipelineRun {
  fps: number;
  maxRssMiB: number;
  stages: { stage: string; operator: string; p50: number; p99: number }[];
  framesOut: number;
  dropped: number;
}

export interface PipelineOptions {
  frames: number;
  model?: string;
  threads?: number;
  batch?: { max: number; maxDelayMs: number };
  /** Cameras: this many ingest stages of the clip into one resize. */
  streams?: number;
  /** Extra environment of the pipeline process. */
  env?: Record<string, string>;
}

/** `bun run pipeline` on the clip in a child process (ingest → resize → infer-onnx → nms → sink-jsonl); its `--json` summary. */
export async function pipelineRun(o: PipelineOptions): Promise<PipelineRun> {
  const dir = mkdtempSync(join(tmpdir(), "framewire-bench-"));
  const file = join(dir, "bench.yaml");
  const streams = o.streams ?? 1;
  const cams = Array.from({ length: streams }, (_, i) => (streams === 1 ? "cam" : `cam${i + 1}`));
  const infer = [`model: ${o.model ?? "yolov5n.onnx"}`, o.threads ? `threads: ${o.threads}` : "", o.batch ? `batch: { max: ${o.batch.max}, maxDelayMs: ${o.batch.maxDelayMs} }` : ""];
  writeFileSync(
    file,
    `name: bench
stages:
${cams.map((c) => `  - { id: ${c}, use: ingest, with: { url: "${CLIP}" } }`).join("\n")}
  - { id: prep, use: resize, in: [${cams.join(", ")}], with: { width: 640, height: 640 } }
  - { id: detect, use: infer-onnx, with: { ${infer.filter(Boolean).join(", ")} } }
  - { id: nms, use: nms }
  - { id: out, use: sink-jsonl, with: { path: "${join(dir, "out.jsonl")}" } }
`,
  );
  try {
    const proc = Bun.spawn(["bun", join(projectRoot, "runtime/cli.ts"), "run", file, "--frames", String(o.frames), "--json"], {
      stdout: "pipe",
      stderr: "pipe",
      env: { ...process.env, FRAMEWIRE_LOG: "warn", ...o.env },
    });
    const [out, err] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
    await proc.exited;
    if (proc.exitCode !== 0) throw new Error(`pipeline run failed (exit ${proc.exitCode}):\n${out}\n${err}`);
    const summary = JSON.parse(out.trim().split("\n").at(-1)!);
    return {
      // framesOut over the run from the end of model loading (the load warms the model up) to the drain.
      fps: summary.fps,
      // The process's own peak (the OS's figure for a child also counts the ffmpeg it ran).
      maxRssMiB: summary.peakRssMiB,
      stages: summary.stages,
      framesOut: summary.framesOut,
      dropped: summary.dropped,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---- the Python peer ------------------------------------------------------

const VENV = join(projectRoot, ".venv-models");

/**
 * The Python of scripts/models/prepare.sh's virtual environment, made (and
 * its pinned packages installed) when missing; or why there is none.
 */
export function benchPython(): { python: string } | { skipped: string } {
  const python = join(VENV, "bin", "python");
  const ready = () => existsSync(python) && spawnSync(python, ["-c", "import cv2, onnxruntime, numpy"]).status === 0;
  if (ready()) return { python };
  const python3 = spawnSync("python3", ["--version"]).status === 0 ? "python3" : undefined;
  if (!python3) return { skipped: "no python3 on PATH, so no Python loop to compare with (install Python 3 to get this row)" };
  if (!existsSync(python)) {
    console.error(`bench: creating ${VENV} for the Python loop (onnxruntime, opencv-python-headless, numpy)`);
    const venv = spawnSync(python3, ["-m", "venv", VENV], { encoding: "utf8" });
    if (venv.status !== 0) return { skipped: `python3 -m venv failed (${(venv.stderr || "").trim().split("\n").at(-1)}): no Python loop row` };
  }
  const pip = spawnSync(python, ["-m", "pip", "install", "--quiet", "-r", join(projectRoot, "scripts/models/requirements.txt")], { encoding: "utf8", stdio: ["ignore", "ignore", "pipe"] });
  if (pip.status !== 0 || !ready()) return { skipped: `pip could not install scripts/models/requirements.txt (${(pip.stderr || "").trim().split("\n").at(-1)}): no Python loop row` };
  return { python };
}

export interface PeerRun {
  fps: number;
  frames: number;
  ms: Record<string, number>;
  versions: Record<string, string>;
}

/** bench/peer_loop.py on the clip: OpenCV decode and letterbox, onnxruntime, NumPy/OpenCV NMS. */
export async function pythonPeer(python: string, frames: number, model = "yolov5n.onnx"): Promise<PeerRun> {
  const proc = Bun.spawn([python, join(projectRoot, "bench/peer_loop.py"), CLIP, join(projectRoot, "models", model), String(frames)], { stdout: "pipe", stderr: "pipe" });
  const [out, err] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
  await proc.exited;
  if (proc.exitCode !== 0) throw new Error(`bench/peer_loop.py failed (exit ${proc.exitCode}): ${err}`);
  return JSON.parse(out.trim().split("\n").at(-1)!) as PeerRun;
}

export const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/**
 * Runs the core benchmark and returns its markdown section. Bare loop, Python
 * loop and pipeline alternate for `rounds` rounds and medians are compared,
 * so load from elsewhere on the machine hits all sides alike.
 */
export async function benchCore(n = 200, rounds = 3): Promise<string> {
  const loadBefore = loadAverage();
  const dec = await decode(n);
  const py = benchPython();
  const bares: number[] = [];
  const peers: PeerRun[] = [];
  const pipes: PipelineRun[] = [];
  const kept: PipelineRun[] = [];
  for (let r = 0; r < rounds; r++) {
    bares.push(await bareLoop(dec.frames.slice(0, Math.min(n, 100))));
    if ("python" in py) peers.push(await pythonPeer(py.python, n));
    pipes.push(await pipelineRun({ frames: n }));
    kept.push(await pipelineRun({ frames: n, env: KEEP_PAGES }));
  }
  const bare = median(bares);
  const pipe = pipes.find((p) => p.fps === median(pipes.map((x) => x.fps)))!;
  const keep = kept.find((p) => p.fps === median(kept.map((x) => x.fps)))!;
  const peer = peers.length ? peers.find((p) => p.fps === median(peers.map((x) => x.fps)))! : undefined;
  const summary = markdownTable(
    ["measure", "value"],
    [
      [`ffmpeg decode (${CLIP_NAME} → rgb24, ${ffmpegName()})`, `${fmt(dec.fps)} fps`],
      [`bare onnxruntime-node loop (yolov5n fp32, 640, tensors made beforehand, onnxruntime defaults; median of ${rounds})`, `${fmt(bare)} fps`],
      peer
        ? [`Python loop (bench/peer_loop.py: OpenCV ${peer.versions.opencv} decode + letterbox, onnxruntime ${peer.versions.onnxruntime} defaults, NMS; ${peer.frames} frames; median of ${rounds})`, `${fmt(peer.fps)} fps`]
        : ["Python loop", `skipped: ${"skipped" in py ? py.skipped : ""}`],
      [`framewire pipeline (ingest → resize → infer-onnx → nms → sink-jsonl, ${keep.framesOut} frames, ${defaultThreads()} intra-op threads, ${SHIPPED}; median of ${rounds})`, `${fmt(keep.fps)} fps`],
      ["**pipeline / bare loop**", `**${fmt(keep.fps / bare, 2)}×** (target ≥ 1.0)`],
      ["**pipeline / Python loop**", peer ? `**${fmt(keep.fps / peer.fps, 2)}×** (target ≥ 1.1)` : "n/a (no Python)"],
      ["frames dropped", keep.dropped],
      ["peak RSS of the pipeline process", `${fmt(keep.maxRssMiB, 0)} MiB (target ≤ 300)`],
      [`the same pipeline with mimalloc's default 10 ms purge (\`bun runtime/cli.ts run\` started directly; median of ${rounds})`, `${fmt(pipe.fps)} fps, peak RSS ${fmt(pipe.maxRssMiB, 0)} MiB`],
      ["with it: pipeline / bare loop, pipeline / Python loop", `${fmt(pipe.fps / bare, 2)}×, ${peer ? `${fmt(pipe.fps / peer.fps, 2)}×` : "n/a"}`],
    ],
  );
  const stages = markdownTable(
    ["stage", "operator", "p50 ms", "p99 ms"],
    keep.stages.map((s) => [s.stage, s.operator, fmt(s.p50), fmt(s.p99)]),
  );
  const peerSteps = peer
    ? `\n\nPython loop, median ms per step: ${Object.entries(peer.ms)
        .map(([k, x]) => `${k} ${fmt(x, 2)}`)
        .join(", ")}.`
    : "";
  const runs =
    `All runs (fps): bare ${bares.map((x) => fmt(x)).join(", ")}; Python ${peers.map((x) => fmt(x.fps)).join(", ") || "-"}; pipeline ${kept.map((x) => fmt(x.fps)).join(", ")} ` +
    `(peak RSS ${kept.map((x) => fmt(x.maxRssMiB, 0)).join(", ")} MiB); with mimalloc's default purge ${pipes.map((x) => fmt(x.fps)).join(", ")} (peak RSS ${pipes.map((x) => fmt(x.maxRssMiB, 0)).join(", ")} MiB).`;
  return `## core pipeline vs bare onnxruntime loop and the Python loop\n\nLoad average before ${loadBefore}, after ${loadAverage()} (2 cores).\n\n${summary}\n\n${stages}${peerSteps}\n\n${runs}\n`;
}

// ---- profile: CPU per stage -------------------------------------------------

type ThreadKind = "js" | "worker" | "runtime";
interface ThreadTimes {
  /** CPU ns per thread (schedstat), keyed kind:tid. */
  ns: Map<string, number>;
  /** Kernel share: clock ticks of system time over all threads, and of all time. */
  sys: number;
  all: number;
}

/**
 * CPU of this process's threads by kind (Linux: /proc/self/task/<tid>/):
 * the JS thread, inference threads (a Worker and the onnxruntime pool it
 * starts, all named "Worker") and the runtime's helpers (GC, JIT, allocator).
 */
function threadCpu(): ThreadTimes {
  const ns = new Map<string, number>();
  let sys = 0;
  let all = 0;
  for (const tid of readdirSync("/proc/self/task")) {
    try {
      const comm = readFileSync(`/proc/self/task/${tid}/comm`, "utf8").trim();
      const kind: ThreadKind = Number(tid) === process.pid ? "js" : comm === "Worker" ? "worker" : "runtime";
      ns.set(`${kind}:${tid}`, Number(readFileSync(`/proc/self/task/${tid}/schedstat`, "utf8").split(" ")[0]));
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, "utf8").split(") ")[1].split(" ");
      sys += Number(stat[12]);
      all += Number(stat[11]) + Number(stat[12]);
    } catch {
      // the thread ended meanwhile
    }
  }
  return { ns, sys, all };
}

type Cpu = Record<ThreadKind, number>;

/** CPU ms per kind of thread since `before`, added to `into`. */
function addSince(before: ThreadTimes, into: Cpu): void {
  for (const [k, ns] of threadCpu().ns) into[k.split(":")[0] as ThreadKind] += (ns - (before.ns.get(k) ?? 0)) / 1e6;
}

/** ffmpeg's own CPU (`-benchmark`: utime + stime) per frame, decoding `n` frames of the clip as ingest asks it to. */
function ffmpegCpu(binary: string, n: number): number {
  const args = ffmpegArgs({ input: CLIP, realtime: false, loop: false, live: false, transport: "tcp", stallTimeout: 10, reconnectDelay: 1, reconnectMaxDelay: 1 });
  const at = args.indexOf("-i");
  const r = spawnSync(binary, [...args.slice(0, at), "-benchmark", "-loglevel", "info", ...args.slice(at, -1), "-frames:v", String(n), "-y", "/dev/null"], {
    encoding: "utf8",
    maxBuffer: 1 << 20,
  });
  const m = /utime=([\d.]+)s stime=([\d.]+)s/.exec(r.stderr ?? "");
  if (!m) throw new Error(`ffmpeg -benchmark printed no times: ${r.stderr}`);
  return ((Number(m[1]) + Number(m[2])) * 1000) / n;
}

const STAGES = ["ingest", "resize", "infer-onnx", "nms", "sink-jsonl"] as const;
type StageProfile = { frames: number; cpu: Record<(typeof STAGES)[number], Cpu>; kernelShare: number; threads: number };

/**
 * Streams `n` frames of the clip through ingest → resize → infer-onnx → nms
 * → sink-jsonl one frame at a time in this process (no stage competes with
 * another, and frames are dropped after the sink as in a pipeline), adding
 * up each stage's CPU by thread kind. Ingest's share is the JS thread's CPU
 * between two frames it emits.
 */
async function stageProfile(n: number): Promise<StageProfile> {
  const zero = (): Cpu => ({ js: 0, worker: 0, runtime: 0 });
  const cpu = Object.fromEntries(STAGES.map((s) => [s, zero()])) as StageProfile["cpu"];
  const dir = mkdtempSync(join(tmpdir(), "framewire-profile-"));
  const src = await instance<SourceInstance>("ingest", { url: CLIP });
  const resize = await instance<TransformInstance>("resize", { width: 640, height: 640 });
  const infer = await instance<TransformInstance>("infer-onnx", { model: "yolov5n.onnx" });
  const nms = await instance<TransformInstance>("nms", {});
  const sink = await instance<SinkInstance>("sink-jsonl", { path: join(dir, "out.jsonl") });
  const warmUp = 10;
  let frames = 0;
  let mark = threadCpu();
  const start = { sys: 0, all: 0 };
  const ac = new AbortController();
  await src.run(async (m) => {
    if (m.kind !== "frame") return;
    const counting = frames >= warmUp;
    if (counting) addSince(mark, cpu.ingest);
    if (frames === warmUp) [start.sys, start.all] = [mark.sys, mark.all];
    let msg: Message = m;
    for (const [name, op] of [["resize", resize], ["infer-onnx", infer], ["nms", nms]] as const) {
      mark = threadCpu();
      msg = (await op.process(msg)) as Message;
      if (counting) addSince(mark, cpu[name]);
    }
    mark = threadCpu();
    await sink.process(msg);
    if (counting) addSince(mark, cpu["sink-jsonl"]);
    mark = threadCpu();
    if (++frames >= n + warmUp) ac.abort();
  }, ac.signal);
  const end = threadCpu();
  await Promise.all([infer.close?.(), sink.close?.()]);
  rmSync(dir, { recursive: true, force: true });
  for (const s of STAGES) for (const k of ["js", "worker", "runtime"] as const) cpu[s][k] /= frames - warmUp;
  return { frames: frames - warmUp, cpu, kernelShare: (end.sys - start.sys) / Math.max(1, end.all - start.all), threads: defaultThreads() };
}

/** describeFfmpeg with paths inside the project relative to it: bench output goes into docs. */
const ffmpegName = (...a: Parameters<typeof describeFfmpeg>) => describeFfmpeg(...a).replaceAll(projectRoot.replace(/\/?$/, "/"), "");

/**
 * The allocator setting `bun run pipeline` and `bun run serve` start with
 * (package.json): Bun's mimalloc keeps freed pages for a second instead of
 * 10 ms, so the 8.6 MB of model output a frame reuses pages instead of
 * faulting fresh ones in (docs/performance.md). Runs without it are
 * `bun runtime/cli.ts run` started directly.
 */
export const KEEP_PAGES = { MIMALLOC_PURGE_DELAY: "1000" };
/** How runs with KEEP_PAGES are labelled. */
export const SHIPPED = "as `bun run pipeline` starts it (MIMALLOC_PURGE_DELAY=1000)";

/** The stage profile in a fresh child process (so its allocator settings are its own). */
async function stageProfileChild(n: number, env: Record<string, string> = {}): Promise<StageProfile> {
  const proc = Bun.spawn(["bun", join(projectRoot, "bench/core.ts"), "--stage-profile", String(n)], { stdout: "pipe", stderr: "pipe", env: { ...process.env, FRAMEWIRE_LOG: "warn", ...env } });
  const [out, err] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
  await proc.exited;
  if (proc.exitCode !== 0) throw new Error(`stage profile failed (exit ${proc.exitCode}): ${err}`);
  return JSON.parse(out.trim().split("\n").at(-1)!) as StageProfile;
}

const WHAT: Record<(typeof STAGES)[number], string> = {
  ingest: "read ffmpeg's pipe, split PPM frames, one new image buffer a frame",
  resize: "letterbox 480x360 → 640x640 into uint8 CHW (WebAssembly SIMD), one new tensor buffer a frame",
  "infer-onnx": "copy the bytes to the inference thread, /255 there, onnxruntime, keep the anchors that can reach minScore (0.001): about 2 200 of 25 200 cross back",
  nms: "decode the kept anchors (those over conf 0.25), NMS",
  "sink-jsonl": "one JSON line per frame",
};

const LETTERBOX_SIZES = [
  [480, 360],
  [1280, 720],
  [1920, 1080],
] as const;

/**
 * framewire's letterbox (resize's kernel) against OpenCV's on the same
 * machine: per source size, the best of 9 means of 50 runs, on noise; and
 * what each side adds to get the model's float input (NumPy's transpose and
 * /255 for OpenCV; the inference thread's /255 for framewire).
 */
function letterboxTable(): string {
  const best = (fn: () => void) => {
    let ms = Infinity;
    for (let r = 0; r < 9; r++) {
      const t0 = performance.now();
      for (let i = 0; i < 50; i++) fn();
      ms = Math.min(ms, (performance.now() - t0) / 50);
    }
    return ms;
  };
  const lb = new Letterboxer();
  const norm = new Normaliser();
  let seed = 1;
  const ours = LETTERBOX_SIZES.map(([w, h]) => {
    const src = Uint8Array.from({ length: w * h * 3 }, () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) & 255);
    const plan = makePlan(w, h, 640, 640, "letterbox");
    const chw = lb.run(src, plan, false);
    return { letterbox: best(() => lb.run(src, plan, false)), unit: best(() => norm.run(chw)) };
  });
  const py = benchPython();
  let cv: { ms: Record<string, { letterbox: number; blob: number }>; opencv: string } | undefined;
  if ("python" in py) {
    const r = spawnSync(py.python, [join(projectRoot, "bench/peer_loop.py"), "--letterbox", LETTERBOX_SIZES.map(([w, h]) => `${w}x${h}`).join(",")], { encoding: "utf8" });
    if (r.status === 0) cv = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
  }
  const rows = LETTERBOX_SIZES.map(([w, h], i) => {
    const c = cv?.ms[`${w}x${h}`];
    return [
      `${w}x${h} → 640x640`,
      fmt(ours[i].letterbox, 3),
      c ? fmt(c.letterbox, 3) : "-",
      c ? `${fmt(c.letterbox / ours[i].letterbox, 2)}×` : "-",
      fmt(ours[i].unit, 3),
      c ? fmt(c.blob, 3) : "-",
    ];
  });
  return markdownTable(
    ["source → model", `framewire resize (${lb.kernel}), ms`, `OpenCV ${cv?.opencv ?? ""} cv2.resize + copyMakeBorder, ms`, "OpenCV / framewire", "framewire /255 (inference thread), ms", "NumPy blob (RGB, CHW, /255), ms"],
    rows,
  ) + ("skipped" in py ? `\n\nOpenCV columns skipped: ${py.skipped}` : "");
}

/**
 * CPU ms per frame of each stage, by thread, ffmpeg included: as shipped and
 * with the allocator keeping freed pages; then the pipeline's fps by
 * intra-op thread count, both ways.
 */
export async function benchProfile(n = 200): Promise<string> {
  const loadBefore = loadAverage();
  const ff = findFfmpeg();
  const shipped = ff.source === "shipped" ? undefined : shippedFfmpeg();
  const ffMs = ffmpegCpu(ff.path, n);
  const ffShippedMs = shipped ? ffmpegCpu(shipped, n) : undefined;
  const letterbox = letterboxTable();
  const plain = await stageProfileChild(n);
  const kept = await stageProfileChild(n, KEEP_PAGES);
  const total = (p: StageProfile) => STAGES.reduce((a, s) => a + p.cpu[s].js + p.cpu[s].worker + p.cpu[s].runtime, 0) + ffMs;
  const rows: (string | number)[][] = [["ffmpeg", `decode H.264, rgb24 PPM to a pipe (child process; ${ffmpegName(ff)})`, "-", "-", "-", fmt(ffMs, 2), fmt(ffMs, 2)]];
  for (const s of STAGES) {
    const c = kept.cpu[s];
    const k = plain.cpu[s];
    rows.push([s, WHAT[s], fmt(c.js, 2), fmt(c.worker, 2), fmt(c.runtime, 2), fmt(c.js + c.worker + c.runtime, 2), fmt(k.js + k.worker + k.runtime, 2)]);
  }
  rows.push(["**total**", "CPU per frame", "", "", "", `**${fmt(total(kept), 1)}**`, `**${fmt(total(plain), 1)}**`]);
  const table = markdownTable(
    ["stage", "what", "JS thread", "inference thread + onnxruntime pool", "GC/JIT/allocator threads", `total ms (${Object.entries(KEEP_PAGES).map(([k, x]) => `${k}=${x}`).join(" ")})`, "total ms, mimalloc's default purge"],
    rows,
  );

  const choices = [...new Set([1, 2, defaultThreads()])].sort();
  const configs = choices.flatMap((t) => [
    { t, env: KEEP_PAGES as Record<string, string>, label: `${t}${t === defaultThreads() ? " (default)" : ""}, ${SHIPPED}` },
    { t, env: {} as Record<string, string>, label: `${t}${t === defaultThreads() ? " (default)" : ""}, mimalloc's default purge` },
  ]);
  const runs = configs.map(() => [] as PipelineRun[]);
  for (let r = 0; r < 3; r++) for (const [i, c] of configs.entries()) runs[i].push(await pipelineRun({ frames: n, threads: c.t, env: c.env }));
  const threads = markdownTable(
    ["intra-op threads", "pipeline fps (median of 3)", "all runs", "detect p50 ms", "resize p50 ms", "peak RSS MiB"],
    configs.map((c, i) => {
      const rs = runs[i];
      const m = rs.find((x) => x.fps === median(rs.map((y) => y.fps)))!;
      const p50 = (id: string) => fmt(m.stages.find((s) => s.stage === id)?.p50 ?? NaN);
      return [c.label, fmt(m.fps), rs.map((x) => fmt(x.fps)).join(", "), p50("detect"), p50("prep"), fmt(m.maxRssMiB, 0)];
    }),
  );
  const shippedNote = ffShippedMs === undefined ? "" : ` The shipped ffmpeg (${ffmpegName(shipped!)}) takes ${fmt(ffShippedMs, 2)} ms for the same work.`;
  return (
    `## CPU per frame, stage by stage\n\nLoad average before ${loadBefore}, after ${loadAverage()} (2 cores). ${plain.frames} frames of ${CLIP_NAME} streamed through the stages one at a time in one process ` +
    `(after 10 warm-up frames), ${plain.threads} intra-op thread(s); ms of CPU per frame by thread (Linux schedstat). Kernel time was ${fmt(kept.kernelShare * 100, 0)}% of all CPU ${SHIPPED} ` +
    `and ${fmt(plain.kernelShare * 100, 0)}% with mimalloc's default purge.${shippedNote}\n\n${table}\n\n` +
    `### onnxruntime intra-op threads in the pipeline\n\n${threads}\n\n` +
    `### letterbox: framewire against OpenCV (one thread each, best of 9 × 50 runs)\n\n${letterbox}\n`
  );
}

if (import.meta.main && process.argv[2] === "--stage-profile") console.log(JSON.stringify(await stageProfile(Number(process.argv[3] ?? 200))));

// ---- batching ---------------------------------------------------------------

/** Four cameras (the clip four times) through one infer-onnx stage on the dynamic-batch model: batch 1, 4 and 8. */
export async function benchBatch(n = 240, streams = 4): Promise<string> {
  const loadBefore = loadAverage();
  const configs: { label: string; batch?: { max: number; maxDelayMs: number } }[] = [
    { label: "no batching (batch 1)" },
    { label: "batch: { max: 4, maxDelayMs: 10 }", batch: { max: 4, maxDelayMs: 10 } },
    { label: "batch: { max: 8, maxDelayMs: 10 }", batch: { max: 8, maxDelayMs: 10 } },
  ];
  const runs = configs.map(() => [] as PipelineRun[]);
  for (let r = 0; r < 3; r++) for (const [i, c] of configs.entries()) runs[i].push(await pipelineRun({ frames: n, model: "yolov5n-batch.onnx", batch: c.batch, streams }));
  const rows = configs.map((c, i) => {
    const m = runs[i].find((x) => x.fps === median(runs[i].map((y) => y.fps)))!;
    const detect = m.stages.find((s) => s.stage === "detect")!;
    return [c.label, fmt(m.fps), runs[i].map((x) => fmt(x.fps)).join(", "), fmt(detect.p50), fmt(detect.p99), fmt(m.maxRssMiB, 0)];
  });
  return (
    `## cross-stream batching (${streams} cameras, yolov5n-batch.onnx)\n\nLoad average before ${loadBefore}, after ${loadAverage()} (2 cores). ${streams} ingest stages of ${CLIP_NAME} into one resize → infer-onnx → nms → sink-jsonl, ${n} frames in all; detect p50/p99 is a frame's time in the stage (waiting for its batch included).\n\n` +
    `${markdownTable(["infer-onnx", "total fps (median of 3)", "all runs", "detect p50 ms", "detect p99 ms", "peak RSS MiB"], rows)}\n`
  );
}
