/**
 * H.264 / H.265 Annex B byte streams (what `ffmpeg -c:v copy -f h264` writes)
 * split into access units: one coded picture each, with the parameter sets
 * and SEI that precede it. A NAL start-code scanner finds NAL units; an
 * access unit starts at an access unit delimiter, a parameter set, a prefix
 * SEI, or the first slice of a new picture (first_mb_in_slice = 0,
 * first_slice_segment_in_pic_flag = 1). IDR (H.264) and IRAP (H.265)
 * pictures are keyframes; the size comes from the latest SPS (after the
 * cropping / conformance window, i.e. the size a decoder outputs).
 */

export type VideoCodec = "h264" | "hevc";

/** One access unit: Annex B bytes (4-byte start codes), keyframe flag, the picture size the SPS declares. */
export interface AccessUnit {
  data: Uint8Array;
  keyframe: boolean;
  width: number;
  height: number;
}

const START = new Uint8Array([0, 0, 0, 1]);

/** NAL unit type of a NAL (its first header byte(s), after the start code). */
function nalType(codec: VideoCodec, nal: Uint8Array): number {
  return codec === "h264" ? nal[0] & 0x1f : (nal[0] >> 1) & 0x3f;
}

/**
 * Splits an Annex B byte stream, fed in chunks of any size, into access units.
 * @example
 * const split = new AnnexBSplitter("h264");
 * for await (const chunk of ffmpeg.stdout) for (const au of split.push(chunk)) send(au);
 * for (const au of split.end()) send(au);
 */
export class AnnexBSplitter {
  private buf = new Uint8Array(0);
  /** Where the current NAL's payload starts in `buf` (-1: no start code seen yet). */
  private nalStart = -1;
  /** Where to resume looking for the next start code. */
  private scan = 0;
  private au: Uint8Array[] = [];
  private auVcl = false;
  private auKey = false;
  private width = 0;
  private height = 0;

  constructor(readonly codec: VideoCodec) {}

  /** The access units completed by `chunk` (an access unit completes when the next one starts). */
  push(chunk: Uint8Array): AccessUnit[] {
    const out: AccessUnit[] = [];
    const rest = this.nalStart >= 0 ? this.buf.subarray(Math.min(this.nalStart, this.scan)) : this.buf.subarray(this.scan);
    const shift = this.nalStart >= 0 ? Math.min(this.nalStart, this.scan) : this.scan;
    const buf = new Uint8Array(rest.length + chunk.length);
    buf.set(rest);
    buf.set(chunk, rest.length);
    this.buf = buf;
    if (this.nalStart >= 0) this.nalStart -= shift;
    let i = this.scan - shift;
    // A start code is 00 00 01; a NAL's end is where the next start code (with its leading zeros) begins.
    for (; i + 2 < buf.length; i++) {
      if (buf[i + 2] > 1) {
        i += 2;
        continue;
      }
      if (buf[i] !== 0 || buf[i + 1] !== 0 || buf[i + 2] !== 1) continue;
      if (this.nalStart >= 0) {
        let end = i;
        while (end > this.nalStart && buf[end - 1] === 0) end--;
        this.nal(buf.subarray(this.nalStart, end), out);
      }
      this.nalStart = i + 3;
      i += 2;
    }
    this.scan = i;
    return out;
  }

  /** The last access unit, once the stream has ended. */
  end(): AccessUnit[] {
    const out: AccessUnit[] = [];
    if (this.nalStart >= 0) {
      let end = this.buf.length;
      while (end > this.nalStart && this.buf[end - 1] === 0) end--;
      this.nal(this.buf.subarray(this.nalStart, end), out);
    }
    this.buf = new Uint8Array(0);
    this.nalStart = -1;
    this.scan = 0;
    this.flush(out);
    return out;
  }

