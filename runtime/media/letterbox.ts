/**
 * Letterboxing packed 8-bit pixels (RGB, or RGBA as a canvas gives them)
 * into a planar float32 0..1 model input, for code that runs where the
 * inference thread does not: the browser page (web/browser/), bundled as
 * it is. Pure TypeScript, no runtime APIs, no imports but types.
 *
 * The geometry and arithmetic are those of the `resize` operator: YOLOv5's
 * letterbox (scale to fit, centred between grey 114 bands, YOLOv5's
 * padding rounding) and OpenCV's INTER_LINEAR in fixed point (11-bit
 * weights, pixel-centre alignment, rounded to a byte), then byte / 255. The
 * same pixels in give the same tensor the server feeds its model.
 */
import type { Letterbox } from "../core/message.ts";

/** Grey of the letterbox bands (YOLOv5's), as a byte. */
export const PAD = 114;
const BITS = 11;
const ONE = 1 << BITS;

/** A letterboxed model input: 1×3×H×W float32 values 0..1 (R, G, B planes) and how the image was fitted. */
export interface LetterboxedInput {
  data: Float32Array;
  dims: [1, 3, number, number];
  letterbox: Letterbox;
}

/** Where each output column (or row) samples the source: two source offsets and the second one's weight (0..2048). */
interface Axis {
  i0: Int32Array;
  i1: Int32Array;
  w: Int32Array;
}

function axis(src: number, dst: number, stride: number): Axis {
  const i0 = new Int32Array(dst);
  const i1 = new Int32Array(dst);
  const w = new Int32Array(dst);
  const ratio = src / dst;
  for (let d = 0; d < dst; d++) {
    // Pixel-centre alignment and edge clamping, as OpenCV's INTER_LINEAR.
    const s = Math.min(Math.max((d + 0.5) * ratio - 0.5, 0), src - 1);
    const lo = Math.floor(s);
    i0[d] = lo * stride;
    i1[d] = Math.min(lo + 1, src - 1) * stride;
    w[d] = Math.round((s - lo) * ONE);
  }
  return { i0, i1, w };
}

/**
 * How a `sw`×`sh` image fits into `W`×`H` keeping its aspect ratio (YOLOv5's
 * rounding), and the size of the picture inside.
 * @example
 * fitLetterbox(480, 360, 640, 640); // { box: { scaleX: 1.333, scaleY: 1.333, padX: 0, padY: 80 }, nw: 640, nh: 480 }
 */
export function fitLetterbox(sw: number, sh: number, W: number, H: number): { box: Letterbox; nw: number; nh: number } {
  if (!(sw > 0 && sh > 0 && W > 0 && H > 0)) throw new RangeError(`letterbox: sizes must be positive, got ${sw}x${sh} into ${W}x${H}`);
  const r = Math.min(W / sw, H / sh);
  const nw = Math.round(sw * r);
  const nh = Math.round(sh * r);
  // As YOLOv5: round(pad - 0.1); max() keeps -0 out when there is no pad.
  const padX = Math.max(0, Math.round((W - nw) / 2 - 0.1));
  const padY = Math.max(0, Math.round((H - nh) / 2 - 0.1));
  return { box: { scaleX: nw / sw, scaleY: nh / sh, padX, padY }, nw, nh };
}

/** float32 byte/255 for every byte value. */
const UNIT = Float32Array.from({ length: 256 }, (_, i) => i / 255);

/**
 * Letterboxes packed pixels (`channels` bytes per pixel, R G B first; a
 * 4th byte such as a canvas's alpha is ignored) into a new 1×3×H×W float32
 * model input.
 * @throws RangeError when `pixels` is shorter than width × height × channels.
 * @example
 * const rgba = ctx.getImageData(0, 0, w, h).data; // a canvas
 * const input = letterboxPixels(rgba, w, h, 4, 640, 640);
 * new ort.Tensor("float32", input.data, input.dims);
 */
export function letterboxPixels(pixels: Uint8Array | Uint8ClampedArray, sw: number, sh: number, channels: 3 | 4, W: number, H: number): LetterboxedInput {
  if (pixels.length < sw * sh * channels) throw new RangeError(`letterbox: ${pixels.length} bytes for a ${sw}x${sh} image of ${channels} channels`);
  const { box, nw, nh } = fitLetterbox(sw, sh, W, H);
  const plane = W * H;
  const out = new Float32Array(3 * plane).fill(UNIT[PAD]);
  const xs = axis(sw, nw, channels);
  const ys = axis(sh, nh, sw * channels);
  // Separable: each source row is interpolated across once (rows A and B), then output rows blend two of them.
  let A = new Int32Array(nw * 3);
  let B = new Int32Array(nw * 3);
  let ia = -1;
  let ib = -1;
  const across = (dst: Int32Array, row: number) => {
    for (let x = 0; x < nw; x++) {
      const a = row + xs.i0[x];
      const c = row + xs.i1[x];
      const w1 = xs.w[x];
      const w0 = ONE - w1;
      dst[x] = pixels[a] * w0 + pixels[c] * w1;
      dst[x + nw] = pixels[a + 1] * w0 + pixels[c + 1] * w1;
      dst[x + 2 * nw] = pixels[a + 2] * w0 + pixels[c + 2] * w1;
    }
  };
  const round = 1 << (2 * BITS - 1);
  for (let y = 0; y < nh; y++) {
    const ra = ys.i0[y];
    const rb = ys.i1[y];
    // Rows only move down: the last row's lower source row is often this row's upper one.
    if (ra === ib && ra !== ia) {
      const t = A;
      A = B;
      B = t;
      ib = ia;
      ia = ra;
    }
    if (ra !== ia) across(A, (ia = ra));
    if (rb !== ib) across(B, (ib = rb));
    const w1 = ys.w[y];
    const w0 = ONE - w1;
    const o = (y + box.padY) * W + box.padX;
    for (let c = 0; c < 3; c++) {
      const base = o + c * plane;
      const off = c * nw;
      for (let x = 0; x < nw; x++) out[base + x] = UNIT[(A[off + x] * w0 + B[off + x] * w1 + round) >> (2 * BITS)];
    }
  }
  return { data: out, dims: [1, 3, H, W], letterbox: box };
}
