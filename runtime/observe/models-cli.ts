/**
 * `bun run models`: roll a model out to every worker of a stage over NATS
 * (JetStream Object Store + KV, see bus/model-store.ts).
 *   bun run models put FILE --nats URL --pipeline NAME --stage ID [--version LABEL] [--wait SECONDS]
 *   bun run models ls --nats URL --pipeline NAME [--json]
 *   bun run models rollback --stage ID --nats URL --pipeline NAME [--wait SECONDS]
 */
import * as v from "valibot";
import { parseArgs } from "node:util";
import { basename } from "node:path";
import { KvWatchInclude, type KV } from "@nats-io/kv";
import { NatsBus } from "../bus/nats.ts";
import {
  clearWanted,
  HEARTBEAT_MS,
  modelBucket,
  openModelBucket,
  openRolloutKv,
  PREVIOUS_KEPT,
  readRollout,
  readWanted,
  RolloutError,
  storeModel,
  WorkerReport,
  writeWanted,
  type StageRollout,
  type VersionRecord,
  type Wanted,
} from "../bus/model-store.ts";
import { ConfigError } from "../core/errors.ts";
import { createLogger } from "../core/log.ts";
import { env, exists, readBytes } from "../platform/index.ts";

export const MODELS_USAGE = `usage:
  bun run models put FILE --nats URL --pipeline NAME --stage ID [--version LABEL] [--wait SECONDS]
  bun run models ls --nats URL --pipeline NAME [--json]
  bun run models rollback --stage ID --nats URL --pipeline NAME [--wait SECONDS]`;

const LABEL = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/**
 * True when `bytes` parse as an ONNX ModelProto at the top level: valid
 * protobuf fields, an ir_version (1, varint) and a graph (7, bytes).
 * @example
 * looksLikeOnnx(await readBytes("models/yolov5n.onnx")); // true
 */
export function looksLikeOnnx(bytes: Uint8Array): boolean {
  let pos = 0;
  const varint = (): number | undefined => {
    let r = 0;
    let mul = 1;
    for (let i = 0; i < 10; i++) {
      if (pos >= bytes.length) return undefined;
      const b = bytes[pos++];
      r += (b & 0x7f) * mul;
      if (b < 0x80) return r;
      mul *= 128;
    }
    return undefined;
  };
  let ir = false;
  let graph = false;
  while (pos < bytes.length) {
    const tag = varint();
    if (tag === undefined || tag < 8) return false;
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (wire === 0) {
      if (varint() === undefined) return false;
      if (field === 1) ir = true;
    } else if (wire === 2) {
      const len = varint();
      if (len === undefined || pos + len > bytes.length) return false;
      pos += len;
      if (field === 7 && len > 0) graph = true;
    } else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else return false;
  }
  return pos === bytes.length && ir && graph;
}

const fresh = (r: WorkerReport, now = Date.now()) => now - Date.parse(r.at) < 3 * HEARTBEAT_MS;
const shortSha = (sha: string | null) => (sha ? sha.slice(0, 12) : "-");

/** One block per stage: its wanted version, then a row per worker. */
export function formatRollout(list: StageRollout[], pipeline: string, now = Date.now()): string {
  if (!list.length) return `no stage of pipeline ${pipeline} has reported (no infer-onnx worker ran on this NATS server with JetStream)`;
  const out: string[] = [];
  for (const s of list) {
    const w = s.wanted;
    out.push(
      `stage ${s.stage}: wanted ${w ? `${w.version} (${w.name}, sha256 ${shortSha(w.sha256)}, ${w.size} bytes, since ${w.at})` : "the pipeline file's model"}` +
        (w ? `; rollback to ${w.previous[0]?.version ?? "the pipeline file's model"}` : ""),
    );
    const rows = [["WORKER", "VERSION", "MODEL", "STATE", "WANTED", "SEEN", "ERROR"]];
    for (const r of s.workers) {
      const age = Math.max(0, Math.round((now - Date.parse(r.at)) / 1000));
      rows.push([r.worker, r.version ?? "(pipeline file)", r.model, r.state, r.wanted ?? "(pipeline file)", fresh(r, now) ? `${age} s ago` : `${age} s ago (stale)`, r.error ?? ""]);
    }
    if (rows.length === 1) out.push("  no workers");
    else {
      const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
      for (const r of rows) out.push("  " + r.map((x, c) => x.padEnd(widths[c])).join("  ").trimEnd());
    }
  }
  return out.join("\n");
}