  private nal(nal: Uint8Array, out: AccessUnit[]): void {
    if (nal.length < (this.codec === "h264" ? 1 : 2)) return;
    const t = nalType(this.codec, nal);
    let vcl: boolean;
    let first = false;
    let key = false;
    let startsAu = false;
    if (this.codec === "h264") {
      vcl = t >= 1 && t <= 5;
      if (vcl) {
        // first_mb_in_slice is the first ue(v) of the slice header: 0 is coded as a single 1 bit.
        first = nal.length > 1 && (nal[1] & 0x80) !== 0;
        key = t === 5;
      }
      startsAu = t === 9 || t === 7 || t === 8 || t === 6 || (t >= 14 && t <= 18);
    } else {
      vcl = t <= 31;
      if (vcl) {
        first = nal.length > 2 && (nal[2] & 0x80) !== 0;
        key = t >= 16 && t <= 23;
      }
      startsAu = (t >= 32 && t <= 35) || t === 39 || (t >= 41 && t <= 44) || (t >= 48 && t <= 55);
    }
    if (this.auVcl && (startsAu || (vcl && first))) this.flush(out);
    // The unit's size is its last SPS's (ffmpeg's dump_extra may put a stale one from the stream header first).
    if (this.codec === "h264" ? t === 7 : t === 33) this.size(this.codec === "h264" ? parseH264Sps(nal) : parseHevcSps(nal));
    if (vcl) {
      this.auVcl = true;
      this.auKey ||= key;
    }
    this.au.push(nal);
  }

  private size(s: { width: number; height: number } | undefined): void {
    if (s && s.width > 0 && s.height > 0) ({ width: this.width, height: this.height } = s);
  }

  private flush(out: AccessUnit[]): void {
    if (this.au.length && this.auVcl) {
      const data = new Uint8Array(this.au.reduce((n, x) => n + 4 + x.length, 0));
      let o = 0;
      for (const x of this.au) {
        data.set(START, o);
        data.set(x, o + 4);
        o += 4 + x.length;
      }
      out.push({ data, keyframe: this.auKey, width: this.width, height: this.height });
    }
    this.au = [];
    this.auVcl = false;
    this.auKey = false;
  }
}

/** Reads Exp-Golomb coded bits of an RBSP (emulation prevention bytes removed). */
class Bits {
  private pos = 0;
  private readonly data: Uint8Array;
  constructor(nal: Uint8Array, header: number) {
    const d: number[] = [];
    for (let i = header, zeros = 0; i < nal.length; i++) {
      if (zeros >= 2 && nal[i] === 3) {
        zeros = 0;
        continue;
      }
      zeros = nal[i] === 0 ? zeros + 1 : 0;
      d.push(nal[i]);
    }
    this.data = new Uint8Array(d);
  }
  u(n: number): number {
    let v = 0;
    for (let i = 0; i < n; i++) {
      const byte = this.data[this.pos >> 3];
      if (byte === undefined) throw new RangeError("SPS ends early");
      v = v * 2 + ((byte >> (7 - (this.pos & 7))) & 1);
      this.pos++;
    }
    return v;
  }
  ue(): number {
    let zeros = 0;
    while (this.u(1) === 0) if (++zeros > 31) throw new RangeError("bad Exp-Golomb code");
    return 2 ** zeros - 1 + this.u(zeros);
  }
  se(): number {
    const k = this.ue();
    return k & 1 ? (k + 1) / 2 : -k / 2;
  }
}

/**
 * The picture size an H.264 SPS NAL (header byte included) declares, after frame cropping.
 * @example
 * parseH264Sps(spsNal); // { width: 1920, height: 1080 }
 */
