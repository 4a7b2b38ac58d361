import * as v from "valibot";
import { isMap, isScalar, isSeq, LineCounter, parse as parseYamlValue, parseDocument, visit, type Document } from "yaml";
import { PipelineFileError, type FileIssue } from "../core/errors.ts";
import { HttpSchema, type HttpOptions } from "./http-options.ts";
import { open } from "node:fs/promises";
import { clip, describeIssue, formatPath, MAX_QUOTED_VALUE } from "./issues.ts";
import type { OperatorDefinition } from "../core/operator.ts";
import { importOperator, type Registry } from "./registry.ts";
import { checkSubject, subjectMatches } from "../core/subject.ts";
import { interpolate } from "./interpolate.ts";

const Subject = v.pipe(
  v.string(),
  v.check((s) => !checkSubject(s, true), "expected a stage id or a NATS subject"),
);

const StageSchema = v.strictObject({
  id: v.pipe(v.string(), v.regex(/^[A-Za-z][\w-]*$/, "expected an id of letters, digits, _ and - (starting with a letter)")),
  use: v.string(),
  with: v.optional(v.nullable(v.record(v.string(), v.unknown()))),
  in: v.optional(v.union([Subject, v.pipe(v.array(Subject), v.minLength(1))])),
  out: v.optional(v.pipe(v.string(), v.check((s) => !checkSubject(s, false), "expected a NATS subject without wildcards"))),
  inbox: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(10_000))),
  /** Workers of this stage in one process (they share the inbox). */
  replicas: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(64)), 1),
  /** How senders in other processes pick among this stage's workers (NATS bus). */
  route: v.optional(v.picklist(["queue", "least-loaded", "prefer-local"]), "queue"),
  /** Where this stage is meant to run; `--placement` selects by it. */
  placement: v.optional(v.picklist(["edge", "cloud", "any"]), "any"),
  /** How this stage's frames cross NATS to stages in other processes: raw pixels, or JPEG at `quality`. */
  link: v.optional(
    v.strictObject({
      encoding: v.optional(v.picklist(["raw", "jpeg"]), "raw"),
      quality: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(100)), 85),
    }),
  ),
});

