/**
 * framewire's public API: what a user operator or an embedding program
 * imports (`import { defineOperator } from "framewire"`).
 * @example
 * import { defineOperator, derive, v } from "framewire";
 * export default defineOperator({
 *   name: "count-people", kind: "transform", description: "Counts people per frame into meta.people.",
 *   options: v.strictObject({}),
 *   create: () => ({
 *     process: (msg) => (msg.kind === "frame" ? derive(msg, { meta: { people: (msg.detections ?? []).filter((d) => d.class === "person").length } }) : msg),
 *   }),
 * });
 */
/** valibot, as framewire uses it: operators' option schemas need no dependency of their own. */
export * as v from "valibot";
export { defineOperator } from "./core/operator.ts";
export type {
  Observable,
  OperatorDefinition,
  OperatorMetric,
  Overlays,
  SinkDefinition,
  SinkInstance,
  SourceDefinition,
  SourceInstance,
  StageContext,
  TransformDefinition,
  TransformInstance,
} from "./core/operator.ts";
export { derive, isDroppable, seal } from "./core/message.ts";
export type { Detection, Event, Frame, FrameChanges, FrameMeta, Image, Letterbox, Message, PixelFormat, Predictions, Tensor, TrackInfo } from "./core/message.ts";
export { codedError, ConfigError, FramewireError, PipelineFileError, StageError } from "./core/errors.ts";
export type { FileIssue } from "./core/errors.ts";
export type { Logger } from "./core/log.ts";
export type { Bus, NatsLink } from "./core/bus.ts";
export { loadPipeline, parsePipeline } from "./spec/loader.ts";
export type { PipelineSpec, StageSpec } from "./spec/loader.ts";
export { loadRegistry } from "./spec/registry.ts";
export type { Registry } from "./spec/registry.ts";
export { createBus, runPipeline } from "./run.ts";
export type { PipelineRun, PipelineRunOptions } from "./run.ts";
export type { PipelineSummary } from "./core/stats.ts";
export { decodeDetections } from "./inference/yolo.ts";
