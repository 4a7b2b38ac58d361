/**
 * Support for the lifecycle, metrics and HTTP tests: a small pipeline run
 * in-process with its HTTP server, and tiny ONNX models written byte by
 * byte (protobuf). The models take a 1×3×32×32 float tensor and answer in a
 * microsecond with a YOLOv5-shaped output (1×96×32: 96 candidates, 27
 * classes) made from the pixels, so hundreds of frames run in a test.
 *
 * - `scaledModel(k)`: output = input × k. Different k, different file, different version.
 * - `crashingModel()`: runs on zeros (its warm-up passes) but fails on any
 *   real frame: a Gather indexed by 10 × the brightest pixel goes out of range.
 * - `smallInputModel()`: takes 1×3×16×16, so frames of 32×32 do not fit.
 */
import { rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Executor } from "../runtime/engine/executor.ts";
import { startHttpServer, type HttpServer } from "../runtime/observe/http/server.ts";
import { MemoryBus } from "../runtime/bus/memory.ts";
import type { Message } from "../runtime/core/message.ts";
import type { PipelineSummary } from "../runtime/core/stats.ts";
import { StatusView, type ProcessStatus } from "../runtime/observe/status.ts";
import { repoRoot } from "./support/paths.ts";
import { captureLog, parse, registryWith, type CapturedLog } from "./support/pipeline.ts";
import { collected, testOperators } from "./support/test-operators.ts";

export const CLIP = join(repoRoot, "pipelines/media/vtest.mp4");
export const TOKEN = "test-token-0123456789abcdef";

const enc = new TextEncoder();

function varint(n: number | bigint): number[] {
  // int64 fields: negatives are ten-byte two's complement.
  let x = BigInt.asUintN(64, BigInt(n));
  const out: number[] = [];
  do {
    let b = Number(x & 0x7fn);
    x >>= 7n;
    if (x) b |= 0x80;
    out.push(b);
  } while (x);
  return out;
}

const cat = (...parts: (Uint8Array | number[])[]) => Uint8Array.from(parts.flatMap((p) => Array.from(p)));
const key = (field: number, wire: number) => varint((field << 3) | wire);
const int = (field: number, n: number) => cat(key(field, 0), varint(n));
const bytes = (field: number, b: Uint8Array) => cat(key(field, 2), varint(b.length), b);
const str = (field: number, s: string) => bytes(field, enc.encode(s));
const msg = (field: number, ...parts: Uint8Array[]) => bytes(field, cat(...parts));

const FLOAT = 1;
const INT64 = 7;

function tensor(name: string, dims: number[], values: { float?: number[]; int64?: number[] }): Uint8Array {
  const data = values.float
    ? bytes(4, new Uint8Array(Float32Array.from(values.float).buffer))
    : bytes(7, Uint8Array.from(values.int64!.flatMap((v) => varint(v))));
  return cat(...dims.map((d) => int(1, d)), int(2, values.float ? FLOAT : INT64), data, str(8, name));
}

function node(op: string, inputs: string[], outputs: string[], attrs: Uint8Array[] = []): Uint8Array {
  return cat(...inputs.map((i) => str(1, i)), ...outputs.map((o) => str(2, o)), str(4, op), ...attrs.map((a) => bytes(5, a)));
}

/** An INT attribute (type 2). */
const intAttr = (name: string, value: number) => cat(str(1, name), int(3, value), int(20, 2));

function valueInfo(name: string, dims: number[]): Uint8Array {
  const shape = cat(...dims.map((d) => msg(1, int(1, d))));
  return cat(str(1, name), msg(2, msg(1, int(1, FLOAT), bytes(2, shape))));
}

function model(nodes: Uint8Array[], initializers: Uint8Array[], inputDims: number[], outputDims: number[]): Uint8Array {
  const graph = cat(
    ...nodes.map((n) => bytes(1, n)),
    str(2, "framewire-test"),
    ...initializers.map((t) => bytes(5, t)),
    bytes(11, valueInfo("images", inputDims)),
    bytes(12, valueInfo("output", outputDims)),
  );
  return cat(int(1, 8), str(2, "framewire tests"), bytes(7, graph), msg(8, str(1, ""), int(2, 13)));
}

const OUT = [1, 96, 32];

/** output = images × k, reshaped to 1×96×32. */
export function scaledModel(k: number): Uint8Array {
  return model(
    [node("Mul", ["images", "k"], ["scaled"]), node("Reshape", ["scaled", "shape"], ["output"])],
    [tensor("k", [], { float: [k] }), tensor("shape", [3], { int64: OUT })],
    [1, 3, 32, 32],
    OUT,
  );
}

