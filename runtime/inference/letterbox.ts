/**
 * Letterboxing packed 8-bit RGB/BGR frames into planar (CHW) uint8 model
 * input, and turning such bytes into the float32 0..1 values a model reads.
 *
 * The arithmetic is OpenCV's INTER_LINEAR in fixed point (11-bit weights,
 * pixel-centre alignment, rounded to uint8), which is what YOLO models are
 * trained and evaluated with (`cv2.resize` then `/255`). It runs as a
 * WebAssembly SIMD kernel (assembled at start by wasm.ts) and, where the
 * runtime has no WebAssembly SIMD, as plain TypeScript with the same
 * integer arithmetic: both give the same bytes.
 */
import type { Letterbox } from "../core/message.ts";
import { assemble, I32, op, V128, type WasmFunction } from "./wasm.ts";

/** Grey of the letterbox bands (YOLOv5's). */
export const PAD = 114;
const BITS = 11;
const ONE = 1 << BITS;

/** Sampling tables for one source size and one model size: made once, used for every frame of that size. */
export interface LetterboxPlan {
  box: Letterbox;
  /** Source size. */
  sw: number;
  sh: number;
  /** Model input size. */
  W: number;
  H: number;
  /** Size of the picture inside the model input. */
  nw: number;
  nh: number;
  /** Per output column: byte offsets of the left and right source pixels in a row, and the right one's weight (0..2048). */
  x0: Int32Array;
  x1: Int32Array;
  wx: Int32Array;
  /** Per output row: byte offsets of the upper and lower source rows, and the lower one's weight (0..2048). */
  y0: Int32Array;
  y1: Int32Array;
  wy: Int32Array;
}

