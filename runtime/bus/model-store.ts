/**
 * Fleet model rollout over NATS: model files in a JetStream Object Store
 * bucket per pipeline (named by their sha256), the version each stage should
 * run and what each worker runs in a KV bucket per pipeline.
 *
 * KV keys (bucket `fw_rollout_<pipeline>`):
 * - `want.<stage>`: the wanted version ({@link Wanted}); deleted = the
 *   pipeline file's own model.
 * - `worker.<stage>.<worker>`: one worker's report ({@link WorkerReport}),
 *   refreshed while it runs and deleted when it stops.
 *
 * `bun run models put|ls|rollback` (observe/models-cli.ts) writes the wanted
 * versions; {@link RolloutWorker} (used by infer-onnx on a NATS bus) follows
 * them, fetches the object into a local cache and hot-swaps it through the
 * stage's model lifecycle.
 */
import * as v from "valibot";
import { createHash } from "node:crypto";
import { hostname } from "node:os";
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { basename, join, resolve } from "node:path";
import { Kvm, KvWatchInclude, type KV } from "@nats-io/kv";
import { Objm, type ObjectStore } from "@nats-io/obj";
import type { NatsConnection } from "@nats-io/transport-node";
import { codedError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import type { LifecycleEvent, ModelStatus, ReloadResult } from "../core/model-status.ts";

/** A rollout could not be done (no JetStream, a refused object, a sha256 mismatch). */
export const RolloutError = codedError("RolloutError", "E_ROLLOUT");
export type RolloutError = InstanceType<typeof RolloutError>;

const safe = (name: string) => name.replace(/[^A-Za-z0-9_-]/g, "_");

/** The Object Store bucket holding a pipeline's model files. */
export function modelBucket(pipeline: string): string {
  return `fw_models_${safe(pipeline)}`;
}

/** The KV bucket holding a pipeline's wanted versions and worker reports. */
export function rolloutBucket(pipeline: string): string {
  return `fw_rollout_${safe(pipeline)}`;
}

/** Versions a stage keeps to roll back to. */
export const PREVIOUS_KEPT = 10;
/** How often a worker refreshes its report; `models ls` calls a report older than 3 of these stale. */
export const HEARTBEAT_MS = 10_000;

const Label = v.pipe(v.string(), v.regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, "letters, digits, . _ - (at most 64), starting with a letter or digit"));

/** One model version as a stage wants it. */
const VersionRecord = v.object({
  version: Label,
  /** Object name in the model bucket. */
  object: v.string(),
  sha256: v.pipe(v.string(), v.regex(/^[0-9a-f]{64}$/)),
  size: v.number(),
  /** The file name it was put from (the name it gets in each worker's cache). */
  name: v.string(),
  at: v.string(),
});
export type VersionRecord = v.InferOutput<typeof VersionRecord>;

/** The value of `want.<stage>`. */
export const Wanted = v.object({
  ...VersionRecord.entries,
  /** Set by a rollback: workers swap directly, without a canary (the version ran before). */
  rollback: v.optional(v.boolean()),
  /** Earlier versions, newest first (what `rollback` goes back to). */
  previous: v.array(VersionRecord),
});
export type Wanted = v.InferOutput<typeof Wanted>;

/** The value of `worker.<stage>.<worker>`. */
export const WorkerReport = v.object({
  stage: v.string(),
  worker: v.string(),
  host: v.string(),
  pid: v.number(),
  /** The rolled-out version this worker runs; null: the pipeline file's model. */
  version: v.nullable(v.string()),
  /** The model file's name. */
  model: v.string(),
  sha256: v.nullable(v.string()),
  /** The version it was last asked to run (null: the pipeline file's). */
  wanted: v.nullable(v.string()),
  /** loading: fetching or loading; canary: on trial; ok: runs the wanted version; rolled-back: its canary failed; failed: could not fetch or load it. */
  state: v.picklist(["loading", "canary", "ok", "rolled-back", "failed"]),
  error: v.optional(v.string()),
  at: v.string(),
});
export type WorkerReport = v.InferOutput<typeof WorkerReport>;

const wantKey = (stage: string) => `want.${stage}`;
const workerKey = (stage: string, worker: string) => `worker.${stage}.${safe(worker)}`;
const dec = new TextDecoder();

function parse<T>(schema: v.GenericSchema<unknown, T>, bytes: Uint8Array): T | undefined {
  try {
    const r = v.safeParse(schema, JSON.parse(dec.decode(bytes)));
    return r.success ? r.output : undefined;
  } catch {
    return undefined;
  }
}

