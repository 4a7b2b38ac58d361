/**
 * pipelines/pipeline.schema.json: a JSON Schema (draft-07) of pipeline files,
 * generated from the valibot schemas the loader checks (the top level's and
 * each operator's options), so that editors check and complete a pipeline
 * file as it is typed (`# yaml-language-server: $schema=./pipeline.schema.json`
 * on its first line) and any standard validator (ajv) can check one.
 * Written by `bun run docs`; tests/json-schema.test.ts keeps it equal to the
 * schemas.
 *
 * What JSON Schema cannot say is left permissive, never stricter than the
 * loader: a `v.check` adds nothing (its condition is code), a `v.custom` or a
 * pipe that transforms its input accepts any value there, so the JSON Schema
 * accepts everything `bun run validate` accepts, and `validate` stays the
 * final word (it also checks files, wiring and cross-field rules).
 *
 * `${VAR}` and `${VAR:-default}` are left as written: an editor sees the file,
 * not its environment. So wherever a value is not a free string, the schema
 * also accepts a placeholder: a string holding one (`retail.${STORE_ID}`) where
 * a constrained string stands, a value that is only a placeholder
 * (`fps: ${FPS:-10}`) where a number, boolean or list stands. Mappings and
 * lists of mappings are never placeholders (write them out).
 */
import * as v from "valibot";
import { toJsonSchema, type ConversionConfig, type JsonSchema } from "@valibot/to-json-schema";
import { codedError } from "../core/errors.ts";
import type { OperatorDefinition } from "../core/operator.ts";
import { PipelineSchema } from "./loader.ts";

/** A schema that cannot be turned into JSON Schema at all (never one that is merely relaxed). */
export const JsonSchemaError = codedError("JsonSchemaError", "E_JSON_SCHEMA");
export type JsonSchemaError = InstanceType<typeof JsonSchemaError>;

/** Where the generated schema lives, relative to the project root; pipeline files under pipelines/ point at it. */
export const PIPELINE_SCHEMA_FILE = "pipelines/pipeline.schema.json";

/** The first line of a shipped pipeline file that tells YAML editors (yaml-language-server) which schema to use. */
export const SCHEMA_MODELINE = "# yaml-language-server: $schema=./pipeline.schema.json";

/** A whole value that is one placeholder: `${FPS}`, `${FPS:-10}` (the loader then reads the value as YAML). */
const PLACEHOLDER = "^\\$\\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\\}$";
/** A string holding a placeholder somewhere: `retail.${STORE_ID:-store1}`. */
const INTERPOLATED = "\\$\\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\\}";

const PLACEHOLDER_REF = "#/definitions/placeholder";
const INTERPOLATED_REF = "#/definitions/interpolated";

/** Keys of a schema that only annotate it (kept on the outside when a placeholder alternative is added). */
const ANNOTATIONS = ["title", "description", "default", "examples"] as const;

/**
 * Descriptions of the top level and of a stage's keys, where the valibot
 * schemas carry none (the loader documents them in comments); a
 * `v.description` on the schema wins.
 */
const TOP_DESCRIPTIONS: Record<string, string> = {
  name: "The pipeline's name (letters, digits, _ and -); stages publish on fw.<name>.<stage id> unless they set out.",
  bus: '"memory" (the in-process bus, default), a NATS URL (nats:// or tls://, several comma-separated), or { url, user, password, token, creds, tls: { ca, cert, key }, reconnectBufferMB } (docs/distributed.md).',
  stages: "The stages in order: each reads the nearest earlier stage that produces output, unless it sets in.",
  http: "This process's HTTP server (health, metrics, status, live page, model control); off unless given (docs/observability.md).",
  operators: "User operators: module paths relative to this file, or package names (docs/writing-operators.md).",
};
const STAGE_DESCRIPTIONS: Record<string, string> = {
  id: "Unique stage id (letters, digits, _ and -, starting with a letter).",
  use: "The operator this stage runs (docs/operators.md), built in or listed under operators.",
  with: "The operator's options, checked by its schema.",
  in: "What this stage reads: a stage id, a NATS subject (wildcards allowed) or a list of them; default: the nearest earlier stage that produces output.",
  out: "The subject this stage publishes on (no wildcards); default fw.<pipeline>.<stage id>.",
  inbox: "Messages queued per stream before live frames are dropped (default 2).",
  replicas: "Workers of this stage in one process (they share the inbox).",
  route: "How senders in other processes pick among this stage's workers (NATS bus).",
  placement: "Where this stage is meant to run; --placement selects by it.",
  link: "How this stage's frames cross NATS to stages in other processes: raw pixels, or JPEG at quality.",
};

