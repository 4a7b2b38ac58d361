/**
 * Event clips: per stream a rolling buffer of short MPEG-TS segments of the
 * encoded video, and for each chosen event an MP4 from `preRoll` seconds
 * before it to `postRoll` seconds after, overlapping events sharing one
 * clip. The stage is a transform placed before the result sinks: it passes
 * every message on and returns each chosen event as a new event whose data
 * gains `clip` (the MP4's path relative to `dir`), so sink-jsonl, sink-nats
 * and sink-jetstream carry it. The MP4 is written in the background once its
 * post-roll is recorded. See docs/clips.md.
 *
 * Two ways to the video, per stream:
 * - copy: the stream's URL is in `sources`; the stage runs its own ffmpeg on
 *   it (`-c copy`, segment muxer), so H.264/H.265 cameras are never
 *   re-encoded.
 * - encode: no URL for the stream; the frames that pass through the stage
 *   are encoded (rgb24 on ffmpeg's stdin, libx264) into the same segments.
 */
import * as v from "valibot";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdir, readdir, rename, rm, stat, unlink, writeFile } from "node:fs/promises";
import { basename, join, resolve } from "node:path";
import type { Event, Frame, Message } from "../runtime/core/message.ts";
import { ConfigError } from "../runtime/core/errors.ts";
import { defineOperator, type ClipInfo, type StageContext } from "../runtime/core/operator.ts";
import type { Logger } from "../runtime/core/log.ts";
import { findFfmpeg } from "../runtime/media/ffmpeg.ts";
import { redact } from "../runtime/media/camera.ts";
import { resolveMediaPath } from "../runtime/platform/paths.ts";

const HAS_SCHEME = /^[a-z][a-z0-9+.-]*:\/\//i;
const Id = v.pipe(v.string(), v.regex(/^[\w-]+$/, "expected an id of letters, digits, _ and -"));
const Url = v.pipe(
  v.string(),
  v.minLength(1),
  v.check((u) => HAS_SCHEME.test(u) || resolveMediaPath(u) !== undefined, "file not found (give a URL like rtsp://host/path or an existing file)"),
);

const DEFAULT_TYPES = ["cross", "enter", "exit", "dwell"];

const Options = v.strictObject({
  dir: v.pipe(
    v.string(),
    v.minLength(1),
    v.description("Clip directory (created; must be writable): clips are `<dir>/<stream>/<time>-<type>.mp4`, the rolling buffer is `<dir>/.ring/`."),
  ),
  preRoll: v.optional(v.pipe(v.number(), v.minValue(0), v.maxValue(300), v.description("Seconds of video before the event.")), 5),
  postRoll: v.optional(v.pipe(v.number(), v.minValue(0), v.maxValue(300), v.description("Seconds of video after the event.")), 5),
  events: v.optional(
    v.pipe(
      v.strictObject({
        types: v.optional(v.pipe(v.array(v.string()), v.minLength(1), v.description("Event types that get a clip.")), DEFAULT_TYPES),
        zones: v.optional(v.pipe(v.array(Id), v.description("Only events of these zones (and of `lines`, when given)."))),
        lines: v.optional(v.pipe(v.array(Id), v.description("Only events of these lines (and of `zones`, when given)."))),
      }),
      v.description(
        "Which events get a clip: `types` (default cross, enter, exit, dwell), and, when `zones` and/or `lines` are given, only events of those zones or lines.",
      ),
    ),
    {},
  ),
  sources: v.optional(
    v.pipe(
      v.record(Id, Url),
      v.description(
        "`{ <stream id>: url }`: the stage records these streams itself from the camera with `-c copy` (no re-encoding of H.264/H.265; give the same URL as ingest). Files are read in real time and looped, like a camera. Streams not listed are encoded from the frames that pass through.",
      ),
    ),
  ),
  segment: v.optional(
    v.pipe(
      v.number(),
      v.minValue(0.5),
      v.maxValue(10),
      v.description("Target length of the buffer's segments in seconds (copied video is cut at keyframes only, so a camera's segments are at least one GOP)."),
    ),
    1,
  ),
  maxClip: v.optional(v.pipe(v.number(), v.minValue(1), v.maxValue(3600), v.description("Longest clip in seconds: events that keep overlapping start a new clip after this.")), 120),
  keep: v.optional(
    v.pipe(
      v.strictObject({
        maxAgeHours: v.optional(v.pipe(v.number(), v.gtValue(0), v.description("Clips older than this many hours are deleted.")), 72),
        maxTotalMB: v.optional(v.pipe(v.number(), v.gtValue(0), v.description("All clips together at most this many MB (oldest deleted first).")), 2048),
      }),
      v.description("Retention: clips older than `maxAgeHours` are deleted, then the oldest until all clips together take at most `maxTotalMB`."),
    ),
    {},
  ),
  retry: v.optional(
    v.pipe(v.number(), v.minValue(1), v.maxValue(3600), v.description("Seconds after a failed write (disk full, directory gone) before clips are tried again; events flow on meanwhile, without `clip`.")),
    30,
  ),
});
type Options = v.InferOutput<typeof Options>;

