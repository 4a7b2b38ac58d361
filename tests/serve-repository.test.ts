/**
 * `framewire serve --model-repository`: a seed-style Triton repository in a
 * temp dir, served by a real process; Triton's model configuration,
 * statistics and repository extensions checked against their documented
 * JSON shapes over HTTP (tritonclient is not installable here).
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { decodeInferResponse, encodeInferRequest, HEADER_LENGTH } from "../runtime/inference/kserve.ts";
import { parseClassNames, readOnnxMetadata } from "../runtime/inference/onnx-metadata.ts";
import { makeTransform, readAll, step } from "./support/operators.ts";
import { busImage, modelFile, repoRoot, tempDir } from "./support/paths.ts";
import { startProcess } from "./support/process.ts";
import { batchModelFile, processUsage, seedConfig, writeRepository } from "./support/repository.ts";
import { json, startServe, writeIdentityModel, type ServeProcess } from "./support/serve.ts";
import { sleep, until } from "./support/wait.ts";

setDefaultTimeout(180_000);

let dir: Awaited<ReturnType<typeof tempDir>>;
let repo: string;
let server: ServeProcess;
let bus: Float32Array;
let labels: string[];

const IDENTITY_CONFIG = `name: "identity"
backend: "onnxruntime"
max_batch_size: 8
version_policy: { all: { } }
input [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 4 ] } ]
dynamic_batching { }
`;

beforeAll(async () => {
  dir = await tempDir();
  repo = join(dir.path, "repo");
  const identity = await writeIdentityModel(dir.path, 4);
  // labels.txt differs from the model's own names, so the test can tell which one the server used.
  labels = parseClassNames(readOnnxMetadata(new Uint8Array(await readFile(batchModelFile))).names)!.map((n, i) => (i === 0 ? "pedestrian" : n));
  await writeRepository(repo, {
    // The seed's config with one change: a 5 s queue delay, so that under load only the preferred sizes (4, 8, 16)
    // can form (with the seed's 500 µs, a batch of 1..3 goes whenever requests arrive further apart).
    yolov5: { config: seedConfig(5_000_000), versions: { "1": batchModelFile }, files: { "labels.txt": labels.join("\n") + "\n" } },
    yolov5n: { config: await readFile(join(repoRoot, "examples/model_repository/yolov5n/config.pbtxt"), "utf8"), versions: { "1": modelFile } },
    identity: { config: IDENTITY_CONFIG, versions: { "1": identity, "2": identity } },
    broken: { config: 'max_batch_size: 8\ninput [ { name: "images" dims: [ 3, 640 ] } ]\n', versions: { "1": batchModelFile } },
  });
  server = await startServe(["--model-repository", repo, "--model-control-mode", "explicit", "--load-model", "yolov5,identity"]);
  const [frame] = await readAll({ url: busImage });
  bus = (await step((await makeTransform("resize", { width: 640, height: 640 })).instance, frame)).tensor!.data;
});
afterAll(async () => {
  await server?.stop();
  await dir?.remove();
});

const post = (path: string, body?: unknown) => fetch(`${server.url}${path}`, { method: "POST", body: body === undefined ? undefined : JSON.stringify(body) });

/** One binary inference request; resolves with the status, and the output or the error. */
async function infer(path: string, data: Float32Array, shape: number[], input = "images", output = "output0") {
  const req = encodeInferRequest([{ name: input, datatype: "FP32", shape, data }], [output], true);
  const res = await fetch(`${server.url}${path}`, { method: "POST", body: req.body, headers: req.headers });
  if (res.status !== 200) return { status: res.status, error: (await json(res)).error as string };
  const body = new Uint8Array(await res.arrayBuffer());
  const header = JSON.parse(new TextDecoder().decode(body.subarray(0, Number(res.headers.get(HEADER_LENGTH)))));
  const [out] = decodeInferResponse(body, res.headers.get(HEADER_LENGTH));
  return { status: 200, version: header.model_version as string, out };
}

