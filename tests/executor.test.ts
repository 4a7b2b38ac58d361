import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { symlink } from "node:fs/promises";
import { join } from "node:path";
import { ConfigError } from "../runtime/core/errors.ts";
import { Executor } from "../runtime/engine/executor.ts";
import { MemoryBus } from "../runtime/bus/memory.ts";
import type { Frame } from "../runtime/core/message.ts";
import type { Registry } from "../runtime/spec/registry.ts";
import { totals } from "../runtime/core/stats.ts";
import { fp16ModelFile, modelFile, sampleVideo, tempDir } from "./support/paths.ts";
import { captureLog, parse, registryWith, runPipeline } from "./support/pipeline.ts";
import { clocks, collected, FrameClock, onCollect, testOperators } from "./support/test-operators.ts";
import { processesMatching } from "./support/wait.ts";

setDefaultTimeout(60_000);

let registry: Registry;
let tmp: Awaited<ReturnType<typeof tempDir>>;
/** The sample clip under a path of this run's own, so its ffmpeg processes can be told from others'. */
let clip: string;
let video: string;
beforeAll(async () => {
  registry = await registryWith(...testOperators);
  tmp = await tempDir();
  clip = join(tmp.path, "clip.mp4");
  await symlink(sampleVideo, clip);
  video = JSON.stringify(clip);
});
afterAll(async () => {
  await tmp?.remove();
});

const frames = (key: string) => (collected.get(key) ?? []) as Frame[];

