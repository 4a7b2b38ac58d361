/**
 * Model lifecycle on a running pipeline: hot reload by HTTP request and by
 * file change with no frame dropped or failed, a canary's share of frames,
 * promotion, rollback of a model that fails on real frames, and refused
 * loads that leave the running version alone.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { copyFile, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { modelVersion } from "../runtime/inference/onnx-model.ts";
import type { LifecycleEvent, ModelLifecycle, ModelStatus } from "../runtime/inference/model-lifecycle.ts";
import type { PipelineSummary } from "../runtime/core/stats.ts";
import { crashingModel, scaledModel, smallInputModel, startTinyRun, writeModel, type TinyRun } from "./lifecycle-support.ts";
import { parsePrometheus } from "./support/http.ts";
import { tempDir } from "./support/paths.ts";
import { until } from "./support/wait.ts";

setDefaultTimeout(60_000);

let dir: Awaited<ReturnType<typeof tempDir>>;
let v1: string;
let v1Version: string;

beforeAll(async () => {
  dir = await tempDir();
  v1 = join(dir.path, "v1.onnx");
  await writeFile(v1, scaledModel(1));
  v1Version = await modelVersion(v1);
});
afterAll(async () => {
  await dir.remove();
});

const models = (run: TinyRun): ModelStatus => run.status().models[0];

/** Every frame the source emitted reached the sink; no stage dropped or failed one. */
function expectLossless(summary: PipelineSummary, run: TinyRun): void {
  for (const s of summary.stages) {
    expect({ stage: s.stage, dropped: s.dropped, failed: s.failed }).toEqual({ stage: s.stage, dropped: 0, failed: 0 });
  }
  const emitted = summary.stages.find((s) => s.stage === "cam")!.sent;
  const frames = run.received().filter((m) => m.kind === "frame");
  expect(frames.length).toBe(emitted);
  expect(new Set(frames.map((f) => f.seq)).size).toBe(emitted);
}

interface LogLine {
  seq: number;
  version: string;
}

async function logLines(path: string): Promise<LogLine[]> {
  return (await readFile(path, "utf8")).trim().split("\n").map((l) => JSON.parse(l) as LogLine);
}

describe("hot reload", () => {
  test("a reload request mid-stream swaps versions between frames: none dropped or failed", async () => {
    const log = join(dir.path, "reload.jsonl");
    const run = await startTinyRun({ model: v1, inferenceLog: { path: log } });
    await until(() => run.received().length >= 60, "60 frames on v1");
    const v2 = join(dir.path, "v2.onnx");
    await writeFile(v2, scaledModel(0.9));
    const res = await run.post("/api/models/detect/reload", { model: v2 });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { outcome: string; version: string };
    expect(body).toMatchObject({ outcome: "swapped", version: await modelVersion(v2) });
    await until(() => models(run).active.inferences >= 60, "60 frames on v2");
    const summary = await run.stop();
    expectLossless(summary, run);

    // One version per frame, v1 up to the swap and v2 after it, never back.
    const lines = await logLines(log);
    expect(lines.map((l) => l.seq)).toEqual(lines.map((_, i) => i));
    const firstV2 = lines.findIndex((l) => l.version === body.version);
    expect(firstV2).toBeGreaterThanOrEqual(60);
    expect(lines.slice(0, firstV2).every((l) => l.version === v1Version)).toBe(true);
    expect(lines.slice(firstV2).every((l) => l.version === body.version)).toBe(true);
    expect(run.log.text()).toContain(`version ${body.version} (v2.onnx) active, replaces ${v1Version}`);
  });

  test("a new file in place of the watched model is picked up mid-stream: none dropped or failed", async () => {
    const file = join(dir.path, "watched.onnx");
    await copyFile(v1, file);
    const run = await startTinyRun({ model: file, watch: true });
    expect(models(run).watching).toBe(file);
    await until(() => run.received().length >= 40, "40 frames on v1");
    const next = scaledModel(0.8);
    await writeModel(file, next);
    const nextVersion = await modelVersion(next);
    await until(() => models(run).active.version === nextVersion, "the watcher to swap in the new file", 15_000);
    await until(() => models(run).active.inferences >= 40, "40 frames on the new version");
    const status = models(run);
    expect(status.swaps).toBe(1);
    expect(status.events.map((e) => e.kind)).toContain("swapped");
    expectLossless(await run.stop(), run);
  });

  test("loads that fail leave the running version alone: 422 and an event", async () => {
    const run = await startTinyRun({ model: v1 });
    await until(() => run.received().length >= 10, "first frames");
    const corrupt = join(dir.path, "corrupt.onnx");
    await writeFile(corrupt, new Uint8Array(4096).fill(7));
    const bad = await run.post("/api/models/detect/reload", { model: corrupt });
    expect(bad.status).toBe(422);
    expect(((await bad.json()) as { error: string }).error).toContain("corrupt.onnx");

    const small = join(dir.path, "small.onnx");
    await writeFile(small, smallInputModel());
    const misfit = await run.post("/api/models/detect/reload", { model: small });
    expect(misfit.status).toBe(422);
    expect(((await misfit.json()) as { error: string }).error).toMatch(/expects input \[1x3x16x16\] but the frames are \[1x3x32x32\]/);

    const same = await run.post("/api/models/detect/reload", {});
    expect(await same.json()).toMatchObject({ outcome: "unchanged", version: v1Version });

    const status = models(run);
    expect(status.active.version).toBe(v1Version);
    expect(status.events.filter((e) => e.kind === "load-failed")).toHaveLength(2);
    expectLossless(await run.stop(), run);
  });
});

