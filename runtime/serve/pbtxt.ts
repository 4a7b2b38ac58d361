/**
 * The Protocol Buffers text format, the language of Triton's `config.pbtxt`,
 * read without a schema: `name: value` fields, `name { ... }` (or `name: { }`,
 * `name < >`) messages, `name: [a, b]` lists, `#` comments, quoted strings
 * with C escapes (adjacent strings join), numbers (decimal, hex, float,
 * negative, inf, nan), identifiers for enums and booleans. Every field and
 * value keeps its line and column, so what is wrong can be named by place.
 *
 * `toObject` turns the fields into the JSON shape of the same message (the
 * shape Triton's HTTP API uses), given which field names are repeated and
 * which are maps; a path→position table goes with it.
 */
import { FramewireError } from "../core/errors.ts";
import { formatPath } from "../spec/issues.ts";

/** 1-based line and column. */
export interface Pos {
  line: number;
  column: number;
}

export type PbValue =
  | { kind: "number"; value: number; raw: string; pos: Pos }
  | { kind: "string"; value: string; pos: Pos }
  | { kind: "ident"; value: string; pos: Pos }
  | { kind: "message"; fields: PbField[]; pos: Pos };

/** One occurrence of a field; a list (`name: [a, b]`) carries all its values. */
export interface PbField {
  name: string;
  pos: Pos;
  values: PbValue[];
  list: boolean;
}

/** The text is not valid protobuf text format. */
export class PbtxtSyntaxError extends FramewireError {
  override name = "PbtxtSyntaxError";
  constructor(
    readonly line: number,
    readonly column: number,
    readonly reason: string,
  ) {
    super("E_PBTXT_SYNTAX", `${line}:${column}: ${reason}`);
  }
}

type Token =
  | { type: "ident"; text: string; pos: Pos }
  | { type: "number"; text: string; pos: Pos }
  | { type: "string"; text: string; value: string; pos: Pos }
  | { type: "punct"; text: string; pos: Pos }
  | { type: "eof"; text: ""; pos: Pos };

const SIMPLE_ESCAPES: Record<string, string> = { n: "\n", r: "\r", t: "\t", "\\": "\\", "'": "'", '"': '"', "?": "?", a: "\x07", b: "\b", f: "\f", v: "\v" };

