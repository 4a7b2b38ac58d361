import * as v from "valibot";
import { ConfigError } from "../runtime/core/errors.ts";
import { derive, type Frame } from "../runtime/core/message.ts";
import { decodeDetections } from "../runtime/inference/yolo.ts";
import { defineOperator } from "../runtime/core/operator.ts";

const Options = v.strictObject({
  conf: v.optional(
    v.pipe(v.number(), v.minValue(0), v.maxValue(1), v.description("Minimum score (objectness × class probability for YOLOv5).")),
    0.25,
  ),
  iou: v.optional(
    v.pipe(v.number(), v.minValue(0), v.maxValue(1), v.description("Boxes overlapping a better one by more than this IoU are suppressed.")),
    0.45,
  ),
  classes: v.optional(v.pipe(v.array(v.string()), v.minLength(1), v.description("Keep only these class names (default: all)."))),
  agnostic: v.optional(v.pipe(v.boolean(), v.description("Suppress across classes, not only within one.")), false),
  maxDetections: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1)), 300),
});
type Options = v.InferOutput<typeof Options>;

function classIds(wanted: string[], names: string[]): Set<number> {
  const ids = new Set<number>();
  for (const w of wanted) {
    const id = names.indexOf(w);
    if (id < 0) throw new ConfigError(`nms.classes: unknown class "${w}"; the model knows: ${names.join(", ")}`);
    ids.add(id);
  }
  return ids;
}

/**
 * Decodes YOLO predictions into detections: confidence filter, class filter,
 * class-aware (or agnostic) non-maximum suppression, boxes in source pixels.
 */
export default defineOperator({
  name: "nms",
  kind: "transform",
  description: "Decode YOLO predictions: confidence and class filters, non-maximum suppression, boxes in source-image pixels.",
  options: Options,
  create(o: Options, ctx) {
    let allowed: Set<number> | undefined;
    let namesSeen: string[] | undefined;
    let warnedFloor = false;
    return {
      process(msg) {
        if (msg.kind !== "frame") return msg;
        const f: Frame = msg;
        const p = f.predictions;
        if (!p || !f.tensor) throw new Error("frame has no predictions: put an infer stage before nms");
        if (p.minScore !== undefined && o.conf < p.minScore && !warnedFloor) {
          warnedFloor = true;
          ctx.log.warn(
            `conf ${o.conf} is below the ${p.minScore} under which ${p.model}'s infer stage keeps no anchors (its minScore): ` +
              `detections scoring between the two are not found; set the infer stage's minScore to ${o.conf} or lower`,
          );
        }
        if (o.classes && namesSeen !== p.classNames) {
          allowed = classIds(o.classes, p.classNames);
          namesSeen = p.classNames;
        }
        const detections = decodeDetections(p, f.tensor.letterbox, f.image.width, f.image.height, {
          conf: o.conf,
          iou: o.iou,
          agnostic: o.agnostic,
          maxDetections: o.maxDetections,
          allowed,
        });
        // The raw output (8.5 MB for YOLOv5 at 640) and the input tensor are consumed: a new frame without them.
        return derive(f, { detections, predictions: undefined, tensor: undefined });
      },
    };
  },
});
