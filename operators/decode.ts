import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import * as v from "valibot";
import { resolveFfmpeg } from "../runtime/media/ffmpeg.ts";
import { PpmReader } from "../runtime/media/ppm.ts";
import { accessUnitDelimiter, type VideoCodec } from "../runtime/media/annexb.ts";
import { redact } from "../runtime/media/camera.ts";
import { derive, type Frame, type Message } from "../runtime/core/message.ts";
import type { Logger } from "../runtime/core/log.ts";
import { defineOperator } from "../runtime/core/operator.ts";

const Options = v.strictObject({
  threads: v.optional(
    v.pipe(
      v.number(),
      v.integer(),
      v.minValue(0),
      v.maxValue(64),
      v.description("Decoder threads per stream (ffmpeg -threads; 0: ffmpeg's choice). More threads decode faster and hold a few more pictures in flight."),
    ),
    0,
  ),
});

/** What `ingest` with `decode: false` puts in `meta.video`. */
interface VideoInfo {
  codec: VideoCodec;
  pts: number;
  keyframe: boolean;
}

const isVideo = (x: unknown): x is VideoInfo =>
  typeof x === "object" && x !== null && ((x as VideoInfo).codec === "h264" || (x as VideoInfo).codec === "hevc") && typeof (x as VideoInfo).keyframe === "boolean";

/**
 * One ffmpeg decoding one stream's access units from its stdin to PPM frames
 * on its stdout. The n-th picture out belongs to the n-th packet in (frames
 * come out in the order the ingest would have decoded them).
 */
class StreamDecoder {
  private readonly proc: ChildProcessWithoutNullStreams;
  /** Packets written whose picture has not come out yet, oldest first. */
  private readonly pending: Frame[] = [];
  /** Pictures decoded and not yet handed on. */
  private ready: Frame[] = [];
  private readonly errLines: string[] = [];
  private readonly aud: Uint8Array;
  readonly exited: Promise<void>;
  /** Its ffmpeg has exited. */
  closed = false;
  private readonly output: Promise<void>;

  constructor(
    ffmpeg: string,
    readonly codec: VideoCodec,
    readonly width: number,
    readonly height: number,
    threads: number,
    private readonly log: Logger,
  ) {
    this.aud = accessUnitDelimiter(codec);
    const args = ["-hide_banner", "-loglevel", "error", "-probesize", "32", "-threads", String(threads), "-f", codec, "-i", "pipe:0"];
    args.push("-an", "-vsync", "0", "-f", "image2pipe", "-c:v", "ppm", "-pix_fmt", "rgb24", "pipe:1");
    this.proc = spawn(ffmpeg, args, { stdio: ["pipe", "pipe", "pipe"] });
    // A closed pipe (ffmpeg gone) is noticed on exit; the write error itself says nothing more.
    this.proc.stdin.on("error", () => {});
    this.proc.stderr.on("data", (b: Uint8Array) => {
      for (const l of new TextDecoder().decode(b).split("\n")) if (l.trim()) (this.errLines.push(redact(l.trim())), this.errLines.length > 5 && this.errLines.shift());
    });
    const reader = new PpmReader();
    this.output = new Promise<void>((resolve) => {
      this.proc.stdout.on("data", (chunk: Uint8Array) => {
        reader.push(chunk);
        try {
          for (let raw = reader.next(); raw; raw = reader.next()) this.picture(raw);
        } catch (err) {
          this.log.error((err as Error).message);
          this.proc.kill("SIGKILL");
        }
      });
      this.proc.stdout.on("end", resolve);
      this.proc.stdout.on("error", () => resolve());
    });
    this.exited = new Promise((resolve) => this.proc.once("close", () => ((this.closed = true), resolve())));
    this.proc.once("error", (err) => this.log.error(`ffmpeg decoder: ${err.message}`));
  }

  private picture(raw: { width: number; height: number; data: Uint8Array }): void {
    const packet = this.pending.shift();
    if (!packet) return; // more pictures than packets: nothing to attach it to
    const { video: _video, ...rest } = (packet.meta ?? {}) as Record<string, unknown>;
    const bare = derive(packet, { image: { width: raw.width, height: raw.height, format: "rgb24", data: raw.data }, meta: undefined });
    this.ready.push(Object.keys(rest).length ? derive(bare, { meta: rest }) : bare);
  }

  /** Writes one access unit (and a delimiter, so ffmpeg decodes it without waiting for the next); resolves once the pipe took it. */
  async write(packet: Frame): Promise<void> {
    this.pending.push(packet);
    const stdin = this.proc.stdin;
    if (!stdin.writable) return;
    stdin.write(packet.image.data);
    if (!stdin.write(this.aud)) await new Promise<void>((resolve) => {
      const done = () => (stdin.off("drain", done), stdin.off("close", done), resolve());
      stdin.once("drain", done);
      stdin.once("close", done);
    });
  }

  /** Pictures decoded so far. */
  take(): Frame[] {
    const out = this.ready;
    this.ready = [];
    return out;
  }

