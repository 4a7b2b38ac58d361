/** Building and running pipelines in-process, with their log captured. */
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { PipelineFileError } from "../../runtime/core/errors.ts";
import { Executor, type RunOptions } from "../../runtime/engine/executor.ts";
import { parsePipeline, type PipelineSpec } from "../../runtime/spec/loader.ts";
import type { Logger } from "../../runtime/core/log.ts";
import { MemoryBus } from "../../runtime/bus/memory.ts";
import type { OperatorDefinition } from "../../runtime/core/operator.ts";
import { loadRegistry, type Registry } from "../../runtime/spec/registry.ts";
import type { PipelineSummary, StageSnapshot } from "../../runtime/core/stats.ts";

/** A Logger that keeps its lines (`level [scope] message`); FRAMEWIRE_TEST_LOG=1 also prints them. */
export interface CapturedLog extends Logger {
  lines: string[];
  text(): string;
}

export function captureLog(scope = "test", lines: string[] = []): CapturedLog {
  const echo = process.env.FRAMEWIRE_TEST_LOG === "1";
  const emit = (level: string) => (msg: string) => {
    const line = `${level} [${scope}] ${msg}`;
    lines.push(line);
    if (echo) console.error(line);
  };
  return {
    lines,
    text: () => lines.join("\n"),
    debug: emit("debug"),
    info: emit("info"),
    warn: emit("warn"),
    error: emit("error"),
    child: (s) => captureLog(`${scope}/${s}`, lines),
  };
}

/** The shipped operators, plus test-only ones (never written to operators/). */
export async function registryWith(...extra: OperatorDefinition[]): Promise<Registry> {
  const reg = new Map(await loadRegistry());
  for (const def of extra) reg.set(def.name, def);
  return reg;
}

const noEnv = () => undefined;

/** Parses pipeline YAML, resolving env from `env` only (never the test process's environment). */
export function parse(text: string, registry: Registry, env: Record<string, string> = {}, file = "test.yaml"): PipelineSpec {
  return parsePipeline(text, file, registry, (k) => env[k] ?? noEnv());
}

/** The PipelineFileError thrown for `text`; fails the test if it parses. */
export function parseError(text: string, registry: Registry, env: Record<string, string> = {}): PipelineFileError {
  try {
    parse(text, registry, env);
  } catch (err) {
    if (err instanceof PipelineFileError) return err;
    throw err;
  }
  throw new Error(`expected a PipelineFileError for:\n${text}`);
}

/** 1-based line of the first line containing `needle`. */
export function lineOf(text: string, needle: string): number {
  const i = text.split("\n").findIndex((l) => l.includes(needle));
  if (i < 0) throw new Error(`"${needle}" is not in the text`);
  return i + 1;
}

export interface Run {
  summary: PipelineSummary;
  log: CapturedLog;
  stage(id: string): StageSnapshot;
}

/** Runs a parsed pipeline on a fresh memory bus to completion (or `frames`). */
export async function runPipeline(spec: PipelineSpec, opts: RunOptions = {}): Promise<Run> {
  const log = captureLog(spec.name);
  const bus = new MemoryBus();
  const exec = new Executor(spec, bus, { log, ...opts });
  await exec.start();
  const summary = await exec.done;
  await bus.close();
  return {
    summary,
    log,
    stage: (id) => {
      const s = summary.stages.find((x) => x.stage === id);
      if (!s) throw new Error(`no stage ${id} in the summary`);
      return s;
    },
  };
}

/** Writes `text` as a pipeline file in `dir`; returns its path. */
export async function writePipeline(dir: string, text: string, name = "pipeline.yaml"): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, text);
  return file;
}
