/**
 * Option reference generated from the operators' valibot schemas, so the
 * docs cannot drift from what `validate` accepts (`bun run docs`).
 */
import type { OperatorDefinition } from "../core/operator.ts";

export interface OptionDoc {
  name: string;
  type: string;
  required: boolean;
  default?: unknown;
  constraints: string[];
  description: string;
}

type AnySchema = {
  type: string;
  expects?: string;
  wrapped?: AnySchema;
  default?: unknown;
  pipe?: { kind: string; type: string; expects?: string | null; description?: string }[];
  entries?: Record<string, AnySchema>;
  item?: AnySchema;
  options?: unknown[] | AnySchema[];
  items?: AnySchema[];
};

/** The schema under optional/nullable wrappers and pipes, with the pipe's checks and description. */
function peel(s: AnySchema): { base: AnySchema; optional: boolean; default?: unknown; constraints: string[]; description: string } {
  let optional = false;
  let dflt: unknown;
  const constraints: string[] = [];
  let description = "";
  for (;;) {
    if (s.type === "optional" || s.type === "nullable" || s.type === "nullish") {
      optional = true;
      if (s.default !== undefined && dflt === undefined) dflt = typeof s.default === "function" ? undefined : s.default;
      s = s.wrapped!;
      continue;
    }
    if (s.pipe) {
      for (const a of s.pipe.slice(1)) {
        if (a.kind === "metadata" && a.type === "description") description = a.description ?? "";
        else if (a.kind === "validation" && a.type !== "check") constraints.push(a.expects ? `${a.type.replace(/_/g, " ")} ${a.expects}` : a.type);
      }
      const head = s.pipe[0] as unknown as AnySchema;
      if (head !== s) {
        s = { ...head, pipe: undefined };
        continue;
      }
    }
    return { base: s, optional, default: dflt, constraints, description };
  }
}

function typeName(s: AnySchema): string {
  const { base } = peel(s);
  switch (base.type) {
    case "picklist":
      return (base.options as unknown[]).map((o) => JSON.stringify(o)).join(" \\| ");
    case "array": {
      const item = typeName(base.item!);
      return item.includes("|") ? `(${item})[]` : `${item}[]`;
    }
    case "strict_object":
    case "object":
      return `{ ${Object.keys(base.entries!).join(", ")} }`;
    case "union":
      return (base.options as AnySchema[]).map(typeName).join(" \\| ");
    case "tuple":
      return `[${base.items!.map(typeName).join(", ")}]`;
    default:
      return base.type;
  }
}

/** One row per option of an operator (nested objects flattened as `a.b`). */
export function optionDocs(def: OperatorDefinition): OptionDoc[] {
  const rows: OptionDoc[] = [];
  const walk = (schema: AnySchema, prefix: string) => {
    const { base } = peel(schema);
    if (!base.entries) return;
    for (const [key, child] of Object.entries(base.entries)) {
      const p = peel(child);
      rows.push({
        name: prefix + key,
        type: typeName(child),
        required: !p.optional,
        default: p.default,
        constraints: p.constraints,
        description: p.description,
      });
      if (p.base.entries) walk(p.base, `${prefix}${key}.`);
      if (p.base.type === "array" && peel(p.base.item!).base.entries) walk(peel(p.base.item!).base, `${prefix}${key}[].`);
    }
  };
  walk(def.options as unknown as AnySchema, "");
  return rows;
}

/** Markdown reference of every operator in the registry. */
export function operatorsMarkdown(defs: OperatorDefinition[]): string {
  const out = [
    "# Operators",
    "",
    "Generated from each operator's valibot schema by `bun run docs`; do not edit by hand.",
    "",
    "| operator | kind | what it does |",
    "|---|---|---|",
    ...defs.map((d) => `| [\`${d.name}\`](#${d.name}) | ${d.kind} | ${d.description} |`),
  ];
  for (const d of defs) {
    out.push("", `## ${d.name}`, "", `${d.kind} — ${d.description}`, "");
    const rows = optionDocs(d);
    if (!rows.length) {
      out.push("No options.");
      continue;
    }
    out.push("| option | type | default | constraints | description |", "|---|---|---|---|---|");
    for (const r of rows) {
      const dflt = r.required ? "**required**" : r.default === undefined ? "" : `\`${JSON.stringify(r.default)}\``;
      const cell = (t: string) => t.replace(/\|/g, "\\|");
      out.push(`| \`${r.name}\` | ${r.type} | ${dflt} | ${cell(r.constraints.join(", "))} | ${cell(r.description)} |`);
    }
  }
  return out.join("\n") + "\n";
}
