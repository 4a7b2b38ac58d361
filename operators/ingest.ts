import * as v from "valibot";
import { resolveFfmpeg } from "../runtime/media/ffmpeg.ts";
import type { Frame } from "../runtime/core/message.ts";
import { defineOperator } from "../runtime/core/operator.ts";
import { resolveMediaPath } from "../runtime/platform/paths.ts";
import { spawn, type ChildProcess } from "../runtime/platform/index.ts";
import { PpmReader } from "../runtime/media/ppm.ts";

const STREAMING = /^(rtsps?|rtmps?|srt|udp|rtp|tcp):\/\//i;
const HAS_SCHEME = /^[a-z][a-z0-9+.-]*:\/\//i;

const Options = v.strictObject({
  url: v.pipe(
    v.string(),
    v.minLength(1),
    v.check(
      (u) => HAS_SCHEME.test(u) || resolveMediaPath(u) !== undefined,
      "file not found (give a URL like rtsp://host/path or an existing file)",
    ),
    v.description("rtsp://, rtmp://, http(s)://, srt://, udp:// or a file path (relative to the working directory or the project)."),
  ),
  stream: v.optional(v.pipe(v.string(), v.regex(/^[\w-]+$/), v.description("Stream id carried on every frame; defaults to the stage id."))),
  fps: v.optional(
    v.pipe(
      v.number(),
      v.minValue(0.01),
      v.maxValue(240),
      v.description("Frame-rate cap: frames arriving faster are skipped inside ffmpeg."),
    ),
  ),
  width: v.optional(
    v.pipe(v.number(), v.integer(), v.minValue(16), v.maxValue(8192), v.description("Scale in ffmpeg to this size (both or neither).")),
  ),
  height: v.optional(v.pipe(v.number(), v.integer(), v.minValue(16), v.maxValue(8192))),
  realtime: v.optional(v.pipe(v.boolean(), v.description("Read files at their native rate (ffmpeg -re), like a camera.")), false),
  loop: v.optional(v.pipe(v.boolean(), v.description("Restart files from the beginning when they end.")), false),
  live: v.optional(
    v.pipe(
      v.boolean(),
      v.description(
        "Live streams drop stale frames under overload and reconnect when they end; default: true for streaming URLs and realtime files.",
      ),
    ),
  ),
  transport: v.optional(v.pipe(v.picklist(["tcp", "udp"]), v.description("RTSP lower transport.")), "tcp"),
  stallTimeout: v.optional(v.pipe(v.number(), v.minValue(0.5), v.description("Seconds without a frame before ffmpeg is restarted.")), 10),
  reconnectDelay: v.optional(
    v.pipe(v.number(), v.minValue(0.05), v.description("Reconnect backoff in seconds: first delay, doubled up to the max.")),
    0.5,
  ),
  reconnectMaxDelay: v.optional(v.pipe(v.number(), v.minValue(0.05)), 10),
});
type Options = v.InferOutput<typeof Options>;

