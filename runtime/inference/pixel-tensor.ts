/**
 * Model input kept as bytes until the inference thread. A letterboxed frame
 * is 1.2 MB as uint8 CHW and 4.9 MB as float32: `resize` attaches the bytes,
 * `infer-onnx` copies them (4× less than floats) to its inference thread,
 * which turns them into float32 0..1 there, off the JavaScript thread.
 *
 * The frame's `tensor` stays a float32 `Tensor` for every other reader (the
 * NATS wire, infer-triton, `/detect`): its `data` is computed from the bytes
 * the first time it is read, then kept. The values are byte / 255, exactly
 * what OpenCV + NumPy preprocessing feeds a model.
 */
import type { Letterbox, Tensor } from "../core/message.ts";
import { toUnitFloats } from "./letterbox.ts";

/** A tensor whose values are `pixels[i] / 255`. */
export interface PixelTensor extends Tensor {
  /** The values as bytes, same layout as `data` (read-only, like every buffer of a frame). */
  readonly pixels: Uint8Array;
}

/**
 * A float32 tensor backed by bytes: `data` is made from `pixels` on first read.
 * @example
 * const t = pixelTensor([1, 3, 640, 640], chw, plan.box);
 * tensorPixels(t) === chw; // true: infer-onnx sends the bytes
 * t.data[0];               // chw[0] / 255, computed once
 */
export function pixelTensor(dims: number[], pixels: Uint8Array, letterbox: Letterbox): PixelTensor {
  let floats: Float32Array | undefined;
  return {
    dims,
    dtype: "float32",
    letterbox,
    pixels,
    get data(): Float32Array {
      return (floats ??= toUnitFloats(pixels));
    },
  };
}

/**
 * The bytes behind a tensor made by {@link pixelTensor}, or undefined for a
 * plain float32 tensor (one decoded from the wire, or made by a user's stage).
 * @example
 * const bytes = tensorPixels(frame.tensor); // Uint8Array | undefined
 */
export function tensorPixels(t: Tensor): Uint8Array | undefined {
  const p = (t as Partial<PixelTensor>).pixels;
  return p instanceof Uint8Array && p.length === t.dims.reduce((a, d) => a * d, 1) ? p : undefined;
}