/** POST /v2/repository/index. */
const index = async (body: unknown = {}) => (await (await post("/v2/repository/index", body)).json()) as Record<string, any>[];
const stats = async (path: string) => (await json(await fetch(`${server.url}${path}`))).model_stats as Record<string, any>[];

describe("model repository: index, configuration, metadata", () => {
  test("the index lists every model, loaded or not, in Triton's shape", async () => {
    const res = await post("/v2/repository/index", {});
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual([
      { name: "broken", state: "UNAVAILABLE", reason: "not loaded" },
      { name: "identity", version: "1", state: "READY", reason: "" },
      { name: "identity", version: "2", state: "READY", reason: "" },
      { name: "yolov5", version: "1", state: "READY", reason: "" },
      { name: "yolov5n", state: "UNAVAILABLE", reason: "not loaded" },
    ]);
    expect((await index({ ready: true })).map((e) => e.name)).toEqual(["identity", "identity", "yolov5"]);
    // An empty body is a request with defaults, as in Triton; a wrong one is a 400 that names the field.
    expect((await post("/v2/repository/index")).status).toBe(200);
    const bad = await post("/v2/repository/index", { ready: "yes" });
    expect([bad.status, (await json(bad)).error]).toEqual([400, "repository index: ready: expected true or false"]);
  });

  test("GET .../config: the seed's config.pbtxt as Triton returns it", async () => {
    const expected = {
      name: "yolov5",
      platform: "onnxruntime_onnx",
      backend: "onnxruntime",
      runtime: "",
      version_policy: { latest: { num_versions: 1 } },
      max_batch_size: 32,
      input: [{ name: "images", data_type: "TYPE_FP32", format: "FORMAT_NONE", dims: [3, 640, 640], is_shape_tensor: false, allow_ragged_batch: false, optional: false, is_non_linear_format_io: false }],
      output: [{ name: "output0", data_type: "TYPE_FP32", dims: [25200, 85], label_filename: "labels.txt", is_shape_tensor: false, is_non_linear_format_io: false }],
      batch_input: [],
      batch_output: [],
      dynamic_batching: { preferred_batch_size: [4, 8, 16], max_queue_delay_microseconds: 5_000_000, preserve_ordering: false, priority_levels: 0, default_priority_level: 0, priority_queue_policy: {} },
      instance_group: [{ name: "yolov5_0", kind: "KIND_GPU", count: 4, gpus: [], secondary_devices: [], profile: [], passive: false, host_policy: "" }],
      default_model_filename: "model.onnx",
      cc_model_filenames: {},
      metric_tags: {},
      parameters: {},
      model_warmup: [],
    };
    for (const path of ["/v2/models/yolov5/config", "/v2/models/yolov5/versions/1/config"]) {
      const res = await fetch(`${server.url}${path}`);
      expect(res.status).toBe(200);
      expect(await res.json()).toEqual(expected);
    }
    const unknown = await fetch(`${server.url}/v2/models/resnet/config`);
    expect(unknown.status).toBe(404);
    expect((await json(unknown)).error).toBe('unknown model "resnet"; this server has identity (versions 1, 2), yolov5 (version 1)');
    expect(server.child.stderr()).toContain("yolov5 version 1: dynamic batching on (max batch 32, preferred 4/8/16, max queue delay 5000000 µs) over 4 instance(s)");
  });

  test("metadata: a -1 batch axis, class names from labels.txt", async () => {
    const meta = await json(await fetch(`${server.url}/v2/models/yolov5`));
    expect(meta).toMatchObject({
      name: "yolov5",
      versions: ["1"],
      platform: "onnxruntime_onnx",
      inputs: [{ name: "images", datatype: "FP32", shape: [-1, 3, 640, 640] }],
      outputs: [{ name: "output0", datatype: "FP32", shape: [-1, 25200, 85] }],
    });
    expect(JSON.parse(meta.parameters.class_names)).toEqual(labels);
  });
});

