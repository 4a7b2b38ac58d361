import * as v from "valibot";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { drawLine, drawPolygon, drawText, strokeRect, textWidth, toRaster, type Color, type Raster } from "../runtime/media/draw.ts";
import { encodeJpeg } from "../runtime/media/jpeg.ts";
import type { Event, Frame } from "../runtime/core/message.ts";
import { defineOperator } from "../runtime/core/operator.ts";

const Norm = v.pipe(v.number(), v.minValue(0), v.maxValue(1));
const Point = v.tuple([Norm, Norm]);

const Options = v.strictObject({
  dir: v.pipe(
    v.string(),
    v.minLength(1),
    v.description("Folder for the JPEGs (created): `<stream>-<seq>-<type>[-<line|zone>][-<trackId>].jpg`."),
  ),
  types: v.optional(v.pipe(v.array(v.string()), v.minLength(1), v.description("Event types that get a snapshot.")), [
    "cross",
    "enter",
    "exit",
  ]),
  lines: v.optional(
    v.pipe(
      v.array(v.strictObject({ id: v.string(), from: Point, to: Point })),
      v.description("Counting lines to draw, as given to `zones` (normalised 0..1; a YAML alias `*lines` reuses them)."),
    ),
    [],
  ),
  zones: v.optional(
    v.pipe(
      v.array(v.strictObject({ id: v.string(), polygon: v.pipe(v.array(Point), v.minLength(3)) })),
      v.description("Zones to draw, as given to `zones`."),
    ),
    [],
  ),
  quality: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(100), v.description("JPEG quality 1..100.")), 80),
});
type Options = v.InferOutput<typeof Options>;

const GREEN: Color = [0, 220, 0];
const GREY: Color = [170, 170, 170];
const RED: Color = [255, 40, 40];
const CYAN: Color = [0, 220, 255];
const YELLOW: Color = [255, 210, 0];
const WHITE: Color = [255, 255, 255];
const BLACK: Color = [0, 0, 0];

/** What an event is about, from the data zones gives it (line or zone, track). */
function subject(e: Event): { place?: string; trackId?: number } {
  const place = typeof e.data.line === "string" ? e.data.line : typeof e.data.zone === "string" ? e.data.zone : undefined;
  return { place, trackId: typeof e.data.trackId === "number" ? e.data.trackId : undefined };
}

/**
 * The frame with lines and zones, every detection's box and track id, the
 * event's line/zone and track in red, and a caption.
 * @example
 * const jpg = encodeJpeg(annotate(frame, event, options), 80);
 */
export function annotate(f: Frame, e: Event, o: Pick<Options, "lines" | "zones">): Raster {
  const r = toRaster(f.image);
  const W = r.width;
  const H = r.height;
  const { place, trackId } = subject(e);
  for (const z of o.zones) {
    const color = z.id === place ? RED : YELLOW;
    drawPolygon(
      r,
      z.polygon.map(([x, y]) => [x * W, y * H] as const),
      color,
      2,
    );
    drawText(r, z.polygon[0][0] * W + 3, z.polygon[0][1] * H + 3, z.id, BLACK, 2, color);
  }
  for (const l of o.lines) {
    const color = l.id === place ? RED : CYAN;
    drawLine(r, l.from[0] * W, l.from[1] * H, l.to[0] * W, l.to[1] * H, color, 3);
    drawText(r, l.from[0] * W, l.from[1] * H - 14, l.id, BLACK, 2, color);
  }
  for (const d of f.detections ?? []) {
    const hit = d.trackId !== undefined && d.trackId === trackId;
    const color = hit ? RED : d.trackId !== undefined ? GREEN : GREY;
    strokeRect(r, d.box, color, hit ? 3 : 2);
    if (d.trackId !== undefined) drawText(r, d.box[0] + 2, Math.max(2, d.box[1] - 13), String(d.trackId), BLACK, 2, color);
  }
  const caption = [e.type, place, e.data.direction, trackId !== undefined ? `track ${trackId}` : undefined, `${e.stream} frame ${e.seq}`]
    .filter((x) => x !== undefined)
    .join(" ");
  drawText(r, Math.max(2, W - textWidth(caption, 2) - 4), H - 14, caption, WHITE, 2, BLACK);
  return r;
}

/**
 * Saves an annotated JPEG of the frame at each event: the sink keeps each
 * stream's latest frame (by reference, never modified) and draws it when
 * that frame's events arrive, which follow it in order.
 */
export default defineOperator({
  name: "sink-snapshot",
  kind: "sink",
  description: "Save an annotated JPEG of the frame at each event (boxes, track ids, lines and zones; the event's track in red).",
  options: Options,
  async create(o, ctx) {
    await mkdir(o.dir, { recursive: true });
    const types = new Set(o.types);
    const latest = new Map<string, Frame>();
    let written = 0;
    let stale = 0;
    ctx.log.info(`snapshots of ${o.types.join(", ")} events in ${o.dir}`);
    return {
      async process(msg) {
        if (msg.kind === "frame") return void latest.set(msg.stream, msg);
        if (!types.has(msg.type)) return;
        const f = latest.get(msg.stream);
        if (!f)
          throw new Error(
            `no frame of stream ${msg.stream} seen before its ${msg.type} event #${msg.seq}: is this sink reading the stage that emits both?`,
          );
        if (f.seq !== msg.seq && ++stale <= 3) {
          // Only when frame #seq was dropped under overload on its way here: the nearest earlier one stands in.
          ctx.log.warn(
            `frame ${msg.stream}#${msg.seq} was dropped before this sink; the ${msg.type} snapshot shows #${f.seq} (${stale} so far)`,
          );
        }
        const { place, trackId } = subject(msg);
        const name = [msg.stream, String(msg.seq).padStart(6, "0"), msg.type, place, trackId]
          .filter((x) => x !== undefined)
          .join("-")
          .replace(/[^\w.-]/g, "_");
        await writeFile(join(o.dir, `${name}.jpg`), encodeJpeg(annotate(f, msg, o), o.quality));
        written++;
      },
      async close() {
        ctx.log.info(`${written} snapshots in ${o.dir}${stale ? ` (${stale} showing an earlier frame)` : ""}`);
      },
    };
  },
});
