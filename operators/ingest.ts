import * as v from "valibot";
import { resolveFfmpeg } from "../runtime/media/ffmpeg.ts";
import { Camera, redact, type CameraOptions } from "../runtime/media/camera.ts";
import type { Message } from "../runtime/core/message.ts";
import { defineOperator, type StageContext } from "../runtime/core/operator.ts";
import {
  StreamExistsError,
  StreamNotFoundError,
  StreamOptionsError,
  type StreamControl,
  type StreamInfo,
  type StreamStore,
} from "../runtime/core/streams.ts";
import { describeIssue, formatPath } from "../runtime/spec/issues.ts";
import { kvStreamStore } from "../runtime/bus/stream-kv.ts";
import { fileStreamStore } from "../runtime/platform/stream-file.ts";
import { resolveMediaPath } from "../runtime/platform/paths.ts";

const STREAMING = /^(rtsps?|rtmps?|srt|udp|rtp|tcp):\/\//i;
const HAS_SCHEME = /^[a-z][a-z0-9+.-]*:\/\//i;
/** `rtsp://host:/path`: a colon with no port after it. */
const EMPTY_PORT = /^[a-z][a-z0-9+.-]*:\/\/(?:[^/@]*@)?[^/:]*:(?:\/|$)/i;

const Url = v.pipe(
  v.string(),
  v.minLength(1),
  v.check((u) => !EMPTY_PORT.test(u), "the URL has a colon but no port (e.g. rtsp://host:8554/path, or drop the colon)"),
  v.check((u) => HAS_SCHEME.test(u) || resolveMediaPath(u) !== undefined, "file not found (give a URL like rtsp://host/path or an existing file)"),
  v.description("rtsp://, rtmp://, http(s)://, srt://, udp:// or a file path (relative to the working directory or the project)."),
);
const StreamId = v.pipe(
  v.string(),
  v.regex(/^[\w-]+$/, (i) => `expected a stream id of letters, digits, _ and - (got ${i.received})`),
  v.maxLength(64),
);

/** Options a stream may set for itself; the stage's values are the defaults. */
const PerStream = {
  fps: v.optional(v.pipe(v.number(), v.minValue(0.01), v.maxValue(240), v.description("Frame-rate cap: frames arriving faster are skipped inside ffmpeg."))),
  width: v.optional(v.pipe(v.number(), v.integer(), v.minValue(16), v.maxValue(8192), v.description("Scale in ffmpeg to this size (both or neither)."))),
  height: v.optional(v.pipe(v.number(), v.integer(), v.minValue(16), v.maxValue(8192))),
  realtime: v.optional(v.pipe(v.boolean(), v.description("Read files at their native rate (ffmpeg -re), like a camera."))),
  loop: v.optional(v.pipe(v.boolean(), v.description("Restart files from the beginning when they end."))),
  live: v.optional(
    v.pipe(
      v.boolean(),
      v.description("Live streams drop stale frames under overload and reconnect when they end; default: true for streaming URLs and realtime files."),
    ),
  ),
  transport: v.optional(v.pipe(v.picklist(["tcp", "udp"]), v.description("RTSP lower transport (default tcp)."))),
  stallTimeout: v.optional(v.pipe(v.number(), v.minValue(0.5), v.description("Seconds without a frame before ffmpeg is restarted (default 10)."))),
  reconnectDelay: v.optional(v.pipe(v.number(), v.minValue(0.05), v.description("Reconnect backoff in seconds: first delay, doubled up to the max (default 0.5)."))),
  hwaccel: v.optional(
    v.pipe(
      v.picklist(["auto", "cuda", "vaapi", "qsv", "none"]),
      v.description("Hardware decoding (ffmpeg -hwaccel); where the device cannot decode, software decoding takes over with one log line (default none)."),
    ),
  ),
  reconnectMaxDelay: v.optional(
    v.pipe(v.number(), v.minValue(0.05), v.description("Longest reconnect delay in seconds (default 2: frames are back within ~2 s of a camera's return)."))),
  decode: v.optional(
    v.pipe(
      v.boolean(),
      v.description(
        "false: relay the camera's H.264/H.265 without decoding, one frame per access unit (format h264/hevc, meta.video), for a `decode` stage elsewhere (docs/relay.md); fps, width, height and hwaccel need decoding. Default true.",
      ),
    ),
  ),
};
/** fps, width and height work on decoded pictures: a relayed stream cannot have them. */
const relayable = <T extends { decode?: boolean; fps?: number; width?: number }>(o: T) => o.decode !== false || (o.fps === undefined && o.width === undefined);
const RELAY_ONLY = "decode: false relays the encoded stream as it is: fps, width and height need decoding (set them on the decode side, e.g. resize)";