type Json = JsonSchema & Record<string, unknown>;

/**
 * How valibot schemas become JSON Schema here: the input side (before any
 * transform), unconvertible parts relaxed rather than guessed.
 */
const CONVERSION: ConversionConfig = {
  target: "draft-07",
  typeMode: "input",
  errorMode: "throw",
  // v.url() is `new URL()`, not JSON Schema's "uri" format, which plain ajv would refuse to compile without ajv-formats.
  ignoreActions: ["url"],
  overrideAction({ valibotAction, jsonSchema, errors }) {
    if (!errors) return undefined;
    const action = valibotAction as { type: string; requirement?: unknown };
    // A second pattern on one string: both must hold, so the second joins allOf.
    if (action.type === "regex" && action.requirement instanceof RegExp && !action.requirement.flags) {
      return { ...jsonSchema, allOf: [...(jsonSchema.allOf ?? []), { pattern: action.requirement.source }] };
    }
    // A pattern with flags (/i) means something else without them: no pattern at all.
    if (action.type === "regex" && action.requirement instanceof RegExp && jsonSchema.pattern === action.requirement.source) {
      const { pattern: _dropped, ...rest } = jsonSchema;
      return rest;
    }
    // v.check and anything else JSON Schema cannot express: no constraint.
    return { ...jsonSchema };
  },
  overrideSchema({ valibotSchema, jsonSchema, errors }) {
    // v.custom and other schemas without a JSON Schema counterpart: any value.
    if (!errors) return undefined;
    const described = (valibotSchema as { message?: unknown }).message;
    return typeof described === "string" ? { description: described } : {};
  },
};

/**
 * A copy of a valibot schema where every pipe that transforms its input
 * (v.transform, v.toNumber, ...) is replaced by "any value" with the pipe's
 * description: what such a pipe accepts is decided by code.
 */
function withoutTransforms(schema: v.GenericSchema): v.GenericSchema {
  const s = schema as unknown as Record<string, unknown> & { type: string; pipe?: { kind: string; type: string }[] };
  if (s.pipe) {
    const flat = flatten(s.pipe);
    if (flat.some((a) => a.kind === "transformation")) {
      const any = v.unknown();
      return { ...any, pipe: [any, ...flat.filter((a) => a.kind === "metadata")] } as unknown as v.GenericSchema;
    }
    return { ...s, pipe: s.pipe.map((item) => (item.kind === "schema" ? withoutTransforms(item as unknown as v.GenericSchema) : item)) } as unknown as v.GenericSchema;
  }
  const copy: Record<string, unknown> = { ...s };
  const sub = (x: unknown) => withoutTransforms(x as v.GenericSchema);
  if (s.entries) copy.entries = Object.fromEntries(Object.entries(s.entries as Record<string, unknown>).map(([k, e]) => [k, sub(e)]));
  if (s.item) copy.item = sub(s.item);
  if (Array.isArray(s.items)) copy.items = s.items.map(sub);
  if (s.wrapped) copy.wrapped = sub(s.wrapped);
  if (s.rest) copy.rest = sub(s.rest);
  if (s.value && typeof s.value === "object" && "kind" in s.value) copy.value = sub(s.value);
  if (Array.isArray(s.options) && s.options.every((o) => o && typeof o === "object" && "kind" in o)) copy.options = s.options.map(sub);
  return copy as unknown as v.GenericSchema;
}

