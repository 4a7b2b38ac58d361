/**
 * Publishing the page's results to the pipeline over `/browser/ws`: a hello,
 * then one message per frame (detections, and a JPEG at the rate the
 * pipeline asks for). At most `window` frames wait for their ack; a frame
 * that finds the window full is skipped (the page is live: late results are
 * worth less than fresh ones), and counted.
 */
import * as v from "valibot";
import { ServerMessage, type FrameMessage, type PublishedDetection } from "../../runtime/observe/http/browser-protocol.ts";

export interface PublisherOptions {
  /** Stream suffix: the stream is `browser-<id>`. */
  id?: string;
  token?: string;
  backend?: string;
  model?: string;
  /** Frames in flight before new ones are skipped. */
  window?: number;
}

/** What `send` needs for one frame. */
export interface OutgoingFrame {
  ts: number;
  width: number;
  height: number;
  /** Absent: the server tier detects (then `jpeg` is required). */
  detections?: PublishedDetection[];
  /** The frame as a JPEG, when one is sent with it. */
  jpeg?: Uint8Array;
  ms?: number;
  backend?: string;
}

/**
 * Base64 of bytes, in chunks (String.fromCharCode has an argument limit).
 * @example
 * toBase64(new Uint8Array([0xff, 0xd8, 0xff])); // "/9j/"
 */
export function toBase64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

/**
 * A connected publisher.
 * @example
 * const pub = await Publisher.connect({ id: "phone-1" });
 * await pub.send({ ts: Date.now(), width: 640, height: 480, detections });
 */
export class Publisher {
  /** Frames sent, acknowledged, and skipped because the window was full. */
  readonly counts = { sent: 0, acked: 0, skipped: 0 };
  private seq = 0;
  private waiting = new Map<number, { resolve: (d: PublishedDetection[] | undefined) => void; reject: (e: Error) => void }>();
  private lastPicture = -Infinity;
  private closedWith?: Error;
  /** Called when the server closes the connection or refuses the stream. */
  onClose?: (why: string) => void;

  private constructor(
    private ws: WebSocket,
    readonly stream: string,
    readonly frameFps: number,
    readonly maxWidth: number,
    private window: number,
  ) {
    ws.addEventListener("message", (e) => this.receive(e.data));
    ws.addEventListener("close", (e) => this.fail(new Error(`connection closed (${e.code}${e.reason ? `: ${e.reason}` : ""})`)));
  }

  /**
   * Opens `/browser/ws` and says hello; resolves once the server has given the stream id.
   * @throws Error with the server's reason when it refuses (bad token, id taken, no browser stage).
   */
  static connect(o: PublisherOptions = {}): Promise<Publisher> {
    const url = new URL("/browser/ws", location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(url);
    return new Promise((resolve, reject) => {
      const off = () => {
        ws.removeEventListener("message", first);
        ws.removeEventListener("close", closed);
      };
      const closed = (e: CloseEvent) => {
        off();
        reject(new Error(`the server refused the stream: ${e.reason || `closed (${e.code})`}`));
      };
      const first = (e: MessageEvent) => {
        const m = v.safeParse(ServerMessage, safeJson(e.data));
        if (!m.success) return;
        if (m.output.type === "error") {
          off();
          reject(new Error(m.output.error));
          ws.close();
        } else if (m.output.type === "ready") {
          off();
          resolve(new Publisher(ws, m.output.stream, m.output.frameFps, m.output.maxWidth, o.window ?? 2));
        }
      };
      ws.addEventListener("message", first);
      ws.addEventListener("close", closed);
      ws.addEventListener("open", () => ws.send(JSON.stringify({ type: "hello", id: o.id, token: o.token, backend: o.backend, model: o.model })));
    });
  }

  /** Whether a picture should go with a frame now (the pipeline's `frameFps`). */
  wantsPicture(now = performance.now()): boolean {
    return this.frameFps > 0 && now - this.lastPicture >= 1000 / this.frameFps;
  }

  /**
   * Sends one frame; resolves with its ack (the server tier's detections,
   * when it detected them), or with null when the frame was skipped because
   * `window` frames still wait for theirs.
   */
  send(f: OutgoingFrame): Promise<{ seq: number; detections?: PublishedDetection[] } | null> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (this.waiting.size >= this.window) {
      this.counts.skipped++;
      return Promise.resolve(null);
    }
    const seq = this.seq++;
    const msg: FrameMessage = { type: "frame", seq, ts: f.ts, width: f.width, height: f.height };
    if (f.detections) msg.detections = f.detections;
    if (f.jpeg) {
      msg.jpeg = toBase64(f.jpeg);
      this.lastPicture = performance.now();
    }
    if (f.ms !== undefined) msg.ms = f.ms;
    if (f.backend) msg.backend = f.backend;
    this.ws.send(JSON.stringify(msg));
    this.counts.sent++;
    return new Promise((resolve, reject) => this.waiting.set(seq, { resolve: (d) => resolve({ seq, ...(d ? { detections: d } : {}) }), reject }));
  }

  close(): void {
    this.ws.close(1000, "page closed the stream");
  }

  private receive(data: unknown): void {
    const m = v.safeParse(ServerMessage, safeJson(data));
    if (!m.success) return;
    const msg = m.output;
    if (msg.type === "ack") {
      this.counts.acked++;
      const w = this.waiting.get(msg.seq);
      this.waiting.delete(msg.seq);
      w?.resolve(msg.detections);
    } else if (msg.type === "error") {
      // A refused frame: its sender learns why; a fatal error ends the connection (close follows).
      const err = new Error(msg.error);
      if (msg.fatal) this.fail(err);
      else if (msg.seq !== undefined) {
        const w = this.waiting.get(msg.seq);
        this.waiting.delete(msg.seq);
        w?.reject(err);
      }
    }
  }

  private fail(err: Error): void {
    if (this.closedWith) return;
    this.closedWith = err;
    for (const w of this.waiting.values()) w.reject(err);
    this.waiting.clear();
    this.onClose?.(err.message);
  }
}

function safeJson(data: unknown): unknown {
  if (typeof data !== "string") return undefined;
  try {
    return JSON.parse(data);
  } catch {
    return undefined;
  }
}
