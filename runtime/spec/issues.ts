import type * as v from "valibot";

/** Longest value quoted in a message; the rest is summarised by its length. */
export const MAX_QUOTED_VALUE = 80;
/** Longest message of one issue. */
export const MAX_ISSUE_MESSAGE = 1000;

/**
 * `text` cut to `max` characters, saying how long it was: a 50 MB value in a
 * pipeline file must not be echoed whole into its error.
 * @example
 * clip("x".repeat(1000), 10); // 'xxxxxxxxxx… (1000 characters)'
 */
export function clip(text: string, max = MAX_ISSUE_MESSAGE): string {
  return text.length <= max ? text : `${text.slice(0, max)}… (${text.length} characters)`;
}

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
  // Custom messages (v.check and friends) are already written for users (but may quote the value).
  if (!issue.message.startsWith("Invalid ")) return clip(issue.message);
  const expected = issue.expected?.replace(/^([<>]=?)/, "$1 ");
  return `expected ${clip(expected ?? "", MAX_QUOTED_VALUE * 2)}, got ${clip(issue.received, MAX_QUOTED_VALUE)}`;
}
