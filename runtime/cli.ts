#!/usr/bin/env bun
/**
 * framewire command line:
 *   run FILE [--frames N]     run a pipeline (bun run pipeline FILE)
 *   validate FILE             check a pipeline file without running it
 *   eval coco|...             accuracy evaluation (see runtime/eval/)
 */
import { parseArgs } from "node:util";
import { ConfigError, PipelineFileError } from "./core/errors.ts";
import { runPipeline, type PipelineRun } from "./run.ts";
import { loadPipeline, suggest, type StageSelection } from "./spec/loader.ts";
import { createLogger } from "./core/log.ts";
import type { PipelineSpec } from "./spec/loader.ts";
import { isAbsolute, relative } from "node:path";
import { resolvePipelineFile } from "./platform/paths.ts";
import { args as argv, existsSync, exit, onShutdownSignal, peakRss } from "./platform/index.ts";
import { loadRegistry } from "./spec/registry.ts";
import { formatSummary, totals } from "./core/stats.ts";
import { runStatus } from "./observe/cluster.ts";

const USAGE = `usage:
  bun run pipeline FILE [--frames N] [--json] [--nats URL] [--stages a,b] [--placement edge|cloud] [--worker-id ID] [--http-port N]
  bun run validate FILE
  bun run status [--nats URL] [--wait SECONDS] [--json]
  bun run streams ls|add|set|rm ... --nats URL --pipeline NAME (cameras of a running pipeline)
  bun run models put FILE|ls|rollback --nats URL --pipeline NAME [--stage ID] [--version LABEL] (fleet model rollout)
  bun run sub SUBJECT [--nats URL] [--count N] [--raw]   (print what is published on a subject)
  bun run serve --model FILE | --model-repository DIR [--port N] (bun run serve --help)
  bun run eval coco --images DIR --labels DIR [--model FILE]
  bun run docs [--check]      regenerate docs/operators.md and pipelines/pipeline.schema.json
  bun run docs FILE           print the docs of the operators FILE adds (its operators: list)`;

async function openPipeline(name: string | undefined, select?: StageSelection) {
  if (!name) throw new ConfigError(`no pipeline file given\n${USAGE}`);
  const file = resolvePipelineFile(name);
  if (!file) throw new ConfigError(`pipeline file not found: ${name} (looked in the working directory and pipelines/)`);
  // Messages name the file as short as it can be said from here (pipelines/demo.yaml, not a full path).
  const near = relative(process.cwd(), file);
  return loadPipeline(near.startsWith("..") || isAbsolute(near) ? file : near, await loadRegistry(), undefined, select);
}

/**
 * The stage ids this process runs, from --stages or --placement. With both,
 * --stages selects and --placement labels this process's workers (prefer-local).
 */
function selectStages(spec: PipelineSpec, stages?: string, placement?: string): string[] | undefined {
  if (placement && !["edge", "cloud"].includes(placement)) throw new ConfigError(`--placement: expected edge or cloud, got "${placement}"`);
  if (stages) {
    const ids = stages.split(",").map((s) => s.trim()).filter(Boolean);
    const unknown = ids.filter((id) => !spec.stages.some((s) => s.id === id));
    if (unknown.length) throw new ConfigError(`--stages: no stage ${unknown.join(", ")} in ${spec.file} (stages: ${spec.stages.map((s) => s.id).join(", ")})`);
    return ids;
  }
  if (placement) return spec.stages.filter((s) => s.placement === placement || s.placement === "any").map((s) => s.id);
  return undefined;
}

