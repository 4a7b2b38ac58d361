import { beforeAll, describe, expect, test } from "bun:test";
import { Letterboxer, letterboxScalar, makePlan, Normaliser, PAD as PAD_BYTE, toUnitFloats } from "../runtime/inference/letterbox.ts";
import { tensorPixels } from "../runtime/inference/pixel-tensor.ts";
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

  test("pixels land where the geometry says (pixel-centre bilinear, rounded to bytes), in RGB order", () => {
    const t = f.tensor!;
    const r = 360 / 480; // source pixels per model pixel
    // Points whose source position stays inside the linear part (x, y < 255): the exact value, rounded as cv2.resize rounds.
    for (const [ox, oy] of [[100, 200], [300, 400], [1, 81]]) {
      const sx = (ox + 0.5) * r - 0.5;
      const sy = (oy - 80 + 0.5) * r - 0.5;
      expect(Math.abs(px(t, 0, ox, oy) - sx)).toBeLessThanOrEqual(0.5 + 1e-4);
      expect(Math.abs(px(t, 1, ox, oy) - sy)).toBeLessThanOrEqual(0.5 + 1e-4);
      expect(px(t, 2, ox, oy)).toBeCloseTo(7, 3);
    }
    // Source pixel (240, 180), the image centre, sits at model (320.17, 320.17): 239.875 rounds to 240.
    expect(px(t, 0, 320, 320)).toBeCloseTo(240, 3);
  });

  test("the tensor keeps its values as bytes; data is byte / 255 in float32", () => {
    const t = f.tensor!;
    const bytes = tensorPixels(t)!;
    expect(bytes).toBeInstanceOf(Uint8Array);
    expect(bytes).toHaveLength(3 * 640 * 640);
    expect(bytes[0]).toBe(PAD_BYTE);
    for (const i of [0, 320 * 640 + 320, 2 * 640 * 640 + 100 * 640 + 5, bytes.length - 1]) expect(t.data[i]).toBe(Math.fround(bytes[i] / 255));
    // Read twice, computed once.
    expect(t.data).toBe(t.data);
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

  test("the SIMD kernel and the TypeScript kernel give the same bytes, at every scale and in both channel orders", () => {
    const lb = new Letterboxer();
    let seed = 7;
    const byte = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) & 255;
    const cases: [number, number, number, number, "letterbox" | "stretch"][] = [
      [480, 360, 640, 640, "letterbox"], // upscale: four output pixels per step
      [360, 480, 640, 640, "letterbox"], // portrait: bands left and right
      [1280, 720, 640, 640, "letterbox"], // downscale 1:2: two output pixels per step
      [1920, 1080, 640, 640, "letterbox"], // downscale 1:3: two per step
      [2560, 1440, 640, 640, "letterbox"], // 1:4: one pixel per step
      [810, 1080, 640, 640, "letterbox"],
      [640, 640, 640, 640, "letterbox"], // 1:1
      [100, 37, 320, 250, "stretch"], // width not a multiple of 16
      [33, 17, 64, 64, "letterbox"],
      [20, 9, 12, 12, "letterbox"], // narrower than one SIMD row: the TypeScript kernel alone
    ];
    for (const [sw, sh, W, H, mode] of cases) {
      const plan = makePlan(sw, sh, W, H, mode);
      const src = Uint8Array.from({ length: sw * sh * 3 }, byte);
      for (const bgr of [false, true]) {
        const ref = new Uint8Array(3 * W * H).fill(PAD_BYTE);
        letterboxScalar(src, plan, bgr, ref);
        const out = lb.run(src, plan, bgr);
        let diff = 0;
        for (let i = 0; i < ref.length; i++) if (out[i] !== ref[i]) diff++;
        expect(`${sw}x${sh} → ${W}x${H} ${mode}${bgr ? " bgr" : ""}: ${diff} bytes differ`).toBe(`${sw}x${sh} → ${W}x${H} ${mode}${bgr ? " bgr" : ""}: 0 bytes differ`);
      }
    }
    // Each frame gets its own buffer: the kernel's working memory is reused, its output is not.
    const plan = makePlan(480, 360, 640, 640, "letterbox");
    const a = lb.run(new Uint8Array(480 * 360 * 3).fill(10), plan, false);
    const b = lb.run(new Uint8Array(480 * 360 * 3).fill(20), plan, false);
    expect([a[320 * 640], b[320 * 640]]).toEqual([10, 20]);
  });

  test("bytes become float32 byte / 255, as NumPy's float32 division gives", () => {
    const bytes = Uint8Array.from({ length: 1000 }, (_, i) => (i * 37) & 255);
    const floats = new Normaliser().run(bytes);
    expect(floats).toHaveLength(1000);
    for (let i = 0; i < bytes.length; i++) if (floats[i] !== Math.fround(bytes[i] / 255)) throw new Error(`byte ${bytes[i]}: ${floats[i]}`);
    expect(Array.from(toUnitFloats(new Uint8Array([0, 51, 255])))).toEqual([0, Math.fround(0.2), 1]);
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
