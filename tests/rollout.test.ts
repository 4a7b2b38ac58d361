/**
 * Fleet model rollout on a real nats-server with JetStream: `bun run models
 * put` reaches two inference worker processes of one stage, each swaps
 * between frames (none dropped or failed) and reports the version it runs;
 * a rollback returns both; a version that fails its canary is rolled back on
 * the workers and shown by `models ls`; a worker started after the put
 * starts on it (from its cache); a wanted version whose sha256 does not
 * match its object is refused. Real onnxruntime with yolov5n.onnx and
 * yolov5n-int8.onnx.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import type { KV } from "@nats-io/kv";
import { openRolloutKv, readRollout, readWanted, writeWanted, type WorkerReport } from "../runtime/bus/model-store.ts";
import { modelVersion } from "../runtime/inference/onnx-model.ts";
import { crashingModel } from "./lifecycle-support.ts";
import { disposeAllNatsServers, startJetStreamServer, type NatsServer } from "./support/jetstream.ts";
import { repoRoot, tempDir } from "./support/paths.ts";
import { freePort } from "./support/ports.ts";
import { startProcess, type Child } from "./support/process.ts";
import { sleep, until } from "./support/wait.ts";

const CLIP = join(repoRoot, "pipelines/media/vtest.mp4");
const FP32 = join(repoRoot, "models/yolov5n.onnx");
const INT8 = join(repoRoot, "models/yolov5n-int8.onnx");

/** Camera side in one process, `detect` (and nms) in worker processes; canary trials of 6 frames that tolerate no failure. */
const PIPELINE = (out: string) => `
name: fleet
stages:
  - id: cam
    use: ingest
    with: { url: "${CLIP}", width: 320, height: 240, loop: true }
  - id: prep
    use: resize
    with: { width: 640, height: 640, mode: letterbox }
  - id: detect
    use: infer-onnx
    with:
      model: yolov5n.onnx
      threads: 1
      canary: { share: 0.5, frames: 6, maxErrorRate: 0 }
      rollout: { cache: "\${CACHE:-out/model-cache/fleet}" }
      inferenceLog: { path: "\${LOG:-out/fleet-inference.jsonl}" }
  - id: nms
    use: nms
    with: { conf: 0.25, iou: 0.45 }
  - id: results
    use: sink-jsonl
    with: { path: "${out}", flushInterval: 0.05 }
`;

let dir: { path: string; remove(): Promise<void> };
let server: NatsServer;
let nc: NatsConnection;
let kv: KV;
let file: string;
let out: string;
let edge: Child;
const workers: { child: Child; log: string; cache: string }[] = [];
const children: Child[] = [];
let fp32: string;
let int8: string;

function framewire(args: string[], env: Record<string, string> = {}): Child {
  const child = startProcess(["bun", "runtime/cli.ts", ...args], { cwd: repoRoot, env: { FRAMEWIRE_LOG: "info", ...env } });
  children.push(child);
  return child;
}

function startWorker(name: string, cache = join(dir.path, `cache-${name}`)) {
  const log = join(dir.path, `${name}-inference.jsonl`);
  // nms with detect, as the docs suggest: one hop fewer per frame.
  const child = framewire(["run", file, "--nats", server.url, "--stages", "detect,nms", "--json"], { CACHE: cache, LOG: log });
  const w = { child, log, cache };
  workers.push(w);
  return w;
}

/** `bun run models ...` against the test server: exit code and output. */
async function models(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = framewire(["models", ...args]);
  const code = await child.exited;
  return { code, stdout: child.stdout(), stderr: child.stderr() };
}
const fleet = ["--nats", "", "--pipeline", "fleet"];

/** Versions (model hashes) of the inference log's lines, in order. */
function versions(log: string): string[] {
  let text = "";
  try {
    text = readFileSync(log, "utf8");
  } catch {
    return [];
  }
  return text.split("\n").filter(Boolean).map((l) => (JSON.parse(l) as { version: string }).version);
}

async function reports(): Promise<WorkerReport[]> {
  return (await readRollout(kv)).find((s) => s.stage === "detect")?.workers ?? [];
}

