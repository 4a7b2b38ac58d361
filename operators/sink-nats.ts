import * as v from "valibot";
import { createHash } from "node:crypto";
import type { Message } from "../runtime/message.ts";
import { NatsBus } from "../runtime/nats-bus.ts";
import { defineOperator, type StageContext } from "../runtime/operator.ts";
import { checkSubject } from "../runtime/subject.ts";
import { toJsonLine } from "./sink-jsonl.ts";

/** A subject prefix: valid NATS tokens, no wildcards. */
export const SubjectPrefix = v.pipe(
  v.string(),
  v.check((s) => !checkSubject(s, false), "expected a NATS subject without wildcards (e.g. retail.store1)"),
  v.description("Subject prefix: frames go to `<subject>.<stream>.frames`, events to `<subject>.<stream>.events.<type>`."),
);

/** A nats:// or tls:// server URL (several comma-separated). */
export const NatsUrl = v.pipe(
  v.string(),
  v.regex(/^(nats|tls):\/\//, "expected a nats:// or tls:// URL"),
  v.description("Own connection to this server; default: the pipeline's bus when it is NATS (idle otherwise)."),
);

/** Decimals kept in box coordinates and scores. */
export const Precision = v.optional(
  v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(6), v.description("Decimals kept in box coordinates and scores.")),
  2,
);

const Options = v.strictObject({
  subject: SubjectPrefix,
  url: v.optional(NatsUrl),
  frames: v.optional(v.pipe(v.boolean(), v.description("Publish every frame's detections (a live feed for dashboards).")), true),
  events: v.optional(v.pipe(v.boolean(), v.description("Publish events (line crossings, zone enter/exit, counts).")), true),
  precision: Precision,
});

/** A stream id or event type as one subject token (`.`, `*`, `>` and spaces become `_`). */
function token(s: string): string {
  return s.replace(/[\s.*>]/g, "_") || "_";
}

/**
 * The subject a result is published on: `<prefix>.<stream>.frames` for a
 * frame, `<prefix>.<stream>.events.<type>` for an event.
 * @example
 * resultSubject("retail.store1", { kind: "event", stream: "cam", type: "cross", ... }); // "retail.store1.cam.events.cross"
 */
export function resultSubject(prefix: string, msg: Message): string {
  return msg.kind === "frame" ? `${prefix}.${token(msg.stream)}.frames` : `${prefix}.${token(msg.stream)}.events.${token(msg.type)}`;
}

/**
 * A stable id for one result: the same message always gets the same id, so a
 * retried publish (JetStream Msg-Id, webhook Idempotency-Key) is recognised
 * as a duplicate by whoever receives it.
 * @example
 * const json = toJsonLine(msg, 2);
 * resultId("retail", msg, json); // "retail.cam.120.event.Xk3...": pipeline, stream, seq, kind, content hash
 */
export function resultId(pipeline: string, msg: Message, json: string): string {
  const hash = createHash("sha256").update(json).digest("base64url").slice(0, 16);
  return `${pipeline}.${token(msg.stream)}.${msg.seq}.${msg.kind}.${hash}`;
}

/**
 * The NATS connection a result sink publishes on: its own `url`, else the
 * pipeline's bus when that is NATS, else none (the sink says once that it is idle).
 * @example
 * const link = await resultConnection(o.url, ctx, "sink-nats");
 * if (link) link.bus.publishRaw("retail.cam.frames", "{}");
 */
export async function resultConnection(
  url: string | undefined,
  ctx: StageContext,
  operator: string,
): Promise<{ bus: NatsBus; own: boolean } | undefined> {
  if (url)
    return {
      bus: await NatsBus.connect({ url, log: ctx.log, signal: ctx.signal, name: `framewire ${ctx.pipeline}/${ctx.stage}` }),
      own: true,
    };
  if (ctx.nats) return { bus: ctx.nats, own: false };
  ctx.log.info(
    `${operator} is idle: the pipeline's bus is memory (set bus: nats://… or NATS_URL, or give this stage a url) — results still go to the other sinks`,
  );
  return undefined;
}

/**
 * Publishes results as plain JSON on core NATS subjects (the same record as
 * a sink-jsonl line). Core NATS delivers at most once to whoever is
 * subscribed at the time; for a durable, exactly-once store use sink-jetstream.
 */
export default defineOperator({
  name: "sink-nats",
  kind: "sink",
  description: "Publish per-frame detections and events as JSON on core NATS subjects (<subject>.<stream>.frames, .events.<type>).",
  options: Options,
  async create(o, ctx) {
    const link = await resultConnection(o.url, ctx, "sink-nats");
    if (!link) return { process() {} };
    const { bus } = link;
    ctx.log.info(`publishing ${[o.frames && "frames", o.events && "events"].filter(Boolean).join(" and ")} on ${o.subject}.<stream>.…`);

    /**
     * Resolves once the server has everything published so far. While the
     * client reconnects it keeps waiting (the client resends its buffer on
     * reconnect); only a closed connection is an error.
     */
    async function flushed(what: string): Promise<void> {
      for (let waited = 0; ; waited++) {
        try {
          await bus.nc.flush();
          if (waited) ctx.log.info(`NATS is back; ${what} flushed`);
          return;
        } catch (err) {
          if (bus.nc.isClosed()) throw new Error(`${what} may not have reached NATS: the connection is closed (${(err as Error).message})`);
          if (!waited)
            ctx.log.warn(`NATS link down while publishing ${what} (${(err as Error).message}); later results wait until it is back`);
          await new Promise((r) => setTimeout(r, 250));
        }
      }
    }

    return {
      async process(msg) {
        if (msg.kind === "frame" ? !o.frames : !o.events) return;
        bus.publishRaw(resultSubject(o.subject, msg), toJsonLine(msg, o.precision));
        // An event is done only once the server has it: while the link is down this waits (backpressure) instead of piling up in memory.
        if (msg.kind === "event") await flushed(`event ${msg.stream}#${msg.seq} (${msg.type})`);
      },
      async close() {
        // A shared bus is drained by its owner (the CLI) after every stage has closed.
        if (link.own) await bus.drain();
      },
    };
  },
});
