import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError } from "../runtime/core/errors.ts";
import { listImages, parseLabels, readLabels, requireDir, toTruths } from "../runtime/eval/dataset.ts";

const tmp = mkdtempSync(join(tmpdir(), "framewire-eval-dataset-"));
writeFileSync(join(tmp, "cat.txt"), "15 0.5 0.5 0.5 0.5\n");
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe("parseLabels", () => {
  test("reads class cx cy w h lines, skipping blank lines and CRLF", () => {
    expect(parseLabels("0 0.5 0.5 0.2 0.4\r\n\n  27 0.1 0.9 0.05 0.1  \n", "a.txt")).toEqual([
      { classId: 0, cx: 0.5, cy: 0.5, w: 0.2, h: 0.4 },
      { classId: 27, cx: 0.1, cy: 0.9, w: 0.05, h: 0.1 },
    ]);
    expect(parseLabels("", "empty.txt")).toEqual([]);
  });

  test.each([
    ["0 0.5 0.5 0.2", /a\.txt:2: expected 5 fields/],
    ["0 0.5 0.5 0.2 0.4 0.1 0.1", /a\.txt:2: expected 5 fields/],
    ["person 0.5 0.5 0.2 0.4", /a\.txt:2: class must be a non-negative integer/],
    ["1.5 0.5 0.5 0.2 0.4", /a\.txt:2: class must be a non-negative integer/],
    ["-1 0.5 0.5 0.2 0.4", /a\.txt:2: class must be a non-negative integer/],
    ["0 0.5 0.5 0.2 x", /a\.txt:2: cx cy w h must be numbers in 0\.\.1/],
    ["0 320 240 50 80", /a\.txt:2: cx cy w h must be numbers in 0\.\.1/],
    ["0 0.5 0.5 0 0.4", /a\.txt:2: box has zero width or height/],
  ])("rejects %p naming file and line", (bad, message) => {
    const parse = () => parseLabels(`0 0.5 0.5 0.2 0.4\n${bad}\n`, "a.txt");
    expect(parse).toThrow(ConfigError);
    expect(parse).toThrow(message);
  });
});

describe("label and image files", () => {
  test("toTruths turns normalised centre boxes into pixel corners", () => {
    expect(toTruths([{ classId: 3, cx: 0.5, cy: 0.25, w: 0.5, h: 0.5 }], 200, 100)).toEqual([{ classId: 3, box: [50, 0, 150, 50] }]);
  });

  test("readLabels finds <basename>.txt; no file means no labels (undefined)", async () => {
    expect(await readLabels("/images/cat.jpg", tmp)).toEqual([{ classId: 15, cx: 0.5, cy: 0.5, w: 0.5, h: 0.5 }]);
    expect(await readLabels("/images/dog.png", tmp)).toBeUndefined();
  });

  test("listImages keeps jpg/jpeg/png in name order and fails on none", () => {
    const dir = join(tmp, "images");
    mkdirSync(dir);
    for (const f of ["b.PNG", "a.jpg", "c.jpeg", "notes.txt", "d.gif"]) writeFileSync(join(dir, f), "");
    expect(listImages(dir).map((f) => f.slice(dir.length + 1))).toEqual(["a.jpg", "b.PNG", "c.jpeg"]);
    const empty = join(tmp, "empty");
    mkdirSync(empty);
    expect(() => listImages(empty)).toThrow(/no images \(\.jpg, \.jpeg, \.png\) in/);
  });

  test("requireDir names the flag for a missing value, a missing folder and a file", () => {
    expect(() => requireDir(undefined, "--images")).toThrow("--images DIR is required");
    expect(() => requireDir(join(tmp, "nope"), "--labels")).toThrow(/--labels: folder not found/);
    expect(() => requireDir(join(tmp, "cat.txt"), "--labels")).toThrow(/--labels: not a folder/);
    expect(requireDir(tmp, "--images")).toBe(tmp);
  });
});
