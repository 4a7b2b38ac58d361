/**
 * What a running process reports about itself — stages, load, models and
 * versions, readiness — for `/api/status`, `/metrics`, the live page and
 * `framewire status` (observe/cluster.ts asks every process on a NATS
 * cluster and joins the answers with the workers' load adverts).
 */
import { hostname } from "node:os";
import { pid } from "node:process";
import type { Executor } from "../engine/executor.ts";
import { hostLoad, type LoadSample } from "../platform/host-load.ts";
import type { ModelStatus } from "../core/model-status.ts";
import { NatsBus } from "../bus/nats.ts";
import type { OperatorMetric, Overlays } from "../core/operator.ts";
import { runtimeName } from "../platform/index.ts";

/** Every framewire process on a NATS bus answers status requests here. */

export interface StageStatus {
  id: string;
  operator: string;
  kind: string;
  replicas: number;
  placement: string;
  received: number;
  sent: number;
  dropped: number;
  failed: number;
  /** Frames per second over the last few seconds (sent by sources, received by the rest). */
  fps: number;
  p50Ms: number;
  p99Ms: number;
  meanMs: number;
  queued: number;
  busy: number;
  capacity: number;
  /** Queued and in-process messages per slot (inbox + replicas): 1 is full. */
  load: number;
  e2eP50Ms?: number;
  e2eP99Ms?: number;
  lastError?: string;
}

export interface StreamStatus {
  stream: string;
  stage: string;
  frames: number;
  fps: number;
  connected: boolean | null;
  reconnects: number | null;
  /** Live frames of this stream dropped in this process's inboxes. */
  drops: number;
  lastError?: string;
}

export type { Overlays };

export interface ProcessStatus {
  pipeline: string;
  worker: string;
  host: string;
  pid: number;
  runtime: string;
  startedAt: string;
  uptimeS: number;
  state: "starting" | "running" | "stopping";
  ready: boolean;
  /** Why the process is not ready, when it is not. */
  waiting: string[];
  bus: { kind: string; connected?: boolean; reconnects?: number; published?: number; received?: number };
  load: LoadSample;
  /** This process's stages. */
  stages: StageStatus[];
  /** Every stage id of the pipeline file, in order (other processes may run the rest). */
  pipelineStages: string[];
  streams: StreamStatus[];
  models: ModelStatus[];
  /** Messages sent to each remote worker, by stage (load-aware routes). */
  routing: Record<string, Record<string, number>>;
  overlays: Overlays;
}

/** Seconds of history behind an fps figure. */
const FPS_WINDOW = 5;

/**
 * The status of one executor, with fps sampled once a second (never per
 * frame). `start()` it while something reads it; `stop()` after.
 * @example
 * const view = new StatusView(exec);
 * view.start();
 * console.log(view.snapshot().stages.map((s) => `${s.id} ${s.fps} fps`));
 * view.stop();
 */
export class StatusView {
  readonly startedAt = new Date();
  private samples = new Map<string, { t: number; n: number }[]>();
  private timer?: ReturnType<typeof setInterval>;
  private releaseLoad?: () => void;

  constructor(readonly exec: Executor) {}

  start(): void {
    if (this.timer) return;
    this.releaseLoad = hostLoad.acquire();
    this.sample();
    this.timer = setInterval(() => this.sample(), 1000);
    (this.timer as { unref?: () => void }).unref?.();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    this.releaseLoad?.();
  }

  /**
   * Ready: models loaded (every stage created), every local source connected
   * (one of its streams delivering, or else a first frame delivered), and
   * NATS connected when the bus is NATS.
   */
  readiness(): { ready: boolean; state: ProcessStatus["state"]; waiting: string[] } {
    const live = this.exec.live();
    if (live.length === 0) return { ready: false, state: "starting", waiting: ["starting: creating stages and loading models"] };
    if (!this.exec.running) return { ready: false, state: "stopping", waiting: ["stopping: draining"] };
    const waiting: string[] = [];
    for (const s of live) {
      if (s.kind !== "source") continue;
      // A source of several streams is ready once one delivers: a dead camera must not hold back the others.
      const streams = s.instance.streams?.list();
      if (streams ? streams.length > 0 && !streams.some((x) => x.connected) : s.stats.sent === 0) {
        const why = !streams || (streams.length === 1 && streams[0].frames === 0) ? "no frame yet" : streams.length === 1 ? `lost after ${streams[0].frames} frames, reconnecting` : `none of ${streams.map((x) => x.id).join(", ")} delivers frames`;
        waiting.push(`source ${s.id}: not connected (${why})`);
      }
    }
    const nats = this.natsBus();
    if (nats && !nats.stats.connected) waiting.push("NATS disconnected");
    return { ready: waiting.length === 0, state: "running", waiting };
  }

