/**
 * One camera (or file) read by an ffmpeg child process into rgb24 frames, or
 * (with `decode: false`) relayed as its encoded H.264/H.265 access units:
 * reconnects with capped exponential backoff, a stall watchdog, credentials
 * kept out of every log line, and per-stream counters for status and
 * metrics. `ingest` runs one per stream.
 */
import type { Frame } from "../core/message.ts";
import type { Logger } from "../core/log.ts";
import { ConfigError } from "../core/errors.ts";
import { spawn, type ChildProcess } from "../platform/index.ts";
import { PpmReader } from "./ppm.ts";
import { AnnexBSplitter, type VideoCodec } from "./annexb.ts";
import { describeFfmpeg, ffmpegMajor, MIN_SYSTEM_FFMPEG } from "./ffmpeg.ts";

/** What ffmpeg is asked to do for one stream. */
export interface CameraOptions {
  /** A URL, or an absolute file path. */
  input: string;
  fps?: number;
  width?: number;
  height?: number;
  realtime: boolean;
  loop: boolean;
  live: boolean;
  transport: "tcp" | "udp";
  stallTimeout: number;
  reconnectDelay: number;
  reconnectMaxDelay: number;
  /** ffmpeg's -hwaccel for decoding; a device that cannot decode falls back to software (said once). */
  hwaccel?: "auto" | "cuda" | "vaapi" | "qsv" | "none";
  /** false: relay the camera's H.264/H.265 as access units (no decoding; fps, width, height and hwaccel do not apply). Default true. */
  decode?: boolean;
}

/** A stream's state, as `GET /api/streams` and the metrics show it. */
export interface CameraStatus {
  connected: boolean;
  frames: number;
  /** Frames per second over the last few seconds. */
  fps: number;
  reconnects: number;
  lastError?: string;
}

const HAS_SCHEME = /^[a-z][a-z0-9+.-]*:\/\//i;

/**
 * Hides credentials in URLs (`rtsp://user:secret@host` → `rtsp://***@host`),
 * anywhere in a text: URLs, ffmpeg's stderr, error messages.
 * @example
 * redact("stream lost: rtsp://admin:pw@10.0.0.5/live"); // "stream lost: rtsp://***@10.0.0.5/live"
 */
export function redact(text: string): string {
  return text.replace(/([a-z][a-z0-9+.-]*:\/\/)[^/@\s]*@/gi, "$1***@");
}

/**
 * ffmpeg arguments that decode `o.input` to a stream of PPM (rgb24) frames on
 * stdout; with `decode: false`, that copy its video (`codec`) without
 * re-encoding to an Annex B byte stream with the parameter sets before every
 * keyframe.
 * @example
 * ffmpegArgs({ ...options, decode: false }, "h264"); // [..., "-c:v", "copy", "-bsf:v", "h264_mp4toannexb,dump_extra=freq=keyframe", "-f", "h264", "pipe:1"]
 */