/** Waits until the worker processes `of` have each reported and `ok` holds for every report. */
async function reported(of: Child[], ok: (r: WorkerReport) => boolean, what: string): Promise<WorkerReport[]> {
  let last: WorkerReport[] = [];
  const end = performance.now() + 60_000;
  for (;;) {
    last = (await reports()).filter((r) => of.some((c) => c.pid === r.pid));
    if (last.length === of.length && last.every(ok)) return last;
    if (performance.now() > end) throw new Error(`gave up waiting for ${what}: ${JSON.stringify(last)}`);
    await sleep(100);
  }
}

/** Waits until the last `n` lines of a worker's inference log ran on `version`. */
async function runsOn(w: { log: string }, version: string, n = 4): Promise<void> {
  await until(() => {
    const vs = versions(w.log);
    return vs.length >= n && vs.slice(-n).every((x) => x === version);
  }, `${n} inferences on ${version} in ${w.log}`, 60_000);
}

beforeAll(async () => {
  dir = await tempDir("framewire-rollout-");
  server = await startJetStreamServer();
  fleet[1] = server.url;
  nc = await connect({ servers: server.url });
  kv = await openRolloutKv(nc, "fleet");
  fp32 = await modelVersion(FP32);
  int8 = await modelVersion(INT8);
  out = join(dir.path, "results.jsonl");
  file = join(dir.path, "fleet.yaml");
  await writeFile(file, PIPELINE(out));
  const a = startWorker("a");
  const b = startWorker("b");
  await reported([a.child, b.child], (r) => r.state === "ok" && r.version === null, "both workers on the pipeline file's model");
  edge = framewire(["run", file, "--nats", server.url, "--stages", "cam,prep,results", "--json"]);
  await runsOn(a, fp32);
  await runsOn(b, fp32);
}, 90_000);

afterAll(async () => {
  await Promise.all(children.map((c) => c.stop(2000)));
  await nc?.close();
  await disposeAllNatsServers();
  await dir.remove();
});