/** A closed segment of the rolling buffer; its times are on its ffmpeg run's timeline (seconds). */
interface Segment {
  file: string;
  run: Run;
  listStart: number;
  listEnd: number;
}

/** One ffmpeg of a ring: its segment timeline and how it maps to wall-clock time. */
interface Run {
  id: number;
  /** Wall ms − timeline ms: the smallest seen (a segment's line arrives at, or just after, its end). */
  offset: number;
}

/** A clip being collected: its window in wall ms, the file it becomes. */
interface PendingClip {
  stream: string;
  rel: string;
  start: number;
  end: number;
  events: number;
}

const WRITE_FAILURE = /No space left on device|Read-only file system|Permission denied|Not a directory|Disk quota exceeded/i;
const CANNOT_COPY = /not currently supported in container|Could not write header|Could not find tag for codec/i;
/** Drops packets until the first keyframe with timestamps (RTSP often starts mid-GOP or without them). */
const START_AT_KEYFRAME = "noise=drop=not(st(0\\,max(ld(0)\\,key*not(eq(pts\\,nopts))*not(eq(dts\\,nopts)))))";

/** `20261128T164007.512Z`: a clip name's time (UTC, no colons). */
function stamp(ms: number): string {
  return new Date(ms).toISOString().replace(/[-:]/g, "");
}
const NAME = /^(\d{8}T\d{6}\.\d{3}Z)-([\w-]+?)(?:~\d+)?\.mp4$/;
/** The time a clip's name gives, ms since the epoch. */
function nameTime(stampText: string): number {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})\.(\d{3})Z$/.exec(stampText)!;
  return Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6], +m[7]);
}
const safeName = (s: string) => s.replace(/[^\w-]/g, "_");

/** What the chosen ffmpeg can encode H.264 (or at least MPEG-4) with, decided once. */
let encoderChoice: string[] | undefined;
function encoderArgs(ffmpeg: string): string[] {
  if (encoderChoice) return encoderChoice;
  const r = spawnSync(ffmpeg, ["-hide_banner", "-encoders"], { encoding: "utf8", timeout: 10_000 });
  const list = typeof r.stdout === "string" ? r.stdout : "";
  if (/\slibx264\s/.test(list)) encoderChoice = ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-crf", "26", "-pix_fmt", "yuv420p"];
  else if (/\slibopenh264\s/.test(list)) encoderChoice = ["-c:v", "libopenh264", "-pix_fmt", "yuv420p"];
  else encoderChoice = ["-c:v", "mpeg4", "-q:v", "5", "-pix_fmt", "yuv420p"];
  return encoderChoice;
}

/** The segment muxer writing `pattern`, its list of closed segments as CSV on stdout. */
function segmentArgs(seconds: number, pattern: string): string[] {
  return [
    "-avoid_negative_ts", "make_zero",
    "-f", "segment", "-segment_time", String(seconds), "-reset_timestamps", "1",
    "-segment_format", "mpegts", "-segment_format_options", "mpegts_copyts=1",
    "-segment_list", "pipe:1", "-segment_list_type", "csv", pattern,
  ];
}

