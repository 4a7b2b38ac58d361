import * as v from "valibot";
import { Histogram } from "../runtime/core/histogram.ts";
import { defineOperator } from "../runtime/core/operator.ts";

const Options = v.strictObject({
  interval: v.optional(v.pipe(v.number(), v.minValue(0.1), v.description("Seconds between progress lines.")), 1),
});

/**
 * Prints a human-readable progress line every interval: throughput,
 * capture-to-here latency, frames lost upstream (gaps in sequence numbers)
 * and what was detected.
 */
export default defineOperator({
  name: "sink-log",
  kind: "sink",
  description: "Print a progress line every second: fps, latency, drops, detections.",
  options: Options,
  create(o, ctx) {
    let frames = 0;
    let total = 0;
    let gaps = 0;
    let latency = new Histogram();
    const classes = new Map<string, number>();
    const lastSeq = new Map<string, number>();
    let since = performance.now();
    const report = () => {
      const secs = (performance.now() - since) / 1000;
      if (frames === 0 && total === 0) return;
      const seen = [...classes]
        .sort((a, b) => b[1] - a[1])
        .map(([c, n]) => `${c} ${(n / frames).toFixed(1)}`)
        .join(", ");
      ctx.log.info(
        `${(frames / secs).toFixed(1)} fps | ${total} frames | latency p50 ${latency.quantile(0.5).toFixed(0)} ms p99 ${latency.quantile(0.99).toFixed(0)} ms | dropped ${gaps}` +
          (seen ? ` | per frame: ${seen}` : ""),
      );
      frames = 0;
      latency = new Histogram();
      classes.clear();
      since = performance.now();
    };
    const timer = setInterval(report, o.interval * 1000);
    return {
      process(msg) {
        if (msg.kind !== "frame") return;
        frames++;
        total++;
        latency.record(Date.now() - msg.ts);
        const prev = lastSeq.get(msg.stream);
        if (prev !== undefined && msg.seq > prev + 1) gaps += msg.seq - prev - 1;
        lastSeq.set(msg.stream, msg.seq);
        for (const d of msg.detections ?? []) classes.set(d.class, (classes.get(d.class) ?? 0) + 1);
      },
      async close() {
        clearInterval(timer);
        report();
      },
    };
  },
});
