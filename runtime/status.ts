/**
 * What a running process reports about itself — stages, load, models and
 * versions, readiness — for `/api/status`, `/metrics`, the live page and
 * `framewire status`, which asks every process on a NATS cluster at once
 * (`fw._ctl.status`, request/reply) and joins the answers with the load
 * adverts workers publish every 100 ms.
 */
import * as v from "valibot";
import { hostname } from "node:os";
import { pid } from "node:process";
import { parseArgs } from "node:util";
import type { Subscription } from "./bus.ts";
import { Advert } from "./distributed.ts";
import { ConfigError } from "./errors.ts";
import type { Executor } from "./executor.ts";
import { hostLoad, type LoadSample } from "./host-load.ts";
import type { HttpOptions } from "./http/options.ts";
import { createLogger, type Logger } from "./log.ts";
import type { ModelStatus } from "./model-lifecycle.ts";
import { NatsBus } from "./nats-bus.ts";
import type { OperatorMetric } from "./operator.ts";
import { env, runtimeName } from "./platform.ts";

/** Every framewire process on a NATS bus answers status requests here. */
export const STATUS_SUBJECT = "fw._ctl.status";

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
}

/** Counting lines and zones (normalised 0..1) the live page draws. */
export interface Overlays {
  lines: { id: string; from: [number, number]; to: [number, number] }[];
  zones: { id: string; polygon: [number, number][] }[];
}

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
   * (its `source_connected` metric, or else a first frame delivered), and
   * NATS connected when the bus is NATS.
   */
  readiness(): { ready: boolean; state: ProcessStatus["state"]; waiting: string[] } {
    const live = this.exec.live();
    if (live.length === 0) return { ready: false, state: "starting", waiting: ["starting: creating stages and loading models"] };
    if (!this.exec.running) return { ready: false, state: "stopping", waiting: ["stopping: draining"] };
    const waiting: string[] = [];
    for (const s of live) {
      if (s.kind !== "source") continue;
      const connected = s.instance.metrics?.().find((m) => m.name === "source_connected");
      if (connected && connected.type !== "histogram" ? connected.value === 0 : s.stats.sent === 0) waiting.push(`source ${s.id}: not connected (no frame yet)`);
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

  /** One stream per local source, named by its metrics' `stream` label (ingest's `source_*` metrics), else by the stage. */
  streams(): StreamStatus[] {
    return this.exec
      .live()
      .filter((s) => s.kind === "source")
      .map((s): StreamStatus => {
        const ms = s.instance.metrics?.() ?? [];
        const value = (name: string) => {
          const m = ms.find((x) => x.name === name);
          return m && m.type !== "histogram" ? m.value : null;
        };
        const connected = value("source_connected");
        return {
          stream: ms.find((m) => m.labels?.stream)?.labels?.stream ?? s.id,
          stage: s.id,
          frames: s.stats.sent,
          fps: round(this.fps(s.id)),
          connected: connected === null ? null : connected > 0,
          reconnects: value("source_reconnects_total"),
        };
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

/** Lines and zones of the pipeline's `zones` stages. */
function overlaysOf(exec: Executor): Overlays {
  const out: Overlays = { lines: [], zones: [] };
  for (const s of exec.spec.stages) {
    if (s.def.name !== "zones") continue;
    const o = s.options as Partial<Overlays>;
    out.lines.push(...(o.lines ?? []));
    out.zones.push(...(o.zones ?? []));
  }
  return out;
}

function round(x: number, digits = 2): number {
  const k = 10 ** digits;
  return Math.round(x * k) / k;
}

/**
 * Answers `framewire status` over NATS with this process's status.
 * @example
 * const sub = serveStatus(bus, view);
 * sub.unsubscribe();
 */
export function serveStatus(bus: NatsBus, view: StatusView): Subscription {
  const sub = bus.nc.subscribe(STATUS_SUBJECT, {
    callback: (err, m) => {
      if (!err) m.respond(JSON.stringify(view.snapshot()));
    },
  });
  return { unsubscribe: () => sub.unsubscribe() };
}

/** What observing a running pipeline holds open; `close()` after the executor is done. */
export interface Observing {
  view: StatusView;
  /** The HTTP server's base URL, when it runs. */
  url?: string;
  close(): Promise<void>;
}

/**
 * Starts what watches a pipeline: the HTTP server when `http` is given, the
 * NATS status responder when the bus is NATS. Call before `exec.start()` so
 * health and readiness answer while models load.
 * @example
 * const obs = await observe(exec, { http: { port: 9464, host: "127.0.0.1", publicMetrics: true, maxBodyBytes: 65536, liveFps: 5, liveWidth: 640 }, log });
 * await exec.start();
 * await exec.done;
 * await obs.close();
 */
export async function observe(exec: Executor, o: { http?: HttpOptions; log: Logger }): Promise<Observing> {
  const view = new StatusView(exec);
  view.start();
  const nats = view.natsBus();
  const sub = nats ? serveStatus(nats, view) : undefined;
  const server = o.http ? await (await import("./http/server.ts")).startHttpServer(view, o.http, o.log.child("http")) : undefined;
  return {
    view,
    url: server?.url,
    async close() {
      sub?.unsubscribe();
      await server?.stop();
      view.stop();
    },
  };
}

/** Enough of a status reply to print it; extra fields pass through. */
const StatusReply = v.looseObject({
  pipeline: v.string(),
  worker: v.string(),
  host: v.string(),
  ready: v.boolean(),
  stages: v.array(v.looseObject({ id: v.string(), operator: v.string(), fps: v.number(), replicas: v.number() })),
  pipelineStages: v.array(v.string()),
  models: v.array(
    v.looseObject({
      stage: v.string(),
      active: v.looseObject({ model: v.string(), version: v.string() }),
      canary: v.nullable(v.looseObject({ version: v.string(), share: v.number() })),
    }),
  ),
});
type StatusReply = v.InferOutput<typeof StatusReply>;

export interface ClusterStatus {
  processes: StatusReply[];
  /** The latest load advert of each worker of each stage. */
  adverts: (Advert & { pipeline: string })[];
}

/**
 * Asks every framewire process on the cluster for its status and listens to
 * load adverts for `waitMs`.
 * @example
 * const s = await clusterStatus(bus, 1000);
 * console.log(s.processes.map((p) => p.pipeline));
 */
export async function clusterStatus(bus: NatsBus, waitMs: number): Promise<ClusterStatus> {
  const adverts = new Map<string, Advert & { pipeline: string }>();
  const sub = bus.subscribeJson("fw.*._ctl.load.*", (value, subject) => {
    const r = v.safeParse(Advert, value);
    if (r.success) adverts.set(`${subject}/${r.output.worker}`, { ...r.output, pipeline: subject.split(".")[1] });
  });
  const processes: StatusReply[] = [];
  try {
    const replies = await bus.nc.requestMany(STATUS_SUBJECT, "", { strategy: "timer", maxWait: waitMs });
    for await (const m of replies) {
      const r = v.safeParse(StatusReply, safeJson(m.string()));
      if (r.success) processes.push(r.output);
    }
  } catch (err) {
    // No process answers: "no responders" is an answer too.
    if (!/no responders|503/i.test((err as Error).message)) throw err;
    await new Promise((r) => setTimeout(r, waitMs));
  } finally {
    sub.unsubscribe();
  }
  const byName = (a: { pipeline: string; worker: string }, b: { pipeline: string; worker: string }) => a.pipeline.localeCompare(b.pipeline) || a.worker.localeCompare(b.worker);
  return { processes: processes.sort(byName), adverts: [...adverts.values()].sort((a, b) => byName(a, b) || a.stage.localeCompare(b.stage)) };
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/**
 * One row per pipeline, stage and worker: placement, load (in flight of
 * capacity), latency, CPU, fps and the model versions it serves.
 */
export function formatClusterStatus(s: ClusterStatus, url: string): string {
  type Row = { pipeline: string; stage: string; worker: string; placement: string; load: string; latency: string; cpu: string; fps: string; versions: string };
  const rows = new Map<string, Row>();
  const key = (p: string, st: string, w: string) => `${p}\u0000${st}\u0000${w}`;
  const blank = (pipeline: string, stage: string, worker: string): Row => ({ pipeline, stage, worker, placement: "-", load: "-", latency: "-", cpu: "-", fps: "-", versions: "" });
  for (const p of s.processes) {
    for (const st of p.stages) {
      const row = blank(p.pipeline, st.id, p.worker);
      row.fps = st.fps.toFixed(1);
      const m = p.models.find((x) => x.stage === st.id);
      if (m) row.versions = `${m.active.model} ${m.active.version}` + (m.canary ? ` + canary ${m.canary.version} (${Math.round(m.canary.share * 100)} %)` : "");
      rows.set(key(p.pipeline, st.id, p.worker), row);
    }
  }
  for (const a of s.adverts) {
    const row = rows.get(key(a.pipeline, a.stage, a.worker)) ?? blank(a.pipeline, a.stage, a.worker);
    row.placement = a.placement;
    // Capacity is advertised by stages that take load-aware work; the others just say what they hold.
    row.load = a.capacity ? `${a.inflight}/${a.capacity} (${Math.round((a.inflight / a.capacity) * 100)} %)` : `${a.inflight} in flight`;
    row.latency = `${a.latencyMs.toFixed(1)} ms`;
    row.cpu = `${Math.round(a.cpu * 100)} %`; // of one core
    rows.set(key(a.pipeline, a.stage, a.worker), row);
  }
  if (rows.size === 0) return `no running framewire pipelines answered on ${url}`;
  const head: Row = { pipeline: "PIPELINE", stage: "STAGE", worker: "WORKER", placement: "PLACEMENT", load: "LOAD", latency: "LATENCY", cpu: "CPU", fps: "FPS", versions: "MODEL VERSIONS" };
  const cols = Object.keys(head) as (keyof Row)[];
  // Stages in pipeline-file order where a process told it, the rest after them.
  const order = new Map<string, number>();
  for (const p of s.processes) p.pipelineStages.forEach((id, i) => order.set(`${p.pipeline}\u0000${id}`, i));
  const rank = (r: Row) => order.get(`${r.pipeline}\u0000${r.stage}`) ?? Infinity;
  const list = [...rows.values()].sort(
    (a, b) => a.pipeline.localeCompare(b.pipeline) || rank(a) - rank(b) || a.stage.localeCompare(b.stage) || a.worker.localeCompare(b.worker),
  );
  const widths = cols.map((c) => Math.max(...[head, ...list].map((r) => r[c].length)));
  const fmt = (r: Row) => cols.map((c, i) => r[c].padEnd(widths[i])).join("  ").trimEnd();
  const ready = s.processes.map((p) => `${p.pipeline}@${p.worker} (${p.host}) ${p.ready ? "ready" : "not ready"}`);
  return [`${s.processes.length} process(es) on ${url}${ready.length ? ": " + ready.join(", ") : ""}`, fmt(head), ...list.map(fmt)].join("\n");
}

/** `bun run status [--nats URL] [--wait SECONDS] [--json]` */
export async function runStatus(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { nats: { type: "string" }, wait: { type: "string" }, json: { type: "boolean" } } });
  const url = values.nats ?? env("NATS_URL") ?? "nats://127.0.0.1:4222";
  const wait = values.wait === undefined ? 1 : Number(values.wait);
  if (!(wait > 0 && wait <= 60)) throw new ConfigError(`--wait: expected seconds between 0 and 60, got "${values.wait}"`);
  const give = new AbortController();
  const timer = setTimeout(() => give.abort(), 3000);
  // Quiet: connection retries are this command's business, not the user's.
  const bus = await NatsBus.connect({ url, name: "framewire status", log: createLogger("status", 40), signal: give.signal }).finally(() => clearTimeout(timer));
  try {
    const s = await clusterStatus(bus, wait * 1000);
    console.log(values.json ? JSON.stringify(s) : formatClusterStatus(s, url.replace(/\/\/[^/@]*@/, "//***@")));
    return 0;
  } finally {
    await bus.close();
  }
}
