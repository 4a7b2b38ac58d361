/**
 * Where results go on NATS: subject names, stable ids for deduplication, and
 * the connection a result sink publishes on. Shared by sink-nats,
 * sink-jetstream and sink-webhook.
 */
import * as v from "valibot";
import { createHash } from "node:crypto";
import type { NatsLink } from "../core/bus.ts";
import type { Message } from "../core/message.ts";
import type { StageContext } from "../core/operator.ts";
import { checkSubject } from "../core/subject.ts";
import { NatsBus } from "./nats.ts";

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
): Promise<{ bus: NatsLink; own: boolean } | undefined> {
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

