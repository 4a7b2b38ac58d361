import { afterEach, beforeEach, describe, expect, spyOn, test } from "bun:test";
import { join } from "node:path";
import { ConfigError } from "../runtime/core/errors.ts";
import { evaluateMot, parseMot, runMotEval, type MotMetrics } from "../runtime/eval/mot.ts";

const dir = join(import.meta.dir, "fixtures", "mot");
const at = (name: string) => join(dir, name);

async function evalFiles(gt: string, pred: string, iou?: number): Promise<MotMetrics> {
  const read = async (f: string) => parseMot(await Bun.file(at(f)).text(), f);
  return evaluateMot(await read(gt), await read(pred), iou);
}

// gt.txt: two objects, four frames, 8 boxes.
describe("CLEAR-MOT and IDF1 on hand-built files", () => {
  test("perfect tracking: MOTA = IDF1 = MOTP = 1", async () => {
    const m = await evalFiles("gt.txt", "perfect.txt");
    expect(m).toMatchObject({ frames: 4, gt: 8, pred: 8, tp: 8, fp: 0, fn: 0, idsw: 0, mota: 1, motp: 1, idf1: 1, mt: 2, ml: 0, gtIds: 2, predIds: 2 });
  });

  test("one ID switch: MOTA = 1 − 1/8, IDF1 = 2·6 / (8 + 8)", async () => {
    // Object 1 is id 7 for two frames, then id 8: the best global mapping keeps 2 of its 4 boxes.
    const m = await evalFiles("gt.txt", "switch.txt");
    expect(m).toMatchObject({ tp: 8, fp: 0, fn: 0, idsw: 1, predIds: 3 });
    expect(m.mota).toBeCloseTo(7 / 8, 12);
    expect(m.idf1).toBeCloseTo(12 / 16, 12);
    expect(m.idp).toBeCloseTo(6 / 8, 12);
    expect(m.idr).toBeCloseTo(6 / 8, 12);
  });

  test("false positives, misses and a box below the IoU threshold", async () => {
    // Frame 2 has a stray box (FP); object 1 is missed in frame 4 (FN); object 2's frame-4 box
    // overlaps by IoU 0.25 < 0.5 (one FP and one FN); object 1's frame-3 box has IoU 90/110.
    const m = await evalFiles("gt.txt", "fpfn.txt");
    expect(m).toMatchObject({ gt: 8, pred: 8, tp: 6, fp: 2, fn: 2, idsw: 0 });
    expect(m.mota).toBeCloseTo(1 - 4 / 8, 12);
    expect(m.motp).toBeCloseTo((5 + 9 / 11) / 6, 12);
    expect(m.idf1).toBeCloseTo((2 * 6) / (8 + 8), 12);
    expect(m.recall).toBeCloseTo(6 / 8, 12);
    expect(m.precision).toBeCloseTo(6 / 8, 12);
    // At IoU 0.2 the shifted box matches too.
    const loose = await evalFiles("gt.txt", "fpfn.txt", 0.2);
    expect(loose).toMatchObject({ tp: 7, fp: 1, fn: 1 });
  });

  test("last frame's correspondence wins over a better-overlapping newcomer", async () => {
    // Frame 2: id 5 still overlaps (IoU 2/3), id 6 overlaps perfectly: keeping 5 is no ID switch, 6 is an FP.
    const m = await evalFiles("gt-keep.txt", "pred-keep.txt");
    expect(m).toMatchObject({ tp: 2, fp: 1, fn: 0, idsw: 0 });
    expect(m.mota).toBeCloseTo(0.5, 12);
    expect(m.motp).toBeCloseTo((1 + 2 / 3) / 2, 12);
    expect(m.idf1).toBeCloseTo(4 / 5, 12);
  });

  test("predictions on distractors are ignored, not false positives", async () => {
    const m = await evalFiles("gt-distractor.txt", "pred-distractor.txt");
    expect(m).toMatchObject({ gt: 2, pred: 2, tp: 2, fp: 0, fn: 0, mota: 1, idf1: 1, gtIds: 1 });
  });
});

describe("input errors", () => {
  test("malformed lines and repeated ids name file:line", () => {
    expect(() => parseMot("1,1,0,0,10,10\n1,2,x,0,10,10\n", "a.txt")).toThrow(/^a\.txt:2: expected comma-separated numbers/);
    expect(() => parseMot("1,1,0,0,10\n", "a.txt")).toThrow(/a\.txt:1:/);
    expect(() => parseMot("0,1,0,0,10,10\n", "a.txt")).toThrow(/a\.txt:1: frame must be an integer >= 1/);
    expect(() => parseMot("1,1.5,0,0,10,10\n", "a.txt")).toThrow(/a\.txt:1: id must be/);
    expect(() => parseMot("1,1,0,0,-3,10\n", "a.txt")).toThrow(/a\.txt:1: width and height/);
    expect(() => parseMot("1,1,0,0,10,10\n1,2,0,0,10,10\n", "a.txt")).not.toThrow();
  });
});

describe("runMotEval (bun run eval mot)", () => {
  let logs: string[] = [];
  let spy: ReturnType<typeof spyOn>;
  beforeEach(() => {
    logs = [];
    spy = spyOn(console, "log").mockImplementation((...a: unknown[]) => void logs.push(a.join(" ")));
  });
  afterEach(() => spy.mockRestore());

  test("prints a table and ends with one JSON line", async () => {
    expect(await runMotEval(["--gt", at("gt.txt"), "--pred", at("switch.txt")])).toBe(0);
    const out = logs.join("\n").trimEnd().split("\n");
    expect(out[0]).toContain("MOTA");
    const last = JSON.parse(out.at(-1)!);
    expect(last).toMatchObject({ frames: 4, mota: 0.875, idf1: 0.75, idsw: 1, fp: 0, fn: 0 });
    expect(out.filter((l) => l.startsWith("{"))).toHaveLength(1);
  });

  test("bad input is a ConfigError naming file and line", async () => {
    const pred = at("perfect.txt");
    await expect(runMotEval(["--gt", at("bad.txt"), "--pred", pred])).rejects.toThrow(ConfigError);
    await expect(runMotEval(["--gt", at("bad.txt"), "--pred", pred])).rejects.toThrow(`${at("bad.txt")}:3: expected comma-separated numbers`);
    await expect(runMotEval(["--gt", at("dup.txt"), "--pred", pred])).rejects.toThrow(`${at("dup.txt")}:3: id 1 appears twice in frame 1`);
    await expect(runMotEval(["--gt", at("missing.txt"), "--pred", pred])).rejects.toThrow(/missing\.txt: cannot read/);
    await expect(runMotEval(["--gt", at("gt.txt")])).rejects.toThrow(/--gt and --pred are required/);
    await expect(runMotEval(["--gt", at("gt.txt"), "--pred", pred, "--iou", "2"])).rejects.toThrow(/--iou/);
    await expect(runMotEval(["--gt", at("gt.txt"), "--pred", pred, "--nope"])).rejects.toThrow(ConfigError);
    // Only a distractor in the ground truth: nothing to evaluate.
    await expect(runMotEval(["--gt", at("only-distractor.txt"), "--pred", pred])).rejects.toThrow(`${at("only-distractor.txt")}: the ground truth has no boxes`);
    expect(logs).toEqual([]);
  });
});
