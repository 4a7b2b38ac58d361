/**
 * `framewire status` across processes: each process answers on the status
 * subject with its snapshot, and the command gathers and prints them.
 */

import * as v from "valibot";
import { parseArgs } from "node:util";
import type { Subscription } from "../core/bus.ts";
import { Advert } from "../bus/routing.ts";
import { ConfigError } from "../core/errors.ts";
import type { StatusView } from "./status.ts";
import { createLogger } from "../core/log.ts";
import { NatsBus } from "../bus/nats.ts";
import { env } from "../platform/index.ts";

/** Every framewire process on a NATS bus answers status requests here. */
export const STATUS_SUBJECT = "fw._ctl.status";

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
      /** `rollout`: the fleet rollout's label of the version (`bun run models put --version`), when it came from one. */
      active: v.looseObject({ model: v.string(), version: v.string(), rollout: v.optional(v.string()) }),
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
 * capacity), latency, CPU, fps and the model versions it serves (with the
 * fleet rollout's version label where `bun run models put` brought it).
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
      if (m) row.versions = `${m.active.model} ${m.active.version}${m.active.rollout ? ` (rollout ${m.active.rollout})` : ""}` + (m.canary ? ` + canary ${m.canary.version} (${Math.round(m.canary.share * 100)} %)` : "");
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
