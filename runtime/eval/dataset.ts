/** A YOLO-format dataset on disk: a folder of images and a folder of label files. */
import { readdirSync, statSync } from "node:fs";
import { basename, extname, join, resolve } from "node:path";
import { ConfigError } from "../core/errors.ts";
import { existsSync, readText } from "../platform/index.ts";
import type { Truth } from "./coco.ts";

const IMAGE_EXTENSIONS = new Set([".jpg", ".jpeg", ".png"]);

/** One label line: class id and a normalised centre-size box. */
export interface YoloLabel {
  classId: number;
  cx: number;
  cy: number;
  w: number;
  h: number;
}

/**
 * An existing folder given on the command line, as an absolute path.
 * @example
 * requireDir("data/images", "--images"); // "/abs/data/images"
 */
export function requireDir(dir: string | undefined, flag: string): string {
  if (!dir) throw new ConfigError(`${flag} DIR is required`);
  const abs = resolve(dir);
  if (!existsSync(abs)) throw new ConfigError(`${flag}: folder not found: ${dir}`);
  if (!statSync(abs).isDirectory()) throw new ConfigError(`${flag}: not a folder: ${dir}`);
  return abs;
}

/**
 * The .jpg/.jpeg/.png files directly in `dir`, sorted by name.
 * @example
 * listImages("/data/val/images"); // ["/data/val/images/0001.jpg", ...]
 */
export function listImages(dir: string): string[] {
  const files = readdirSync(dir)
    .filter((f) => IMAGE_EXTENSIONS.has(extname(f).toLowerCase()))
    .sort()
    .map((f) => join(dir, f));
  if (files.length === 0) throw new ConfigError(`no images (.jpg, .jpeg, .png) in ${dir}`);
  return files;
}

/**
 * Parses a YOLO label file: one `class cx cy w h` line per object, all
 * coordinates normalised to 0..1; blank lines are skipped. Errors name
 * `file:line`.
 * @example
 * parseLabels("0 0.5 0.5 0.2 0.4\n", "a.txt"); // [{ classId: 0, cx: 0.5, cy: 0.5, w: 0.2, h: 0.4 }]
 */
export function parseLabels(text: string, file: string): YoloLabel[] {
  const labels: YoloLabel[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (!line) return;
    const bad = (why: string) => new ConfigError(`${file}:${i + 1}: ${why}: "${line}"`);
    const fields = line.split(/\s+/);
    if (fields.length !== 5) throw bad(`expected 5 fields "class cx cy w h", got ${fields.length}`);
    const [classId, cx, cy, w, h] = fields.map(Number);
    if (!Number.isInteger(classId) || classId < 0) throw bad("class must be a non-negative integer");
    if (![cx, cy, w, h].every((x) => Number.isFinite(x) && x >= 0 && x <= 1)) throw bad("cx cy w h must be numbers in 0..1");
    if (w === 0 || h === 0) throw bad("box has zero width or height");
    labels.push({ classId, cx, cy, w, h });
  });
  return labels;
}

/**
 * The labels of `image` from `labelsDir/<basename>.txt`, or undefined when
 * there is no label file (an image without objects).
 * @example
 * await readLabels("/d/images/bus.jpg", "/d/labels"); // parsed /d/labels/bus.txt
 */
export async function readLabels(image: string, labelsDir: string): Promise<YoloLabel[] | undefined> {
  const file = join(labelsDir, `${basename(image, extname(image))}.txt`);
  return existsSync(file) ? parseLabels(await readText(file), file) : undefined;
}

/**
 * Labels as boxes in pixels of a `width`×`height` image.
 * @example
 * toTruths([{ classId: 0, cx: 0.5, cy: 0.5, w: 0.5, h: 0.5 }], 100, 100); // [{ classId: 0, box: [25, 25, 75, 75] }]
 */
export function toTruths(labels: readonly YoloLabel[], width: number, height: number): Truth[] {
  return labels.map(({ classId, cx, cy, w, h }) => ({
    classId,
    box: [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height],
  }));
}