describe("canary", () => {
  test("gets its configured share of frames", async () => {
    const run = await startTinyRun({ model: v1, canary: { share: 0.25, frames: 100_000 } });
    await until(() => run.received().length >= 10, "first frames");
    const v2 = join(dir.path, "canary.onnx");
    await writeFile(v2, scaledModel(0.7));
    const res = await run.post("/api/models/detect/reload", { model: v2 });
    expect(await res.json()).toMatchObject({ outcome: "canary", version: await modelVersion(v2) });
    const before = models(run).active.inferences;
    await until(() => (models(run).canary?.inferences ?? 0) >= 100, "100 canary frames");
    const s = models(run);
    const summary = await run.stop();
    const canary = s.canary!.inferences;
    const active = s.active.inferences - before;
    expect(Math.abs(canary / (canary + active) - 0.25)).toBeLessThan(0.02);
    expectLossless(summary, run);
  });

  test("is promoted after its trial when it does no worse", async () => {
    const run = await startTinyRun({ model: v1, canary: { share: 0.5, frames: 40 } });
    await until(() => run.received().length >= 10, "first frames");
    const v2 = join(dir.path, "promoted.onnx");
    await writeFile(v2, scaledModel(0.95));
    const version = await modelVersion(v2);
    await run.post("/api/models/detect/reload", { model: v2 });
    await until(() => models(run).active.version === version, "promotion");
    const s = models(run);
    expect(s.canary).toBeNull();
    expect(s.promotions).toBe(1);
    expect(s.events.at(-1)).toMatchObject({ kind: "promoted", version });
    expect(s.events.at(-1)!.reason).toMatch(/^40 canary inferences, 0 failed; latency .* ms, confidence [\d.]+ vs [\d.]+$/);
    expectLossless(await run.stop(), run);
  });

  test("that fails on real frames is rolled back; its frames rerun on the active version", async () => {
    const run = await startTinyRun({ model: v1, canary: { share: 0.5, frames: 100, maxErrorRate: 0.05 } });
    await until(() => run.received().length >= 10, "first frames");
    // Listeners (a fleet rollout's worker) hear each event as it happens.
    const life = run.exec.live().find((x) => x.id === "detect")!.instance.models as ModelLifecycle<unknown>;
    const heard: LifecycleEvent[] = [];
    const off = life.onEvent((e) => heard.push(e));
    const broken = join(dir.path, "broken.onnx");
    await writeFile(broken, crashingModel());
    const res = await run.post("/api/models/detect/reload", { model: broken });
    expect(res.status).toBe(200);
    await until(() => models(run).rollbacks === 1, "the rollback");
    off();
    const s = models(run);
    expect(heard.map((e) => e.kind)).toEqual(["canary", "rolled-back"]);
    expect(heard[1]).toEqual(s.events.at(-1)!);
    expect(s.active.version).toBe(v1Version);
    expect(s.canary).toBeNull();
    expect(s.events.at(-1)).toMatchObject({ kind: "rolled-back", version: await modelVersion(broken) });
    expect(s.events.at(-1)!.reason).toBe("6 of 6 canary inferences failed; at most 5 of 100 allowed");
    const metrics = parsePrometheus(await (await fetch(`${run.http.url}/metrics`)).text());
    expect(metrics.value("framewire_model_rollbacks_total", { stage: "detect" })).toBe(1);
    expect(metrics.value("framewire_model_info", { stage: "detect", role: "active" })).toBe(1);
    expect(metrics.find("framewire_model_info", { role: "canary" })).toHaveLength(0);
    expect(metrics.value("framewire_model_canary_share", { stage: "detect" })).toBe(0);
    expectLossless(await run.stop(), run);
  });

  test("can be promoted or rolled back by request; without a canary that is a conflict", async () => {
    const run = await startTinyRun({ model: v1 });
    await until(() => run.received().length >= 5, "first frames");
    expect((await run.post("/api/models/detect/promote")).status).toBe(409);
    const v2 = join(dir.path, "manual.onnx");
    await writeFile(v2, scaledModel(0.6));
    expect(await (await run.post("/api/models/detect/reload", { model: v2, canary: 0.5 })).json()).toMatchObject({ outcome: "canary" });
    const rolled = await run.post("/api/models/detect/rollback");
    expect(await rolled.json()).toMatchObject({ outcome: "rolled-back", version: await modelVersion(v2) });
    expect(await (await run.post("/api/models/detect/reload", { model: v2, canary: 0.5 })).json()).toMatchObject({ outcome: "canary" });
    const promoted = await run.post("/api/models/detect/promote");
    expect(await promoted.json()).toMatchObject({ outcome: "promoted", version: await modelVersion(v2) });
    expect(models(run).active.version).toBe(await modelVersion(v2));
    expectLossless(await run.stop(), run);
  });
});