/** The sha256 of `bytes`, as hex. */
export function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/**
 * Opens (creating where missing) a pipeline's rollout KV bucket.
 * @throws RolloutError when the server has no JetStream.
 * @example
 * const kv = await openRolloutKv(nc, "shop");
 */
export async function openRolloutKv(nc: NatsConnection, pipeline: string): Promise<KV> {
  try {
    return await new Kvm(nc).create(rolloutBucket(pipeline), { history: 5 });
  } catch (err) {
    throw noJetStream(err);
  }
}

function noJetStream(err: unknown): Error {
  const msg = (err as Error).message;
  if (/jetstream (is )?not enabled|no responders|503|timeout/i.test(msg)) {
    return new RolloutError("the NATS server has no JetStream: start nats-server with -js (or a jetstream {} block in its config)", { cause: err });
  }
  return new RolloutError(`JetStream: ${msg}`, { cause: err });
}

/** What `models ls` shows of one stage. */
export interface StageRollout {
  stage: string;
  wanted: Wanted | null;
  workers: WorkerReport[];
}

/**
 * Wanted versions and worker reports of every stage of a pipeline.
 * @example
 * for (const s of await readRollout(kv)) console.log(s.stage, s.wanted?.version, s.workers.length);
 */
export async function readRollout(kv: KV): Promise<StageRollout[]> {
  const stages = new Map<string, StageRollout>();
  const of = (stage: string) => stages.get(stage) ?? stages.set(stage, { stage, wanted: null, workers: [] }).get(stage)!;
  for await (const key of await kv.keys()) {
    const e = await kv.get(key);
    if (!e || e.operation !== "PUT" || !e.value.length) continue;
    if (key.startsWith("want.")) {
      const w = parse(Wanted, e.value);
      if (w) of(key.slice(5)).wanted = w;
    } else if (key.startsWith("worker.")) {
      const r = parse(WorkerReport, e.value);
      if (r) of(r.stage).workers.push(r);
    }
  }
  const list = [...stages.values()].sort((a, b) => a.stage.localeCompare(b.stage));
  for (const s of list) s.workers.sort((a, b) => a.worker.localeCompare(b.worker));
  return list;
}

/** The wanted version of `stage`, if any. */
export async function readWanted(kv: KV, stage: string): Promise<Wanted | null> {
  const e = await kv.get(wantKey(stage));
  return e && e.operation === "PUT" && e.value.length ? (parse(Wanted, e.value) ?? null) : null;
}

/** Writes the wanted version of `stage` (rollout: every worker follows it). */
export async function writeWanted(kv: KV, stage: string, w: Wanted): Promise<void> {
  await kv.put(wantKey(stage), JSON.stringify(w));
}

/** Back to the pipeline file's model on every worker of `stage`. */
export async function clearWanted(kv: KV, stage: string): Promise<void> {
  await kv.delete(wantKey(stage));
}

/**
 * Opens (creating where missing) a pipeline's model bucket.
 * @throws RolloutError when the server has no JetStream.
 */
export async function openModelBucket(nc: NatsConnection, pipeline: string): Promise<ObjectStore> {
  try {
    return await new Objm(nc).create(modelBucket(pipeline), { description: `framewire models of pipeline ${pipeline}` });
  } catch (err) {
    throw noJetStream(err);
  }
}

/**
 * Stores a model file's bytes under `sha256-<hex>` (once: the same content is
 * not uploaded again) and returns its record.
 * @example
 * const rec = await storeModel(os, "int8", "yolov5n-int8.onnx", bytes);
 */
export async function storeModel(os: ObjectStore, version: string, name: string, bytes: Uint8Array): Promise<VersionRecord> {
  const hex = sha256(bytes);
  const object = `sha256-${hex}`;
  const have = await os.info(object);
  if (!have || have.deleted || have.size !== bytes.length) {
    await os.putBlob({ name: object, description: name, metadata: { sha256: hex, file: name } }, bytes);
  }
  return { version, object, sha256: hex, size: bytes.length, name: basename(name), at: new Date().toISOString() };
}

/** The parts of a stage's model lifecycle a rollout drives. */
export interface RolloutTarget {
  status(): ModelStatus;
  reload(req: { file?: string; canary?: number | false }): Promise<ReloadResult>;
  /** Lifecycle events (promoted, rolled-back, ...) as they happen; returns a function that stops them. */
  onEvent(fn: (e: LifecycleEvent) => void): () => void;
}

export interface RolloutWorkerOptions {
  nc: NatsConnection;
  pipeline: string;
  stage: string;
  /** The model file of the pipeline file (what runs without a rollout). */
  baseFile: string;
  /** Folder for fetched model files (one sub-folder per sha256). */
  cacheDir: string;
  log: Logger;
  /** This process's worker id (StageContext.worker), so `models ls` names workers as status does; host-pid when absent. */
  worker?: string;
}

