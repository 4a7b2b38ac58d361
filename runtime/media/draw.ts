/**
 * Drawing on RGBA rasters with plain typed-array code: boxes, lines,
 * polygons and short labels in a 3×5 pixel font. Enough for annotated
 * snapshots, with no canvas or native dependency.
 */
import { decodeJpeg } from "./jpeg.ts";
import type { Image } from "../core/message.ts";
import type { Raster } from "./raster.ts";

export type { Raster };

export type Color = readonly [number, number, number];

/**
 * A new RGBA raster holding a frame's pixels (rgb24, bgr24 or jpeg); the
 * frame itself is never touched, so other stages may keep reading it.
 * @example
 * const r = toRaster(frame.image);
 * strokeRect(r, [10, 10, 50, 80], [0, 255, 0]);
 */
export function toRaster(image: Image): Raster {
  if (image.format === "jpeg") return decodeJpeg(image.data);
  const { width, height, data: src } = image;
  const n = width * height;
  if (src.length < n * 3) throw new Error(`image is ${src.length} bytes, expected ${n * 3} for ${width}x${height} ${image.format}`);
  const data = new Uint8Array(n * 4);
  const [r, b] = image.format === "bgr24" ? [2, 0] : [0, 2];
  for (let i = 0, j = 0; i < n; i++, j += 3) {
    const k = i * 4;
    data[k] = src[j + r];
    data[k + 1] = src[j + 1];
    data[k + 2] = src[j + b];
    data[k + 3] = 255;
  }
  return { width, height, data };
}

/**
 * Fills the pixels x1 ≤ x < x2, y1 ≤ y < y2 (clipped to the raster).
 * @example
 * fillRect(r, 0, 0, r.width, 10, [0, 0, 0]); // a black band at the top
 */
export function fillRect(r: Raster, x1: number, y1: number, x2: number, y2: number, color: Color): void {
  const xa = Math.max(0, Math.floor(x1));
  const xb = Math.min(r.width, Math.floor(x2));
  const ya = Math.max(0, Math.floor(y1));
  const yb = Math.min(r.height, Math.floor(y2));
  for (let y = ya; y < yb; y++) {
    for (let x = xa, k = (y * r.width + xa) * 4; x < xb; x++, k += 4) {
      r.data[k] = color[0];
      r.data[k + 1] = color[1];
      r.data[k + 2] = color[2];
      r.data[k + 3] = 255;
    }
  }
}

/**
 * Outlines a box [x1, y1, x2, y2] (pixels) with lines `thickness` wide, drawn inside the box.
 * @example
 * strokeRect(r, detection.box, [0, 255, 0], 2);
 */
export function strokeRect(r: Raster, box: readonly [number, number, number, number], color: Color, thickness = 2): void {
  const [x1, y1, x2, y2] = box.map(Math.round);
  fillRect(r, x1, y1, x2, y1 + thickness, color);
  fillRect(r, x1, y2 - thickness, x2, y2, color);
  fillRect(r, x1, y1, x1 + thickness, y2, color);
  fillRect(r, x2 - thickness, y1, x2, y2, color);
}

/**
 * A straight line from (x0, y0) to (x1, y1) in pixels, `thickness` wide (Bresenham with a square brush).
 * @example
 * drawLine(r, 0, 0, r.width - 1, r.height - 1, [255, 0, 0], 3);
 */
export function drawLine(r: Raster, x0: number, y0: number, x1: number, y1: number, color: Color, thickness = 2): void {
  let x = Math.round(x0);
  let y = Math.round(y0);
  const xe = Math.round(x1);
  const ye = Math.round(y1);
  const dx = Math.abs(xe - x);
  const dy = -Math.abs(ye - y);
  const sx = x < xe ? 1 : -1;
  const sy = y < ye ? 1 : -1;
  const lo = Math.floor((thickness - 1) / 2);
  let err = dx + dy;
  for (;;) {
    fillRect(r, x - lo, y - lo, x - lo + thickness, y - lo + thickness, color);
    if (x === xe && y === ye) return;
    const e2 = 2 * err;
    if (e2 >= dy) {
      err += dy;
      x += sx;
    }
    if (e2 <= dx) {
      err += dx;
      y += sy;
    }
  }
}