/** `bus:` as an object: a NATS server with credentials, TLS and a reconnect buffer (docs/distributed.md). */
export const NatsBusSchema = v.strictObject({
  url: v.pipe(v.string(), v.regex(/^(nats|tls):\/\//, "expected a nats:// or tls:// URL (several comma-separated)")),
  user: v.optional(v.string()),
  password: v.optional(v.string()),
  token: v.optional(v.string()),
  /** A .creds file (JWT and nkey seed). */
  creds: v.optional(v.string()),
  /** PEM files: the CA to trust; a client certificate and key for mutual TLS. */
  tls: v.optional(v.strictObject({ ca: v.optional(v.string()), cert: v.optional(v.string()), key: v.optional(v.string()) })),
  /** MiB of messages kept while disconnected; past it live frames are dropped and other messages wait. */
  reconnectBufferMB: v.optional(v.pipe(v.number(), v.minValue(0), v.maxValue(4096))),
  /** Signs control messages (adverts, end of stream) with HMAC-SHA256; default $FRAMEWIRE_CONTROL_KEY (docs/distributed.md). */
  controlKey: v.optional(v.pipe(v.string(), v.minLength(16, "expected a key of at least 16 characters"))),
});
export type NatsConfig = Omit<v.InferOutput<typeof NatsBusSchema>, "url">;

/** The file's top level; each stage's `with` is checked by its operator's schema. */
export const PipelineSchema = v.strictObject({
  name: v.pipe(v.string(), v.regex(/^[A-Za-z][\w-]*$/, "expected a name of letters, digits, _ and -")),
  /** "memory", a NATS URL, or an object checked by NatsBusSchema (so its errors point inside it). */
  bus: v.optional(v.union([v.string(), v.record(v.string(), v.unknown())]), "memory"),
  stages: v.pipe(v.array(StageSchema), v.minLength(1, "expected at least one stage")),
  /** This process's HTTP server (health, metrics, status, live page, model control); off unless given. */
  http: v.optional(HttpSchema),
  /** User operators: module paths relative to this file, or package names (docs/writing-operators.md). */
  operators: v.optional(v.array(v.pipe(v.string(), v.minLength(1)))),
});

export interface StageSpec {
  id: string;
  def: OperatorDefinition;
  options: unknown;
  /** Subjects this stage consumes (empty for sources). */
  inputs: string[];
  /** Subject this stage publishes to (unused by sinks). */
  output: string;
  inboxSize: number;
  replicas: number;
  route: "queue" | "least-loaded" | "prefer-local";
  placement: "edge" | "cloud" | "any";
  /** Wire encoding of this stage's output on NATS. */
  link?: { encoding: "raw" | "jpeg"; quality: number };
  line: number;
}

export interface PipelineSpec {
  name: string;
  file: string;
  /** "memory" or the NATS URL. */
  bus: string;
  /** Credentials, TLS and buffering from an object `bus:`. */
  nats?: NatsConfig;
  stages: StageSpec[];
  http?: HttpOptions;
  /** Every operator this file can use: the built-ins and its own `operators:`. */
  registry: Registry;
}

const DEFAULT_INBOX = 2;
/**
 * A sink's own queue per stream: deep enough that a slow or failing sink
 * (a webhook that hangs, a JetStream outage) works off its own backlog
 * without holding back the stages or the other sinks; its live frames drop
 * from its own queue only.
 */
const DEFAULT_SINK_INBOX = 32;

/** Output subject of a stage unless `out` says otherwise. */
export function stageSubject(pipeline: string, stage: string): string {
  return `fw.${pipeline}.${stage}`;
}

/** Largest pipeline file read (1 MiB): the shipped ones are a few KiB; a 50 MB value would cost gigabytes to parse. */
export const MAX_PIPELINE_FILE_BYTES = 1024 * 1024;

function tooLarge(file: string, size: string): PipelineFileError {
  return new PipelineFileError(file, [
    { line: 1, column: 1, path: "", message: `the file is ${size}, over the ${MAX_PIPELINE_FILE_BYTES / 1024 / 1024} MiB (${MAX_PIPELINE_FILE_BYTES} bytes) limit for pipeline files` },
  ]);
}

/**
 * A pipeline file's text, read no further than the size limit (a file, a
 * pipe or a device alike): nothing past the limit is ever held in memory.
 * @throws PipelineFileError when the file is larger than {@link MAX_PIPELINE_FILE_BYTES}.
 */
async function readPipelineText(file: string): Promise<string> {
  const handle = await open(file, "r");
  try {
    const st = await handle.stat();
    if (st.isFile() && st.size > MAX_PIPELINE_FILE_BYTES) throw tooLarge(file, `${st.size} bytes`);
    const buf = new Uint8Array(MAX_PIPELINE_FILE_BYTES + 1);
    let n = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buf, n, buf.length - n, null);
      if (bytesRead === 0) break;
      n += bytesRead;
      if (n > MAX_PIPELINE_FILE_BYTES) throw tooLarge(file, `more than ${MAX_PIPELINE_FILE_BYTES} bytes`);
    }
    return new TextDecoder().decode(buf.subarray(0, n));
  } finally {
    await handle.close();
  }
}

/**
 * Reads, interpolates and validates a pipeline file.
 * @throws PipelineFileError listing every problem with file, line and field path (also for a file over 1 MiB).
 * @example
 * const spec = await loadPipeline("pipelines/demo.yaml", await loadRegistry());
 */
/**
 * Which stages this process runs (`--stages`, `--placement`): only their
 * options are checked, so a node needs only the files its own stages name
 * (an edge box without the model file runs ingest).
 */
export interface StageSelection {
  stages?: string[];
  placement?: "edge" | "cloud";
}

