/**
 * What a JPEG blob on the wire declares, read from its markers without
 * decoding: the frame size, components and coding. Linear in the blob's
 * bytes and allocation-free, so a foreign message's declared size is known
 * (and refused) before a decoder allocates anything for it.
 *
 * runtime/media/image-decode.ts has its own header reader for request
 * bodies: the bus and media layers may not import each other.
 */

/** The frame header (SOFn) of a JPEG. */
export interface JpegFrame {
  width: number;
  height: number;
  /** 1 (grey), 3 (YCbCr) or 4 (CMYK / YCCK). */
  components: number;
  /** SOF0 baseline, SOF1 extended, SOF2 progressive. */
  coding: "baseline" | "extended" | "progressive";
}

/** The frame header, or why the blob is not a JPEG jpeg-js can decode. */
export type JpegScan = { ok: true; frame: JpegFrame } | { ok: false; reason: string };

/** SOFn markers (C0..CF but DHT C4, JPG C8 and DAC CC). */
const isSof = (m: number) => m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc;
const CODING: Record<number, JpegFrame["coding"]> = { 0xc0: "baseline", 0xc1: "extended", 0xc2: "progressive" };

/**
 * Walks every marker of a JPEG (segments by their length, entropy-coded
 * data byte by byte) and returns its one frame header. Refused: no SOI, a
 * truncated segment, no frame header or more than one (a second SOFn after
 * the first scan would make a decoder allocate for another size), a coding
 * jpeg-js cannot decode (lossless, hierarchical, arithmetic), a precision
 * other than 8 bits, a component count other than 1, 3 or 4, sampling
 * factors outside 1..4, a zero width or height (the DNL marker), no scan.
 * @example
 * const r = scanJpeg(blob);
 * if (r.ok) console.log(r.frame.width, r.frame.height); // 640 480
 */
export function scanJpeg(b: Uint8Array): JpegScan {
  const fail = (reason: string): JpegScan => ({ ok: false, reason });
  if (b.length < 4 || b[0] !== 0xff || b[1] !== 0xd8) return fail("no JPEG start-of-image marker");
  let frame: JpegFrame | undefined;
  let scans = 0;
  let inScan = false;
  let i = 2;
  while (i < b.length) {
    if (b[i] !== 0xff) {
      if (!inScan) return fail(`expected a marker at byte ${i}`);
      i++;
      continue;
    }
    let j = i + 1;
    while (j < b.length && b[j] === 0xff) j++; // fill bytes
    if (j >= b.length) break;
    const marker = b[j];
    i = j + 1;
    // Inside entropy-coded data: a stuffed 0xFF00 or a restart marker continues the scan.
    if (inScan && (marker === 0x00 || (marker >= 0xd0 && marker <= 0xd7))) continue;
    inScan = false;
    if (marker === 0xd9) break; // end of image
    if (marker === 0xd8) return fail(`a second start-of-image marker at byte ${j - 1}`);
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) continue; // no length field
    if (i + 2 > b.length) return fail("truncated in a segment header");
    const len = (b[i] << 8) | b[i + 1];
    if (len < 2 || i + len > b.length) return fail(`segment of length ${len} at byte ${i} runs past the end`);
    if (isSof(marker)) {
      if (frame) return fail("more than one frame header (SOFn)");
      const coding = CODING[marker];
      if (!coding) return fail(`unsupported JPEG coding (SOF${marker - 0xc0}): send baseline or progressive JPEG`);
      if (len < 8) return fail("frame header too short");
      const precision = b[i + 2];
      const height = (b[i + 3] << 8) | b[i + 4];
      const width = (b[i + 5] << 8) | b[i + 6];
      const components = b[i + 7];
      if (precision !== 8) return fail(`${precision}-bit samples (only 8-bit JPEG is read)`);
      if (!width || !height) return fail(`frame header declares ${width}x${height}`);
      if (components !== 1 && components !== 3 && components !== 4) return fail(`${components} components (expected 1, 3 or 4)`);
      if (len < 8 + 3 * components) return fail("frame header too short for its components");
      for (let c = 0; c < components; c++) {
        const f = b[i + 9 + 3 * c];
        const h = f >> 4;
        const v = f & 15;
        if (h < 1 || h > 4 || v < 1 || v > 4) return fail(`sampling factors ${h}x${v} (expected 1..4)`);
      }
      frame = { width, height, components, coding };
    } else if (marker === 0xda) {
      if (!frame) return fail("image data before the frame header");
      scans++;
      inScan = true;
    }
    i += len;
  }
  if (!frame) return fail("no frame header (SOFn)");
  if (!scans) return fail("no image data (SOS)");
  return { ok: true, frame };
}
