/** Wire format v2: the layout docs/wire-format.md promises, uint8 tensors, JPEG links (sharp and jpeg-js), video packets, and foreign input rejected with a reason. */
import { describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { tensorPixels } from "../runtime/core/byte-tensor.ts";
import { derive, type Frame } from "../runtime/core/message.ts";
import {
  decodeMessage,
  decodeMessageAsync,
  encodeMessage,
  encodeMessageAsync,
  WIRE_LIMITS,
  WIRE_VERSION,
  WireFormatError,
  WireLimitError,
  wireJpegCodec,
} from "../runtime/bus/wire.ts";
import { pixelTensor } from "../runtime/inference/pixel-tensor.ts";
import { makeEvent, makeFrame } from "./support/frames.ts";
import { repoRoot, tempDir } from "./support/paths.ts";
import { startProcess } from "./support/process.ts";

/** A smooth synthetic picture (JPEG's home ground) with a hard edge. */
function picture(width = 64, height = 48, format: "rgb24" | "bgr24" = "rgb24"): Frame {
  const f = makeFrame(7, { width, height, fill: (x, y) => [(x * 4) % 256, (y * 5) % 256, x < width / 2 ? 40 : 220] });
  f.image.format = format;
  return f;
}

const LETTERBOX = { scaleX: 0.5, scaleY: 0.5, padX: 0, padY: 4 };
const TENSOR_BYTES = new Uint8Array([0, 64, 128, 255, 25, 51, 76, 102, 230, 204, 178, 153]);

/** A frame as infer-onnx leaves it: the lazy uint8-backed tensor resize made, float32 predictions. */
function withInference(f: Frame): Frame {
  return derive(f, {
    tensor: pixelTensor([1, 3, 2, 2], TENSOR_BYTES, LETTERBOX),
    predictions: { layout: "yolov5", dims: [1, 1, 6], data: new Float32Array([10, 20, 5, 5, 0.9, 0.8]), classNames: ["person"], model: "tiny.onnx" },
    detections: [{ class: "person", classId: 0, score: 0.72, box: [1, 2, 30, 40], trackId: 3 }],
    meta: { tracks: [{ id: 3, box: [1, 2, 30, 40], state: "tracked", age: 4, hits: 4, class: "person", score: 0.72 }], blur: { faces: 2 } },
    timings: { prep: 1.5 },
  });
}

/** An H.264 access unit as ingest with `decode: false` relays it (an IDR NAL behind SPS/PPS start codes). */
export function packetFrame(bytes = 3000, codec: "h264" | "hevc" = "h264"): Frame {
  const data = new Uint8Array(bytes);
  data.set([0, 0, 0, 1, 0x67, 0x42, 0, 0x1e, 0, 0, 0, 1, 0x68, 0xce, 0, 0, 0, 1, 0x65].slice(0, bytes));
  for (let i = 19; i < bytes; i++) data[i] = (i * 31) & 0xff;
  return { ...makeFrame(9, { width: 1920, height: 1080 }), image: { width: 1920, height: 1088, format: codec, data }, meta: { video: { codec, pts: 3600.5, keyframe: true } } };
}

/** Reads a frame message the way docs/wire-format.md tells a Python or Go consumer to. */
function readAsDocumented(bytes: Uint8Array): { meta: any; blobs: Record<string, Uint8Array> } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  expect(new TextDecoder().decode(bytes.subarray(0, 4))).toBe("FWM2");
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

function refusal(run: () => unknown): Error {
  try {
    run();
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected a refusal");
}

async function refusalAsync(run: () => Promise<unknown>): Promise<Error> {
  try {
    await run();
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected a refusal");
}

const meanError = (a: Uint8Array, b: Uint8Array) => a.reduce((s, x, i) => s + Math.abs(x - b[i]), 0) / a.length;

describe("wire format v2", () => {
  test("a frame is FWM2, a big-endian meta length, JSON meta and the blobs it lists; the tensor travels as its uint8 bytes", () => {
    const f = withInference(picture());
    const bytes = encodeMessage(f);
    const { meta, blobs } = readAsDocumented(bytes);
    expect(WIRE_VERSION).toBe(2);
    expect(meta).toMatchObject({ v: 2, kind: "frame", stream: "s", seq: 7, live: false, image: { width: 64, height: 48, format: "rgb24" } });
    expect(meta.detections).toEqual(f.detections);
    expect(meta.tensor).toEqual({ dims: [1, 3, 2, 2], dtype: "uint8", letterbox: LETTERBOX });
    expect(meta.predictions).toEqual({ layout: "yolov5", dims: [1, 1, 6], dtype: "float32", classNames: ["person"], model: "tiny.onnx" });
    expect(meta.blobs).toEqual([
      { name: "image", length: 64 * 48 * 3 },
      { name: "tensor", length: 12 },
      { name: "predictions", length: 24 },
    ]);
    expect(blobs.image).toEqual(f.image.data);
    expect(blobs.tensor).toEqual(TENSOR_BYTES);
    // Predictions are float32 little-endian, as numpy.frombuffer(blob, "<f4") reads them.
    const p = new DataView(blobs.predictions.buffer, blobs.predictions.byteOffset, blobs.predictions.byteLength);
    expect(p.getFloat32(16, true)).toBeCloseTo(0.9, 6);
    // v1 would have sent the 12 values as 48 bytes of float32.
    expect(bytes.length).toBe(8 + new DataView(bytes.buffer).getUint32(4) + 64 * 48 * 3 + 12 + 24);
  });

  test("decode(encode(frame)) gives the same frame; the tensor is the lazy uint8-backed one resize makes", async () => {
    const f = withInference(picture());
    for (const back of [decodeMessage(encodeMessage(f)) as Frame, (await decodeMessageAsync(await encodeMessageAsync(f))) as Frame]) {
      const { tensor, ...rest } = back;
      const { tensor: sent, ...sentRest } = f;
      expect(rest).toEqual(sentRest);
      expect(tensor!.dims).toEqual([1, 3, 2, 2]);
      expect(tensor!.dtype).toBe("float32");
      expect(tensor!.letterbox).toEqual(LETTERBOX);
      // The bytes are there for infer-onnx to send to its thread; the floats are byte / 255, as the sender's.
      expect(tensorPixels(tensor!)).toEqual(TENSOR_BYTES);
      expect(Array.from(tensor!.data)).toEqual(Array.from(sent!.data));
      expect(tensor!.data[3]).toBe(1);
    }
  });

  test("the synchronous and asynchronous encoders write the same bytes for raw frames", async () => {
    const f = withInference(picture());
    expect(await encodeMessageAsync(f)).toEqual(encodeMessage(f));
    expect(await encodeMessageAsync(f, { encoding: "raw" })).toEqual(encodeMessage(f));
  });

  test("a float32 tensor without its bytes is refused by the sender: no float32 tensors on the wire", async () => {
    const f = derive(picture(), { tensor: { dims: [1, 3, 2, 2], dtype: "float32", data: new Float32Array(12).fill(0.5), letterbox: LETTERBOX } });
    for (const err of [refusal(() => encodeMessage(f)), await refusalAsync(() => encodeMessageAsync(f))]) {
      expect(err).toBeInstanceOf(WireFormatError);
      expect(err.message).toMatch(/float32 tensor without its uint8 bytes/);
    }
  });

  test("events are plain JSON that any client parses", async () => {
    const e = makeEvent(4, "cross");
    const bytes = encodeMessage(e);
    expect(JSON.parse(new TextDecoder().decode(bytes))).toEqual(e);
    expect(decodeMessage(bytes)).toEqual(e);
    expect(await decodeMessageAsync(await encodeMessageAsync(e))).toEqual(e);
  });

  test("a frame from a v1 sender is refused with a clear message", () => {
    const v1 = concat(Uint8Array.from([0x46, 0x57, 0x4d, 0x31, 0, 0, 0, 2]), new TextEncoder().encode("{}"));
    const err = refusal(() => decodeMessage(v1));
    expect(err).toBeInstanceOf(WireFormatError);
    expect(err.message).toBe("frame is wire format v1 (FWM1); this framewire reads v2: upgrade the sender");
  });
});

describe("JPEG links", () => {
  test("the asynchronous codec is sharp (libvips)", async () => {
    expect(await wireJpegCodec()).toBe("sharp");
  });

  test("sharp: a fraction of the bytes, the decoded size checked, the pixel format restored within JPEG error", async () => {
    for (const format of ["rgb24", "bgr24"] as const) {
      const f = picture(160, 120, format);
      const raw = encodeMessage(f);
      const jpeg = await encodeMessageAsync(f, { encoding: "jpeg", quality: 90 });
      expect(jpeg.length * 4).toBeLessThan(raw.length);
      const { meta, blobs } = readAsDocumented(jpeg);
      expect(meta.image).toEqual({ width: 160, height: 120, format, encoding: "jpeg" });
      expect([blobs.image[0], blobs.image[1]]).toEqual([0xff, 0xd8]); // a JPEG file, as cv2.imdecode takes it
      const back = (await decodeMessageAsync(jpeg)) as Frame;
      expect([back.image.width, back.image.height, back.image.format]).toEqual([160, 120, format]);
      expect(back.image.data.length).toBe(160 * 120 * 3);
      // Mean error of a few levels out of 255; swapped channels would be off by ~100.
      expect(meanError(back.image.data, f.image.data)).toBeLessThan(6);
      // jpeg-js (the synchronous path) reads what sharp wrote, and the other way round.
      expect(meanError((decodeMessage(jpeg) as Frame).image.data, f.image.data)).toBeLessThan(6);
      const js = encodeMessage(f, { encoding: "jpeg", quality: 90 });
      expect(meanError(((await decodeMessageAsync(js)) as Frame).image.data, f.image.data)).toBeLessThan(6);
    }
  });

  test("sharp refuses a JPEG whose pixels are not the size the meta declares, after the header check passed", async () => {
    const jpeg = await encodeMessageAsync(picture(160, 120), { encoding: "jpeg", quality: 80 });
    const { meta, blobs } = readAsDocumented(jpeg);
    // Cut inside the entropy-coded data, keep the end marker: the header is intact, the scan is not.
    const img = blobs.image;
    const cut = concat(img.subarray(0, Math.floor(img.length / 2)), Uint8Array.from([0xff, 0xd9]));
    meta.blobs[0].length = cut.length;
    const err = await refusalAsync(() => decodeMessageAsync(withMeta(JSON.stringify(meta), cut)));
    expect(err).toBeInstanceOf(WireFormatError);
    expect(err.message).toMatch(/not a decodable JPEG|JPEG decoded to/);
  });

  test("quality trades size: 30 is smaller than 95", async () => {
    const f = picture(160, 120);
    expect((await encodeMessageAsync(f, { encoding: "jpeg", quality: 30 })).length).toBeLessThan(
      (await encodeMessageAsync(f, { encoding: "jpeg", quality: 95 })).length,
    );
  });
});

describe("encoded video access units", () => {
  test("an h264 or hevc packet crosses as it is, its meta.video with it, never JPEG-coded by a link", async () => {
    for (const codec of ["h264", "hevc"] as const) {
      const f = packetFrame(5000, codec);
      const bytes = await encodeMessageAsync(f, { encoding: "jpeg", quality: 85 });
      const { meta, blobs } = readAsDocumented(bytes);
      expect(meta.image).toEqual({ width: 1920, height: 1088, format: codec });
      expect(meta.meta.video).toEqual({ codec, pts: 3600.5, keyframe: true });
      expect(blobs.image).toEqual(f.image.data);
      const back = (await decodeMessageAsync(bytes)) as Frame;
      expect(back.image).toEqual(f.image);
      expect(back.meta).toEqual(f.meta);
      expect(decodeMessage(bytes)).toEqual(back);
    }
  });

  test("a forged oversized packet is refused before anything else is done with it", () => {
    const f = packetFrame(WIRE_LIMITS.maxPacketBytes + 1);
    const sent = refusal(() => encodeMessage(f));
    expect(sent).toBeInstanceOf(WireLimitError);
    // A forged one: a small packet's message with the blob grown past the limit.
    const { meta, blobs } = readAsDocumented(encodeMessage(packetFrame(100)));
    const big = new Uint8Array(WIRE_LIMITS.maxPacketBytes + 1);
    big.set(blobs.image);
    meta.blobs[0].length = big.length;
    const err = refusal(() => decodeMessage(withMeta(JSON.stringify(meta), big)));
    expect(err).toBeInstanceOf(WireLimitError);
    expect((err as WireLimitError).code).toBe("E_WIRE_LIMIT");
    expect(err.message).toMatch(/h264 access unit is 8388609 bytes; the wire limit is 8388608/);
  });

  const bad: [string, (m: any) => void, RegExp][] = [
    ["without meta.video", (m) => delete m.meta.video, /needs meta\.video/],
    ["with meta.video of another codec", (m) => (m.meta.video.codec = "hevc"), /meta\.video\.codec is hevc, meta\.image\.format is h264/],
    ["with a meta.video missing pts", (m) => delete m.meta.video.pts, /meta\.video\.pts/],
    ["declared JPEG-encoded", (m) => (m.image.encoding = "jpeg"), /cannot be jpeg-encoded/],
  ];
  for (const [what, edit, reason] of bad) {
    test(`a packet frame ${what} is refused`, () => {
      const err = refusal(() => decodeMessage(reMeta(edit, packetFrame(200))));
      expect(err).toBeInstanceOf(WireFormatError);
      expect(err.message).toMatch(reason);
    });
  }

  test("an empty packet is refused", () => {
    const err = refusal(() => decodeMessage(reMeta((m) => (m.blobs[0].length = 0), packetFrame(1), new Uint8Array(0))));
    expect(err).toBeInstanceOf(WireFormatError);
    expect(err.message).toMatch(/h264 access unit is empty/);
  });
});

describe("foreign input", () => {
  const foreign: [string, () => Uint8Array, RegExp][] = [
    ["random bytes", () => new Uint8Array([1, 2, 3, 250, 251]), /not framewire wire format v2/],
    ["plain text", () => new TextEncoder().encode("hello"), /no FWM2 header, not JSON/],
    ["JSON that is not an event", () => new TextEncoder().encode('{"temperature": 21}'), /not a framewire event: kind/],
    ["a meta length past the end", () => Uint8Array.from([0x46, 0x57, 0x4d, 0x32, 0, 0, 0x10, 0, 0x7b]), /meta length 4096 exceeds the message/],
    ["meta that is not JSON", () => withMeta("{nope"), /frame meta is not valid JSON/],
    ["a future version", () => reMeta((m) => (m.v = 3)), /frame is wire format v3; this framewire reads v2/],
    ["blobs longer than declared", () => concat(encodeMessage(picture()), new Uint8Array(3)), /its meta declares/],
    ["an image of the wrong size", () => reMeta((m) => (m.image.width = 63)), /needs 9072/],
    ["a tensor blob too short for its dims", () => reMeta((m) => (m.tensor.dims = [1, 3, 4, 4]), withInference(picture())), /tensor blob is 12 bytes/],
    ["a float32 tensor", () => reMeta((m) => (m.tensor.dtype = "float32"), withInference(picture())), /tensor\.dtype/],
    ["a JPEG blob that is not a JPEG", () => reMeta((m) => (m.image.encoding = "jpeg")), /not a decodable JPEG|JPEG is/],
  ];
  for (const [what, bytes, reason] of foreign) {
    test(`rejects ${what} with a WireFormatError saying why (both decoders)`, async () => {
      const err = refusal(() => decodeMessage(bytes()));
      expect(err).toBeInstanceOf(WireFormatError);
      expect(err.message).toMatch(reason);
      const errAsync = await refusalAsync(() => decodeMessageAsync(bytes()));
      expect(errAsync).toBeInstanceOf(WireFormatError);
      expect(errAsync.message).toBe(err.message);
    });
  }
});

describe("the documented readers", () => {
  test("docs/wire-format.md's Python read_frame reads framewire's own messages: pixels, uint8 tensor as byte/255, predictions, packets", async () => {
    const doc = await readFile(join(repoRoot, "docs/wire-format.md"), "utf8");
    const code = doc.match(/### Reading a frame in Python\n\n```python\n([\s\S]*?)```/)![1];
    const dir = await tempDir("framewire-wire-py-");
    try {
      const inferred = withInference(picture());
      const frames: [string, Frame][] = [
        ["inferred", inferred],
        ["detected", derive(inferred, { tensor: undefined, predictions: undefined })],
        ["packet", packetFrame(500)],
      ];
      for (const [name, f] of frames) await writeFile(join(dir.path, `${name}.bin`), encodeMessage(f));
      await writeFile(join(dir.path, "v1.bin"), Uint8Array.from([0x46, 0x57, 0x4d, 0x31, 0, 0, 0, 2, 0x7b, 0x7d]));
      const driver = `${code}
import hashlib, sys
out = {}
for name in ["inferred", "detected", "packet"]:
    meta, pixels, tensor, predictions = read_frame(open(sys.argv[1] + "/" + name + ".bin", "rb").read())
    out[name] = {
        "format": meta["image"]["format"],
        "pixels": None if pixels is None else [list(pixels.shape), hashlib.sha256(pixels.tobytes()).hexdigest()],
        "tensor": None if tensor is None else [list(tensor.shape), str(tensor.dtype), hashlib.sha256(tensor.tobytes()).hexdigest()],
        "predictions": None if predictions is None else predictions.ravel().tolist(),
        "video": meta.get("meta", {}).get("video"),
    }
try:
    read_frame(open(sys.argv[1] + "/v1.bin", "rb").read())
except ValueError as e:
    out["v1"] = str(e)
print(json.dumps(out))
`;
      await writeFile(join(dir.path, "read.py"), driver);
      const py = startProcess(["python3", join(dir.path, "read.py"), dir.path]);
      expect(await py.exited).toBe(0);
      const got = JSON.parse(py.stdout());
      const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
      const floats = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
      expect(got.inferred).toEqual({
        format: "rgb24",
        pixels: [[48, 64, 3], sha(inferred.image.data)],
        // Exactly the float32 values framewire's own inference feeds the model.
        tensor: [[1, 3, 2, 2], "float32", sha(floats(inferred.tensor!.data))],
        predictions: [...inferred.predictions!.data],
        video: null,
      });
      expect(got.detected).toMatchObject({ pixels: [[48, 64, 3], sha(inferred.image.data)], tensor: null, predictions: null });
      expect(got.packet).toEqual({ format: "h264", pixels: null, tensor: null, predictions: null, video: { codec: "h264", pts: 3600.5, keyframe: true } });
      expect(got.v1).toBe("framewire wire format v1: upgrade the sender");
    } finally {
      await dir.remove();
    }
  });
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
  head.set([0x46, 0x57, 0x4d, 0x32]);
  new DataView(head.buffer).setUint32(4, m.length);
  return concat(concat(head, m), blobs);
}

/** A valid frame message with its meta edited (blobs kept). */
function reMeta(edit: (meta: any) => void, f = picture(), replace?: Uint8Array): Uint8Array {
  const { meta, blobs } = readAsDocumented(encodeMessage(f));
  edit(meta);
  return withMeta(JSON.stringify(meta), replace ?? Object.values(blobs).reduce<Uint8Array>(concat, new Uint8Array(0)));
}