async function run(rest: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      frames: { type: "string" },
      json: { type: "boolean" },
      nats: { type: "string" },
      stages: { type: "string" },
      placement: { type: "string" },
      "worker-id": { type: "string" },
      "http-port": { type: "string" },
    },
  });
  const frames = values.frames === undefined ? undefined : Number(values.frames);
  if (frames !== undefined && !(Number.isInteger(frames) && frames > 0)) throw new ConfigError(`--frames: expected a positive integer, got "${values.frames}"`);
  // Only the stages this process runs have their options checked (a node holds only what it runs).
  const select: StageSelection | undefined = values.stages
    ? { stages: values.stages.split(",").map((x) => x.trim()).filter(Boolean) }
    : values.placement === "edge" || values.placement === "cloud"
      ? { placement: values.placement }
      : undefined;
  const spec = await openPipeline(positionals[0], select);
  const log = createLogger(spec.name);
  const stages = selectStages(spec, values.stages, values.placement);
  const connecting = new AbortController();
  const offConnect = onShutdownSignal(() => connecting.abort());
  let run: PipelineRun;
  try {
    run = await runPipeline(spec, {
      bus: values.nats,
      frames,
      log,
      stages,
      workerId: values["worker-id"],
      placement: values.placement as "edge" | "cloud" | undefined,
      httpPort: values["http-port"],
      signal: connecting.signal,
    });
  } finally {
    offConnect();
  }
  let signals = 0;
  const off = onShutdownSignal((sig) => {
    if (++signals > 1) {
      log.warn(`${sig} again: exiting without draining`);
      exit(130);
    }
    log.info(`${sig}: stopping sources and draining (press again to force)`);
    run.stop(sig);
  });
  const summary = await run.done;
  off();
  console.log(formatSummary(summary));
  if (values.json) console.log(JSON.stringify({ ...totals(summary), peakRssMiB: peakRss() / 1048576, ...summary }));
  const t = totals(summary);
  // Nothing got through and something failed: a broken run, whatever the reason it stopped.
  const broken = t.framesOut === 0 && summary.stages.some((s) => s.lastError) && summary.stages.some((s) => s.kind === "sink");
  // A stop that had to abandon stuck stages lost their work in flight: not a clean run either.
  return broken || summary.abandoned ? 1 : 0;
}

async function validate(rest: string[]): Promise<number> {
  const spec = await openPipeline(rest[0]);
  const chain = spec.stages.map((s) => `${s.id} (${s.def.name})`).join(" → ");
  console.log(`${spec.file}: valid — ${spec.stages.length} stages: ${chain}`);
  return 0;
}

/**
 * Writes docs/operators.md and pipelines/pipeline.schema.json from the
 * operators' schemas; `--check` only compares; with a pipeline file, prints
 * the docs of that file's own operators.
 */
async function docs(rest: string[]): Promise<number> {
  const { operatorsMarkdown } = await import("./spec/schema-doc.ts");
  const pipeline = rest.find((a) => !a.startsWith("-"));
  if (pipeline) {
    const spec = await openPipeline(pipeline);
    const builtIn = await loadRegistry();
    const own = [...spec.registry.values()].filter((d) => !builtIn.has(d.name));
    if (!own.length) throw new ConfigError(`${spec.file} adds no operators (list modules under operators: at its top level)`);
    console.log(operatorsMarkdown(own));
    return 0;
  }
  const { dirname, join } = await import("node:path");
  const { readFileSync, writeFileSync, mkdirSync } = await import("node:fs");
  const { projectRoot } = await import("./platform/paths.ts");
  const { PIPELINE_SCHEMA_FILE, pipelineJsonSchemaText } = await import("./spec/json-schema.ts");
  const defs = [...(await loadRegistry()).values()];
  // The operator reference and the JSON Schema editors check pipeline files with.
  const outputs: [string, string][] = [
    ["docs/operators.md", operatorsMarkdown(defs)],
    [PIPELINE_SCHEMA_FILE, pipelineJsonSchemaText(defs)],
  ];
  if (rest.includes("--check")) {
    const stale = outputs.filter(([name, text]) => (existsSync(join(projectRoot, name)) ? readFileSync(join(projectRoot, name), "utf8") : "") !== text);
    for (const [name] of stale) console.error(`${name} is out of date: run \`bun run docs\``);
    return stale.length ? 1 : 0;
  }
  for (const [name, text] of outputs) {
    const file = join(projectRoot, name);
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, text);
    console.log(`wrote ${file}`);
  }
  return 0;
}

/** "unknown option --frame (did you mean --frames?)" from parseArgs's message, with the flags USAGE lists. */
function unknownOption(message: string): string {
  const typed = /'(--?[\w-]+)'/.exec(message)?.[1];
  if (!typed) return message;
  const hint = suggest(typed, [...new Set(USAGE.match(/--[a-z][\w-]*/g) ?? [])]);
  return `unknown option ${typed}${hint ? ` (did you mean ${hint}?)` : ""}`;
}

async function main(): Promise<number> {
  const [command, ...rest] = argv();
  try {
    switch (command) {
      case "run":
        return await run(rest);
      case "validate":
        return await validate(rest);
      case "docs":
        return await docs(rest);
      case "status":
        return await runStatus(rest);
      case "streams":
        return await (await import("./observe/streams-cli.ts")).runStreams(rest);
      case "models":
        return await (await import("./observe/models-cli.ts")).runModels(rest);
      case "sub":
        return await (await import("./observe/sub-cli.ts")).runSub(rest);
      case "serve":
        return await (await import("./serve/cli.ts")).runServe(rest);
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
      console.error(`error: ${unknownOption(err.message)}\n${USAGE}`);
      return 2;
    }
    throw err;
  }
}

exit(await main());
