/** Operator instances made from the registry's definitions, as the executor makes them. */
import * as v from "valibot";
import type { Frame } from "../../runtime/core/message.ts";
import type { SinkInstance, SourceInstance, StageContext, TransformInstance } from "../../runtime/core/operator.ts";
import { loadRegistry } from "../../runtime/spec/registry.ts";
import { captureLog, type CapturedLog } from "./pipeline.ts";

export interface Made<T> {
  instance: T;
  log: CapturedLog;
  abort: AbortController;
}

async function make<T>(name: string, options: unknown, stage = name): Promise<Made<T>> {
  const registry = await loadRegistry();
  const def = registry.get(name);
  if (!def) throw new Error(`no operator ${name}`);
  const log = captureLog(stage);
  const abort = new AbortController();
  const ctx: StageContext = { stage, pipeline: "test", log, signal: abort.signal, operators: registry };
  const instance = (await def.create(v.parse(def.options, options) as never, ctx)) as T;
  return { instance, log, abort };
}

export const makeSource = (name: string, options: unknown, stage?: string) => make<SourceInstance>(name, options, stage);
export const makeTransform = (name: string, options: unknown, stage?: string) => make<TransformInstance>(name, options, stage);
export const makeSink = (name: string, options: unknown, stage?: string) => make<SinkInstance>(name, options, stage);

/** Runs a transform on one frame and returns the single frame it gives back. */
export async function step(t: TransformInstance, f: Frame): Promise<Frame> {
  const out = await t.process(f);
  if (!out || Array.isArray(out) || out.kind !== "frame") throw new Error("expected one frame back");
  return out;
}

/** Every frame a file source gives, read to the end. */
export async function readAll(options: unknown): Promise<Frame[]> {
  const { instance } = await makeSource("ingest", options, "cam");
  const frames: Frame[] = [];
  await instance.run(async (f) => void (f.kind === "frame" && frames.push(f)), new AbortController().signal);
  await instance.close?.();
  return frames;
}
