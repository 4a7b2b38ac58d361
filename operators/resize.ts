import * as v from "valibot";
import { derive, type Frame, type Letterbox } from "../runtime/core/message.ts";
import { defineOperator } from "../runtime/core/operator.ts";

const Options = v.strictObject({
  width: v.optional(v.pipe(v.number(), v.integer(), v.minValue(8), v.maxValue(4096)), 640),
  height: v.optional(v.pipe(v.number(), v.integer(), v.minValue(8), v.maxValue(4096)), 640),
  mode: v.optional(
    v.pipe(
      v.picklist(["letterbox", "stretch"]),
      v.description("letterbox keeps the aspect ratio and pads with grey 114; stretch fills the whole input."),
    ),
    "letterbox",
  ),
});

const PAD = 114 / 255;

/** Sampling tables for one source size: computed once, reused for every frame of that size. */
interface Plan {
  box: Letterbox;
  nw: number;
  nh: number;
  /** byte offsets of the left/right source pixel and the right weight, per output column */
  x0: Int32Array;
  x1: Int32Array;
  fx: Float32Array;
  /** byte offsets of the upper/lower source row and the lower weight, per output row */
  y0: Int32Array;
  y1: Int32Array;
  fy: Float32Array;
}

function axis(src: number, dst: number, stride: number) {
  const i0 = new Int32Array(dst);
  const i1 = new Int32Array(dst);
  const f = new Float32Array(dst);
  const ratio = src / dst;
  for (let d = 0; d < dst; d++) {
    // Pixel-centre alignment, as OpenCV's INTER_LINEAR (what YOLO models were trained with).
    const s = Math.min(Math.max((d + 0.5) * ratio - 0.5, 0), src - 1);
    const lo = Math.floor(s);
    i0[d] = lo * stride;
    i1[d] = Math.min(lo + 1, src - 1) * stride;
    f[d] = s - lo;
  }
  return { i0, i1, f };
}

export function makePlan(sw: number, sh: number, W: number, H: number, mode: "letterbox" | "stretch"): Plan {
  let nw = W;
  let nh = H;
  let padX = 0;
  let padY = 0;
  if (mode === "letterbox") {
    const r = Math.min(W / sw, H / sh);
    nw = Math.round(sw * r);
    nh = Math.round(sh * r);
    // As YOLOv5: round((pad - 0.1)); max() keeps -0 out when there is no pad.
    padX = Math.max(0, Math.round((W - nw) / 2 - 0.1));
    padY = Math.max(0, Math.round((H - nh) / 2 - 0.1));
  }
  const xs = axis(sw, nw, 3);
  const ys = axis(sh, nh, sw * 3);
  return { box: { scaleX: nw / sw, scaleY: nh / sh, padX, padY }, nw, nh, x0: xs.i0, x1: xs.i1, fx: xs.f, y0: ys.i0, y1: ys.i1, fy: ys.f };
}

/** Bilinear resize of packed 8-bit RGB/BGR into planar RGB float32 0..1 (NCHW, N=1). */
export function toTensor(src: Uint8Array, p: Plan, W: number, H: number, bgr: boolean): Float32Array {
  const out = new Float32Array(3 * W * H).fill(PAD);
  const plane = W * H;
  const [r, b] = bgr ? [2, 0] : [0, 2];
  const { x0, x1, fx, y0, y1, fy, nw, nh } = p;
  const k = 1 / 255;
  // Separable: each source row is interpolated across once (into rowA/rowB),
  // then output rows blend two of them; half the work of four taps per pixel.
  let rowA = new Float32Array(nw * 3);
  let rowB = new Float32Array(nw * 3);
  let ia = -1;
  let ib = -1;
  const across = (dst: Float32Array, row: number) => {
    for (let x = 0, i = 0; x < nw; x++, i += 3) {
      const a = row + x0[x];
      const c = row + x1[x];
      const w = fx[x];
      dst[i] = src[a] + (src[c] - src[a]) * w;
      dst[i + 1] = src[a + 1] + (src[c + 1] - src[a + 1]) * w;
      dst[i + 2] = src[a + 2] + (src[c + 2] - src[a + 2]) * w;
    }
  };
  for (let y = 0; y < nh; y++) {
    const ra = y0[y];
    const rb = y1[y];
    // Rows only move down: last row's lower source row is often this row's upper one.
    if (ra === ib && ra !== ia) [rowA, rowB, ia, ib] = [rowB, rowA, ib, ia];
    if (ra !== ia) across(rowA, (ia = ra));
    if (rb !== ib) across(rowB, (ib = rb));
    const wy = fy[y];
    let o = (y + p.box.padY) * W + p.box.padX;
    for (let i = 0; i < nw * 3; i += 3, o++) {
      const R = rowA[i + r];
      const G = rowA[i + 1];
      const B = rowA[i + b];
      out[o] = (R + (rowB[i + r] - R) * wy) * k;
      out[o + plane] = (G + (rowB[i + 1] - G) * wy) * k;
      out[o + 2 * plane] = (B + (rowB[i + b] - B) * wy) * k;
    }
  }
  return out;
}

/**
 * Letterboxes (or stretches) a decoded frame to the model input size and
 * attaches a CHW float32 tensor with the geometry needed to map boxes back.
 */
export default defineOperator({
  name: "resize",
  kind: "transform",
  description: "Letterbox or stretch rgb24/bgr24 frames to the model size as a CHW float32 tensor (0..1).",
  options: Options,
  create({ width, height, mode }) {
    const plans = new Map<string, Plan>();
    return {
      process(msg) {
        if (msg.kind !== "frame") return msg;
        const f: Frame = msg;
        const { image } = f;
        if (image.format === "jpeg") throw new Error("resize needs decoded rgb24/bgr24 frames, got jpeg");
        if (image.data.length !== image.width * image.height * 3) {
          throw new Error(`image is ${image.data.length} bytes, expected ${image.width}x${image.height}x3`);
        }
        const key = `${image.width}x${image.height}`;
        let plan = plans.get(key);
        if (!plan) plans.set(key, (plan = makePlan(image.width, image.height, width, height, mode)));
        return derive(f, {
          tensor: {
            dims: [1, 3, height, width],
            dtype: "float32",
            data: toTensor(image.data, plan, width, height, image.format === "bgr24"),
            letterbox: plan.box,
          },
        });
      },
    };
  },
});
