/**
 * JPEG encoding and decoding in pure JavaScript (jpeg-js): no native
 * module, no child process, the same on every runtime and CPU.
 */
import { decode, encode } from "jpeg-js";
import type { Raster } from "./raster.ts";

/**
 * Encodes an RGBA raster as a baseline JPEG (alpha is ignored).
 * @example
 * const jpg = encodeJpeg({ width: 2, height: 1, data: new Uint8Array([255, 0, 0, 255, 0, 0, 255, 255]) }, 90);
 * await writeFile("out.jpg", jpg); // node:fs/promises
 */
export function encodeJpeg(raster: Raster, quality = 80): Uint8Array {
  const out = encode({ width: raster.width, height: raster.height, data: raster.data }, quality);
  return new Uint8Array(out.data.buffer, out.data.byteOffset, out.data.byteLength);
}

/**
 * Decodes a JPEG into an RGBA raster.
 * @throws Error when `bytes` is not a decodable JPEG or exceeds 64 megapixels.
 * @example
 * const { width, height, data } = decodeJpeg(await readBytes("frame.jpg")); // runtime/platform/index.ts
 */
export function decodeJpeg(bytes: Uint8Array): Raster {
  const img = decode(bytes, { useTArray: true, formatAsRGBA: true, maxResolutionInMP: 64 });
  return { width: img.width, height: img.height, data: img.data };
}

/**
 * True when `bytes` starts with a JPEG SOI marker and ends with EOI.
 * @example
 * isJpeg(encodeJpeg(raster)); // true
 */
export function isJpeg(bytes: Uint8Array): boolean {
  const n = bytes.length;
  return n > 4 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff && bytes[n - 2] === 0xff && bytes[n - 1] === 0xd9;
}
