import * as v from "valibot";
import { ConfigError } from "../runtime/core/errors.ts";
import { Precision, toJsonLine } from "../runtime/core/record.ts";
import { defineOperator } from "../runtime/core/operator.ts";
import { openRecordFile } from "../runtime/platform/record-file.ts";

const Options = v.strictObject({
  path: v.pipe(v.string(), v.minLength(1), v.description("Output file (parent folders are created).")),
  append: v.optional(v.pipe(v.boolean(), v.description("Append to an existing file instead of starting it anew.")), false),
  precision: Precision,
  flushInterval: v.optional(v.pipe(v.number(), v.minValue(0.05), v.description("Seconds between flushes to disk.")), 1),
});

/**
 * Writes results as JSON Lines, one line for every frame. A line is written
 * whole or not at all (a full disk cuts nothing in half), lost lines are
 * counted exactly, and a torn tail from a crash is cut off when appending.
 */
export default defineOperator({
  name: "sink-jsonl",
  kind: "sink",
  description: "Write one JSON line per frame (stream, seq, ts, detections) or event to a file.",
  options: Options,
  async create(o, ctx) {
    let out: Awaited<ReturnType<typeof openRecordFile>>;
    try {
      out = await openRecordFile(o.path, o.append);
    } catch (err) {
      throw new ConfigError(`[${ctx.stage}] cannot write ${o.path}: ${(err as Error).message}`);
    }
    if (out.repairedBytes) ctx.log.warn(`${o.path} ended in a torn line (a crash mid-write): cut its last ${out.repairedBytes} bytes`);
    ctx.log.info(`writing ${o.path}`);
    /** Lines waiting for the next flush, lines lost to failed writes, and the current write error. */
    let pending: string[] = [];
    let lost = 0;
    let failing: string | undefined;
    let flushing: Promise<void> = Promise.resolve();
    const flush = () =>
      (flushing = flushing.then(async () => {
        const batch = pending;
        pending = [];
        const r = await out.append(batch);
        if (!r.error) {
          if (batch.length && failing) {
            ctx.log.info(`${o.path} is writable again`);
            failing = undefined;
          }
          return;
        }
        // Each batch is written whole or not at all: the file has no torn line, and every lost line is counted.
        lost += r.lost;
        if (!failing) ctx.log.error(`cannot write ${o.path}: ${r.error.message}; ${r.lost} lines lost, later lines fail until a write succeeds`);
        failing = r.error.message;
      }));
    const timer = setInterval(() => void flush(), o.flushInterval * 1000);
    return {
      process(msg) {
        // While the file is failing, one line per flush goes through as a probe; the others fail here, so the
        // stage's failed count and lastError show it.
        if (failing && pending.length > 0) {
          lost++;
          throw new Error(`cannot write ${o.path}: ${failing}`);
        }
        pending.push(toJsonLine(msg, o.precision) + "\n");
      },
      metrics: () => [
        { name: "sink_write_failures_total", type: "counter", help: "Result lines that could not be written to the file.", value: lost, labels: { path: o.path } },
      ],
      async close() {
        clearInterval(timer);
        await flush();
        await out.close();
      },
    };
  },
});
