/**
 * Model versions of one stage without downtime: a new version is loaded
 * beside the running one and takes over between frames (a frame runs on one
 * version from start to end; an old version is released once its last frame
 * is done). A canary gets a share of the frames first and is promoted, or
 * rolled back, by its error rate (and optionally latency and confidence)
 * compared with the active version over the same period.
 */
import { codedError } from "../core/errors.ts";
import { watch, type FSWatcher } from "node:fs";
import { basename, dirname, resolve } from "node:path";
import { Histogram } from "../core/histogram.ts";
import type { Logger } from "../core/log.ts";
import type { OperatorMetric } from "../core/metric.ts";
import type { LifecycleEvent, ModelControl, ModelStatus, ReloadResult, VersionStatus } from "../core/model-status.ts";

export type { LifecycleEvent, ModelControl, ModelStatus, ReloadResult, VersionStatus };

/** A model version as its loader hands it over. */
export interface LoadedVersion<M> {
  model: M;
  /** Identifies the content: the model's own version metadata, or a hash of the file. */
  version: string;
  file: string;
  /** Facts for status (execution provider, input shape). */
  detail?: Record<string, string>;
}

/**
 * Loads `file` as a new version; resolves with null when its version is one
 * of `known` (already loaded: nothing to do).
 * @throws when the file is not a usable model.
 */
export type VersionLoader<M> = (file: string, known: readonly string[]) => Promise<LoadedVersion<M> | null>;

export interface CanaryPolicy {
  /** Share of frames (0..1] routed to the canary. */
  share: number;
  /** Canary inferences before the decision. */
  frames: number;
  /** Highest failure share the canary may show; past it, it is rolled back at once. */
  maxErrorRate: number;
  /** Roll back when the canary's mean latency exceeds the active version's by this factor. */
  maxLatencyRatio?: number;
  /** Roll back when the canary's mean detection confidence falls below this share of the active version's. */
  minConfidenceRatio?: number;
}

const DEFAULT_CANARY: CanaryPolicy = { share: 0.1, frames: 200, maxErrorRate: 0.01 };

/** A reload request failed: the running versions are untouched. */
export const ModelLoadError = codedError("ModelLoadError", "E_MODEL_LOAD");
export type ModelLoadError = InstanceType<typeof ModelLoadError>;

/** A promote or rollback asked for while no canary runs. */
export const NoCanaryError = codedError("NoCanaryError", "E_NO_CANARY");
export type NoCanaryError = InstanceType<typeof NoCanaryError>;


/** Counters of one version over one comparison window (a canary's run). */
class Window {
  inferences = 0;
  failures = 0;
  latency = new Histogram();
  detections = 0;
  confidenceSum = 0;

  get meanConfidence(): number | null {
    return this.detections ? this.confidenceSum / this.detections : null;
  }
}

/** One loaded version and what it has done. */
export class ModelVersion<M> {
  inflight = 0;
  inferences = 0;
  failures = 0;
  readonly latency = new Histogram();
  readonly loadedAt = new Date();
  role: "active" | "canary" | "retired";
  released = false;
  /** Since the current canary started (both the canary and the active version). */
  window = new Window();

  constructor(
    readonly loaded: LoadedVersion<M>,
    role: "active" | "canary",
  ) {
    this.role = role;
  }

  get model(): M {
    return this.loaded.model;
  }

  get version(): string {
    return this.loaded.version;
  }
}




export interface LifecycleOptions<M> {
  stage: string;
  load: VersionLoader<M>;
  release: (model: M) => Promise<void>;
  /** Canary settings for new versions; without them new versions replace the active one directly. */
  canary?: CanaryPolicy;
  log: Logger;
}

const EVENTS_KEPT = 50;
const WATCH_DEBOUNCE_MS = 300;

/**
 * @example
 * const life = await ModelLifecycle.open("models/yolov5n.onnx", { stage: "detect", load, release, log });
 * const v = life.pick();          // per frame: the version that runs it
 * life.finish(v, ms, true);       // after it
 * await life.reload({ canary: 0.1 }); // a new file version on 10 % of the frames
 */