function axis(src: number, dst: number, stride: number) {
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
 * The plan for fitting a `sw`×`sh` image into `W`×`H`: letterbox keeps the
 * aspect ratio and centres the picture between grey bands (YOLOv5's
 * rounding); stretch fills the whole input.
 * @example
 * makePlan(480, 360, 640, 640, "letterbox").box; // { scaleX: 1.333, scaleY: 1.333, padX: 0, padY: 80 }
 */
export function makePlan(sw: number, sh: number, W: number, H: number, mode: "letterbox" | "stretch"): LetterboxPlan {
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
  return { box: { scaleX: nw / sw, scaleY: nh / sh, padX, padY }, sw, sh, W, H, nw, nh, x0: xs.i0, x1: xs.i1, wx: xs.w, y0: ys.i0, y1: ys.i1, wy: ys.w };
}

/**
 * The TypeScript kernel (used where WebAssembly SIMD is missing, and as the
 * reference in tests): the same fixed-point arithmetic as the SIMD one.
 * `out` (3×W×H) must already hold the grey bands; only the picture is written.
 */
export function letterboxScalar(src: Uint8Array, p: LetterboxPlan, bgr: boolean, out: Uint8Array): void {
  const { x0, x1, wx, y0, y1, wy, nw, nh, W, H } = p;
  const plane = W * H;
  const r = bgr ? 2 : 0;
  const b = bgr ? 0 : 2;
  let A = new Int32Array(nw * 3);
  let B = new Int32Array(nw * 3);
  let ia = -1;
  let ib = -1;
  const across = (dst: Int32Array, row: number) => {
    for (let x = 0; x < nw; x++) {
      const a = row + x0[x];
      const c = row + x1[x];
      const w = wx[x];
      const w0 = ONE - w;
      dst[x] = src[a + r] * w0 + src[c + r] * w;
      dst[x + nw] = src[a + 1] * w0 + src[c + 1] * w;
      dst[x + 2 * nw] = src[a + b] * w0 + src[c + b] * w;
    }
  };
  const round = 1 << (2 * BITS - 1);
  for (let y = 0; y < nh; y++) {
    const ra = y0[y];
    const rb = y1[y];
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
    const w1 = wy[y];
    const w0 = ONE - w1;
    const o = (y + p.box.padY) * W + p.box.padX;
    for (let c = 0; c < 3; c++) {
      const base = o + c * plane;
      const off = c * nw;
      for (let x = 0; x < nw; x++) out[base + x] = (A[off + x] * w0 + B[off + x] * w1 + round) >> (2 * BITS);
    }
  }
}

/** Fills the bands of a fresh 3×W×H output with the pad grey. */
function fillBands(out: Uint8Array, p: LetterboxPlan): void {
  const { W, H, nw, nh } = p;
  const { padX, padY } = p.box;
  if (nw === W && nh === H) return;
  for (let c = 0; c < 3; c++) {
    const plane = c * W * H;
    out.fill(PAD, plane, plane + padY * W);
    out.fill(PAD, plane + (padY + nh) * W, plane + W * H);
    if (nw === W) continue;
    for (let y = padY; y < padY + nh; y++) {
      out.fill(PAD, plane + y * W, plane + y * W + padX);
      out.fill(PAD, plane + y * W + padX + nw, plane + (y + 1) * W);
    }
  }
}

// ---- The WebAssembly SIMD kernels ----------------------------------------

const { get, set, tee, i32 } = op;
const shl2 = [i32(2), op.shl];

/**
 * across(src, x0, w, nw, dst, stride, mask): one source row (`src` = its
 * first byte) into planar int32 R, G, B rows (`stride` bytes apart) at
 * `dst`, one output pixel at a time: the 8 bytes at its left source pixel,
 * swizzled to R0 R1 G0 G1 B0 B1 (RGB or BGR order by `mask`), widened to
 * int16 and dot-multiplied with its weights [w0 w1 w0 w1 w0 w1 0 0]: R, G
 * and B in one instruction. Any scale.
 */
const across: WasmFunction = {
  name: "across",
  params: 7,
  // 7 end, 8 stride×2, 9 mask, 10 v
  locals: [I32, I32, V128, V128],
  body: [
    [get(5), get(5), op.add, set(8)],
    [get(4), get(3), shl2, op.add, set(7)],
    [get(6), op.v128Load(), set(9)],
    op.loop,
    [get(0), get(1), op.load(), op.add, op.load64Zero(), get(9), op.swizzle, op.i16x8ExtendLowU8, get(2), op.v128Load(), op.i32x4DotI16, set(10)],
    [get(4), get(10), op.store32Lane(0)],
    [get(4), get(5), op.add, get(10), op.store32Lane(1)],
    [get(4), get(8), op.add, get(10), op.store32Lane(2)],
    [get(1), i32(4), op.add, set(1)],
    [get(2), i32(16), op.add, set(2)],
    [get(4), i32(4), op.add, tee(4), get(7), op.ltU, op.brIf(0)],
    op.end,
  ],
};

/**
 * across4(src, base, masks, w, groups, dst, stride): the same for four
 * output pixels at a time, where their source pixels lie within 16 bytes
 * (scales up to 1:1): one load, two swizzles (R and G pairs, B pairs), three
 * dot products with [wa0 wa1 wb0 wb1 wc0 wc1 wd0 wd1], three stores.
 */
const across4: WasmFunction = {
  name: "across4",
  params: 7,
  // 7 end, 8 stride×2, 9 v, 10 w, 11 s
  locals: [I32, I32, V128, V128, V128],
  body: [
    [get(6), get(6), op.add, set(8)],
    [get(5), get(4), i32(4), op.shl, op.add, set(7)],
    op.loop,
    [get(0), get(1), op.load(), op.add, op.v128Load(), set(9)],
    [get(3), op.v128Load(), set(10)],
    [get(9), get(2), op.v128Load(), op.swizzle, set(11)],
    [get(5), get(11), op.i16x8ExtendLowU8, get(10), op.i32x4DotI16, op.v128Store()],
    [get(5), get(6), op.add, get(11), op.i16x8ExtendHighU8, get(10), op.i32x4DotI16, op.v128Store()],
    [get(5), get(8), op.add, get(9), get(2), op.v128Load(16), op.swizzle, op.i16x8ExtendLowU8, get(10), op.i32x4DotI16, op.v128Store()],
    [get(1), i32(4), op.add, set(1)],
    [get(2), i32(32), op.add, set(2)],
    [get(3), i32(16), op.add, set(3)],
    [get(5), i32(16), op.add, tee(5), get(7), op.ltU, op.brIf(0)],
    op.end,
  ],
};

/**
 * across2(src, base, masks, w, groups, dst, stride): two output pixels at a
 * time, where their source pixels lie within 16 bytes (downscales to 1:3,
 * e.g. 1280x720 or 1920x1080 to 640): one load, two swizzles, two dot
 * products with [wa0 wa1 wb0 wb1 wa0 wa1 wb0 wb1] (R and G pairs, B pair),
 * three 8-byte stores.
 */
const across2: WasmFunction = {
  name: "across2",
  params: 7,
  // 7 end, 8 stride×2, 9 v, 10 w, 11 rg
  locals: [I32, I32, V128, V128, V128],
  body: [
    [get(6), get(6), op.add, set(8)],
    [get(5), get(4), i32(3), op.shl, op.add, set(7)],
    op.loop,
    [get(0), get(1), op.load(), op.add, op.v128Load(), set(9)],
    [get(3), op.v128Load(), set(10)],
    [get(9), get(2), op.v128Load(), op.swizzle, op.i16x8ExtendLowU8, get(10), op.i32x4DotI16, set(11)],
    [get(5), get(11), op.store64Lane(0)],
    [get(5), get(6), op.add, get(11), op.store64Lane(1)],
    [get(5), get(8), op.add, get(9), get(2), op.v128Load(16), op.swizzle, op.i16x8ExtendLowU8, get(10), op.i32x4DotI16, op.store64Lane(0)],
    [get(1), i32(4), op.add, set(1)],
    [get(2), i32(32), op.add, set(2)],
    [get(3), i32(16), op.add, set(3)],
    [get(5), i32(8), op.add, tee(5), get(7), op.ltU, op.brIf(0)],
    op.end,
  ],
};

/** blend(a, b, n, w1, out): one output row of one channel, (a×(2048−w1) + b×w1) >> 22 rounded, 16 bytes at a time. */
const chunk = (offset: number) => [
  [get(0), get(5), op.add, op.v128Load(offset), get(7), op.i32x4Mul],
  [get(1), get(5), op.add, op.v128Load(offset), get(8), op.i32x4Mul, op.i32x4Add],
  [get(9), op.i32x4Add, i32(2 * BITS), op.i32x4ShrS],
];
const blend: WasmFunction = {
  name: "blend",
  params: 5,
  // 5 x×4 (bytes into the int32 rows), 6 last x, 7 w0, 8 w1, 9 rounding, 10 x
  locals: [I32, I32, V128, V128, V128, I32],
  body: [
    [i32(ONE), get(3), op.sub, op.i32x4Splat, set(7)],
    [get(3), op.i32x4Splat, set(8)],
    [i32(1 << (2 * BITS - 1)), op.i32x4Splat, set(9)],
    [get(2), i32(16), op.sub, set(6)],
    [i32(0), set(10)],
    op.loop,
    // The last 16 may overlap the previous 16 (rows whose width is not a multiple of 16): same values written twice.
    [get(10), get(6), op.gtS, op.if, get(6), set(10), op.end],
    [get(10), shl2, set(5)],
    [get(4), get(10), op.add],
    chunk(0),
    chunk(16),
    op.i16x8NarrowI32S,
    chunk(32),
    chunk(48),
    op.i16x8NarrowI32S,
    op.i8x16NarrowI16U,
    op.v128Store(),
    [get(10), get(6), op.ne, op.if, get(10), i32(16), op.add, set(10), op.br(1), op.end],
    op.end,
  ],
};

/** Fields of the descriptor `letterbox` reads (i32 each, in this order). */
const FIELDS = ["src", "x0", "w", "nw", "y0", "y1", "wy", "nh", "rowA", "rowB", "o0", "W", "plane", "mask", "stride", "groups", "base", "masks", "w4", "pairs"] as const;
type Field = (typeof FIELDS)[number];
const field = (f: Field) => [get(0), op.load(FIELDS.indexOf(f) * 4)];

/**
 * letterbox(desc): every picture row, from the descriptor at `desc`. Each
 * source row is interpolated across once (rows only move down, so the last
 * output row's lower source row is often this one's upper row), then three
 * blends write the row's R, G and B planes.
 */
const rows: WasmFunction = {
  name: "letterbox",
  params: 1,
  // 1 y, 2 ra, 3 rb, 4 ia, 5 ib, 6 t, 7 w1, 8 o, 9 A, 10 B, 11 groups of 4 (0: none), 12 stride, 13 plane, 14 nw, 15 groups of 2 (0: none)
  locals: Array<number>(15).fill(I32),
  body: [
    [i32(-1), set(4), i32(-1), set(5), i32(0), set(1)],
    [field("rowA"), set(9), field("rowB"), set(10), field("groups"), set(11), field("stride"), set(12), field("plane"), set(13), field("nw"), set(14), field("pairs"), set(15)],
    op.loop,
    [field("y0"), get(1), shl2, op.add, op.load(), set(2)],
    [field("y1"), get(1), shl2, op.add, op.load(), set(3)],
    [get(2), get(5), op.eq, get(2), get(4), op.ne, op.and, op.if],
    [get(9), set(6), get(10), set(9), get(6), set(10), get(4), set(6), get(5), set(4), get(6), set(5), op.end],
    ...(
      [
        [2, 9, 4],
        [3, 10, 5],
      ] as const
    ).map(([r, dst, held]) => [
      [get(r), get(held), op.ne, op.if],
      [get(11), op.if],
      [field("src"), get(r), op.add, field("base"), field("masks"), field("w4"), get(11), get(dst), get(12), op.call(1)],
      op.else,
      [get(15), op.if],
      [field("src"), get(r), op.add, field("base"), field("masks"), field("w4"), get(15), get(dst), get(12), op.call(2)],
      op.else,
      [field("src"), get(r), op.add, field("x0"), field("w"), get(14), get(dst), get(12), field("mask"), op.call(0)],
      op.end,
      op.end,
      [get(r), set(held), op.end],
    ]),
    [field("wy"), get(1), shl2, op.add, op.load(), set(7)],
    [field("o0"), get(1), field("W"), op.mul, op.add, set(8)],
    [get(9), get(10), get(14), get(7), get(8), op.call(3)],
    [get(9), get(12), op.add, get(10), get(12), op.add, get(14), get(7), get(8), get(13), op.add, op.call(3)],
    [get(9), get(12), i32(1), op.shl, op.add, get(10), get(12), i32(1), op.shl, op.add, get(14), get(7), get(8), get(13), i32(1), op.shl, op.add, op.call(3)],
    [get(1), i32(1), op.add, tee(1), field("nh"), op.ltS, op.brIf(0)],
    op.end,
  ],
};

/** normalise(src, dst, n): n bytes (a multiple of 16) to float32 byte/255, correctly rounded as NumPy's float32 division. */
const quarter = (widen: number[], half: number[], offset: number) =>
  [get(1), get(4), widen, half, op.f32x4ConvertI32S, get(5), op.f32x4Div, op.v128Store(offset)];
const normalise: WasmFunction = {
  name: "normalise",
  params: 3,
  // 3 end, 4 v, 5 255
  locals: [I32, V128, V128],
  body: [
    [op.f32(255), op.f32x4Splat, set(5)],
    [get(0), get(2), op.add, set(3)],
    op.loop,
    [get(0), op.v128Load(), set(4)],
    quarter(op.i16x8ExtendLowU8, op.i32x4ExtendLowU16, 0),
    quarter(op.i16x8ExtendLowU8, op.i32x4ExtendHighU16, 16),
    quarter(op.i16x8ExtendHighU8, op.i32x4ExtendLowU16, 32),
    quarter(op.i16x8ExtendHighU8, op.i32x4ExtendHighU16, 48),
    [get(1), i32(64), op.add, set(1)],
    [get(0), i32(16), op.add, tee(0), get(3), op.ltU, op.brIf(0)],
    op.end,
  ],
};

interface Exports {
  memory: WebAssembly.Memory;
  letterbox(desc: number): void;
  normalise(src: number, dst: number, n: number): void;
}

let module: WebAssembly.Module | null | undefined;

/** The compiled kernels, or null where the runtime has no WebAssembly SIMD (then the TypeScript kernels run). */
function kernels(): Exports | null {
  if (module === undefined) {
    const bytes = assemble([across, across4, across2, blend, rows, normalise]);
    module = typeof WebAssembly === "object" && WebAssembly.validate(bytes) ? new WebAssembly.Module(bytes) : null;
  }
  return module ? (new WebAssembly.Instance(module).exports as unknown as Exports) : null;
}

const align = (n: number) => (n + 15) & ~15;

/** Grows `mem` to at least `bytes`. */
function reserve(mem: WebAssembly.Memory, bytes: number): void {
  const need = Math.ceil(bytes / 65536) - mem.buffer.byteLength / 65536;
  if (need > 0) mem.grow(need);
}

/** The swizzle masks: R0 R1 G0 G1 B0 B1 from R G B R G B (or B G R B G R); 16 and up give 0. */
const MASK_RGB = [0, 3, 1, 4, 2, 5, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16];
const MASK_BGR = [2, 5, 1, 4, 0, 3, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16];

/**
 * Letterboxes frames into fresh planar uint8 buffers, reusing its working
 * memory (tables, rows, the source and output areas) from frame to frame.
 * One per thread or operator instance; not re-entrant (calls are synchronous).
 * @example
 * const lb = new Letterboxer();
 * const plan = makePlan(480, 360, 640, 640, "letterbox");
 * const chw = lb.run(frame.image.data, plan, false); // Uint8Array(3 × 640 × 640), RGB planes
 */
export class Letterboxer {
  private k = kernels();
  private current?: LetterboxPlan;
  /** Descriptor fields, by name; the descriptor sits at byte 0 of the kernel's memory. */
  private at: Record<Field, number> = Object.fromEntries(FIELDS.map((f) => [f, 0])) as Record<Field, number>;
  /** Where the RGB and BGR variants of the masks lie. */
  private masks = { rgb: 0, bgr: 0 };

  /** "wasm-simd" or "scalar": which kernel runs. */
  get kernel(): string {
    return this.k ? "wasm-simd" : "scalar";
  }

  /** `src` (packed sw×sh×3) letterboxed into a new 3×W×H buffer of R, G and B planes. */
  run(src: Uint8Array, p: LetterboxPlan, bgr: boolean): Uint8Array {
    const size = 3 * p.W * p.H;
    const k = this.k;
    if (!k || p.nw < 16) {
      const out = new Uint8Array(size);
      fillBands(out, p);
      letterboxScalar(src, p, bgr, out);
      return out;
    }
    if (this.current !== p) this.setUp(k, p);
    const a = this.at;
    const i32s = new Int32Array(k.memory.buffer, 0, FIELDS.length);
    i32s[FIELDS.indexOf("mask")] = bgr ? 16 * (FIELDS.length + 1) : 16 * FIELDS.length;
    i32s[FIELDS.indexOf("masks")] = bgr ? this.masks.bgr : this.masks.rgb;
    const heap = new Uint8Array(k.memory.buffer);
    heap.set(src, a.src);
    k.letterbox(0);
    const out = a.o0 - (p.box.padY * p.W + p.box.padX);
    return heap.slice(out, out + size);
  }

  /** Lays out the plan's tables and areas in the kernel's memory; the bands are filled once, as frames never write them. */
  private setUp(k: Exports, p: LetterboxPlan): void {
    const { nw, nh, W, H } = p;
    const a = this.at;
    // Four output pixels per step where each group's source pixels (and right neighbours) lie within 16 bytes
    // (upscales), else two (downscales to 1:3), else one.
    const fitsIn16 = (size: number) => {
      for (let x = 0; x < nw; x += size) if (p.x0[Math.min(nw - 1, x + size - 1)] - p.x0[x] + 6 > 16) return false;
      return true;
    };
    const size = fitsIn16(4) ? 4 : fitsIn16(2) ? 2 : 0;
    const groups = size ? Math.ceil(nw / size) : 0;
    let end = 16 * (FIELDS.length + 2);
    const take = (bytes: number) => {
      const at = end;
      end = align(end + bytes);
      return at;
    };
    a.x0 = take(nw * 4);
    a.w = take(nw * 16);
    a.base = take(groups * 4);
    this.masks.rgb = take(groups * 32);
    this.masks.bgr = take(groups * 32);
    a.w4 = take(groups * 16);
    a.y0 = take(nh * 4);
    a.y1 = take(nh * 4);
    a.wy = take(nh * 4);
    // Row planes hold whole groups of four (the 4-pixel kernel writes 16 bytes a step).
    a.stride = Math.ceil(nw / 4) * 16;
    a.rowA = take(3 * a.stride);
    a.rowB = take(3 * a.stride);
    // 16 bytes of slack: the last pixels' loads read past the image (with weight 0).
    a.src = take(p.sw * p.sh * 3 + 16);
    const out = take(3 * W * H);
    a.o0 = out + p.box.padY * W + p.box.padX;
    a.nw = nw;
    a.nh = nh;
    a.W = W;
    a.plane = W * H;
    a.groups = size === 4 ? groups : 0;
    a.pairs = size === 2 ? groups : 0;
    reserve(k.memory, end);
    const heap = new Uint8Array(k.memory.buffer);
    const i32s = new Int32Array(k.memory.buffer);
    const i16s = new Int16Array(k.memory.buffer);
    FIELDS.forEach((f, i) => (i32s[i] = a[f]));
    heap.set(MASK_RGB, 16 * FIELDS.length);
    heap.set(MASK_BGR, 16 * (FIELDS.length + 1));
    i32s.set(p.x0, a.x0 / 4);
    for (let x = 0; x < nw; x++) {
      const w1 = p.wx[x];
      i16s.set([ONE - w1, w1, ONE - w1, w1, ONE - w1, w1, 0, 0], (a.w + x * 16) / 2);
    }
    // Per group: its first source pixel, the swizzles that pair each pixel with its right neighbour
    // (R and G pairs in the first 16 bytes, B pairs in the next), and the pixels' weights.
    for (let g = 0; g < groups; g++) {
      const first = p.x0[size * g];
      i32s[a.base / 4 + g] = first;
      for (const [table, r, b] of [
        [this.masks.rgb, 0, 2],
        [this.masks.bgr, 2, 0],
      ]) {
        const m = heap.subarray(table + g * 32, table + g * 32 + 32);
        m.fill(16);
        for (let i = 0; i < size; i++) {
          // Past the row's end (its last group): a copy of the last pixel, with weight 0.
          const x = Math.min(nw - 1, size * g + i);
          const left = p.x0[x] - first;
          const right = Math.min(p.x1[x] - first, 15 - 2);
          m.set([left + r, right + r], 2 * i);
          m.set([left + 1, right + 1], 2 * size + 2 * i);
          m.set([left + b, right + b], 16 + 2 * i);
        }
      }
      for (let i = 0; i < size; i++) {
        const x = size * g + i;
        const w = x < nw ? [ONE - p.wx[x], p.wx[x]] : [0, 0];
        const at = (a.w4 + g * 16) / 2 + 2 * i;
        i16s.set(w, at);
        if (size === 2) i16s.set(w, at + 4);
      }
    }
    i32s.set(p.y0, a.y0 / 4);
    i32s.set(p.y1, a.y1 / 4);
    i32s.set(p.wy, a.wy / 4);
    const area = heap.subarray(out, out + 3 * W * H);
    area.fill(0);
    fillBands(area, p);
    this.current = p;
  }
}

/** float32 byte/255 for every byte value (the scalar normaliser). */
const UNIT = Float32Array.from({ length: 256 }, (_, i) => i / 255);

/**
 * Turns uint8 model input into float32 0..1 (byte / 255, as `cv2` + NumPy
 * preprocessing does), reusing its working memory. On an inference thread:
 * the frames cross threads as bytes, 4× less to copy.
 * @example
 * const norm = new Normaliser();
 * const floats = norm.run(bytes); // a view valid until the next run
 */
export class Normaliser {
  private k = kernels();
  private out = new Float32Array(0);

  /**
   * The float32 values of `bytes`. The result is this normaliser's own
   * buffer (a view into its WebAssembly memory), valid until the next call.
   */
  run(bytes: Uint8Array): Float32Array {
    const n = bytes.length;
    const k = this.k;
    if (!k) {
      if (this.out.length !== n) this.out = new Float32Array(n);
      for (let i = 0; i < n; i++) this.out[i] = UNIT[bytes[i]];
      return this.out;
    }
    const body = n - (n % 16);
    const dst = align(n);
    reserve(k.memory, dst + n * 4);
    new Uint8Array(k.memory.buffer).set(bytes, 0);
    if (body) k.normalise(0, dst, body);
    const out = new Float32Array(k.memory.buffer, dst, n);
    for (let i = body; i < n; i++) out[i] = UNIT[bytes[i]];
    return out;
  }
}

/**
 * float32 0..1 values of uint8 model input, in a new array.
 * @example
 * toUnitFloats(new Uint8Array([0, 255])); // Float32Array [0, 1]
 */
export function toUnitFloats(bytes: Uint8Array): Float32Array {
  shared ??= new Normaliser();
  return shared.run(bytes).slice();
}
let shared: Normaliser | undefined;

/** A letterboxed model input: 1×3×H×W float32 values 0..1 (R, G, B planes) and how the image was fitted. */
export interface LetterboxedInput {
  data: Float32Array;
  dims: [1, 3, number, number];
  letterbox: Letterbox;
}

let pixelBoxer: Letterboxer | undefined;

/**
 * Letterboxes packed pixels (`channels` bytes per pixel, R G B first; a
 * 4th byte such as a canvas's alpha is ignored) into a new 1×3×H×W float32
 * model input: the `resize` operator's kernel and arithmetic, for code that
 * feeds a model itself (the browser page, web/browser/). The same pixels in
 * give the same tensor the server feeds its model.
 * @throws RangeError when `pixels` is shorter than width × height × channels.
 * @example
 * const rgba = ctx.getImageData(0, 0, w, h).data; // a canvas
 * const input = letterboxPixels(rgba, w, h, 4, 640, 640);
 * new ort.Tensor("float32", input.data, input.dims);
 */
export function letterboxPixels(pixels: Uint8Array | Uint8ClampedArray, sw: number, sh: number, channels: 3 | 4, W: number, H: number): LetterboxedInput {
  if (!(sw > 0 && sh > 0 && W > 0 && H > 0)) throw new RangeError(`letterbox: sizes must be positive, got ${sw}x${sh} into ${W}x${H}`);
  const n = sw * sh;
  if (pixels.length < n * channels) throw new RangeError(`letterbox: ${pixels.length} bytes for a ${sw}x${sh} image of ${channels} channels`);
  let rgb: Uint8Array;
  if (channels === 3) rgb = new Uint8Array(pixels.buffer, pixels.byteOffset, n * 3);
  else {
    rgb = new Uint8Array(n * 3);
    for (let i = 0, j = 0; i < n; i++, j += 4) {
      rgb[3 * i] = pixels[j];
      rgb[3 * i + 1] = pixels[j + 1];
      rgb[3 * i + 2] = pixels[j + 2];
    }
  }
  const plan = makePlan(sw, sh, W, H, "letterbox");
  const bytes = (pixelBoxer ??= new Letterboxer()).run(rgb, plan, false);
  return { data: toUnitFloats(bytes), dims: [1, 3, H, W], letterbox: plan.box };
}
