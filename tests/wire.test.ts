/** Wire format v1: the layout docs/wire-format.md promises, JPEG links, and foreign input rejected with a reason. */
import { describe, expect, test } from "bun:test";
import { derive, type Frame } from "../runtime/core/message.ts";
import { decodeMessage, encodeMessage, WIRE_VERSION, WireFormatError } from "../runtime/bus/wire.ts";
import { makeEvent, makeFrame } from "./support/frames.ts";

/** A smooth synthetic picture (JPEG's home ground) with a hard edge. */
function picture(width = 64, height = 48, format: "rgb24" | "bgr24" = "rgb24"): Frame {
  const f = makeFrame(7, { width, height, fill: (x, y) => [(x * 4) % 256, (y * 5) % 256, x < width / 2 ? 40 : 220] });
  f.image.format = format;
  return f;
}

function withInference(f: Frame): Frame {
  return derive(f, {
    tensor: { dims: [1, 3, 2, 2], dtype: "float32", data: new Float32Array([0, 0.25, 0.5, 1, 0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.7, 0.6]), letterbox: { scaleX: 0.5, scaleY: 0.5, padX: 0, padY: 4 } },
    predictions: { layout: "yolov5", dims: [1, 1, 6], data: new Float32Array([10, 20, 5, 5, 0.9, 0.8]), classNames: ["person"], model: "tiny.onnx" },
    detections: [{ class: "person", classId: 0, score: 0.72, box: [1, 2, 30, 40], trackId: 3 }],
    meta: { tracks: [{ id: 3, box: [1, 2, 30, 40], state: "tracked", age: 4, hits: 4, class: "person", score: 0.72 }], blur: { faces: 2 } },
    timings: { prep: 1.5 },
  });
}

/** Reads a frame message the way docs/wire-format.md tells a Python or Go consumer to. */
function readAsDocumented(bytes: Uint8Array): { meta: any; blobs: Record<string, Uint8Array> } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  expect(new TextDecoder().decode(bytes.subarray(0, 4))).toBe("FWM1");
  const metaLen = view.getUint32(4, false);
  const meta = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + metaLen)));
  const blobs: Record<string, Uint8Array> = {};
  let off = 8 + metaLen;
  for (const b of meta.blobs) {
    blobs[b.name] = bytes.subarray(off, off + b.length);
    off += b.length;
  }
  expect(off).toBe(bytes.length);
  return { meta, blobs };
}

