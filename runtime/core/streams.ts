/**
 * The stream (camera) set of a source that reads several, changed while the
 * pipeline runs: what the HTTP API (`/api/streams`), the NATS control
 * subject and `bun run streams` talk to. `ingest` implements it.
 */
import { codedError } from "./errors.ts";

/** One stream as listed: its spec (credentials redacted) and its state. */
export interface StreamInfo {
  id: string;
  /** The source stage that reads it. */
  stage: string;
  url: string;
  live: boolean;
  connected: boolean;
  frames: number;
  fps: number;
  /** Live frames of this stream dropped in this process's inboxes (overload). */
  drops: number;
  reconnects: number;
  lastError?: string;
  /** The per-stream options beyond id and url. */
  options: Record<string, unknown>;
}

/** A source whose streams can be listed, added, changed and removed at runtime. */
export interface StreamControl {
  list(): StreamInfo[];
  /** Validates and starts a stream; throws StreamExistsError or StreamOptionsError. */
  add(spec: unknown): Promise<StreamInfo>;
  /** Changes a stream's options (it restarts with them); throws StreamNotFoundError or StreamOptionsError. */
  update(id: string, patch: unknown): Promise<StreamInfo>;
  /** Stops a stream (its ffmpeg ends, its state is freed); throws StreamNotFoundError. */
  remove(id: string): Promise<void>;
}

/** A stream id that is taken (HTTP 409). */
export const StreamExistsError = codedError("StreamExistsError", "E_STREAM_EXISTS");
export type StreamExistsError = InstanceType<typeof StreamExistsError>;
/** No stream of that id (HTTP 404). */
export const StreamNotFoundError = codedError("StreamNotFoundError", "E_STREAM_NOT_FOUND");
export type StreamNotFoundError = InstanceType<typeof StreamNotFoundError>;
/** A stream spec that its source's schema refuses (HTTP 400). */
export const StreamOptionsError = codedError("StreamOptionsError", "E_STREAM_OPTIONS");
export type StreamOptionsError = InstanceType<typeof StreamOptionsError>;

/**
 * Where a source keeps its stream set across restarts: a file beside the
 * outputs (memory bus) or a NATS KV bucket (every node sees the same set).
 */
export interface StreamStore {
  readonly where: string;
  /** The saved set, or undefined when none was ever saved. */
  load(): Promise<Record<string, unknown>[] | undefined>;
  put(id: string, spec: Record<string, unknown>): Promise<void>;
  delete(id: string): Promise<void>;
  /** Changes made elsewhere (other nodes), as they happen; returns a stop function. */
  watch?(on: (change: { id: string; spec?: Record<string, unknown> }) => void): () => void;
  close?(): Promise<void>;
}