/** ffmpeg arguments that decode `url` to a stream of PPM (rgb24) frames on stdout. */
export function ffmpegArgs(o: Options, input: string): string[] {
  const args = ["-hide_banner", "-nostdin", "-loglevel", "error"];
  if (/^rtsps?:/i.test(input)) args.push("-rtsp_transport", o.transport);
  if (o.realtime) args.push("-re");
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

/**
 * Decodes a camera stream or file with an ffmpeg child process. Live streams
 * reconnect with exponential backoff; a stall watchdog restarts a silent ffmpeg.
 */
export default defineOperator({
  name: "ingest",
  kind: "source",
  description: "Decode RTSP/HTTP/file video with ffmpeg into rgb24 frames (fps cap, scaling, reconnect, stall watchdog).",
  options: v.pipe(
    Options,
    v.check((o) => (o.width === undefined) === (o.height === undefined), "width and height go together"),
  ),
  create(o, ctx) {
    const ffmpeg = resolveFfmpeg();
    const input = HAS_SCHEME.test(o.url) ? o.url : resolveMediaPath(o.url)!;
    const live = o.live ?? (STREAMING.test(input) || o.realtime);
    const stream = o.stream ?? ctx.stage;
    const args = ffmpegArgs(o, input);
    const log = ctx.log;
    let child: ChildProcess | undefined;
    let seq = 0;
    /** For metrics, read at scrape time: frames before the current ffmpeg started, and reconnects so far. */
    let runStart = 0;
    let reconnects = 0;

    /** Runs one ffmpeg until it exits; returns its exit code, the frames it gave and its last stderr lines. */
    async function runOnce(emit: (f: Frame) => Promise<void>, signal: AbortSignal) {
      const proc = spawn(ffmpeg, args);
      child = proc;
      runStart = seq;
      const errLines: string[] = [];
      const stderr = (async () => {
        const dec = new TextDecoder();
        let buf = "";
        for await (const chunk of proc.stderr) {
          buf += dec.decode(chunk, { stream: true });
          const lines = buf.split("\n");
          buf = lines.pop()!;
          for (const l of lines) if (l.trim()) (errLines.push(l.trim()), errLines.length > 5 && errLines.shift());
        }
        if (buf.trim()) errLines.push(buf.trim());
      })();
      let frames = 0;
      let lastFrame = performance.now();
      let emitting = false;
      let stalled = false;
      const watchdog = setInterval(
        () => {
          if (!emitting && performance.now() - lastFrame > o.stallTimeout * 1000) {
            stalled = true;
            log.warn(`no frame for ${o.stallTimeout} s; restarting ffmpeg`);
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
            await emit({ kind: "frame", stream, seq: seq++, ts: Date.now(), live, image: { ...raw, format: "rgb24" }, timings: {} });
            emitting = false;
            lastFrame = performance.now();
          }
          if (signal.aborted) break;
        }
      } catch (err) {
        // A corrupt frame header: treat like an ffmpeg failure and restart it.
        log.error((err as Error).message);
        proc.kill("SIGKILL");
      } finally {
        clearInterval(watchdog);
        signal.removeEventListener("abort", onAbort);
      }
      const code = await proc.exited;
      await stderr;
      child = undefined;
      return { code, frames, stalled, error: errLines.join(" | ") };
    }

    return {
      metrics: () => [
        { name: "source_frames_total", type: "counter", help: "Frames decoded, by stream.", value: seq, labels: { stream } },
        {
          name: "source_reconnects_total",
          type: "counter",
          help: "Times a live stream was lost and reconnected.",
          value: reconnects,
          labels: { stream },
        },
        {
          name: "source_connected",
          type: "gauge",
          help: "1 while the source delivers frames (ffmpeg running and a frame decoded since it started).",
          value: child !== undefined && seq > runStart ? 1 : 0,
          labels: { stream },
        },
      ],
      async run(emit, signal) {
        let attempt = 0;
        log.info(`reading ${redact(input)} (${live ? "live" : "file"}) with ${ffmpeg}`);
        while (!signal.aborted) {
          const r = await runOnce(emit, signal);
          if (signal.aborted) return;
          if (!live) {
            if (r.code === 0) return log.info(`end of input after ${seq} frames`);
            if (r.frames === 0) throw new Error(`ffmpeg could not read ${redact(input)} (exit ${r.code}): ${r.error || "no output"}`);
            log.warn(`ffmpeg stopped mid-file (exit ${r.code}): ${r.error}`);
            return;
          }
          if (r.frames > 0) attempt = 0;
          const delay = Math.min(o.reconnectMaxDelay, o.reconnectDelay * 2 ** attempt);
          attempt++;
          reconnects++;
          const why = r.stalled
            ? "stalled"
            : `${r.code === null ? "killed by a signal" : `exit ${r.code}`}${r.error ? `: ${r.error}` : ""}`;
          log.warn(`stream lost after ${r.frames} frames (${why}); reconnect #${attempt} in ${delay.toFixed(1)} s`);
          await sleep(delay * 1000, signal);
        }
      },
      async close() {
        child?.kill("SIGKILL");
      },
    };
  },
});

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

/** Hides credentials in URLs written to logs. */
function redact(url: string): string {
  return url.replace(/\/\/[^/@]*@/, "//***@");
}
