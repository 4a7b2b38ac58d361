import { Histogram } from "./histogram.ts";

export interface StageSnapshot {
  stage: string;
  operator: string;
  kind: "source" | "transform" | "sink";
  received: number;
  /** Of the received messages, how many were events (not frames). */
  events: number;
  sent: number;
  dropped: number;
  failed: number;
  p50: number;
  p99: number;
  mean: number;
  /** Capture-to-sink latency, for sinks. */
  e2eP50?: number;
  e2eP99?: number;
  lastError?: string;
}

export interface PipelineSummary {
  pipeline: string;
  bus: string;
  reason: string;
  seconds: number;
  stages: StageSnapshot[];
  /** Stages given up on when a stop's drain outlived its deadline (their work in flight is lost). */
  abandoned?: string[];
}

/** Counters and latency of one stage. */
export class StageStats {
  received = 0;
  events = 0;
  sent = 0;
  dropped = 0;
  failed = 0;
  lastError?: string;
  readonly latency = new Histogram();
  readonly endToEnd = new Histogram();

  constructor(
    readonly stage: string,
    readonly operator: string,
    readonly kind: StageSnapshot["kind"],
  ) {}

  snapshot(): StageSnapshot {
    return {
      stage: this.stage,
      operator: this.operator,
      kind: this.kind,
      received: this.received,
      events: this.events,
      sent: this.sent,
      dropped: this.dropped,
      failed: this.failed,
      p50: this.latency.quantile(0.5),
      p99: this.latency.quantile(0.99),
      mean: this.latency.mean,
      ...(this.endToEnd.count ? { e2eP50: this.endToEnd.quantile(0.5), e2eP99: this.endToEnd.quantile(0.99) } : {}),
      ...(this.lastError ? { lastError: this.lastError } : {}),
    };
  }
}

/**
 * Frames that entered (from sources) and left (reached a sink) the part of
 * the pipeline this process runs. A worker without sources or sinks (a
 * `--stages detect` process) counts what its stages took in and passed on.
 */
export function totals(s: PipelineSummary): { framesIn: number; framesOut: number; dropped: number; failed: number; fps: number } {
  const sources = s.stages.filter((x) => x.kind === "source");
  const sinks = s.stages.filter((x) => x.kind === "sink");
  const transforms = s.stages.filter((x) => x.kind === "transform");
  const framesIn = sources.length
    ? sources.reduce((a, x) => a + x.sent, 0)
    : Math.max(0, ...transforms.map((x) => x.received - x.events));
  const framesOut = sinks.length
    ? Math.max(...sinks.map((x) => x.received - x.events - x.failed))
    : Math.max(0, ...transforms.map((x) => x.sent - x.events));
  const dropped = s.stages.reduce((a, x) => a + x.dropped, 0);
  const failed = s.stages.reduce((a, x) => a + x.failed, 0);
  return { framesIn, framesOut, dropped, failed, fps: s.seconds > 0 ? framesOut / s.seconds : 0 };
}

/** The end-of-run report printed by `bun run pipeline`. */
export function formatSummary(s: PipelineSummary): string {
  const t = totals(s);
  const rows = s.stages.map((x) => [x.stage, x.operator, x.received, x.sent, x.dropped, x.failed, x.p50.toFixed(1), x.p99.toFixed(1)].map(String));
  const head = ["stage", "operator", "in", "out", "dropped", "failed", "p50 ms", "p99 ms"];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const fmt = (r: string[]) => r.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  const sink = s.stages.find((x) => x.kind === "sink" && x.e2eP50 !== undefined);
  return [
    `framewire: ${s.pipeline} stopped (${s.reason}) after ${s.seconds.toFixed(1)} s on the ${s.bus} bus`,
    `frames: ${t.framesIn} in, ${t.framesOut} out, ${t.dropped} dropped, ${t.failed} failed, ${t.fps.toFixed(1)} fps` +
      (sink ? `; end-to-end p50 ${sink.e2eP50!.toFixed(0)} ms, p99 ${sink.e2eP99!.toFixed(0)} ms` : ""),
    fmt(head),
    ...rows.map(fmt),
  ].join("\n");
}
