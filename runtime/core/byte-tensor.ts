/**
 * A float32 model input kept as bytes: the `tensor` of a frame after
 * `resize`, and of a frame received over NATS (wire v2 carries tensors as
 * uint8, see docs/wire-format.md). Its `data` is computed from the bytes
 * the first time it is read, then kept; `infer-onnx` sends the bytes to its
 * inference thread instead (4× less to copy). In core so that the bus
 * (which may not import inference/) rebuilds the same tensor a local
 * `resize` makes.
 */
import type { Letterbox, Tensor } from "./message.ts";

/** A tensor whose values are `pixels[i] / 255`. */
export interface PixelTensor extends Tensor {
  /** The values as bytes, same layout as `data` (read-only, like every buffer of a frame). */
  readonly pixels: Uint8Array;
}

/** byte / 255 as float32, for every byte value. */
const UNIT = Float32Array.from({ length: 256 }, (_, b) => b / 255);

/**
 * float32 0..1 values of bytes (a table look-up; inference/letterbox.ts has a SIMD one, same values).
 * @example
 * unitFloats(new Uint8Array([0, 255])); // Float32Array [0, 1]
 */
export function unitFloats(bytes: Uint8Array): Float32Array {
  const out = new Float32Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) out[i] = UNIT[bytes[i]];
  return out;
}

/**
 * A float32 tensor backed by bytes: `data` is `toFloats(pixels)`, made on first read.
 * @example
 * const t = byteTensor([1, 3, 2, 2], bytes, { scaleX: 1, scaleY: 1, padX: 0, padY: 0 });
 * tensorPixels(t) === bytes; // true
 * t.data[0];                 // bytes[0] / 255
 */
export function byteTensor(dims: number[], pixels: Uint8Array, letterbox: Letterbox, toFloats: (b: Uint8Array) => Float32Array = unitFloats): PixelTensor {
  let floats: Float32Array | undefined;
  return {
    dims,
    dtype: "float32",
    letterbox,
    pixels,
    get data(): Float32Array {
      return (floats ??= toFloats(pixels));
    },
  };
}

/**
 * The bytes behind a tensor made by {@link byteTensor}, or undefined for a
 * plain float32 tensor (one made by a user's stage).
 * @example
 * const bytes = tensorPixels(frame.tensor); // Uint8Array | undefined
 */
export function tensorPixels(t: Tensor): Uint8Array | undefined {
  const p = (t as Partial<PixelTensor>).pixels;
  return p instanceof Uint8Array && p.length === t.dims.reduce((a, d) => a * d, 1) ? p : undefined;
}
