import { readdirSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import type { OperatorDefinition } from "./operator.ts";
import { operatorsDir } from "./paths.ts";

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
      if (!def || typeof def.name !== "string" || typeof def.create !== "function" || !def.options) {
        throw new Error(`operators/${f} must default-export a definition made with defineOperator()`);
      }
      if (reg.has(def.name)) throw new Error(`operator "${def.name}" is defined twice (operators/${f})`);
      reg.set(def.name, def);
    }
    return reg;
  })();
  if (dir === operatorsDir) cached = p;
  return p;
}
