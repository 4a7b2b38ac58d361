import type * as v from "valibot";

/** `stages[2].with.iou` from a key path. */
export function formatPath(keys: readonly (string | number)[]): string {
  let out = "";
  for (const k of keys) out += typeof k === "number" ? `[${k}]` : out ? `.${k}` : k;
  return out;
}

/** Unwraps optional/nullable/pipe wrappers down to the schema that holds entries. */
function unwrap(schema: any): any {
  while (schema) {
    if (schema.wrapped) schema = schema.wrapped;
    else if (Array.isArray(schema.pipe) && schema.pipe[0] !== schema) schema = schema.pipe[0];
    else return schema;
  }
  return schema;
}

/** The keys an object schema allows at `keys` below `root`, if it is an object schema. */
function allowedKeys(root: v.GenericSchema, keys: readonly (string | number)[]): string[] | undefined {
  let s = unwrap(root);
  for (const k of keys) {
    if (!s) return undefined;
    if (typeof k === "number") s = unwrap(s.item);
    else s = unwrap(s.entries?.[k]);
  }
  return s?.entries ? Object.keys(s.entries) : undefined;
}

/**
 * Turns a valibot issue into a short human message in the style
 * `expected number <= 1, got "high"`.
 */
export function describeIssue(issue: v.BaseIssue<unknown>, root: v.GenericSchema): string {
  const keys = (issue.path ?? []).map((p) => p.key as string | number);
  if (issue.type === "strict_object" && issue.expected === "never") {
    const allowed = allowedKeys(root, keys.slice(0, -1));
    return `unknown key${allowed ? ` (allowed: ${allowed.join(", ")})` : ""}`;
  }
  if (issue.kind === "schema" && issue.received === "undefined" && keys.length) return "required field is missing";
  // Custom messages (v.check and friends) are already written for users.
  if (!issue.message.startsWith("Invalid ")) return issue.message;
  const expected = issue.expected?.replace(/^([<>]=?)/, "$1 ");
  return `expected ${expected}, got ${issue.received}`;
}