export async function loadPipeline(
  file: string,
  registry: Registry,
  env: (k: string) => string | undefined = (k) => process.env[k],
  select?: StageSelection,
): Promise<PipelineSpec> {
  const text = await readPipelineText(file);
  return parsePipeline(text, file, await withUserOperators(text, file, registry), env, select);
}

/**
 * The registry plus the operators a file lists under `operators:`, imported
 * relative to the file. A module that cannot be found or loaded, or whose
 * name clashes with a built-in or another user operator, is an error at its
 * line.
 */
async function withUserOperators(text: string, file: string, registry: Registry): Promise<Registry> {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false });
  if (doc.errors.length || !isMap(doc.contents)) return registry; // parsePipeline reports these
  const list = doc.get("operators", true);
  if (!isSeq(list)) return registry; // absent, or the schema reports the wrong type
  const issues: FileIssue[] = [];
  const merged = new Map(registry);
  const from = new Map<string, string>();
  for (const [i, item] of list.items.entries()) {
    if (!isScalar(item) || typeof item.value !== "string") continue;
    const ref = item.value;
    const note = (message: string) => {
      const pos = lines.linePos(item.range?.[0] ?? 0);
      issues.push({ line: pos.line, column: pos.col, path: `operators[${i}]`, message });
    };
    try {
      for (const def of await importOperator(ref, file)) {
        if (registry.has(def.name)) note(`operator "${def.name}" (${ref}) clashes with the built-in operator of that name: rename it`);
        else if (from.has(def.name)) note(`operator "${def.name}" is defined twice (${from.get(def.name)} and ${ref})`);
        else {
          merged.set(def.name, def);
          from.set(def.name, ref);
        }
      }
    } catch (err) {
      note((err as Error).message);
    }
  }
  if (issues.length) throw new PipelineFileError(file, issues);
  return merged;
}

/**
 * Interpolates and validates pipeline text (what {@link loadPipeline} does after reading the file).
 * @throws PipelineFileError listing every problem, each message cut to a few hundred characters; text over 1 MiB is refused unparsed.
 * @example
 * const spec = parsePipeline("name: d\nstages:\n  - { id: cam, use: ingest, with: { url: a.mp4 } }\n", "inline.yaml", registry, (k) => process.env[k]);
 */
