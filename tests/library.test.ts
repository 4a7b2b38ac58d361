/**
 * framewire as a library: a user operator outside the repository, frames that
 * fan out unchanged, and replicas that keep each stream in order.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtemp, mkdir, readFile, rm, symlink, writeFile, copyFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import * as v from "valibot";
import { defineOperator, derive, type Detection, type Frame } from "../runtime/index.ts";
import { parse, registryWith, runPipeline, writePipeline } from "./support/pipeline.ts";
import { startProcess } from "./support/process.ts";

/** `bun runtime/cli.ts <args>` run from a user's folder. */
async function runCli(args: string[], o: { cwd: string }): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = startProcess([process.execPath, join(root, "runtime/cli.ts"), ...args], { cwd: o.cwd, env: { FRAMEWIRE_LOG: "info" } });
  const code = await child.exited;
  return { code, stdout: child.stdout(), stderr: child.stderr() };
}

const root = resolve(import.meta.dir, "..");
const video = join(root, "pipelines/media/vtest.mp4");
const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

/** A folder outside the repository with framewire "installed" as a path dependency (node_modules/framewire → the checkout). */
async function userProject(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "fw-user-"));
  dirs.push(dir);
  await mkdir(join(dir, "node_modules"), { recursive: true });
  await symlink(root, join(dir, "node_modules", "framewire"), "dir");
  await writeFile(join(dir, "package.json"), JSON.stringify({ name: "shop", type: "module", dependencies: { framewire: `file:${root}` } }));
  await mkdir(join(dir, "ops"));
  await copyFile(join(root, "examples/operators/brightness.ts"), join(dir, "ops/brightness.ts"));
  return dir;
}

describe("user operators", () => {
  test("an operator in a folder outside the repository runs in a pipeline (import from \"framewire\")", async () => {
    const dir = await userProject();
    await writePipeline(
      dir,
      `name: shop\noperators: [./ops/brightness.ts]\nstages:\n  - id: cam\n    use: ingest\n    with: { url: ${video} }\n  - id: light\n    use: brightness\n    with: { threshold: 255 }\n  - id: out\n    use: sink-jsonl\n    with: { path: out/shop.jsonl }\n`,
      "shop.yaml",
    );
    const r = await runCli(["run", "shop.yaml", "--frames", "6"], { cwd: dir });
    expect(r.code).toBe(0);
    const lines = (await readFile(join(dir, "out/shop.jsonl"), "utf8")).trim().split("\n").map((l) => JSON.parse(l));
    // Every frame is darker than 255: the first frame of the stream raises one dark event with its brightness.
    const events = lines.filter((l) => l.type === "dark");
    expect(events).toHaveLength(1);
    expect(events[0].brightness).toBeGreaterThan(20);
    expect(events[0].brightness).toBeLessThan(255);
    expect(lines.filter((l) => l.detections).length).toBe(6);
  });

  test("validated and suggested like built-ins; a clash with a built-in name is an error at its line", async () => {
    const dir = await userProject();
    await writePipeline(dir, `name: shop\noperators: [./ops/brightness.ts]\nstages:\n  - id: cam\n    use: ingest\n    with: { url: ${video} }\n  - id: light\n    use: brightnes\n`, "typo.yaml");
    const typo = await runCli(["validate", "typo.yaml"], { cwd: dir });
    expect(typo.code).toBe(2);
    expect(typo.stderr).toContain('typo.yaml:8:10: stages[1].use: unknown operator "brightnes" (did you mean "brightness"?)');
    await writePipeline(dir, `name: shop\noperators: [./ops/brightness.ts]\nstages:\n  - id: cam\n    use: ingest\n    with: { url: ${video} }\n  - id: light\n    use: brightness\n    with: { threshold: 300 }\n`, "bad.yaml");
    const bad = await runCli(["validate", "bad.yaml"], { cwd: dir });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/bad\.yaml:9:\d+: stages\[1\]\.with\.threshold: /);
    await writeFile(join(dir, "ops/nms.ts"), `import { defineOperator, v } from "framewire";\nexport default defineOperator({ name: "nms", kind: "transform", description: "mine", options: v.strictObject({}), create: () => ({ process: (m) => m }) });\n`);
    await writePipeline(dir, `name: shop\noperators:\n  - ./ops/brightness.ts\n  - ./ops/nms.ts\n  - ./ops/missing.ts\nstages:\n  - id: cam\n    use: ingest\n    with: { url: ${video} }\n`, "clash.yaml");
    const clash = await runCli(["validate", "clash.yaml"], { cwd: dir });
    expect(clash.code).toBe(2);
    expect(clash.stderr).toContain('clash.yaml:4:5: operators[1]: operator "nms" (./ops/nms.ts) clashes with the built-in operator of that name');
    expect(clash.stderr).toContain("clash.yaml:5:5: operators[2]: operator module not found: ./ops/missing.ts");
  });
});

/** Synthetic frames: one person walking right, a detection per frame. */
const walker = defineOperator({
  name: "walker",
  kind: "source",
  description: "test source",
  options: v.strictObject({ frames: v.number() }),
  create: (o) => ({
    async run(emit) {
      for (let seq = 0; seq < o.frames; seq++) {
        const box: [number, number, number, number] = [20 + seq * 4, 100, 60 + seq * 4, 200];
        const detections: Detection[] = [{ class: "person", classId: 0, score: 0.9, box }];
        await emit({ kind: "frame", stream: "cam", seq, ts: 1000 + seq * 40, live: false, image: { width: 640, height: 480, format: "rgb24", data: new Uint8Array(0) }, detections, timings: {} });
      }
    },
  }),
});