describe("dynamic batching and statistics", () => {
  test("under concurrent load only the preferred batch sizes run, and the stats count them as Triton does", async () => {
    const [before] = await stats("/v2/models/yolov5/stats");
    expect(before).toEqual({
      name: "yolov5",
      version: "1",
      last_inference: 0,
      inference_count: 0,
      execution_count: 0,
      inference_stats: Object.fromEntries(["success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss"].map((k) => [k, { count: 0, ns: 0 }])),
      batch_stats: [],
      memory_usage: [],
    });
    const t0 = Date.now();
    const total = 32;
    let next = 0;
    const outputs: Float32Array[] = [];
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next++ < total) {
          const r = await infer("/v2/models/yolov5/infer", bus.slice(), [1, 3, 640, 640]);
          expect(r.status).toBe(200);
          expect(r.out!.shape).toEqual([1, 25200, 85]);
          outputs.push(r.out!.data);
        }
      }),
    );
    // Batched with others, each request still gets exactly what onnxruntime computes for it alone.
    const session = await ort.InferenceSession.create(modelFile);
    const local = (await session.run({ images: new ort.Tensor("float32", bus, [1, 3, 640, 640]) })).output0.data as Float32Array;
    await session.release();
    for (const out of [outputs[0], outputs.at(-1)!]) {
      let maxDiff = 0;
      for (let i = 0; i < local.length; i++) maxDiff = Math.max(maxDiff, Math.abs(local[i] - out[i]));
      expect(maxDiff).toBeLessThan(1e-3);
    }

    const [s] = await stats("/v2/models/yolov5/stats");
    expect([s.name, s.version, s.inference_count]).toEqual(["yolov5", "1", total]);
    const is = s.inference_stats;
    for (const k of ["success", "queue", "compute_input", "compute_infer", "compute_output"]) expect(is[k].count).toBe(total);
    expect([is.fail.count, is.cache_hit.count]).toEqual([0, 0]);
    expect(is.success.ns).toBeGreaterThan(0);
    expect(is.compute_infer.ns).toBeGreaterThan(0);
    const sizes = s.batch_stats.map((b: any) => b.batch_size);
    expect(sizes.length).toBeGreaterThan(0);
    for (const size of sizes) expect([4, 8, 16]).toContain(size);
    let items = 0;
    let executions = 0;
    for (const b of s.batch_stats) {
      expect(Object.keys(b)).toEqual(["batch_size", "compute_input", "compute_infer", "compute_output"]);
      expect(b.compute_input.count).toBe(b.compute_infer.count);
      expect(b.compute_output.count).toBe(b.compute_infer.count);
      items += b.batch_size * b.compute_infer.count;
      executions += b.compute_infer.count;
    }
    expect(items).toBe(total);
    expect(s.execution_count).toBe(executions);
    expect(s.last_inference).toBeGreaterThanOrEqual(t0);
    expect(s.last_inference).toBeLessThanOrEqual(Date.now());
    // All models, all versions.
    expect((await stats("/v2/models/stats")).map((m) => `${m.name}/${m.version}`)).toEqual(["identity/1", "identity/2", "yolov5/1"]);
  });

  test("a failed request counts as fail; the metrics carry the model and version", async () => {
    const bad = await infer("/v2/models/yolov5/infer", new Float32Array(12), [1, 3, 2, 2]);
    expect(bad).toEqual({ status: 400, error: "input images has shape [-1,3,640,640] (a batch of 1..32), got [1,3,2,2]" });
    const [s] = await stats("/v2/models/yolov5/versions/1/stats");
    expect(s.inference_stats.fail.count).toBe(1);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toContain('framewire_serve_instances{model="yolov5",version="1"} 4');
    expect(metrics).toMatch(/framewire_serve_requests_total\{route="\/v2\/models\/:name\/infer",code="400",model="yolov5"\} 1/);
  });
});

