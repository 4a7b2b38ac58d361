import type * as v from "valibot";
import type { Frame, Message } from "./message.ts";
import type { StreamControl } from "./streams.ts";
import type { Logger } from "./log.ts";
import type { NatsLink } from "./bus.ts";
import type { OperatorMetric } from "./metric.ts";
import type { ModelControl } from "./model-status.ts";

export type { OperatorMetric };

/** What every operator instance gets from the runtime. */
export interface StageContext {
  /** The stage id from the pipeline file. */
  stage: string;
  pipeline: string;
  log: Logger;
  /** Aborted when the pipeline shuts down. */
  signal: AbortSignal;
  /** The pipeline's NATS connection, when its bus is NATS (sinks may publish results on it). */
  nats?: NatsLink;
  /**
   * Every operator the pipeline knows, built-in and its own, by name: for
   * operators that compose others (infer-dispatch), so none imports another.
   */
  operators?: ReadonlyMap<string, OperatorDefinition>;
}

/** Optional views any instance may offer the HTTP server and status; read on request, never per frame. */
export interface Observable {
  /** Counters and gauges of its own (reconnects, inference time per model version, ...). */
  metrics?(): OperatorMetric[];
  /** The model versions it serves, for status and hot reload / canary control. */
  models?: ModelControl;
  /** The streams a source reads, when they can be changed at runtime (HTTP /api/streams, `bun run streams`). */
  streams?: StreamControl;
}

/** Produces frames (and events about its streams) until it ends (file end) or `signal` aborts. */
export interface SourceInstance extends Observable {
  /** Calls `emit` for each frame or event; honour its promise (backpressure). */
  run(emit: (msg: Message) => Promise<void>, signal: AbortSignal): Promise<void>;
  close?(): Promise<void>;
}

/** Turns one message into zero, one or several. */
export interface TransformInstance extends Observable {
  /**
   * How many messages it wants in flight at once (e.g. to batch frames of
   * several streams into one inference). The executor runs at least this
   * many workers on the stage's inbox and keeps outputs in arrival order.
   */
  readonly concurrency?: number;
  process(msg: Message): Message | Message[] | null | Promise<Message | Message[] | null>;
  close?(): Promise<void>;
}

/** Consumes messages; nothing flows out. */
export interface SinkInstance extends Observable {
  process(msg: Message): void | Promise<void>;
  close?(): Promise<void>;
}

/** Counting lines and zones (normalised 0..1) a stage draws on the live page. */
export interface Overlays {
  lines: { id: string; from: [number, number]; to: [number, number] }[];
  zones: { id: string; polygon: [number, number][] }[];
}

interface Base<S extends v.GenericSchema> {
  name: string;
  /** One line for `framewire operators` and the README. */
  description: string;
  /** The only source of truth for the options' docs and errors. */
  options: S;
  /**
   * Keeps state per stream (a tracker, counters): one worker must see all of
   * a stream's frames, so the loader refuses `replicas` > 1 and load-aware routes.
   */
  stateful?: boolean;
  /** What a stage with these options draws on the live page (lines, zones); read from the file, wherever the stage runs. */
  overlays?(options: v.InferOutput<S>): Overlays;
}

export interface SourceDefinition<S extends v.GenericSchema = v.GenericSchema> extends Base<S> {
  kind: "source";
  create(options: v.InferOutput<S>, ctx: StageContext): SourceInstance | Promise<SourceInstance>;
}
export interface TransformDefinition<S extends v.GenericSchema = v.GenericSchema> extends Base<S> {
  kind: "transform";
  create(options: v.InferOutput<S>, ctx: StageContext): TransformInstance | Promise<TransformInstance>;
}
export interface SinkDefinition<S extends v.GenericSchema = v.GenericSchema> extends Base<S> {
  kind: "sink";
  create(options: v.InferOutput<S>, ctx: StageContext): SinkInstance | Promise<SinkInstance>;
}

export type OperatorDefinition = SourceDefinition<any> | TransformDefinition<any> | SinkDefinition<any>;

/**
 * Declares an operator; typing only, returned as is.
 * @example
 * export default defineOperator({
 *   name: "passthrough", kind: "transform", description: "Forwards messages.",
 *   options: v.strictObject({}),
 *   create: () => ({ process: (msg) => msg }),
 * });
 */
export function defineOperator<S extends v.GenericSchema>(def: SourceDefinition<S>): SourceDefinition<S>;
export function defineOperator<S extends v.GenericSchema>(def: TransformDefinition<S>): TransformDefinition<S>;
export function defineOperator<S extends v.GenericSchema>(def: SinkDefinition<S>): SinkDefinition<S>;
export function defineOperator(def: OperatorDefinition): OperatorDefinition {
  return def;
}
