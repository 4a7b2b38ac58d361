/**
 * Prometheus `/metrics`, built with prom-client at scrape time from what the
 * executor and operators already count (`Executor.live()`, operator
 * `metrics()`): serving metrics adds no work per frame. Latency histograms
 * are the executor's log-bucket histograms, folded into cumulative
 * Prometheus buckets (in seconds) when scraped.
 */
import { collectDefaultMetrics, Counter, Gauge, Registry, type Metric } from "prom-client";
import type { Histogram } from "../core/histogram.ts";
import { hostLoad } from "../platform/host-load.ts";
import type { OperatorMetric } from "../core/operator.ts";
import { runtimeName } from "../platform/index.ts";
import type { StatusView } from "./status.ts";

/** Bucket bounds in ms: 1 ms .. 10 s, the range between a resize and a stuck inference. */
const BOUNDS_MS = [1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];
const PREFIX = "framewire_";

type Labels = Record<string, string>;

/** Process metrics (CPU seconds, memory, event-loop lag), one set per process. */
let processRegistry: Registry | undefined;
function processMetrics(): Registry {
  if (!processRegistry) {
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry });
  }
  return processRegistry;
}

/** One metric family, filled before it is registered. */
class Family {
  private series: { labels: Labels; value?: number; histogram?: Histogram }[] = [];

  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: "counter" | "gauge" | "histogram",
  ) {}

  add(labels: Labels, value: number): this {
    this.series.push({ labels, value });
    return this;
  }

  addHistogram(labels: Labels, histogram: Histogram): this {
    this.series.push({ labels, histogram });
    return this;
  }

  register(reg: Registry): void {
    if (this.series.length === 0) return;
    const labelNames = [...new Set(this.series.flatMap((s) => Object.keys(s.labels)))];
    if (this.type === "histogram") {
      reg.registerMetric(histogramMetric(this.name, this.help, this.series as { labels: Labels; histogram: Histogram }[]));
      return;
    }
    const config = { name: this.name, help: this.help, labelNames, registers: [reg] };
    if (this.type === "counter") {
      const c = new Counter(config);
      for (const s of this.series) c.inc(s.labels, s.value!);
    } else {
      const g = new Gauge(config);
      for (const s of this.series) g.set(s.labels, s.value!);
    }
  }
}

/**
 * A histogram whose buckets come from our own histograms: prom-client's
 * Histogram only counts observations it makes itself, so this supplies the
 * same `get()` the registry reads from its metrics.
 */
function histogramMetric(name: string, help: string, series: { labels: Labels; histogram: Histogram }[]): Metric {
  const values: { metricName: string; labels: Record<string, string | number>; value: number }[] = [];
  for (const { labels, histogram: h } of series) {
    const cumulative = h.cumulative(BOUNDS_MS);
    BOUNDS_MS.forEach((b, i) => values.push({ metricName: `${name}_bucket`, labels: { ...labels, le: b / 1000 }, value: cumulative[i] }));
    values.push({ metricName: `${name}_bucket`, labels: { ...labels, le: "+Inf" }, value: h.count });
    values.push({ metricName: `${name}_sum`, labels, value: h.sum / 1000 });
    values.push({ metricName: `${name}_count`, labels, value: h.count });
  }
  const object = { name, help, type: "histogram", aggregator: "sum", values };
  return { ...object, get: async () => object, reset: () => {} } as unknown as Metric;
}

/**
 * The metrics text for one scrape.
 * @example
 * const { contentType, body } = await renderMetrics(view);
 * return new Response(body, { headers: { "content-type": contentType } });
 */
