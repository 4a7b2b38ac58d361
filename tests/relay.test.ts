/**
 * The encoded relay: `ingest` with `decode: false` (H.264/H.265 access units
 * split from ffmpeg's stream copy) and the `decode` operator, against real
 * ffmpeg, a real RTSP server and real nats-server processes.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { resolveFfmpeg } from "../runtime/media/ffmpeg.ts";
import { AnnexBSplitter } from "../runtime/media/annexb.ts";
import type { Event, Frame, Message } from "../runtime/core/message.ts";
import type { SourceInstance, TransformInstance } from "../runtime/core/operator.ts";
import { decodeMessage, encodeMessage } from "../runtime/bus/wire.ts";
import { makeSource, makeTransform, readAll, type Made } from "./support/operators.ts";
import { repoRoot, sampleVideo, tempDir } from "./support/paths.ts";
import { startProcess, type Child } from "./support/process.ts";
import { startRtspServer, stopAllRtspServers } from "./support/rtsp.ts";
import { startNatsServer, stopAllNatsServers } from "./support/nats.ts";
import { until } from "./support/wait.ts";

setDefaultTimeout(60_000);

let tmp: Awaited<ReturnType<typeof tempDir>>;
/** 30 frames, keyframes every 10, with B-frames (decode order differs from display order). */
let clip: string;
/** The same 30 frames as H.265. */
let hevcClip: string;
/** 20 frames at 480x360, then 20 at 1280x720, in one MPEG-TS file. */
let changing: string;
/** 12 frames with a keyframe every 4, for the split runs. */
let short: string;

async function ffmpeg(args: string[]): Promise<void> {
  const p = startProcess([resolveFfmpeg(), "-hide_banner", "-loglevel", "error", "-y", ...args]);
  const code = await p.exited;
  if (code !== 0) throw new Error(`ffmpeg ${args.join(" ")} exited ${code}: ${p.stderr()}`);
}