/** Refuses a stage no worker of the pipeline has reported (a typo in --stage or --pipeline). */
function knownStage(list: StageRollout[], stage: string, pipeline: string, url: string): StageRollout {
  const s = list.find((x) => x.stage === stage);
  if (s && (s.wanted || s.workers.length)) return s;
  const seen = list.filter((x) => x.wanted || x.workers.length).map((x) => x.stage);
  throw new ConfigError(
    seen.length
      ? `unknown stage "${stage}" of pipeline ${pipeline}: its infer-onnx stages on ${url} are ${seen.join(", ")}; fix --stage`
      : `unknown stage "${stage}": no infer-onnx worker of pipeline ${pipeline} has reported on ${url}; check --pipeline (the name: in the pipeline file) and start its workers with --nats`,
  );
}

/**
 * Waits until every live worker of `stage` has settled on `label` (ok,
 * rolled-back or failed); prints each outcome. Resolves with true when all
 * run it.
 */
async function waitFor(kv: KV, stage: string, label: string | null, seconds: number): Promise<boolean> {
  const reports = new Map<string, WorkerReport>();
  const it = await kv.watch({ key: `worker.${stage}.>`, include: KvWatchInclude.LastValue });
  const timer = setTimeout(() => it.stop(), seconds * 1000);
  const settled = () => {
    const live = [...reports.values()].filter((r) => fresh(r));
    return live.length > 0 && live.every((r) => r.wanted === label && r.state !== "loading" && r.state !== "canary");
  };
  try {
    for await (const e of it) {
      if (e.operation !== "PUT" || !e.value.length) reports.delete(e.key);
      else {
        const r = v.safeParse(WorkerReport, JSON.parse(new TextDecoder().decode(e.value)));
        if (r.success) reports.set(e.key, r.output);
      }
      if (!e.delta && settled()) break;
    }
  } finally {
    clearTimeout(timer);
    it.stop();
  }
  const live = [...reports.values()].filter((r) => fresh(r));
  for (const r of live) console.log(`  ${r.worker}: ${r.state}${r.version === label ? "" : ` (runs ${r.version ?? "the pipeline file's model"})`}${r.error ? `: ${r.error}` : ""}`);
  if (!settled()) {
    console.error(`error: not every worker of stage ${stage} settled within ${seconds} s`);
    return false;
  }
  return live.every((r) => r.state === "ok" && r.version === label);
}

/**
 * Runs `models <op> ...`; returns the exit code (0 done, 1 a worker did not take it with --wait, 2 usage or setup).
 * @example
 * await runModels(["put", "models/yolov5n-int8.onnx", "--nats", "nats://127.0.0.1:4222", "--pipeline", "shop", "--stage", "detect", "--version", "int8"]);
 */