describe("bun run models", () => {
  test("put: both workers fetch the version, try it as a canary and swap to it between frames", async () => {
    const [a, b] = workers;
    const res = await models("put", INT8, ...fleet, "--stage", "detect", "--version", "int8", "--wait", "60");
    expect(res.stderr).toBe("");
    expect(res.code).toBe(0);
    expect(res.stdout).toContain("stage detect of fleet: version int8 wanted (yolov5n-int8.onnx");
    const rs = await reported([a.child, b.child], (r) => r.version === "int8", "both on int8");
    for (const r of rs) expect(r).toMatchObject({ state: "ok", version: "int8", wanted: "int8", model: "yolov5n-int8.onnx" });
    for (const w of [a, b]) {
      await runsOn(w, int8);
      const vs = versions(w.log);
      // Frames before the put ran on fp32, after it on int8 (both during the canary's trial).
      expect(vs[0]).toBe(fp32);
      expect(vs.filter((x) => x === int8).length).toBeGreaterThanOrEqual(4);
      expect(new Set(vs)).toEqual(new Set([fp32, int8]));
      // Log lines come through the child's stderr pipe, which may lag behind its report over NATS.
      await until(() => w.child.stderr().includes(`version ${int8} promoted, replaces ${fp32}`), "the promotion log line");
      expect(w.child.stderr()).toMatch(/version int8: fetched yolov5n-int8\.onnx \(\d+ bytes, sha256 [0-9a-f]{12}…\)/);
    }
    // `bun run status` shows the version each worker of the stage runs.
    const status = framewire(["status", "--nats", server.url, "--wait", "5"]);
    expect(await status.exited).toBe(0);
    const rows = status.stdout().split("\n").filter((l) => /^fleet\s+detect\s/.test(l));
    expect(rows).toHaveLength(2);
    for (const row of rows) expect(row).toContain(`yolov5n-int8.onnx ${int8} (rollout int8)`);
  }, 120_000);

  test("rollback: both workers return to the previous version (the pipeline file's), directly", async () => {
    const [a, b] = workers;
    const res = await models("rollback", ...fleet, "--stage", "detect", "--wait", "60");
    expect(res.code).toBe(0);
    expect(res.stdout).toContain("stage detect of fleet: back to the pipeline file's model from int8");
    const rs = await reported([a.child, b.child], (r) => r.version === null && r.state === "ok", "both back on fp32");
    for (const r of rs) expect(r).toMatchObject({ model: "yolov5n.onnx", wanted: null });
    for (const w of [a, b]) {
      await runsOn(w, fp32);
      expect(w.child.stderr()).toMatch(new RegExp(`version ${fp32} \\(yolov5n\\.onnx\\) active, replaces ${int8}`));
    }
    // Nothing older to go back to now.
    const again = await models("rollback", ...fleet, "--stage", "detect");
    expect(again.code).toBe(2);
    expect(again.stderr.trim()).toBe("error: stage detect of fleet runs the pipeline file's model: nothing to roll back to");
  }, 120_000);

  test("a version that fails its canary on real frames is rolled back on every worker and reported by ls", async () => {
    const [a, b] = workers;
    const bad = join(dir.path, "crashing.onnx");
    await writeFile(bad, crashingModel(640));
    const res = await models("put", bad, ...fleet, "--stage", "detect", "--version", "crash", "--wait", "60");
    expect(res.code).toBe(1);
    expect(res.stdout).toMatch(/: rolled-back \(runs the pipeline file's model\): 1 of 1 canary inferences failed/);
    const rs = await reported([a.child, b.child], (r) => r.state === "rolled-back", "both rolled back");
    for (const r of rs) {
      expect(r).toMatchObject({ version: null, wanted: "crash", model: "yolov5n.onnx" });
      expect(r.error).toBe("1 of 1 canary inferences failed; at most 0 of 6 allowed");
    }
    const ls = await models("ls", ...fleet);
    expect(ls.code).toBe(0);
    expect(ls.stdout).toContain("stage detect: wanted crash (crashing.onnx, sha256 ");
    const rows = ls.stdout.split("\n").filter((l) => l.includes("rolled-back"));
    expect(rows).toHaveLength(2);
    for (const row of rows) expect(row).toContain("(pipeline file)  yolov5n.onnx  rolled-back  crash");
    const json = JSON.parse((await models("ls", ...fleet, "--json")).stdout) as { stage: string; workers: WorkerReport[] }[];
    expect(json.find((s) => s.stage === "detect")!.workers.map((w) => w.state)).toEqual(["rolled-back", "rolled-back"]);
    for (const w of [a, b]) await runsOn(w, fp32);
  }, 120_000);

  test("a worker started after a put starts on the put version, from its cache without refetching", async () => {
    const [a, b] = workers;
    const res = await models("put", INT8, ...fleet, "--stage", "detect", "--version", "int8", "--wait", "60");
    expect(res.code).toBe(0);
    await reported([a.child, b.child], (r) => r.version === "int8" && r.state === "ok", "both on int8 again");
    // Worker a fetched int8 earlier: its cache has it, so the late worker, sharing it, needs no fetch.
    const late = startWorker("late", a.cache);
    const [r] = await reported([late.child], (x) => x.state === "ok", "the late worker");
    expect(r).toMatchObject({ version: "int8", model: "yolov5n-int8.onnx" });
    await runsOn(late, int8);
    expect(new Set(versions(late.log))).toEqual(new Set([int8]));
    expect(late.child.stderr()).toMatch(/version int8: \S+yolov5n-int8\.onnx from the local cache/);
    expect(late.child.stderr()).toContain("starting on rolled-out version int8 (yolov5n-int8.onnx)");
    expect(late.child.stderr()).not.toContain("fetched");
  }, 120_000);

  test("a wanted version whose sha256 does not match its object is refused; the workers keep running theirs", async () => {
    const wanted = (await readWanted(kv, "detect"))!;
    expect(wanted.version).toBe("int8");
    const forged = "0".repeat(64);
    await writeWanted(kv, "detect", { ...wanted, version: "forged", sha256: forged, previous: [] });
    const rs = await reported(workers.map((w) => w.child), (r) => r.state === "failed", "every worker refusing");
    for (const r of rs) {
      expect(r).toMatchObject({ version: "int8", wanted: "forged", model: "yolov5n-int8.onnx" });
      expect(r.error).toBe(`sha256 mismatch for version forged: wanted ${forged}, ${wanted.object} holds ${wanted.sha256}; refused`);
    }
    for (const w of workers) await runsOn(w, int8);
  }, 120_000);

  test("rollback to an earlier rolled-out version swaps to it directly; versions no worker ran are skipped", async () => {
    // "forged" never ran anywhere: putting int8 again keeps nothing of it, and the workers already run int8.
    const again = await models("put", INT8, ...fleet, "--stage", "detect", "--version", "int8", "--wait", "60");
    expect(again.code).toBe(0);
    expect((await readWanted(kv, "detect"))!.previous).toEqual([]);
    const copy = join(dir.path, "fp32-copy.onnx");
    await writeFile(copy, readFileSync(FP32));
    const put = await models("put", copy, ...fleet, "--stage", "detect", "--version", "fp32", "--wait", "90");
    expect(put.code).toBe(0);
    expect((await readWanted(kv, "detect"))!.previous.map((p) => p.version)).toEqual(["int8"]);
    const back = await models("rollback", ...fleet, "--stage", "detect", "--wait", "60");
    expect(back.code).toBe(0);
    expect(back.stdout).toContain("stage detect of fleet: back to version int8 (yolov5n-int8.onnx) from fp32");
    const rs = await reported(workers.map((w) => w.child), (r) => r.version === "int8" && r.state === "ok", "every worker back on int8");
    expect(rs).toHaveLength(3);
    for (const w of workers) {
      await runsOn(w, int8);
      // Straight back, no trial: the swap message, and int8 was never a canary again after fp32's promotion.
      const err = w.child.stderr();
      expect(err).toContain(`version ${int8} (yolov5n-int8.onnx) active, replaces ${fp32}`);
      expect(err.slice(err.lastIndexOf(`version ${fp32} promoted`))).not.toContain(`canary ${int8}`);
    }
  }, 180_000);

  test("refusals are one line naming the fix", async () => {
    const text = join(dir.path, "notes.onnx");
    await writeFile(text, "not a model\n");
    const notOnnx = await models("put", text, ...fleet, "--stage", "detect");
    expect([notOnnx.code, notOnnx.stderr.trim()]).toEqual([2, `error: ${text} is not an ONNX model (no ModelProto with a graph): give an .onnx file`]);
    const stage = await models("put", INT8, ...fleet, "--stage", "detekt");
    expect([stage.code, stage.stderr.trim()]).toEqual([2, `error: unknown stage "detekt" of pipeline fleet: its infer-onnx stages on ${server.url} are detect; fix --stage`]);
    const port = await freePort();
    const none = await models("ls", "--nats", `nats://127.0.0.1:${port}`, "--pipeline", "fleet");
    expect([none.code, none.stderr.trim()]).toEqual([2, `error: no NATS server answers at nats://127.0.0.1:${port}: start nats-server -js, or fix --nats`]);
    const plain = await startJetStreamServer({ jetstream: false });
    const noJs = await models("ls", "--nats", plain.url, "--pipeline", "fleet");
    expect(noJs.code).toBe(2);
    expect(noJs.stderr.trim()).toBe(`error: ${plain.url}: the NATS server has no JetStream: start nats-server with -js (or a jetstream {} block in its config)`);
    await plain.dispose();
  }, 120_000);

  test("over all of it no frame was dropped or failed, and every frame reached the sink", async () => {
    edge.signal("SIGTERM");
    const codes: number[] = await Promise.all([edge.exited, ...workers.map((w) => w.child.exited)]);
    expect(codes).toEqual([0, ...workers.map(() => 0)]);
    const summary = (c: Child) => JSON.parse(c.stdout().trim().split("\n").at(-1)!) as { stages: { stage: string; received: number; sent: number; dropped: number; failed: number }[] };
    const detect = workers.map((w) => summary(w.child).stages.find((s) => s.stage === "detect")!);
    for (const w of workers) {
      for (const s of summary(w.child).stages) expect({ stage: s.stage, dropped: s.dropped, failed: s.failed }).toEqual({ stage: s.stage, dropped: 0, failed: 0 });
    }
    const e = summary(edge);
    for (const s of e.stages) expect({ stage: s.stage, dropped: s.dropped, failed: s.failed }).toEqual({ stage: s.stage, dropped: 0, failed: 0 });
    const sent = e.stages.find((s) => s.stage === "cam")!.sent;
    const seqs = readFileSync(out, "utf8").split("\n").filter(Boolean).map((l) => (JSON.parse(l) as { seq: number }).seq);
    expect(seqs.length).toBe(sent);
    expect(new Set(seqs).size).toBe(sent);
    expect(detect.reduce((n, s) => n + s.sent, 0)).toBe(sent);
    // Stopped workers take their reports with them.
    expect(await reports()).toEqual([]);
  }, 120_000);
});
