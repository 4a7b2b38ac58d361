/**
 * An example user operator (docs/writing-operators.md): the mean brightness
 * of each frame, attached as `meta.brightness`, and a `dark` event when a
 * stream's picture goes darker than `threshold` (a covered or failed camera).
 * It lives outside operators/ and imports only the public API.
 */
import { defineOperator, derive, v, type Message } from "framewire";

declare module "framewire" {
  interface FrameMeta {
    /** Mean luma 0..255, from the brightness operator. */
    brightness?: number;
  }
}

const Options = v.strictObject({
  threshold: v.optional(v.pipe(v.number(), v.minValue(0), v.maxValue(255), v.description("Mean luma (0..255) below which a frame counts as dark.")), 40),
  step: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.description("Sample every step-th pixel (speed over precision).")), 16),
});

export default defineOperator({
  name: "brightness",
  kind: "transform",
  description: "Mean brightness per frame into meta.brightness; a dark event when a stream turns dark.",
  options: Options,
  create(o) {
    const dark = new Map<string, boolean>();
    return {
      process(msg) {
        if (msg.kind !== "frame" || msg.image.format === "jpeg") return msg;
        const px = msg.image.data;
        let sum = 0;
        let n = 0;
        for (let i = 0; i + 2 < px.length; i += 3 * o.step) {
          sum += 0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2];
          n++;
        }
        const brightness = Math.round((n ? sum / n : 0) * 10) / 10;
        const out: Message[] = [derive(msg, { meta: { brightness } })];
        const isDark = brightness < o.threshold;
        if (isDark !== (dark.get(msg.stream) ?? false)) {
          dark.set(msg.stream, isDark);
          if (isDark) out.push({ kind: "event", stream: msg.stream, seq: msg.seq, ts: msg.ts, type: "dark", data: { brightness } });
        }
        return out;
      },
    };
  },
});
