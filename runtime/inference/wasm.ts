/**
 * A minimal WebAssembly encoder for the few SIMD kernels of the hot path
 * (letterbox.ts): one exported memory and exported functions whose bodies
 * are written with the instruction helpers below. No toolchain and no
 * binary blob: the kernels are plain TypeScript, compiled at start by the
 * runtime's own WebAssembly engine (Bun's JavaScriptCore, Deno's V8).
 */

/** Unsigned LEB128. */
function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return out;
}

/** Signed LEB128 (i32 constants). */
function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) return [...out, b];
    out.push(b | 0x80);
  }
}

const simd = (op: number, ...rest: number[]) => [0xfd, ...uleb(op), ...rest];
const mem = (op: number[], offset: number) => [...op, 0, ...uleb(offset)];

/** Instructions, each a list of bytes (operands are pushed by the instructions before). */
export const op = {
  get: (i: number) => [0x20, ...uleb(i)],
  set: (i: number) => [0x21, ...uleb(i)],
  tee: (i: number) => [0x22, ...uleb(i)],
  i32: (n: number) => [0x41, ...sleb(n)],
  add: [0x6a],
  sub: [0x6b],
  mul: [0x6c],
  shl: [0x74],
  eq: [0x46],
  ne: [0x47],
  and: [0x71],
  ltS: [0x48],
  ltU: [0x49],
  gtS: [0x4a],
  geS: [0x4e],
  load: (offset = 0) => mem([0x28], offset),
  call: (f: number) => [0x10, ...uleb(f)],
  block: [0x02, 0x40],
  loop: [0x03, 0x40],
  if: [0x04, 0x40],
  else: [0x05],
  end: [0x0b],
  br: (depth: number) => [0x0c, ...uleb(depth)],
  brIf: (depth: number) => [0x0d, ...uleb(depth)],
  v128Load: (offset = 0) => mem(simd(0x00), offset),
  v128Store: (offset = 0) => mem(simd(0x0b), offset),
  v128Const: (bytes: readonly number[]) => simd(0x0c, ...bytes),
  load64Zero: (offset = 0) => mem(simd(0x5d), offset),
  store32Lane: (lane: number, offset = 0) => [...mem(simd(0x5a), offset), lane],
  store64Lane: (lane: number, offset = 0) => [...mem(simd(0x5b), offset), lane],
  swizzle: simd(0x0e),
  i32x4Splat: simd(0x11),
  f32x4Splat: simd(0x13),
  i16x8ExtendLowU8: simd(0x89),
  i16x8ExtendHighU8: simd(0x8a),
  i32x4ExtendLowU16: simd(0xa9),
  i32x4ExtendHighU16: simd(0xaa),
  i16x8NarrowI32S: simd(0x85),
  i8x16NarrowI16U: simd(0x66),
  i32x4DotI16: simd(0xba),
  i32x4Mul: simd(0xb5),
  i32x4Add: simd(0xae),
  i32x4ShrS: simd(0xac),
  f32x4Div: simd(0xe7),
  f32x4ConvertI32S: simd(0xfa),
  f32: (x: number) => [0x43, ...new Uint8Array(new Float32Array([x]).buffer)],
};

export const I32 = 0x7f;
export const V128 = 0x7b;

/** Instruction bytes, nested as convenient (flattened when assembled). */
export type Code = number | readonly Code[];

/** One exported function: its parameters (all i32), its extra locals by type, its body. */
export interface WasmFunction {
  name: string;
  params: number;
  locals: number[];
  body: Code[];
}

function flatten(code: Code, out: number[] = []): number[] {
  if (typeof code === "number") {
    if (!Number.isInteger(code) || code < 0 || code > 255) throw new Error(`not a byte: ${code}`);
    out.push(code);
  } else for (const c of code) flatten(c, out);
  return out;
}

/**
 * A module with one memory ("memory", `pages` of 64 KiB to start, growable)
 * and the given functions, none returning a value. Functions call each
 * other by their index in `fns`.
 * @example
 * const bytes = assemble([{ name: "nop", params: 0, locals: [], body: [] }]);
 * const { exports } = new WebAssembly.Instance(new WebAssembly.Module(bytes));
 */
export function assemble(fns: readonly WasmFunction[], pages = 1): Uint8Array<ArrayBuffer> {
  const section = (id: number, items: number[][]) => {
    const body = [...uleb(items.length), ...items.flat()];
    return [id, ...uleb(body.length), ...body];
  };
  const name = (s: string) => [...uleb(s.length), ...new TextEncoder().encode(s)];
  const types = fns.map((f) => [0x60, ...uleb(f.params), ...Array<number>(f.params).fill(I32), 0]);
  const code = fns.map((f) => {
    const runs: number[][] = [];
    for (const t of f.locals) {
      const last = runs.at(-1);
      if (last && last[1] === t) last[0]++;
      else runs.push([1, t]);
    }
    const body = [...uleb(runs.length), ...runs.flatMap(([n, t]) => [...uleb(n), t]), ...flatten(f.body), 0x0b];
    return [...uleb(body.length), ...body];
  });
  return new Uint8Array([
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
    ...section(1, types),
    ...section(3, fns.map((_, i) => uleb(i))),
    ...section(5, [[0x00, ...uleb(pages)]]),
    ...section(7, [...fns.map((f, i) => [...name(f.name), 0x00, ...uleb(i)]), [...name("memory"), 0x02, 0x00]]),
    ...section(10, code),
  ]);
}
