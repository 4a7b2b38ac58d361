/**
 * Messages that flow between stages. In one process they are passed by
 * reference: a stage mutates and forwards the same object, nothing is copied.
 */

export type PixelFormat = "rgb24" | "bgr24" | "jpeg";

export interface Image {
  width: number;
  height: number;
  format: PixelFormat;
  data: Uint8Array;
}

/** How a source image was fitted into a model input, so boxes map back. */
export interface Letterbox {
  /** model pixels per source pixel, per axis (equal for letterbox, may differ for stretch) */
  scaleX: number;
  scaleY: number;
  padX: number;
  padY: number;
}

export interface Tensor {
  dims: number[];
  dtype: "float32";
  data: Float32Array;
  letterbox: Letterbox;
}

/** Raw model output, decoded into detections by `nms`. */
export interface Predictions {
  layout: "yolov5" | "yolov8";
  dims: number[];
  data: Float32Array;
  classNames: string[];
  model: string;
}

export interface Detection {
  class: string;
  classId: number;
  score: number;
  /** [x1, y1, x2, y2] in source-image pixels. */
  box: [number, number, number, number];
  trackId?: number;
}

export interface Frame {
  kind: "frame";
  stream: string;
  seq: number;
  /** Capture time, ms since the Unix epoch. */
  ts: number;
  /** Live frames may be dropped under overload; file frames are backpressured instead. */
  live: boolean;
  image: Image;
  tensor?: Tensor;
  predictions?: Predictions;
  detections?: Detection[];
  /** Milliseconds spent in each stage, by stage id. */
  timings: Record<string, number>;
}

/** Results that must never be dropped (analytics events and the like). */
export interface Event {
  kind: "event";
  stream: string;
  seq: number;
  ts: number;
  type: string;
  data: Record<string, unknown>;
}

export type Message = Frame | Event;

/** True when this message may be dropped under overload. */
export function isDroppable(msg: Message): boolean {
  return msg.kind === "frame" && msg.live;
}
