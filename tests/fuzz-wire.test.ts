/**
 * Generated bad wire messages (wire v2): mutations of real encoder output
 * (raw with a uint8 tensor, JPEG from sharp and from jpeg-js, an H.264
 * access unit, a bare frame, an event) must make both decoders (the
 * synchronous one, jpeg-js; the asynchronous one, sharp) throw
 * WireFormatError or return a well-formed message (consistent sizes),
 * never throw anything else.
 */
import { describe, expect, test } from "bun:test";
import type { Frame, Message } from "../runtime/core/message.ts";
import { byteTensor } from "../runtime/core/byte-tensor.ts";
import { decodeMessage, decodeMessageAsync, encodeMessage, encodeMessageAsync, WIRE_LIMITS, WireFormatError } from "../runtime/bus/wire.ts";
import { flipBytes, rng, type Rng } from "./fuzz-support.ts";

const CASES = 400;

function sampleFrame(r: Rng): Frame {
  const width = 8 + r.int(8);
  const height = 6 + r.int(6);
  return {
    kind: "frame",
    stream: "cam",
    seq: r.int(1000),
    ts: Date.now(),
    live: true,
    image: { width, height, format: "rgb24", data: r.bytes(width * height * 3) },
    tensor: byteTensor([1, 3, 4, 4], r.bytes(48), { scaleX: 0.5, scaleY: 0.5, padX: 0, padY: 2 }),
    predictions: { layout: "yolov5", dims: [1, 2, 7], data: new Float32Array(14).map(() => r.next()), classNames: ["person", "car"], model: "m.onnx" },
    detections: [{ class: "person", classId: 0, score: 0.9, box: [1, 2, 3, 4], trackId: 3 }],
    timings: { cam: 1.5 },
  };
}

/** The real encodings the mutations start from: raw, JPEG-on-the-wire (sharp, jpeg-js), a bare frame, an H.264 access unit, and an event (last). */
async function originals(r: Rng): Promise<Uint8Array[]> {
  const f = sampleFrame(r);
  const bare: Frame = { kind: "frame", stream: "s", seq: 0, ts: 0, live: false, image: f.image, timings: {} };
  const packet: Frame = {
    ...bare,
    image: { width: 1280, height: 720, format: "h264", data: r.bytes(20 + r.int(200)) },
    meta: { video: { codec: "h264", pts: r.int(10_000), keyframe: r.next() < 0.5 } },
  };
  const event: Message = { kind: "event", stream: "cam", seq: 4, ts: 1, type: "line-cross", data: { line: "door", dir: "in" } };
  return [
    encodeMessage(f),
    await encodeMessageAsync(f, { encoding: "jpeg", quality: 70 }),
    encodeMessage(f, { encoding: "jpeg", quality: 70 }),
    encodeMessage(bare),
    encodeMessage(packet),
    encodeMessage(event),
  ];
}

const metaLen = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset).getUint32(4);

/** Rewrites the meta JSON of a frame message (keeping the blobs), fixing up its length field. */
function withMeta(b: Uint8Array, edit: (meta: any) => unknown): Uint8Array {
  const m = metaLen(b);
  const meta = new TextEncoder().encode(JSON.stringify(edit(JSON.parse(new TextDecoder().decode(b.subarray(8, 8 + m))))));
  const out = new Uint8Array(8 + meta.length + b.length - 8 - m);
  out.set(b.subarray(0, 4));
  new DataView(out.buffer).setUint32(4, meta.length);
  out.set(meta, 8);
  out.set(b.subarray(8 + m), 8 + meta.length);
  return out;
}

const HUGE = [2 ** 31, 2 ** 32 - 1, 1e15, Number.MAX_SAFE_INTEGER, 16384, 65535, -1, 0.5, 1e308];

