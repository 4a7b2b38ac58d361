/**
 * `framewire serve` under load, in one run: POST /detect throughput and
 * latency with concurrent clients per instance count (the model's fixed
 * batch of 1 leaves dynamic batching off, so this measures queueing per
 * instance), and infer-triton over loopback against in-process infer-onnx on
 * the same tensors. Client and server share this machine's cores.
 */
import * as v from "valibot";
import { createServer } from "node:net";
import { loadavg } from "node:os";
import { join } from "node:path";
import type { Frame } from "../runtime/core/message.ts";
import type { SourceInstance, StageContext, TransformInstance } from "../runtime/core/operator.ts";
import { createLogger } from "../runtime/core/log.ts";
import { Histogram } from "../runtime/core/histogram.ts";
import { projectRoot } from "../runtime/platform/paths.ts";
import { readBytes } from "../runtime/platform/index.ts";
import { loadRegistry } from "../runtime/spec/registry.ts";
import { fmt, markdownTable } from "./table.ts";

const MODEL = join(projectRoot, "models/yolov5n.onnx");
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

/** Starts `framewire serve` and resolves once it listens; stop() kills it by PID. */
async function startServer(args: string[]): Promise<{ url: string; stop(): Promise<void> }> {
  const port = await freePort();
  const proc = Bun.spawn(["bun", join(projectRoot, "runtime/cli.ts"), "serve", "--model", MODEL, "--port", String(port), ...args], {
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

  // The same tensors through infer-onnx in process and through infer-triton to a local server.
  const ingest = await instance<SourceInstance>("ingest", { url: CLIP, fps: 5 });
  const decoded: Frame[] = [];
  const stop = new AbortController();
  await ingest.run(async (f) => {
    if (f.kind !== "frame") return;
    decoded.push(f);
    if (decoded.length >= frames) stop.abort();
  }, stop.signal);
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
      ["dynamic batching", "not measurable with yolov5n.onnx: its batch axis is fixed to 1, so the server queues per instance (the table above)"],
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
  return `## framewire serve: /detect under load, remote vs in-process inference\n\n${load}\n\n${summary}\n\n${quiet}\n`;
}
