/**
 * The models a server holds, by name and version, with Triton's states
 * (LOADING, READY, UNLOADING, UNAVAILABLE + reason) and its model control
 * modes: `none` loads every model at start and refuses load/unload requests;
 * `explicit` loads the models named at start and then what load requests
 * ask for. A load of a loaded model reloads it: the new versions load beside
 * the old, which serve until the swap and are then drained and released; if
 * the new ones fail, the old keep serving. Loads and unloads of one model run
 * one after another.
 */
import { codedError, ConfigError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import { loadServedModel, type ServedModel } from "./model.ts";
import type { ModelSource } from "./sources.ts";

export type ModelState = "LOADING" | "READY" | "UNLOADING" | "UNAVAILABLE";
export type ControlMode = "none" | "explicit";

/** No READY model (or version) of that name: HTTP 404. */
export const ModelNotFoundError = codedError("ModelNotFoundError", "E_MODEL_NOT_FOUND");
export type ModelNotFoundError = InstanceType<typeof ModelNotFoundError>;

/** A load or unload request the control mode does not allow: HTTP 400. */
export const ModelControlError = codedError("ModelControlError", "E_MODEL_CONTROL");
export type ModelControlError = InstanceType<typeof ModelControlError>;

/** A model that failed to load for a reason other than its configuration (its thread died, ...): HTTP 400. */
export const ModelLoadFailedError = codedError("ModelLoadFailedError", "E_MODEL_LOAD");
export type ModelLoadFailedError = InstanceType<typeof ModelLoadFailedError>;

/** One `POST /v2/repository/index` entry. */
export interface IndexEntry {
  name: string;
  version?: string;
  state: ModelState;
  reason: string;
}

interface VersionEntry {
  state: ModelState;
  reason: string;
  served?: ServedModel;
}

interface ModelEntry {
  versions: Map<string, VersionEntry>;
  /** The load or unload in progress; the next one waits for it. */
  busy: Promise<unknown>;
  /** Why the last load failed before any version was known (no versions, a bad config). */
  failure?: string;
}

const byVersion = (a: string, b: string) => Number(a) - Number(b);

/**
 * @example
 * const repo = new ModelRepository(new RepositorySource("examples/model_repository", defaults, 0), "explicit", log);
 * await repo.loadAtStart(["yolov5"]);
 * const m = repo.get("yolov5"); // the highest READY version
 * await repo.unload("yolov5");
 */
export class ModelRepository {
  private models = new Map<string, ModelEntry>();
  private loadedListeners: ((m: ServedModel) => void)[] = [];

  constructor(
    readonly source: ModelSource,
    readonly mode: ControlMode,
    private log: Logger,
  ) {}

  /** Calls `fn` for every version that becomes READY (metrics hook their batchers here). */
  onLoaded(fn: (m: ServedModel) => void): void {
    this.loadedListeners.push(fn);
    for (const m of this.ready()) fn(m);
  }

  /**
   * Loads models at start: every one (`"*"`) or those named.
   * @throws the first model's error (ModelConfigError with file:line, ...); what loaded before it is released.
   */
  async loadAtStart(names: string[] | "*"): Promise<void> {
    const all = await this.source.names();
    const wanted = names === "*" ? all : names;
    for (const n of wanted) if (!all.includes(n)) throw new ConfigError(`--load-model ${n}: no such model in ${this.source.describe} (it has ${all.join(", ") || "none"})`);
    try {
      for (const n of wanted) await this.loadNow(n, undefined);
    } catch (err) {
      await this.close();
      throw err;
    }
  }

  /**
   * `POST /v2/repository/models/{name}/load`: loads or reloads `name`.
   * @throws ModelControlError in mode none; ModelConfigError / ModelRepositoryError / ModelLoadFailedError when it cannot load (what served before keeps serving).
   */
  async load(name: string, config?: unknown): Promise<void> {
    this.allowControl("load");
    // A name the source does not have gets the source's own answer, and no index entry.
    if (!(await this.known(name))) await this.source.plan(name, config);
    return this.serialize(name, () => this.loadNow(name, config));
  }

  /**
   * `POST /v2/repository/models/{name}/unload`: stops serving `name`, lets its queued requests finish, releases its sessions.
   * @throws ModelControlError in mode none; ModelNotFoundError for a name the repository does not have.
   */
  async unload(name: string): Promise<void> {
    this.allowControl("unload");
    if (!this.models.has(name) && !(await this.source.names()).includes(name)) throw new ModelNotFoundError(`unknown model "${name}": ${this.source.describe} has ${(await this.source.names()).join(", ") || "none"}`);
    return this.serialize(name, async () => {
      const entry = this.models.get(name);
      if (!entry) return;
      const going = [...entry.versions.entries()].filter(([, e]) => e.state === "READY");
      for (const [, e] of going) e.state = "UNLOADING";
      await Promise.all(going.map(([, e]) => e.served!.close()));
      for (const [version, e] of going) {
        entry.versions.set(version, { state: "UNAVAILABLE", reason: "unloaded" });
        this.log.info(`${name} version ${version}: unloaded (${e.served!.instances} instance(s) released)`);
      }
    });
  }

  /** `POST /v2/repository/index`: every model in the source and every version known, with its state. */
  async index(readyOnly = false): Promise<IndexEntry[]> {
    const names = new Set([...(await this.source.names()), ...this.models.keys()]);
    const out: IndexEntry[] = [];
    for (const name of [...names].sort()) {
      const versions = this.models.get(name)?.versions;
      if (!versions?.size) {
        if (!readyOnly) out.push({ name, state: "UNAVAILABLE", reason: this.models.get(name)?.failure ?? "not loaded" });
        continue;
      }
      for (const version of [...versions.keys()].sort(byVersion)) {
        const e = versions.get(version)!;
        if (!readyOnly || e.state === "READY") out.push({ name, version, state: e.state, reason: e.reason });
      }
    }
    return out;
  }

  /**
   * The READY version to serve: `version`, or the highest one.
   * @throws ModelNotFoundError that says what the server has.
   */
  get(name: string, version?: string): ServedModel {
    const versions = this.models.get(name)?.versions;
    const e = version === undefined ? this.readyVersions(name).at(-1) : versions?.get(version);
    if (e?.state === "READY") return e.served!;
    const has = this.describeReady();
    if (!versions) throw new ModelNotFoundError(`unknown model "${name}"${version ? ` version ${version}` : ""}; this server has ${has}`);
    const state = version === undefined ? this.stateOf(name) : e ? `${e.state}${e.reason ? `: ${e.reason}` : ""}` : "no such version";
    throw new ModelNotFoundError(`model "${name}"${version ? ` version ${version}` : ""} has no available version (${state}); this server has ${has}`);
  }

  /** READY version numbers of `name`, lowest first. */
  versionsOf(name: string): string[] {
    return this.readyVersions(name).map((e) => e.served!.version);
  }

  /**
   * Whether `name` (and `version`, when given) is known at all: in the source or loaded before, in any state.
   * A ready check may wait for a known model; an unknown one will not appear by waiting.
   */
  async known(name: string, version?: string): Promise<boolean> {
    if (version !== undefined) return this.models.get(name)?.versions.has(version) ?? false;
    return this.models.has(name) || (await this.source.names()).includes(name);
  }

  /** Every READY version. */
  ready(): ServedModel[] {
    return [...this.models.keys()].sort().flatMap((n) => this.readyVersions(n).map((e) => e.served!));
  }

  /** Stops every batcher taking work and runs what is queued (the first half of a drain). */
  async drain(): Promise<void> {
    await Promise.all(this.ready().map((m) => m.batcher.close()));
  }

  /** Releases every loaded version. */
  async close(): Promise<void> {
    const all = [...this.models.values()].flatMap((m) => [...m.versions.values()]).filter((e) => e.served && (e.state === "READY" || e.state === "UNLOADING"));
    await Promise.all(all.map((e) => e.served!.close()));
    for (const e of all) Object.assign(e, { state: "UNAVAILABLE", reason: "unloaded", served: undefined });
  }

  private readyVersions(name: string): VersionEntry[] {
    const versions = this.models.get(name)?.versions;
    if (!versions) return [];
    return [...versions.keys()].sort(byVersion).map((v) => versions.get(v)!).filter((e) => e.state === "READY");
  }

  private stateOf(name: string): string {
    const states = [...(this.models.get(name)?.versions.values() ?? [])].map((e) => `${e.state}${e.reason ? `: ${e.reason}` : ""}`);
    return [...new Set(states)].join("; ") || this.models.get(name)?.failure || "not loaded";
  }

  private describeReady(): string {
    const ready = [...this.models.keys()].sort().filter((n) => this.readyVersions(n).length);
    if (!ready.length) return "no model loaded";
    return ready.map((n) => `${n} (version${this.versionsOf(n).length > 1 ? "s" : ""} ${this.versionsOf(n).join(", ")})`).join(", ");
  }

  private allowControl(what: string): void {
    if (this.mode === "none") {
      throw new ModelControlError(`explicit model ${what} is not allowed with --model-control-mode none; start the server with --model-control-mode explicit`);
    }
  }

  private serialize<T>(name: string, work: () => Promise<T>): Promise<T> {
    const entry = this.entry(name);
    const run = entry.busy.then(work, work);
    entry.busy = run.catch(() => undefined);
    return run;
  }

  private entry(name: string): ModelEntry {
    let e = this.models.get(name);
    if (!e) this.models.set(name, (e = { versions: new Map(), busy: Promise.resolve() }));
    return e;
  }

  private async loadNow(name: string, config: unknown): Promise<void> {
    const entry = this.entry(name);
    const loading: string[] = [];
    const loaded: ServedModel[] = [];
    try {
      const plan = await this.source.plan(name, config);
      for (const { version } of plan.versions) {
        if (entry.versions.get(version)?.state !== "READY") {
          entry.versions.set(version, { state: "LOADING", reason: "" });
          loading.push(version);
        }
      }
      for (const { version, file } of plan.versions) {
        loaded.push(await loadServedModel({ name, version, file, dir: plan.dir, draft: plan.draft, defaults: plan.defaults, threads: plan.threads }, this.log));
      }
    } catch (err) {
      await Promise.all(loaded.map((m) => m.close()));
      const reason = (err as Error).message;
      for (const v of loading) entry.versions.set(v, { state: "UNAVAILABLE", reason });
      entry.failure = loading.length ? undefined : reason;
      if (err instanceof ConfigError) throw err;
      throw new ModelLoadFailedError(`failed to load ${name}: ${reason}`, { cause: err });
    }
    // The swap: new versions serve from here; the old ones finish their queues and are released.
    const old = [...entry.versions.entries()].filter(([, e]) => e.state === "READY" && e.served);
    const keep = new Set(loaded.map((m) => m.version));
    entry.failure = undefined;
    for (const m of loaded) entry.versions.set(m.version, { state: "READY", reason: "", served: m });
    for (const [version, e] of old) if (!keep.has(version)) entry.versions.set(version, { state: "UNAVAILABLE", reason: "unloaded" });
    await Promise.all(old.map(([, e]) => e.served!.close()));
    for (const m of loaded) for (const fn of this.loadedListeners) fn(m);
    this.log.info(`${name}: loaded version${loaded.length > 1 ? "s" : ""} ${loaded.map((m) => m.version).join(", ")}${old.length ? " (reloaded)" : ""}`);
  }
}
