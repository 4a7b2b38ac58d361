import * as v from "valibot";
import { NatsUrl, resultConnection, resultSubject, SubjectPrefix } from "../runtime/bus/results.ts";
import { defineOperator } from "../runtime/core/operator.ts";
import { Precision, toJsonLine } from "../runtime/core/record.ts";

const Options = v.strictObject({
  subject: SubjectPrefix,
  url: v.optional(NatsUrl),
  frames: v.optional(v.pipe(v.boolean(), v.description("Publish every frame's detections (a live feed for dashboards).")), true),
  events: v.optional(v.pipe(v.boolean(), v.description("Publish events (line crossings, zone enter/exit, counts).")), true),
  precision: Precision,
});

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
