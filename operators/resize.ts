import * as v from "valibot";
import { derive, type Frame } from "../runtime/core/message.ts";
import { defineOperator } from "../runtime/core/operator.ts";
import { Letterboxer, makePlan, type LetterboxPlan } from "../runtime/inference/letterbox.ts";
import { pixelTensor } from "../runtime/inference/pixel-tensor.ts";

const Options = v.strictObject({
  width: v.optional(v.pipe(v.number(), v.integer(), v.minValue(8), v.maxValue(4096)), 640),
  height: v.optional(v.pipe(v.number(), v.integer(), v.minValue(8), v.maxValue(4096)), 640),
  mode: v.optional(
    v.pipe(
      v.picklist(["letterbox", "stretch"]),
      v.description("letterbox keeps the aspect ratio and pads with grey 114; stretch fills the whole input."),
    ),
    "letterbox",
  ),
});

/** Source sizes whose sampling tables are kept (a stage normally sees one per camera resolution). */
const MAX_PLANS = 16;

/**
 * Letterboxes (or stretches) a decoded frame to the model input size and
 * attaches a CHW tensor with the geometry needed to map boxes back. The
 * tensor's values are kept as bytes (OpenCV's bilinear arithmetic, rounded
 * to uint8, as YOLO preprocessing does) until the inference thread turns
 * them into float32 0..1; readers of `tensor.data` get those floats.
 */
export default defineOperator({
  name: "resize",
  kind: "transform",
  description: "Letterbox or stretch rgb24/bgr24 frames to the model size as a CHW tensor (0..1; kept as uint8 until inference).",
  options: Options,
  create({ width, height, mode }) {
    const plans = new Map<string, LetterboxPlan>();
    const letterbox = new Letterboxer();
    return {
      process(msg) {
        if (msg.kind !== "frame") return msg;
        const f: Frame = msg;
        const { image } = f;
        if (image.format === "jpeg") throw new Error("resize needs decoded rgb24/bgr24 frames, got jpeg");
        if (image.data.length !== image.width * image.height * 3) {
          throw new Error(`image is ${image.data.length} bytes, expected ${image.width}x${image.height}x3`);
        }
        const key = `${image.width}x${image.height}`;
        let plan = plans.get(key);
        if (!plan) {
          if (plans.size >= MAX_PLANS) plans.clear();
          plans.set(key, (plan = makePlan(image.width, image.height, width, height, mode)));
        }
        const chw = letterbox.run(image.data, plan, image.format === "bgr24");
        return derive(f, { tensor: pixelTensor([1, 3, height, width], chw, plan.box) });
      },
    };
  },
});
