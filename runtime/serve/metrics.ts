/** Prometheus metrics of `framewire serve` (prom-client), scraped at GET /metrics. */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import type { ServedModel } from "./model.ts";

/** Seconds, from 1 ms to 10 s: an inference on a CPU is tens of ms, a deep queue seconds. */
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export interface ServeMetrics {
  registry: Registry;
  /** Requests by route pattern and status code. */
  requests: Counter<"route" | "code">;
  requestSeconds: Histogram<"route">;
  /** Time requests waited for an instance. */
  queueSeconds: Histogram;
  /** POST /detect bodies refused before inference, by reason. */
  imagesRejected: Counter<"reason">;
}

/**
 * A registry with process metrics (CPU, memory, event-loop lag) and the
 * server's own: queue depth and busy instances read at scrape time, batch
 * sizes and inference time fed by the model's batcher.
 * @example
 * const m = createServeMetrics(model);
 * m.requests.inc({ route: "/detect", code: "200" });
 * const text = await m.registry.metrics();
 */
export function createServeMetrics(model: ServedModel): ServeMetrics {
  const registry = new Registry();
  registry.setDefaultLabels({ model: model.name });
  collectDefaultMetrics({ register: registry, prefix: "framewire_serve_" });
  const registers = [registry];
  new Gauge({
    name: "framewire_serve_queue_depth",
    help: "Batch items waiting for a model instance.",
    registers,
    collect() {
      this.set(model.batcher.queued);
    },
  });
  new Gauge({
    name: "framewire_serve_instances_busy",
    help: "Model instances running a batch.",
    registers,
    collect() {
      this.set(model.batcher.busy);
    },
  });
  const inferenceSeconds = new Histogram({ name: "framewire_serve_inference_duration_seconds", help: "Model instance time per batch.", buckets: LATENCY_BUCKETS, registers });
  const batchSize = new Histogram({ name: "framewire_serve_batch_size", help: "Items per executed batch.", buckets: [1, 2, 4, 8, 16, 32, 64], registers });
  model.batcher.onBatch = (size, ms) => {
    batchSize.observe(size);
    inferenceSeconds.observe(ms / 1000);
  };
  return {
    registry,
    requests: new Counter({ name: "framewire_serve_requests_total", help: "HTTP requests by route and status code.", labelNames: ["route", "code"], registers }),
    requestSeconds: new Histogram({ name: "framewire_serve_request_duration_seconds", help: "HTTP request time by route.", labelNames: ["route"], buckets: LATENCY_BUCKETS, registers }),
    queueSeconds: new Histogram({ name: "framewire_serve_queue_duration_seconds", help: "Time a request waited for a model instance.", buckets: LATENCY_BUCKETS, registers }),
    imagesRejected: new Counter({ name: "framewire_serve_images_rejected_total", help: "POST /detect images refused before inference, by reason.", labelNames: ["reason"], registers }),
  };
}
