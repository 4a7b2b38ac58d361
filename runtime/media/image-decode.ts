/**
 * Still-image decoding for request bodies (JPEG, PNG) into rgb24.
 *
 * The header is parsed here first, so a forged size (a decompression bomb:
 * a few hundred bytes declaring 60000×60000) is refused before any pixel
 * buffer exists. Decoding itself runs in an ffmpeg child process: it keeps
 * the server's event loop free while images decode in parallel, a
 * malformed file can crash only that child, progressive/CMYK JPEG and
 * 16-bit/interlaced PNG work, and the pixels are exactly those `ingest`
 * gives for the same file.
 */
import { codedError, FramewireError } from "../core/errors.ts";
import { randomUUID } from "node:crypto";
import { rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { resolveFfmpeg } from "./ffmpeg.ts";
import type { Image } from "../core/message.ts";
import { spawn } from "../platform/index.ts";
import { PpmReader } from "./ppm.ts";

export type ImageFormat = "jpeg" | "png";

/** The bytes are not a readable JPEG or PNG (bad magic, truncated header, undecodable data). */
export const CorruptImageError = codedError("CorruptImageError", "E_IMAGE_CORRUPT");
export type CorruptImageError = InstanceType<typeof CorruptImageError>;

/** A known image format other than JPEG and PNG. */
export const UnsupportedImageError = codedError("UnsupportedImageError", "E_IMAGE_UNSUPPORTED");
export type UnsupportedImageError = InstanceType<typeof UnsupportedImageError>;

/** The header declares more pixels than allowed; nothing was decoded. */
export class ImageTooLargeError extends FramewireError {
  override name = "ImageTooLargeError";
  constructor(
    readonly width: number,
    readonly height: number,
    limit: string,
  ) {
    super("E_IMAGE_TOO_LARGE", `image declares ${width}x${height} pixels (${((width * height) / 1e6).toFixed(1)} MP); ${limit}`);
  }
}

export interface ImageHeader {
  format: ImageFormat;
  width: number;
  height: number;
}

export interface DecodeLimits {
  /** Most pixels (width × height) accepted. */
  maxPixels: number;
  /** Longest side accepted. */
  maxSide: number;
}

/** 40 MP and 16384 px a side: beyond any camera frame, far below what would exhaust memory. */
export const DEFAULT_LIMITS: DecodeLimits = { maxPixels: 40_000_000, maxSide: 16_384 };

const PNG_MAGIC = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/**
 * Format and size from the first bytes of a JPEG or PNG, without decoding.
 * @throws UnsupportedImageError for GIF, WebP, BMP or TIFF; CorruptImageError for anything else that is not a readable JPEG/PNG header.
 * @example
 * const { format, width, height } = readImageHeader(await readBytes("bus.jpg")); // jpeg 810 1080
 */
export function readImageHeader(b: Uint8Array): ImageHeader {
  if (b.length >= 8 && PNG_MAGIC.every((m, i) => b[i] === m)) return pngHeader(b);
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return jpegHeader(b);
  const other = OTHER_FORMATS.find((f) => f.magic.every((m, i) => m === null || b[i] === m));
  if (other) throw new UnsupportedImageError(`${other.name} images are not supported; send JPEG or PNG`);
  throw new CorruptImageError("not a JPEG or PNG image (unknown signature)");
}

/** Well-formed images of formats this decoder refuses (told apart from garbage for a better answer). */
const OTHER_FORMATS: { name: string; magic: (number | null)[] }[] = [
  { name: "GIF", magic: [0x47, 0x49, 0x46, 0x38] },
  { name: "WebP", magic: [0x52, 0x49, 0x46, 0x46, null, null, null, null, 0x57, 0x45, 0x42, 0x50] },
  { name: "BMP", magic: [0x42, 0x4d] },
  { name: "TIFF", magic: [0x49, 0x49, 0x2a, 0x00] },
  { name: "TIFF", magic: [0x4d, 0x4d, 0x00, 0x2a] },
];

function pngHeader(b: Uint8Array): ImageHeader {
  // Signature, then the IHDR chunk: length 13, "IHDR", width and height as big-endian u32.
  const ihdr = b.length >= 24 && b[12] === 0x49 && b[13] === 0x48 && b[14] === 0x44 && b[15] === 0x52;
  if (!ihdr) throw new CorruptImageError("PNG without an IHDR chunk");
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const width = dv.getUint32(16);
  const height = dv.getUint32(20);
  if (!width || !height) throw new CorruptImageError(`PNG header declares ${width}x${height}`);
  return { format: "png", width, height };
}

/** SOFn markers that carry the frame size (not DHT C4, JPG C8 or DAC CC). */
const isSof = (m: number) => m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc;

function jpegHeader(b: Uint8Array): ImageHeader {
  let i = 2;
  while (i < b.length) {
    if (b[i] !== 0xff) throw new CorruptImageError(`JPEG: expected a marker at byte ${i}`);
    while (b[i] === 0xff) i++; // fill bytes
    const marker = b[i++];
    if (marker === undefined) break;
    // Markers without a length field.
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) continue;
    if (marker === 0xd9 || marker === 0xda) throw new CorruptImageError("JPEG: no frame header before the image data");
    if (i + 2 > b.length) break;
    const len = (b[i] << 8) | b[i + 1];
    if (len < 2) throw new CorruptImageError(`JPEG: segment length ${len} at byte ${i}`);
    if (isSof(marker)) {
      if (i + 7 > b.length) break;
      const height = (b[i + 3] << 8) | b[i + 4];
      const width = (b[i + 5] << 8) | b[i + 6];
      // Height 0 defers the size to a DNL marker after the scan: nothing to check up front, so refuse.
      if (!width || !height) throw new CorruptImageError(`JPEG frame header declares ${width}x${height}`);
      checkLaterFrames(b, i + len, width, height);
      return { format: "jpeg", width, height };
    }
    i += len;
  }
  throw new CorruptImageError("JPEG truncated before its frame header");
}