  /** Ends the input and waits for the pictures ffmpeg still holds; returns every picture not taken yet. */
  async finish(): Promise<Frame[]> {
    this.proc.stdin.end();
    await this.output;
    await this.exited;
    if (this.pending.length) this.log.warn(`decoder gave ${this.pending.length} picture(s) fewer than packets${this.errLines.length ? `: ${this.errLines.join(" | ")}` : ""}`);
    return this.take();
  }

  kill(): void {
    this.proc.kill("SIGKILL");
  }
}

interface StreamState {
  dec?: StreamDecoder;
  lastSeq?: number;
  /** Packets dropped while waiting for a keyframe. */
  skipped: number;
  /** A keyframe is needed before decoding (go on) again. */
  waiting: boolean;
  said: boolean;
}

/**
 * Decodes the encoded frames `ingest` relays with `decode: false` (H.264/H.265
 * access units) back to rgb24: one ffmpeg per stream, fed on its stdin. A
 * decoder that joins mid-stream, or misses packets, waits for the next
 * keyframe; a new picture size restarts the stream's decoder; `stream-end`
 * flushes and frees it. Other frames pass through untouched.
 */
export default defineOperator({
  name: "decode",
  kind: "transform",
  stateful: true,
  description: "Decode relayed H.264/H.265 access units (ingest decode: false) to rgb24 frames with one ffmpeg per stream; late joiners start at a keyframe.",
  options: Options,
  create(o, ctx) {
    const ffmpeg = resolveFfmpeg();
    const streams = new Map<string, StreamState>();
    let dropped = 0;
    let restarts = 0;

    const state = (id: string): StreamState => {
      let s = streams.get(id);
      if (!s) streams.set(id, (s = { skipped: 0, waiting: true, said: false }));
      return s;
    };

    async function packet(f: Frame, video: VideoInfo): Promise<Message[]> {
      const s = state(f.stream);
      const out: Message[] = [];
      if (s.dec?.closed) {
        // Its ffmpeg died (a corrupt stream, killed): what it gave goes on, a new one starts at the next keyframe.
        ctx.log.warn(`${f.stream}: decoder exited; restarting it at the next keyframe`);
        out.push(...s.dec.take());
        s.dec = undefined;
        s.waiting = true;
        s.said = true;
        restarts++;
      }
      const gap = s.lastSeq !== undefined && f.seq !== s.lastSeq + 1;
      s.lastSeq = f.seq;
      if (gap && !video.keyframe && !s.waiting) {
        s.waiting = true;
        s.said = false;
        ctx.log.warn(`${f.stream}: packets missing before #${f.seq}; dropping packets until the next keyframe`);
      }
      if (s.waiting && !video.keyframe) {
        s.skipped++;
        dropped++;
        if (!s.said) {
          s.said = true;
          if (!gap) ctx.log.info(`${f.stream}: joined mid-stream at #${f.seq}; dropping packets until the next keyframe`);
        }
        return s.dec ? s.dec.take() : out;
      }
      if (s.waiting && s.skipped) ctx.log.info(`${f.stream}: keyframe at #${f.seq}; decoding (${s.skipped} packet(s) dropped before it)`);
      s.waiting = false;
      s.skipped = 0;
      const d = s.dec;
      if (d && video.keyframe && (d.codec !== video.codec || d.width !== f.image.width || d.height !== f.image.height)) {
        ctx.log.info(`${f.stream}: ${d.codec} ${d.width}x${d.height} → ${video.codec} ${f.image.width}x${f.image.height} at #${f.seq}; restarting its decoder`);
        restarts++;
        out.push(...(await d.finish()));
        s.dec = undefined;
      }
      if (!s.dec) s.dec = new StreamDecoder(ffmpeg, video.codec, f.image.width, f.image.height, o.threads, ctx.log.child(f.stream));
      await s.dec.write(f);
      out.push(...s.dec.take());
      return out;
    }

    async function end(id: string): Promise<Message[]> {
      const s = streams.get(id);
      streams.delete(id);
      return s?.dec ? await s.dec.finish() : [];
    }

    return {
      metrics: () => [
        { name: "decode_dropped_total", type: "counter" as const, help: "Packets dropped while a stream's decoder waited for a keyframe (joined mid-stream, or packets missing).", value: dropped },
        { name: "decode_restarts_total", type: "counter" as const, help: "Decoders restarted for a new picture size or codec.", value: restarts },
        { name: "decode_streams", type: "gauge" as const, help: "Streams with a running decoder.", value: [...streams.values()].filter((s) => s.dec).length },
      ],
      async process(msg) {
        if (msg.kind === "event") return msg.type === "stream-end" ? [...(await end(msg.stream)), msg] : msg;
        const video = msg.meta?.video;
        if ((msg.image.format !== "h264" && msg.image.format !== "hevc") || !isVideo(video)) return msg;
        const out = await packet(msg, video);
        return out.length ? out : null;
      },
      async close() {
        for (const s of streams.values()) s.dec?.kill();
        await Promise.all([...streams.values()].map((s) => s.dec?.exited));
        streams.clear();
      },
    };
  },
});