export function ffmpegArgs(o: CameraOptions, codec: VideoCodec = "h264", native = false): string[] {
  const input = o.input;
  const relay = o.decode === false;
  // native: info level (tagged) for showinfo's line per picture, which gives each raw picture's size; errors are told by their tag.
  const args = ["-hide_banner", "-nostdin", "-nostats", "-loglevel", native && !relay ? "level+info" : "error"];
  if (/^rtsps?:/i.test(input)) args.push("-rtsp_transport", o.transport);
  if (o.realtime) args.push("-re");
  if (!relay && o.hwaccel && o.hwaccel !== "none") args.push("-hwaccel", o.hwaccel);
  if (o.loop && !HAS_SCHEME.test(input)) args.push("-stream_loop", "-1");
  // No frame-rate probing of streams (20 frames, 2 s at 10 fps, before the first picture): -vsync 0 and the fps cap go by timestamps.
  if (HAS_SCHEME.test(input)) args.push("-fpsprobesize", "0");
  args.push("-i", input, "-an", "-sn", "-dn");
  if (relay) {
    // mp4toannexb: start codes instead of lengths (a no-op on RTSP's Annex B); dump_extra: SPS/PPS(/VPS) before every keyframe.
    args.push("-map", "0:v:0", "-c:v", "copy", "-bsf:v", `${codec}_mp4toannexb,dump_extra=freq=keyframe`, "-f", codec, "pipe:1");
    return args;
  }
  const filters: string[] = [];
  // A true cap: keep a frame only once 1/fps has passed since the last kept one (the fps filter would duplicate).
  if (o.fps) filters.push(`select='isnan(prev_selected_t)+gte(t-prev_selected_t,${(1 / o.fps - 0.001).toFixed(4)})'`);
  if (o.width && o.height) filters.push(`scale=${o.width}:${o.height}`);
  if (native) {
    // Raw pictures at their own size (-autoscale 0: a camera that changes resolution is not squashed to its first size);
    // showinfo says each one's size, which is how stdout is split.
    filters.push("showinfo=checksum=0");
    args.push("-vf", filters.join(","), "-autoscale", "0", "-vsync", "0", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1");
    return args;
  }
  // ffmpeg before 5 (no -autoscale): PPM frames carry their size, but a new camera resolution is scaled to the first.
  if (filters.length) args.push("-vf", filters.join(","));
  args.push("-vsync", "0", "-f", "image2pipe", "-c:v", "ppm", "-pix_fmt", "rgb24", "pipe:1");
  return args;
}

/** What ffmpeg says when a -hwaccel device cannot be used. */
const HWACCEL_FAILURE = /hwaccel|cuda|vaapi|qsv|device|hardware|Failed setup/i;
/** showinfo's line per picture: its time and size. */
const SHOWINFO = /Parsed_showinfo_\d+ @ [^\]]*\] \[info\] n:\s*\d+ .*?pts_time:(\S+).* s:(\d+)x(\d+) /;
/** A line ffmpeg logged at error level or worse (`-loglevel level+info` tags each line). */
const ERROR_LINE = /\[(error|fatal|panic)\] /;
/** What the `*_mp4toannexb` bitstream filter says of a stream that is not the codec it was given. */
const WRONG_CODEC = /Codec '([\w-]+)' \(\d+\) is not supported by the bitstream filter '(?:h264|hevc)_mp4toannexb'/;

/** Seconds of frame times kept for the fps figure. */
const FPS_WINDOW_MS = 5000;

/**
 * @example
 * const cam = new Camera("door", options, resolveFfmpeg(), log);
 * await cam.run(emit, signal); // returns at the end of a file, or when signal aborts / cam.stop()
 */
export class Camera {
  private child?: ChildProcess;
  private seq = 0;
  private runStart = 0;
  private reconnects = 0;
  private lastError?: string;
  private times: number[] = [];
  private stopper = new AbortController();
  private softwareFallback = false;
  /** The relayed stream's codec (decode: false): H.264 is tried first, ffmpeg's answer tells otherwise. */
  private codec: VideoCodec = "h264";
  /** Raw pictures split by showinfo's sizes (ffmpeg 5 or newer), else PPM. */
  private readonly native: boolean;
  /** When run() began: relayed access units carry their pts as ms since then. */
  private started = 0;

  constructor(
    readonly id: string,
    public options: CameraOptions,
    private readonly ffmpeg: string,
    private readonly log: Logger,
    /** The first sequence number (a restarted stream continues where it was). */
    firstSeq = 0,
  ) {
    this.seq = firstSeq;
    this.native = ffmpegMajor(ffmpeg) >= MIN_SYSTEM_FFMPEG;
  }

  /** The next sequence number this camera will give. */
  get nextSeq(): number {
    return this.seq;
  }

  status(): CameraStatus {
    const now = performance.now();
    while (this.times.length && now - this.times[0] > FPS_WINDOW_MS) this.times.shift();
    const span = this.times.length > 1 ? (this.times[this.times.length - 1] - this.times[0]) / 1000 : 0;
    return {
      connected: this.child !== undefined && this.seq > this.runStart,
      frames: this.seq,
      fps: span > 0 ? Math.round(((this.times.length - 1) / span) * 100) / 100 : 0,
      reconnects: this.reconnects,
      ...(this.lastError ? { lastError: this.lastError } : {}),
    };
  }

  /** Stops this camera only (its ffmpeg is killed; `run` returns). */
  stop(): void {
    this.stopper.abort();
    this.child?.kill("SIGKILL");
  }

