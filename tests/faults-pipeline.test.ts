/**
 * Faults in a running pipeline, with real ffmpeg children: a camera that is
 * never reachable beside one that works, an ffmpeg killed mid-stream, a
 * results file that cannot be written, a sink slower than the source.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import * as v from "valibot";
import { ConfigError } from "../runtime/core/errors.ts";
import { Executor } from "../runtime/engine/executor.ts";
import { resolveFfmpeg } from "../runtime/media/ffmpeg.ts";
import type { Frame, Message } from "../runtime/core/message.ts";
import { MemoryBus } from "../runtime/bus/memory.ts";
import { defineOperator } from "../runtime/core/operator.ts";
import type { Registry } from "../runtime/spec/registry.ts";
import { makeSource } from "./support/operators.ts";
import { sampleVideo, tempDir } from "./support/paths.ts";
import { captureLog, parse, registryWith, runPipeline } from "./support/pipeline.ts";
import { freePort } from "./support/ports.ts";
import { startProcess } from "./support/process.ts";
import { collected, collectSink } from "./support/test-operators.ts";
import { processesMatching, until } from "./support/wait.ts";

setDefaultTimeout(60_000);

/** A sink that takes `ms` per message and keeps what it got, in order. */
const slowSink = defineOperator({
  name: "test-slow-sink",
  kind: "sink",
  description: "Test sink: `ms` per message.",
  options: v.strictObject({ ms: v.number(), key: v.string() }),
  create({ ms, key }) {
    const got: Message[] = [];
    collected.set(key, got);
    return {
      async process(msg) {
        await new Promise((r) => setTimeout(r, ms));
        got.push(msg);
      },
    };
  },
});

let tmp: Awaited<ReturnType<typeof tempDir>>;
let clip: string;
let registry: Registry;

beforeAll(async () => {
  tmp = await tempDir("framewire-faults-");
  clip = join(tmp.path, "clip.mp4");
  const ff = startProcess([resolveFfmpeg(), "-loglevel", "error", "-y", "-i", sampleVideo, "-t", "3", "-an", "-c:v", "libx264", "-preset", "ultrafast", clip]);
  expect(await ff.exited).toBe(0);
  registry = await registryWith(collectSink, slowSink);
});
afterAll(() => tmp?.remove());

type Metric = { name: string; value: number; labels?: Record<string, string> };
function metric(exec: Executor, stage: string, name: string): number {
  const s = exec.live().find((x) => x.id === stage)!;
  const all = (s.instance as { metrics?: () => Metric[] }).metrics?.() ?? [];
  return all.find((m) => m.name === name)!.value;
}