/**
 * A decoder re-sizes its buffers at every frame header (SOFn), so a file
 * whose first header declares a small size and a later one (after a scan,
 * or after junk a decoder skips) a huge one would get past a check of the
 * first alone. Walks the rest of the image as a decoder does, linear in its
 * bytes: segments are skipped by their length (an EXIF thumbnail inside
 * one is not this image's frame), entropy-coded data and junk byte by byte
 * to the next marker, up to the end-of-image marker (a second picture of an
 * MPO file after it is another image, which is not decoded).
 */
function checkLaterFrames(b: Uint8Array, from: number, width: number, height: number): void {
  let i = from;
  while (i + 1 < b.length) {
    if (b[i] !== 0xff) {
      i++;
      continue;
    }
    const m = b[i + 1];
    if (m === 0xff) {
      i++; // fill byte
      continue;
    }
    // A stuffed 0xFF in entropy-coded data, a restart marker, TEM: no length field.
    if (m === 0x00 || m === 0x01 || (m >= 0xd0 && m <= 0xd7)) {
      i += 2;
      continue;
    }
    if (m === 0xd9 || i + 3 >= b.length) return;
    const len = (b[i + 2] << 8) | b[i + 3];
    if (isSof(m) && i + 8 < b.length) {
      const h = (b[i + 5] << 8) | b[i + 6];
      const w = (b[i + 7] << 8) | b[i + 8];
      if (w !== width || h !== height) throw new CorruptImageError(`JPEG declares two frame sizes, ${width}x${height} and ${w}x${h}`);
    }
    i += 2 + Math.max(len, 2);
  }
}

/**
 * Throws when a header declares more than `limits` allow.
 * @example
 * checkImageSize(readImageHeader(bytes), DEFAULT_LIMITS);
 */
export function checkImageSize(h: ImageHeader, limits: DecodeLimits): void {
  if (h.width > limits.maxSide || h.height > limits.maxSide) throw new ImageTooLargeError(h.width, h.height, `the longest side allowed is ${limits.maxSide}`);
  if (h.width * h.height > limits.maxPixels) throw new ImageTooLargeError(h.width, h.height, `the limit is ${(limits.maxPixels / 1e6).toFixed(1)} MP`);
}

/**
 * Decodes a JPEG or PNG into rgb24 after checking its header against `limits`.
 * @throws UnsupportedImageError, CorruptImageError or ImageTooLargeError.
 * @example
 * const img = await decodeImage(await readBytes("bus.jpg")); // { width: 810, height: 1080, format: "rgb24", data }
 */
export async function decodeImage(bytes: Uint8Array, limits: DecodeLimits = DEFAULT_LIMITS): Promise<Image> {
  const header = readImageHeader(bytes);
  checkImageSize(header, limits);
  // platform.spawn gives the child no stdin, so the bytes go through a private temp file.
  const file = join(tmpdir(), `framewire-img-${randomUUID()}`);
  await writeFile(file, bytes, { mode: 0o600 });
  try {
    return await ffmpegDecode(file, header, limits);
  } finally {
    await rm(file, { force: true });
  }
}

async function ffmpegDecode(file: string, header: ImageHeader, limits: DecodeLimits): Promise<Image> {
  const args = [
    "-hide_banner", "-nostdin", "-loglevel", "error",
    // Only local files and only the sniffed format's demuxer: an "image" that is really a playlist cannot make ffmpeg fetch URLs.
    "-protocol_whitelist", "file",
    "-f", header.format === "jpeg" ? "jpeg_pipe" : "png_pipe",
    // Corrupt data is an error, not a half-grey picture with detections on it.
    "-err_detect", "explode", "-xerror",
    "-i", file,
    "-frames:v", "1", "-f", "image2pipe", "-c:v", "ppm", "-pix_fmt", "rgb24", "pipe:1",
  ];
  const child = spawn(resolveFfmpeg(), args);
  const reader = new PpmReader();
  const [, stderr, code] = await Promise.all([
    (async () => {
      for await (const chunk of child.stdout) reader.push(chunk);
    })(),
    new Response(child.stderr).text(),
    child.exited,
  ]);
  let frame;
  try {
    frame = reader.next();
  } catch (err) {
    throw new CorruptImageError(`${header.format}: ${(err as Error).message}`);
  }
  if (code !== 0 || !frame) {
    const why = stderr.trim().split("\n").at(-1) || `ffmpeg exited with ${code}`;
    throw new CorruptImageError(`${header.format} could not be decoded: ${why}`);
  }
  // EXIF rotation may swap the sides; anything else would mean the header lied.
  if (frame.width * frame.height > limits.maxPixels) throw new ImageTooLargeError(frame.width, frame.height, "after decoding");
  return { width: frame.width, height: frame.height, format: "rgb24", data: frame.data };
}