describe("versions", () => {
  test("version_policy all serves every version; no version means the highest", async () => {
    const meta = await json(await fetch(`${server.url}/v2/models/identity`));
    expect(meta.versions).toEqual(["1", "2"]);
    const row = new Float32Array([1, 2, 3, 4]);
    const v1 = await infer("/v2/models/identity/versions/1/infer", row.slice(), [1, 4], "x", "y");
    expect([v1.version, [...v1.out!.data]]).toEqual(["1", [1, 2, 3, 4]]);
    const latest = await infer("/v2/models/identity/infer", row.slice(), [1, 4], "x", "y");
    expect(latest.version).toBe("2");
    expect((await stats("/v2/models/identity/stats")).map((s) => [s.version, s.inference_count])).toEqual([
      ["1", 1],
      ["2", 1],
    ]);
    expect((await stats("/v2/models/identity/versions/1/stats")).map((s) => s.version)).toEqual(["1"]);
    const missing = await infer("/v2/models/identity/versions/3/infer", row.slice(), [1, 4], "x", "y");
    expect(missing.status).toBe(404);
    expect(missing.error).toContain('model "identity" version 3 has no available version (no such version)');
  });

  test("a load request's config replaces config.pbtxt; a bad one leaves what serves untouched", async () => {
    const reload = await post("/v2/repository/models/identity/load", { parameters: { config: JSON.stringify({ max_batch_size: 2, version_policy: { specific: { versions: [2] } }, dynamic_batching: {} }) } });
    expect([reload.status, await reload.text()]).toEqual([200, ""]);
    expect((await json(await fetch(`${server.url}/v2/models/identity/config`))).max_batch_size).toBe(2);
    expect((await json(await fetch(`${server.url}/v2/models/identity`))).versions).toEqual(["2"]);
    expect((await index()).filter((e) => e.name === "identity")).toEqual([
      { name: "identity", version: "1", state: "UNAVAILABLE", reason: "unloaded" },
      { name: "identity", version: "2", state: "READY", reason: "" },
    ]);
    const three = await infer("/v2/models/identity/infer", new Float32Array(12), [3, 4], "x", "y");
    expect(three).toEqual({ status: 400, error: "input x has shape [-1,4] (a batch of 1..2), got [3,4]" });

    const bad = await post("/v2/repository/models/identity/load", { parameters: { config: '{"max_batch_size": "two"}' } });
    expect([bad.status, (await json(bad)).error]).toEqual([400, "the load request's config for identity: max_batch_size: expected a number"]);
    const unsupported = await post("/v2/repository/models/identity/load", { parameters: { "file:1/model.onnx": "AAAA" } });
    expect(unsupported.status).toBe(400);
    expect((await json(unsupported)).error).toContain("file: overrides are not supported");
    expect((await infer("/v2/models/identity/infer", new Float32Array(4), [1, 4], "x", "y")).version).toBe("2");

    // Loading again without a config reads config.pbtxt from disk.
    expect((await post("/v2/repository/models/identity/load")).status).toBe(200);
    expect((await json(await fetch(`${server.url}/v2/models/identity`))).versions).toEqual(["1", "2"]);
    expect((await json(await fetch(`${server.url}/v2/models/identity/config`))).max_batch_size).toBe(8);
  });
});

