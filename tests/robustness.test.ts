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
