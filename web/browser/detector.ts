/**
 * Detection in the browser: onnxruntime-web (WebGPU where the browser has
 * it, else WebAssembly with threads where the page is cross-origin
 * isolated) runs the model; the letterbox (runtime/inference/letterbox.ts, the resize operator's kernel) and
 * the YOLO decoding and NMS (runtime/inference/yolo.ts) are the server's own
 * modules, bundled as they are.
 */
import * as ort from "onnxruntime-web";
import type { Detection, Predictions } from "../../runtime/core/message.ts";
import { decodeDetections, detectLayout } from "../../runtime/inference/yolo.ts";
import { letterboxPixels } from "../../runtime/inference/letterbox.ts";
import type { BrowserConfig, PublishedDetection } from "../../runtime/observe/http/browser-protocol.ts";

export type Backend = "webgpu" | "wasm";

/** What one detection gives: detections in image pixels (the `POST /detect` shape, with class ids), time and backend. */
export interface DetectResult {
  detections: PublishedDetection[];
  /** Letterbox + inference + NMS, ms. */
  ms: number;
  backend: Backend;
  width: number;
  height: number;
  timings: { preprocess: number; infer: number; nms: number };
}

export interface DetectorOptions {
  /** "auto" (default): WebGPU when the browser offers an adapter, else wasm. */
  backend?: Backend | "auto";
  /** wasm threads; default: 4 at most when cross-origin isolated (SharedArrayBuffer), else 1. */
  threads?: number;
}

const round = (x: number, k: number) => Math.round(x * k) / k;

/**
 * The shape `POST /detect` answers with (score to 4 decimals, box to 1), with the class id.
 * @example
 * toWire({ class: "person", classId: 0, score: 0.823149, box: [219.31, 407.77, 349.52, 862.64] });
 * // { class: "person", classId: 0, score: 0.8231, box: [219.3, 407.8, 349.5, 862.6] }
 */
export function toWire(d: Detection): PublishedDetection {
  return { class: d.class, classId: d.classId, score: round(d.score, 1e4), box: [round(d.box[0], 10), round(d.box[1], 10), round(d.box[2], 10), round(d.box[3], 10)] };
}

/**
 * wasm threads the page can use: up to 4 where it is cross-origin isolated (SharedArrayBuffer), else 1.
 * @example
 * ort.env.wasm.numThreads = defaultThreads();
 */
export function defaultThreads(): number {
  if (!globalThis.crossOriginIsolated) return 1;
  return Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1));
}

async function hasWebGpu(): Promise<boolean> {
  const gpu = (navigator as { gpu?: { requestAdapter(): Promise<unknown> } }).gpu;
  if (!gpu) return false;
  try {
    return (await gpu.requestAdapter()) !== null;
  } catch {
    return false;
  }
}

/**
 * One model loaded in the page.
 * @example
 * const det = await Detector.load(config);
 * const { detections, ms, backend } = await det.detect(rgba, width, height);
 */
export class Detector {
  private busy: Promise<unknown> = Promise.resolve();

  private constructor(
    private session: ort.InferenceSession,
    readonly backend: Backend,
    readonly threads: number,
    private config: BrowserConfig,
    readonly width: number,
    readonly height: number,
  ) {}

  /**
   * Fetches the model and starts a session on the best backend available.
   * @throws Error when the model cannot be fetched or no backend can run it.
   */
  static async load(config: BrowserConfig, o: DetectorOptions = {}): Promise<Detector> {
    ort.env.wasm.wasmPaths = config.wasmPaths;
    const threads = o.threads ?? defaultThreads();
    ort.env.wasm.numThreads = threads;
    const res = await fetch(config.model.url);
    if (!res.ok) throw new Error(`model ${config.model.url}: HTTP ${res.status}`);
    const bytes = new Uint8Array(await res.arrayBuffer());
    const want = o.backend ?? "auto";
    const order: Backend[] = want === "auto" ? ((await hasWebGpu()) ? ["webgpu", "wasm"] : ["wasm"]) : [want];
    let last: unknown;
    for (const backend of order) {
      try {
        const session = await ort.InferenceSession.create(bytes, { executionProviders: [backend], graphOptimizationLevel: "all" });
        const meta = session.inputMetadata[0];
        const shape = meta && "shape" in meta ? meta.shape : [];
        const dim = (i: number, fallback: number) => (typeof shape[i] === "number" && (shape[i] as number) > 0 ? (shape[i] as number) : fallback);
        return new Detector(session, backend, backend === "wasm" ? threads : 0, config, dim(3, config.model.width), dim(2, config.model.height));
      } catch (err) {
        last = err;
      }
    }
    throw new Error(`no onnxruntime-web backend could load ${config.model.name}: ${(last as Error)?.message ?? last}`);
  }

  /**
   * Detects objects in packed pixels (RGBA from a canvas, or RGB); one
   * inference at a time (calls queue).
   */
  detect(pixels: Uint8Array | Uint8ClampedArray, width: number, height: number, channels: 3 | 4 = 4): Promise<DetectResult> {
    const run = this.busy.then(() => this.run(pixels, width, height, channels));
    this.busy = run.catch(() => undefined);
    return run;
  }

  private async run(pixels: Uint8Array | Uint8ClampedArray, width: number, height: number, channels: 3 | 4): Promise<DetectResult> {
    const t0 = performance.now();
    const input = letterboxPixels(pixels, width, height, channels, this.width, this.height);
    const t1 = performance.now();
    const feeds = { [this.session.inputNames[0]]: new ort.Tensor("float32", input.data, input.dims) };
    const out = await this.session.run(feeds);
    const t2 = performance.now();
    const tensor = out[this.session.outputNames[0]];
    const dims = tensor.dims.map(Number);
    const predictions: Predictions = {
      layout: detectLayout(dims, "auto"),
      dims,
      data: (await tensor.getData()) as Float32Array,
      classNames: this.config.model.classNames,
      model: this.config.model.name,
    };
    tensor.dispose();
    const detections = decodeDetections(predictions, input.letterbox, width, height, { conf: this.config.conf, iou: this.config.iou });
    const t3 = performance.now();
    return {
      detections: detections.map(toWire),
      ms: round(t3 - t0, 100),
      backend: this.backend,
      width,
      height,
      timings: { preprocess: round(t1 - t0, 100), infer: round(t2 - t1, 100), nms: round(t3 - t2, 100) },
    };
  }
}