/**
 * Loads and runs on zeros; throws inside onnxruntime on any frame with a pixel brighter than 0.2.
 * `side` is the input's width and height (32, or 640 for pipelines sized for YOLOv5n; 1×19200×64 output then).
 */
export function crashingModel(side = 32): Uint8Array {
  const out = side === 32 ? OUT : [1, (3 * side * side) / 64, 64];
  return model(
    [
      node("ReduceMax", ["images"], ["max"], [intAttr("keepdims", 0)]),
      node("Mul", ["max", "ten"], ["max10"]),
      node("Cast", ["max10"], ["index"], [intAttr("to", INT64)]),
      node("Gather", ["table", "index"], ["gain"]),
      node("Mul", ["images", "gain"], ["scaled"]),
      node("Reshape", ["scaled", "shape"], ["output"]),
    ],
    [tensor("ten", [], { float: [10] }), tensor("table", [2], { float: [1, 1] }), tensor("shape", [3], { int64: out })],
    [1, 3, side, side],
    out,
  );
}

/** A model for 16×16 inputs (1×24×32 output). */
export function smallInputModel(): Uint8Array {
  return model(
    [node("Mul", ["images", "k"], ["scaled"]), node("Reshape", ["scaled", "shape"], ["output"])],
    [tensor("k", [], { float: [1] }), tensor("shape", [3], { int64: [1, 24, 32] })],
    [1, 3, 16, 16],
    [1, 24, 32],
  );
}

/** Writes a model to `path` (via a temporary file and a rename, as a deploy would). */
export async function writeModel(path: string, model: Uint8Array): Promise<void> {
  await writeFile(`${path}.part`, model);
  await rename(`${path}.part`, path);
}

let runs = 0;

/**
 * The looped sample clip at 64×48 → 32×32 letterbox → 2 ms pacing →
 * infer-onnx (`detect`, with these options) → nms (unless `nms: false`) → a
 * collecting sink.
 */
export function tinyPipeline(detect: Record<string, unknown>, o: { nms?: boolean; key: string }): string {
  return `
name: tiny
stages:
  - id: cam
    use: ingest
    with: { url: "${CLIP}", width: 64, height: 48, loop: true }
  - id: prep
    use: resize
    with: { width: 32, height: 32, mode: letterbox }
  - id: pace
    use: test-slow
    with: { ms: 2 }
  - id: detect
    use: infer-onnx
    with: ${JSON.stringify(detect)}
${o.nms === false ? "" : "  - id: nms\n    use: nms\n    with: { conf: 0.25 }\n"}  - id: out
    use: test-collect
    with: { key: ${o.key} }
`;
}

export interface TinyRun {
  exec: Executor;
  view: StatusView;
  http: HttpServer;
  log: CapturedLog;
  /** What reached the sink so far. */
  received(): Message[];
  status(): ProcessStatus;
  /** POSTs JSON to the server, with the bearer token unless `token` is null. */
  post(path: string, body?: unknown, token?: string | null): Promise<Response>;
  /** Stops the sources, drains, stops the server; the run's summary. */
  stop(): Promise<PipelineSummary>;
}

/** Runs `tinyPipeline(detect, o)` in this process with an HTTP server (token `TOKEN`) on a free port. */
export async function startTinyRun(detect: Record<string, unknown>, o: { nms?: boolean; frames?: number } = {}): Promise<TinyRun> {
  const key = `tiny-${++runs}`;
  const spec = parse(tinyPipeline(detect, { ...o, key }), await registryWith(...testOperators));
  const log = captureLog("tiny");
  const exec = new Executor(spec, new MemoryBus(), { log, frames: o.frames });
  const view = new StatusView(exec);
  view.start();
  const http = await startHttpServer(view, { port: 0, host: "127.0.0.1", token: TOKEN, publicMetrics: true, maxBodyBytes: 4096, liveFps: 5, liveWidth: 640 }, log.child("http"));
  await exec.start();
  return {
    exec,
    view,
    http,
    log,
    received: () => collected.get(key) ?? [],
    status: () => view.snapshot(),
    post: (path, body, token = TOKEN) =>
      fetch(`${http.url}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json", ...(token === null ? {} : { authorization: `Bearer ${token}` }) },
        body: body === undefined ? undefined : JSON.stringify(body),
      }),
    async stop() {
      exec.stop("test done");
      const summary = await exec.done;
      await http.stop();
      view.stop();
      return summary;
    },
  };
}
