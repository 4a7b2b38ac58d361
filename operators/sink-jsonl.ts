import * as v from "valibot";
import { ConfigError } from "../runtime/core/errors.ts";
import { Precision, toJsonLine } from "../runtime/core/record.ts";
import { defineOperator } from "../runtime/core/operator.ts";
import { openWriter } from "../runtime/platform/index.ts";

const Options = v.strictObject({
  path: v.pipe(v.string(), v.minLength(1), v.description("Output file (parent folders are created).")),
  append: v.optional(v.pipe(v.boolean(), v.description("Append to an existing file instead of starting it anew.")), false),
  precision: Precision,
  flushInterval: v.optional(v.pipe(v.number(), v.minValue(0.05), v.description("Seconds between flushes to disk.")), 1),
});

/** Writes results as JSON Lines, one line for every frame. */
export default defineOperator({
  name: "sink-jsonl",
  kind: "sink",
  description: "Write one JSON line per frame (stream, seq, ts, detections) or event to a file.",
  options: Options,
  async create(o, ctx) {
    let out: Awaited<ReturnType<typeof openWriter>>;
    try {
      out = await openWriter(o.path, o.append);
    } catch (err) {
      throw new ConfigError(`[${ctx.stage}] cannot write ${o.path}: ${(err as Error).message}`);
    }
    ctx.log.info(`writing ${o.path}`);
    /** Lines written since the last flush, lines lost to failed writes, and the current write error. */
    let buffered = 0;
    let lost = 0;
    let failing: string | undefined;
    const flush = async (final = false) => {
      const n = buffered;
      buffered = 0;
      try {
        await (final ? out.close() : out.flush());
        if (n > 0 && failing) {
          ctx.log.info(`${o.path} is writable again`);
          failing = undefined;
        }
      } catch (err) {
        lost += n;
        // Logged once per outage; every lost line is counted in sink_write_failures_total.
        if (!failing) ctx.log.error(`cannot write ${o.path}: ${(err as Error).message}; ${n} lines lost, later lines fail until a write succeeds`);
        failing = (err as Error).message;
      }
    };
    const timer = setInterval(() => void flush(), o.flushInterval * 1000);
    return {
      process(msg) {
        // While the file is failing, one line per flush goes through as a probe; the others fail here, so the
        // stage's failed count and lastError show it.
        if (failing && buffered > 0) {
          lost++;
          throw new Error(`cannot write ${o.path}: ${failing}`);
        }
        out.write(toJsonLine(msg, o.precision) + "\n");
        buffered++;
      },
      metrics: () => [
        { name: "sink_write_failures_total", type: "counter", help: "Result lines that could not be written to the file.", value: lost, labels: { path: o.path } },
      ],
      async close() {
        clearInterval(timer);
        await flush(true);
      },
    };
  },
});
