/**
 * Model input kept as bytes until the inference thread. A letterboxed frame
 * is 1.2 MB as uint8 CHW and 4.9 MB as float32: `resize` attaches the bytes,
 * `infer-onnx` copies them (4× less than floats) to its inference thread,
 * which turns them into float32 0..1 there, off the JavaScript thread. The
 * NATS wire (v2) carries the same bytes, and the receiver rebuilds the same
 * tensor (runtime/core/byte-tensor.ts), so inference normalises in its own
 * thread on the far side too.
 *
 * The frame's `tensor` stays a float32 `Tensor` for every other reader
 * (infer-triton, `/detect`): its `data` is computed from the bytes the first
 * time it is read, then kept. The values are byte / 255, exactly what
 * OpenCV + NumPy preprocessing feeds a model.
 */
import type { Letterbox } from "../core/message.ts";
import { byteTensor, type PixelTensor } from "../core/byte-tensor.ts";
import { toUnitFloats } from "./letterbox.ts";

export { tensorPixels, type PixelTensor } from "../core/byte-tensor.ts";

/**
 * A float32 tensor backed by bytes: `data` is made from `pixels` on first read (SIMD).
 * @example
 * const t = pixelTensor([1, 3, 640, 640], chw, plan.box);
 * tensorPixels(t) === chw; // true: infer-onnx sends the bytes
 * t.data[0];               // chw[0] / 255, computed once
 */
export function pixelTensor(dims: number[], pixels: Uint8Array, letterbox: Letterbox): PixelTensor {
  return byteTensor(dims, pixels, letterbox, toUnitFloats);
}
