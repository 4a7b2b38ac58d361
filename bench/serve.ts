/**
 * `framewire serve` under load, in one run: POST /detect throughput and
 * latency with concurrent clients per instance count (yolov5n.onnx's fixed
 * batch of 1 leaves dynamic batching off, so this measures queueing per
 * instance); /v2/models/{m}/infer with 1, 4 and 16 clients on the
 * dynamic-batch model (yolov5n-batch.onnx) from a model repository, dynamic
 * batching on (the seed's preferred sizes and delay) vs off, batch sizes read
 * from the statistics extension; and infer-triton over loopback against
 * in-process infer-onnx on the same tensors; and a burst of 100 concurrent
 * 6000×6000 PNGs per decode budget (admission control). Client and server share this
 * machine's cores.
 */
import * as v from "valibot";
import { createServer } from "node:net";
import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { encodeInferRequest, HEADER_LENGTH } from "../runtime/inference/kserve.ts";
import type { Frame } from "../runtime/core/message.ts";
import type { SourceInstance, StageContext, TransformInstance } from "../runtime/core/operator.ts";
import { createLogger } from "../runtime/core/log.ts";
import { Histogram } from "../runtime/core/histogram.ts";
import { projectRoot } from "../runtime/platform/paths.ts";
import { resolveFfmpeg } from "../runtime/media/ffmpeg.ts";
import { readBytes } from "../runtime/platform/index.ts";
import { loadRegistry } from "../runtime/spec/registry.ts";
import { fmt, markdownTable } from "./table.ts";

const MODEL = join(projectRoot, "models/yolov5n.onnx");
const BATCH_MODEL = join(projectRoot, "models/yolov5n-batch.onnx");
const CLIP = join(projectRoot, "pipelines/media/vtest.mp4");
const IMAGE = join(projectRoot, "../shared/data/images/bus.jpg");

async function instance<T>(name: string, options: unknown): Promise<T> {
  const def = (await loadRegistry()).get(name)!;
  const ctx: StageContext = { stage: name, pipeline: "bench", log: createLogger("bench", 99), signal: new AbortController().signal };
  return (await def.create(v.parse(def.options, options) as never, ctx)) as T;
}
const transform = (name: string, options: unknown) => instance<TransformInstance>(name, options);

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === "object" && addr ? resolve(addr.port) : reject(new Error("no port"))));
    });
  });
}

/** Starts `framewire serve` (on yolov5n.onnx unless `args` name a model or repository) and resolves once it listens; stop() kills it by PID. */
async function startServer(args: string[]): Promise<{ url: string; pid: number; stop(): Promise<void> }> {
  const port = await freePort();
  const source = args.some((a) => a === "--model" || a === "--model-repository") ? [] : ["--model", MODEL];
  const proc = Bun.spawn(["bun", join(projectRoot, "runtime/cli.ts"), "serve", ...source, "--port", String(port), ...args], {
    stdout: "ignore",
    stderr: "pipe",
    env: { ...process.env, FRAMEWIRE_LOG: "info" },
  });
  let log = "";
  const dec = new TextDecoder();
  for await (const chunk of proc.stderr) {
    log += dec.decode(chunk, { stream: true });
    if (log.includes("listening on")) break;
  }
  if (!log.includes("listening on")) throw new Error(`framewire serve did not start:\n${log}`);
  return {
    url: `http://127.0.0.1:${port}`,
    pid: proc.pid,
    stop: async () => {
      proc.kill("SIGTERM");
      await proc.exited;
    },
  };
}

interface LoadResult {
  rps: number;
  p50: number;
  p99: number;
  queueMs: number;
}

/** `total` POST /detect requests from `clients` concurrent loops. */
async function detectLoad(url: string, body: Uint8Array, clients: number, total: number): Promise<LoadResult> {
  const h = new Histogram();
  let queue = 0;
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (next++ < total) {
        const t = performance.now();
        const res = await fetch(`${url}/detect`, { method: "POST", body, headers: { "content-type": "image/jpeg" } });
        const json = (await res.json()) as { timings?: { queue: number }; error?: string };
        if (!res.ok) throw new Error(`/detect answered ${res.status}: ${json.error}`);
        h.record(performance.now() - t);
        queue += json.timings!.queue;
      }
    }),
  );
  return { rps: total / ((performance.now() - t0) / 1000), p50: h.quantile(0.5), p99: h.quantile(0.99), queueMs: queue / total };
}

