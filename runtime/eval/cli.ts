/**
 * `framewire eval`: accuracy evaluations.
 *   coco  detection mAP on still images with YOLO-format labels
 *   mot   tracking metrics (runtime/eval/mot.ts, when present)
 */
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { ConfigError } from "../core/errors.ts";
import { createLogger } from "../core/log.ts";
import { existsSync } from "../platform/index.ts";
import { loadRegistry } from "../spec/registry.ts";
import { CocoAccumulator, type CocoResult } from "./coco.ts";
import { listImages, readLabels, requireDir, toTruths } from "./dataset.ts";
import { createImageDetector } from "./images.ts";

const USAGE = `usage:
  bun run eval coco --images DIR --labels DIR [--model FILE] [--conf 0.001] [--iou 0.6] [--size 640]
  bun run eval mot ...`;

/** YOLOv5 val.py defaults. */
const DEFAULTS = { model: "yolov5n.onnx", conf: "0.001", iou: "0.6", size: "640" };

/** Images between progress lines on stderr. */
const PROGRESS_EVERY = 100;

interface MotModule {
  runMotEval(args: string[]): Promise<number>;
}

/**
 * Runs `eval <kind> ...`; returns the exit code. Command-line mistakes throw
 * ConfigError, which runtime/cli.ts prints without a stack trace.
 * @example
 * await runEval(["coco", "--images", "data/images", "--labels", "data/labels"]); // 0
 */
export async function runEval(rest: string[]): Promise<number> {
  const [kind, ...args] = rest;
  switch (kind) {
    case "coco":
      return evalCoco(args);
    case "mot":
      return (await loadMot()).runMotEval(args);
    default:
      throw new ConfigError(`${kind ? `unknown evaluation "${kind}"` : "no evaluation given"}\n${USAGE}`);
  }
}

async function loadMot(): Promise<MotModule> {
  // A URL rather than a literal specifier: mot.ts is written separately, and tsc rejects a literal import of a missing file.
  const url = new URL("./mot.ts", import.meta.url);
  try {
    return (await import(url.href)) as MotModule;
  } catch (err) {
    // Only the file's absence means "not available"; errors inside mot.ts surface as they are.
    if ((err as { code?: string }).code === "ERR_MODULE_NOT_FOUND" && !existsSync(fileURLToPath(url))) {
      throw new ConfigError("eval mot is not available in this build (runtime/eval/mot.ts is missing)");
    }
    throw err;
  }
}

async function evalCoco(args: string[]): Promise<number> {
  const o = parseCocoArgs(args);
  const imagesDir = requireDir(o.images, "--images");
  const labelsDir = requireDir(o.labels, "--labels");
  const images = listImages(imagesDir);
  // Read every label file before the model runs, so a malformed line fails fast.
  const labels = await Promise.all(images.map((im) => readLabels(im, labelsDir)));
  if (labels.every((l) => l === undefined)) throw new ConfigError(`none of the ${images.length} images in ${imagesDir} has a label file in ${labelsDir}`);

  const log = createLogger("eval");
  const detector = await createImageDetector(await loadRegistry(), { model: o.model, size: num(o.size), conf: num(o.conf), iou: num(o.iou) }, log);
  const acc = new CocoAccumulator();
  try {
    for (const [i, file] of images.entries()) {
      const { width, height, detections } = await detector.detect(file);
      acc.add(toTruths(labels[i] ?? [], width, height), detections);
      if ((i + 1) % PROGRESS_EVERY === 0) log.info(`${i + 1}/${images.length} images`);
    }
  } finally {
    await detector.close();
  }
  const result = acc.result();
  console.log(formatTable(result, detector.classNames()));
  console.log(JSON.stringify({ images: result.images, map50: result.map50, map50_95: result.map50_95 }));
  return 0;
}

function parseCocoArgs(args: string[]) {
  try {
    const { values } = parseArgs({
      args,
      options: {
        images: { type: "string" },
        labels: { type: "string" },
        model: { type: "string", default: DEFAULTS.model },
        conf: { type: "string", default: DEFAULTS.conf },
        iou: { type: "string", default: DEFAULTS.iou },
        size: { type: "string", default: DEFAULTS.size },
      },
    });
    return values;
  } catch (err) {
    throw new ConfigError(`${(err as Error).message}\n${USAGE}`);
  }
}

/** A flag's number; the operators' schemas judge its range ("" and junk become NaN, which they reject). */
function num(s: string): number {
  return s.trim() === "" ? NaN : Number(s);
}

/**
 * The per-class table, YOLOv5 style: an `all` row, then each class with
 * ground truth.
 * @example
 * formatTable(acc.result(), ["person", "bicycle"]); // "  class  images ..." lines
 */
function formatTable(r: CocoResult, names: readonly string[]): string {
  const row = (cells: (string | number)[]) =>
    cells.map((c, i) => (typeof c === "number" && i >= 3 ? c.toFixed(3) : String(c)).padStart(i === 0 ? 16 : 11)).join("");
  const instances = r.classes.reduce((n, c) => n + c.instances, 0);
  return [
    row(["class", "images", "instances", "P", "R", "mAP50", "mAP50-95"]),
    row(["all", r.images, instances, r.precision, r.recall, r.map50, r.map50_95]),
    ...r.classes.map((c) => row([names[c.classId] ?? String(c.classId), c.images, c.instances, c.precision, c.recall, c.ap50, c.ap50_95])),
  ].join("\n");
}
