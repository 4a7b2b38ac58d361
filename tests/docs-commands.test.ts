/**
 * Docs that run: the README's sample pipeline is the shipped file, every
 * pipeline snippet in README.md and docs/ validates, and the Deno commands
 * work after setup.
 */
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parse as parseYaml } from "yaml";
import { parsePipeline } from "../runtime/spec/loader.ts";
import { loadRegistry } from "../runtime/spec/registry.ts";
import { repoRoot } from "./support/paths.ts";
import { startProcess } from "./support/process.ts";

/** What the docs ask a user to export before running their pipelines. */
const DOC_ENV: Record<string, string> = { FRAMEWIRE_HTTP_TOKEN: "docs-test-token-0123456789" };

const bad = readFileSync(join(repoRoot, "examples/bad.yaml"), "utf8");
const docs = ["README.md", ...readdirSync(join(repoRoot, "docs")).filter((f) => f.endsWith(".md")).map((f) => `docs/${f}`)];

/** Fenced blocks of `lang` in a markdown file, with the line each starts on. */
function blocks(file: string, lang: string): { line: number; text: string }[] {
  const out: { line: number; text: string }[] = [];
  const lines = readFileSync(join(repoRoot, file), "utf8").split("\n");
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].trim() !== "```" + lang) continue;
    const start = i + 1;
    let j = start;
    while (j < lines.length && lines[j].trim() !== "```") j++;
    out.push({ line: start + 1, text: lines.slice(start, j).join("\n") });
    i = j;
  }
  return out;
}

describe("docs that run", () => {
  test("README's sample pipeline is pipelines/demo.yaml, byte for byte", () => {
    const readme = readFileSync(join(repoRoot, "README.md"), "utf8");
    expect(readme).toContain("```yaml\n" + readFileSync(join(repoRoot, "pipelines/demo.yaml"), "utf8") + "```");
  });

  test("every whole pipeline in README.md and docs/ validates (file:line of the block on failure)", async () => {
    const registry = await loadRegistry();
    const failures: string[] = [];
    let checked = 0;
    for (const file of docs) {
      for (const b of blocks(file, "yaml")) {
        let data: unknown;
        try {
          data = parseYaml(b.text);
        } catch {
          continue; // a fragment (one stage, a key), not a pipeline
        }
        if (!data || typeof data !== "object" || !("name" in data) || !("stages" in data)) continue;
        // The Errors example is wrong on purpose (its output is checked below); pipelines with their own
        // operators need the user's folder (tests/library.test.ts runs that one from outside the repository).
        if (b.text === bad.trimEnd() || "operators" in data) continue;
        checked++;
        try {
          // Variables the docs tell the user to set, set; the rest fall back to the file's defaults.
          parsePipeline(b.text, `${file}:${b.line}`, registry, (k) => DOC_ENV[k]);
        } catch (err) {
          failures.push(`${file}:${b.line}: ${(err as Error).message}`);
        }
      }
    }
    expect(failures).toEqual([]);
    expect(checked).toBeGreaterThan(0);
  });

  test("every stage snippet in README.md and docs/ validates inside a pipeline (file:line of the block on failure)", async () => {
    const registry = await loadRegistry();
    const failures: string[] = [];
    let checked = 0;
    for (const file of docs) {
      for (const b of blocks(file, "yaml")) {
        let data: unknown;
        try {
          data = parseYaml(b.text);
        } catch {
          continue;
        }
        const isStage = (x: unknown): x is { id: string; use: string } => !!x && typeof x === "object" && typeof (x as { use?: unknown }).use === "string" && typeof (x as { id?: unknown }).id === "string";
        const stages = Array.isArray(data) ? data : [data];
        if (!stages.length || !stages.every(isStage) || "stages" in (data as object)) continue;
        // A list of stages (or one) as written, under a source when it has none of its own; ids it reads (in:) as subjects.
        const text = b.text.replace(/^(\s*)/, "").split("\n");
        const indent = /^\s*/.exec(b.text)![0].length;
        const body = text.map((l, i) => (i === 0 ? l : l.slice(indent))).map((l) => "  " + (Array.isArray(data) ? l : l.replace(/^/, ""))).join("\n");
        const listed = Array.isArray(data) ? body : body.replace(/^  /, "  - ").split("\n").map((l, i) => (i === 0 ? l : "  " + l)).join("\n");
        const hasSource = stages.some((st) => registry.get(st.use)?.kind === "source");
        const pipeline = `name: snippet\nstages:\n${hasSource ? "" : "  - { id: src, use: ingest, with: { url: pipelines/media/vtest.mp4 } }\n"}${listed}\n`;
        checked++;
        try {
          parsePipeline(pipeline, `${file}:${b.line}`, registry, (k) => DOC_ENV[k]);
        } catch (err) {
          failures.push(`${file}:${b.line}: ${(err as Error).message}`);
        }
      }
    }
    expect(failures).toEqual([]);
    expect(checked).toBeGreaterThan(3);
  });

  test("README's Errors section: examples/bad.yaml is shown as shipped, and validate prints exactly what the README says", async () => {
    const readme = readFileSync(join(repoRoot, "README.md"), "utf8");
    expect(readme).toContain("```yaml\n" + bad + "```");
    const shown = /`bun run validate examples\/bad\.yaml` exits 2 with:\n\n```\n([\s\S]*?)```/.exec(readme)?.[1];
    expect(shown).toBeDefined();
    const c = startProcess([process.execPath, "runtime/cli.ts", "validate", "examples/bad.yaml"], { cwd: repoRoot });
    expect(await c.exited).toBe(2);
    expect(c.stderr()).toBe(shown!);
  });

  test("the README's Deno command works after setup (deno task through node_modules/.bin/deno)", async () => {
    const c = startProcess([join(repoRoot, "node_modules/.bin/deno"), "task", "validate", "pipelines/demo.yaml"], { cwd: repoRoot, env: { NO_COLOR: "1" } });
    expect(await c.exited).toBe(0);
    expect(c.stdout()).toContain("pipelines/demo.yaml: valid");
  }, 60_000);
});

test("retail.yaml splits as docs/distributed.md says: --placement edge runs the store's stages, cloud only detection", async () => {
  const { loadPipeline } = await import("../runtime/spec/loader.ts");
  const spec = await loadPipeline(join(repoRoot, "pipelines/retail.yaml"), await loadRegistry(), () => undefined);
  const at = (p: string) => spec.stages.filter((s) => s.placement === p || s.placement === "any").map((s) => s.id);
  expect(at("cloud")).toEqual(["detect"]);
  expect(at("edge")).toEqual(spec.stages.map((s) => s.id));
  expect(spec.stages.find((s) => s.id === "detect")!.route).toBe("prefer-local");
});
