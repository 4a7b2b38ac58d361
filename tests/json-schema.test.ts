/**
 * pipelines/pipeline.schema.json: generated from the operators' valibot
 * schemas, equal to what is committed, referenced from every shipped
 * pipeline, and used by a standard validator (ajv) that accepts the shipped
 * files and rejects broken ones, agreeing with the loader.
 */
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import Ajv, { type ErrorObject, type ValidateFunction } from "ajv";
import * as v from "valibot";
import { isScalar, parse as parseYaml, parseDocument, visit } from "yaml";
import { defineOperator } from "../runtime/core/operator.ts";
import { interpolate } from "../runtime/spec/interpolate.ts";
import { operatorOptionsJsonSchema, PIPELINE_SCHEMA_FILE, pipelineJsonSchema, pipelineJsonSchemaText, SCHEMA_MODELINE } from "../runtime/spec/json-schema.ts";
import { loadRegistry } from "../runtime/spec/registry.ts";
import { parse, parseError } from "./support/pipeline.ts";
import { repoRoot } from "./support/paths.ts";

const defs = [...(await loadRegistry()).values()];
const pipelinesDir = join(repoRoot, "pipelines");
const shipped = readdirSync(pipelinesDir).filter((f) => /\.ya?ml$/.test(f)).sort();

/** What ajv says while compiling: its default strict mode, so a schema ajv finds questionable shows up here. */
const compileNotes: string[] = [];
function compile(schema: object): ValidateFunction {
  const note = (...args: unknown[]) => void compileNotes.push(args.map(String).join(" "));
  // strictTuples off: valibot's tuple accepts (and drops) extra items, so the points' tuples are open-ended on purpose.
  const ajv = new Ajv({ allErrors: true, strictTuples: false, logger: { log: note, warn: note, error: note } });
  return ajv.compile(schema);
}
const validate = compile(JSON.parse(readFileSync(join(repoRoot, PIPELINE_SCHEMA_FILE), "utf8")));

/** The file's data as an editor sees it: YAML parsed, `${VAR:-default}` left as written. */
const raw = (text: string) => parseYaml(text) as unknown;

/**
 * The file's data with every placeholder replaced by its default, as the
 * loader does with an empty environment (a value that is only a placeholder
 * takes the YAML type of what it expands to).
 */
function withDefaults(text: string): unknown {
  const doc = parseDocument(text);
  visit(doc, {
    Scalar(_k, node) {
      if (typeof node.value !== "string" || !node.value.includes("${")) return;
      const out = interpolate(node.value, () => undefined);
      if (typeof out !== "string") throw new Error(out.error);
      const whole = /^\$\{[^}]+\}$/.test(node.value) && node.type === "PLAIN";
      const typed = whole ? parseYaml(out) : out;
      node.value = whole && typed !== null && typeof typed !== "string" ? typed : out;
    },
  });
  return doc.toJS();
}

/** ajv's errors as "instancePath keyword (detail)" lines, to match on. */
function errors(data: unknown): string[] {
  if (validate(data)) return [];
  return (validate.errors ?? []).map((e: ErrorObject) => `${e.instancePath} ${e.keyword}${e.params && Object.keys(e.params).length ? ` ${JSON.stringify(e.params)}` : ""}`);
}

describe("the generated file", () => {
  test("pipelines/pipeline.schema.json is what the operators' schemas give (run `bun run docs` after changing an operator)", () => {
    expect(readFileSync(join(repoRoot, PIPELINE_SCHEMA_FILE), "utf8")).toBe(pipelineJsonSchemaText(defs));
  });

  test("ajv compiles it in its (default) strict mode without a single note", () => {
    expect(compileNotes).toEqual([]);
  });

  test("every shipped pipeline file names it on its first line (once)", () => {
    expect(shipped).toContain("demo.yaml");
    expect(shipped).toContain("retail.yaml");
    for (const f of shipped) {
      const lines = readFileSync(join(pipelinesDir, f), "utf8").split("\n");
      expect(`${f}: ${lines[0]}`).toBe(`${f}: ${SCHEMA_MODELINE}`);
      expect(lines.filter((l) => l.includes("yaml-language-server"))).toHaveLength(1);
    }
  });

  test("each stage's with: is chosen by its use: one if/then per built-in operator, with the operator's own schema", () => {
    const schema = pipelineJsonSchema(defs);
    const stage = (schema.definitions as Record<string, { allOf: { if: { properties: { use: { const: string } } } }[] }>).stage;
    expect(stage.allOf.map((c) => c.if.properties.use.const)).toEqual(defs.map((d) => d.name));
    const nms = defs.find((d) => d.name === "nms")!;
    expect((schema.definitions as Record<string, unknown>)["options.nms"]).toEqual(operatorOptionsJsonSchema(nms));
    expect((operatorOptionsJsonSchema(nms).properties as Record<string, unknown>).iou).toMatchObject({
      default: 0.45,
      anyOf: [{ type: "number", minimum: 0, maximum: 1 }, { $ref: "#/definitions/placeholder" }],
    });
  });
});

