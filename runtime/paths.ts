import { fileURLToPath } from "node:url";
import { isAbsolute, join, resolve } from "node:path";
import { existsSync } from "./platform.ts";

/** The framewire checkout (the folder holding runtime/, operators/, models/). */
export const projectRoot = fileURLToPath(new URL("..", import.meta.url));
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

/** A media file given relative to the working directory or to the project. */
export function resolveMediaPath(path: string): string | undefined {
  if (isAbsolute(path)) return firstExisting([path]);
  return firstExisting([resolve(path), join(projectRoot, path)]);
}
