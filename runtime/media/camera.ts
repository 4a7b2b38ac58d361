/**
 * One camera (or file) read by an ffmpeg child process into rgb24 frames:
 * reconnects with capped exponential backoff, a stall watchdog, credentials
 * kept out of every log line, and per-stream counters for status and
 * metrics. `ingest` runs one per stream.
 */
import type { Frame } from "../core/message.ts";
import type { Logger } from "../core/log.ts";
import { spawn, type ChildProcess } from "../platform/index.ts";
import { PpmReader } from "./ppm.ts";
import { describeFfmpeg } from "./ffmpeg.ts";

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

/** ffmpeg arguments that decode `o.input` to a stream of PPM (rgb24) frames on stdout. */
export function ffmpegArgs(o: CameraOptions): string[] {
  const input = o.input;
  const args = ["-hide_banner", "-nostdin", "-loglevel", "error"];
  if (/^rtsps?:/i.test(input)) args.push("-rtsp_transport", o.transport);
  if (o.realtime) args.push("-re");
  if (o.hwaccel && o.hwaccel !== "none") args.push("-hwaccel", o.hwaccel);
  if (o.loop && !HAS_SCHEME.test(input)) args.push("-stream_loop", "-1");
  args.push("-i", input, "-an", "-sn", "-dn");
  const filters: string[] = [];
  // A true cap: keep a frame only once 1/fps has passed since the last kept one (the fps filter would duplicate).
  if (o.fps) filters.push(`select='isnan(prev_selected_t)+gte(t-prev_selected_t,${(1 / o.fps - 0.001).toFixed(4)})'`);
  if (o.width && o.height) filters.push(`scale=${o.width}:${o.height}`);
  if (filters.length) args.push("-vf", filters.join(","));
  args.push("-vsync", "0", "-f", "image2pipe", "-c:v", "ppm", "-pix_fmt", "rgb24", "pipe:1");
  return args;
}

/** What ffmpeg says when a -hwaccel device cannot be used. */
const HWACCEL_FAILURE = /hwaccel|cuda|vaapi|qsv|device|hardware|Failed setup/i;

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

  constructor(
    readonly id: string,
    public options: CameraOptions,
    private readonly ffmpeg: string,
    private readonly log: Logger,
    /** The first sequence number (a restarted stream continues where it was). */
    firstSeq = 0,
  ) {
    this.seq = firstSeq;
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
    this.log.info(`reading ${redact(o.input)} (${o.live ? "live" : "file"}) with ${describeFfmpeg(this.ffmpeg)}`);
    while (!signal.aborted) {
      const r = await this.runOnce(emit, signal);
      if (signal.aborted) return;
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
    const proc = spawn(this.ffmpeg, ffmpegArgs(o));
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
        for (const l of lines) if (l.trim()) (errLines.push(redact(l.trim())), errLines.length > 5 && errLines.shift());
      }
      if (buf.trim()) errLines.push(redact(buf.trim()));
    })();
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
    try {
      const reader = new PpmReader();
      for await (const chunk of proc.stdout) {
        reader.push(chunk);
        for (let raw = reader.next(); raw; raw = reader.next()) {
          lastFrame = performance.now();
          frames++;
          if (signal.aborted) break;
          emitting = true;
          this.times.push(lastFrame);
          if (this.times.length > 600) this.times.shift();
          await emit({ kind: "frame", stream: this.id, seq: this.seq++, ts: Date.now(), live: o.live, image: { ...raw, format: "rgb24" }, timings: {} });
          emitting = false;
          lastFrame = performance.now();
        }
        if (signal.aborted) break;
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
