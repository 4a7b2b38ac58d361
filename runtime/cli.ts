#!/usr/bin/env bun
/**
 * framewire command line:
 *   run FILE [--frames N]     run a pipeline (bun run pipeline FILE)
 *   validate FILE             check a pipeline file without running it
 *   eval coco|...             accuracy evaluation (see runtime/eval/)
 */
import { parseArgs } from "node:util";
import { ConfigError, PipelineFileError } from "./errors.ts";
import { Executor } from "./executor.ts";
import { loadPipeline } from "./loader.ts";
import { createLogger } from "./log.ts";
import { MemoryBus } from "./memory-bus.ts";
import { resolvePipelineFile } from "./paths.ts";
import { args as argv, exit, onShutdownSignal } from "./platform.ts";
import { loadRegistry } from "./registry.ts";
import { formatSummary, totals } from "./stats.ts";

const USAGE = `usage:
  bun run pipeline FILE [--frames N] [--json]
  bun run validate FILE
  bun run eval coco --images DIR --labels DIR [--model FILE]`;

async function openPipeline(name: string | undefined) {
  if (!name) throw new ConfigError(`no pipeline file given\n${USAGE}`);
  const file = resolvePipelineFile(name);
  if (!file) throw new ConfigError(`pipeline file not found: ${name} (looked in the working directory and pipelines/)`);
  return loadPipeline(file, await loadRegistry());
}

function createBus(url: string) {
  if (url === "memory") return new MemoryBus();
  throw new ConfigError(`bus "${url}" is not supported by this build: use "memory"`);
}

async function run(rest: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: { frames: { type: "string" }, json: { type: "boolean" } },
  });
  const frames = values.frames === undefined ? undefined : Number(values.frames);
  if (frames !== undefined && !(Number.isInteger(frames) && frames > 0)) throw new ConfigError(`--frames: expected a positive integer, got "${values.frames}"`);
  const spec = await openPipeline(positionals[0]);
  const log = createLogger(spec.name);
  const exec = new Executor(spec, createBus(spec.bus), { frames, log });
  let signals = 0;
  const off = onShutdownSignal((sig) => {
    if (++signals > 1) {
      log.warn(`${sig} again: exiting without draining`);
      exit(130);
    }
    log.info(`${sig}: stopping sources and draining (press again to force)`);
    exec.stop(sig);
  });
  await exec.start();
  const summary = await exec.done;
  off();
  console.log(formatSummary(summary));
  if (values.json) console.log(JSON.stringify({ ...totals(summary), ...summary }));
  const t = totals(summary);
  return t.framesIn === 0 && summary.stages.some((s) => s.lastError) ? 1 : 0;
}

async function validate(rest: string[]): Promise<number> {
  const spec = await openPipeline(rest[0]);
  const chain = spec.stages.map((s) => `${s.id} (${s.def.name})`).join(" → ");
  console.log(`${spec.file}: valid — ${spec.stages.length} stages: ${chain}`);
  return 0;
}

async function main(): Promise<number> {
  const [command, ...rest] = argv();
  try {
    switch (command) {
      case "run":
        return await run(rest);
      case "validate":
        return await validate(rest);
      case "eval": {
        const { runEval } = await import("./eval/cli.ts");
        return await runEval(rest);
      }
      default:
        console.error(USAGE);
        return 2;
    }
  } catch (err) {
    // Mistakes in files or flags get a message, not a stack trace.
    if (err instanceof PipelineFileError || err instanceof ConfigError) {
      console.error(`error: ${err.message}`);
      return 2;
    }
    if (err instanceof TypeError && (err as { code?: string }).code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
      console.error(`error: ${err.message}\n${USAGE}`);
      return 2;
    }
    throw err;
  }
}

exit(await main());