/** A peak resident set (VmHWM), MiB. */
async function peakRssMiB(pid: number): Promise<number> {
  const kb = /VmHWM:\s+(\d+) kB/.exec(await Bun.file(`/proc/${pid}/status`).text());
  return kb ? Number(kb[1]) / 1024 : NaN;
}

/**
 * Admission control: `n` concurrent POST /detect of one tiny 1-bit PNG
 * declaring 6000×6000 (103 MiB decoded) against a fresh server per decode
 * budget (0: none; "default": the server's own, fitted to the machine). Answers by status, the server's peak RSS, the slowest
 * answered request and the wall time of the burst.
 */
export async function benchBurst(n = 100, budgets = ["0", "default", "128"]): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "fw-burst-"));
  const file = join(dir, "white-6000.png");
  try {
    const ff = Bun.spawn([resolveFfmpeg(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "color=white:s=6000x6000", "-frames:v", "1", "-pix_fmt", "monob", "-compression_level", "9", "-y", file]);
    if ((await ff.exited) !== 0) throw new Error("ffmpeg could not write the test PNG");
    const body = await readBytes(file);
    const rows: string[][] = [];
    for (const budget of budgets) {
      const server = await startServer(budget === "default" ? [] : ["--decode-budget-mb", budget]);
      try {
        const before = await peakRssMiB(server.pid);
        const t0 = performance.now();
        const answers = await Promise.all(
          Array.from({ length: n }, async () => {
            const t = performance.now();
            try {
              const res = await fetch(`${server.url}/detect`, { method: "POST", body, headers: { "content-type": "image/png" } });
              await res.arrayBuffer();
              return { status: res.status, ms: performance.now() - t, retry: res.headers.get("retry-after") };
            } catch {
              // The client gave up (bun's fetch times out after 300 s): counted under "other".
              return { status: 0, ms: performance.now() - t, retry: null };
            }
          }),
        );
        const wall = performance.now() - t0;
        const count = (st: number) => answers.filter((a) => a.status === st).length;
        const okMs = answers.filter((a) => a.status === 200).map((a) => a.ms);
        const refusedMs = answers.filter((a) => a.status === 503).map((a) => a.ms);
        rows.push([
          budget === "0" ? "none" : budget === "default" ? "default (machine)" : `${budget} MiB`,
          String(count(200)),
          `${count(503)} (${answers.filter((a) => a.status === 503 && a.retry).length} with Retry-After)`,
          String(n - count(200) - count(503)),
          `${fmt(before)} → ${fmt(await peakRssMiB(server.pid))}`,
          okMs.length ? fmt(Math.max(...okMs) / 1000, 1) : "-",
          refusedMs.length ? fmt(Math.max(...refusedMs)) : "-",
          fmt(wall / 1000, 1),
        ]);
      } finally {
        await server.stop();
      }
    }
    return markdownTable(["decode budget", "200", "503", "other (client timed out)", "server peak RSS MiB", "slowest 200 s", "slowest 503 ms", "burst s"], rows);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The first `max` frames ingest decodes from `options.url`. */
async function decodeFrames(options: { url: string; fps?: number }, max: number): Promise<Frame[]> {
  const ingest = await instance<SourceInstance>("ingest", options);
  const frames: Frame[] = [];
  const stop = new AbortController();
  await ingest.run(async (m) => {
    if (m.kind !== "frame") return;
    frames.push(m);
    if (frames.length >= max) stop.abort();
  }, stop.signal);
  await ingest.close?.();
  return frames;
}

/** A config.pbtxt for yolov5n-batch.onnx: the seed's batching (preferred 4/8/16, 500 µs) when `dynamic`, none otherwise. */
function benchConfig(name: string, dynamic: boolean): string {
  return `name: "${name}"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ { name: "images", data_type: TYPE_FP32, dims: [ 3, 640, 640 ] } ]
output [ { name: "output0", data_type: TYPE_FP32, dims: [ 25200, 85 ] } ]
${dynamic ? "dynamic_batching { preferred_batch_size: [ 4, 8, 16 ], max_queue_delay_microseconds: 500 }\n" : ""}instance_group [ { count: 1, kind: KIND_CPU } ]
`;
}

interface InferLoad extends LoadResult {
  /** Mean items per model execution, from the statistics extension. */
  batch: number;
  sizes: string;
}

/** `total` binary POST /v2/models/{model}/infer requests of one image from `clients` concurrent loops. */
async function inferLoad(url: string, model: string, tensor: Float32Array, clients: number, total: number): Promise<InferLoad> {
  const stats = async () => ((await (await fetch(`${url}/v2/models/${model}/stats`)).json()) as { model_stats: ModelStat[] }).model_stats[0];
  const before = await stats();
  const req = encodeInferRequest([{ name: "images", datatype: "FP32", shape: [1, 3, 640, 640], data: tensor }], ["output0"], true);
  const h = new Histogram();
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (next++ < total) {
        const t = performance.now();
        const res = await fetch(`${url}/v2/models/${model}/infer`, { method: "POST", body: req.body, headers: req.headers });
        const body = await res.arrayBuffer();
        if (!res.ok || !res.headers.get(HEADER_LENGTH)) throw new Error(`infer answered ${res.status}: ${new TextDecoder().decode(body).slice(0, 200)}`);
        h.record(performance.now() - t);
      }
    }),
  );
  const rps = total / ((performance.now() - t0) / 1000);
  const after = await stats();
  const counts = new Map(after.batch_stats.map((b) => [b.batch_size, b.compute_infer.count - (before.batch_stats.find((x) => x.batch_size === b.batch_size)?.compute_infer.count ?? 0)]));
  const queue = after.inference_stats.queue;
  return {
    rps,
    p50: h.quantile(0.5),
    p99: h.quantile(0.99),
    queueMs: (queue.ns - before.inference_stats.queue.ns) / 1e6 / (queue.count - before.inference_stats.queue.count),
    batch: (after.inference_count - before.inference_count) / (after.execution_count - before.execution_count),
    sizes: [...counts].filter(([, n]) => n > 0).sort((a, b) => a[0] - b[0]).map(([size, n]) => `${size}×${n}`).join(" "),
  };
}