function tokenize(text: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  let line = 1;
  let lineStart = 0;
  const pos = (at = i): Pos => ({ line, column: at - lineStart + 1 });
  const fail = (reason: string, at = i): never => {
    throw new PbtxtSyntaxError(line, at - lineStart + 1, reason);
  };
  while (i < text.length) {
    const c = text[i];
    if (c === "\n") {
      i++;
      line++;
      lineStart = i;
    } else if (c === " " || c === "\t" || c === "\r" || c === "\f" || c === "\v") i++;
    else if (c === "#") {
      while (i < text.length && text[i] !== "\n") i++;
    } else if (/[A-Za-z_]/.test(c)) {
      const start = i;
      while (i < text.length && /[A-Za-z0-9_]/.test(text[i])) i++;
      tokens.push({ type: "ident", text: text.slice(start, i), pos: pos(start) });
    } else if (/[0-9]/.test(c) || (c === "." && /[0-9]/.test(text[i + 1] ?? ""))) {
      const start = i;
      const m = /^(0[xX][0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[fF]?)/.exec(text.slice(i, i + 64))!;
      i += m[0].length;
      if (i < text.length && /[A-Za-z0-9_.]/.test(text[i])) fail(`malformed number "${text.slice(start, i + 1)}"`, start);
      tokens.push({ type: "number", text: m[0], pos: pos(start) });
    } else if (c === '"' || c === "'") {
      const start = i;
      let value = "";
      i++;
      for (;;) {
        if (i >= text.length || text[i] === "\n") fail("unterminated string", start);
        const ch = text[i];
        if (ch === c) {
          i++;
          break;
        }
        if (ch !== "\\") {
          value += ch;
          i++;
          continue;
        }
        const e = text[i + 1] ?? "";
        if (e in SIMPLE_ESCAPES) {
          value += SIMPLE_ESCAPES[e];
          i += 2;
        } else if (e === "x" || e === "X") {
          const m = /^[0-9a-fA-F]{1,2}/.exec(text.slice(i + 2, i + 4));
          if (!m) fail("\\x needs hex digits", i);
          value += String.fromCharCode(parseInt(m![0], 16));
          i += 2 + m![0].length;
        } else if (/[0-7]/.test(e)) {
          const m = /^[0-7]{1,3}/.exec(text.slice(i + 1, i + 4))!;
          value += String.fromCharCode(parseInt(m[0], 8));
          i += 1 + m[0].length;
        } else if (e === "u" || e === "U") {
          const n = e === "u" ? 4 : 8;
          const hex = text.slice(i + 2, i + 2 + n);
          if (!new RegExp(`^[0-9a-fA-F]{${n}}$`).test(hex)) fail(`\\${e} needs ${n} hex digits`, i);
          value += String.fromCodePoint(parseInt(hex, 16));
          i += 2 + n;
        } else fail(`unknown escape \\${e}`, i);
      }
      tokens.push({ type: "string", text: text.slice(start, i), value, pos: pos(start) });
    } else if ("{}[]<>:,;-".includes(c)) {
      tokens.push({ type: "punct", text: c, pos: pos() });
      i++;
    } else fail(`unexpected character ${JSON.stringify(c)}`);
  }
  tokens.push({ type: "eof", text: "", pos: pos() });
  return tokens;
}

const describe = (t: Token) => (t.type === "eof" ? "the end of the file" : `"${t.text}"`);

/** Numeric value of a number token (ints, hex, floats, a trailing f). */
function numberOf(raw: string): number {
  if (/^0[xX]/.test(raw)) return parseInt(raw, 16);
  return Number(raw.replace(/[fF]$/, ""));
}

/**
 * Parses protobuf text format into fields, in the order written.
 * @throws PbtxtSyntaxError with the line and column of the first problem.
 * @example
 * const fields = parsePbtxt('max_batch_size: 32\ndynamic_batching { preferred_batch_size: [4, 8] }');
 * fields[1].values[0]; // { kind: "message", fields: [...], pos: { line: 2, column: 18 } }
 */
export function parsePbtxt(text: string): PbField[] {
  const tokens = tokenize(text);
  let k = 0;
  const peek = () => tokens[k];
  const next = () => tokens[k++];
  const fail = (t: Token, reason: string): never => {
    throw new PbtxtSyntaxError(t.pos.line, t.pos.column, reason);
  };
  const isPunct = (t: Token, p: string) => t.type === "punct" && t.text === p;

  const scalar = (): PbValue => {
    const t = next();
    if (t.type === "string") {
      let value = t.value;
      // "a" "b" is "ab".
      while (peek().type === "string") value += (next() as Extract<Token, { type: "string" }>).value;
      return { kind: "string", value, pos: t.pos };
    }
    if (t.type === "number") return { kind: "number", value: numberOf(t.text), raw: t.text, pos: t.pos };
    if (isPunct(t, "-")) {
      const n = next();
      if (n.type === "number") return { kind: "number", value: -numberOf(n.text), raw: `-${n.text}`, pos: t.pos };
      if (n.type === "ident" && /^(inf|infinity|nan)$/i.test(n.text)) return { kind: "number", value: /^nan$/i.test(n.text) ? NaN : -Infinity, raw: `-${n.text}`, pos: t.pos };
      return fail(n, `expected a number after "-", found ${describe(n)}`);
    }
    if (t.type === "ident") {
      if (/^(inf|infinity)$/i.test(t.text)) return { kind: "number", value: Infinity, raw: t.text, pos: t.pos };
      if (/^nan$/i.test(t.text)) return { kind: "number", value: NaN, raw: t.text, pos: t.pos };
      return { kind: "ident", value: t.text, pos: t.pos };
    }
    return fail(t, `expected a value, found ${describe(t)}`);
  };

  const messageBody = (open: Token): PbValue => {
    const close = open.text === "{" ? "}" : ">";
    const fields = body(close);
    const end = next();
    if (!isPunct(end, close)) fail(end, `expected "${close}" to close the "${open.text}" at ${open.pos.line}:${open.pos.column}, found ${describe(end)}`);
    return { kind: "message", fields, pos: open.pos };
  };

  const value = (): PbValue => {
    const t = peek();
    if (isPunct(t, "{") || isPunct(t, "<")) return messageBody(next());
    return scalar();
  };

  const list = (): PbValue[] => {
    const open = next(); // [
    const out: PbValue[] = [];
    if (isPunct(peek(), "]")) {
      next();
      return out;
    }
    for (;;) {
      out.push(value());
      const t = next();
      if (isPunct(t, "]")) return out;
      if (!isPunct(t, ",")) fail(t, `expected "," or "]" in the list opened at ${open.pos.line}:${open.pos.column}, found ${describe(t)}`);
    }
  };

  const body = (close: string | undefined): PbField[] => {
    const fields: PbField[] = [];
    for (;;) {
      const t = peek();
      if (t.type === "eof") {
        if (close) fail(t, `expected "${close}", found the end of the file`);
        return fields;
      }
      if (close && isPunct(t, close)) return fields;
      if (isPunct(t, "[")) fail(t, "extension and Any fields ([...]) are not supported");
      if (t.type !== "ident") fail(t, `expected a field name, found ${describe(t)}`);
      next();
      const colon = isPunct(peek(), ":");
      if (colon) next();
      const after = peek();
      let field: PbField;
      if (isPunct(after, "[")) field = { name: t.text, pos: t.pos, values: list(), list: true };
      else if (isPunct(after, "{") || isPunct(after, "<")) field = { name: t.text, pos: t.pos, values: [messageBody(next())], list: false };
      else if (!colon) fail(after, `expected ":" or "{" after ${t.text}, found ${describe(after)}`);
      else field = { name: t.text, pos: t.pos, values: [scalar()], list: false };
      fields.push(field!);
      if (isPunct(peek(), ",") || isPunct(peek(), ";")) next();
    }
  };

  return body(undefined);
}

/** Which fields are repeated or maps; every other field may appear once. */
export interface PbShape {
  repeated: ReadonlySet<string>;
  /** `map<K, V>` fields, written as repeated `{ key: K value: V }` entries; they become objects. */
  maps: ReadonlySet<string>;
}

/** A message as a plain object, and where each path (`input[0].dims`) was written. */
export interface PbObject {
  value: Record<string, unknown>;
  positions: Map<string, Pos>;
}

function plain(v: PbValue, path: (string | number)[], shape: PbShape, positions: Map<string, Pos>): unknown {
  positions.set(formatPath(path), v.pos);
  switch (v.kind) {
    case "number":
    case "string":
      return v.value;
    case "ident":
      if (v.value === "true" || v.value === "True" || v.value === "t") return true;
      if (v.value === "false" || v.value === "False" || v.value === "f") return false;
      return v.value;
    case "message":
      return message(v.fields, path, shape, positions);
  }
}

function message(fields: PbField[], path: (string | number)[], shape: PbShape, positions: Map<string, Pos>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const seen = new Map<string, Pos>();
  for (const f of fields) {
    const here = [...path, f.name];
    const key = formatPath(here);
    if (shape.maps.has(f.name)) {
      const obj = (out[f.name] ??= {}) as Record<string, unknown>;
      if (!positions.has(key)) positions.set(key, f.pos);
      for (const entry of f.values) {
        if (entry.kind !== "message") throw new PbtxtSyntaxError(entry.pos.line, entry.pos.column, `${key}: a map entry is { key: ... value: ... }`);
        const k = entry.fields.find((x) => x.name === "key");
        const val = entry.fields.find((x) => x.name === "value");
        const extra = entry.fields.find((x) => x.name !== "key" && x.name !== "value");
        if (extra) throw new PbtxtSyntaxError(extra.pos.line, extra.pos.column, `${key}: a map entry has only key and value, not ${extra.name}`);
        if (!k || k.values.length !== 1 || k.values[0].kind === "message") throw new PbtxtSyntaxError(entry.pos.line, entry.pos.column, `${key}: the map entry needs a key`);
        if (!val || val.values.length !== 1) throw new PbtxtSyntaxError(entry.pos.line, entry.pos.column, `${key}: the map entry needs a value`);
        const name = String(k.values[0].kind === "ident" || k.values[0].kind === "string" || k.values[0].kind === "number" ? k.values[0].value : "");
        if (Object.hasOwn(obj, name)) throw new PbtxtSyntaxError(k.pos.line, k.pos.column, `${key}: key "${name}" is set twice`);
        obj[name] = plain(val.values[0], [...here, name], shape, positions);
        // An entry is named where its key is written.
        positions.set(formatPath([...here, name]), k.pos);
      }
    } else if (shape.repeated.has(f.name)) {
      const arr = (out[f.name] ??= []) as unknown[];
      if (!positions.has(key)) positions.set(key, f.pos);
      for (const x of f.values) arr.push(plain(x, [...here, arr.length], shape, positions));
    } else {
      const first = seen.get(f.name);
      if (first) throw new PbtxtSyntaxError(f.pos.line, f.pos.column, `${key} is set twice (first at ${first.line}:${first.column}); it is not a repeated field`);
      if (f.list) throw new PbtxtSyntaxError(f.pos.line, f.pos.column, `${key} is not a repeated field: write one value, not a [list]`);
      seen.set(f.name, f.pos);
      positions.set(key, f.pos);
      out[f.name] = plain(f.values[0], here, shape, positions);
      // The field's own position (its name) wins over its value's.
      positions.set(key, f.pos);
    }
  }
  return out;
}

/**
 * Turns parsed fields into the message's JSON shape: repeated fields become
 * arrays, maps objects, `true`/`false` booleans, other identifiers (enum
 * values) strings.
 * @throws PbtxtSyntaxError for a field set twice that is not repeated, a list for a single field, a malformed map entry.
 * @example
 * const { value, positions } = toObject(parsePbtxt("dims: [3, 640]"), { repeated: new Set(["dims"]), maps: new Set() });
 * value; // { dims: [3, 640] }
 * positions.get("dims[1]"); // { line: 1, column: 11 }
 */
export function toObject(fields: PbField[], shape: PbShape): PbObject {
  const positions = new Map<string, Pos>();
  return { value: message(fields, [], shape, positions), positions };
}
