import { readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, isAbsolute, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { FramewireError } from "../core/errors.ts";
import type { OperatorDefinition } from "../core/operator.ts";
import { existsSync } from "../platform/index.ts";
import { operatorsDir } from "../platform/paths.ts";

export type Registry = ReadonlyMap<string, OperatorDefinition>;

let cached: Promise<Registry> | undefined;

/**
 * Every operator in operators/ (one default-exported definition per file).
 * The runtime learns operators only from here, never by name.
 */
export function loadRegistry(dir = operatorsDir): Promise<Registry> {
  if (dir === operatorsDir && cached) return cached;
  const p = (async () => {
    const files = readdirSync(dir).filter((f) => f.endsWith(".ts") && !f.endsWith(".test.ts")).sort();
    const reg = new Map<string, OperatorDefinition>();
    for (const f of files) {
      const mod = await import(pathToFileURL(join(dir, f)).href);
      const def = mod.default as OperatorDefinition | undefined;
      const bad = whyNotDefinition(def);
      if (bad) throw new FramewireError("E_OPERATOR_INVALID", `operators/${f} must default-export a definition made with defineOperator(): ${bad}`);
      if (reg.has(def!.name)) throw new FramewireError("E_OPERATOR_DUPLICATE", `operator "${def!.name}" is defined twice (operators/${f})`);
      reg.set(def!.name, def!);
    }
    return reg;
  })();
  if (dir === operatorsDir) cached = p;
  return p;
}

/** Why a module's export is not an operator definition, or undefined when it is one. */
export function whyNotDefinition(def: unknown): string | undefined {
  if (!def || typeof def !== "object") return "no default export";
  const d = def as Partial<OperatorDefinition>;
  if (typeof d.name !== "string" || !/^[a-z][a-z0-9-]*$/.test(d.name)) return "name must be lower-case letters, digits and -";
  if (d.kind !== "source" && d.kind !== "transform" && d.kind !== "sink") return `kind must be source, transform or sink (got ${JSON.stringify(d.kind)})`;
  if (typeof d.create !== "function") return "create must be a function";
  if (!d.options || typeof d.options !== "object" || (d.options as { kind?: string }).kind !== "schema") return "options must be a valibot schema (e.g. v.strictObject({...}))";
  if (typeof d.description !== "string") return "description must be a string";
  return undefined;
}

/**
 * Imports a user operator named in a pipeline file's `operators:` list: a
 * path relative to the file (`./ops/blur.ts`), or a package resolved from the
 * file's folder (`some-npm-package`). Its default export is one definition or
 * an array of them.
 * @throws FramewireError E_OPERATOR_NOT_FOUND or E_OPERATOR_INVALID, with the reason.
 * @example
 * const defs = await importOperator("./ops/blur.ts", "pipelines/shop.yaml");
 */
export async function importOperator(ref: string, pipelineFile: string): Promise<OperatorDefinition[]> {
  const base = dirname(resolve(pipelineFile));
  let target: string;
  if (ref.startsWith(".") || isAbsolute(ref)) {
    target = resolve(base, ref);
    if (!existsSync(target)) throw new FramewireError("E_OPERATOR_NOT_FOUND", `operator module not found: ${ref} (resolved to ${target})`);
  } else {
    try {
      target = createRequire(join(base, "pipeline.js")).resolve(ref);
    } catch (err) {
      throw new FramewireError("E_OPERATOR_NOT_FOUND", `operator package "${ref}" not found from ${base} (install it there: bun add ${ref})`, { cause: err });
    }
  }
  let mod: { default?: unknown };
  try {
    mod = await import(pathToFileURL(target).href);
  } catch (err) {
    throw new FramewireError("E_OPERATOR_INVALID", `operator module ${ref} failed to load: ${(err as Error).message.split("\n")[0]}`, { cause: err });
  }
  const defs = Array.isArray(mod.default) ? mod.default : [mod.default];
  for (const d of defs) {
    const bad = whyNotDefinition(d);
    if (bad) throw new FramewireError("E_OPERATOR_INVALID", `operator module ${ref} must default-export a definition made with defineOperator() (or an array of them): ${bad}`);
  }
  return defs as OperatorDefinition[];
}