describe("shipped files", () => {
  for (const f of shipped) {
    test(`${f}: ajv accepts it as written (placeholders left as strings) and with its defaults substituted; so does the loader`, async () => {
      const text = readFileSync(join(pipelinesDir, f), "utf8");
      expect(errors(raw(text))).toEqual([]);
      expect(errors(withDefaults(text))).toEqual([]);
      expect(parse(text, await loadRegistry()).stages.length).toBeGreaterThan(0);
    });
  }
});

describe("broken files: ajv and the loader both refuse them", () => {
  const base = (stages: string) => `name: shop\nstages:\n${stages}`;
  const cam = "  - { id: cam, use: ingest, with: { url: pipelines/media/vtest.mp4 } }\n";
  const cases: { what: string; text: string; ajv: RegExp }[] = [
    { what: "an unknown operator", text: base(cam + "  - { id: detect, use: infer-onx }\n"), ajv: /^\/stages\/1\/use enum/ },
    { what: "an unknown option key", text: base("  - { id: cam, use: ingest, with: { url: pipelines/media/vtest.mp4, fsp: 10 } }\n"), ajv: /^\/stages\/0\/with additionalProperties \{"additionalProperty":"fsp"\}/ },
    { what: "a wrong type", text: base(cam + "  - { id: nms, use: nms, with: { iou: high } }\n"), ajv: /^\/stages\/1\/with\/iou type \{"type":"number"\}/ },
    { what: "a number out of range", text: base(cam + "  - { id: nms, use: nms, with: { conf: 1.5 } }\n"), ajv: /^\/stages\/1\/with\/conf maximum/ },
    { what: "a value not in the list", text: base(cam + "  - { id: prep, use: resize, with: { width: 640, height: 640, mode: squash } }\n"), ajv: /^\/stages\/1\/with\/mode enum/ },
    { what: "missing required options (no with: at all)", text: base("  - { id: cam, use: infer-onnx }\n"), ajv: /^\/stages\/0 required \{"missingProperty":"with"\}/ },
    { what: "a missing required option", text: base(cam + "  - { id: out, use: sink-jsonl, with: {} }\n"), ajv: /^\/stages\/1\/with required \{"missingProperty":"path"\}/ },
    { what: "an unknown stage key", text: base("  - { id: cam, use: ingest, replica: 2, with: { url: pipelines/media/vtest.mp4 } }\n"), ajv: /^\/stages\/0 additionalProperties \{"additionalProperty":"replica"\}/ },
    { what: "an unknown top-level key", text: `name: shop\nstage: []\nstages:\n${cam}`, ajv: /^ additionalProperties \{"additionalProperty":"stage"\}/ },
    { what: "a bad name", text: `name: 9shop\nstages:\n${cam}`, ajv: /^\/name pattern/ },
    { what: "no stages", text: "name: shop\nstages: []\n", ajv: /^\/stages minItems/ },
    { what: "a malformed placeholder where a number stands", text: base(cam + "  - { id: nms, use: nms, with: { iou: '${IOU' } }\n"), ajv: /^\/stages\/1\/with\/iou/ },
  ];
  for (const c of cases) {
    test(c.what, async () => {
      const data = raw(c.text);
      const found = errors(data);
      expect(found.length).toBeGreaterThan(0);
      expect(found.some((e) => c.ajv.test(e))).toBe(true);
      expect(parseError(c.text, await loadRegistry()).issues.length).toBeGreaterThan(0);
    });
  }
});

