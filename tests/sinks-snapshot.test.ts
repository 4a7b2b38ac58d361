/** sink-snapshot: annotated JPEGs at events, decoded back and checked pixel by pixel. */
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as v from "valibot";
import sinkSnapshot from "../operators/sink-snapshot.ts";
import { drawText, fillRect, textWidth, type Raster } from "../runtime/media/draw.ts";
import { decodeJpeg, encodeJpeg, isJpeg } from "../runtime/media/jpeg.ts";
import type { Detection, Event, Frame } from "../runtime/core/message.ts";
import type { SinkInstance } from "../runtime/core/operator.ts";
import { captureLog, type CapturedLog } from "./support/pipeline.ts";

const tmp = mkdtempSync(join(tmpdir(), "fw-snap-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const W = 320;
const H = 240;
const GREY = 100;

function frame(seq: number, detections: Detection[], format: "rgb24" | "bgr24" = "rgb24"): Frame {
  return { kind: "frame", stream: "cam", seq, ts: 0, live: false, image: { width: W, height: H, format, data: new Uint8Array(W * H * 3).fill(GREY) }, detections, timings: {} };
}
const person = (box: Detection["box"], trackId?: number): Detection => ({ class: "person", classId: 0, score: 0.9, box, ...(trackId ? { trackId } : {}) });
const event = (seq: number, type: string, data: Record<string, unknown>): Event => ({ kind: "event", stream: "cam", seq, ts: 0, type, data });

async function makeSink(dir: string, extra: Record<string, unknown> = {}): Promise<{ sink: SinkInstance; log: CapturedLog }> {
  const log = captureLog("snap");
  const options = v.parse(sinkSnapshot.options, {
    dir,
    lines: [{ id: "door", from: [0, 0.9], to: [1, 0.9] }],
    zones: [{ id: "shelf", polygon: [[0.05, 0.05], [0.3, 0.05], [0.3, 0.3], [0.05, 0.3]] }],
    ...extra,
  });
  return { sink: await sinkSnapshot.create(options, { stage: "snap", pipeline: "test", log, signal: new AbortController().signal }), log };
}

/** RGB at (x, y) of a decoded RGBA image. */
const at = (r: Raster, x: number, y: number) => Array.from(r.data.subarray((y * r.width + x) * 4, (y * r.width + x) * 4 + 3));
/** Close to a colour despite JPEG loss. */
const near = (got: number[], want: number[], tol = 60) => got.every((c, i) => Math.abs(c - want[i]) <= tol);

test("a cross event gives a valid JPEG of its frame with boxes, the event's track in red, the line and the zone drawn", async () => {
  const dir = join(tmp, "cross");
  const { sink, log } = await makeSink(dir);
  await sink.process(frame(11, [person([100, 60, 160, 200], 4), person([200, 50, 260, 190], 9), person([20, 150, 60, 200])]));
  await sink.process(event(11, "cross", { line: "door", direction: "in", trackId: 9, class: "person" }));
  await sink.process(event(11, "counts", { lines: {} })); // not a snapshot type
  await sink.close!();

  expect(readdirSync(dir)).toEqual(["cam-000011-cross-door-9.jpg"]);
  const bytes = new Uint8Array(readFileSync(join(dir, "cam-000011-cross-door-9.jpg")));
  expect(Array.from(bytes.subarray(0, 3))).toEqual([0xff, 0xd8, 0xff]);
  expect(isJpeg(bytes)).toBe(true);
  const img = decodeJpeg(bytes);
  expect([img.width, img.height]).toEqual([W, H]);
  expect(near(at(img, 230, 120), [GREY, GREY, GREY], 20)).toBe(true); // inside a box: untouched
  expect(near(at(img, 201, 120), [255, 40, 40])).toBe(true); // track 9's left edge: red
  expect(near(at(img, 101, 120), [0, 220, 0])).toBe(true); // track 4: green
  expect(near(at(img, 21, 175), [170, 170, 170], 30)).toBe(true); // untracked: grey
  expect(near(at(img, 160, Math.round(0.9 * H)), [255, 40, 40])).toBe(true); // the event's line: red
  expect(near(at(img, Math.round(0.3 * W), 40), [255, 210, 0])).toBe(true); // the zone: yellow
  expect(log.text()).toContain(`1 snapshots in ${dir}`);
});

test("enter/exit events name their zone; bgr24 frames keep their colours", async () => {
  const dir = join(tmp, "zone");
  const { sink } = await makeSink(dir);
  const f = frame(3, [person([30, 30, 70, 90], 2)], "bgr24");
  // A blue patch in BGR order must come out blue.
  for (let y = 160; y < 200; y++) for (let x = 200; x < 240; x++) f.image.data.set([255, 0, 0], (y * W + x) * 3);
  await sink.process(f);
  await sink.process(event(3, "enter", { zone: "shelf", trackId: 2 }));
  await sink.process(event(3, "exit", { zone: "shelf", trackId: 2, dwellMs: 900 }));
  expect(readdirSync(dir).sort()).toEqual(["cam-000003-enter-shelf-2.jpg", "cam-000003-exit-shelf-2.jpg"]);
  const img = decodeJpeg(new Uint8Array(readFileSync(join(dir, "cam-000003-enter-shelf-2.jpg"))));
  expect(near(at(img, 220, 180), [0, 0, 255], 30)).toBe(true);
  expect(near(at(img, Math.round(0.3 * W), 50), [255, 40, 40])).toBe(true); // the entered zone: red
});

test("an event whose frame never reached the sink is an error, not a blank snapshot", async () => {
  const { sink } = await makeSink(join(tmp, "none"));
  await expect(sink.process(event(0, "cross", { line: "door", trackId: 1 }))).rejects.toThrow("no frame of stream cam seen before its cross event #0");
});

test("encode → decode round trip and text drawing", () => {
  const r: Raster = { width: 40, height: 20, data: new Uint8Array(40 * 20 * 4) };
  fillRect(r, 0, 0, 40, 20, [255, 255, 255]);
  drawText(r, 2, 2, "#42", [0, 0, 0], 2);
  expect(textWidth("#42", 2)).toBe(22);
  // The '#' glyph's top-left pixel is set, the gap after the last glyph is not.
  expect(at(r, 2, 2)).toEqual([0, 0, 0]);
  expect(at(r, 2 + 22, 2)).toEqual([255, 255, 255]);
  const back = decodeJpeg(encodeJpeg(r, 95));
  expect(near(at(back, 2, 2), [0, 0, 0], 80)).toBe(true);
  expect(near(at(back, 35, 15), [255, 255, 255], 10)).toBe(true);
});
