/**
 * Generated bad pipeline files: mutations of the shipped pipelines/*.yaml
 * must either validate or fail with a PipelineFileError whose every line is
 * `file:line:column: ...`, never another exception type.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { PipelineFileError } from "../runtime/core/errors.ts";
import { parsePipeline } from "../runtime/spec/loader.ts";
import { loadRegistry, type Registry } from "../runtime/spec/registry.ts";
import { rng, type Rng } from "./fuzz-support.ts";
import { repoRoot } from "./support/paths.ts";

const SHIPPED = ["demo.yaml", "retail.yaml"].map((n) => ({ name: n, text: readFileSync(join(repoRoot, "pipelines", n), "utf8") }));
const CASES = 300;

let registry: Registry;
beforeAll(async () => {
  registry = await loadRegistry();
});

const KEYS = ["name", "bus", "stages", "id", "use", "with", "in", "out", "inbox", "replicas", "route", "placement", "link", "url", "model", "fps", "conf", "iou", "path", "lines", "zones", "bogus", "Stages", "with_"];
const VALUES = ["[1, 2]", "{ a: 1 }", '"text"', "-5", "0", "true", "null", "~", "1e999", "NaN", ".inf", "[[[]]]", "'", '"', "*nope", "&a", "!!binary AAAA", "!custom x", "${NOPE}", "${NOPE:-}", "${", "|", ">-", "- x", "? x", "@x", "`x`", "%YAML 1.2"];
const OPERATORS = ["ingestt", "infer", "nope", "", "sink-", "../ingest", "ingest ingest", "__proto__", "constructor", "toString"];

/** Index of a random line matching `re`, or -1 (an earlier mutation may have removed them all). */
function pickLine(r: Rng, lines: string[], re: RegExp): number {
  const hits = lines.flatMap((l, i) => (re.test(l) ? [i] : []));
  return hits.length ? r.pick(hits) : -1;
}

type Mutation = (r: Rng, lines: string[], text: string) => string;

const mutations: Record<string, Mutation> = {
  "delete a line": (r, lines) => (lines.splice(r.int(lines.length), 1), lines.join("\n")),
  "duplicate a line": (r, lines) => {
    const i = r.int(lines.length);
    lines.splice(i, 0, lines[i]);
    return lines.join("\n");
  },
  "retype a key": (r, lines) => {
    const i = pickLine(r, lines, /^\s*-?\s*[\w-]+:/);
    if (i >= 0) lines[i] = lines[i].replace(/[\w-]+:/, `${r.pick(KEYS)}:`);
    return lines.join("\n");
  },
  "wrong value type": (r, lines) => {
    const i = pickLine(r, lines, /:\s+\S/);
    if (i >= 0) lines[i] = lines[i].replace(/:\s+.*$/, `: ${r.pick(VALUES)}`);
    return lines.join("\n");
  },
  "bad indentation": (r, lines) => {
    const i = r.int(lines.length);
    lines[i] = r.next() < 0.5 ? " ".repeat(1 + r.int(3)) + lines[i] : lines[i].replace(/^ {1,3}/, "");
    if (r.next() < 0.2) lines[i] = "\t" + lines[i];
    return lines.join("\n");
  },
  truncation: (r, _lines, text) => text.slice(0, r.int(text.length)),
  "unknown operator": (r, _lines, text) => {
    const uses = [...text.matchAll(/use: [\w-]+/g)];
    if (!uses.length) return text;
    const m = r.pick(uses);
    return text.slice(0, m.index) + `use: ${JSON.stringify(r.pick(OPERATORS))}` + text.slice(m.index! + m[0].length);
  },
  "byte flips": (r, _lines, text) => {
    const b = new TextEncoder().encode(text);
    for (let k = 1 + r.int(6); k > 0; k--) b[r.int(b.length)] = r.int(256);
    return new TextDecoder().decode(b);
  },
  "yaml oddities": (r, lines) => {
    const i = r.int(lines.length);
    lines.splice(i, 0, r.pick(["<<: *missing", "--- ", "...", "? [a, b]\n: c", "&x a: *x", "key: &a [*a]", "- !!map {}", "\u0000", "\uFEFFname: x", "{", "]"]));
    return lines.join("\n");
  },
};

/** Parses `text`; returns the error it threw, or null when it validated. */
function outcome(text: string, file: string): unknown {
  try {
    parsePipeline(text, file, registry, () => undefined);
    return null;
  } catch (err) {
    return err;
  }
}

function expectClean(err: unknown, file: string, text: string) {
  if (err === null) return "valid";
  if (!(err instanceof PipelineFileError)) {
    throw new Error(`${file}: ${(err as Error)?.name}: ${(err as Error)?.message}\n--- input ---\n${text}`);
  }
  expect(err.issues.length).toBeGreaterThan(0);
  for (const line of err.message.split("\n")) expect(line).toMatch(new RegExp(`^${file.replace(".", "\\.")}:\\d+:\\d+: \\S`));
  return "error";
}

describe("fuzzed pipeline files", () => {
  test(`${CASES} seeded mutations of the shipped pipelines: valid or a PipelineFileError with file:line`, () => {
    const r = rng(0xf11e);
    const tally = { valid: 0, error: 0 } as Record<string, number>;
    const names = Object.keys(mutations);
    for (let n = 0; n < CASES; n++) {
      const base = SHIPPED[n % SHIPPED.length];
      let text = base.text;
      // One to three stacked mutations.
      for (let k = 1 + r.int(3); k > 0; k--) text = mutations[r.pick(names)](r, text.split("\n"), text);
      const file = `fuzz-${n}.yaml`;
      tally[expectClean(outcome(text, file), file, text)]++;
    }
    expect(tally.valid + tally.error).toBe(CASES);
    // Most mutations break the file; a generator that only made valid files would test nothing.
    expect(tally.error).toBeGreaterThan(CASES / 2);
  });

  test("an alias bomb (billion laughs) is refused with file:line, without expanding it", () => {
    const bomb = ["a: &a [x, x, x, x, x, x, x, x, x, x]", ...Array.from({ length: 8 }, (_, i) => `${"bcdefghi"[i]}: &${"bcdefghi"[i]} [${Array(10).fill(`*${"abcdefgh"[i]}`).join(", ")}]`), "name: bomb", "stages: [{ id: cam, use: ingest, with: { url: rtsp://h/s } }]"].join("\n");
    expectClean(outcome(bomb, "bomb.yaml"), "bomb.yaml", bomb);
    expect(outcome(bomb, "bomb.yaml")).toBeInstanceOf(PipelineFileError);
  });

  test("binary garbage, empty and huge files", () => {
    const r = rng(7);
    const inputs = [
      "",
      "\n\n\n",
      new TextDecoder().decode(r.bytes(4096)),
      "name: x\nstages:\n" + "  - { id: s, use: sink-log }\n".repeat(5000),
      "[".repeat(10_000),
      "a:\n" + "  ".repeat(2000) + "b: 1",
    ];
    for (const [i, text] of inputs.entries()) expect(expectClean(outcome(text, `g${i}.yaml`), `g${i}.yaml`, text.slice(0, 500))).toBe("error");
  });
});