describe("what the schema leaves to bun run validate", () => {
  test("placeholders stand where interpolation may: a whole one for a number or list, one inside a constrained string", () => {
    // Block style: in a flow mapping ({ ... }) YAML reads { as an indicator, and a quoted placeholder stays a string.
    const text = `name: \${PIPELINE:-shop}
stages:
  - id: cam
    use: ingest
    with:
      url: \${CAMERA_URL}
      fps: \${FPS:-10}
      transport: \${TRANSPORT:-tcp}
      loop: \${LOOP:-false}
  - id: nms
    use: nms
    with:
      classes: \${CLASSES:-[person]}
  - id: out
    use: sink-nats
    with: { subject: "retail.\${STORE_ID:-store1}" }
`;
    expect(errors(raw(text))).toEqual([]);
    expect(errors(withDefaults(text.replace("${CAMERA_URL}", "${CAMERA_URL:-x.mp4}")))).toEqual([]);
    // Only a whole placeholder becomes a number: text around one stays a string.
    expect(errors(raw(text.replace("${FPS:-10}", "x${FPS:-10}"))).some((e) => e.startsWith("/stages/0/with/fps"))).toBe(true);
  });

  test("what JSON Schema cannot express is accepted here and refused by the loader (a v.check across fields)", async () => {
    // zones needs a line or a zone: a v.check in code, so the JSON Schema accepts an empty zones stage.
    const text = `name: shop\nstages:\n  - { id: cam, use: ingest, with: { url: pipelines/media/vtest.mp4 } }\n  - { id: count, use: zones, with: {} }\n`;
    expect(errors(raw(text))).toEqual([]);
    expect(parseError(text, await loadRegistry()).message).toContain("give at least one line or zone");
  });

  test("a transformed option (ingest's streams: a list or id=url pairs) accepts what its code does", async () => {
    const pairs = `name: shop\nstages:\n  - { id: cam, use: ingest, with: { streams: "a=pipelines/media/vtest.mp4,b=pipelines/media/vtest.mp4" } }\n`;
    const list = `name: shop\nstages:\n  - id: cam\n    use: ingest\n    with: { streams: [{ id: a, url: pipelines/media/vtest.mp4 }] }\n`;
    for (const text of [pairs, list]) {
      expect(errors(raw(text))).toEqual([]);
      expect(parse(text, await loadRegistry()).stages[0].def.name).toBe("ingest");
    }
    const ingest = operatorOptionsJsonSchema(defs.find((d) => d.name === "ingest")!);
    expect((ingest.properties as Record<string, { description?: string }>).streams.description).toContain("id=url");
  });

  test("a file with its own operators: any use: is accepted (their options are the modules'), built-ins are still checked", () => {
    const text = `name: shop\noperators: [./ops/brightness.ts]\nstages:\n  - { id: cam, use: ingest, with: { url: a.mp4 } }\n  - { id: light, use: brightness, with: { threshold: 40 } }\n  - { id: nms, use: nms, with: { iou: high } }\n`;
    const found = errors(raw(text));
    expect(found).toContain('/stages/2/with/iou type {"type":"number"}');
    expect(found.filter((e) => !e.startsWith("/stages/2"))).toEqual([]);
  });

  test("a schema the converter has no JSON Schema for (v.custom, v.date) becomes any value there, never a wrong constraint", () => {
    const odd = defineOperator({
      name: "test-odd",
      kind: "sink",
      description: "Test sink with unconvertible options.",
      options: v.strictObject({
        when: v.optional(v.date()),
        token: v.optional(v.custom<string>((x) => typeof x === "string" && x.startsWith("t-"), "expected a t- token")),
        code: v.optional(v.pipe(v.string(), v.regex(/^[a-z]+$/i))),
        twice: v.optional(v.pipe(v.string(), v.regex(/^a/), v.regex(/b$/))),
      }),
      create: () => ({ process() {} }),
    });
    const schema = operatorOptionsJsonSchema(odd);
    const props = schema.properties as Record<string, Record<string, unknown>>;
    expect(props.when).toEqual({});
    expect(props.token).toEqual({ description: "expected a t- token" });
    // /i would be lost in JSON Schema: no pattern rather than a case-sensitive one.
    expect(props.code).toEqual({ type: "string" });
    expect(props.twice).toMatchObject({ anyOf: [{ type: "string", pattern: "^a", allOf: [{ pattern: "b$" }] }, { $ref: "#/definitions/interpolated" }] });
    const check = compile({ ...schema, definitions: pipelineJsonSchema([]).definitions as Record<string, unknown> });
    expect(check({ code: "ABC", twice: "axb" })).toBe(true);
    expect(check({ twice: "ax" })).toBe(false);
  });
});