/** The last stderr lines of a child, redacted. */
function collectStderr(proc: ChildProcess): string[] {
  const lines: string[] = [];
  let buf = "";
  proc.stderr?.setEncoding("utf8");
  proc.stderr?.on("data", (chunk: string) => {
    buf += chunk;
    const parts = buf.split("\n");
    buf = parts.pop()!;
    for (const l of parts) if (l.trim()) (lines.push(redact(l.trim())), lines.length > 6 && lines.shift());
  });
  proc.stderr?.on("end", () => buf.trim() && lines.push(redact(buf.trim())));
  return lines;
}

function exited(proc: ChildProcess): Promise<number | null> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve(proc.exitCode);
  return new Promise((r) => proc.once("close", (code) => r(code)));
}

/** Runs ffmpeg to completion; rejects with its last stderr lines. */
async function runFfmpeg(ffmpeg: string, args: string[]): Promise<void> {
  const proc = spawn(ffmpeg, args, { stdio: ["ignore", "ignore", "pipe"] });
  const err = collectStderr(proc);
  const failed = new Promise<never>((_, reject) => proc.once("error", reject));
  const code = await Promise.race([exited(proc), failed]);
  if (code !== 0) throw new Error(err.join(" | ") || `ffmpeg exit ${code}`);
}

interface RingHost {
  ffmpeg: string;
  ffmpegMajor: number;
  log: Logger;
  segment: number;
  /** A write failed (disk full, directory gone): clips stop for a while. */
  writeFailed(reason: string): void;
  /** A segment closed (a clip may be ready). */
  segmentClosed(): void;
}

/**
 * One stream's rolling buffer: an ffmpeg writing segments into `dir`, fed
 * from the camera (copy) or from the frames (encode).
 */
class Ring {
  readonly segments: Segment[] = [];
  /** Wall ms of the first video this ring holds, before any segment closed. */
  firstData?: number;
  private proc?: ChildProcess;
  private runs = 0;
  private run?: Run;
  private stopping = false;
  /** Stopped after a failed write, until {@link Ring.resume}. */
  private halted = false;
  private restartTimer?: ReturnType<typeof setTimeout>;
  private backoff = 1000;
  private lastSpawn = 0;
  /** Encode mode: frame size and format, frames written by seq (wall ms) and skipped. */
  private size?: string;
  private written = new Map<number, number>();
  private lag = 0;
  skipped = 0;
  /** Copy mode, set to true when the camera's codec cannot be copied into MPEG-TS. */
  private transcode = false;

  constructor(
    readonly stream: string,
    readonly dir: string,
    readonly url: string | undefined,
    private readonly host: RingHost,
  ) {}

  get mode(): "copy" | "encode" {
    return this.url ? "copy" : "encode";
  }

  get running(): boolean {
    return this.proc !== undefined;
  }

  /** Copy mode: starts (or restarts) the camera's recorder. */
  start(): void {
    if (!this.url || this.proc || this.stopping || this.halted) return;
    clearTimeout(this.restartTimer);
    const url = this.url;
    const isFile = !HAS_SCHEME.test(url);
    const input = isFile ? resolveMediaPath(url)! : url;
    const args = ["-hide_banner", "-nostdin", "-loglevel", "error"];
    if (/^rtsps?:/i.test(input)) args.push("-rtsp_transport", "tcp");
    if (isFile) args.push("-re", "-stream_loop", "-1");
    args.push("-i", input, "-map", "0:v:0", "-an", "-sn", "-dn");
    if (this.transcode) args.push(...encoderArgs(this.host.ffmpeg), "-force_key_frames", `expr:gte(t,n_forced*${this.host.segment})`);
    else args.push("-c:v", "copy", ...(this.host.ffmpegMajor >= 5 ? ["-bsf:v", START_AT_KEYFRAME] : []));
    this.spawn(args, false);
  }

