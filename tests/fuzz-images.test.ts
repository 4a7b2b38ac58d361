/**
 * Corrupt and hostile images through the still-image decoder (serve's path)
 * and through the ingest operator (a camera snapshot URL or file): a typed
 * error or a skip, never a crash and never a hang (each case has a limit).
 * Also a video file cut short: the frames before the cut arrive.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFile, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { resolveFfmpeg } from "../runtime/media/ffmpeg.ts";
import { CorruptImageError, decodeImage, ImageTooLargeError, UnsupportedImageError } from "../runtime/media/image-decode.ts";
import type { Frame } from "../runtime/core/message.ts";
import { flipBytes, rng, within, type Rng } from "./fuzz-support.ts";
import { makeSource } from "./support/operators.ts";
import { busImage, sampleVideo, tempDir } from "./support/paths.ts";
import { startProcess } from "./support/process.ts";

setDefaultTimeout(120_000);

const CASES = 100;
const PER_CASE_MS = 15_000;

let tmp: Awaited<ReturnType<typeof tempDir>>;
let jpeg: Uint8Array;
let png: Uint8Array;

async function ffmpeg(...args: string[]) {
  const p = startProcess([resolveFfmpeg(), "-loglevel", "error", "-y", ...args]);
  expect(await p.exited).toBe(0);
}

beforeAll(async () => {
  tmp = await tempDir("framewire-fuzz-img-");
  // Small images keep 200 decodes cheap; the parsers see the same structure as a full frame.
  await ffmpeg("-i", busImage, "-vf", "scale=64:80", join(tmp.path, "s.jpg"));
  await ffmpeg("-i", busImage, "-vf", "scale=64:80", join(tmp.path, "s.png"));
  jpeg = new Uint8Array(await readFile(join(tmp.path, "s.jpg")));
  png = new Uint8Array(await readFile(join(tmp.path, "s.png")));
});
afterAll(() => tmp?.remove());

/** JPEG SOF0 size fields sit right after the first 0xFFC0 marker's length and precision. */
function withJpegSize(b: Uint8Array, w: number, h: number): Uint8Array {
  const out = b.slice();
  for (let i = 2; i < out.length - 9; i++) {
    if (out[i] === 0xff && out[i + 1] === 0xc0) {
      out.set([h >> 8, h & 255, w >> 8, w & 255], i + 5);
      return out;
    }
  }
  throw new Error("no SOF0 in the sample JPEG");
}

function withPngSize(b: Uint8Array, w: number, h: number): Uint8Array {
  const out = b.slice();
  const dv = new DataView(out.buffer);
  dv.setUint32(16, w);
  dv.setUint32(20, h);
  return out;
}

