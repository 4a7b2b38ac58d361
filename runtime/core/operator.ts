import type * as v from "valibot";
import type { Detection, Frame, FrameMeta, Message } from "./message.ts";
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
  /** This process's worker id (unique per process; `--worker-id` or host-pid-random), as status and the NATS service report it. */
  worker?: string;
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
  /**
   * A source fed from outside the process: clients (the browser page, over
   * the HTTP server's `/browser/ws`) open streams on it and push frames that
   * it emits as its own. The HTTP route finds it through `exec.live()` and
   * validates what arrives before handing it over (operators/browser.ts).
   */
  ingress?: Ingress;
  /**
   * Event clips a stage writes (operators/clip.ts): the HTTP server serves
   * them under `/clips/<path>` (only inside `dir`) and lists them on `/api/clips`.
   */
  clips?: ClipStore;
  /**
   * Per-stream occupancy heatmaps (operators/heatmap.ts): the HTTP server
   * renders them as `GET /api/streams/:id/heatmap.png` (and `.json`) and the
   * live page overlays them on the stream's tile.
   */
  heatmap?: HeatmapSource;
  /**
   * The lines and zones a counting stage uses per stream, changeable while it
   * runs without losing its totals (operators/zones.ts): `GET/PUT
   * /api/zones/:stage/streams/:id` and the live page's zone editor.
   */
  geometry?: GeometryControl;
}

/** A stream's line and zone totals, as `counts` events carry them (see {@link Observable.geometry}). */
export interface ZoneTotals {
  lines: Record<string, { in: number; out: number }>;
  zones: Record<string, { occupancy: number; entries: number }>;
}

/** A stream's geometry with its totals now. */
export interface StreamGeometry {
  geometry: Overlays;
  counts: ZoneTotals;
}

/** Lines and zones per stream, read and replaced at runtime (see {@link Observable.geometry}). */
export interface GeometryControl {
  /** Streams the stage has seen or has geometry of its own for. */
  streams(): string[];
  get(stream: string): StreamGeometry;
  /**
   * Replaces the stream's lines and zones between two frames. Totals of the
   * ids that stay are kept; a line whose ends moved forgets which side each
   * track was on (no crossing is counted for the move itself); a track that
   * a changed zone now puts inside or outside enters or exits it then.
   * @throws FramewireError `E_GEOMETRY` naming the field, when the geometry is invalid.
   */
  set(stream: string, geometry: Overlays): StreamGeometry;
}

/** One stream's heatmap: dwell seconds per grid cell over a window (see {@link Observable.heatmap}). */
export interface HeatmapGrid {
  readonly cols: number;
  readonly rows: number;
  /** Row-major, `cols × rows`, top left first: seconds that track anchor points spent in each cell within the window. */
  readonly cells: Float32Array;
  /** How far back the cells reach, seconds. */
  readonly windowSeconds: number;
  /** Stream time of the newest frame counted, ms (capture time for live streams). */
  readonly updated: number;
}

/** The heatmaps a stage accumulates (see {@link Observable.heatmap}); read on request, summed then. */
export interface HeatmapSource {
  /** Streams with a heatmap. */
  streams(): string[];
  /** The stream's heatmap now, or undefined when the stage has none for it. */
  grid(stream: string): HeatmapGrid | undefined;
}

/** One event clip on disk, as `GET /api/clips` lists it (see {@link Observable.clips}). */
export interface ClipInfo {
  /** Relative to the clip directory (`cam/20261128T164007.512Z-cross.mp4`): what event records carry as `clip`. */
  path: string;
  stream: string;
  /** When the clip's first event happened, ms since the Unix epoch. */
  ts: number;
  /** The type of the clip's first event. */
  type: string;
  bytes: number;
}

/** The clips a stage keeps (see {@link Observable.clips}). */
export interface ClipStore {
  /** The clip directory, absolute. */
  readonly dir: string;
  /** Clips on disk, newest first; with `stream`, that stream's only. */
  list(stream?: string): Promise<ClipInfo[]>;
}

/** What an {@link Ingress} tells its clients: picture rate, largest frame, where detection should run. */
export interface IngressSettings {
  /** Pictures per second a client attaches to its frames (0: none; frames then carry a placeholder picture). */
  readonly frameFps: number;
  /** Frames wider than this are scaled down by the client (boxes with them). */
  readonly maxWidth: number;
  /** Largest message a client may send, bytes. */
  readonly maxMessageBytes: number;
  /** Minimum score and NMS IoU threshold clients detect with. */
  readonly conf: number;
  readonly iou: number;
  /** Detection in the client unless the server's load (0..1) and the client's round trip allow the server tier. */
  readonly tier: { readonly serverMaxLoad: number; readonly maxRttMs: number };
  /** Whether this source can detect frames that arrive without detections (the server tier). */
  readonly serverTier: boolean;
}

/** One frame a client pushes: its size, its detections (or none: the server tier detects), maybe its picture. */
export interface IngressFrame {
  /** Capture time, ms since the Unix epoch. */
  ts: number;
  width: number;
  height: number;
  detections?: readonly Detection[];
  /** The frame as a JPEG of width × height. */
  jpeg?: Uint8Array;
  meta?: Partial<FrameMeta>;
}

/** A client's stream on an {@link Ingress}. */
export interface IngressStream {
  readonly id: string;
  /** Emits the frame (live) from the source; resolves with it as emitted (the server tier's detections added) once sent on. */
  push(frame: IngressFrame): Promise<Frame>;
  /** Ends the stream with a `stream-end` event, so stateful stages free its state. */
  close(reason: string): Promise<void>;
}

/** A source's door for clients outside the process (see {@link Observable.ingress}). */
export interface Ingress {
  readonly settings: IngressSettings;
  /**
   * Opens stream `id`.
   * @throws IngressError (`E_INGRESS`) when the id is taken, the source is at its stream limit or not running.
   */
  open(id: string): IngressStream;
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
