/**
 * Splits ffmpeg's `image2pipe -c:v ppm` output into frames. Each PPM frame
 * carries its own size ("P6 W H 255" + W*H*3 bytes), so the reader takes
 * exactly one frame's bytes at a time and follows resolution changes.
 */
export interface RawFrame {
  width: number;
  height: number;
  data: Uint8Array;
}

const MAX_HEADER = 64;
const MAX_SIDE = 16384;

export class PpmReader {
  private chunks: Uint8Array[] = [];
  private length = 0;

  push(chunk: Uint8Array): void {
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /** The next complete frame, or undefined until more bytes arrive. */
  next(): RawFrame | undefined {
    const header = this.parseHeader();
    if (!header) return undefined;
    const size = header.width * header.height * 3;
    if (this.length < header.bytes + size) return undefined;
    this.skip(header.bytes);
    return { width: header.width, height: header.height, data: this.take(size) };
  }

  private parseHeader(): { width: number; height: number; bytes: number } | undefined {
    const head = this.peek(Math.min(this.length, MAX_HEADER));
    const tokens: string[] = [];
    let tok = "";
    for (let i = 0; i < head.length; i++) {
      const c = head[i];
      const ws = c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
      if (!ws) tok += String.fromCharCode(c);
      else if (tok) {
        tokens.push(tok);
        tok = "";
        if (tokens.length === 4) {
          const [magic, w, h, max] = tokens;
          const width = Number(w);
          const height = Number(h);
          if (magic !== "P6" || max !== "255" || !(width > 0 && width <= MAX_SIDE && height > 0 && height <= MAX_SIDE)) {
            throw new Error(`unexpected frame header from ffmpeg: ${JSON.stringify(tokens.join(" "))}`);
          }
          return { width, height, bytes: i + 1 };
        }
      }
    }
    if (head.length >= MAX_HEADER) throw new Error("no PPM frame header in ffmpeg output");
    return undefined;
  }

  private peek(n: number): Uint8Array {
    if (this.chunks[0]?.length >= n) return this.chunks[0].subarray(0, n);
    const out = new Uint8Array(n);
    let off = 0;
    for (const c of this.chunks) {
      if (off >= n) break;
      const part = c.subarray(0, n - off);
      out.set(part, off);
      off += part.length;
    }
    return out;
  }

  private take(n: number): Uint8Array {
    const out = new Uint8Array(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0];
      const want = n - off;
      if (c.length <= want) {
        out.set(c, off);
        off += c.length;
        this.chunks.shift();
      } else {
        out.set(c.subarray(0, want), off);
        this.chunks[0] = c.subarray(want);
        off += want;
      }
    }
    this.length -= n;
    return out;
  }

  private skip(n: number): void {
    this.length -= n;
    while (n > 0) {
      const c = this.chunks[0];
      if (c.length <= n) {
        n -= c.length;
        this.chunks.shift();
      } else {
        this.chunks[0] = c.subarray(n);
        n = 0;
      }
    }
  }
}