/** One hostile image per call, cycling through the classes. */
function hostile(r: Rng, n: number): { what: string; bytes: Uint8Array } {
  const base = r.next() < 0.5 ? jpeg : png;
  const kind = base === jpeg ? "jpeg" : "png";
  switch (n % 10) {
    case 0:
      return { what: `truncated ${kind}`, bytes: base.subarray(0, r.int(base.length)) };
    case 1:
      return { what: `${kind} with flipped header bytes`, bytes: flipBytes(r, base, 1 + r.int(4), 0, 40) };
    case 2:
      return { what: `${kind} with flipped data bytes`, bytes: flipBytes(r, base, 1 + r.int(20), 40) };
    case 3: {
      const [w, h] = r.pick([[60000, 60000], [65535, 1], [1, 65535], [16384, 16384], [0, 10], [10, 0]]);
      return { what: `jpeg declaring ${w}x${h}`, bytes: withJpegSize(jpeg, w, h) };
    }
    case 4: {
      const [w, h] = r.pick([[2 ** 31 - 1, 2 ** 31 - 1], [100000, 100000], [2 ** 32 - 1, 1], [0, 5], [7000, 7000]]);
      return { what: `png declaring ${w}x${h}`, bytes: withPngSize(png, w, h) };
    }
    case 5:
      return { what: "wrong magic", bytes: (() => { const b = base.slice(); b.set(r.pick([[0x47, 0x49, 0x46, 0x38], [0x42, 0x4d], [0, 0, 0, 0], [0x89, 0x50]]), 0); return b; })() };
    case 6:
      return { what: "zero-length", bytes: new Uint8Array(0) };
    case 7:
      return { what: "random bytes", bytes: r.bytes(1 + r.int(2048)) };
    case 8: {
      // A valid magic followed by random bytes.
      const b = r.bytes(16 + r.int(1024));
      b.set(kind === "jpeg" ? [0xff, 0xd8, 0xff] : [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
      return { what: `${kind} magic then garbage`, bytes: b };
    }
    default:
      return { what: `${kind} cut mid-data with flipped bytes`, bytes: flipBytes(r, base.subarray(0, Math.floor(base.length * (0.3 + r.next() * 0.6))), 3) };
  }
}

const cases = () => {
  const r = rng(0x1a9e);
  return Array.from({ length: CASES }, (_, n) => hostile(r, n));
};

describe("fuzzed images", () => {
  test(`${CASES} hostile images through decodeImage: typed error or a consistent image`, async () => {
    const tally: Record<string, number> = {};
    for (const [n, c] of cases().entries()) {
      let result: string;
      try {
        const img = await within(decodeImage(c.bytes), PER_CASE_MS, `case ${n} (${c.what})`);
        expect(img.data.length).toBe(img.width * img.height * 3);
        result = "decoded";
      } catch (err) {
        if (!(err instanceof CorruptImageError || err instanceof UnsupportedImageError || err instanceof ImageTooLargeError)) {
          throw new Error(`case ${n} (${c.what}): ${(err as Error).name}: ${(err as Error).message}`);
        }
        expect((err as Error).message.length).toBeGreaterThan(10);
        result = (err as Error).name;
      }
      tally[result] = (tally[result] ?? 0) + 1;
    }
    expect(Object.values(tally).reduce((a, b) => a + b, 0)).toBe(CASES);
    expect(tally.ImageTooLargeError).toBeGreaterThan(0);
    expect(tally.CorruptImageError).toBeGreaterThan(CASES / 3);
  });

  test(`the same ${CASES} images as files through ingest: frames or a clear error, the source ends`, async () => {
    let ended = 0;
    for (const [n, c] of cases().entries()) {
      const file = join(tmp.path, `case-${n}.${c.what.includes("png") ? "png" : "jpg"}`);
      await writeFile(file, c.bytes);
      const src = await makeSource("ingest", { url: file }, "cam");
      const frames: Frame[] = [];
      try {
        await within(src.instance.run(async (f) => void (f.kind === "frame" && frames.push(f)), src.abort.signal), PER_CASE_MS, `ingest case ${n} (${c.what})`);
        for (const f of frames) expect(f.image.data.length).toBe(f.image.width * f.image.height * 3);
      } catch (err) {
        if ((err as Error).message.startsWith("hang:")) throw err;
        // ingest's own error for an unreadable input, with ffmpeg's reason.
        expect((err as Error).message).toMatch(/^ffmpeg could not read .*case-\d+/);
      } finally {
        src.abort.abort();
        await src.instance.close?.();
      }
      ended++;
    }
    expect(ended).toBe(CASES);
  });

  test("a video file cut short: the frames before the cut arrive and the source ends with a log line", async () => {
    // MPEG-TS has no index at the end, so the part before the cut stays readable.
    const clip = join(tmp.path, "cut.ts");
    await ffmpeg("-i", sampleVideo, "-t", "4", "-an", "-c:v", "libx264", "-preset", "ultrafast", "-g", "10", clip);
    const whole = (await readAll(clip)).frames.length;
    const size = (await readFile(clip)).length;
    await truncate(clip, Math.floor(size / 2));
    const cut = await readAll(clip);
    expect(cut.frames.length).toBeGreaterThan(0);
    expect(cut.frames.length).toBeLessThan(whole);
    expect(cut.frames.map((f) => f.seq)).toEqual(cut.frames.map((_, i) => i));
    // ffmpeg ends a cut MPEG-TS cleanly (exit 0), so ingest reports a normal end with the frame count.
    expect(cut.log).toContain(`end of input after ${cut.frames.length} frames`);
  });
});

async function readAll(url: string) {
  const src = await makeSource("ingest", { url }, "cam");
  const frames: Frame[] = [];
  await within(src.instance.run(async (f) => void (f.kind === "frame" && frames.push(f)), src.abort.signal), 30_000, `ingest ${url}`);
  await src.instance.close?.();
  return { frames, log: src.log.text() };
}