/** A version this worker has fetched (or found in its cache), as a file. */
interface Fetched {
  rec: VersionRecord;
  file: string;
}

/**
 * One worker's side of a rollout: on start, the wanted version's file (from
 * the cache, else fetched) to open the stage with; then it watches the
 * stage's wanted version, fetches each new one (checked against its sha256)
 * and reloads it through the lifecycle, reporting what runs in the KV bucket.
 * @example
 * const rollout = await RolloutWorker.open({ nc, pipeline: "shop", stage: "detect", baseFile, cacheDir, log });
 * const life = await ModelLifecycle.open((await rollout?.initialFile()) ?? baseFile, { ... });
 * rollout?.attach(life);
 */
export class RolloutWorker {
  readonly worker: string;
  private current: VersionRecord | null = null;
  private wanted: Wanted | null = null;
  private state: WorkerReport["state"] = "ok";
  private error?: string;
  /** Model file names by path, for the versions fetched. */
  private labels = new Map<string, string>();
  /** A canary of a rolled-out version on trial: its lifecycle version and record. */
  private trial?: { version: string; rec: VersionRecord };
  private target?: RolloutTarget;
  private os?: ObjectStore;
  private stops: (() => void)[] = [];
  private heartbeat?: ReturnType<typeof setInterval>;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(
    private kv: KV,
    private o: RolloutWorkerOptions,
  ) {
    this.worker = o.worker ?? `${safe(hostname()).slice(0, 40) || "host"}-${globalThis.process?.pid ?? 0}`;
  }

  /**
   * Opens the rollout KV bucket; resolves with undefined (and logs why) when
   * the server has no JetStream, so the stage runs without fleet rollout.
   */
  static async open(o: RolloutWorkerOptions): Promise<RolloutWorker | undefined> {
    try {
      return new RolloutWorker(await openRolloutKv(o.nc, o.pipeline), o);
    } catch (err) {
      o.log.info(`fleet rollout off: ${(err as Error).message}`);
      return undefined;
    }
  }

  /** The rolled-out version's label of a model file this worker fetched. */
  labelOf(file: string): string | undefined {
    return this.labels.get(resolve(file));
  }

  /**
   * The file of the stage's wanted version (cached or fetched), to start
   * on; undefined when none is wanted or it cannot be had (reported, the
   * pipeline file's model then runs).
   */
  async initialFile(): Promise<string | undefined> {
    this.wanted = await readWanted(this.kv, this.o.stage);
    if (!this.wanted) return undefined;
    try {
      const f = await this.fetch(this.wanted);
      this.current = f.rec;
      this.o.log.info(`starting on rolled-out version ${f.rec.version} (${f.rec.name})`);
      return f.file;
    } catch (err) {
      this.state = "failed";
      this.error = (err as Error).message;
      this.o.log.error(`rolled-out version ${this.wanted.version}: ${this.error}; starting on ${basename(this.o.baseFile)}`);
      return undefined;
    }
  }

  /** The file initialFile gave did not load: the pipeline file's model runs instead. */
  startFailed(reason: string): void {
    this.current = null;
    this.set("failed", reason);
  }

  /** Starts following the wanted version and reporting, on the stage's lifecycle. */
  attach(target: RolloutTarget): void {
    this.target = target;
    this.stops.push(target.onEvent((e) => this.onLifecycle(e)));
    void this.report();
    this.heartbeat = setInterval(() => void this.report(), HEARTBEAT_MS);
    let stopped = false;
    const watching = (async () => {
      const it = await this.kv.watch({ key: wantKey(this.o.stage), include: KvWatchInclude.LastValue });
      if (stopped) return it.stop();
      this.stops.push(() => it.stop());
      for await (const e of it) {
        const w = e.operation === "PUT" && e.value.length ? (parse(Wanted, e.value) ?? null) : null;
        if (e.operation === "PUT" && !w) {
          this.o.log.warn(`ignoring an unreadable wanted version in ${rolloutBucket(this.o.pipeline)} ${e.key}`);
          continue;
        }
        this.queue = this.queue.then(() => this.follow(w)).catch((err) => this.o.log.error(`rollout: ${(err as Error).message}`));
      }
    })();
    void watching.catch((err) => this.o.log.error(`rollout watch on ${rolloutBucket(this.o.pipeline)}: ${(err as Error).message}`));
    this.stops.push(() => (stopped = true));
  }

