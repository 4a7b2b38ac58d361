/**
 * What a stage that serves a model exposes to status pages and the control
 * API. The inference layer's ModelLifecycle implements it; the engine and the
 * observers only see this view.
 */
export interface LifecycleEvent {
  at: string;
  kind: "loaded" | "swapped" | "canary" | "promoted" | "rolled-back" | "load-failed" | "unchanged";
  version?: string;
  reason?: string;
}

export interface VersionStatus {
  version: string;
  model: string;
  file: string;
  loadedAt: string;
  inferences: number;
  failures: number;
  meanMs: number;
  p99Ms: number;
  /** Mean detection confidence during the current canary comparison, when known. */
  meanConfidence: number | null;
  [detail: string]: unknown;
}

export interface ModelStatus {
  stage: string;
  /** The file watched for new versions, if any. */
  watching: string | null;
  active: VersionStatus;
  canary: (VersionStatus & { share: number; decideAfter: number; maxErrorRate: number }) | null;
  swaps: number;
  promotions: number;
  rollbacks: number;
  events: LifecycleEvent[];
}

export interface ReloadResult {
  outcome: "swapped" | "canary" | "unchanged";
  version: string;
}

/** Control over a stage's model versions (hot reload, canary, rollback). */
export interface ModelControl {
  status(): ModelStatus;
  reload(req?: { file?: string; canary?: number | false }): Promise<ReloadResult>;
  promote(reason?: string): string;
  rollback(reason?: string): string;
}