/** One entry of `streams:`, and the body of `POST /api/streams`. */
const StreamSpec = v.pipe(
  v.strictObject({ id: StreamId, url: Url, ...PerStream }),
  v.check((o) => (o.width === undefined) === (o.height === undefined), "width and height go together"),
  v.check(relayable, RELAY_ONLY),
);
type StreamSpec = v.InferOutput<typeof StreamSpec>;
/** `id=url,id=url`: a list of cameras in one environment variable. */
const PAIRS = /^\s*[\w-]+=\S+?\s*(,\s*[\w-]+=\S+?\s*)*$/;
const pairs = (t: string) =>
  t.split(",").map((p) => {
    const i = p.indexOf("=");
    return { id: p.slice(0, i).trim(), url: p.slice(i + 1).trim() };
  });

/** `streams:` as a list of specs, or one string of id=url pairs (e.g. `${CAMERAS}`). */
const StreamList = v.pipe(
  v.custom<unknown[] | string>((x) => Array.isArray(x) || typeof x === "string", "expected a list of streams, or id=url pairs separated by commas"),
  v.check((x) => typeof x !== "string" || PAIRS.test(x), "expected id=url pairs separated by commas (e.g. door=rtsp://cam1/live,till=rtsp://cam2/live)"),
  v.transform((x) => (typeof x === "string" ? pairs(x) : x)),
  v.array(StreamSpec),
);

/** The body of `PATCH /api/streams/:id`: any per-stream option, or a new url. */
const StreamPatch = v.strictObject({ url: v.optional(Url), ...PerStream });

const Options = v.pipe(
  v.strictObject({
    url: v.optional(Url),
    stream: v.optional(v.pipe(StreamId, v.description("Stream id carried on every frame of `url`; defaults to the stage id."))),
    streams: v.optional(
      v.pipe(
        StreamList,
        v.minLength(1),
        v.check((a) => new Set(a.map((s) => s.id)).size === a.length, "stream ids must be unique"),
        v.description(
          "Several cameras in one stage: `{ id, url, ...any option below }` each, or one string `id=url,id=url` (e.g. `${CAMERAS}` from the environment); the stage's options are their defaults. Changed at runtime through /api/streams or `bun run streams`.",
        ),
      ),
    ),
    ...PerStream,
    state: v.optional(
      v.pipe(
        v.string(),
        v.minLength(1),
        v.description("Memory bus: the file keeping a stream set changed at runtime (default out/<pipeline>.<stage>.streams.json). On NATS the set lives in the KV bucket fw_streams_<pipeline>."),
      ),
    ),
  }),
  v.check((o) => (o.url === undefined) !== (o.streams === undefined), "give url (one stream) or streams (several), not both"),
  v.check((o) => (o.width === undefined) === (o.height === undefined), "width and height go together"),
  v.check(relayable, RELAY_ONLY),
);
type Options = v.InferOutput<typeof Options>;

/** The stage-level defaults of the per-stream options. */
const DEFAULTS = { realtime: false, loop: false, transport: "tcp" as const, stallTimeout: 10, reconnectDelay: 0.5, reconnectMaxDelay: 2 };

function cameraOptions(o: Options, s: StreamSpec): CameraOptions {
  const pick = <K extends keyof typeof PerStream>(k: K) => s[k] ?? o[k];
  const input = HAS_SCHEME.test(s.url) ? s.url : resolveMediaPath(s.url)!;
  const realtime = pick("realtime") ?? DEFAULTS.realtime;
  const decode = pick("decode") ?? true;
  if (!relayable({ decode, fps: pick("fps"), width: pick("width") })) throw new StreamOptionsError(`stream ${s.id}: ${RELAY_ONLY}`);
  return {
    input,
    fps: pick("fps"),
    width: pick("width"),
    height: pick("height"),
    realtime,
    loop: pick("loop") ?? DEFAULTS.loop,
    live: pick("live") ?? (STREAMING.test(input) || realtime),
    transport: pick("transport") ?? DEFAULTS.transport,
    stallTimeout: pick("stallTimeout") ?? DEFAULTS.stallTimeout,
    reconnectDelay: pick("reconnectDelay") ?? DEFAULTS.reconnectDelay,
    reconnectMaxDelay: pick("reconnectMaxDelay") ?? DEFAULTS.reconnectMaxDelay,
    hwaccel: pick("hwaccel"),
    decode,
  };
}

/** A spec validated against `schema`, or a StreamOptionsError naming each field. */
function check<S extends v.GenericSchema>(schema: S, value: unknown, what: string): v.InferOutput<S> {
  const r = v.safeParse(schema, value, { abortEarly: false });
  if (r.success) return r.output;
  throw new StreamOptionsError(
    `${what}: ${r.issues.map((i) => `${formatPath((i.path ?? []).map((p) => p.key as string)) || "(body)"}: ${describeIssue(i, schema)}`).join("; ")}`,
  );
}