export function parsePipeline(text: string, file: string, registry: Registry, env: (k: string) => string | undefined, select?: StageSelection): PipelineSpec {
  if (text.length > MAX_PIPELINE_FILE_BYTES || (text.length * 3 > MAX_PIPELINE_FILE_BYTES && new TextEncoder().encode(text).length > MAX_PIPELINE_FILE_BYTES)) {
    throw tooLarge(file, `${new TextEncoder().encode(text).length} bytes`);
  }
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const issues: FileIssue[] = [];
  const at = (offset: number, path: string, message: string) => {
    const pos = lines.linePos(offset);
    issues.push({ line: pos.line, column: pos.col, path: clip(path, MAX_QUOTED_VALUE * 2), message: clip(message) });
  };
  const fail = () => new PipelineFileError(file, issues);

  for (const e of doc.errors) at(e.pos[0], "", e.message.split("\n")[0]);
  if (issues.length) throw fail();
  if (!isMap(doc.contents)) {
    at(0, "", "expected a mapping with name, stages (and optionally bus)");
    throw fail();
  }

  interpolateScalars(doc, env, at);
  if (issues.length) throw fail();

  const data = toData(doc, at);
  if (issues.length) throw fail();
  const top = v.safeParse(PipelineSchema, data, { abortEarly: false });
  if (!top.success) {
    for (const i of top.issues) reportIssue(doc, at, i, [], PipelineSchema);
    throw fail();
  }
  const p = top.output;
  let bus: v.InferOutput<typeof NatsBusSchema> = { url: "memory" };
  if (typeof p.bus === "string") bus.url = p.bus;
  else {
    const r = v.safeParse(NatsBusSchema, p.bus, { abortEarly: false });
    if (r.success) bus = r.output;
    else for (const i of r.issues) reportIssue(doc, at, i, ["bus"], NatsBusSchema);
  }

  // Per-stage: operator exists, options valid, ids unique.
  const seen = new Set<string>();
  const resolved: { def: OperatorDefinition; options: unknown }[] = [];
  p.stages.forEach((s, i) => {
    if (seen.has(s.id)) reportAt(doc, at, ["stages", i, "id"], `duplicate stage id "${s.id}"`);
    seen.add(s.id);
    const def = registry.get(s.use);
    if (!def) {
      const hint = suggest(s.use, [...registry.keys()]);
      reportAt(doc, at, ["stages", i, "use"], `unknown operator "${clip(s.use, MAX_QUOTED_VALUE)}"${hint ? ` (did you mean "${hint}"?)` : ""}; known: ${[...registry.keys()].join(", ")}`);
      return;
    }
    const local = !select || (select.stages ? select.stages.includes(s.id) : s.placement === select.placement || s.placement === "any");
    if (!local) {
      // Another node runs it: its options (model files, paths) are that node's to check.
      resolved[i] = { def, options: s.with ?? {} };
      return;
    }
    const r = v.safeParse(def.options, s.with ?? {}, { abortEarly: false });
    if (!r.success) for (const iss of r.issues) reportIssue(doc, at, iss, ["stages", i, "with"], def.options);
    else resolved[i] = { def, options: r.output };
    // Operators inside options (infer-dispatch's variants): checked here too, at their own line.
    checkNested(s.with, ["stages", i, "with"], registry, (iss, prefix, schema) => reportIssue(doc, at, iss, prefix, schema));
  });
  if (issues.length) throw fail();

  // Wiring: explicit in/out, otherwise the nearest earlier stage that produces output.
  const ids = new Map(p.stages.map((s) => [s.id, s]));
  const subjectOf = (id: string) => ids.get(id)?.out ?? stageSubject(p.name, id);
  let upstream: string | undefined;
  const stages: StageSpec[] = p.stages.map((s, i) => {
    const { def, options } = resolved[i];
    if (def.kind === "source" && s.replicas > 1) reportAt(doc, at, ["stages", i, "replicas"], "a source cannot have replicas");
    if (def.stateful && s.replicas > 1) reportAt(doc, at, ["stages", i, "replicas"], `${def.name} keeps per-stream state: several replicas would split a stream's frames between them`);
    if (def.stateful && s.route !== "queue") reportAt(doc, at, ["stages", i, "route"], `${def.name} keeps per-stream state: run one worker of it (route: queue), not ${s.route}`);
    let inputs: string[] = [];
    if (def.kind === "source") {
      if (s.in) reportAt(doc, at, ["stages", i, "in"], `a source (${def.name}) takes no input`);
    } else if (s.in) {
      inputs = (Array.isArray(s.in) ? s.in : [s.in]).map((x) => (ids.has(x) ? subjectOf(x) : x));
    } else if (upstream) {
      inputs = [upstream];
    } else {
      reportAt(doc, at, ["stages", i], `stage "${s.id}" has no input: put a source before it or set "in"`);
    }
    const output = subjectOf(s.id);
    if (def.kind !== "sink") upstream = output;
    return { id: s.id, def, options, inputs, output, inboxSize: s.inbox ?? (def.kind === "sink" ? DEFAULT_SINK_INBOX : DEFAULT_INBOX), replicas: s.replicas, route: s.route, placement: s.placement, link: s.link, line: lineOf(doc, lines, ["stages", i]) };
  });
  if (!stages.some((s) => s.def.kind === "source")) reportAt(doc, at, ["stages"], "no source stage: the pipeline would never receive a frame");
  const cycle = findCycle(stages);
  if (cycle) reportAt(doc, at, ["stages", stages.indexOf(cycle[0]), "in"], `stages ${[...cycle, cycle[0]].map((s) => s.id).join(" → ")} form a cycle: every message would go round forever`);
  if (issues.length) throw fail();
  const { url, ...nats } = bus;
  return { name: p.name, file, bus: url, ...(typeof p.bus === "object" ? { nats } : {}), stages, ...(p.http ? { http: p.http } : {}), registry };
}

