/** Reliability findings fixed where the runtime was reorganised: each test fails without its fix. */
import { describe, expect, test } from "bun:test";
import { MemoryBus } from "../runtime/bus/memory.ts";
import { Inbox, InboxClosedError } from "../runtime/core/inbox.ts";
import { Executor } from "../runtime/engine/executor.ts";
import { decodeYolo, MAX_CANDIDATES } from "../runtime/inference/yolo.ts";
import { makeFrame } from "./support/frames.ts";
import { lineOf, parse, parseError, registryWith } from "./support/pipeline.ts";

const video = "pipelines/media/vtest.mp4";

describe("pipeline files", () => {
  test("a cycle of stages through in/out is a validation error naming the stages", async () => {
    const reg = await registryWith();
    const text = `name: loop\nstages:\n  - id: cam\n    use: ingest\n    with: { url: ${video} }\n  - id: a\n    use: resize\n    in: [cam, b]\n    with: { width: 64, height: 64 }\n  - id: b\n    use: resize\n    in: a\n    with: { width: 64, height: 64 }\n`;
    const err = parseError(text, reg);
    expect(err.issues).toHaveLength(1);
    expect(err.issues[0]).toMatchObject({ line: lineOf(text, "in: [cam, b]"), path: "stages[1].in" });
    expect(err.issues[0].message).toContain("stages a → b → a form a cycle");
    // The same stages without the back edge are fine.
    expect(() => parse(text.replace("in: [cam, b]", "in: cam"), reg)).not.toThrow();
  });
});

describe("inbox", () => {
  test("close settles pushers waiting for space (they reject with InboxClosedError)", async () => {
    const inbox = new Inbox(1);
    inbox.push(makeFrame(0));
    const waiting = inbox.push(makeFrame(1));
    expect(waiting).toBeInstanceOf(Promise);
    inbox.close();
    const settled = await Promise.race([
      (waiting as Promise<void>).then(
        () => "resolved",
        (e: Error) => (e instanceof InboxClosedError ? "closed" : e.message),
      ),
      new Promise((r) => setTimeout(() => r("still waiting"), 500)),
    ]);
    expect(settled).toBe("closed");
  });
});

describe("workers", () => {
  test("default worker ids are unique per process even with one pid (containers)", async () => {
    const spec = parse(`name: w\nstages:\n  - id: cam\n    use: ingest\n    with: { url: ${video} }\n`, await registryWith());
    const ids = new Set(Array.from({ length: 20 }, () => new Executor(spec, new MemoryBus()).workerId));
    expect(ids.size).toBe(20);
    for (const id of ids) expect(id).toMatch(new RegExp(`^[A-Za-z0-9_-]+-${process.pid}-[0-9a-f]{6}$`));
  });
});

describe("nms candidates", () => {
  test("past 30,000 candidates the best by score are kept, not the first in anchor order", () => {
    const n = MAX_CANDIDATES + 5000;
    const width = 6; // cx cy w h obj + 1 class
    const data = new Float32Array(n * width);
    for (let i = 0; i < n; i++) {
      data.set([10 + (i % 600), 10 + Math.floor(i / 600), 4, 4, 1, i < 5000 ? 0.3 : 0.2], i * width);
    }
    // The last 5000 anchors score best; anchor order would cut exactly those.
    for (let i = n - 5000; i < n; i++) data[i * width + 5] = 0.9;
    const c = decodeYolo({ layout: "yolov5", dims: [1, n, width], data, classNames: ["x"], model: "t" }, 0.1);
    expect(c.count).toBe(MAX_CANDIDATES);
    const scores = Array.from(c.scores.subarray(0, c.count));
    expect(scores.filter((s) => Math.abs(s - 0.9) < 1e-6)).toHaveLength(5000);
    expect(scores.filter((s) => Math.abs(s - 0.3) < 1e-6)).toHaveLength(5000);
  });
});

