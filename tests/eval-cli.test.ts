/**
 * `bun runtime/cli.ts eval ...` as a child process: the real operators on
 * real images (hand-labelled in tests/fixtures/eval/labels), and the errors.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const root = resolve(import.meta.dir, "..");
const sharedImages = resolve(root, "../shared/data/images");
const labels = "tests/fixtures/eval/labels";

// Copies, so images added to shared/ later do not change the expected count.
const tmp = mkdtempSync(join(tmpdir(), "framewire-eval-cli-"));
const images = join(tmp, "images");
mkdirSync(images);
for (const f of ["bus.jpg", "zidane.jpg"]) copyFileSync(join(sharedImages, f), join(images, f));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

async function evalCli(...args: string[]) {
  const proc = Bun.spawn([process.execPath, "runtime/cli.ts", "eval", ...args], { cwd: root, stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { stdout, stderr, code };
}

/** A labels folder holding `files` (name → content). */
function labelsDir(name: string, files: Record<string, string>): string {
  const dir = join(tmp, name);
  mkdirSync(dir);
  for (const [f, text] of Object.entries(files)) writeFileSync(join(dir, f), text);
  return dir;
}

describe("eval coco end to end", () => {
  test(
    "yolov5n on bus.jpg and zidane.jpg: table, then one JSON line",
    async () => {
      const { stdout, stderr, code } = await evalCli("coco", "--images", images, "--labels", labels);
      expect(stderr).not.toContain("    at ");
      expect(code).toBe(0);
      const lines = stdout.trimEnd().split("\n");
      const result = JSON.parse(lines.at(-1)!);
      expect(Object.keys(result)).toEqual(["images", "map50", "map50_95"]);
      expect(result.images).toBe(2);
      expect(result.map50).toBeGreaterThan(0.6);
      expect(result.map50_95).toBeLessThan(result.map50);
      expect(result.map50_95).toBeGreaterThan(0);
      // Header, the "all" row, then the labelled classes by id: person (0), bus (5), tie (27).
      expect(lines[0].split(/\s+/).filter(Boolean)).toEqual(["class", "images", "instances", "P", "R", "mAP50", "mAP50-95"]);
      expect(lines.slice(1, -1).map((l) => l.trim().split(/\s+/).slice(0, 3))).toEqual([
        ["all", "2", "8"],
        ["person", "2", "6"],
        ["bus", "1", "1"],
        ["tie", "1", "1"],
      ]);
    },
    60_000,
  );
});

describe("eval errors: message, exit 2, no stack trace", () => {
  const expectConfigError = (r: { stderr: string; code: number | null }, message: RegExp) => {
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).not.toContain("    at ");
  };

  test("missing or absent folders", async () => {
    expectConfigError(await evalCli("coco", "--labels", labels), /--images DIR is required/);
    expectConfigError(await evalCli("coco", "--images", join(tmp, "nope"), "--labels", labels), /--images: folder not found/);
    expectConfigError(await evalCli("coco", "--images", images, "--labels", join(tmp, "nope")), /--labels: folder not found/);
  });

  test("a folder without images", async () => {
    const empty = labelsDir("no-images", {});
    expectConfigError(await evalCli("coco", "--images", empty, "--labels", labels), /no images \(\.jpg, \.jpeg, \.png\) in/);
  });

  test("no label file for any image", async () => {
    const none = labelsDir("no-labels", { "other.txt": "0 0.5 0.5 0.1 0.1\n" });
    expectConfigError(await evalCli("coco", "--images", images, "--labels", none), /none of the 2 images .* has a label file/);
  });

  test("a malformed label line is named by file and line", async () => {
    const bad = labelsDir("bad-labels", { "bus.txt": "0 0.5 0.5 0.2 0.4\n5 0.5 0.5 1.2\n" });
    expectConfigError(await evalCli("coco", "--images", images, "--labels", bad), /bus\.txt:2: expected 5 fields/);
  });

  test("options are checked by the operators' schemas and named by flag", async () => {
    expectConfigError(await evalCli("coco", "--images", images, "--labels", labels, "--conf", "2"), /--conf: expected <= 1, got 2/);
    expectConfigError(await evalCli("coco", "--images", images, "--labels", labels, "--size", "abc"), /--size: expected number/);
    expectConfigError(await evalCli("coco", "--images", images, "--labels", labels, "--model", "nope.onnx"), /--model: model file not found/);
  });

  test("an image ffmpeg cannot decode", async () => {
    const broken = labelsDir("broken-images", { "broken.jpg": "not a jpeg" });
    expectConfigError(await evalCli("coco", "--images", broken, "--labels", labelsDir("broken-labels", { "broken.txt": "" })), /cannot decode .*broken\.jpg/);
  }, 30_000);

  test("unknown evaluation kinds and flags", async () => {
    expectConfigError(await evalCli("voc"), /unknown evaluation "voc"/);
    expectConfigError(await evalCli("coco", "--images", images, "--labels", labels, "--batch", "8"), /--batch/);
  });

  test.skipIf(existsSync(join(root, "runtime/eval/mot.ts")))("eval mot says it is not available until runtime/eval/mot.ts exists", async () => {
    expectConfigError(await evalCli("mot"), /eval mot is not available/);
  });
});
