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