describe("a send failure fails the message, not the source", () => {
  test("frames over the server's max_payload are counted failed once logged; ffmpeg is not restarted", async () => {
    const { startNatsServer } = await import("./support/nats.ts");
    const { startProcess } = await import("./support/process.ts");
    const { repoRoot, tempDir } = await import("./support/paths.ts");
    const { writeFile } = await import("node:fs/promises");
    const { join } = await import("node:path");
    const nats = await startNatsServer({ maxPayload: "1MB" });
    const dir = await tempDir();
    try {
      const file = join(dir.path, "big.yaml");
      // 800x600 rgb24 is 1.44 MB a frame: over the limit on the explicit `out` subject (published for other pipelines).
      await writeFile(file, `name: big\nbus: ${nats.url}\nstages:\n  - id: cam\n    use: ingest\n    out: shop.big.frames\n    with: { url: ${join(repoRoot, video)}, width: 800, height: 600 }\n  - id: out\n    use: sink-jsonl\n    in: shop.big.frames\n    with: { path: ${join(dir.path, "out.jsonl")} }\n`);
      const child = startProcess([process.execPath, "runtime/cli.ts", "run", file, "--frames", "12"], { cwd: repoRoot, env: { FRAMEWIRE_LOG: "info" } });
      expect(await child.exited).toBe(0);
      const err = child.stderr();
      expect(err.match(/could not be sent on/g)).toHaveLength(1);
      expect(err).toContain("max_payload");
      expect(err).not.toMatch(/stream lost|reconnect #/);
      // The local sink got every frame; the source counted each failed publish.
      expect(child.stdout()).toMatch(/cam\s+ingest\s+0\s+0\s+0\s+12/);
      expect(child.stdout()).toMatch(/out\s+sink-jsonl\s+12\s+0\s+0\s+0/);
    } finally {
      await nats.dispose();
      await dir.remove();
    }
  }, 60_000);
});

describe("sinks do not starve each other", () => {
  test("a slow sink works off its own queue: the stages and the fast sink lose nothing", async () => {
    const { defineOperator } = await import("../runtime/index.ts");
    const v = await import("valibot");
    /** 100 live frames at 100 fps, an event every 5th. */
    const camera = defineOperator({
      name: "camera",
      kind: "source",
      description: "test source",
      options: v.strictObject({}),
      create: () => ({
        async run(emit) {
          for (let seq = 0; seq < 100; seq++) {
            await emit({ kind: "frame", stream: "cam", seq, ts: Date.now(), live: true, image: { width: 4, height: 4, format: "rgb24", data: new Uint8Array(48) }, timings: {} });
            if (seq % 5 === 0) await emit({ kind: "event", stream: "cam", seq, ts: Date.now(), type: "cross", data: {} });
            await Bun.sleep(10);
          }
        },
      }),
    });
    const pass = defineOperator({ name: "pass", kind: "transform", description: "test", options: v.strictObject({}), create: () => ({ process: (m) => m }) });
    /** 100 ms per event (a webhook that takes its time). */
    const slow = defineOperator({
      name: "slowsink",
      kind: "sink",
      description: "test",
      options: v.strictObject({}),
      create: () => ({ process: async (m) => void (m.kind === "event" && (await Bun.sleep(100))) }),
    });
    let fast = 0;
    const quick = defineOperator({ name: "quick", kind: "sink", description: "test", options: v.strictObject({}), create: () => ({ process: (m) => void (m.kind === "frame" && fast++) }) });
    const reg = await registryWith(camera, pass, slow, quick);
    const spec = parse(`name: sinks\nstages:\n  - id: cam\n    use: camera\n  - id: work\n    use: pass\n  - id: hook\n    use: slowsink\n  - id: file\n    use: quick\n`, reg);
    const { runPipeline } = await import("./support/pipeline.ts");
    const run = await runPipeline(spec);
    expect(run.stage("work").dropped).toBe(0);
    expect(fast).toBe(100);
    // The slow sink got every event (events are never dropped) once it worked its queue off.
    expect(run.stage("hook").events).toBe(20);
  }, 60_000);
});

describe("files and disks", () => {
  /** A 16 KiB tmpfs, where the machine lets us mount one (root in a sandbox); undefined elsewhere. */
  async function smallDisk(): Promise<{ path: string; remove(): Promise<void> } | undefined> {
    const { mkdtemp, rm } = await import("node:fs/promises");
    const { tmpdir } = await import("node:os");
    const { join } = await import("node:path");
    const { spawnSync } = await import("node:child_process");
    const path = await mkdtemp(join(tmpdir(), "fw-disk-"));
    const r = spawnSync("mount", ["-t", "tmpfs", "-o", "size=16k", "tmpfs", path]);
    if (r.status !== 0) {
      await rm(path, { recursive: true, force: true });
      return undefined;
    }
    return {
      path,
      async remove() {
        spawnSync("umount", [path]);
        await rm(path, { recursive: true, force: true });
      },
    };
  }

  test("disk full mid-run: every line is whole, and lost lines are counted exactly", async () => {
    const disk = await smallDisk();
    if (!disk) {
      console.warn("skipped: cannot mount a tmpfs here (needs root); the /dev/full case in faults-pipeline.test.ts still runs");
      return;
    }
    try {
      const { join } = await import("node:path");
      const { readFile } = await import("node:fs/promises");
      const reg = await registryWith();
      const out = join(disk.path, "r.jsonl");
      // 400 lines of ~70 bytes do not fit in 16 KiB; flushes of a few lines each.
      const spec = parse(`name: full\nstages:\n  - id: cam\n    use: ingest\n    with: { url: ${video}, width: 64, height: 48 }\n  - id: results\n    use: sink-jsonl\n    with: { path: ${out}, flushInterval: 0.05 }\n`, reg);
      const exec = new Executor(spec, new MemoryBus(), { frames: 400, log: (await import("./support/pipeline.ts")).captureLog("full") });
      await exec.start();
      const summary = await exec.done;
      const text = await readFile(out, "utf8");
      const lines = text.split("\n");
      expect(lines.pop()).toBe(""); // ends with a newline: no torn tail
      for (const l of lines) expect(() => JSON.parse(l)).not.toThrow();
      const results = summary.stages.find((s) => s.stage === "results")!;
      const sink = exec.live().find((s) => s.id === "results")!;
      const lost = sink.instance.metrics!().find((m) => m.name === "sink_write_failures_total")!;
      // Exactly: every line that reached the sink is in the file or counted lost.
      expect(lines.length + (lost.type === "histogram" ? 0 : lost.value)).toBe(results.received);
      // Whole lines in order; the lost ones leave gaps, never halves.
      const seqs = lines.map((l) => JSON.parse(l).seq as number);
      expect(seqs.every((x, i) => i === 0 || x > seqs[i - 1])).toBe(true);
      expect(lines.length).toBeLessThan(400);
    } finally {
      await disk.remove();
    }
  }, 60_000);
});

describe("shutdown", () => {
  test("a stop always ends the run: a stage stuck forever is abandoned after the drain timeout, and the summary says so", async () => {
    const { defineOperator } = await import("../runtime/index.ts");
    const v = await import("valibot");
    const ticker = defineOperator({
      name: "ticker",
      kind: "source",
      description: "test",
      options: v.strictObject({}),
      create: () => ({
        async run(emit, signal) {
          for (let seq = 0; !signal.aborted; seq++) {
            await emit({ kind: "frame", stream: "s", seq, ts: Date.now(), live: false, image: { width: 4, height: 4, format: "rgb24", data: new Uint8Array(48) }, timings: {} });
            await Bun.sleep(5);
          }
        },
      }),
    });
    const hang = defineOperator({ name: "hang", kind: "transform", description: "test", options: v.strictObject({}), create: () => ({ process: () => new Promise<never>(() => {}) }) });
    const reg = await registryWith(ticker, hang);
    const spec = parse(`name: stuck\nstages:\n  - id: src\n    use: ticker\n  - id: stuck\n    use: hang\n  - id: out\n    use: sink-log\n`, reg);
    const { captureLog } = await import("./support/pipeline.ts");
    const log = captureLog("stuck");
    const exec = new Executor(spec, new MemoryBus(), { drainTimeoutMs: 200, log });
    await exec.start();
    await Bun.sleep(100);
    exec.stop("SIGTERM");
    const summary = await exec.done;
    expect(summary.abandoned).toContain("stuck");
    expect(summary.reason).toMatch(/^SIGTERM; drain abandoned after \d+ s with .*stuck.* still busy$/);
    expect(log.text()).toContain("work in flight is lost");
  }, 30_000);
});

describe("hardware decoding", () => {
  test("hwaccel: cuda where no GPU decodes falls back to software, said once", async () => {
    const { makeSource } = await import("./support/operators.ts");
    const src = await makeSource("ingest", { url: video, hwaccel: "cuda", width: 64, height: 48 });
    let frames = 0;
    await src.instance.run(async (f) => {
      if (f.kind !== "frame") return;
      if (++frames === 5) src.abort.abort();
    }, src.abort.signal);
    await src.instance.close?.();
    expect(frames).toBe(5);
    expect(src.log.lines.filter((l) => l.includes("hwaccel cuda did not decode"))).toHaveLength(1);
    expect(src.log.text()).toContain("decoding in software");
  }, 60_000);
});

describe("nodes hold only what they run", () => {
  test("with --stages/--placement only the chosen stages' options are checked: an edge box without the model file runs ingest", async () => {
    const reg = await registryWith();
    const text = `name: split\nbus: nats://127.0.0.1:4222\nstages:\n  - id: cam\n    placement: edge\n    use: ingest\n    with: { url: ${video} }\n  - id: detect\n    placement: cloud\n    use: infer-onnx\n    with: { model: only-on-the-gpu-box.onnx }\n  - id: out\n    placement: edge\n    use: sink-log\n`;
    const { parsePipeline } = await import("../runtime/spec/loader.ts");
    expect(() => parse(text, reg)).toThrow(/stages\[1\]\.with\.model: model file not found/);
    expect(parsePipeline(text, "split.yaml", reg, () => undefined, { stages: ["cam", "out"] }).stages.map((s) => s.id)).toEqual(["cam", "detect", "out"]);
    expect(() => parsePipeline(text, "split.yaml", reg, () => undefined, { placement: "edge" })).not.toThrow();
    expect(() => parsePipeline(text, "split.yaml", reg, () => undefined, { placement: "cloud" })).toThrow(/model file not found/);
  });
});
