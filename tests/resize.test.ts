import { beforeAll, describe, expect, test } from "bun:test";
import { makePlan } from "../operators/resize.ts";
import type { Frame, Tensor } from "../runtime/core/message.ts";
import type { TransformInstance } from "../runtime/core/operator.ts";
import { makeFrame } from "./support/frames.ts";
import { makeTransform, step } from "./support/operators.ts";

const PAD = 114 / 255;

/** Channel c of tensor pixel (x, y), scaled back to 0..255. */
function px(t: Tensor, c: number, x: number, y: number): number {
  const [, , H, W] = t.dims;
  return t.data[c * W * H + y * W + x] * 255;
}

// Source R = x and G = y (up to 255) are linear, so bilinear sampling must reproduce them exactly.
const gradient = (x: number, y: number): [number, number, number] => [Math.min(x, 255), Math.min(y, 255), 7];

let letterbox: TransformInstance;
let stretch: TransformInstance;
beforeAll(async () => {
  letterbox = (await makeTransform("resize", { width: 640, height: 640, mode: "letterbox" })).instance;
  stretch = (await makeTransform("resize", { width: 640, height: 640, mode: "stretch" })).instance;
});

describe("resize", () => {
  let f: Frame;
  beforeAll(async () => {
    f = await step(letterbox, makeFrame(0, { width: 480, height: 360, fill: gradient }));
  });

  test("letterbox 480x360 → 640x640: scale 4/3, 80 px bands top and bottom", () => {
    const t = f.tensor!;
    expect(t.dims).toEqual([1, 3, 640, 640]);
    expect(t.dtype).toBe("float32");
    expect(t.data).toHaveLength(3 * 640 * 640);
    expect(t.letterbox.scaleX).toBeCloseTo(4 / 3, 10);
    expect(t.letterbox.scaleY).toBeCloseTo(4 / 3, 10);
    expect(t.letterbox.padX === 0).toBe(true);
    expect(t.letterbox.padY).toBe(80);
  });

  test("the bands are grey 114/255 in every channel, the picture is not", () => {
    const t = f.tensor!;
    for (const [x, y] of [[0, 0], [639, 79], [320, 40], [0, 560], [639, 639]]) {
      for (let c = 0; c < 3; c++) expect(t.data[c * 640 * 640 + y * 640 + x]).toBeCloseTo(PAD, 6);
    }
    // First and last picture rows: blue is the source's 7, not the pad.
    expect(px(t, 2, 320, 80)).toBeCloseTo(7, 3);
    expect(px(t, 2, 320, 559)).toBeCloseTo(7, 3);
  });

  test("pixels land where the geometry says (pixel-centre bilinear), in RGB order", () => {
    const t = f.tensor!;
    const r = 360 / 480; // source pixels per model pixel
    // Points whose source position stays inside the linear part (x, y < 255).
    for (const [ox, oy] of [[100, 200], [300, 400], [1, 81]]) {
      const sx = (ox + 0.5) * r - 0.5;
      const sy = (oy - 80 + 0.5) * r - 0.5;
      expect(px(t, 0, ox, oy)).toBeCloseTo(sx, 3);
      expect(px(t, 1, ox, oy)).toBeCloseTo(sy, 3);
      expect(px(t, 2, ox, oy)).toBeCloseTo(7, 3);
    }
    // Source pixel (240, 180), the image centre, sits at model (320.17, 320.17).
    expect(px(t, 0, 320, 320)).toBeCloseTo(239.875, 3);
  });

  test("a uniform image keeps its exact colour; bgr24 input is swapped to RGB", async () => {
    const rgb = await step(letterbox, makeFrame(1, { width: 480, height: 360, fill: () => [200, 100, 50] }));
    expect([px(rgb.tensor!, 0, 320, 320), px(rgb.tensor!, 1, 320, 320), px(rgb.tensor!, 2, 320, 320)].map(Math.round)).toEqual([200, 100, 50]);
    const bgrFrame = makeFrame(2, { width: 480, height: 360, fill: () => [200, 100, 50] });
    bgrFrame.image.format = "bgr24";
    const bgr = await step(letterbox, bgrFrame);
    expect([px(bgr.tensor!, 0, 320, 320), px(bgr.tensor!, 1, 320, 320), px(bgr.tensor!, 2, 320, 320)].map(Math.round)).toEqual([50, 100, 200]);
  });

  test("portrait input pads left and right instead", () => {
    const p = makePlan(360, 480, 640, 640, "letterbox");
    expect(p.box.padY === 0).toBe(true);
    expect(p.box.padX).toBe(80);
    expect(p.nw).toBe(480);
    expect(p.nh).toBe(640);
  });

  test("stretch fills the whole input: per-axis scale, no padding", async () => {
    const s = await step(stretch, makeFrame(3, { width: 480, height: 360, fill: gradient }));
    const t = s.tensor!;
    expect(t.letterbox.scaleX).toBeCloseTo(640 / 480, 10);
    expect(t.letterbox.scaleY).toBeCloseTo(640 / 360, 10);
    expect(t.letterbox.padX).toBe(0);
    expect(t.letterbox.padY).toBe(0);
    // No grey anywhere: corners carry the image (blue 7).
    for (const [x, y] of [[0, 0], [639, 0], [0, 639], [639, 639]]) expect(px(t, 2, x, y)).toBeCloseTo(7, 3);
  });

  test("bad input is a clear error", async () => {
    const short = makeFrame(4, { width: 480, height: 360 });
    short.image.data = short.image.data.subarray(0, 100);
    expect(() => letterbox.process(short)).toThrow("expected 480x360x3");
    const jpeg = makeFrame(5);
    jpeg.image.format = "jpeg";
    expect(() => letterbox.process(jpeg)).toThrow("jpeg");
  });
});