  /** Encode mode: writes the frame's pixels to the encoder (skipped while it lags behind). */
  feed(f: Frame): void {
    if (this.url || this.stopping || this.halted) return;
    const { width, height, format } = f.image;
    const size = `${width}x${height}:${format}`;
    if (this.proc && this.size !== size) this.kill(); // the camera changed its picture: a new run
    if (!this.proc) {
      if (performance.now() - this.lastSpawn < 1000) return;
      this.size = size;
      const even = width % 2 || height % 2 ? ["-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2"] : [];
      const input =
        format === "jpeg"
          ? ["-f", "mjpeg", "-i", "pipe:0"]
          : ["-f", "rawvideo", "-pix_fmt", format, "-s", `${width}x${height}`, "-i", "pipe:0"];
      this.spawn(
        ["-hide_banner", "-loglevel", "error", "-use_wallclock_as_timestamps", "1", ...input, ...even, ...encoderArgs(this.host.ffmpeg), "-force_key_frames", `expr:gte(t,n_forced*${this.host.segment})`, "-vsync", "0"],
        true,
      );
    }
    const stdin = this.proc?.stdin;
    if (!stdin || !stdin.writable) return;
    if (stdin.writableLength > 3 * f.image.data.byteLength) {
      this.skipped++;
      return;
    }
    const now = Date.now();
    stdin.write(f.image.data);
    this.firstData ??= now;
    this.written.set(f.seq, now);
    this.lag = now - f.ts;
    if (this.written.size > 4000) for (const k of [...this.written.keys()].slice(0, 1000)) this.written.delete(k);
  }

  /** Wall ms of the event on this ring's timeline. */
  centerOf(e: Event): number {
    if (this.url) return e.ts;
    return this.written.get(e.seq) ?? e.ts + this.lag;
  }

  /** Wall ms of a segment's start and end. */
  wall(s: Segment): { start: number; end: number } {
    return { start: s.listStart * 1000 + s.run.offset, end: s.listEnd * 1000 + s.run.offset };
  }

  /** Wall ms of the earliest video held, if any. */
  earliest(): number | undefined {
    return this.segments.length ? this.wall(this.segments[0]).start : this.firstData;
  }

  /** Whether the video up to `t` (wall ms) is in closed segments. */
  covers(t: number): boolean {
    return this.segments.some((s) => this.wall(s).end >= t);
  }

  /** Closed segments overlapping [from, to]. */
  overlapping(from: number, to: number): Segment[] {
    return this.segments.filter((s) => {
      const w = this.wall(s);
      return w.end > from && w.start < to;
    });
  }

  /** Deletes segments that end before `before` (wall ms). */
  prune(before: number): void {
    while (this.segments.length > 1 && this.wall(this.segments[0]).end < before) {
      const s = this.segments.shift()!;
      void unlink(join(this.dir, s.file)).catch(() => {});
    }
  }

  /** Copy mode, before the first segment closes: notes when the first video arrived. */
  async probeFirstData(): Promise<void> {
    if (!this.run || this.firstData !== undefined || this.segments.some((s) => s.run === this.run)) return;
    const first = join(this.dir, `r${this.run.id}-000000.ts`);
    const size = await stat(first).then((s) => s.size, () => 0);
    if (size > 0) this.firstData ??= Date.now();
  }