export async function renderMetrics(view: StatusView): Promise<{ contentType: string; body: string }> {
  const exec = view.exec;
  const pipeline = exec.spec.name;
  const families = new Map<string, Family>();
  const family = (name: string, help: string, type: Family["type"]) => {
    const full = PREFIX + name;
    let f = families.get(full);
    if (!f) families.set(full, (f = new Family(full, help, type)));
    return f;
  };

  const r = view.readiness();
  family("info", "This process: pipeline, bus, worker id and runtime (always 1).", "gauge").add({ pipeline, bus: exec.bus.kind, worker: exec.workerId, runtime: runtimeName }, 1);
  family("ready", "1 when models are loaded, every source has delivered a frame and the bus is connected.", "gauge").add({ pipeline }, r.ready ? 1 : 0);

  for (const s of exec.live()) {
    const l = { pipeline, stage: s.id, operator: s.operator };
    const st = s.stats;
    family("stage_received_total", "Messages a stage took from its inbox (frames and events).", "counter").add(l, st.received);
    family("stage_sent_total", "Messages a stage passed on (sources: frames emitted).", "counter").add(l, st.sent);
    family("stage_frames_per_second", "Frames per second through a stage over the last seconds (sources: emitted, others: received).", "gauge").add(l, view.fps(s.id));
    family("stage_dropped_total", "Live frames dropped from a stage's full inbox (drop-oldest).", "counter").add(l, st.dropped);
    family("stage_failed_total", "Messages whose processing threw.", "counter").add(l, st.failed);
    family("stage_queue_depth", "Messages waiting in a stage's inbox.", "gauge").add(l, s.queued);
    family("stage_queue_capacity", "Size of a stage's inbox.", "gauge").add(l, s.capacity);
    family("stage_in_flight", "Messages a stage's workers are processing now.", "gauge").add(l, s.busy);
    if (s.kind !== "source") family("stage_latency_seconds", "Time a stage spends on one message.", "histogram").addHistogram(l, st.latency);
    if (st.endToEnd.count) family("end_to_end_latency_seconds", "Capture to sink, per sink.", "histogram").addHistogram({ pipeline, stage: s.id }, st.endToEnd);
  }

  for (const { stage, metric } of view.operatorMetrics()) addOperatorMetric(family, { pipeline, stage }, metric);
  for (const s of view.streams()) {
    family("stream_frames_per_second", "Frames per second a stream delivers over the last seconds.", "gauge").add({ pipeline, stage: s.stage, stream: s.stream }, s.fps);
    family("stream_dropped_total", "Live frames of a stream dropped in this process's inboxes (overload; each stream drops only its own oldest frames).", "counter").add({ pipeline, stage: s.stage, stream: s.stream }, s.drops);
  }

  const load = hostLoad.latest;
  family("process_cpu_ratio", "This process's CPU use over the last second, as a share of all cores (0..1).", "gauge").add({}, load.processCpu);
  family("host_cpu_ratio", "The host's busy CPU share over the last second (0..1).", "gauge").add({}, load.hostCpu);
  family("host_cpu_cores", "CPU cores of the host.", "gauge").add({}, load.cores);
  family("gpu_available", "1 when GPU utilisation can be read (nvidia-smi), else 0 and no GPU series.", "gauge").add({}, load.gpus ? 1 : 0);
  for (const g of load.gpus ?? []) {
    const l = { gpu: String(g.index), name: g.name };
    family("gpu_utilisation_ratio", "GPU utilisation (0..1).", "gauge").add(l, g.utilisation);
    family("gpu_memory_used_bytes", "GPU memory in use.", "gauge").add(l, g.memoryUsedBytes);
    family("gpu_memory_total_bytes", "GPU memory in all.", "gauge").add(l, g.memoryTotalBytes);
  }

  const nats = view.natsBus();
  if (nats) {
    const n = nats.stats;
    family("nats_connected", "1 while connected to NATS.", "gauge").add({}, n.connected ? 1 : 0);
    family("nats_reconnects_total", "Reconnections to NATS.", "counter").add({}, n.reconnects);
    family("nats_published_total", "Messages published to NATS.", "counter").add({}, n.published);
    family("nats_received_total", "Messages received from NATS.", "counter").add({}, n.received);
    const rejected = family("nats_rejected_total", "Messages from NATS refused, by reason (malformed, oversize, duplicate, control-malformed, unsigned, bad-signature, stale).", "counter");
    for (const [reason, count] of Object.entries(n.rejectedBy)) rejected.add({ reason }, count);
    family("nats_denied_total", "Publishes and subscriptions the NATS server refused (its permissions).", "counter").add({}, n.deniedByServer);
    const behind = family("nats_not_delivered_total", "Messages not delivered, by why: offline (the reconnect buffer was full; live frames), behind (a plain subscription's stage fell behind; live frames dropped), lost (the same, events and file frames).", "counter");
    behind.add({ why: "offline" }, n.droppedOffline);
    behind.add({ why: "behind" }, n.droppedBehind);
    behind.add({ why: "lost" }, n.refusedBehind);
  }

  const reg = new Registry();
  for (const f of families.values()) f.register(reg);
  const merged = Registry.merge([processMetrics(), reg]);
  return { contentType: reg.contentType, body: await merged.metrics() };
}

function addOperatorMetric(family: (name: string, help: string, type: Family["type"]) => Family, base: Labels, m: OperatorMetric): void {
  const labels = { ...base, ...m.labels };
  if (m.type === "histogram") family(m.name, m.help, "histogram").addHistogram(labels, m.histogram);
  else family(m.name, m.help, m.type).add(labels, m.value);
}