describe("executor", () => {
  test("--frames N on a file drains: every frame that entered reaches the sink, none dropped", async () => {
    const spec = parse(
      `name: drain
stages:
  - id: cam
    use: ingest
    with: { url: ${video} }
  - id: prep
    use: resize
    inbox: 1
  - id: detect
    use: infer-onnx
    with: { model: ${JSON.stringify(modelFile)} }
    inbox: 1
  - id: nms
    use: nms
    inbox: 1
  - id: out
    use: test-collect
    with: { key: drain }
    inbox: 1
`,
      registry,
    );
    const run = await runPipeline(spec, { frames: 8 });
    expect(run.summary.reason).toBe("--frames 8 reached");
    expect(totals(run.summary)).toMatchObject({ framesIn: 8, framesOut: 8, dropped: 0, failed: 0 });
    for (const id of ["prep", "detect", "nms", "out"]) expect(run.stage(id)).toMatchObject({ received: 8, dropped: 0, failed: 0 });
    const got = frames("drain");
    expect(got.map((f) => f.seq)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    // vtest is a street scene: people in every frame; every stage before the sink left its timing
    // (frames are immutable once emitted: the sink's own time is in its stats, not on the frame it received).
    expect(got.every((f) => f.detections!.some((d) => d.class === "person"))).toBe(true);
    expect(Object.keys(got[0].timings).sort()).toEqual(["detect", "nms", "prep"]);
    expect(await processesMatching(clip)).toEqual([]);
  });

  test("live source overload: stale frames are dropped and counted, lag stays bounded", async () => {
    const N = 120;
    const EVERY = 4;
    const INBOX = 2;
    const spec = parse(
      `name: overload
stages:
  - id: cam
    use: ingest
    with: { url: ${video}, live: true }
  - id: slow
    use: test-gate
    with: { key: overload, every: ${EVERY} }
    inbox: ${INBOX}
  - id: out
    use: test-collect
    with: { key: overload }
`,
      registry,
    );
    const clock = new FrameClock(N);
    clocks.set("overload", clock);
    // Lag in frames: how many frames the camera had sent after this one when it reached the sink.
    const lags: number[] = [];
    onCollect.set("overload", (m) => lags.push(clock.emitted - 1 - m.seq));
    const bus = new MemoryBus();
    bus.subscribe(spec.stages[0].output, () => clock.tick());
    const exec = new Executor(spec, bus, { frames: N, log: captureLog("overload") });
    await exec.start();
    const summary = await exec.done;
    await bus.close();
    const slow = summary.stages.find((s) => s.stage === "slow")!;
    const out = summary.stages.find((s) => s.stage === "out")!;

    expect(totals(summary).framesIn).toBe(N);
    // A stage 4x slower than the camera sees about a quarter of the frames; the rest are dropped, not queued.
    expect(slow.dropped).toBeGreaterThan(N / 2);
    expect(slow.received + slow.dropped).toBe(N);
    expect(out.received).toBe(slow.sent);
    expect(totals(summary).dropped).toBe(slow.dropped);
    // Without drops the lag would grow to ~3N/4; drop-oldest keeps it within the stage's work plus its inbox.
    expect(lags.length).toBe(out.received);
    expect(Math.max(...lags)).toBeLessThanOrEqual(EVERY + INBOX + 2);
    const seqs = frames("overload").map((f) => f.seq);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
  });

  test("a stage that throws on some frames: counted as failed, the pipeline keeps running", async () => {
    const spec = parse(
      `name: flaky
stages:
  - id: cam
    use: ingest
    with: { url: ${video} }
  - id: check
    use: test-flaky
    with: { every: 3 }
  - id: out
    use: test-collect
    with: { key: flaky }
`,
      registry,
    );
    const run = await runPipeline(spec, { frames: 12 });
    expect(run.summary.reason).toBe("--frames 12 reached");
    expect(run.stage("check")).toMatchObject({ received: 12, sent: 8, failed: 4 });
    expect(run.stage("check").lastError).toMatch(/^bad frame \d+$/);
    expect(frames("flaky").map((f) => f.seq)).toEqual([0, 2, 3, 5, 6, 8, 9, 11]);
    expect(run.log.text()).toContain("frame cam#1 failed (1 so far): bad frame 1");
  });

  test("a source that cannot read its input ends the run with the error in the summary", async () => {
    const bogus = `${tmp.path}/broken.mp4`;
    await Bun.write(bogus, "not a video");
    const spec = parse(`name: broken\nstages:\n  - id: cam\n    use: ingest\n    with: { url: ${JSON.stringify(bogus)} }\n  - id: out\n    use: test-collect\n    with: { key: broken }\n`, registry);
    const run = await runPipeline(spec);
    expect(run.stage("cam")).toMatchObject({ sent: 0, failed: 1 });
    expect(run.stage("cam").lastError).toContain("ffmpeg could not read");
    expect(run.log.text()).toContain("source failed: ffmpeg could not read");
  });

  test("an operator that fails to start rejects start() with its error and closes the others", async () => {
    const spec = parse(
      `name: fp16\nstages:\n  - id: cam\n    use: ingest\n    with: { url: ${video} }\n  - id: prep\n    use: resize\n  - id: detect\n    use: infer-onnx\n    with: { model: ${JSON.stringify(fp16ModelFile)} }\n  - id: out\n    use: test-collect\n    with: { key: fp16 }\n`,
      registry,
    );
    const exec = new Executor(spec, new MemoryBus(), { log: captureLog("fp16") });
    const err = await exec.start().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toContain("float16");
    expect(frames("fp16")).toHaveLength(0);
  });

  test("stop() on a live source ends the run: sources stop, the rest drains", async () => {
    const spec = parse(
      `name: stopme\nstages:\n  - id: cam\n    use: ingest\n    with: { url: ${video}, realtime: true }\n  - id: out\n    use: test-collect\n    with: { key: stopme }\n`,
      registry,
    );
    const exec = new Executor(spec, new MemoryBus(), { log: captureLog("stopme") });
    await exec.start();
    const got = () => frames("stopme").length;
    while (got() < 3) await Bun.sleep(20);
    exec.stop("test says stop");
    const summary = await exec.done;
    expect(summary.reason).toBe("test says stop");
    const t = totals(summary);
    expect(t.framesIn).toBeGreaterThanOrEqual(3);
    expect(t.framesOut).toBe(t.framesIn);
    expect(await processesMatching(clip)).toEqual([]);
  });
});