  /** Reads until the file ends, or `signal` aborts, or `stop()`; live streams reconnect. */
  async run(emit: (f: Frame) => Promise<void>, outer: AbortSignal): Promise<void> {
    const signal = AbortSignal.any([outer, this.stopper.signal]);
    const o = this.options;
    let attempt = 0;
    this.started ||= performance.now();
    this.log.info(`reading ${redact(o.input)} (${o.live ? "live" : "file"}${o.decode === false ? ", relayed without decoding" : ""}) with ${describeFfmpeg(this.ffmpeg)}`);
    while (!signal.aborted) {
      const r = await this.runOnce(emit, signal);
      if (signal.aborted) return;
      const wrong = o.decode === false && r.frames === 0 ? WRONG_CODEC.exec(r.error) : null;
      if (wrong) {
        if (wrong[1] === "hevc" && this.codec === "h264") {
          this.codec = "hevc";
          continue;
        }
        // A camera that is neither H.264 nor H.265 cannot be relayed: said once, the stream ends (no reconnect loop).
        throw new ConfigError(`${redact(o.input)} is ${wrong[1]} video: decode: false relays H.264 and H.265 only (set decode: true for this stream)`);
      }
      if (r.frames === 0 && o.hwaccel && o.hwaccel !== "none" && o.hwaccel !== "auto" && !this.softwareFallback && HWACCEL_FAILURE.test(r.error)) {
        // The device cannot decode here (no GPU, no driver): software decoding, said once, then as before.
        this.softwareFallback = true;
        this.options = { ...o, hwaccel: "none" };
        this.log.warn(`hwaccel ${o.hwaccel} did not decode ${redact(o.input)} (${r.error || `exit ${r.code}`}); decoding in software`);
        return this.run(emit, outer);
      }
      if (!o.live) {
        if (r.code === 0) return this.log.info(`end of input after ${this.seq} frames`);
        if (r.frames === 0) throw new Error(`ffmpeg could not read ${redact(o.input)} (exit ${r.code}): ${r.error || "no output"}`);
        this.log.warn(`ffmpeg stopped mid-file (exit ${r.code}): ${r.error}`);
        return;
      }
      if (r.frames > 0) attempt = 0;
      const delay = Math.min(o.reconnectMaxDelay, o.reconnectDelay * 2 ** attempt);
      attempt++;
      this.reconnects++;
      const why = r.stalled ? "stalled" : `${r.code === null ? "killed by a signal" : `exit ${r.code}`}${r.error ? `: ${r.error}` : ""}`;
      this.lastError = why;
      // A line per attempt at first, then one per ten while the camera stays down.
      if (attempt <= 5 || attempt % 10 === 0) this.log.warn(`stream lost after ${r.frames} frames (${why}); reconnect #${attempt} in ${delay.toFixed(1)} s`);
      await sleep(delay * 1000, signal);
    }
  }

