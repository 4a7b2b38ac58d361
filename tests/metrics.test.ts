/**
 * /metrics: the Prometheus text parses strictly, agrees with the run's own
 * summary counter for counter, and its histograms are well-formed
 * cumulative buckets; CPU is reported, GPU only where one can be read.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { chmod, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { modelVersion } from "../runtime/inference/onnx-model.ts";
import { Histogram } from "../runtime/core/histogram.ts";
import { HostLoad, parseNvidiaSmi } from "../runtime/platform/host-load.ts";
import { which } from "../runtime/platform/index.ts";
import { scaledModel, startTinyRun } from "./lifecycle-support.ts";
import { parsePrometheus, scrape, type Exposition } from "./support/http.ts";
import { tempDir } from "./support/paths.ts";
import { until } from "./support/wait.ts";

setDefaultTimeout(60_000);

let dir: Awaited<ReturnType<typeof tempDir>>;
let model: string;
beforeAll(async () => {
  dir = await tempDir();
  model = join(dir.path, "tiny.onnx");
  await writeFile(model, scaledModel(1));
});
afterAll(async () => {
  await dir.remove();
});

/** Buckets rise with `le`, end in +Inf equal to _count; for every series of a histogram family. */
function expectWellFormedHistogram(m: Exposition, family: string): void {
  expect(m.types.get(family)).toBe("histogram");
  const counts = m.find(`${family}_count`);
  expect(counts.length).toBeGreaterThan(0);
  for (const c of counts) {
    const buckets = m.find(`${family}_bucket`, c.labels).map((b) => ({ le: b.labels.le === "+Inf" ? Infinity : Number(b.labels.le), n: b.value }));
    expect(buckets.at(-1)).toEqual({ le: Infinity, n: c.value });
    for (let i = 1; i < buckets.length; i++) {
      expect(buckets[i].le).toBeGreaterThan(buckets[i - 1].le);
      expect(buckets[i].n).toBeGreaterThanOrEqual(buckets[i - 1].n);
    }
    expect(m.value(`${family}_sum`, c.labels)).toBeGreaterThanOrEqual(0);
  }
}

describe("Histogram.cumulative", () => {
  test("counts values at or below each bound", () => {
    const h = new Histogram();
    for (const ms of [0.5, 0.9, 3, 30, 3000]) h.record(ms);
    expect(h.cumulative([1, 10, 100, 1000, 10_000])).toEqual([2, 3, 4, 4, 5]);
    expect(new Histogram().cumulative([1, 10])).toEqual([0, 0]);
  });
});

describe("/metrics", () => {
  test("after a run: parseable, equal to the summary, histograms well formed", async () => {
    const run = await startTinyRun({ model }, { frames: 120 });
    const summary = await run.exec.done;
    const m = await scrape(run.http.url);
    await run.stop();

    for (const s of summary.stages) {
      const l = { pipeline: "tiny", stage: s.stage, operator: s.operator };
      expect(m.value("framewire_stage_received_total", l)).toBe(s.received);
      expect(m.value("framewire_stage_sent_total", l)).toBe(s.sent);
      expect(m.value("framewire_stage_dropped_total", l)).toBe(s.dropped);
      expect(m.value("framewire_stage_failed_total", l)).toBe(s.failed);
      expect(m.value("framewire_stage_queue_depth", l)).toBe(0);
      expect(m.value("framewire_stage_queue_capacity", l)).toBeGreaterThan(0);
      if (s.kind !== "source") expect(m.value("framewire_stage_latency_seconds_count", l)).toBe(s.received);
    }
    expectWellFormedHistogram(m, "framewire_stage_latency_seconds");
    expectWellFormedHistogram(m, "framewire_end_to_end_latency_seconds");
    expectWellFormedHistogram(m, "framewire_inference_seconds");
    expect(m.value("framewire_end_to_end_latency_seconds_count", { stage: "out" })).toBe(120);

    // Operator metrics: the source's stream, the detector's model version.
    expect(m.value("framewire_stream_frames_total", { stage: "cam", stream: "cam" })).toBe(120);
    expect(m.value("framewire_stream_reconnects_total", { stream: "cam" })).toBe(0);
    const version = await modelVersion(model);
    expect(m.value("framewire_model_info", { stage: "detect", model: "tiny.onnx", version, role: "active" })).toBe(1);
    expect(m.value("framewire_model_inferences_total", { version })).toBe(120);
    expect(m.value("framewire_inference_seconds_count", { version })).toBe(120);
    expect(m.value("framewire_model_failures_total", { version })).toBe(0);

    // Stopped: not ready. Load: CPU always, GPU only with a readable one; no NATS on the memory bus.
    expect(m.value("framewire_ready")).toBe(0);
    expect(m.value("framewire_info", { pipeline: "tiny", bus: "memory" })).toBe(1);
    const cpu = m.value("framewire_host_cpu_ratio");
    expect(cpu).toBeGreaterThanOrEqual(0);
    expect(cpu).toBeLessThanOrEqual(1);
    expect(m.value("framewire_host_cpu_cores")).toBeGreaterThan(0);
    if (!which("nvidia-smi")) {
      expect(m.value("framewire_gpu_available")).toBe(0);
      expect(m.find("framewire_gpu_utilisation_ratio")).toHaveLength(0);
    }
    expect(m.find("framewire_nats_connected")).toHaveLength(0);
    expect(m.find("process_cpu_seconds_total")).toHaveLength(1);
  });

  test("while running: ready, frames per second measured per stage", async () => {
    const run = await startTinyRun({ model });
    try {
      await until(() => run.view.fps("detect") > 0, "a measured frame rate");
      const m = await scrape(run.http.url);
      expect(m.value("framewire_ready")).toBe(1);
      expect(m.value("framewire_stream_connected", { stream: "cam" })).toBe(1);
      for (const stage of ["cam", "prep", "detect", "nms", "out"]) expect(m.value("framewire_stage_frames_per_second", { stage })).toBeGreaterThan(0);
      expect(m.value("framewire_stream_frames_per_second", { stream: "cam" })).toBeGreaterThan(0);
    } finally {
      await run.stop();
    }
  });
});

describe("GPU utilisation", () => {
  test("is read from nvidia-smi where it exists", async () => {
    const fake = join(dir.path, "nvidia-smi");
    await writeFile(fake, '#!/bin/sh\necho "0, NVIDIA Test GPU, 37, 1024, 81920"\necho "1, NVIDIA Test GPU, [N/A], [N/A], 81920"\n');
    await chmod(fake, 0o755);
    const load = new HostLoad(fake);
    const release = load.acquire();
    try {
      await until(() => load.latest.gpus !== null, "a GPU sample");
      expect(load.latest.gpus).toEqual([{ index: 0, name: "NVIDIA Test GPU", utilisation: 0.37, memoryUsedBytes: 1024 * 1048576, memoryTotalBytes: 81920 * 1048576 }]);
    } finally {
      release();
    }
  });

  test("is absent, not zero, without a readable GPU", () => {
    expect(parseNvidiaSmi("")).toEqual([]);
    expect(new HostLoad(undefined).latest.gpus).toBeNull();
  });
});

test("the Prometheus parser rejects what Prometheus would", () => {
  expect(() => parsePrometheus("no_type_line 1\n")).toThrow("no TYPE line");
  expect(() => parsePrometheus("# TYPE x gauge\nx{a=unquoted} 1\n")).toThrow("bad labels");
  expect(() => parsePrometheus("# TYPE x gauge\nx one\n")).toThrow("bad value");
});