  /** Stops watching and deletes this worker's report. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.heartbeat);
    for (const s of this.stops.splice(0)) s();
    await this.queue.catch(() => {});
    await this.kv.delete(workerKey(this.o.stage, this.worker)).catch(() => {});
  }

  /** Brings this worker to `w` (null: the pipeline file's model). */
  private async follow(w: Wanted | null): Promise<void> {
    if (this.closed || !this.target) return;
    this.wanted = w;
    if ((w?.sha256 ?? null) === (this.current?.sha256 ?? null) && !this.trial) {
      // Already running it (a restart on the rolled-out version, or the watch's first value).
      this.set("ok");
      return this.report();
    }
    this.trial = undefined;
    this.set("loading");
    await this.report();
    let file: string;
    let rec: VersionRecord | null = null;
    try {
      if (w) {
        const f = await this.fetch(w);
        file = f.file;
        rec = f.rec;
      } else file = this.o.baseFile;
      const res = await this.target.reload({ file, ...(w === null || w.rollback ? { canary: false as const } : {}) });
      if (res.outcome === "canary") {
        this.trial = { version: res.version, rec: rec! };
        this.set("canary");
      } else {
        this.current = rec;
        this.set("ok");
      }
    } catch (err) {
      this.set("failed", (err as Error).message);
      this.o.log.error(`rollout of ${w ? `version ${w.version}` : basename(this.o.baseFile)} failed: ${this.error}; ${this.target.status().active.version} stays active`);
    }
    await this.report();
  }

  private onLifecycle(e: LifecycleEvent): void {
    const t = this.trial;
    if (!t || e.version !== t.version) return;
    if (e.kind === "promoted") {
      this.trial = undefined;
      this.current = t.rec;
      this.set("ok");
      void this.report();
    } else if (e.kind === "rolled-back") {
      this.trial = undefined;
      this.set("rolled-back", e.reason);
      void this.report();
    }
  }

  private set(state: WorkerReport["state"], error?: string): void {
    this.state = state;
    this.error = error;
  }

  /** The file of `rec`: from the cache when its content checks out, else fetched and checked. */
  private async fetch(rec: VersionRecord): Promise<Fetched> {
    const dir = join(resolve(this.o.cacheDir), rec.sha256);
    const file = join(dir, safeFile(rec.name));
    const cached = await readFile(file).catch(() => undefined);
    if (cached && sha256(cached) === rec.sha256) {
      this.o.log.info(`version ${rec.version}: ${file} from the local cache`);
    } else {
      if (cached) this.o.log.warn(`${file} does not match sha256 ${rec.sha256.slice(0, 12)}…: fetching it again`);
      this.os ??= await new Objm(this.o.nc).open(modelBucket(this.o.pipeline));
      let bytes: Uint8Array | null;
      try {
        bytes = await this.os.getBlob(rec.object);
      } catch (err) {
        throw new RolloutError(`fetching ${rec.object} from ${modelBucket(this.o.pipeline)}: ${(err as Error).message}`, { cause: err });
      }
      if (!bytes) throw new RolloutError(`${rec.object} is not in ${modelBucket(this.o.pipeline)}: put the model again`);
      const got = sha256(bytes);
      if (got !== rec.sha256) throw new RolloutError(`sha256 mismatch for version ${rec.version}: wanted ${rec.sha256}, ${rec.object} holds ${got}; refused`);
      await mkdir(dir, { recursive: true });
      const part = `${file}.${process.pid}.part`;
      await writeFile(part, bytes);
      await rename(part, file);
      this.o.log.info(`version ${rec.version}: fetched ${rec.name} (${bytes.length} bytes, sha256 ${got.slice(0, 12)}…) into ${file}`);
    }
    this.labels.set(file, rec.version);
    return { rec, file };
  }

  private async report(): Promise<void> {
    if (this.closed || !this.target) return;
    const active = this.target.status().active;
    const r: WorkerReport = {
      stage: this.o.stage,
      worker: this.worker,
      host: hostname(),
      pid: globalThis.process?.pid ?? 0,
      version: this.current?.version ?? null,
      model: active.model,
      sha256: this.current?.sha256 ?? null,
      wanted: this.wanted?.version ?? null,
      state: this.state,
      ...(this.error ? { error: this.error } : {}),
      at: new Date().toISOString(),
    };
    await this.kv.put(workerKey(this.o.stage, this.worker), JSON.stringify(r)).catch((err) => this.o.log.warn(`rollout report: ${(err as Error).message}`));
  }
}

/** A model's file name as it may be written in the cache. */
function safeFile(name: string): string {
  const b = basename(name).replace(/[^A-Za-z0-9._-]/g, "_");
  return b && b !== "." && b !== ".." ? b : "model.onnx";
}