describe("wire format v1", () => {
  test("a frame is FWM1, a big-endian meta length, JSON meta and the blobs it lists", () => {
    const f = withInference(picture());
    const { meta, blobs } = readAsDocumented(encodeMessage(f));
    expect(meta).toMatchObject({ v: WIRE_VERSION, kind: "frame", stream: "s", seq: 7, live: false, image: { width: 64, height: 48, format: "rgb24" } });
    expect(meta.detections).toEqual(f.detections);
    expect(meta.tensor).toEqual({ dims: [1, 3, 2, 2], dtype: "float32", letterbox: f.tensor!.letterbox });
    expect(meta.blobs.map((b: { name: string }) => b.name)).toEqual(["image", "tensor", "predictions"]);
    expect(blobs.image).toEqual(f.image.data);
    // Tensors are float32 little-endian, as numpy.frombuffer(blob, "<f4") reads them.
    const t = new DataView(blobs.tensor.buffer, blobs.tensor.byteOffset, blobs.tensor.byteLength);
    expect(t.getFloat32(4, true)).toBe(0.25);
  });

  test("decode(encode(frame)) gives the same frame, pixels and tensors exactly", () => {
    const f = withInference(picture());
    const back = decodeMessage(encodeMessage(f)) as Frame;
    expect(back).toEqual(f);
  });

  test("events are plain JSON that any client parses", () => {
    const e = makeEvent(4, "cross");
    const bytes = encodeMessage(e);
    expect(JSON.parse(new TextDecoder().decode(bytes))).toEqual(e);
    expect(decodeMessage(bytes)).toEqual(e);
  });

  test("a JPEG link sends a fraction of the bytes and restores the pixel format within JPEG error", () => {
    for (const format of ["rgb24", "bgr24"] as const) {
      const f = picture(160, 120, format);
      const raw = encodeMessage(f);
      const jpeg = encodeMessage(f, { encoding: "jpeg", quality: 90 });
      expect(jpeg.length * 4).toBeLessThan(raw.length);
      const { meta, blobs } = readAsDocumented(jpeg);
      expect(meta.image).toEqual({ width: 160, height: 120, format, encoding: "jpeg" });
      expect([blobs.image[0], blobs.image[1]]).toEqual([0xff, 0xd8]); // a JPEG file, as cv2.imdecode takes it
      const back = decodeMessage(jpeg) as Frame;
      expect(back.image.format).toBe(format);
      expect(back.image.data.length).toBe(f.image.data.length);
      let err = 0;
      for (let i = 0; i < f.image.data.length; i++) err += Math.abs(back.image.data[i] - f.image.data[i]);
      // Mean error of a few levels out of 255; swapped channels would be off by ~100.
      expect(err / f.image.data.length).toBeLessThan(6);
    }
  });

  test("quality trades size: 30 is smaller than 95", () => {
    const f = picture(160, 120);
    expect(encodeMessage(f, { encoding: "jpeg", quality: 30 }).length).toBeLessThan(encodeMessage(f, { encoding: "jpeg", quality: 95 }).length);
  });

  const foreign: [string, () => Uint8Array, RegExp][] = [
    ["random bytes", () => new Uint8Array([1, 2, 3, 250, 251]), /not framewire wire format v1/],
    ["plain text", () => new TextEncoder().encode("hello"), /no FWM1 header, not JSON/],
    ["JSON that is not an event", () => new TextEncoder().encode('{"temperature": 21}'), /not a framewire event: kind/],
    ["a meta length past the end", () => Uint8Array.from([0x46, 0x57, 0x4d, 0x31, 0, 0, 0x10, 0, 0x7b]), /meta length 4096 exceeds the message/],
    ["meta that is not JSON", () => withMeta("{nope"), /frame meta is not valid JSON/],
    ["a future version", () => reMeta((m) => (m.v = 2)), /frame is wire format v2; this framewire reads v1/],
    ["blobs longer than declared", () => concat(encodeMessage(picture()), new Uint8Array(3)), /its meta declares/],
    ["an image of the wrong size", () => reMeta((m) => (m.image.width = 63)), /needs 9072/],
    ["a tensor blob too short for its dims", () => reMeta((m) => (m.tensor.dims = [1, 3, 4, 4]), withInference(picture())), /tensor blob is 48 bytes/],
    ["a JPEG blob that is not a JPEG", () => reMeta((m) => (m.image.encoding = "jpeg")), /not a decodable JPEG|JPEG is/],
  ];
  for (const [what, bytes, reason] of foreign) {
    test(`rejects ${what} with a WireFormatError saying why`, () => {
      let err: unknown;
      try {
        decodeMessage(bytes());
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(WireFormatError);
      expect((err as Error).message).toMatch(reason);
    });
  }
});

function concat(a: Uint8Array, b: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

function withMeta(meta: string, blobs: Uint8Array = new Uint8Array(0)): Uint8Array {
  const m = new TextEncoder().encode(meta);
  const head = new Uint8Array(8);
  head.set([0x46, 0x57, 0x4d, 0x31]);
  new DataView(head.buffer).setUint32(4, m.length);
  return concat(concat(head, m), blobs);
}

/** A valid frame message with its meta edited (blobs kept). */
function reMeta(edit: (meta: any) => void, f = picture()): Uint8Array {
  const { meta, blobs } = readAsDocumented(encodeMessage(f));
  edit(meta);
  return withMeta(JSON.stringify(meta), Object.values(blobs).reduce<Uint8Array>(concat, new Uint8Array(0)));
}