type Mutation = (r: Rng, b: Uint8Array) => Uint8Array;
const frameMutations: Record<string, Mutation> = {
  truncation: (r, b) => b.subarray(0, r.int(b.length)),
  "flip header bytes": (r, b) => flipBytes(r, b, 1 + r.int(3), 0, 8),
  "flip meta bytes": (r, b) => flipBytes(r, b, 1 + r.int(4), 8, 8 + metaLen(b)),
  "flip blob bytes": (r, b) => flipBytes(r, b, 1 + r.int(16), 8 + metaLen(b)),
  "wrong meta length": (r, b) => {
    const out = b.slice();
    new DataView(out.buffer).setUint32(4, r.pick([0, 1, metaLen(b) - 1, metaLen(b) + 1, b.length, 2 ** 32 - 1, r.int(2 ** 32)]));
    return out;
  },
  "wrong blob length": (r, b) =>
    withMeta(b, (m) => {
      const blob = r.pick(m.blobs as { length: number }[]);
      blob.length = r.pick([...HUGE, blob.length + 1, blob.length - 1, 0]);
      return m;
    }),
  "huge declared image": (r, b) => withMeta(b, (m) => ((m.image[r.pick(["width", "height"])] = r.pick(HUGE)), m)),
  "huge tensor dims": (r, b) =>
    withMeta(b, (m) => {
      const t = r.pick([m.tensor, m.predictions].filter(Boolean)) ?? m.image;
      t.dims = Array.from({ length: 1 + r.int(10) }, () => r.pick([...HUGE, 0, 3]));
      return m;
    }),
  "retyped meta field": (r, b) =>
    withMeta(b, (m) => {
      const keys = Object.keys(m);
      m[r.pick(keys)] = r.pick([null, "x", 1, [], {}, true, { __proto__: { polluted: 1 } }]);
      return m;
    }),
  "zero or huge dims with an empty blob": (r, b) =>
    withMeta(b, (m) => {
      const t = r.pick([m.tensor, m.predictions].filter(Boolean));
      if (!t) return m;
      t.dims = [1, r.pick([1e15, 2e8, 2 ** 31, 0]), r.pick([0, 85])];
      for (const blob of m.blobs as { name: string; length: number }[]) if (blob.name !== "image") blob.length = 0;
      return m;
    }),
  "forged JPEG frame size": (r, b) => {
    // Rewrites the SOF0 size inside a JPEG blob (and, half the time, meta.image to match).
    const m = metaLen(b);
    const meta = JSON.parse(new TextDecoder().decode(b.subarray(8, 8 + m)));
    if (meta.image.encoding !== "jpeg") return b;
    const out = b.slice();
    const start = 8 + m;
    const [w, h] = [r.pick([8000, 16384, 4000, 65535, 1]), r.pick([8000, 16384, 3000, 65535, 1])];
    for (let i = start + 2; i < out.length - 9; i++) {
      if (out[i] === 0xff && out[i + 1] === 0xc0) {
        out.set([h >> 8, h & 255, w >> 8, w & 255], i + 5);
        break;
      }
    }
    return r.next() < 0.5 ? out : withMeta(out, (mm) => ((mm.image.width = w), (mm.image.height = h), mm));
  },
  "extra or missing blob": (r, b) =>
    withMeta(b, (m) => {
      if (r.next() < 0.5) m.blobs.pop();
      else m.blobs.push({ name: r.pick(["image", "tensor", "predictions", "other"]), length: r.int(64) });
      return m;
    }),
};

const JSON_VALUES = [null, true, 0, -1, 1e400, "", "x", [], {}, { kind: "event" }, { kind: "frame" }, { kind: "event", stream: 1 }, { v: 1 }];
function randomJson(r: Rng, depth = 0): unknown {
  if (depth > 3 || r.next() < 0.4) return r.pick(JSON_VALUES);
  if (r.next() < 0.5) return Array.from({ length: r.int(4) }, () => randomJson(r, depth + 1));
  const keys = ["kind", "stream", "seq", "ts", "type", "data", "v", "__proto__", "constructor"];
  return Object.fromEntries(Array.from({ length: r.int(6) }, () => [r.pick(keys), randomJson(r, depth + 1)]));
}