  /** Frames per second of a stage over the last few seconds. */
  fps(stage: string): number {
    const ring = this.samples.get(stage);
    if (!ring || ring.length < 2) return 0;
    const a = ring[0];
    const b = ring[ring.length - 1];
    return b.t > a.t ? (b.n - a.n) / ((b.t - a.t) / 1000) : 0;
  }

  snapshot(): ProcessStatus {
    const exec = this.exec;
    const r = this.readiness();
    const specs = new Map(exec.spec.stages.map((s) => [s.id, s]));
    const live = exec.live();
    const stages = live.map((s): StageStatus => {
      const spec = specs.get(s.id)!;
      const st = s.stats;
      return {
        id: s.id,
        operator: s.operator,
        kind: s.kind,
        replicas: spec.replicas,
        placement: spec.placement,
        received: st.received,
        sent: st.sent,
        dropped: st.dropped,
        failed: st.failed,
        fps: round(this.fps(s.id)),
        p50Ms: round(st.latency.quantile(0.5)),
        p99Ms: round(st.latency.quantile(0.99)),
        meanMs: round(st.latency.mean),
        queued: s.queued,
        busy: s.busy,
        capacity: s.capacity,
        load: round((s.queued + s.busy) / (s.capacity + spec.replicas)),
        ...(st.endToEnd.count ? { e2eP50Ms: round(st.endToEnd.quantile(0.5)), e2eP99Ms: round(st.endToEnd.quantile(0.99)) } : {}),
        ...(st.lastError ? { lastError: st.lastError } : {}),
      };
    });
    const nats = this.natsBus();
    return {
      pipeline: exec.spec.name,
      worker: exec.workerId,
      host: hostname(),
      pid,
      runtime: runtimeName,
      startedAt: this.startedAt.toISOString(),
      uptimeS: round((Date.now() - this.startedAt.getTime()) / 1000, 1),
      state: r.state,
      ready: r.ready,
      waiting: r.waiting,
      bus: nats
        ? { kind: "nats", connected: nats.stats.connected, reconnects: nats.stats.reconnects, published: nats.stats.published, received: nats.stats.received }
        : { kind: exec.bus.kind },
      load: hostLoad.latest,
      stages,
      pipelineStages: exec.spec.stages.map((s) => s.id),
      streams: this.streams(),
      models: live.flatMap((s) => (s.instance.models ? [s.instance.models.status()] : [])),
      routing: exec.routing(),
      overlays: overlaysOf(exec),
    };
  }

  /** Every stream of the local sources (their stream control), else one per source named by the stage. */
  streams(): StreamStatus[] {
    const drops = this.exec.streamDrops();
    return this.exec
      .live()
      .filter((s) => s.kind === "source")
      .flatMap((s): StreamStatus[] => {
        const list = s.instance.streams?.list();
        if (list) {
          return list.map((x) => ({ stream: x.id, stage: s.id, frames: x.frames, fps: x.fps, connected: x.connected, reconnects: x.reconnects, drops: drops.get(x.id) ?? 0, ...(x.lastError ? { lastError: x.lastError } : {}) }));
        }
        return [{ stream: s.id, stage: s.id, frames: s.stats.sent, fps: round(this.fps(s.id)), connected: null, reconnects: null, drops: drops.get(s.id) ?? 0 }];
      });
  }

  /** Each stage's own metrics (operator `metrics()`), with its stage id. */
  operatorMetrics(): { stage: string; metric: OperatorMetric }[] {
    return this.exec.live().flatMap((s) => (s.instance.metrics?.() ?? []).map((metric) => ({ stage: s.id, metric })));
  }

  natsBus(): NatsBus | undefined {
    return this.exec.bus instanceof NatsBus ? this.exec.bus : undefined;
  }

  private sample(): void {
    const t = performance.now();
    for (const s of this.exec.live()) {
      const n = s.kind === "source" ? s.stats.sent : s.stats.received - s.stats.events;
      const ring = this.samples.get(s.id) ?? [];
      ring.push({ t, n });
      if (ring.length > FPS_WINDOW + 1) ring.shift();
      this.samples.set(s.id, ring);
    }
  }
}

/** Lines and zones the pipeline's stages draw (those whose operator declares `overlays`), wherever they run. */
function overlaysOf(exec: Executor): Overlays {
  const out: Overlays = { lines: [], zones: [] };
  for (const s of exec.spec.stages) {
    let o: Overlays | undefined;
    try {
      o = s.def.overlays?.(s.options as never);
    } catch {
      continue; // a stage another node runs: its options were not checked here
    }
    if (!o) continue;
    out.lines.push(...o.lines);
    out.zones.push(...o.zones);
  }
  return out;
}

function round(x: number, digits = 2): number {
  const k = 10 ** digits;
  return Math.round(x * k) / k;
}