  /** Stops the ffmpeg so that it closes its last segment (SIGINT, or the end of its input). */
  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.restartTimer);
    const proc = this.proc;
    if (!proc) return;
    if (proc.stdin) proc.stdin.end();
    else proc.kill("SIGINT");
    const killer = setTimeout(() => proc.kill("SIGKILL"), 4000);
    await exited(proc);
    clearTimeout(killer);
  }

  /** Stops at once after a failed write (disk full); nothing is recorded until {@link Ring.resume}. */
  halt(): void {
    this.halted = true;
    this.kill();
  }

  /** After a pause (clips stopped): records again. */
  resume(): void {
    this.halted = false;
    this.lastSpawn = 0;
    this.start();
  }

  private kill(): void {
    clearTimeout(this.restartTimer);
    this.proc?.kill("SIGKILL");
    this.proc = undefined;
  }

  private spawn(head: string[], stdin: boolean): void {
    const run: Run = { id: this.runs++, offset: Infinity };
    const args = [...head, ...segmentArgs(this.host.segment, join(this.dir, `r${run.id}-%06d.ts`))];
    this.lastSpawn = performance.now();
    const proc = spawn(this.host.ffmpeg, args, { stdio: [stdin ? "pipe" : "ignore", "pipe", "pipe"] });
    this.proc = proc;
    this.run = run;
    if (!stdin) this.firstData = undefined;
    const errors = collectStderr(proc);
    proc.stdin?.on("error", () => {}); // a dying encoder: its exit is handled below
    proc.on("error", (err) => errors.push(err.message));
    let buf = "";
    proc.stdout!.setEncoding("utf8");
    proc.stdout!.on("data", (chunk: string) => {
      buf += chunk;
      const lines = buf.split("\n");
      buf = lines.pop()!;
      for (const l of lines) this.onLine(run, l.trim());
    });
    void exited(proc).then((code) => {
      if (buf.trim()) this.onLine(run, buf.trim());
      if (this.proc === proc) this.proc = undefined;
      this.onExit(run, code, errors.join(" | "));
    });
  }

  /** `r0-000003.ts,3.000000,4.000000`: a segment closed. */
  private onLine(run: Run, line: string): void {
    const parts = line.split(",");
    if (parts.length < 3) return;
    const listEnd = Number(parts[parts.length - 1]);
    const listStart = Number(parts[parts.length - 2]);
    const file = basename(parts.slice(0, -2).join(","));
    if (!Number.isFinite(listStart) || !Number.isFinite(listEnd) || listEnd <= listStart) return void unlink(join(this.dir, file)).catch(() => {});
    run.offset = Math.min(run.offset, Date.now() - listEnd * 1000);
    this.segments.push({ file, run, listStart, listEnd });
    this.backoff = 1000;
    this.host.segmentClosed();
  }

  private onExit(run: Run, code: number | null, error: string): void {
    const gotVideo = this.segments.some((s) => s.run === run);
    if (WRITE_FAILURE.test(error)) return this.host.writeFailed(`recording ${this.stream}: ${error}`);
    if (this.stopping || this.halted) return;
    if (this.url && !this.transcode && !gotVideo && CANNOT_COPY.test(error)) {
      this.transcode = true;
      this.host.log.warn(`${this.stream}: the camera's video cannot be copied into segments (${error}); re-encoding it`);
      return this.start();
    }
    if (!this.url) {
      if (code !== 0 && error) this.host.log.warn(`${this.stream}: encoder stopped (${code === null ? "signal" : `exit ${code}`}): ${error}`);
      return; // the next frame starts a new one
    }
    const delay = this.backoff;
    this.backoff = Math.min(10_000, this.backoff * 2);
    this.host.log.warn(`${this.stream}: recorder stopped (${code === null ? "signal" : `exit ${code}`}${error ? `: ${error}` : ""}); again in ${delay / 1000} s`);
    this.restartTimer = setTimeout(() => this.start(), delay);
  }
}

/**
 * For each chosen event, an MP4 from `preRoll` before to `postRoll` after
 * (overlapping events share one); the event passes on with `clip` added.
 */