export async function runModels(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      nats: { type: "string" },
      pipeline: { type: "string" },
      stage: { type: "string" },
      version: { type: "string" },
      wait: { type: "string" },
      json: { type: "boolean" },
    },
  });
  const [op, ...rest] = positionals;
  if (!op || !["put", "ls", "rollback"].includes(op)) throw new ConfigError(`${op ? `unknown operation "${op}"` : "no operation given"}\n${MODELS_USAGE}`);
  if (!values.pipeline) throw new ConfigError(`--pipeline: name the pipeline (its name: in the pipeline file)\n${MODELS_USAGE}`);
  if (op !== "ls" && !values.stage) throw new ConfigError(`--stage: name the infer-onnx stage to roll out to\n${MODELS_USAGE}`);
  if (op === "put" && rest.length !== 1) throw new ConfigError(`put takes one model file\n${MODELS_USAGE}`);
  if (values.version !== undefined && !LABEL.test(values.version)) throw new ConfigError(`--version: "${values.version}" is not a label (letters, digits, . _ -, at most 64)`);
  const wait = values.wait === undefined ? undefined : Number(values.wait);
  if (wait !== undefined && !(wait > 0 && wait <= 600)) throw new ConfigError(`--wait: expected seconds between 0 and 600, got "${values.wait}"`);
  let bytes: Uint8Array | undefined;
  if (op === "put") {
    const file = rest[0];
    if (!(await exists(file))) throw new ConfigError(`${file}: no such file`);
    bytes = await readBytes(file);
    if (!looksLikeOnnx(bytes)) throw new ConfigError(`${file} is not an ONNX model (no ModelProto with a graph): give an .onnx file`);
  }
  const url = values.nats ?? env("NATS_URL") ?? "nats://127.0.0.1:4222";
  const shown = url.replace(/\/\/[^/@]*@/, "//***@");
  const give = new AbortController();
  const timer = setTimeout(() => give.abort(), 3000);
  let bus: NatsBus;
  try {
    bus = await NatsBus.connect({ url, name: "framewire models", log: createLogger("models", 40), signal: give.signal });
  } catch (err) {
    if (err instanceof ConfigError && / unreachable/.test(err.message)) throw new ConfigError(`no NATS server answers at ${shown}: start nats-server -js, or fix --nats`);
    throw err;
  } finally {
    clearTimeout(timer);
  }
  const pipeline = values.pipeline;
  try {
    let kv: KV;
    try {
      kv = await openRolloutKv(bus.nc, pipeline);
    } catch (err) {
      if (err instanceof RolloutError) throw new ConfigError(`${shown}: ${err.message}`);
      throw err;
    }
    const list = await readRollout(kv);
    if (op === "ls") {
      console.log(values.json ? JSON.stringify(list) : formatRollout(list, pipeline));
      return 0;
    }
    const stage = values.stage!;
    const known = knownStage(list, stage, pipeline, shown);
    const current = await readWanted(kv, stage);
    let label: string | null;
    if (op === "put") {
      const os = await openModelBucket(bus.nc, pipeline);
      const file = rest[0];
      const rec = await storeModel(os, values.version ?? "", basename(file), bytes!);
      rec.version = values.version ?? rec.sha256.slice(0, 12);
      const record = ({ version, object, sha256, size, name, at }: VersionRecord): VersionRecord => ({ version, object, sha256, size, name, at });
      // A wanted version no worker ever ran (refused, rolled back everywhere) is no version to go back to.
      const ran = current !== null && known.workers.some((w) => w.version === current.version);
      const previous = current ? [...(ran ? [record(current)] : []), ...current.previous] : [];
      const next: Wanted = { ...rec, previous: previous.filter((p) => p.sha256 !== rec.sha256).slice(0, PREVIOUS_KEPT) };
      await writeWanted(kv, stage, next);
      label = rec.version;
      console.log(`stage ${stage} of ${pipeline}: version ${rec.version} wanted (${rec.name}, ${rec.size} bytes, sha256 ${rec.sha256.slice(0, 12)}…, in ${modelBucket(pipeline)})`);
    } else {
      if (!current) throw new ConfigError(`stage ${stage} of ${pipeline} runs the pipeline file's model: nothing to roll back to`);
      const [back, ...older] = current.previous;
      if (back) {
        await writeWanted(kv, stage, { ...back, rollback: true, previous: older });
        label = back.version;
        console.log(`stage ${stage} of ${pipeline}: back to version ${back.version} (${back.name}) from ${current.version}`);
      } else {
        await clearWanted(kv, stage);
        label = null;
        console.log(`stage ${stage} of ${pipeline}: back to the pipeline file's model from ${current.version}`);
      }
    }
    if (wait === undefined) return 0;
    return (await waitFor(kv, stage, label, wait)) ? 0 : 1;
  } finally {
    await bus.close();
  }
}
