import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { runCli, startCli } from "./support/cli.ts";
import { tempDir } from "./support/paths.ts";
import { writePipeline } from "./support/pipeline.ts";

setDefaultTimeout(60_000);

let tmp: Awaited<ReturnType<typeof tempDir>>;
beforeAll(async () => {
  tmp = await tempDir();
});
afterAll(async () => {
  await tmp?.remove();
});

// Relative to the checkout (the CLI runs there), as a user would write it.
const VIDEO = "../shared/data/video/vtest.mp4";

interface JsonLine {
  stream: string;
  seq: number;
  ts: number;
  detections: { class: string; score: number; box: number[] }[];
}

async function readJsonl(path: string): Promise<JsonLine[]> {
  const text = await readFile(path, "utf8");
  return text.trimEnd().split("\n").map((l) => JSON.parse(l) as JsonLine);
}

describe("cli", () => {
  test("validate demo.yaml exits 0 and lists the stages", async () => {
    const r = await runCli(["run", "validate", "demo.yaml"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("demo.yaml: valid — 6 stages: cam (ingest) → prep (resize)");
  });

  test("an invalid file exits 2 with file:line messages and no stack trace", async () => {
    const file = await writePipeline(
      tmp.path,
      `name: bad\nstages:\n  - id: cam\n    use: ingest\n    with: { url: ${VIDEO}, fps: fast }\n  - id: nms\n    use: nms\n    with:\n      iou: high\n`,
      "bad.yaml",
    );
    const r = await runCli(["run", "validate", file]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`${file}:5:`);
    expect(r.stderr).toContain("stages[0].with.fps: expected number");
    expect(r.stderr).toContain(`${file}:9:12: stages[1].with.iou: expected number, got "high"`);
    expect(r.stderr).not.toContain("    at ");
    expect(r.stdout).toBe("");
  });

  test("an unset ${VAR} names the variable; run refuses the file the same way", async () => {
    const file = await writePipeline(tmp.path, `name: env\nstages:\n  - id: cam\n    use: ingest\n    with:\n      url: \${FW_TEST_CAMERA}\n`, "env.yaml");
    const r = await runCli(["runtime/cli.ts", "run", file], { FW_TEST_CAMERA: undefined });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`${file}:6:12: stages[0].with.url: environment variable FW_TEST_CAMERA is not set`);
    expect(r.stderr).not.toContain("    at ");
  });

  test("bad command lines exit 2 with a message", async () => {
    const missing = await runCli(["runtime/cli.ts", "run", join(tmp.path, "nope.yaml")]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain("pipeline file not found");
    const frames = await runCli(["runtime/cli.ts", "run", "demo.yaml", "--frames", "lots"]);
    expect(frames.code).toBe(2);
    expect(frames.stderr).toContain('--frames: expected a positive integer, got "lots"');
    const flag = await runCli(["runtime/cli.ts", "run", "demo.yaml", "--fast"]);
    expect(flag.code).toBe(2);
    expect(flag.stderr).toContain("usage:");
    for (const r of [missing, frames, flag]) expect(r.stderr).not.toContain("    at ");
  });

  test("a source that cannot read its input: exit 1, the reason on stderr, the summary on stdout", async () => {
    const broken = join(tmp.path, "broken.mp4");
    await Bun.write(broken, "not a video");
    const file = await writePipeline(tmp.path, `name: broken\nstages:\n  - id: cam\n    use: ingest\n    with: { url: ${JSON.stringify(broken)} }\n  - id: log\n    use: sink-log\n`, "broken.yaml");
    const r = await runCli(["runtime/cli.ts", "run", file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("source failed: ffmpeg could not read");
    expect(r.stderr).not.toContain("    at ");
    expect(r.stdout).toContain("frames: 0 in, 0 out");
  });

  test("run --frames 20 writes one JSON line per frame and prints the summary", async () => {
    const out = join(tmp.path, "run.jsonl");
    const file = await writePipeline(
      tmp.path,
      `name: clirun
stages:
  - id: cam
    use: ingest
    with: { url: ${VIDEO} }
  - id: prep
    use: resize
  - id: detect
    use: infer-onnx
    with: { model: yolov5n.onnx }
  - id: nms
    use: nms
  - id: results
    use: sink-jsonl
    with: { path: ${JSON.stringify(out)} }
`,
      "run.yaml",
    );
    const r = await runCli(["runtime/cli.ts", "run", file, "--frames", "20", "--json"]);
    expect(r.stderr).not.toContain("    at ");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("framewire: clirun stopped (--frames 20 reached)");
    expect(r.stdout).toMatch(/frames: 20 in, 20 out, 0 dropped, 0 failed/);
    const json = JSON.parse(r.stdout.trimEnd().split("\n").at(-1)!);
    expect(json).toMatchObject({ framesIn: 20, framesOut: 20, dropped: 0, failed: 0, pipeline: "clirun" });

    const lines = await readJsonl(out);
    expect(lines.map((l) => l.seq)).toEqual(Array.from({ length: 20 }, (_, i) => i));
    for (const l of lines) {
      expect(l.stream).toBe("cam");
      expect(typeof l.ts).toBe("number");
      expect(Array.isArray(l.detections)).toBe(true);
      for (const d of l.detections) {
        expect(typeof d.class).toBe("string");
        expect(d.score).toBeGreaterThanOrEqual(0.25);
        expect(d.box).toHaveLength(4);
        // Source pixels of the 480x360 clip.
        expect(d.box[2]).toBeLessThanOrEqual(480);
        expect(d.box[3]).toBeLessThanOrEqual(360);
      }
    }
    const persons = lines.filter((l) => l.detections.some((d) => d.class === "person")).length;
    expect(persons).toBe(20);
  });

  test("SIGINT to a running pipeline: it drains, prints the summary and exits 0", async () => {
    const out = join(tmp.path, "live.jsonl");
    const file = await writePipeline(
      tmp.path,
      `name: clilive
stages:
  - id: cam
    use: ingest
    with: { url: ${VIDEO}, realtime: true }
  - id: results
    use: sink-jsonl
    with: { path: ${JSON.stringify(out)}, flushInterval: 0.1 }
  - id: progress
    use: sink-log
    with: { interval: 0.2 }
`,
      "live.yaml",
    );
    const child = startCli(["runtime/cli.ts", "run", file]);
    try {
      await child.waitFor(/\[clilive\/progress\] .*\| [1-9]\d* frames/);
      child.signal("SIGINT");
      const code = await child.exited;
      expect(child.stderr()).toContain("SIGINT: stopping sources and draining");
      expect(code).toBe(0);
    } finally {
      await child.stop();
    }
    const stdout = child.stdout();
    expect(stdout).toContain("framewire: clilive stopped (SIGINT)");
    const m = stdout.match(/frames: (\d+) in, (\d+) out, 0 dropped, 0 failed/);
    expect(m).not.toBeNull();
    const n = Number(m![1]);
    expect(n).toBeGreaterThan(0);
    expect(Number(m![2])).toBe(n);
    // Everything that entered was written before exit.
    const lines = await readJsonl(out);
    expect(lines.map((l) => l.seq)).toEqual(Array.from({ length: n }, (_, i) => i));
  });
});
