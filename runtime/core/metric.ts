import type { Histogram } from "./histogram.ts";

/**
 * One number an instance reports for `/metrics` (name without the
 * `framewire_` prefix; the stage and pipeline labels are added), or a latency
 * histogram in ms. Read at scrape time, so keeping it costs nothing per frame.
 */
export type OperatorMetric =
  | { name: string; help: string; type: "counter" | "gauge"; value: number; labels?: Record<string, string> }
  | { name: string; help: string; type: "histogram"; histogram: Histogram; labels?: Record<string, string> };