describe("load and unload", () => {
  test("a second model loads and unloads while the first serves traffic; unloading ends its threads", async () => {
    let ok = 0;
    let failed = 0;
    let stop = false;
    const traffic = Promise.all(
      Array.from({ length: 4 }, async () => {
        while (!stop) {
          const r = await infer("/v2/models/yolov5/infer", bus.slice(), [1, 3, 640, 640]);
          if (r.status === 200) ok++;
          else failed++;
        }
      }),
    );
    await until(() => ok >= 8, "traffic on yolov5", 60_000);
    const [{ inference_count: servedBefore }] = await stats("/v2/models/yolov5/stats");
    const pid = server.child.pid;
    const start = await processUsage(pid);

    const load = await post("/v2/repository/models/yolov5n/load", {});
    expect([load.status, await load.text()]).toEqual([200, ""]);
    // The log line reaches us through the child's stderr pipe, possibly after the response.
    await until(() => server.child.stderr().includes('yolov5n version 1: warm-up "zeros" (batch 1, zeros) 1× on 1 instance(s)'), "the warm-up log line");
    expect((await index({ ready: true })).map((e) => e.name)).toContain("yolov5n");
    // Warm-up runs are not inferences.
    expect((await stats("/v2/models/yolov5n/stats"))[0].inference_count).toBe(0);
    const one = await infer("/v2/models/yolov5n/infer", bus.slice(), [1, 3, 640, 640]);
    expect([one.status, one.version, one.out?.shape]).toEqual([200, "1", [1, 25200, 85]]);
    const loaded = await processUsage(pid);
    expect(loaded.threads).toBeGreaterThan(start.threads);

    const unload = await post("/v2/repository/models/yolov5n/unload", { parameters: { unload_dependents: false } });
    expect([unload.status, await unload.text()]).toEqual([200, ""]);
    // The log line reaches us through the child's stderr pipe, possibly after the response.
    await until(() => server.child.stderr().includes("yolov5n version 1: unloaded (1 instance(s) released)"), "the unload log line");
    // The instance's thread (and onnxruntime's threads in it) end once its session is released.
    let after = await processUsage(pid);
    for (const end = performance.now() + 30_000; after.threads >= loaded.threads && performance.now() < end; ) {
      await sleep(20);
      after = await processUsage(pid);
    }
    expect(after.threads).toBeLessThan(loaded.threads);

    const gone = await infer("/v2/models/yolov5n/infer", bus.slice(), [1, 3, 640, 640]);
    expect(gone.status).toBe(404);
    expect(gone.error).toContain('model "yolov5n" has no available version (UNAVAILABLE: unloaded)');
    expect((await fetch(`${server.url}/v2/models/yolov5n/ready`)).status).toBe(503);
    expect((await index()).find((e) => e.name === "yolov5n")).toEqual({ name: "yolov5n", version: "1", state: "UNAVAILABLE", reason: "unloaded" });

    stop = true;
    await traffic;
    expect(failed).toBe(0);
    const [{ inference_count: servedAfter }] = await stats("/v2/models/yolov5/stats");
    expect(servedAfter).toBeGreaterThan(servedBefore);
  });

  test("unloading gives the model's memory back", async () => {
    // A server of its own, with no traffic whose buffers would blur resident memory: the seed's model, 4 instances.
    const d = await tempDir();
    const quiet = await (async () => {
      await writeRepository(d.path, { yolov5: { config: seedConfig(), versions: { "1": batchModelFile }, files: { "labels.txt": labels.join("\n") } } });
      return startServe(["--model-repository", d.path, "--model-control-mode", "explicit"]);
    })();
    try {
      const pid = quiet.child.pid;
      const before = await processUsage(pid);
      expect((await fetch(`${quiet.url}/v2/repository/models/yolov5/load`, { method: "POST" })).status).toBe(200);
      const loaded = await processUsage(pid);
      expect((await fetch(`${quiet.url}/v2/repository/models/yolov5/unload`, { method: "POST" })).status).toBe(200);
      let after = await processUsage(pid);
      // The instance threads end first; their memory goes back as the workers tear down: wait for both.
      // glibc keeps part of freed arenas mapped, so not all of it shows in RSS: a third back is the bar (measured 46-50% here).
      const released = () => after.threads < loaded.threads && loaded.rss - after.rss > (loaded.rss - before.rss) / 3;
      for (const end = performance.now() + 30_000; !released() && performance.now() < end; ) {
        await sleep(20);
        after = await processUsage(pid);
      }
      // Four sessions with their warm-up arenas: hundreds of MB that the release gives back.
      expect(loaded.rss - before.rss).toBeGreaterThan(100 << 20);
      expect(loaded.rss - after.rss).toBeGreaterThan((loaded.rss - before.rss) / 3);
      expect(after.threads).toBeLessThan(loaded.threads);
    } finally {
      await quiet.stop();
      await d.remove();
    }
  });

  test("a model with a bad config.pbtxt fails to load with file:line, and the index says why", async () => {
    const res = await post("/v2/repository/models/broken/load");
    expect(res.status).toBe(400);
    const error = (await json(res)).error as string;
    expect(error).toStartWith(`${join(repo, "broken", "config.pbtxt")}:2:26: input[0].dims: [3, 640] has 2 dims; the model's input images is [-1, 3, 640, 640]`);
    const entry = (await index()).find((e) => e.name === "broken");
    expect(entry).toEqual({ name: "broken", version: "1", state: "UNAVAILABLE", reason: error });
    const unknown = await post("/v2/repository/models/resnet/load");
    expect([unknown.status, (await json(unknown)).error]).toEqual([400, `no model "resnet" in model repository ${repo} (it has broken, identity, yolov5, yolov5n)`]);
    expect((await post("/v2/repository/models/resnet/unload")).status).toBe(404);
  });
});