/** What ffprobe says of each packet, in decode order: keyframe or not. */
async function probeKeyframes(file: string): Promise<boolean[]> {
  const p = startProcess(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=flags", "-of", "csv=p=0", file]);
  expect(await p.exited).toBe(0);
  return p.stdout().split("\n").filter(Boolean).map((l) => l.startsWith("K"));
}

beforeAll(async () => {
  tmp = await tempDir("framewire-relay-");
  clip = join(tmp.path, "clip.mp4");
  hevcClip = join(tmp.path, "clip-hevc.mp4");
  changing = join(tmp.path, "changing.ts");
  short = join(tmp.path, "short.mp4");
  const x264 = ["-an", "-c:v", "libx264", "-preset", "fast", "-bf", "2", "-g", "10", "-keyint_min", "10", "-sc_threshold", "0"];
  await ffmpeg(["-i", sampleVideo, "-frames:v", "30", ...x264, clip]);
  await ffmpeg(["-i", sampleVideo, "-frames:v", "30", "-an", "-c:v", "libx265", "-x265-params", "log-level=error:keyint=10:min-keyint=10:bframes=2", "-tag:v", "hvc1", hevcClip]);
  await ffmpeg(["-i", sampleVideo, "-frames:v", "12", "-an", "-c:v", "libx264", "-preset", "fast", "-g", "4", "-keyint_min", "4", "-sc_threshold", "0", short]);
  const a = join(tmp.path, "a.ts");
  const b = join(tmp.path, "b.ts");
  await ffmpeg(["-i", sampleVideo, "-frames:v", "20", ...x264, "-f", "mpegts", a]);
  await ffmpeg(["-ss", "2", "-i", sampleVideo, "-frames:v", "20", "-vf", "scale=1280:720", ...x264, "-f", "mpegts", b]);
  await writeFile(changing, Buffer.concat([await readFile(a), await readFile(b)]));
});
afterAll(async () => {
  await stopAllRtspServers();
  await stopAllNatsServers();
  await tmp?.remove();
});

/** Every message of a file source, read to the end (frames and events). */
async function readMessages(options: unknown): Promise<{ msgs: Message[]; log: string }> {
  const src = await makeSource("ingest", options, "cam");
  const msgs: Message[] = [];
  await src.instance.run(async (m) => void msgs.push(m), src.abort.signal);
  await src.instance.close?.();
  return { msgs, log: src.log.text() };
}

/** Runs messages through a transform in order, as its single worker would; returns everything it gave. */
async function through(t: TransformInstance, msgs: Message[]): Promise<Message[]> {
  const out: Message[] = [];
  for (const m of msgs) {
    const r = await t.process(m);
    if (r) out.push(...(Array.isArray(r) ? r : [r]));
  }
  return out;
}

const framesOf = (msgs: Message[]) => msgs.filter((m): m is Frame => m.kind === "frame");
const video = (f: Frame) => f.meta?.video as { codec: string; pts: number; keyframe: boolean };

describe("Annex B access units from ffmpeg's stream copy", () => {
  test("H.264: one access unit per frame, keyframes where ffprobe says, parameter sets with each keyframe", async () => {
    const { msgs, log } = await readMessages({ url: clip, decode: false });
    const frames = framesOf(msgs);
    const keys = await probeKeyframes(clip);
    expect(keys).toHaveLength(30);
    expect(frames).toHaveLength(30);
    expect(frames.map((f) => video(f).keyframe)).toEqual(keys);
    expect(keys.filter(Boolean)).toHaveLength(3);
    expect(frames.map((f) => f.seq)).toEqual(frames.map((_, i) => i));
    for (const f of frames) {
      expect(f).toMatchObject({ kind: "frame", stream: "cam", live: false, image: { width: 480, height: 360, format: "h264" } });
      expect(video(f).codec).toBe("h264");
      const nals = nalTypes(f.image.data, "h264");
      // Keyframes carry SPS (7) and PPS (8) before the IDR slice (5).
      if (video(f).keyframe) expect(nals.indexOf(7)).toBeLessThan(nals.indexOf(5));
      if (video(f).keyframe) expect(nals).toContain(8);
      else expect(nals).not.toContain(5);
    }
    expect(frames.map((f) => video(f).pts)).toEqual([...frames.map((f) => video(f).pts)].sort((a, b) => a - b));
    // The end of a relayed file is said downstream, so a decoder can flush.
    expect(msgs.at(-1)).toMatchObject({ kind: "event", type: "stream-end", stream: "cam", seq: 30, data: { reason: "end" } });
    expect(log).toContain("relayed without decoding");
  });

  test("H.265: the same, with VPS/SPS/PPS before each IRAP picture", async () => {
    const frames = framesOf((await readMessages({ url: hevcClip, decode: false })).msgs);
    const keys = await probeKeyframes(hevcClip);
    expect(frames).toHaveLength(30);
    expect(frames.map((f) => video(f).keyframe)).toEqual(keys);
    for (const f of frames.filter((x) => video(x).keyframe)) {
      expect(f.image).toMatchObject({ width: 480, height: 360, format: "hevc" });
      expect(nalTypes(f.image.data, "hevc").slice(0, 3)).toEqual([32, 33, 34]);
    }
  });

  test("the splitter takes any chunking: byte by byte gives the same units as whole", async () => {
    const frames = framesOf((await readMessages({ url: clip, decode: false })).msgs);
    const whole = Buffer.concat(frames.map((f) => f.image.data));
    const split = new AnnexBSplitter("h264");
    const units = [];
    for (let i = 0; i < whole.length; i += 1 + (i % 7)) units.push(...split.push(whole.subarray(i, i + 1 + (i % 7))));
    units.push(...split.end());
    expect(units.map((u) => Buffer.from(u.data).toString("hex"))).toEqual(frames.map((f) => Buffer.from(f.image.data).toString("hex")));
  });

  test("a camera that is neither H.264 nor H.265: one clear config error, no reconnect loop", async () => {
    const mpeg4 = join(tmp.path, "mpeg4.mp4");
    await ffmpeg(["-i", sampleVideo, "-frames:v", "5", "-an", "-c:v", "mpeg4", mpeg4]);
    const src = await makeSource("ingest", { url: mpeg4, decode: false, live: true, reconnectDelay: 0.05 });
    await expect(src.instance.run(async () => {}, src.abort.signal)).rejects.toThrow(/is mpeg4 video: decode: false relays H\.264 and H\.265 only/);
    expect(src.log.text()).not.toContain("reconnect #");
  });

  test("fps, width and height with decode: false are refused as options", async () => {
    await expect(makeSource("ingest", { url: clip, decode: false, fps: 5 })).rejects.toThrow(/fps, width and height need decoding/);
    await expect(makeSource("ingest", { streams: [{ id: "a", url: clip, decode: false, width: 320, height: 240 }] })).rejects.toThrow(/need decoding/);
  });
});

/** NAL unit types of an Annex B buffer, in order. */
function nalTypes(data: Uint8Array, codec: "h264" | "hevc"): number[] {
  const out: number[] = [];
  for (let i = 0; i + 3 < data.length; i++) {
    if (data[i] === 0 && data[i + 1] === 0 && data[i + 2] === 1) {
      out.push(codec === "h264" ? data[i + 3] & 0x1f : (data[i + 3] >> 1) & 0x3f);
      i += 3;
    }
  }
  return out;
}

describe("decode: relayed packets back to pictures", () => {
  test("ingest decode:false → decode gives the frames the decoding ingest gives: same count, seq and pixels", async () => {
    for (const file of [clip, hevcClip]) {
      const decoded = await readAll({ url: file });
      const { msgs } = await readMessages({ url: file, decode: false });
      const dec = await makeTransform("decode", {});
      const out = await through(dec.instance, msgs);
      await dec.instance.close?.();
      const frames = framesOf(out);
      expect(frames).toHaveLength(decoded.length);
      expect(frames.map((f) => f.seq)).toEqual(decoded.map((f) => f.seq));
      for (let i = 0; i < frames.length; i++) {
        expect(frames[i]).toMatchObject({ stream: "cam", image: { width: 480, height: 360, format: "rgb24" } });
        expect(frames[i].meta?.video).toBeUndefined();
        expect(Buffer.from(frames[i].image.data).equals(Buffer.from(decoded[i].image.data))).toBe(true);
      }
      // The stream-end event comes after every picture.
      expect(out.at(-1)).toMatchObject({ kind: "event", type: "stream-end" });
    }
  });

  test("a decoder that joins mid-stream drops packets until the next keyframe, says so once", async () => {
    const decoded = await readAll({ url: clip });
    const { msgs } = await readMessages({ url: clip, decode: false });
    const dec = await makeTransform("decode", {});
    // Joins at packet 3 (not a keyframe); the next keyframe is packet 10.
    const out = framesOf(await through(dec.instance, msgs.slice(3)));
    await dec.instance.close?.();
    expect(out).toHaveLength(20);
    expect(out.map((f) => f.seq)).toEqual(decoded.slice(10).map((f) => f.seq));
    for (let i = 0; i < out.length; i++) expect(Buffer.from(out[i].image.data).equals(Buffer.from(decoded[10 + i].image.data))).toBe(true);
    const log = dec.log.text();
    expect(log.match(/joined mid-stream/g)).toHaveLength(1);
    expect(log).toContain("joined mid-stream at #3; dropping packets until the next keyframe");
    expect(log).toContain("keyframe at #10; decoding (7 packet(s) dropped before it)");
    expect((dec.instance.metrics!().find((m) => m.name === "decode_dropped_total") as { value: number } | undefined)?.value).toBe(7);
  });

  test("packets missing mid-stream: the decoder waits for the next keyframe instead of decoding garbage", async () => {
    const decoded = await readAll({ url: clip });
    const { msgs } = await readMessages({ url: clip, decode: false });
    const dec = await makeTransform("decode", {});
    // Packets 13 and 14 lost (an inbox evicted them, say).
    const out = framesOf(await through(dec.instance, msgs.filter((m) => m.seq !== 13 && m.seq !== 14)));
    await dec.instance.close?.();
    expect(dec.log.text()).toContain("packets missing before #15; dropping packets until the next keyframe");
    // Pictures of packets 0..12 (as far as the decoder could finish them) and all of 20..29.
    const tail = out.filter((f) => f.seq >= 20);
    expect(tail.map((f) => f.seq)).toEqual(decoded.slice(20).map((f) => f.seq));
    for (const f of tail) expect(Buffer.from(f.image.data).equals(Buffer.from(decoded[f.seq].image.data))).toBe(true);
    expect(out.some((f) => f.seq >= 13 && f.seq < 20)).toBe(false);
  });

  test("a resolution change (480x360 → 1280x720) restarts the stream's decoder at the new size", async () => {
    const { msgs } = await readMessages({ url: changing, decode: false });
    const packets = framesOf(msgs);
    expect(packets.map((f) => `${f.image.width}x${f.image.height}`)).toEqual([...Array(20).fill("480x360"), ...Array(20).fill("1280x720")]);
    const dec = await makeTransform("decode", {});
    const out = framesOf(await through(dec.instance, msgs));
    await dec.instance.close?.();
    expect(out.map((f) => `${f.image.width}x${f.image.height}`)).toEqual([...Array(20).fill("480x360"), ...Array(20).fill("1280x720")]);
    for (const f of out) expect(f.image.data).toHaveLength(f.image.width * f.image.height * 3);
    expect(dec.log.text()).toContain("h264 480x360 → h264 1280x720 at #20; restarting its decoder");
    // The pictures are the clip's own at each size (not squashed to the first).
    const second = await readAll({ url: changing.replace("changing.ts", "b.ts") });
    for (let i = 0; i < 20; i++) expect(Buffer.from(out[20 + i].image.data).equals(Buffer.from(second[i].image.data))).toBe(true);
  });

  test("stream-end frees the stream's decoder; other streams keep theirs", async () => {
    const a = (await readMessages({ url: clip, decode: false })).msgs.map((m) => ({ ...m, stream: "a" }) as Message);
    const b = (await readMessages({ url: clip, decode: false })).msgs.map((m) => ({ ...m, stream: "b" }) as Message);
    const dec = await makeTransform("decode", {});
    const gauge = () => (dec.instance.metrics!().find((m) => m.name === "decode_streams") as { value: number } | undefined)?.value;
    const out: Message[] = [];
    // Interleaved, as one stage sees two cameras; a ends first.
    for (let i = 0; i < 31; i++) {
      out.push(...(await through(dec.instance, [a[i]])));
      if (i < 20) out.push(...(await through(dec.instance, [b[i]])));
    }
    expect(gauge()).toBe(1);
    out.push(...(await through(dec.instance, b.slice(20))));
    expect(gauge()).toBe(0);
    await dec.instance.close?.();
    expect(framesOf(out).filter((f) => f.stream === "a")).toHaveLength(30);
    expect(framesOf(out).filter((f) => f.stream === "b")).toHaveLength(30);
    expect(out.filter((m): m is Event => m.kind === "event").map((e) => e.stream)).toEqual(["a", "b"]);
  });
});

/** Runs a source in the background, keeping its frames. */
function runInBackground(made: Made<SourceInstance>) {
  const frames: Frame[] = [];
  const finished = made.instance.run(async (f) => void (f.kind === "frame" && frames.push(f)), made.abort.signal);
  return {
    frames,
    async stop() {
      made.abort.abort();
      await finished.catch(() => {});
      await made.instance.close?.();
    },
  };
}

describe("relay from a real RTSP server", () => {
  test("access units arrive live, and after the server restarts on the same port they come back within the backoff cap", async () => {
    let server = await startRtspServer(sampleVideo);
    const cap = 1;
    const src = await makeSource("ingest", { url: server.url, decode: false, reconnectDelay: 0.2, reconnectMaxDelay: cap, stallTimeout: 3 }, "door");
    const run = runInBackground(src);
    const attempts: number[] = [];
    let lostAt = 0;
    let backAt = 0;
    try {
      await until(() => run.frames.some((f) => video(f).keyframe) && run.frames.length >= 5, "access units over RTSP with a keyframe");
      for (const f of run.frames) expect(f).toMatchObject({ stream: "door", live: true, image: { width: 480, height: 360, format: "h264" } });
      // The first unit ffmpeg gives from RTSP starts at a keyframe with its parameter sets (dump_extra).
      expect(video(run.frames.find((f) => video(f).keyframe)!).keyframe).toBe(true);
      const port = server.port;
      await server.stop();
      lostAt = performance.now();
      // Watch the reconnect lines as they come (their times are the attempts).
      let seen = 0;
      const watch = () => {
        const n = (src.log.text().match(/reconnect #\d+ in/g) ?? []).length;
        for (; seen < n; seen++) attempts.push(performance.now());
        return n;
      };
      await until(() => watch() >= 3, "three failed reconnects while the server is down", 30_000, 5);
      const before = run.frames.length;
      server = await server.restart();
      expect(server.port).toBe(port);
      const restartedAt = performance.now();
      await until(() => (watch(), run.frames.length > before), "an access unit after the restart", 30_000, 5);
      backAt = performance.now();
      // Decoding the relayed stream after the return works (it starts at a keyframe).
      const after = run.frames.slice(before);
      expect(video(after[0]).keyframe).toBe(true);
      const delays = [...src.log.text().matchAll(/reconnect #\d+ in ([\d.]+) s/g)].map((m) => Number(m[1]));
      expect(delays.slice(0, 3)).toEqual([0.2, 0.4, 0.8]);
      expect(Math.max(...delays)).toBeLessThanOrEqual(cap);
      console.log(`relay: lost → back ${((backAt - lostAt) / 1000).toFixed(2)} s; restart → first unit ${((backAt - restartedAt) / 1000).toFixed(2)} s; attempts ${delays.join(", ")} s`);
    } finally {
      await run.stop();
      await server.stop();
    }
  });
});

/** Whether wire format carries encoded frames yet (another change; until then the split test cannot run). */
function wireCarriesVideo(): boolean {
  try {
    const f: Frame = { kind: "frame", stream: "s", seq: 0, ts: 1, live: true, image: { width: 16, height: 16, format: "h264", data: new Uint8Array([0, 0, 0, 1, 9, 0xf0]) }, meta: { video: { codec: "h264", pts: 0, keyframe: true } }, timings: {} };
    const back = decodeMessage(encodeMessage(f));
    return back.kind === "frame" && back.image.format === "h264";
  } catch {
    return false;
  }
}

const PIPELINE = (src: string, out: string, decode: boolean) => `
name: relay-split
stages:
  - id: cam
    use: ingest
    with: { url: "${src}", decode: ${decode} }
    placement: edge
  - id: dec
    use: decode
    placement: cloud
  - id: prep
    use: resize
    with: { width: 640, height: 640, mode: letterbox }
    placement: cloud
  - id: detect
    use: infer-onnx
    with: { model: yolov5n.onnx, threads: 1 }
    placement: cloud
  - id: nms
    use: nms
    with: { conf: 0.25, iou: 0.45 }
    placement: cloud
  - id: results
    use: sink-jsonl
    with: { path: "${out}", flushInterval: 0.05 }
    placement: edge
`;

describe("relay across processes over NATS", () => {
  const children: Child[] = [];
  afterAll(async () => {
    await Promise.all(children.map((c) => c.stop(1000)));
  });
  function framewire(args: string[]): Child {
    const child = startProcess(["bun", "runtime/cli.ts", "run", ...args], { cwd: repoRoot, env: { FRAMEWIRE_LOG: "info" } });
    children.push(child);
    return child;
  }
  async function succeeds(child: Child, what: string): Promise<void> {
    const code = await child.exited;
    if (code !== 0) throw new Error(`${what} exited with ${code}\nstderr: ${child.stderr()}\nstdout: ${child.stdout()}`);
  }
  /** Detections per frame, without the capture time, in frame order. */
  const results = async (file: string) =>
    (await readFile(file, "utf8"))
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l))
      .filter((r) => r.detections)
      .sort((a, b) => a.seq - b.seq)
      .map(({ ts: _ts, ...r }) => JSON.stringify(r));

  test.skipIf(!wireCarriesVideo())("edge (ingest decode:false) and worker (decode → resize → infer-onnx → nms) give the detections of one decoding process", async () => {
    const server = await startNatsServer();
    const write = async (name: string, decode: boolean) => {
      const out = join(tmp.path, `${name}.jsonl`);
      const file = join(tmp.path, `${name}.yaml`);
      await writeFile(file, PIPELINE(short, out, decode));
      return { file, out };
    };
    // Reference: one process, the decoding ingest (decode then passes the rgb24 frames through).
    const one = await write("one", true);
    await succeeds(framewire([one.file]), "the single-process run");
    const reference = await results(one.out);
    expect(reference).toHaveLength(12);
    const split = await write("split", false);
    const cloud = framewire([split.file, "--nats", server.url, "--placement", "cloud"]);
    const edge = framewire([split.file, "--nats", server.url, "--placement", "edge"]);
    await succeeds(edge, "the edge process");
    await succeeds(cloud, "the cloud process");
    expect(await results(split.out)).toEqual(reference);
    // The edge only relayed; the cloud decoded.
    expect(edge.stderr()).toContain("relayed without decoding");
    expect(cloud.stderr()).not.toContain("relayed without decoding");
    await server.dispose();
  }, 90_000);
});

if (!wireCarriesVideo()) console.warn("relay.test.ts: wire format does not carry h264/hevc frames yet (runtime/bus/wire.ts); the NATS split test is skipped");