/**
 * A closed outline through `points` ([x, y] in pixels).
 * @example
 * drawPolygon(r, [[10, 10], [100, 10], [100, 60]], [255, 200, 0]);
 */
export function drawPolygon(r: Raster, points: readonly (readonly [number, number])[], color: Color, thickness = 2): void {
  for (let i = 0; i < points.length; i++) {
    const [ax, ay] = points[i];
    const [bx, by] = points[(i + 1) % points.length];
    drawLine(r, ax, ay, bx, by, color, thickness);
  }
}

// 3×5 glyphs, rows top to bottom; lower case is drawn as upper case.
const GLYPHS: Record<string, string> = {
  A: ".#./#.#/###/#.#/#.#", B: "##./#.#/##./#.#/##.", C: ".##/#../#../#../.##", D: "##./#.#/#.#/#.#/##.",
  E: "###/#../##./#../###", F: "###/#../##./#../#..", G: ".##/#../#.#/#.#/.##", H: "#.#/#.#/###/#.#/#.#",
  I: "###/.#./.#./.#./###", J: "..#/..#/..#/#.#/.#.", K: "#.#/#.#/##./#.#/#.#", L: "#../#../#../#../###",
  M: "#.#/###/###/#.#/#.#", N: "##./#.#/#.#/#.#/#.#", O: ".#./#.#/#.#/#.#/.#.", P: "##./#.#/##./#../#..",
  Q: ".#./#.#/#.#/##./.##", R: "##./#.#/##./#.#/#.#", S: ".##/#../.#./..#/##.", T: "###/.#./.#./.#./.#.",
  U: "#.#/#.#/#.#/#.#/###", V: "#.#/#.#/#.#/#.#/.#.", W: "#.#/#.#/###/###/#.#", X: "#.#/#.#/.#./#.#/#.#",
  Y: "#.#/#.#/.#./.#./.#.", Z: "###/..#/.#./#../###",
  "0": "###/#.#/#.#/#.#/###", "1": ".#./##./.#./.#./###", "2": "##./..#/.#./#../###", "3": "##./..#/.#./..#/##.",
  "4": "#.#/#.#/###/..#/..#", "5": "###/#../##./..#/##.", "6": ".##/#../###/#.#/###", "7": "###/..#/.#./.#./.#.",
  "8": "###/#.#/###/#.#/###", "9": "###/#.#/###/..#/##.",
  "#": "#.#/###/#.#/###/#.#", "-": ".../.../###/.../...", _: ".../.../.../.../###", ":": ".../.#./.../.#./...",
  ".": ".../.../.../.../.#.", "/": "..#/..#/.#./#../#..", " ": ".../.../.../.../...", "?": "##./..#/.#./.../.#.",
};

/**
 * Width in pixels of `text` drawn at `scale` (4 × scale per character, less the last gap).
 * @example
 * textWidth("#12", 2); // 22
 */
export function textWidth(text: string, scale = 2): number {
  return text.length ? (text.length * 4 - 1) * scale : 0;
}

/**
 * Draws `text` with its top-left corner at (x, y), on a filled background
 * when given (readable on any image). Unknown characters show as `?`.
 * @example
 * drawText(r, box[0], box[1] - 12, `#${trackId}`, [255, 255, 255], 2, [0, 160, 0]);
 */
export function drawText(r: Raster, x: number, y: number, text: string, color: Color, scale = 2, background?: Color): void {
  x = Math.round(x);
  y = Math.round(y);
  if (background) fillRect(r, x - scale, y - scale, x + textWidth(text, scale) + scale, y + 6 * scale, background);
  for (const ch of text.toUpperCase()) {
    const rows = (GLYPHS[ch] ?? GLYPHS["?"]).split("/");
    rows.forEach((row, gy) => {
      for (let gx = 0; gx < 3; gx++) {
        if (row[gx] === "#") fillRect(r, x + gx * scale, y + gy * scale, x + (gx + 1) * scale, y + (gy + 1) * scale, color);
      }
    });
    x += 4 * scale;
  }
}