export class ModelLifecycle<M> implements ModelControl {
  active: ModelVersion<M>;
  canary?: ModelVersion<M>;
  private policy?: CanaryPolicy;
  /** Error diffusion: the canary gets exactly its share of frames, spread evenly. */
  private credit = 0;
  private queue: Promise<unknown> = Promise.resolve();
  private watcher?: FSWatcher;
  private watchTimer?: ReturnType<typeof setTimeout>;
  private watched?: string;
  private events: LifecycleEvent[] = [];
  private listeners = new Set<(e: LifecycleEvent) => void>();
  private swaps = 0;
  private promotions = 0;
  private rollbacks = 0;

  private constructor(
    first: LoadedVersion<M>,
    private opts: LifecycleOptions<M>,
  ) {
    this.active = new ModelVersion(first, "active");
    this.event("loaded", first.version);
    opts.log.info(`${basename(first.file)} version ${first.version} active`);
  }

  /** Loads the first version. */
  static async open<M>(file: string, opts: LifecycleOptions<M>): Promise<ModelLifecycle<M>> {
    const first = await opts.load(file, []);
    if (!first) throw new ModelLoadError(`${file}: the loader returned no model`);
    return new ModelLifecycle(first, opts);
  }

  /** The version that runs the next frame (call `finish` after it). */
  pick(): ModelVersion<M> {
    let v = this.active;
    if (this.canary && this.policy) {
      this.credit += this.policy.share;
      if (this.credit >= 1) {
        this.credit -= 1;
        v = this.canary;
      }
    }
    v.inflight++;
    return v;
  }

  /** The active version, to re-run a frame that failed on the canary. */
  fallback(): ModelVersion<M> {
    this.active.inflight++;
    return this.active;
  }

  /** Records one inference on `v`; may promote or roll back a canary. */
  finish(v: ModelVersion<M>, ms: number, ok: boolean): void {
    v.inflight--;
    v.inferences++;
    v.window.inferences++;
    if (ok) {
      v.latency.record(ms);
      v.window.latency.record(ms);
    } else {
      v.failures++;
      v.window.failures++;
    }
    if (v === this.canary) this.judge();
    if (v.role === "retired" && v.inflight === 0) void this.free(v);
  }

  /** Detection confidences of one frame `v` ran, once known (after nms). */
  settle(v: ModelVersion<M>, scores: readonly { score: number }[]): void {
    const w = v.window;
    for (const d of scores) w.confidenceSum += d.score;
    w.detections += scores.length;
  }

  /** True while a canary runs (confidence is then worth collecting). */
  get comparing(): boolean {
    return this.canary !== undefined;
  }

  /**
   * Loads a new version of `file` (default: the active version's file) beside
   * the running ones. With a canary share (the request's, else the configured
   * policy's) it becomes the canary, replacing any canary still running;
   * otherwise it replaces the active version between frames.
   * Reloads run one at a time.
   * @throws ModelLoadError when the file cannot be loaded; nothing changes then.
   */
  reload(req: { file?: string; canary?: number | false } = {}): Promise<ReloadResult> {
    const run = this.queue.then(() => this.doReload(req));
    this.queue = run.catch(() => {});
    return run;
  }

  /** Makes the canary the active version. @throws NoCanaryError */
  promote(reason = "promoted by request"): string {
    const c = this.canary;
    if (!c) throw new NoCanaryError(`stage ${this.opts.stage} has no canary to promote`);
    const old = this.active;
    this.active = c;
    c.role = "active";
    this.canary = undefined;
    this.retire(old);
    this.promotions++;
    this.event("promoted", c.version, reason);
    this.opts.log.info(`version ${c.version} promoted, replaces ${old.version} (${reason})`);
    return c.version;
  }

  /** Drops the canary; the active version keeps every frame. @throws NoCanaryError */
  rollback(reason = "rolled back by request"): string {
    const c = this.canary;
    if (!c) throw new NoCanaryError(`stage ${this.opts.stage} has no canary to roll back`);
    this.canary = undefined;
    this.retire(c);
    this.rollbacks++;
    this.event("rolled-back", c.version, reason);
    this.opts.log.warn(`canary ${c.version} rolled back, ${this.active.version} stays active (${reason})`);
    return c.version;
  }