function checkWellFormed(m: Message): void {
  expect(["frame", "event"]).toContain(m.kind);
  if (m.kind === "event") {
    expect(typeof m.stream).toBe("string");
    expect(typeof m.data).toBe("object");
    return;
  }
  const { width, height, format, data } = m.image;
  if (format === "h264" || format === "hevc") {
    expect(data.length).toBeGreaterThanOrEqual(1);
    expect(data.length).toBeLessThanOrEqual(WIRE_LIMITS.maxPacketBytes);
    expect((m.meta?.video as { codec?: string } | undefined)?.codec).toBe(format);
  } else if (format !== "jpeg") expect(data.length).toBe(width * height * 3);
  for (const t of [m.tensor, m.predictions]) {
    if (!t) continue;
    // What a frame declares is what it carries: every dim at least 1, every value in the blob.
    expect(t.dims.every((d) => d >= 1)).toBe(true);
    expect(t.data.length).toBe(t.dims.reduce((a, b) => a * b, 1));
  }
}

/** Both decoders on the same bytes: "ok" when both give a well-formed message, "refused" when either refuses with a WireFormatError. */
async function decodeOutcome(bytes: Uint8Array, what: string): Promise<"ok" | "refused"> {
  const outcomes: ("ok" | "refused")[] = [];
  for (const decode of [decodeMessage, decodeMessageAsync]) {
    try {
      checkWellFormed(await decode(bytes));
      outcomes.push("ok");
    } catch (err) {
      if (!(err instanceof WireFormatError)) throw new Error(`${what} (${decode.name}): ${(err as Error)?.name}: ${(err as Error)?.message}`);
      outcomes.push("refused");
    }
  }
  return outcomes.includes("refused") ? "refused" : "ok";
}

describe("fuzzed wire messages", () => {
  test(`${CASES} seeded mutations of real encodings: WireFormatError or a well-formed message`, async () => {
    const r = rng(0x1dea);
    const tally = { ok: 0, refused: 0 };
    const names = Object.keys(frameMutations);
    for (let n = 0; n < CASES; n++) {
      const base = await originals(r);
      const frames = base.slice(0, 5);
      const name = r.pick(names);
      const bytes = frameMutations[name](r, r.pick(frames));
      // A decoded JPEG never exceeds the wire limits: checked from its header, before decoding.
      if (name === "forged JPEG frame size") {
        for (const decode of [decodeMessage, decodeMessageAsync]) {
          try {
            const f = await decode(bytes);
            // (an access unit is never decoded here: its bytes are bounded by maxPacketBytes instead)
            if (f.kind === "frame" && f.image.format !== "h264") expect(f.image.width * f.image.height * 3).toBeLessThanOrEqual(bytes.length * WIRE_LIMITS.maxJpegRatio);
          } catch (err) {
            if (!(err instanceof WireFormatError)) throw err;
          }
        }
      }
      tally[await decodeOutcome(bytes, `case ${n} (${name})`)]++;
    }
    expect(tally.ok + tally.refused).toBe(CASES);
    expect(tally.refused).toBeGreaterThan(CASES / 2);
  });

  test("random JSON, mutated events and random bytes", async () => {
    const r = rng(0xbeef);
    const enc = new TextEncoder();
    const outcomes: string[] = [];
    const event = (await originals(r)).at(-1)!;
    for (let n = 0; n < 100; n++) outcomes.push(await decodeOutcome(enc.encode(JSON.stringify(randomJson(r))), `json ${n}`));
    for (let n = 0; n < 50; n++) outcomes.push(await decodeOutcome(r.next() < 0.5 ? event.subarray(0, r.int(event.length)) : flipBytes(r, event, 1 + r.int(4)), `event ${n}`));
    for (let n = 0; n < 50; n++) {
      const bytes = r.bytes(r.int(300));
      // Half of them start with the magic so they reach the frame parser.
      if (r.next() < 0.5 && bytes.length >= 4) bytes.set([0x46, 0x57, 0x4d, r.next() < 0.8 ? 0x32 : 0x31]);
      outcomes.push(await decodeOutcome(bytes, `bytes ${n}`));
    }
    expect(outcomes).toHaveLength(200);
    expect(outcomes.filter((o) => o === "refused").length).toBeGreaterThan(150);
    expect(await decodeOutcome(new Uint8Array(0), "empty")).toBe("refused");
  });

  test("the unmutated encodings decode (the generators start from valid messages)", async () => {
    for (const b of await originals(rng(1))) expect(await decodeOutcome(b, "original")).toBe("ok");
  });
});
