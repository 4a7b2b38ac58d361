/** Prometheus metrics of `framewire serve` (prom-client), scraped at GET /metrics. */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import type { ModelRepository } from "./repository.ts";

/** Seconds, from 1 ms to 10 s: an inference on a CPU is tens of ms, a deep queue seconds. */
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export interface ServeMetrics {
  registry: Registry;
  /** Requests by route pattern and status code, and the model they were for (none for server routes). */
  requests: Counter<"route" | "code" | "model">;
  requestSeconds: Histogram<"route">;
  /** Time requests waited for an instance. */
  queueSeconds: Histogram<"model" | "version">;
  /** POST /detect bodies refused before inference, by reason. */
  imagesRejected: Counter<"reason">;
  /** Requests answered 503 because a limit on work in flight was reached, by which (decode-budget, decoder-queue, batch-queue). */
  overloaded: Counter<"reason">;
  /** Decoded bytes reserved by POST /detect requests in flight, and the budget (0: none). */
  decodeBytesInFlight: Gauge;
  decodeBudgetBytes: Gauge;
}

/**
 * A registry with process metrics (CPU, memory, event-loop lag) and the
 * server's own: per loaded model version, queue depth, busy and loaded
 * instances read at scrape time, batch sizes and inference time fed by its
 * batcher.
 * @example
 * const m = createServeMetrics(repository);
 * m.requests.inc({ route: "/detect", code: "200", model: "yolov5n" });
 * const text = await m.registry.metrics();
 */
export function createServeMetrics(repository: ModelRepository): ServeMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: "framewire_serve_" });
  const registers = [registry];
  const perModel = (name: string, help: string, read: (m: ReturnType<ModelRepository["ready"]>[number]) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ["model", "version"],
      registers,
      collect() {
        this.reset();
        for (const m of repository.ready()) this.set({ model: m.name, version: m.version }, read(m));
      },
    });
  perModel("framewire_serve_queue_depth", "Batch items waiting for a model instance.", (m) => m.batcher.queued);
  perModel("framewire_serve_instances_busy", "Model instances running a batch.", (m) => m.batcher.busy);
  perModel("framewire_serve_instances", "Model instances loaded (a thread and an onnxruntime session each).", (m) => m.instances);
  const inferenceSeconds = new Histogram({
    name: "framewire_serve_inference_duration_seconds",
    help: "Model instance time per batch.",
    labelNames: ["model", "version"],
    buckets: LATENCY_BUCKETS,
    registers,
  });
  const batchSize = new Histogram({
    name: "framewire_serve_batch_size",
    help: "Items per executed batch.",
    labelNames: ["model", "version"],
    buckets: [1, 2, 4, 8, 16, 32, 64],
    registers,
  });
  repository.onLoaded((m) => {
    const labels = { model: m.name, version: m.version };
    m.batcher.onBatch((b) => {
      batchSize.observe(labels, b.size);
      inferenceSeconds.observe(labels, b.inferMs / 1000);
    });
  });
  return {
    registry,
    requests: new Counter({ name: "framewire_serve_requests_total", help: "HTTP requests by route, status code and model.", labelNames: ["route", "code", "model"], registers }),
    requestSeconds: new Histogram({ name: "framewire_serve_request_duration_seconds", help: "HTTP request time by route.", labelNames: ["route"], buckets: LATENCY_BUCKETS, registers }),
    queueSeconds: new Histogram({
      name: "framewire_serve_queue_duration_seconds",
      help: "Time a request waited for a model instance.",
      labelNames: ["model", "version"],
      buckets: LATENCY_BUCKETS,
      registers,
    }),
    imagesRejected: new Counter({ name: "framewire_serve_images_rejected_total", help: "POST /detect images refused before inference, by reason.", labelNames: ["reason"], registers }),
    overloaded: new Counter({
      name: "framewire_serve_overloaded_total",
      help: "Requests answered 503 (with Retry-After) because a limit on work in flight was reached: decode-budget, decoder-queue or batch-queue.",
      labelNames: ["reason"],
      registers,
    }),
    decodeBytesInFlight: new Gauge({ name: "framewire_serve_decode_bytes_in_flight", help: "Decoded image bytes reserved by POST /detect requests in flight.", registers }),
    decodeBudgetBytes: new Gauge({ name: "framewire_serve_decode_budget_bytes", help: "The decode budget (--decode-budget-mb; 0: no budget).", registers }),
  };
}