describe("faults", () => {
  test("a camera that is never reachable retries with backoff while the other stream keeps flowing", async () => {
    const port = await freePort(); // nothing listens there
    const spec = parse(
      `name: two
stages:
  - { id: dead, use: ingest, with: { url: "rtsp://127.0.0.1:${port}/none", reconnectDelay: 0.1, reconnectMaxDelay: 0.4 } }
  - { id: good, use: ingest, with: { url: "${clip}", realtime: true, loop: true, fps: 10 } }
  - { id: out, use: test-collect, in: [dead, good], with: { key: two } }
`,
      registry,
    );
    const log = captureLog("two");
    const bus = new MemoryBus();
    const exec = new Executor(spec, bus, { log });
    await exec.start();
    try {
      await until(() => (collected.get("two")?.length ?? 0) >= 20 && metric(exec, "dead", "stream_reconnects_total") >= 4, "20 frames from good and 4 retries of dead");
      // Backoff doubles from 0.1 s up to the 0.4 s cap.
      expect(log.text()).toMatch(/\[two\/dead\] stream lost after 0 frames .*reconnect #1 in 0\.1 s/);
      expect(log.text()).toMatch(/\[two\/dead\] .*reconnect #4 in 0\.4 s/);
      expect(metric(exec, "dead", "stream_connected")).toBe(0);
      expect(metric(exec, "good", "stream_connected")).toBe(1);
      expect(collected.get("two")!.every((m) => m.stream === "good")).toBe(true);
    } finally {
      exec.stop();
      await exec.done;
      await bus.close();
    }
  });

  test("an ffmpeg child killed mid-stream is restarted and frames continue", async () => {
    const src = await makeSource("ingest", { url: clip, realtime: true, loop: true, live: true, reconnectDelay: 0.1 }, "cam");
    const frames: Frame[] = [];
    const finished = src.instance.run(async (f) => void (f.kind === "frame" && frames.push(f)), src.abort.signal);
    try {
      await until(() => frames.length >= 5, "5 frames");
      // The clip's path is unique to this test, so this finds only our child.
      const [pid] = await processesMatching(clip);
      expect(pid).toBeGreaterThan(0);
      process.kill(pid, "SIGKILL");
      const atKill = frames.length;
      await until(() => frames.length >= atKill + 10, "10 frames after the kill");
      const [next] = await processesMatching(clip);
      expect(next).not.toBe(pid);
      expect(src.log.text()).toMatch(/stream lost after \d+ frames \(killed by a signal\); reconnect #1 in 0\.1 s/);
      // seq keeps counting across the restart: no gap, no reuse.
      expect(frames.map((f) => f.seq)).toEqual(frames.map((_, i) => i));
    } finally {
      src.abort.abort();
      await finished;
      await src.instance.close?.();
    }
    expect(await processesMatching(clip)).toEqual([]);
  });

  test("results file failing mid-run (disk full): clear error, failures counted, the pipeline keeps running", async () => {
    // /dev/full accepts open() and fails every write with ENOSPC, as a full disk does.
    const spec = parse(
      `name: full
stages:
  - { id: cam, use: ingest, with: { url: "${sampleVideo}" } }
  - { id: results, use: sink-jsonl, with: { path: /dev/full, flushInterval: 0.05 } }
  - { id: all, use: test-collect, in: cam, with: { key: full } }
`,
      registry,
    );
    const run = await runPipeline(spec);
    // The whole clip (795 frames, longer than a few flush intervals) so writes fail while frames still flow.
    const sent = run.stage("cam").sent;
    expect(sent).toBe(795);
    // The other sink got everything: a failing file does not stop the pipeline.
    expect(collected.get("full")).toHaveLength(sent);
    expect(run.stage("results").received).toBe(sent);
    expect(run.stage("results").failed).toBeGreaterThan(0);
    expect(run.stage("results").lastError).toMatch(/cannot write \/dev\/full: ENOSPC/);
    expect(run.log.text()).toMatch(/error \[full\/results\] cannot write \/dev\/full: ENOSPC.*lines lost/);
  });

  test("results file that cannot be created: a ConfigError naming the stage and path, before anything runs", async () => {
    const spec = parse(`name: nodir\nstages:\n  - { id: cam, use: ingest, with: { url: "${clip}" } }\n  - { id: results, use: sink-jsonl, with: { path: "${clip}/out.jsonl" } }\n`, registry);
    const err = await runPipeline(spec).catch((e) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect(err.message).toContain(`[results] cannot write ${clip}/out.jsonl: E`);
    expect(err.message).toMatch(/ENOTDIR|EEXIST/);
  });

  test("a sink slower than the source: backpressure, every result arrives in order", async () => {
    const spec = parse(`name: slow\nstages:\n  - { id: cam, use: ingest, with: { url: "${clip}" } }\n  - { id: out, use: test-slow-sink, with: { ms: 20, key: slow } }\n`, registry);
    const run = await runPipeline(spec);
    expect(run.stage("cam").sent).toBe(30);
    expect(run.stage("out").dropped).toBe(0);
    expect(collected.get("slow")!.map((m) => m.seq)).toEqual(Array.from({ length: 30 }, (_, i) => i));
  });
});