/**
 * Operator configurations nested in a stage's options — objects `{ use:
 * <operator>, with: {...} }`, such as infer-dispatch's variants — have their
 * `with` checked against that operator's schema (model files included), so
 * `validate` reports them with file:line like a stage's own options.
 * @example
 * checkNested({ variants: [{ id: "a", use: "infer-onnx", with: { model: "nope.onnx" } }] }, ["stages", 2, "with"], registry, report);
 * // report(issue "model file not found", ["stages", 2, "with", "variants", 0, "with"], infer-onnx's schema)
 */
export function checkNested(
  value: unknown,
  keys: (string | number)[],
  registry: Registry,
  report: (issue: v.BaseIssue<unknown>, prefix: (string | number)[], schema: v.GenericSchema) => void,
  depth = 0,
): void {
  if (depth > 8 || !value || typeof value !== "object") return;
  if (Array.isArray(value)) {
    value.forEach((x, i) => checkNested(x, [...keys, i], registry, report, depth + 1));
    return;
  }
  const o = value as Record<string, unknown>;
  const def = typeof o.use === "string" ? registry.get(o.use) : undefined;
  if (def && (o.with === undefined || (o.with !== null && typeof o.with === "object" && !Array.isArray(o.with)))) {
    const r = v.safeParse(def.options, o.with ?? {}, { abortEarly: false });
    if (!r.success) for (const iss of r.issues) report(iss, [...keys, "with"], def.options);
  }
  for (const [k, x] of Object.entries(o)) checkNested(x, [...keys, k], registry, report, depth + 1);
}

/** A cycle of stages through in/out (each consumes what the next-to-last produced), or undefined. */
function findCycle(stages: StageSpec[]): StageSpec[] | undefined {
  const feeds = (from: StageSpec, to: StageSpec) => from.def.kind !== "sink" && to.inputs.some((i) => subjectMatches(i, from.output));
  const state = new Map<StageSpec, 1 | 2>();
  const path: StageSpec[] = [];
  const visit = (s: StageSpec): StageSpec[] | undefined => {
    state.set(s, 1);
    path.push(s);
    for (const next of stages) {
      if (!feeds(s, next)) continue;
      if (state.get(next) === 1) return path.slice(path.indexOf(next));
      if (!state.has(next)) {
        const found = visit(next);
        if (found) return found;
      }
    }
    path.pop();
    state.set(s, 2);
    return undefined;
  };
  for (const s of stages) {
    if (state.has(s)) continue;
    const found = visit(s);
    if (found) return found;
  }
  return undefined;
}

type At = (offset: number, path: string, message: string) => void;

/**
 * The document as plain data. yaml throws (rather than reports) on aliases it
 * will not expand: one used before its anchor, or an alias bomb past its
 * limit; those become issues at the alias.
 */
function toData(doc: Document, at: At): unknown {
  try {
    return doc.toJS();
  } catch (err) {
    const message = (err as Error).message;
    let offset = 0;
    visit(doc, {
      Alias(_key, node) {
        if (!offset || message.endsWith(`: ${node.source}`)) offset = node.range?.[0] ?? 0;
        if (message.endsWith(`: ${node.source}`)) return visit.BREAK;
      },
    });
    at(offset, "", message);
  }
}