describe("repositories that cannot be served are refused at start", () => {
  /** Starts a server on a fresh repository and returns its exit code and stderr. */
  async function refused(models: Parameters<typeof writeRepository>[1], extra: string[] = []) {
    const d = await tempDir();
    try {
      await writeRepository(d.path, models);
      const child = startProcess(["bun", join(repoRoot, "runtime/cli.ts"), "serve", "--model-repository", d.path, "--port", "0", ...extra]);
      return { code: await child.exited, stderr: child.stderr(), root: d.path };
    } finally {
      await d.remove();
    }
  }

  test("a syntax error and an unknown field name their file:line", async () => {
    const syntax = await refused({ m: { config: 'name: "m"\nmax_batch_size 8\n', versions: { "1": modelFile } } });
    expect(syntax.code).toBe(2);
    expect(syntax.stderr).toContain(`error: ${join(syntax.root, "m", "config.pbtxt")}:2:16: expected ":" or "{" after max_batch_size, found "8"`);
    const field = await refused({ m: { config: "max_batch_sise: 0\n", versions: { "1": modelFile } } });
    expect(field.stderr).toContain(`error: ${join(field.root, "m", "config.pbtxt")}:1:1: max_batch_sise: unknown field (did you mean max_batch_size?); the fields here are name, platform, backend,`);
  });

  test("a tensorrt_plan model says this server runs ONNX and names the alternative", async () => {
    const plan = new Uint8Array([0x66, 0x74, 0x72, 0x74]);
    const seed = await refused({ yolov5: { config: seedConfig().replace('platform: "onnxruntime_onnx"', 'platform: "tensorrt_plan"'), files: { "1/model.plan": plan, "labels.txt": "person\n" } } });
    expect(seed.code).toBe(2);
    expect(seed.stderr).toContain(`error: ${join(seed.root, "yolov5", "config.pbtxt")}:2:1: platform: "tensorrt_plan": this server runs ONNX models with onnxruntime, not TensorRT plans. Export the model to ONNX`);
    const bare = await refused({ yolov5: { files: { "1/model.plan": plan } } });
    expect(bare.code).toBe(2);
    expect(bare.stderr).toContain(`error: ${join(bare.root, "yolov5", "1", "model.plan")} is a TensorRT plan: this server runs ONNX models with onnxruntime`);
  });

  test("dims that disagree with the model, an unknown --load-model, poll mode", async () => {
    const dims = await refused({ m: { config: 'max_batch_size: 0\ninput [ { name: "images" dims: [ 1, 3, 320, 320 ] } ]\n', versions: { "1": modelFile } } });
    expect(dims.code).toBe(2);
    const cfg = join(dims.root, "m", "config.pbtxt");
    expect(dims.stderr).toContain(
      `error: ${cfg}:2:40: input[0].dims[2]: is 320, but the model's input images is [1, 3, 640, 640]\n${cfg}:2:45: input[0].dims[3]: is 320, but the model's input images is [1, 3, 640, 640]`,
    );
    const unknown = await refused({ m: { versions: { "1": modelFile } } }, ["--model-control-mode", "explicit", "--load-model", "resnet"]);
    expect(unknown.stderr).toContain("error: --load-model resnet: no such model in model repository");
    const poll = await refused({}, ["--model-control-mode", "poll"]);
    expect(poll.stderr).toContain("error: --model-control-mode: poll is not supported: use explicit");
  });
});