interface ModelStat {
  inference_count: number;
  execution_count: number;
  inference_stats: { queue: { count: number; ns: number } };
  batch_stats: { batch_size: number; compute_infer: { count: number } }[];
}

/** /infer throughput and p99 with 1, 4 and 16 clients, dynamic batching on vs off, on one server. */
async function benchBatching(tensor: Float32Array, requestsPerClient: number): Promise<{ table: string; rows: Map<string, InferLoad> }> {
  const root = await mkdtemp(join(tmpdir(), "framewire-bench-"));
  try {
    for (const [name, dynamic] of [
      ["batching_on", true],
      ["batching_off", false],
    ] as const) {
      await mkdir(join(root, name, "1"), { recursive: true });
      await writeFile(join(root, name, "config.pbtxt"), benchConfig(name, dynamic));
      await symlink(BATCH_MODEL, join(root, name, "1", "model.onnx"));
    }
    const server = await startServer(["--model-repository", root]);
    const rows: (string | number)[][] = [];
    const results = new Map<string, InferLoad>();
    try {
      for (const model of ["batching_on", "batching_off"]) {
        await inferLoad(server.url, model, tensor, 1, 2); // connections, first runs
        for (const clients of [1, 4, 16]) {
          const total = Math.max(8, clients * requestsPerClient);
          const r = await inferLoad(server.url, model, tensor, clients, total);
          results.set(`${model}/${clients}`, r);
          rows.push([model === "batching_on" ? "on (4/8/16, 500 µs)" : "off", clients, total, fmt(r.rps, 2), fmt(r.p50), fmt(r.p99), fmt(r.queueMs), fmt(r.batch, 2), r.sizes]);
        }
      }
    } finally {
      await server.stop();
    }
    const table = markdownTable(["dynamic batching", "clients", "requests", "req/s", "p50 ms", "p99 ms", "mean queue ms", "mean batch", "batches (size×count, from /stats)"], rows);
    return { table, rows: results };
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

/** Mean ms per frame of `infer` over `frames` (one warm-up first). */
async function perFrame(infer: TransformInstance, frames: Frame[]): Promise<{ mean: number; p99: number }> {
  await infer.process({ ...frames[0], timings: {} });
  const h = new Histogram();
  for (const f of frames) {
    const t = performance.now();
    await infer.process({ ...f, timings: {} });
    h.record(performance.now() - t);
  }
  return { mean: h.mean, p99: h.quantile(0.99) };
}

/** Runs the serve benchmark and returns its markdown section. */
export async function benchServe(requests = 48, frames = 30): Promise<string> {
  const loadBefore = loadavg()[0];
  const image = await readBytes(IMAGE);
  const rows: (string | number)[][] = [];
  const byConfig = new Map<string, LoadResult>();
  for (const instances of [1, 2]) {
    const server = await startServer(["--instances", String(instances)]);
    try {
      await detectLoad(server.url, image, 1, 2); // warm the decoder and connections
      for (const clients of [1, 4]) {
        const r = await detectLoad(server.url, image, clients, requests);
        byConfig.set(`${instances}/${clients}`, r);
        rows.push([instances, clients, requests, fmt(r.rps), fmt(r.p50), fmt(r.p99), fmt(r.queueMs)]);
      }
    } finally {
      await server.stop();
    }
  }
  const load = markdownTable(["instances", "clients", "requests", "req/s", "p50 ms", "p99 ms", "mean queue ms"], rows);

  // The image as the model sees it, for the /infer rounds.
  const [busFrame] = await decodeFrames({ url: IMAGE }, 1);
  const busTensor = ((await (await transform("resize", { width: 640, height: 640 })).process(busFrame)) as Frame).tensor!.data;
  const batching = await benchBatching(busTensor, 3);

  // The same tensors through infer-onnx in process and through infer-triton to a local server.
  const decoded = await decodeFrames({ url: CLIP, fps: 5 }, frames);
  const resize = await transform("resize", { width: 640, height: 640 });
  const tensors = await Promise.all(decoded.map(async (f) => (await resize.process(f)) as Frame));
  const onnx = await transform("infer-onnx", { model: MODEL });
  const local = await perFrame(onnx, tensors);
  await onnx.close?.();
  const server = await startServer([]);
  let binary: { mean: number; p99: number };
  let json: { mean: number; p99: number };
  try {
    const tb = await transform("infer-triton", { url: server.url, model: "yolov5n", binary: true });
    binary = await perFrame(tb, tensors);
    await tb.close?.();
    const tj = await transform("infer-triton", { url: server.url, model: "yolov5n", binary: false });
    json = await perFrame(tj, tensors.slice(0, 5));
    await tj.close?.();
  } finally {
    await server.stop();
  }
  const one = byConfig.get("1/1")!;
  const four = byConfig.get("1/4")!;
  const twoInst = byConfig.get("2/4")!;
  const summary = markdownTable(
    ["measure", "value"],
    [
      [
        "**dynamic batching on / off, 16 clients** (yolov5n-batch.onnx, 1 instance)",
        `**${fmt(batching.rows.get("batching_on/16")!.rps / batching.rows.get("batching_off/16")!.rps, 2)}×** req/s; p99 ${fmt(batching.rows.get("batching_on/16")!.p99 / batching.rows.get("batching_off/16")!.p99, 2)}×; mean batch ${fmt(batching.rows.get("batching_on/16")!.batch, 1)}`,
      ],
      [
        "**dynamic batching on / off, 1 client**",
        `**${fmt(batching.rows.get("batching_on/1")!.rps / batching.rows.get("batching_off/1")!.rps, 2)}×** req/s (nothing to batch with; the 500 µs wait is the cost)`,
      ],
      ["infer-onnx in process (yolov5n, 640)", `${fmt(local.mean)} ms/frame (p99 ${fmt(local.p99)})`],
      ["infer-triton → framewire serve, binary tensors, loopback", `${fmt(binary.mean)} ms/frame (p99 ${fmt(binary.p99)})`],
      ["infer-triton → framewire serve, JSON tensors (5 frames)", `${fmt(json.mean)} ms/frame`],
      ["**remote binary / in process**", `**${fmt(binary.mean / local.mean, 2)}×** time per frame (+${fmt(binary.mean - local.mean)} ms: 4.9 MB in, 8.6 MB out, one HTTP round trip)`],
      ["**JSON / binary**", `**${fmt(json.mean / binary.mean, 1)}×** time per frame`],
      ["**/detect 4 clients / 1 client** (1 instance)", `**${fmt(four.rps / one.rps, 2)}×** req/s; p99 ${fmt(four.p99 / one.p99, 1)}× (requests wait in the instance queue)`],
      ["**/detect 2 instances / 1 instance** (4 clients)", `**${fmt(twoInst.rps / four.rps, 2)}×** req/s on ${navigator.hardwareConcurrency} cores`],
    ],
  );
  // Client, server and anything else running share the cores: the load average says how quiet the machine was.
  const quiet = `host load average (1 min): ${fmt(loadBefore, 2)} at the start, ${fmt(loadavg()[0], 2)} at the end, on ${navigator.hardwareConcurrency} cores`;
  const burst = await benchBurst();
  return `## framewire serve: /detect under load, /infer with dynamic batching on vs off, remote vs in-process inference\n\n${load}\n\n${batching.table}\n\n${summary}\n\n### 100 concurrent 6000×6000 PNGs (13 KB each) by decode budget\n\n${burst}\n\n${quiet}\n`;
}