async function openStore(o: Options, ctx: StageContext): Promise<StreamStore | undefined> {
  if (ctx.nats) {
    try {
      return await kvStreamStore(ctx.nats, ctx.pipeline, ctx.stage);
    } catch (err) {
      ctx.log.warn(`stream set not kept in NATS KV (${(err as Error).message}): enable JetStream on the server (pipelines/nats/*.conf) to keep it across restarts`);
      return undefined;
    }
  }
  return fileStreamStore(o.state ?? `out/${ctx.pipeline}.${ctx.stage}.streams.json`);
}

interface Running {
  spec: StreamSpec;
  cam: Camera;
  done: Promise<void>;
  /** Its ffmpeg has finished for good (a file's end, an error, or stopped). */
  ended: boolean;
}

/**
 * Decodes one or many cameras (RTSP/HTTP/files) with an ffmpeg child process
 * each. Live streams reconnect with capped backoff; a stall watchdog restarts
 * a silent ffmpeg. With `streams:`, cameras are added, changed and removed
 * while the pipeline runs (HTTP /api/streams, `bun run streams`); the set
 * survives restarts (a file on the memory bus, NATS KV otherwise). A removed
 * stream ends with a `stream-end` event, so stateful stages free its state.
 */
export default defineOperator({
  name: "ingest",
  kind: "source",
  description: "Decode RTSP/HTTP/file video with ffmpeg into rgb24 frames, or relay its H.264/H.265 undecoded (decode: false): one camera (url) or many (streams, changed at runtime).",
  options: Options,
  create(o, ctx) {
    const ffmpeg = resolveFfmpeg();
    const log = ctx.log;
    const running = new Map<string, Running>();
    /** Next sequence number of streams that were changed (they continue, they do not restart at 0). */
    let emit: ((m: Message) => Promise<void>) | undefined;
    let signal: AbortSignal | undefined;
    let store: StreamStore | undefined;
    let stopWatch: (() => void) | undefined;
    let everLive = false;
    let wake: () => void = () => {};
    let fatal: Error | undefined;
    const initial: StreamSpec[] = o.streams ?? [{ id: o.stream ?? ctx.stage, url: o.url! }];

    function start(spec: StreamSpec, firstSeq = 0): Running {
      const opts = cameraOptions(o, spec);
      everLive ||= opts.live;
      const cam = new Camera(spec.id, opts, ffmpeg, initial.length > 1 || o.streams ? log.child(spec.id) : log, firstSeq);
      const r: Running = {
        spec,
        cam,
        ended: false,
        done: cam
          .run(emit!, signal!)
          .then(async () => {
            // A relayed file's end: the decoder downstream flushes the pictures it still holds (and frees its ffmpeg).
            if (opts.decode === false && !signal!.aborted && running.get(spec.id) === r) {
              await emit?.({ kind: "event", stream: spec.id, seq: cam.nextSeq, ts: Date.now(), type: "stream-end", data: { reason: "end" } });
            }
          })
          .catch((err: Error) => {
          log.error(`${spec.id}: ${redact(err.message)}`);
          if (running.size <= 1 && !o.streams) {
            // One stream that cannot run (a config error, say): the stage ends with its error, live or not.
            fatal ??= err;
            throw err;
          }
        }),
      };
      running.set(spec.id, r);
      const ended = () => {
        r.ended = true;
        wake();
      };
      void r.done.then(ended, ended);
      return r;
    }

    async function stop(id: string, reason: string): Promise<void> {
      const r = running.get(id);
      if (!r) return;
      running.delete(id);
      r.cam.stop();
      await r.done.catch(() => {});
      // Downstream stateful stages (tracker, zones) free the stream's state on this event.
      await emit?.({ kind: "event", stream: id, seq: r.cam.nextSeq, ts: Date.now(), type: "stream-end", data: { reason } });
      wake();
    }

    function info(r: Running): StreamInfo {
      const s = r.cam.status();
      const { id, url, ...options } = r.spec;
      return { id, stage: ctx.stage, url: redact(url), live: r.cam.options.live, connected: s.connected, frames: s.frames, fps: s.fps, drops: 0, reconnects: s.reconnects, ...(s.lastError ? { lastError: s.lastError } : {}), options };
    }

    /** Applies a change seen in the store (another node, or this one through the store). */
    async function apply(change: { id: string; spec?: Record<string, unknown> }): Promise<void> {
      if (!signal || signal.aborted) return;
      if (!change.spec) return stop(change.id, "removed");
      let spec: StreamSpec;
      try {
        spec = check(StreamSpec, change.spec, `stream ${change.id} from ${store?.where}`);
      } catch (err) {
        return void log.error((err as Error).message);
      }
      const cur = running.get(spec.id);
      if (cur && JSON.stringify(cur.spec) === JSON.stringify(spec)) return;
      const seq = cur?.cam.nextSeq ?? 0;
      if (cur) {
        running.delete(spec.id);
        cur.cam.stop();
        await cur.done.catch(() => {});
      }
      start(spec, seq);
      log.info(`${cur ? "changed" : "added"} stream ${spec.id} (${redact(spec.url)})`);
    }

    const control: StreamControl = {
      list: () => [...running.values()].map(info),
      async add(body) {
        const spec = check(StreamSpec, body, "stream");
        if (running.has(spec.id)) throw new StreamExistsError(`stream "${spec.id}" exists in ${ctx.stage} (PATCH /api/streams/${spec.id} to change it)`);
        if (!signal) throw new StreamOptionsError(`${ctx.stage} is not running yet`);
        await saveAll();
        await store?.put(spec.id, spec);
        if (!running.has(spec.id)) start(spec);
        log.info(`added stream ${spec.id} (${redact(spec.url)})`);
        return info(running.get(spec.id)!);
      },
      async update(id, body) {
        const cur = running.get(id);
        if (!cur) throw new StreamNotFoundError(`no stream "${id}" in ${ctx.stage}`);
        const patch = check(StreamPatch, body, `stream ${id}`);
        const spec = check(StreamSpec, { ...cur.spec, ...patch }, `stream ${id}`);
        await saveAll();
        await store?.put(id, spec);
        await apply({ id, spec });
        return info(running.get(id)!);
      },
      async remove(id) {
        if (!running.has(id)) throw new StreamNotFoundError(`no stream "${id}" in ${ctx.stage}`);
        await saveAll();
        await store?.delete(id);
        await stop(id, "removed");
        log.info(`removed stream ${id}`);
      },
    };

    /** The first runtime change saves the whole current set, so the store holds it all from then on. */
    let saved = false;
    async function saveAll(): Promise<void> {
      if (saved || !store) return;
      saved = true;
      if ((await store.load()) === undefined) for (const r of running.values()) await store.put(r.spec.id, r.spec);
    }

    return {
      streams: control,
      metrics: () =>
        [...running.values()].flatMap((r) => {
          const s = r.cam.status();
          const labels = { stream: r.spec.id };
          return [
            { name: "stream_frames_total", type: "counter" as const, help: "Frames decoded, by stream.", value: s.frames, labels },
            { name: "stream_reconnects_total", type: "counter" as const, help: "Times a live stream was lost and reconnected.", value: s.reconnects, labels },
            { name: "stream_connected", type: "gauge" as const, help: "1 while the stream delivers frames (ffmpeg running and a frame decoded since it started).", value: s.connected ? 1 : 0, labels },
          ];
        }),
      async run(out, sig) {
        emit = out;
        signal = sig;
        store = await openStore(o, ctx);
        let set = initial;
        const stored = await store?.load().catch((err: Error) => void log.error(`${store!.where}: ${err.message}; using the file's streams`));
        if (stored) {
          set = stored.flatMap((s) => {
            try {
              return [check(StreamSpec, s, `stream from ${store!.where}`)];
            } catch (err) {
              log.error((err as Error).message);
              return [];
            }
          });
          saved = true;
        }
        stopWatch = store?.watch?.((c) => void apply(c));
        for (const s of set) start(s);
        if (stored) log.info(`${set.length} stream(s) from ${store!.where} (changed at runtime; the file's list is the initial set only)`);
        // Until shutdown while any stream is (or was) live: a gateway waits for cameras; a set of files ends with them.
        await new Promise<void>((resolve) => {
          const check = () => {
            if (sig.aborted || fatal || (!everLive && [...running.values()].every((r) => r.ended))) resolve();
          };
          wake = check;
          sig.addEventListener("abort", check, { once: true });
          check();
        });
        stopWatch?.();
        await Promise.all([...running.values()].map((r) => r.done));
        // Stopped (--frames, a signal): relayed streams say so, so decoders downstream flush the pictures they hold during the drain.
        for (const r of running.values()) {
          if (sig.aborted && r.cam.options.decode === false) {
            await out({ kind: "event", stream: r.spec.id, seq: r.cam.nextSeq, ts: Date.now(), type: "stream-end", data: { reason: "stopped" } });
          }
        }
      },
      async close() {
        stopWatch?.();
        for (const r of running.values()) r.cam.stop();
        await store?.close?.();
      },
    };
  },
});
