/** Small synthetic messages for runtime tests. */
import type { Event, Frame } from "../../runtime/core/message.ts";

export function makeFrame(seq: number, o: { live?: boolean; stream?: string; width?: number; height?: number; fill?: (x: number, y: number) => [number, number, number] } = {}): Frame {
  const width = o.width ?? 4;
  const height = o.height ?? 4;
  const data = new Uint8Array(width * height * 3);
  if (o.fill) {
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) data.set(o.fill(x, y), (y * width + x) * 3);
    }
  }
  return { kind: "frame", stream: o.stream ?? "s", seq, ts: Date.now(), live: o.live ?? false, image: { width, height, format: "rgb24", data }, timings: {} };
}

export function makeEvent(seq: number, type = "count"): Event {
  return { kind: "event", stream: "s", seq, ts: Date.now(), type, data: { n: seq } };
}

/** Resolves after the current macrotask queue has run (lets pending promise chains settle). */
export function tick(): Promise<void> {
  return new Promise((r) => setTimeout(r, 0));
}