export function parseH264Sps(nal: Uint8Array): { width: number; height: number } | undefined {
  try {
    const b = new Bits(nal, 1);
    const profile = b.u(8);
    b.u(16); // constraint flags, level
    b.ue(); // seq_parameter_set_id
    let chroma = 1;
    let separate = 0;
    if ([100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135].includes(profile)) {
      chroma = b.ue();
      if (chroma === 3) separate = b.u(1);
      b.ue(); // bit_depth_luma
      b.ue(); // bit_depth_chroma
      b.u(1); // qpprime_y_zero_transform_bypass
      if (b.u(1)) {
        for (let i = 0; i < (chroma !== 3 ? 8 : 12); i++) {
          if (!b.u(1)) continue;
          const n = i < 6 ? 16 : 64;
          let last = 8;
          let next = 8;
          for (let j = 0; j < n; j++) {
            if (next !== 0) next = (last + b.se() + 256) % 256;
            last = next === 0 ? last : next;
          }
        }
      }
    }
    b.ue(); // log2_max_frame_num_minus4
    const pocType = b.ue();
    if (pocType === 0) b.ue();
    else if (pocType === 1) {
      b.u(1);
      b.se();
      b.se();
      const n = b.ue();
      for (let i = 0; i < n; i++) b.se();
    }
    b.ue(); // max_num_ref_frames
    b.u(1); // gaps_in_frame_num_value_allowed
    const wMbs = b.ue() + 1;
    const hUnits = b.ue() + 1;
    const frameMbsOnly = b.u(1);
    if (!frameMbsOnly) b.u(1);
    b.u(1); // direct_8x8_inference
    let [l, r, t, bo] = [0, 0, 0, 0];
    if (b.u(1)) [l, r, t, bo] = [b.ue(), b.ue(), b.ue(), b.ue()];
    const arrayType = separate ? 0 : chroma;
    const cropX = arrayType === 0 ? 1 : arrayType === 3 ? 1 : 2;
    const cropY = (arrayType === 0 ? 1 : arrayType === 1 ? 2 : 1) * (2 - frameMbsOnly);
    return { width: wMbs * 16 - cropX * (l + r), height: (2 - frameMbsOnly) * hUnits * 16 - cropY * (t + bo) };
  } catch {
    return undefined;
  }
}

/**
 * The picture size an H.265 SPS NAL (2-byte header included) declares, after the conformance window.
 * @example
 * parseHevcSps(spsNal); // { width: 1280, height: 720 }
 */
export function parseHevcSps(nal: Uint8Array): { width: number; height: number } | undefined {
  try {
    const b = new Bits(nal, 2);
    b.u(4); // sps_video_parameter_set_id
    const subLayers = b.u(3);
    b.u(1);
    // profile_tier_level(1, subLayers): general profile (88 bits) and level (8 bits), then the sub-layers'.
    b.u(32);
    b.u(32);
    b.u(24);
    b.u(8);
    const present: [number, number][] = [];
    for (let i = 0; i < subLayers; i++) present.push([b.u(1), b.u(1)]);
    if (subLayers > 0) for (let i = subLayers; i < 8; i++) b.u(2);
    for (const [p, l] of present) {
      if (p) (b.u(32), b.u(32), b.u(24));
      if (l) b.u(8);
    }
    b.ue(); // sps_seq_parameter_set_id
    const chroma = b.ue();
    if (chroma === 3) b.u(1);
    const width = b.ue();
    const height = b.ue();
    if (!b.u(1)) return { width, height };
    const [l, r, t, bo] = [b.ue(), b.ue(), b.ue(), b.ue()];
    const subW = chroma === 1 || chroma === 2 ? 2 : 1;
    const subH = chroma === 1 ? 2 : 1;
    return { width: width - subW * (l + r), height: height - subH * (t + bo) };
  } catch {
    return undefined;
  }
}

/**
 * An access unit delimiter NAL with its start code: written after an access
 * unit, it tells a decoder's parser that the unit is complete (without it
 * ffmpeg waits for the next unit's first bytes before decoding).
 * @example
 * stdin.write(au.data); stdin.write(accessUnitDelimiter("h264"));
 */
export function accessUnitDelimiter(codec: VideoCodec): Uint8Array {
  return codec === "h264" ? new Uint8Array([0, 0, 0, 1, 0x09, 0xf0]) : new Uint8Array([0, 0, 0, 1, 0x46, 0x01, 0x50]);
}
