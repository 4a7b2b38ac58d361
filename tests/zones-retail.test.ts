/** pipelines/retail.yaml on the shipped clip: real ffmpeg, real model, outputs redirected to a temp dir. */
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Executor } from "../runtime/engine/executor.ts";
import { loadPipeline } from "../runtime/spec/loader.ts";
import { createLogger } from "../runtime/core/log.ts";
import { MemoryBus } from "../runtime/bus/memory.ts";
import { pipelinesDir } from "../runtime/platform/paths.ts";
import { loadRegistry } from "../runtime/spec/registry.ts";

const tmp = mkdtempSync(join(tmpdir(), "fw-retail-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

test("retail.yaml tracks people and emits zone events on the sample clip", async () => {
  // One camera from the environment's list (the shipped clip), whatever CAMERAS the caller has.
  const env: Record<string, string> = { CAMERAS: "cam=pipelines/media/vtest.mp4" };
  const spec = await loadPipeline(join(pipelinesDir, "retail.yaml"), await loadRegistry(), (k) => env[k]);
  expect(spec.stages.map((s) => s.def.name)).toEqual(["ingest", "resize", "infer-onnx", "nms", "tracker", "zones", "sink-jsonl", "sink-log", "sink-snapshot", "sink-jetstream"]);
  const out = join(tmp, "retail.jsonl");
  for (const s of spec.stages) {
    if (s.def.name === "sink-jsonl") (s.options as { path: string }).path = out;
    if (s.def.name === "zones") (s.options as { state: string }).state = join(tmp, "counts.json");
    if (s.def.name === "sink-snapshot") (s.options as { dir: string }).dir = join(tmp, "snapshots");
    // A stream set changed at runtime by an earlier run in out/ must not replace CAMERAS here.
    if (s.def.name === "ingest") (s.options as { state: string }).state = join(tmp, "streams.json");
  }
  const exec = new Executor(spec, new MemoryBus(), { frames: 60, log: createLogger("retail", 99) });
  await exec.start();
  const summary = await exec.done;
  expect(summary.stages.every((s) => s.failed === 0)).toBe(true);

  const lines = readFileSync(out, "utf8").trim().split("\n").map((l) => JSON.parse(l));
  const frames = lines.filter((l) => l.detections);
  const events = lines.filter((l) => l.type);
  expect(frames).toHaveLength(60);
  const tracked = frames.flatMap((f) => f.detections).filter((d: { trackId?: number }) => Number.isInteger(d.trackId));
  expect(tracked.length).toBeGreaterThan(60);
  expect(events.length).toBeGreaterThan(0);
  // 60 frames at 10 fps span one 5 s counts interval.
  expect(events.find((e) => e.type === "counts")).toMatchObject({ seq: 50, lines: { entrance: {} }, zones: { shelf: {} } });
  const counts = JSON.parse(readFileSync(join(tmp, "counts.json"), "utf8"));
  expect(Object.keys(counts.streams)).toEqual(["cam"]);
});

test("retail.yaml's default is two cameras of one store, each with its own geometry", async () => {
  const spec = await loadPipeline(join(pipelinesDir, "retail.yaml"), await loadRegistry(), () => undefined);
  const ingest = spec.stages.find((s) => s.def.name === "ingest")!.options as { streams: { id: string; url: string }[] };
  expect(ingest.streams.map((s) => s.id)).toEqual(["cam", "cam2"]);
  const zones = spec.stages.find((s) => s.def.name === "zones")!.options as { lines: { id: string }[]; streams: Record<string, { lines: { id: string }[] }> };
  expect(zones.lines.map((l) => l.id)).toEqual(["entrance"]);
  expect(zones.streams.cam2.lines.map((l) => l.id)).toEqual(["door"]);
  // A list from the environment replaces it; a malformed one names the variable's value.
  const three = await loadPipeline(join(pipelinesDir, "retail.yaml"), await loadRegistry(), (k) => (k === "CAMERAS" ? "a=pipelines/media/vtest.mp4,b=pipelines/media/vtest.mp4,c=rtsp://10.0.0.7/live" : undefined));
  expect((three.stages[0].options as { streams: { id: string }[] }).streams.map((s) => s.id)).toEqual(["a", "b", "c"]);
  await expect(loadPipeline(join(pipelinesDir, "retail.yaml"), await loadRegistry(), (k) => (k === "CAMERAS" ? "rtsp://10.0.0.7/live" : undefined))).rejects.toThrow(/stages\[0\]\.with\.streams: expected id=url pairs/);
});