  /** Reloads whenever `file` changes (watching its folder: editors and `mv` replace files). */
  watch(file: string): void {
    const path = resolve(file);
    const name = basename(path);
    this.watched = path;
    this.watcher = watch(dirname(path), (_kind, changed) => {
      if (changed && changed !== name) return;
      clearTimeout(this.watchTimer);
      // A copy arrives in several writes: act once it has settled.
      this.watchTimer = setTimeout(() => {
        this.reload({ file: path }).catch((err) => this.opts.log.error(`${name} changed but ${(err as Error).message}; ${this.active.version} stays active`));
      }, WATCH_DEBOUNCE_MS);
    });
  }

  /**
   * Calls `fn` with each lifecycle event as it happens (a fleet rollout
   * learns this way whether its canary was promoted or rolled back).
   * @example
   * const off = life.onEvent((e) => e.kind === "rolled-back" && console.log(e.reason));
   * off();
   */
  onEvent(fn: (e: LifecycleEvent) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  status(): ModelStatus {
    const p = this.policy;
    return {
      stage: this.opts.stage,
      watching: this.watched ?? null,
      active: describe(this.active),
      canary: this.canary && p ? { ...describe(this.canary), share: p.share, decideAfter: p.frames, maxErrorRate: p.maxErrorRate } : null,
      swaps: this.swaps,
      promotions: this.promotions,
      rollbacks: this.rollbacks,
      events: this.events.slice(-10),
    };
  }

  /** Per version: role, inferences, failures, inference time; and the lifecycle's counters. */
  metrics(): OperatorMetric[] {
    const out: OperatorMetric[] = [];
    for (const v of this.canary ? [this.active, this.canary] : [this.active]) {
      const labels = { model: basename(v.loaded.file), version: v.version };
      out.push(
        { name: "model_info", type: "gauge", help: "Loaded model versions (1), by role: active or canary.", value: 1, labels: { ...labels, role: v.role } },
        { name: "model_inferences_total", type: "counter", help: "Inferences run, by model version (failures included).", value: v.inferences, labels },
        { name: "model_failures_total", type: "counter", help: "Inferences that failed, by model version.", value: v.failures, labels },
        { name: "inference_seconds", type: "histogram", help: "Inference time per model version.", histogram: v.latency, labels },
      );
    }
    out.push(
      { name: "model_swaps_total", type: "counter", help: "New versions that replaced the active one directly (hot reloads).", value: this.swaps },
      { name: "model_promotions_total", type: "counter", help: "Canaries promoted to active.", value: this.promotions },
      { name: "model_rollbacks_total", type: "counter", help: "Canaries rolled back.", value: this.rollbacks },
      { name: "model_canary_share", type: "gauge", help: "Share of frames routed to the canary (0 without one).", value: this.canary && this.policy ? this.policy.share : 0 },
    );
    return out;
  }

  /** Stops watching and releases every version (call once no frame is in flight). */
  async close(): Promise<void> {
    clearTimeout(this.watchTimer);
    this.watcher?.close();
    await this.queue;
    for (const v of [this.active, ...(this.canary ? [this.canary] : [])]) await this.free(v);
  }

  private async doReload(req: { file?: string; canary?: number | false }): Promise<ReloadResult> {
    const file = req.file ?? this.active.loaded.file;
    const known = [this.active.version, ...(this.canary ? [this.canary.version] : [])];
    let loaded: LoadedVersion<M> | null;
    try {
      loaded = await this.opts.load(file, known);
    } catch (err) {
      const reason = (err as Error).message;
      this.event("load-failed", undefined, reason);
      throw new ModelLoadError(`could not load ${file}: ${reason}`);
    }
    if (!loaded) {
      this.event("unchanged", undefined, `${basename(file)} holds a version already loaded`);
      return { outcome: "unchanged", version: this.active.version };
    }
    const share = req.canary === false ? 0 : (req.canary ?? this.opts.canary?.share ?? 0);
    const v = new ModelVersion(loaded, share > 0 ? "canary" : "active");
    if (this.canary) this.rollback(`superseded by ${v.version}`);
    if (share > 0) {
      this.policy = { ...DEFAULT_CANARY, ...this.opts.canary, share };
      this.canary = v;
      this.credit = 0;
      this.active.window = new Window();
      this.event("canary", v.version, `${(share * 100).toFixed(1)} % of frames, decides after ${this.policy.frames}`);
      this.opts.log.info(`canary ${v.version} (${basename(file)}) on ${(share * 100).toFixed(1)} % of frames beside ${this.active.version}`);
      return { outcome: "canary", version: v.version };
    }
    const old = this.active;
    this.active = v;
    this.retire(old);
    this.swaps++;
    this.event("swapped", v.version, `replaces ${old.version}`);
    this.opts.log.info(`version ${v.version} (${basename(file)}) active, replaces ${old.version}`);
    return { outcome: "swapped", version: v.version };
  }

  /** Promotes or rolls back the canary once its evidence suffices. */
  private judge(): void {
    const c = this.canary!.window;
    const p = this.policy!;
    const budget = Math.floor(p.maxErrorRate * p.frames);
    if (c.failures > budget) {
      this.rollback(`${c.failures} of ${c.inferences} canary inferences failed; at most ${budget} of ${p.frames} allowed`);
      return;
    }
    if (c.inferences < p.frames) return;
    const a = this.active.window;
    const ms = (w: Window) => w.latency.mean.toFixed(1);
    if (p.maxLatencyRatio && a.latency.count && c.latency.mean > p.maxLatencyRatio * a.latency.mean) {
      this.rollback(`mean latency ${ms(c)} ms vs ${ms(a)} ms exceeds ${p.maxLatencyRatio}x`);
      return;
    }
    const ca = c.meanConfidence;
    const aa = a.meanConfidence;
    if (p.minConfidenceRatio && ca !== null && aa !== null && ca < p.minConfidenceRatio * aa) {
      this.rollback(`mean confidence ${ca.toFixed(3)} vs ${aa.toFixed(3)} is below ${p.minConfidenceRatio}x`);
      return;
    }
    const conf = ca !== null && aa !== null ? `, confidence ${ca.toFixed(3)} vs ${aa.toFixed(3)}` : "";
    this.promote(`${c.inferences} canary inferences, ${c.failures} failed; latency ${ms(c)} vs ${ms(a)} ms${conf}`);
  }

  private retire(v: ModelVersion<M>): void {
    v.role = "retired";
    if (v.inflight === 0) void this.free(v);
  }

  private async free(v: ModelVersion<M>): Promise<void> {
    if (v.released) return;
    v.released = true;
    try {
      await this.opts.release(v.model);
    } catch (err) {
      this.opts.log.error(`releasing version ${v.version}: ${(err as Error).message}`);
    }
  }

  private event(kind: LifecycleEvent["kind"], version?: string, reason?: string): void {
    const e: LifecycleEvent = { at: new Date().toISOString(), kind, ...(version ? { version } : {}), ...(reason ? { reason } : {}) };
    this.events.push(e);
    if (this.events.length > EVENTS_KEPT) this.events.shift();
    for (const fn of this.listeners) {
      try {
        fn(e);
      } catch (err) {
        this.opts.log.error(`lifecycle listener: ${(err as Error).message}`);
      }
    }
  }
}

function describe<M>(v: ModelVersion<M>): VersionStatus {
  return {
    version: v.version,
    model: basename(v.loaded.file),
    file: v.loaded.file,
    loadedAt: v.loadedAt.toISOString(),
    inferences: v.inferences,
    failures: v.failures,
    meanMs: round(v.latency.mean),
    p99Ms: round(v.latency.quantile(0.99)),
    meanConfidence: v.window.meanConfidence === null ? null : round(v.window.meanConfidence, 4),
    ...v.loaded.detail,
  };
}

function round(x: number, digits = 2): number {
  const k = 10 ** digits;
  return Math.round(x * k) / k;
}