/** Replaces `${VAR}` / `${VAR:-default}` in scalars; a scalar that is only a placeholder takes the value's YAML type. */
function interpolateScalars(doc: Document, env: (k: string) => string | undefined, at: At): void {
  visit(doc, {
    Scalar(_key, node, path) {
      if (typeof node.value !== "string" || !node.value.includes("${")) return;
      const result = interpolate(node.value, env);
      if (typeof result !== "string") {
        at(node.range?.[0] ?? 0, pathFromAncestors(path, node), result.error);
        return;
      }
      const whole = /^\$\{[^}]+\}$/.test(node.value) && node.type === "PLAIN";
      node.value = whole ? typedValue(result) : result;
    },
  });
}

/**
 * A substituted value read as YAML (`5` → 5, `true` → true, `[a, b]` → list).
 * Text that YAML would reject (`@x`) or rewrite (`a #b` loses its "comment")
 * stays the literal string.
 */
function typedValue(text: string): unknown {
  try {
    const value = parseYamlValue(text);
    return value === null || typeof value === "string" ? text : value;
  } catch {
    return text;
  }
}

function pathFromAncestors(ancestors: readonly unknown[], leaf: unknown): string {
  const keys: (string | number)[] = [];
  const chain = [...ancestors, leaf];
  for (let i = 0; i < chain.length - 1; i++) {
    const parent: any = chain[i];
    const child = chain[i + 1];
    if (parent?.items && Array.isArray(parent.items)) {
      const idx = parent.items.indexOf(child);
      if (idx >= 0 && !isMap(parent)) keys.push(idx);
    } else if (parent?.key !== undefined && parent.value === child && isScalar(parent.key)) {
      keys.push(String(parent.key.value));
    }
  }
  return formatPath(keys);
}

function reportIssue(doc: Document, at: At, issue: v.BaseIssue<unknown>, prefix: (string | number)[], schema: v.GenericSchema): void {
  const keys = [...prefix, ...(issue.path ?? []).map((p) => p.key as string | number)];
  const message = describeIssue(issue, schema);
  // An unknown key is where the key is written, not where its (maybe multi-line) value starts.
  const key = message.startsWith("unknown key") ? keyOffset(doc, keys) : undefined;
  if (key !== undefined) at(key, formatPath(keys), message);
  else reportAt(doc, at, keys, message);
}

function keyOffset(doc: Document, keys: (string | number)[]): number | undefined {
  const parent: any = doc.getIn(keys.slice(0, -1), true);
  const pair = parent?.items?.find?.((it: any) => isScalar(it?.key) && it.key.value === keys.at(-1));
  return pair?.key?.range?.[0];
}

/** Reports at the deepest node of `keys` that exists in the document. */
function reportAt(doc: Document, at: At, keys: (string | number)[], message: string): void {
  at(offsetOf(doc, keys), formatPath(keys), message);
}

function offsetOf(doc: Document, keys: (string | number)[]): number {
  for (let n = keys.length; n >= 0; n--) {
    const node: any = doc.getIn(keys.slice(0, n), true);
    if (node?.range) return node.range[0];
    // A key with a null value has no node: point at the key itself.
    if (n > 0) {
      const parent: any = doc.getIn(keys.slice(0, n - 1), true);
      const pair = parent?.items?.find?.((it: any) => isScalar(it?.key) && it.key.value === keys[n - 1]);
      if (pair?.key?.range) return pair.key.range[0];
    }
  }
  return 0;
}

function lineOf(doc: Document, lines: LineCounter, keys: (string | number)[]): number {
  return lines.linePos(offsetOf(doc, keys)).line;
}

/** Closest known name by edit distance, if close enough to be a typo. */
/** The known word closest to `word` by edit distance, when close enough to be a typo. */
export function suggest(word: string, known: string[]): string | undefined {
  // No name is that long: not a typo, and the edit distance would cost length × names.
  if (word.length > 64) return undefined;
  let best: string | undefined;
  let bestD = Math.max(2, Math.floor(word.length / 3)) + 1;
  for (const k of known) {
    const d = editDistance(word, k);
    if (d < bestD) [best, bestD] = [k, d];
  }
  return best;
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0];
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j];
      row[j] = Math.min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length];
}