  /** One ffmpeg until it exits: its exit code, the frames it gave and its last stderr lines (redacted). */
  private async runOnce(emit: (f: Frame) => Promise<void>, signal: AbortSignal) {
    const o = this.options;
    const proc = spawn(this.ffmpeg, ffmpegArgs(o, this.codec, this.native));
    const tagged = this.native && o.decode !== false;
    /** showinfo's size and time of the pictures not read yet (decoding), and who waits for the next. */
    const infos: { w: number; h: number; t: number }[] = [];
    let infoWaiter: (() => void) | undefined;
    let stderrDone = false;
    this.child = proc;
    this.runStart = this.seq;
    const errLines: string[] = [];
    const stderr = (async () => {
      const dec = new TextDecoder();
      let buf = "";
      for await (const chunk of proc.stderr) {
        buf += dec.decode(chunk, { stream: true });
        const lines = buf.split("\n");
        buf = lines.pop()!;
        for (const l of lines) line(l);
      }
      line(buf);
      stderrDone = true;
      infoWaiter?.();
    })();
    function line(l: string) {
      if (!l.trim()) return;
      if (tagged) {
        const m = SHOWINFO.exec(l);
        if (m) {
          infos.push({ w: Number(m[2]), h: Number(m[3]), t: Number(m[1]) });
          infoWaiter?.();
          return;
        }
        if (!ERROR_LINE.test(l)) return;
      }
      errLines.push(redact(l.trim().replace(ERROR_LINE, "")));
      if (errLines.length > 5) errLines.shift();
    }
    /** showinfo's line for picture `i` of this run, once read (undefined if ffmpeg gave none). */
    /** showinfo's line for the next picture (ffmpeg writes it before the picture), or undefined once stderr has ended. */
    const nextInfo = async () => {
      while (infos.length === 0 && !stderrDone) await new Promise<void>((r) => (infoWaiter = r));
      infoWaiter = undefined;
      return infos[0];
    };
    let frames = 0;
    let lastFrame = performance.now();
    let emitting = false;
    let stalled = false;
    const watchdog = setInterval(
      () => {
        if (!emitting && performance.now() - lastFrame > o.stallTimeout * 1000) {
          stalled = true;
          this.log.warn(`no frame for ${o.stallTimeout} s; restarting ffmpeg`);
          proc.kill("SIGKILL");
        }
      },
      Math.min(1000, o.stallTimeout * 250),
    );
    const onAbort = () => proc.kill("SIGKILL");
    signal.addEventListener("abort", onAbort, { once: true });
    const frame = (image: Frame["image"], meta?: Frame["meta"]): Frame => {
      lastFrame = performance.now();
      frames++;
      this.times.push(lastFrame);
      if (this.times.length > 600) this.times.shift();
      return { kind: "frame", stream: this.id, seq: this.seq++, ts: Date.now(), live: o.live, image, timings: {}, ...(meta ? { meta } : {}) };
    };
    try {
      if (o.decode === false) {
        const codec = this.codec;
        const split = new AnnexBSplitter(codec);
        const send = async (aus: ReturnType<AnnexBSplitter["push"]>) => {
          for (const au of aus) {
            if (signal.aborted) return;
            emitting = true;
            const pts = Math.round(performance.now() - this.started);
            await emit(frame({ width: au.width, height: au.height, format: codec, data: au.data }, { video: { codec, pts, keyframe: au.keyframe } }));
            emitting = false;
            lastFrame = performance.now();
          }
        };
        for await (const chunk of proc.stdout) {
          await send(split.push(chunk));
          if (signal.aborted) break;
        }
        if (!signal.aborted) await send(split.end());
      } else if (this.native) {
        const bytes = new ByteQueue();
        let size = "";
        for await (const chunk of proc.stdout) {
          bytes.push(chunk);
          while (bytes.length > 0 && !signal.aborted) {
            const info = await nextInfo();
            if (!info) throw new Error(`ffmpeg gave ${bytes.length} bytes without a picture size`);
            const need = info.w * info.h * 3;
            if (bytes.length < need) break;
            const now = `${info.w}x${info.h}`;
            if (size && now !== size) this.log.info(`resolution changed from ${size} to ${now} at frame ${this.seq}`);
            size = now;
            infos.shift();
            emitting = true;
            await emit(frame({ width: info.w, height: info.h, format: "rgb24", data: bytes.take(need) }));
            emitting = false;
            lastFrame = performance.now();
          }
          if (signal.aborted) break;
        }
      } else {
      const reader = new PpmReader();
      for await (const chunk of proc.stdout) {
        reader.push(chunk);
        for (let raw = reader.next(); raw; raw = reader.next()) {
          if (signal.aborted) break;
          emitting = true;
          await emit(frame({ ...raw, format: "rgb24" }));
          emitting = false;
          lastFrame = performance.now();
        }
        if (signal.aborted) break;
      }
      }
    } catch (err) {
      // A corrupt frame header: treat like an ffmpeg failure and restart it.
      this.log.error(redact((err as Error).message));
      proc.kill("SIGKILL");
    } finally {
      clearInterval(watchdog);
      signal.removeEventListener("abort", onAbort);
    }
    const code = await proc.exited;
    await stderr;
    this.child = undefined;
    return { code, frames, stalled, error: errLines.join(" | ") };
  }
}

/** Bytes from a pipe, taken in pieces of a size known only later. */
class ByteQueue {
  private chunks: Uint8Array[] = [];
  length = 0;
  push(chunk: Uint8Array): void {
    this.chunks.push(chunk);
    this.length += chunk.length;
  }
  /** The next `n` bytes (n <= length), as one buffer of their own. */
  take(n: number): Uint8Array {
    const out = new Uint8Array(n);
    let o = 0;
    while (o < n) {
      const c = this.chunks[0];
      const k = Math.min(c.length, n - o);
      out.set(c.subarray(0, k), o);
      o += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.length -= n;
    return out;
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}