function flatten(pipe: { kind: string; type: string; pipe?: unknown }[]): { kind: string; type: string }[] {
  return pipe.flatMap((item) => (item.pipe ? flatten(item.pipe as { kind: string; type: string }[]) : [item]));
}

/** Converts one valibot schema (without the $schema key: it is set once, at the top). */
function convert(schema: v.GenericSchema, what: string): Json {
  let out: Json;
  try {
    out = toJsonSchema(withoutTransforms(schema), CONVERSION) as Json;
  } catch (err) {
    throw new JsonSchemaError(`${what}: cannot be turned into JSON Schema: ${(err as Error).message}`, { cause: err });
  }
  delete out.$schema;
  return tidy(out) as Json;
}

/** Drops what the converter writes but says nothing (`required: []`). */
function tidy(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(tidy);
  if (!node || typeof node !== "object") return node;
  const out: Record<string, unknown> = {};
  for (const [k, val] of Object.entries(node)) {
    if (k === "required" && Array.isArray(val) && val.length === 0) continue;
    out[k] = k === "default" || k === "const" || k === "enum" || k === "examples" ? val : tidy(val);
  }
  return out;
}

/**
 * The same schema, also accepting `${VAR}` placeholders where interpolation
 * may stand (see the module comment).
 */
function allowPlaceholders(node: Json): Json {
  const out: Json = { ...node };
  const each = (x: unknown) => (x && typeof x === "object" ? allowPlaceholders(x as Json) : x);
  if (out.properties) out.properties = Object.fromEntries(Object.entries(out.properties).map(([k, s]) => [k, each(s)])) as Json["properties"];
  if (out.additionalProperties && typeof out.additionalProperties === "object") out.additionalProperties = each(out.additionalProperties) as Json;
  if (Array.isArray(out.items)) out.items = out.items.map(each) as Json[];
  else if (out.items && typeof out.items === "object") out.items = each(out.items) as Json;
  for (const k of ["anyOf", "oneOf", "allOf"] as const) if (Array.isArray(out[k])) out[k] = (out[k] as unknown[]).map(each) as Json[];

  const type = out.type;
  const items = out.items as Json | undefined;
  const listOfMappings = type === "array" && !Array.isArray(items) && (items?.type === "object" || (items?.anyOf as Json[] | undefined)?.some((s) => s.type === "object"));
  if (listOfMappings) return out;
  const constrainedString =
    type === "string" && ["pattern", "enum", "const", "maxLength", "format", "allOf"].some((k) => k in out);
  const ref = type === "number" || type === "integer" || type === "boolean" || type === "array" ? PLACEHOLDER_REF : constrainedString ? INTERPOLATED_REF : undefined;
  if (!ref) return out;
  const outer: Json = {};
  const inner: Json = {};
  for (const [k, val] of Object.entries(out)) ((ANNOTATIONS as readonly string[]).includes(k) ? outer : inner)[k] = val;
  return { ...outer, anyOf: [inner, { $ref: ref }] };
}

/** Adds descriptions where a schema's properties have none. */
function describe(node: Json, descriptions: Record<string, string>): Json {
  const properties = node.properties as Record<string, Json> | undefined;
  if (!properties) return node;
  for (const [k, text] of Object.entries(descriptions)) {
    const p = properties[k];
    if (p && p.description === undefined) properties[k] = { description: text, ...p };
  }
  return node;
}

/**
 * The JSON Schema of one operator's `with:` (placeholders allowed).
 * @throws JsonSchemaError when the schema has no JSON Schema form even relaxed.
 * @example
 * const nms = (await loadRegistry()).get("nms")!;
 * operatorOptionsJsonSchema(nms).properties.iou; // { description: ..., default: 0.45, anyOf: [{ type: "number", minimum: 0, maximum: 1 }, { $ref: "#/definitions/placeholder" }] }
 */
