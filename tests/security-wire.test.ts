/**
 * Hostile frames on the wire: what a frame declares (the JPEG's own frame
 * header against meta.image, tensor and predictions dims against their
 * blobs and a YOLO layout) is checked before anything is decoded or
 * allocated, so the work a frame costs is bounded by the bytes it carries.
 * Both decoders (jpeg-js, synchronous; sharp, asynchronous) see a JPEG only
 * after its header passed. Then the same messages, 500 of them mixed (and
 * v1 frames, and oversized H.264 access units), through a real
 * nats-server: every one refused and counted by reason, the log
 * rate-limited, the real frames around them delivered.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { encode as encodeJpeg } from "jpeg-js";
import { NatsBus } from "../runtime/bus/nats.ts";
import { decodeMessage, decodeMessageAsync, encodeMessage, encodeMessageAsync, WIRE_LIMITS, WireFormatError, WireLimitError } from "../runtime/bus/wire.ts";
import type { Frame, Message } from "../runtime/core/message.ts";
import { resolveFfmpeg } from "../runtime/media/ffmpeg.ts";
import { CorruptImageError, readImageHeader } from "../runtime/media/image-decode.ts";
import { makeFrame } from "./support/frames.ts";
import { startNatsServer, stopAllNatsServers, type NatsServer } from "./support/nats.ts";
import { tempDir } from "./support/paths.ts";
import { captureLog } from "./support/pipeline.ts";
import { startProcess } from "./support/process.ts";
import { until } from "./support/wait.ts";

setDefaultTimeout(60_000);

const enc = new TextEncoder();

/** A small real JPEG (jpeg-js, 4:4:4) of a flat grey picture. */
function smallJpeg(w = 16, h = 16): Uint8Array {
  const out = encodeJpeg({ width: w, height: h, data: new Uint8Array(w * h * 4).fill(128) }, 85).data;
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

/** Offset of the first segment with `marker` (its 0xFF byte). */
function segment(j: Uint8Array, marker: number): number {
  for (let i = 2; i < j.length; ) {
    if (j[i + 1] === marker) return i;
    i += 2 + ((j[i + 2] << 8) | j[i + 3]);
  }
  throw new Error(`no marker ${marker.toString(16)}`);
}

/** The JPEG with its SOF0 size rewritten: a forged header over a few bytes of real data. */
function withSize(j: Uint8Array, width: number, height: number): Uint8Array {
  const b = j.slice();
  const i = segment(b, 0xc0);
  b.set([height >> 8, height & 255, width >> 8, width & 255], i + 5);
  return b;
}

/** `n` bytes of comment (COM) right after SOI: pads a JPEG to a given size. */
function padded(j: Uint8Array, n: number): Uint8Array {
  const out = new Uint8Array(j.length + n + 4);
  out.set(j.subarray(0, 2));
  out.set([0xff, 0xfe, (n + 2) >> 8, (n + 2) & 255], 2);
  out.set(j.subarray(2), n + 6);
  return out;
}

/** A frame message from meta and blobs (the blobs list filled in). */
function message(meta: Record<string, unknown>, blobs: [string, Uint8Array][]): Uint8Array {
  const m = enc.encode(JSON.stringify({ ...meta, blobs: blobs.map(([name, b]) => ({ name, length: b.length })) }));
  const out = new Uint8Array(8 + m.length + blobs.reduce((a, [, b]) => a + b.length, 0));
  out.set([0x46, 0x57, 0x4d, 0x32]);
  new DataView(out.buffer).setUint32(4, m.length);
  out.set(m, 8);
  let off = 8 + m.length;
  for (const [, b] of blobs) {
    out.set(b, off);
    off += b.length;
  }
  return out;
}

const head = (seq: number) => ({ v: 2, kind: "frame", stream: "cam", seq, ts: Date.now(), live: true, timings: {} });

/** The message: 2,199 bytes whose JPEG header declares 8000×8000. */
function forgedJpegFrame(seq = 1, width = 8000, height = 8000, total = 2199): Uint8Array {
  const build = (j: Uint8Array) => message({ ...head(seq), image: { width, height, format: "rgb24", encoding: "jpeg" } }, [["image", j]]);
  const j = withSize(smallJpeg(), width, height);
  let pad = total - build(j).length - 4;
  let out = build(padded(j, pad));
  pad += total - out.length; // the blob length in the meta may have gained a digit
  out = build(padded(j, pad));
  return out;
}

/** A frame with predictions of the given layout and dims, and blobs of the given sizes (and a tensor unless `tensor` is null). */
function predictionsFrame(seq: number, dims: number[], bytes = 0, layout = "yolov5", tensor: number[] | null = [1, 3, 2, 2]): Uint8Array {
  return message(
    {
      ...head(seq),
      image: { width: 2, height: 2, format: "rgb24" },
      ...(tensor ? { tensor: { dims: tensor, dtype: "uint8", letterbox: { scaleX: 1, scaleY: 1, padX: 0, padY: 0 } } } : {}),
      predictions: { layout, dims, dtype: "float32", classNames: ["person"], model: "m.onnx" },
    },
    [
      ["image", new Uint8Array(12)],
      ...(tensor ? [["tensor", new Uint8Array(tensor.reduce((a, b) => a * b, 1))] as [string, Uint8Array]] : []),
      ["predictions", new Uint8Array(bytes)],
    ],
  );
}

function refusal(bytes: Uint8Array): WireFormatError {
  try {
    decodeMessage(bytes);
  } catch (e) {
    if (e instanceof WireFormatError) return e;
    throw e;
  }
  throw new Error("the message was accepted");
}

/** The same refusal from the asynchronous decoder (sharp): the header checks run before it too. */
async function refusalAsync(bytes: Uint8Array): Promise<WireFormatError> {
  try {
    await decodeMessageAsync(bytes);
  } catch (e) {
    if (e instanceof WireFormatError) return e;
    throw e;
  }
  throw new Error("the message was accepted");
}

/** A frame message of a v1 sender: FWM1, meta v 1. */
function v1Frame(seq: number): Uint8Array {
  const b = message({ ...head(seq), v: 1, image: { width: 2, height: 2, format: "rgb24" } }, [["image", new Uint8Array(12)]]);
  b[3] = 0x31;
  return b;
}

/** An H.264 access unit message declaring `bytes` of packet (the blob really that long). */
function packetMessage(seq: number, bytes: number): Uint8Array {
  const au = new Uint8Array(bytes);
  au.set([0, 0, 0, 1, 0x65]);
  return message({ ...head(seq), image: { width: 1920, height: 1080, format: "h264" }, meta: { video: { codec: "h264", pts: seq * 40, keyframe: true } } }, [["image", au]]);
}

describe("a JPEG blob's own header, before decoding", () => {
  test("the issue's 2,199-byte frame declaring 8000x8000 is refused from its header (E_WIRE_LIMIT), by both decoders", async () => {
    const bytes = forgedJpegFrame();
    expect(bytes.length).toBe(2199);
    for (const err of [refusal(bytes), await refusalAsync(bytes)]) {
      expect(err).toBeInstanceOf(WireLimitError);
      expect(err.code).toBe("E_WIRE_LIMIT");
      expect(err.message).toContain("JPEG frame header declares 8000x8000 (64.0 MP); the wire limit is 33.2 MP");
    }
  });

  test("within the pixel limit, a size out of proportion to the blob is refused by its compression ratio", () => {
    const err = refusal(forgedJpegFrame(1, 4000, 3000));
    expect(err).toBeInstanceOf(WireLimitError);
    expect(err.message).toMatch(/declares 4000x3000 \(36000000 bytes decoded\) in a \d{4}-byte blob: \d+:1, more than the 1024:1/);
  });

  test("a JPEG header that contradicts meta.image is refused before decoding", () => {
    const j = withSize(smallJpeg(), 8000, 8000);
    const err = refusal(message({ ...head(1), image: { width: 16, height: 16, format: "rgb24", encoding: "jpeg" } }, [["image", j]]));
    expect(err.message).toBe("JPEG frame header declares 8000x8000, meta says 16x16");
    // The same for a frame that keeps its JPEG (format: jpeg), which later stages decode.
    const kept = refusal(message({ ...head(1), image: { width: 16, height: 16, format: "jpeg" } }, [["image", j]]));
    expect(kept.message).toBe("JPEG frame header declares 8000x8000, meta says 16x16");
  });

  test("a second frame header, 255 components, a lossless JPEG are refused", () => {
    const j = smallJpeg();
    const sof = segment(j, 0xc0);
    const len = (j[sof + 2] << 8) | j[sof + 3];
    const eoi = j.length - 2;
    // A second SOF after the scan declaring another size: a decoder would re-size to it.
    const second = j.slice(sof, sof + 2 + len);
    second.set([8000 >> 8, 8000 & 255, 8000 >> 8, 8000 & 255], 5);
    const twice = new Uint8Array([...j.subarray(0, eoi), ...second, ...j.subarray(sof + 2 + len)]);
    const cases: [Uint8Array, string][] = [
      [twice, "more than one frame header"],
      [Uint8Array.from(j, (b, i) => (i === sof + 9 ? 255 : b)), "255 components"],
      [Uint8Array.from(j, (b, i) => (i === sof + 1 ? 0xc3 : b)), "unsupported JPEG coding (SOF3)"],
    ];
    for (const [blob, reason] of cases) {
      const err = refusal(message({ ...head(1), image: { width: 16, height: 16, format: "rgb24", encoding: "jpeg" } }, [["image", blob]]));
      expect(err.message).toContain(reason);
    }
    // runtime/media/image-decode.ts (request bodies) refuses the two sizes too, before ffmpeg sees them.
    expect(() => readImageHeader(twice)).toThrow(CorruptImageError);
    expect(() => readImageHeader(twice)).toThrow("JPEG declares two frame sizes, 16x16 and 8000x8000");
    expect(readImageHeader(j)).toEqual({ format: "jpeg", width: 16, height: 16 });
  });

  test("the flattest real JPEGs pass: jpeg-js's and sharp's links, and ffmpeg's 4:2:0 with optimal Huffman tables (~500:1)", async () => {
    const flat = makeFrame(1, { width: 640, height: 480, fill: () => [0, 0, 0] });
    const back = decodeMessage(encodeMessage(flat, { encoding: "jpeg", quality: 85 })) as Frame;
    expect(back.image.data.length).toBe(640 * 480 * 3);
    const viaSharp = (await decodeMessageAsync(await encodeMessageAsync(flat, { encoding: "jpeg", quality: 85 }))) as Frame;
    expect(viaSharp.image.data.length).toBe(640 * 480 * 3);

    const dir = await tempDir("framewire-flat-");
    try {
      const file = join(dir.path, "black.jpg");
      const ff = startProcess([resolveFfmpeg(), "-loglevel", "error", "-f", "lavfi", "-i", "color=black:s=1920x1080", "-frames:v", "1", "-q:v", "2", file]);
      expect(await ff.exited).toBe(0);
      const jpeg = new Uint8Array(await readFile(file));
      expect((1920 * 1080 * 3) / jpeg.length).toBeGreaterThan(400); // as flat as JPEG gets
      const ffFrame = message({ ...head(1), image: { width: 1920, height: 1080, format: "rgb24", encoding: "jpeg" } }, [["image", jpeg]]);
      expect((decodeMessage(ffFrame) as Frame).image.data.length).toBe(1920 * 1080 * 3);
      expect(((await decodeMessageAsync(ffFrame)) as Frame).image.data.length).toBe(1920 * 1080 * 3);
    } finally {
      await dir.remove();
    }
  });
});

describe("dims bounded by the bytes received", () => {
  test("the issue's predictions dims [1,1e15,0] (product 0, empty blob) are refused; so is [1,0,1e15]", () => {
    const bytes = predictionsFrame(1, [1, 1e15, 0], 0, "yolov5", null);
    expect(bytes.length).toBeLessThan(450);
    // Zero anchors is a real output (infer-onnx kept no candidate), zero values per anchor is not.
    expect(refusal(bytes).message).toBe("predictions dims [1,1000000000000000,0]: a yolov5 row needs 5 + at least 1 class values");
    const wide = refusal(predictionsFrame(1, [1, 0, 1e15], 0, "yolov5", null));
    expect(wide).toBeInstanceOf(WireLimitError);
    expect(wide.message).toContain("values per anchor, more than the 4096 the wire accepts");
    const none = decodeMessage(predictionsFrame(1, [1, 0, 85], 0, "yolov5", null)) as Frame;
    expect(none.predictions!.dims).toEqual([1, 0, 85]);
  });

  test("dims larger than their blob, zero dims, shapes no YOLO head has are refused", () => {
    const cases: [Uint8Array, RegExp, boolean][] = [
      [predictionsFrame(1, [1, 2e8, 85]), /predictions blob is 0 bytes, dims \[1,200000000,85\] need 68000000000$/, true],
      [predictionsFrame(1, [1, 1e15, 85], 16), /need 3\.40e\+17/, true],
      [predictionsFrame(1, [1, 2, 6], 48, "yolov5", [1, 0, 640, 640]), /tensor\.dims\.1/, false],
      [predictionsFrame(1, [2, 2, 6], 96), /not a YOLO output/, false],
      [predictionsFrame(1, [1, 2, 3, 2], 48), /not a YOLO output/, false],
      [predictionsFrame(1, [1, 8, 5], 160), /a yolov5 row needs 5 \+ at least 1 class/, false],
      [predictionsFrame(1, [1, 4, 8], 128, "yolov8"), /a yolov8 column needs 4 \+ at least 1 class/, false],
    ];
    for (const [bytes, reason, limit] of cases) {
      const err = refusal(bytes);
      expect(err.message).toMatch(reason);
      expect(err instanceof WireLimitError).toBe(limit);
    }
    // A consistent frame still decodes: every value it declares is in its blob.
    const ok = decodeMessage(predictionsFrame(1, [1, 2, 6], 48)) as Frame;
    expect(ok.predictions!.data.length).toBe(12);
  });
});

describe("video access units bounded by WIRE_LIMITS.maxPacketBytes", () => {
  test("a packet one byte over the limit is refused (E_WIRE_LIMIT); one at the limit passes", () => {
    const err = refusal(packetMessage(1, WIRE_LIMITS.maxPacketBytes + 1));
    expect(err).toBeInstanceOf(WireLimitError);
    expect(err.message).toBe(`h264 access unit is ${WIRE_LIMITS.maxPacketBytes + 1} bytes; the wire limit is ${WIRE_LIMITS.maxPacketBytes}`);
    expect((decodeMessage(packetMessage(2, WIRE_LIMITS.maxPacketBytes)) as Frame).image.data.length).toBe(WIRE_LIMITS.maxPacketBytes);
  });
});

describe("500 hostile messages through NATS", () => {
  let server: NatsServer;
  let nc: NatsConnection;
  beforeAll(async () => {
    // Room for an access unit over the wire limit: the bus, not the server, must refuse it.
    server = await startNatsServer({ maxPayload: "16MB" });
    nc = await connect({ servers: `127.0.0.1:${server.port}` });
  });
  afterAll(async () => {
    await nc?.close();
    await stopAllNatsServers();
  });

  test("are refused and counted by reason, the log stays short, and the real frames between them arrive", async () => {
    const log = captureLog("worker");
    const bus = await NatsBus.connect({ url: server.url, log });
    try {
      const got: Message[] = [];
      bus.subscribe("fw.flood.work", (m) => void got.push(m));
      await bus.nc.flush();
      const kinds = [
        () => forgedJpegFrame(1),
        () => forgedJpegFrame(2, 4000, 3000),
        () => predictionsFrame(3, [1, 1e15, 0]),
        () => predictionsFrame(4, [1, 2e8, 85]),
        () => enc.encode("garbage"),
        () => v1Frame(5),
      ];
      const expected = { oversize: 0, malformed: 0 };
      for (let i = 0; i < 500; i++) {
        const k = i % kinds.length;
        nc.publish("fw.flood.work", kinds[k]());
        expected[k === 0 || k === 1 || k === 3 ? "oversize" : "malformed"]++;
        if (i % 50 === 49) nc.publish("fw.flood.work", encodeMessage(makeFrame(100 + i, { stream: "real", width: 32, height: 24 })));
        // Two forged access units of 8 MiB + 1 among them.
        if (i % 200 === 100) {
          nc.publish("fw.flood.work", packetMessage(i, WIRE_LIMITS.maxPacketBytes + 1));
          expected.oversize++;
        }
      }
      await until(() => got.length === 10, "the 10 real frames");
      // One publisher's messages arrive in order: every hostile one came before the last real frame.
      expect(bus.stats.rejectedBy).toMatchObject({ oversize: expected.oversize, malformed: expected.malformed, duplicate: 0 });
      expect(bus.stats.rejected).toBe(502);
      expect(got.map((m) => m.seq)).toEqual(Array.from({ length: 10 }, (_, k) => 149 + 50 * k));
      const lines = log.lines.filter((l) => l.includes("rejected message on fw.flood.work"));
      expect(lines.length).toBeLessThanOrEqual(2 * 6);
      expect(lines.some((l) => l.includes("declares 8000x8000"))).toBe(true);
      expect(lines.some((l) => l.includes("frame is wire format v1 (FWM1); this framewire reads v2: upgrade the sender"))).toBe(true);
    } finally {
      await bus.close();
    }
  });
});

test("the limits are what docs/wire-format.md states", () => {
  expect(WIRE_LIMITS).toEqual({ maxSide: 16384, maxJpegPixels: 33_177_600, maxJpegRatio: 1024, maxPacketBytes: 8_388_608, maxDims: 8, maxYoloValues: 4096 });
});