export default defineOperator({
  name: "clip",
  kind: "transform",
  stateful: true,
  description:
    "Event clips: a rolling buffer of each stream's video (copied from the camera, or encoded from the frames) and an MP4 per event from preRoll before to postRoll after; events pass on with `clip` (the MP4's path).",
  options: Options,
  async create(o, ctx: StageContext) {
    const dir = resolve(o.dir);
    const ringRoot = join(dir, ".ring");
    try {
      await mkdir(dir, { recursive: true });
      const probe = join(dir, `.write-test-${Math.random().toString(36).slice(2)}`);
      await writeFile(probe, "");
      await unlink(probe);
      await rm(ringRoot, { recursive: true, force: true });
      await mkdir(ringRoot, { recursive: true });
    } catch (err) {
      throw new ConfigError(`${ctx.stage}: the clip directory ${o.dir} is not writable: ${(err as Error).message}`, { cause: err }, "E_CLIP_DIR");
    }
    const ff = findFfmpeg();
    const log = ctx.log;
    const pre = o.preRoll * 1000;
    const post = o.postRoll * 1000;
    const types = new Set(o.events.types);
    const places = o.events.zones || o.events.lines ? new Set([...(o.events.zones ?? []), ...(o.events.lines ?? [])]) : undefined;
    /** How long a clip waits past its end for the video to arrive before it is written with what there is. */
    const waitMs = Math.max(30_000, 4 * o.segment * 1000);

    const rings = new Map<string, Ring>();
    let ringCount = 0;
    /** Per stream, clips waiting for their post-roll; the last one may still grow. */
    const pending = new Map<string, PendingClip[]>();
    const writing = new Set<PendingClip>();
    let queue: Promise<void> = Promise.resolve();
    let paused: { until: number; reason: string } | undefined;
    let closing = false;
    let written = 0;
    let failed = 0;

    const host: RingHost = {
      ffmpeg: ff.path,
      ffmpegMajor: ff.major,
      log,
      segment: o.segment,
      writeFailed: (reason) => pause(reason),
      segmentClosed: () => void check(),
    };

    function ring(stream: string): Ring {
      let r = rings.get(stream);
      if (r) return r;
      const folder = join(ringRoot, `${safeName(stream)}-${ringCount++}`);
      r = new Ring(stream, folder, o.sources?.[stream], host);
      rings.set(stream, r);
      void mkdir(folder, { recursive: true }).then(
        () => r!.start(),
        (err: Error) => pause(`${folder}: ${err.message}`),
      );
      return r;
    }
    // Cameras are recorded from the start (pre-roll for the first events); files from their stream's first message.
    for (const [id, url] of Object.entries(o.sources ?? {})) if (HAS_SCHEME.test(url)) ring(id);
    log.info(
      `clips of ${o.events.types.join(", ")} events${places ? ` of ${[...places].join(", ")}` : ""} in ${o.dir} (${o.preRoll} s before, ${o.postRoll} s after); ` +
        `${o.sources ? `copied from the camera: ${Object.keys(o.sources).join(", ")}; ` : ""}other streams encoded from their frames`,
    );

    /** Clips stop (a write failed); events flow on without `clip` until `retry` seconds have passed. */
    function pause(reason: string): void {
      if (closing) return;
      if (!paused) {
        const dropped = [...pending.values()].reduce((n, l) => n + l.length, 0);
        log.error(`clips stopped: ${reason}; events go on without clips${dropped ? ` (${dropped} clip(s) not written)` : ""}; trying again in ${o.retry} s`);
      }
      paused = { until: Date.now() + o.retry * 1000, reason };
      failed += [...pending.values()].reduce((n, l) => n + l.length, 0);
      pending.clear();
      for (const r of rings.values()) r.halt();
    }

    function resumeIfDue(): void {
      if (!paused || Date.now() < paused.until) return;
      paused = undefined;
      log.info("clips resumed");
      for (const r of rings.values()) r.resume();
    }

    function matches(e: Event): boolean {
      if (!types.has(e.type)) return false;
      if (!places) return true;
      const place = typeof e.data.zone === "string" ? e.data.zone : typeof e.data.line === "string" ? e.data.line : undefined;
      return place !== undefined && places.has(place);
    }

    function onEvent(e: Event): Message {
      if (e.type === "stream-end") {
        void endStream(e.stream);
        return e;
      }
      if (!matches(e) || paused || closing) return e;
      const r = ring(e.stream);
      const center = r.centerOf(e);
      const start = center - pre;
      const end = center + post;
      const list = pending.get(e.stream) ?? [];
      pending.set(e.stream, list);
      let clip = list.at(-1);
      if (clip && start <= clip.end && end - clip.start <= o.maxClip * 1000) {
        clip.end = Math.max(clip.end, end);
        clip.events++;
      } else {
        let rel = `${safeName(e.stream)}/${stamp(center)}-${safeName(e.type)}.mp4`;
        for (let n = 2; [...list, ...writing].some((c) => c.rel === rel); n++) rel = `${safeName(e.stream)}/${stamp(center)}-${safeName(e.type)}~${n}.mp4`;
        clip = { stream: e.stream, rel, start, end, events: 1 };
        list.push(clip);
      }
      const data: Record<string, unknown> = { ...e.data, clip: clip.rel };
      // Less video before the event than asked for (the recording had just begun): the record says how much.
      const earliest = r.earliest();
      const have = earliest === undefined ? 0 : Math.max(0, Math.min(pre, center - Math.max(earliest, clip.start)));
      if (have < pre - 50) data.clipPreRoll = Math.round(have / 100) / 10;
      return { ...e, data };
    }

    /** Moves clips whose video is recorded (or that waited long enough) to the writer. */
    async function check(): Promise<void> {
      resumeIfDue();
      const now = Date.now();
      for (const [stream, list] of pending) {
        const r = rings.get(stream);
        while (list.length) {
          const c = list[0];
          // Past the end plus the pre-roll, no later event can still join it.
          const due = now >= c.end + pre + 500 && (!r || !r.running || r.covers(c.end) || now >= c.end + waitMs);
          if (!due && !closing) break;
          list.shift();
          enqueue(c);
        }
      }
      for (const r of rings.values()) {
        await r.probeFirstData();
        // Keep what a clip may still need: the pre-roll of a coming event, and every waiting or writing clip.
        const need = Math.min(Date.now() - pre - 2 * o.segment * 1000 - 2000, ...(pending.get(r.stream) ?? []).map((c) => c.start), ...[...writing].filter((c) => c.stream === r.stream).map((c) => c.start));
        r.prune(need);
      }
    }

    function enqueue(c: PendingClip): void {
      writing.add(c);
      queue = queue.then(() => writeClip(c)).finally(() => writing.delete(c));
    }

    async function writeClip(c: PendingClip): Promise<void> {
      if (paused) return void failed++;
      const r = rings.get(c.stream);
      const segs = r ? r.overlapping(c.start, c.end) : [];
      if (!r || !segs.length) {
        failed++;
        return log.warn(`${c.rel}: no video of ${c.stream} was recorded around the event (camera not reachable?); no clip written`);
      }
      const lines = ["ffconcat version 1.0"];
      segs.forEach((s, i) => {
        lines.push(`file '${s.file}'`);
        const w = r.wall(s);
        if (i === segs.length - 1 && w.end > c.end) lines.push(`outpoint ${((c.end - w.start) / 1000).toFixed(3)}`);
      });
      const listFile = join(r.dir, `clip-${written + failed}.ffconcat`);
      const out = join(dir, c.rel);
      const tmp = `${out}.part`;
      try {
        await mkdir(join(dir, safeName(c.stream)), { recursive: true });
        await writeFile(listFile, lines.join("\n") + "\n");
        await runFfmpeg(ff.path, ["-hide_banner", "-nostdin", "-loglevel", "error", "-f", "concat", "-safe", "0", "-i", listFile, "-map", "0:v:0", "-c", "copy", "-movflags", "+faststart", "-f", "mp4", "-y", tmp]);
        await rename(tmp, out);
        written++;
        const secs = (Math.min(c.end, r.wall(segs.at(-1)!).end) - Math.max(c.start, r.wall(segs[0]).start)) / 1000;
        log.info(`clip ${c.rel} (${c.events} event${c.events > 1 ? "s" : ""}, about ${secs.toFixed(1)} s)`);
        scheduleSweep();
      } catch (err) {
        failed++;
        const msg = (err as Error).message;
        await unlink(tmp).catch(() => {});
        if ((err as { code?: string }).code === "ENOSPC" || WRITE_FAILURE.test(msg)) pause(`writing ${c.rel}: ${msg}`);
        else log.error(`clip ${c.rel} not written: ${msg}`);
      } finally {
        await unlink(listFile).catch(() => {});
      }
    }

    /** Retention: by age, then by total size (oldest first). */
    async function sweep(): Promise<void> {
      const files: { path: string; mtime: number; size: number }[] = [];
      for (const s of await readdir(dir).catch(() => [] as string[])) {
        if (s.startsWith(".")) continue;
        for (const f of await readdir(join(dir, s)).catch(() => [] as string[])) {
          if (!f.endsWith(".mp4")) continue;
          const st = await stat(join(dir, s, f)).catch(() => undefined);
          if (st?.isFile()) files.push({ path: join(dir, s, f), mtime: st.mtimeMs, size: st.size });
        }
      }
      files.sort((a, b) => a.mtime - b.mtime);
      const oldest = Date.now() - o.keep.maxAgeHours * 3_600_000;
      let total = files.reduce((n, f) => n + f.size, 0);
      let removed = 0;
      for (const f of files) {
        if (f.mtime >= oldest && total <= o.keep.maxTotalMB * 1_048_576) break;
        await unlink(f.path).catch(() => {});
        total -= f.size;
        removed++;
      }
      if (removed) log.info(`retention: removed ${removed} clip(s) (older than ${o.keep.maxAgeHours} h or over ${o.keep.maxTotalMB} MB)`);
    }
    let sweeping: Promise<void> | undefined;
    function scheduleSweep(): void {
      sweeping ??= sweep().finally(() => (sweeping = undefined));
    }
    scheduleSweep();

    async function endStream(stream: string): Promise<void> {
      const r = rings.get(stream);
      if (!r) return;
      await r.stop();
      for (const c of pending.get(stream) ?? []) enqueue(c);
      pending.delete(stream);
      await queue;
      rings.delete(stream);
      await rm(r.dir, { recursive: true, force: true }).catch(() => {});
    }

    const timer = setInterval(() => void check(), 500);
    const sweeper = setInterval(scheduleSweep, 600_000);

    return {
      clips: {
        dir,
        async list(stream?: string): Promise<ClipInfo[]> {
          const out: ClipInfo[] = [];
          const folders = stream !== undefined ? [safeName(stream)] : (await readdir(dir).catch(() => [] as string[])).filter((s) => !s.startsWith("."));
          for (const s of folders) {
            for (const f of await readdir(join(dir, s)).catch(() => [] as string[])) {
              const m = NAME.exec(f);
              if (!m) continue;
              const st = await stat(join(dir, s, f)).catch(() => undefined);
              if (st?.isFile()) out.push({ path: `${s}/${f}`, stream: s, ts: nameTime(m[1]), type: m[2], bytes: st.size });
            }
          }
          return out.sort((a, b) => b.ts - a.ts);
        },
      },
      metrics: () => [
        { name: "clips_written_total", type: "counter" as const, help: "Event clips written.", value: written },
        { name: "clips_failed_total", type: "counter" as const, help: "Event clips that could not be written (no video, disk full, ffmpeg error).", value: failed },
        { name: "clips_paused", type: "gauge" as const, help: "1 while clips are stopped after a failed write.", value: paused ? 1 : 0 },
      ],
      process(msg: Message): Message {
        if (msg.kind === "frame") {
          if (!paused && !closing) {
            const r = ring(msg.stream);
            if (r.mode === "encode") r.feed(msg);
          }
          return msg;
        }
        return onEvent(msg);
      },
      async close() {
        closing = true;
        clearInterval(timer);
        clearInterval(sweeper);
        // Each recorder closes its last segment; then every waiting clip is written with the video there is.
        await Promise.all([...rings.values()].map((r) => r.stop()));
        await check();
        await queue;
        await sweeping;
        await rm(ringRoot, { recursive: true, force: true }).catch(() => {});
        const skipped = [...rings.values()].reduce((n, r) => n + r.skipped, 0);
        log.info(`${written} clip(s) in ${o.dir}${failed ? `, ${failed} not written` : ""}${skipped ? ` (${skipped} frames skipped while the encoder lagged)` : ""}`);
      },
    };
  },
});