export function operatorOptionsJsonSchema(def: OperatorDefinition): Json {
  const schema = allowPlaceholders(convert(def.options, `operator ${def.name}'s options`));
  return { title: `${def.name} options`, description: `${def.kind}: ${def.description}`, ...schema };
}

/**
 * The JSON Schema of pipeline files for these operators: the top level, each
 * stage's keys, and its `with:` chosen by its `use:` (an if/then per
 * operator). `use:` must name one of them unless the file lists its own
 * `operators:` (whose options it cannot know: their `with:` is left open).
 * @throws JsonSchemaError when a schema has no JSON Schema form even relaxed.
 * @example
 * const schema = pipelineJsonSchema([...(await loadRegistry()).values()]);
 * new Ajv().compile(schema)(YAML.parse(text)); // true for a valid file
 */
export function pipelineJsonSchema(defs: OperatorDefinition[]): Json {
  const top = describe(allowPlaceholders(convert(PipelineSchema, "the pipeline file's top level")), TOP_DESCRIPTIONS);
  const stages = (top.properties as Record<string, Json>).stages;
  const stage = describe({ ...(stages.items as Json) }, STAGE_DESCRIPTIONS);
  const stageProps = stage.properties as Record<string, Json>;
  stageProps.with = { description: stageProps.with.description, anyOf: [{ type: "object" }, { type: "null" }] };
  stageProps.use = { ...stageProps.use, examples: defs.map((d) => d.name) };

  const names = defs.map((d) => d.name);
  const definitions: Record<string, Json> = {
    placeholder: { description: "A ${VAR} or ${VAR:-default} placeholder standing for the whole value (read as YAML once substituted).", type: "string", pattern: PLACEHOLDER },
    interpolated: { description: "A string with ${VAR} or ${VAR:-default} placeholders in it.", type: "string", pattern: INTERPOLATED },
    stage,
  };
  const cases: Json[] = [];
  for (const def of defs) {
    const key = `options.${def.name}`;
    definitions[key] = operatorOptionsJsonSchema(def);
    // `with:` may be left out (or null) only when the options have no required key and pass empty.
    const emptyOk = v.safeParse(def.options, {}).success;
    const ref: Json = { $ref: `#/definitions/${key}` };
    cases.push({
      if: { properties: { use: { const: def.name } }, required: ["use"] },
      then: emptyOk ? { properties: { with: { anyOf: [ref, { type: "null" }] } } } : { properties: { with: ref }, required: ["with"] },
    });
  }
  if (cases.length) stage.allOf = cases;

  const { properties, ...rest } = top;
  return {
    $schema: "http://json-schema.org/draft-07/schema#",
    title: "framewire pipeline file",
    description:
      "Generated from the operators' valibot schemas by `bun run docs`; do not edit. `bun run validate` has the final word (it also checks files, wiring and rules across fields). ${VAR} / ${VAR:-default} placeholders are accepted where a value may be interpolated.",
    ...rest,
    properties: { ...properties, stages: { ...stages, items: { $ref: "#/definitions/stage" } } },
    // Without an operators: list, use: must name a built-in operator.
    ...(names.length
      ? { if: { not: { required: ["operators"] } }, then: { properties: { stages: { type: "array", items: { type: "object", properties: { use: { enum: names } } } } } } }
      : {}),
    definitions,
  };
}

/**
 * The text of pipelines/pipeline.schema.json for these operators (2-space JSON, newline at the end).
 * @example
 * writeFileSync(PIPELINE_SCHEMA_FILE, pipelineJsonSchemaText([...(await loadRegistry()).values()]));
 */
export function pipelineJsonSchemaText(defs: OperatorDefinition[]): string {
  return JSON.stringify(pipelineJsonSchema(defs), null, 2) + "\n";
}
