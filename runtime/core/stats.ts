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
  /**
   * Messages that reached the stage (transforms and sinks): taken from its
   * inbox (`received`) or dropped from it. Each one ends as exactly one of:
   * sent on (`sent`, one output per message), `absorbed`, `dropped`,
   * `failed`, or still `inFlight` when the run ended (see balance()).
   */
  arrived: number;
  /** Taken and ended without an output, by design: a sink's handled messages, a transform that returned nothing. */
  absorbed: number;
  /** Taken or queued but not finished when the summary was made (non-zero only for a stage whose drain timed out or was abandoned). */
  inFlight: number;
  /** Outputs beyond one per message (a transform that returned several): sent counts every output. */
  extraOutputs: number;
  /** Of `dropped`, outputs sent on and then dropped on their way to workers in other processes (no worker took them, or theirs dropped them). */
  droppedOnRoute: number;
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
  /** Dropped from the stage's own inbox before being taken (part of `dropped`). */
  queueDropped = 0;
  absorbed = 0;
  extraOutputs = 0;
  lastError?: string;
  readonly latency = new Histogram();
  readonly endToEnd = new Histogram();

  constructor(
    readonly stage: string,
    readonly operator: string,
    readonly kind: StageSnapshot["kind"],
  ) {}

  /** `queued` / `busy`: messages the executor still holds for the stage in its inbox and in work. */
  snapshot(queued = 0, busy = 0): StageSnapshot {
    return {
      stage: this.stage,
      operator: this.operator,
      kind: this.kind,
      received: this.received,
      events: this.events,
      sent: this.sent,
      dropped: this.dropped,
      failed: this.failed,
      arrived: this.kind === "source" ? 0 : this.received + this.queueDropped + queued,
      absorbed: this.absorbed,
      inFlight: this.kind === "source" ? 0 : queued + busy,
      extraOutputs: this.extraOutputs,
      droppedOnRoute: 0,
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

/** How one stage's messages ended; `balanced` is arrived == outputs + absorbed + dropped + failed + inFlight. */
export interface StageBalance {
  stage: string;
  arrived: number;
  /** Messages sent on (outputs less extraOutputs). */
  out: number;
  absorbed: number;
  /** Dropped before being sent on (droppedOnRoute left out). */
  dropped: number;
  failed: number;
  inFlight: number;
  balanced: boolean;
}

/**
 * The per-stage accounting of a summary: every message that reached a
 * transform or sink is sent on, absorbed (a sink's, or a filter's), dropped
 * (its inbox full, or its output given up on behind a slow replica),
 * failed, or still in flight (a drain that timed out or was abandoned). Sources are left out (they have
 * no input).
 * @example
 * for (const b of balance(summary)) if (!b.balanced) console.error(`${b.stage} does not add up`, b);
 */
export function balance(s: PipelineSummary): StageBalance[] {
  return s.stages
    .filter((x) => x.kind !== "source")
    .map((x) => {
      const out = x.sent - x.extraOutputs;
      // An output dropped on its way to another process was sent on first: its message is counted once, as sent.
      const dropped = x.dropped - x.droppedOnRoute;
      return {
        stage: x.stage,
        arrived: x.arrived,
        out,
        absorbed: x.absorbed,
        dropped,
        failed: x.failed,
        inFlight: x.inFlight,
        balanced: x.arrived === out + x.absorbed + dropped + x.failed + x.inFlight,
      };
    });
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
