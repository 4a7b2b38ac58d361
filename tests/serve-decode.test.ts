import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import { resolveFfmpeg } from "../runtime/media/ffmpeg.ts";
import {
  checkImageSize,
  CorruptImageError,
  decodeImage,
  DEFAULT_LIMITS,
  ImageTooLargeError,
  readImageHeader,
  UnsupportedImageError,
} from "../runtime/media/image-decode.ts";
import { readBytes } from "../runtime/platform/index.ts";
import { readAll } from "./support/operators.ts";
import { busImage, tempDir, zidaneImage } from "./support/paths.ts";
import { startProcess } from "./support/process.ts";

setDefaultTimeout(30_000);

let dir: Awaited<ReturnType<typeof tempDir>>;
let pngFile: string;
beforeAll(async () => {
  dir = await tempDir();
  pngFile = join(dir.path, "zidane-small.png");
  const ff = startProcess([resolveFfmpeg(), "-hide_banner", "-loglevel", "error", "-i", zidaneImage, "-vf", "scale=320:180", "-y", pngFile]);
  expect(await ff.exited).toBe(0);
});
afterAll(async () => {
  await dir?.remove();
});

/** SOI, an APP0 segment, then a frame header of marker `sof` declaring w×h. */
function jpegWith(sof: number, w: number, h: number): Uint8Array {
  const app0 = [0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00];
  return new Uint8Array([0xff, 0xd8, ...app0, 0xff, sof, 0x00, 0x0b, 0x08, h >> 8, h & 0xff, w >> 8, w & 0xff, 0x01, 1, 0x11, 0]);
}

const thrown = (f: () => unknown): Error => {
  try {
    f();
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected an error");
};

describe("image headers", () => {
  test("JPEG and PNG sizes are read without decoding", async () => {
    expect(readImageHeader(await readBytes(busImage))).toEqual({ format: "jpeg", width: 810, height: 1080 });
    expect(readImageHeader(await readBytes(pngFile))).toEqual({ format: "png", width: 320, height: 180 });
    // Progressive (SOF2) behind an APP0 segment.
    expect(readImageHeader(jpegWith(0xc2, 4000, 3000))).toEqual({ format: "jpeg", width: 4000, height: 3000 });
  });

  test("a broken header is a CorruptImageError that says what is wrong", () => {
    const cut = jpegWith(0xc0, 10, 10).slice(0, 12);
    expect(thrown(() => readImageHeader(cut))).toEqual(new CorruptImageError("JPEG truncated before its frame header"));
    expect(thrown(() => readImageHeader(jpegWith(0xc0, 640, 0))).message).toBe("JPEG frame header declares 640x0");
    const scanFirst = new Uint8Array([0xff, 0xd8, 0xff, 0xda, 0x00, 0x02]);
    expect(thrown(() => readImageHeader(scanFirst)).message).toBe("JPEG: no frame header before the image data");
    expect(thrown(() => readImageHeader(new Uint8Array(16)))).toBeInstanceOf(CorruptImageError);
    expect(thrown(() => readImageHeader(new TextEncoder().encode("RIFF0000WEBPVP8 ")))).toBeInstanceOf(UnsupportedImageError);
  });

  test("size limits: pixels and longest side", () => {
    expect(() => checkImageSize({ format: "jpeg", width: 6000, height: 6000 }, DEFAULT_LIMITS)).not.toThrow();
    const bomb = thrown(() => checkImageSize({ format: "png", width: 60000, height: 60000 }, DEFAULT_LIMITS));
    expect(bomb).toBeInstanceOf(ImageTooLargeError);
    expect(bomb.message).toBe("image declares 60000x60000 pixels (3600.0 MP); the longest side allowed is 16384");
    expect(thrown(() => checkImageSize({ format: "png", width: 8000, height: 8000 }, DEFAULT_LIMITS)).message).toContain("the limit is 40.0 MP");
  });
});

describe("decodeImage", () => {
  test("gives the same rgb24 pixels as ingest (ffmpeg) for JPEG and PNG", async () => {
    for (const file of [busImage, pngFile]) {
      const img = await decodeImage(await readBytes(file));
      const [frame] = await readAll({ url: file });
      expect([img.width, img.height, img.format]).toEqual([frame.image.width, frame.image.height, "rgb24"]);
      expect(Buffer.from(img.data).equals(Buffer.from(frame.image.data))).toBe(true);
    }
  });

  test("refuses a bomb before decoding and garbage after the header", async () => {
    await expect(decodeImage(jpegWith(0xc0, 60000, 60000))).rejects.toBeInstanceOf(ImageTooLargeError);
    const garbage = new Uint8Array([...jpegWith(0xc0, 64, 64), ...new Uint8Array(500).fill(0x55)]);
    const err = await decodeImage(garbage).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(CorruptImageError);
    expect(err!.message).toStartWith("jpeg could not be decoded");
  });
});
