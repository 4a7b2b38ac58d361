import { fileURLToPath } from "node:url";
import { realpathSync } from "node:fs";
import { isAbsolute, join, resolve, sep } from "node:path";
import { existsSync } from "./index.ts";

/** The framewire checkout (the folder holding runtime/, operators/, models/). */
export const projectRoot = fileURLToPath(new URL("../..", import.meta.url));
export const modelsDir = join(projectRoot, "models");
export const pipelinesDir = join(projectRoot, "pipelines");
export const operatorsDir = join(projectRoot, "operators");

function firstExisting(candidates: string[]): string | undefined {
  return candidates.find((c) => existsSync(c));
}

/**
 * A pipeline file given as a path, or a bare name under pipelines/
 * (`demo.yaml` or `demo`).
 */
export function resolvePipelineFile(name: string): string | undefined {
  const bare = !name.includes("/");
  return firstExisting([
    resolve(name),
    ...(bare ? [join(pipelinesDir, name), join(pipelinesDir, `${name}.yaml`)] : []),
  ]);
}

/** A model given as a path, or a file name under models/. */
export function resolveModel(name: string): string | undefined {
  if (isAbsolute(name)) return firstExisting([name]);
  return firstExisting([resolve(name), join(modelsDir, name)]);
}

/**
 * A model named by a remote request (HTTP model control): a name or path
 * that, with symlinks resolved, lies inside one of `dirs` (models/ and the
 * folder of the model the stage already runs). Pipeline files may name any
 * local file (resolveModel); a request must not reach `../../etc/passwd`.
 */
export function resolveModelWithin(name: string, dirs: string[]): string | undefined {
  const roots = dirs.filter((d) => existsSync(d)).map((d) => realpathSync(d)).map((r) => (r.endsWith(sep) ? r : r + sep));
  const inside = (file: string) => existsSync(file) && roots.some((r) => realpathSync(file).startsWith(r));
  return [resolve(name), ...dirs.map((d) => resolve(d, name))].find(inside);
}

/** A media file given relative to the working directory or to the project. */
export function resolveMediaPath(path: string): string | undefined {
  if (isAbsolute(path)) return firstExisting([path]);
  return firstExisting([resolve(path), join(projectRoot, path)]);
}