/** Every third frame takes 30 ms instead of none: its replica falls behind the others. */
const uneven = defineOperator({
  name: "uneven",
  kind: "transform",
  description: "test transform",
  options: v.strictObject({}),
  create: () => {
    let calls = 0;
    return {
      async process(msg) {
        if (calls++ % 3 === 0) await new Promise((r) => setTimeout(r, 30));
        return msg.kind === "frame" ? derive(msg, { meta: { uneven: true } }) : msg;
      },
    };
  },
});

/** Collects what reaches it, per stage id. */
const seen = new Map<string, Frame[]>();
const collect = defineOperator({
  name: "collect",
  kind: "sink",
  description: "test sink",
  options: v.strictObject({}),
  create: (_o, ctx) => {
    const got: Frame[] = [];
    seen.set(ctx.stage, got);
    return { process: (msg) => void (msg.kind === "frame" && got.push(msg)) };
  },
});

describe("frame ownership and order", () => {
  test("two nms stages on one detect both decode the original predictions", async () => {
    const reg = await registryWith(collect);
    const spec = parse(
      `name: two\nstages:\n  - id: cam\n    use: ingest\n    with: { url: ${video} }\n  - id: prep\n    use: resize\n    with: { width: 640, height: 640 }\n  - id: detect\n    use: infer-onnx\n    with: { model: yolov5n.onnx }\n  - id: loose\n    use: nms\n    in: detect\n    with: { conf: 0.25 }\n  - id: strict\n    use: nms\n    in: detect\n    with: { conf: 0.5 }\n  - id: a\n    use: collect\n    in: loose\n  - id: b\n    use: collect\n    in: strict\n`,
      reg,
    );
    const run = await runPipeline(spec, { frames: 4 });
    expect(run.stage("loose")).toMatchObject({ received: 4, failed: 0 });
    expect(run.stage("strict")).toMatchObject({ received: 4, failed: 0 });
    const a = seen.get("a")!;
    const b = seen.get("b")!;
    expect(a.map((f) => f.seq)).toEqual([0, 1, 2, 3]);
    expect(b.map((f) => f.seq)).toEqual([0, 1, 2, 3]);
    for (let i = 0; i < 4; i++) {
      // Both decoded; the stricter threshold keeps a subset of the looser one's boxes.
      expect(a[i].detections!.length).toBeGreaterThan(0);
      expect(b[i].detections!.length).toBeLessThanOrEqual(a[i].detections!.length);
      expect(b[i].detections!.every((d) => d.score >= 0.5)).toBe(true);
      expect(a[i].detections!.some((d) => d.score < 0.5)).toBe(true);
      expect(a[i].predictions).toBeUndefined();
    }
  });

  test("a stage writing into a received frame fails loudly instead of corrupting its neighbours", async () => {
    const vandal = defineOperator({
      name: "vandal",
      kind: "transform",
      description: "test transform",
      options: v.strictObject({}),
      create: () => ({
        process(msg) {
          (msg as { seq: number }).seq = -1;
          return msg;
        },
      }),
    });
    const reg = await registryWith(walker, vandal, collect);
    const spec = parse(`name: vandal\nstages:\n  - id: src\n    use: walker\n    with: { frames: 3 }\n  - id: pass\n    use: uneven\n  - id: bad\n    use: vandal\n    in: pass\n  - id: good\n    use: collect\n    in: pass\n`, await registryWith(walker, vandal, collect, uneven));
    const run = await runPipeline(spec);
    expect(run.stage("bad").failed).toBe(3);
    expect(seen.get("good")!.map((f) => f.seq)).toEqual([0, 1, 2]);
    expect(reg.has("vandal")).toBe(true);
  });

  test("replicas ahead of a tracker deliver each stream in order: track ids stay stable with one replica slow", async () => {
    const reg = await registryWith(walker, uneven, collect);
    const spec = parse(
      `name: order\nstages:\n  - id: src\n    use: walker\n    with: { frames: 40 }\n  - id: work\n    use: uneven\n    replicas: 3\n    inbox: 6\n  - id: track\n    use: tracker\n  - id: out\n    use: collect\n`,
      reg,
    );
    const run = await runPipeline(spec);
    expect(run.stage("work")).toMatchObject({ received: 40, dropped: 0, failed: 0 });
    const got = seen.get("out")!;
    expect(got.map((f) => f.seq)).toEqual(Array.from({ length: 40 }, (_, i) => i));
    expect(new Set(got.map((f) => f.detections![0].trackId))).toEqual(new Set([1]));
    expect(got.every((f) => f.meta?.uneven === true && f.meta.tracks?.length === 1)).toBe(true);
  });
});

describe("the command line", () => {
  test("a mistyped flag gets a did-you-mean; docs FILE prints a user operator's docs from its schema", async () => {
    const dir = await userProject();
    await writePipeline(dir, `name: shop\noperators: [./ops/brightness.ts]\nstages:\n  - id: cam\n    use: ingest\n    with: { url: ${video} }\n  - id: light\n    use: brightness\n`, "shop.yaml");
    const typo = await runCli(["run", "shop.yaml", "--frame", "3"], { cwd: dir });
    expect(typo.code).toBe(2);
    expect(typo.stderr).toContain("error: unknown option --frame (did you mean --frames?)");
    const docs = await runCli(["docs", "shop.yaml"], { cwd: dir });
    expect(docs.code).toBe(0);
    expect(docs.stdout).toContain("brightness");
    expect(docs.stdout).toContain("Mean luma (0..255) below which a frame counts as dark.");
    expect(docs.stdout).not.toContain("infer-onnx");
  });
});
