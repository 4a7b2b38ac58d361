import * as v from "valibot";
import { JetStreamApiCodes, JetStreamApiError, jetstream, jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import { ConfigError } from "../runtime/core/errors.ts";
import type { Logger } from "../runtime/core/log.ts";
import { PayloadTooLargeError } from "../runtime/bus/nats.ts";
import { defineOperator } from "../runtime/core/operator.ts";
import { checkSubject } from "../runtime/core/subject.ts";
import { Precision, toJsonLine } from "../runtime/core/record.ts";
import { NatsUrl, resultConnection, resultId, resultSubject, SubjectPrefix } from "../runtime/bus/results.ts";

const seconds = (description: string) => v.pipe(v.number(), v.minValue(0.001), v.description(description));

const Stream = v.strictObject({
  name: v.pipe(
    v.string(),
    v.regex(/^[\w-]+$/, "expected a stream name of letters, digits, _ and -"),
    v.description("Stream name (letters, digits, - and _)."),
  ),
  subjects: v.optional(
    v.pipe(
      v.array(
        v.pipe(
          v.string(),
          v.check((s) => !checkSubject(s, true), "expected a NATS subject"),
        ),
      ),
      v.minLength(1),
      v.description("Subjects it captures; default `<subject>.>`."),
    ),
  ),
  maxAge: v.optional(seconds("Seconds a result is kept (default: until maxBytes is reached, oldest first).")),
  maxBytes: v.optional(
    v.pipe(
      v.number(),
      v.integer(),
      v.minValue(1024),
      v.description("Bytes the stream may hold; the oldest results go first (default: the server's limit)."),
    ),
  ),
  duplicateWindow: v.optional(
    seconds("Seconds a Msg-Id is remembered: a retry within it is stored once. Make it longer than the outages you expect."),
    600,
  ),
  storage: v.optional(v.pipe(v.picklist(["file", "memory"]), v.description("Where the stream keeps its messages.")), "file"),
});

const Options = v.strictObject({
  subject: SubjectPrefix,
  url: v.optional(NatsUrl),
  frames: v.optional(
    v.pipe(v.boolean(), v.description("Store every frame's detections too (off: JetStream keeps what must not be lost, the events).")),
    false,
  ),
  events: v.optional(v.pipe(v.boolean(), v.description("Store events (line crossings, zone enter/exit, counts).")), true),
  precision: Precision,
  stream: v.optional(v.pipe(Stream, v.description("Create this stream when it does not exist (an existing one is used as it is)."))),
  ackTimeout: v.optional(seconds("Seconds to wait for the stream's ack before publishing again (same Msg-Id, so never stored twice)."), 5),
  retryDelay: v.optional(
    seconds("First delay between attempts while JetStream is unreachable (seconds), doubled up to maxRetryDelay."),
    0.25,
  ),
  maxRetryDelay: v.optional(seconds("Longest delay between attempts (seconds)."), 5),
});
type Options = v.InferOutput<typeof Options>;

const NS = 1_000_000_000;

/** Creates the configured stream unless it exists. */
async function ensureStream(jsm: JetStreamManager, s: NonNullable<Options["stream"]>, prefix: string, log: Logger): Promise<void> {
  try {
    const info = await jsm.streams.info(s.name);
    log.info(`using stream ${s.name} (${info.config.subjects?.join(", ") || "no subjects"}; ${info.state.messages} messages)`);
    return;
  } catch (err) {
    if (!(err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound)) throw err;
  }
  const subjects = s.subjects ?? [`${prefix}.>`];
  try {
    await jsm.streams.add({
      name: s.name,
      subjects,
      storage: s.storage as never,
      duplicate_window: Math.round(s.duplicateWindow * NS),
      ...(s.maxAge ? { max_age: Math.round(s.maxAge * NS) } : {}),
      ...(s.maxBytes ? { max_bytes: s.maxBytes } : {}),
    });
  } catch (err) {
    throw new ConfigError(`cannot create stream ${s.name} for ${subjects.join(", ")}: ${(err as Error).message}`);
  }
  log.info(`created stream ${s.name} (${subjects.join(", ")}, ${s.storage} storage, duplicate window ${s.duplicateWindow} s)`);
}

/** Why an attempt failed, in words (the client's "jetstream is not enabled" also means "restarting"). */
function reason(err: unknown): string {
  const e = err as Error;
  if (e.name === "JetStreamNotEnabled") return "no JetStream answered: server restarting, link down or no stream for the subject";
  if (e.name === "TimeoutError") return "no ack in time";
  return e.message;
}

/**
 * Stores results in a JetStream stream, one at a time and in order: each
 * publish carries a Msg-Id derived from the result, waits for the stream's
 * ack, and is retried with backoff (holding later results back) until it is
 * stored — a retry after a lost ack is recognised as a duplicate, never
 * stored twice.
 */
export default defineOperator({
  name: "sink-jetstream",
  kind: "sink",
  description: "Store events (and optionally frame results) as JSON in a JetStream stream: Msg-Id deduplication, acked, retried in order.",
  options: Options,
  async create(o, ctx) {
    const link = await resultConnection(o.url, ctx, "sink-jetstream");
    if (!link) return { process() {} };
    const { bus } = link;
    const log = ctx.log;
    try {
      const jsm = await jetstreamManager(bus.nc);
      if (o.stream) await ensureStream(jsm, o.stream, o.subject, log);
      // Without a stream for the subject every publish would wait forever: say so now.
      const stream = await jsm.streams.find(`${o.subject}.>`).catch(() => undefined);
      if (!stream)
        throw new ConfigError(
          `no JetStream stream captures ${o.subject}.> on ${bus.nc.getServer()}: set this stage's stream: { name: … } to create one, or create it (docs/retail.md)`,
        );
      if (!o.stream) log.info(`storing in stream ${stream}`);
    } catch (err) {
      if (link.own) await bus.close();
      if (err instanceof ConfigError) throw err;
      if ((err as Error).name === "JetStreamNotEnabled")
        throw new ConfigError(
          `JetStream is not enabled on ${bus.nc.getServer()}: run nats-server with -js or a jetstream {} block (pipelines/nats/*.conf)`,
        );
      throw err;
    }
    const js = jetstream(bus.nc, { timeout: o.ackTimeout * 1000 });
    const wake = new AbortController();
    let stored = 0;
    let duplicates = 0;
    /** The result being stored (one at a time), for the report when the stage closes mid-outage. */
    let inflight: string | undefined;

    /** Sleeps `ms`, or less when the stage closes. */
    const pause = (ms: number) =>
      new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(t);
          wake.signal.removeEventListener("abort", done);
          resolve();
        };
        const t = setTimeout(done, ms);
        wake.signal.addEventListener("abort", done, { once: true });
      });

    /** Publishes until the stream acks; throws only when the connection or the stage is closed. */
    async function store(subject: string, data: Uint8Array, id: string, what: string): Promise<void> {
      let delay = o.retryDelay * 1000;
      const t0 = performance.now();
      inflight = what;
      try {
        for (let attempt = 1; ; attempt++) {
          try {
            const ack = await js.publish(subject, data, { msgID: id, timeout: o.ackTimeout * 1000 });
            if (ack.duplicate) duplicates++;
            else stored++;
            if (attempt > 1) log.info(`${what} stored after ${attempt} attempts (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
            return;
          } catch (err) {
            if (bus.nc.isClosed() || wake.signal.aborted) {
              throw new Error(
                `${what} NOT stored on ${subject}: ${wake.signal.aborted ? "stage closed" : "NATS connection closed"} while JetStream was unreachable (${reason(err)})`,
              );
            }
            // The first failure and every tenth after it: an outage is visible without flooding the log.
            if (attempt === 1 || attempt % 10 === 0) {
              log.warn(
                `storing ${what} on ${subject} failed (${reason(err)}); attempt ${attempt}, retrying in ${(delay / 1000).toFixed(2)} s — later results wait, in order`,
              );
            }
            await pause(delay);
            delay = Math.min(delay * 2, o.maxRetryDelay * 1000);
          }
        }
      } finally {
        inflight = undefined;
      }
    }

    return {
      async process(msg) {
        if (msg.kind === "frame" ? !o.frames : !o.events) return;
        const json = toJsonLine(msg, o.precision);
        const data = new TextEncoder().encode(json);
        const subject = resultSubject(o.subject, msg);
        const limit = bus.nc.info?.max_payload ?? 1024 * 1024;
        if (data.length > limit) throw new PayloadTooLargeError(subject, data.length, limit);
        await store(
          subject,
          data,
          resultId(ctx.pipeline, msg, json),
          `${msg.kind} ${msg.stream}#${msg.seq}${msg.kind === "event" ? ` (${msg.type})` : ""}`,
        );
      },
      async close() {
        wake.abort();
        const summary = `stored ${stored} results${duplicates ? `, ${duplicates} retries recognised as duplicates` : ""}`;
        // Only after the drain timed out during an outage: the executor gave up waiting for this one.
        if (inflight) log.error(`${summary}; ${inflight} NOT stored: the stage closed while JetStream was unreachable`);
        else log.info(summary);
        if (link.own) await bus.drain();
      },
    };
  },
});
