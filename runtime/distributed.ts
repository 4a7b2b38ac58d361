import * as v from "valibot";
import type { StageSpec } from "./loader.ts";
import type { Logger } from "./log.ts";
import { isDroppable, type Message } from "./message.ts";
import type { NatsBus } from "./nats-bus.ts";

/**
 * The control plane of a pipeline split across processes, all plain NATS:
 * - `fw.<pipeline>._ctl.load.<stage>`: each worker's load advert (capacity, in flight, latency), every 100 ms;
 * - `fw.<pipeline>._w.<stage>.<worker>`: a worker's own request subject, for load-aware routing;
 * - `fw.<pipeline>._ctl.eos`: a worker finished a stage (its input ended and it drained).
 */
export const loadSubject = (pipeline: string, stage: string) => `fw.${pipeline}._ctl.load.${stage}`;
export const workerSubject = (pipeline: string, stage: string, worker: string) => `fw.${pipeline}._w.${stage}.${worker}`;
export const eosSubject = (pipeline: string) => `fw.${pipeline}._ctl.eos`;
/** Queue group of a stage's workers (the `queue` route). */
export const queueGroup = (pipeline: string, stage: string) => `fw.${pipeline}.${stage}`;

export const Advert = v.object({
  worker: v.string(),
  stage: v.string(),
  placement: v.string(),
  capacity: v.pipe(v.number(), v.minValue(1)),
  inflight: v.pipe(v.number(), v.minValue(0)),
  latencyMs: v.number(),
  cpu: v.number(),
  ts: v.number(),
});
export type Advert = v.InferOutput<typeof Advert>;

const Eos = v.object({ stage: v.string(), worker: v.string() });

/** A worker not heard from for this long is considered gone. */
const WORKER_TTL_MS = 1500;

interface Peer {
  advert: Advert;
  seen: number;
  /** Requests this sender has in flight to the peer. */
  pending: number;
  sent: number;
}

/**
 * Sends a stage's input to the worker with the most spare capacity
 * (`least-loaded`), or to workers of the sender's own placement first
 * (`prefer-local`), using request/reply so every frame is either
 * acknowledged, retried on another worker, or counted as dropped.
 * @example
 * const d = new Dispatcher(bus, "retail", detectStage, "edge", log);
 * await d.send(frame);
 */
export class Dispatcher {
  private peers = new Map<string, Peer>();
  private sub;
  /** Requests not yet answered. */
  pending = 0;
  dropped = 0;
  retried = 0;

  constructor(
    private bus: NatsBus,
    private pipeline: string,
    readonly stage: StageSpec,
    private placement: string,
    private log: Logger,
    private timeoutMs = 10_000,
  ) {
    this.sub = bus.subscribeJson(loadSubject(pipeline, stage.id), (value) => {
      const r = v.safeParse(Advert, value);
      if (!r.success) return;
      const now = performance.now();
      const peer = this.peers.get(r.output.worker);
      if (peer) [peer.advert, peer.seen] = [r.output, now];
      else {
        this.peers.set(r.output.worker, { advert: r.output, seen: now, pending: 0, sent: 0 });
        log.info(`worker ${r.output.worker} (${r.output.placement}) joined stage ${stage.id}`);
      }
    });
  }

  /** Messages sent to each worker so far, by worker id. */
  sentBy(): Record<string, number> {
    return Object.fromEntries([...this.peers].map(([id, p]) => [id, p.sent]));
  }

  /**
   * Resolves once the message is on its way (waiting for a free worker when
   * the message must not be dropped); the reply is handled in the background.
   */
  async send(msg: Message): Promise<void> {
    // Encoded once (and size-checked: too large is the sender's error, not a worker's).
    const payload = this.bus.encode(workerSubject(this.pipeline, this.stage.id, "*"), msg);
    return this.sendEncoded(msg, payload);
  }

  private async sendEncoded(msg: Message, payload: Uint8Array, exclude?: string): Promise<void> {
    const deadline = performance.now() + this.timeoutMs;
    for (;;) {
      const peer = this.pick(isDroppable(msg), exclude);
      if (peer) return this.dispatch(peer, msg, payload, exclude === undefined);
      if (performance.now() > deadline) {
        this.drop(msg, `no worker of stage ${this.stage.id} for ${this.timeoutMs / 1000} s`);
        return;
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  close(): void {
    this.sub.unsubscribe();
  }

  private pick(droppable: boolean, exclude?: string): Peer | undefined {
    const now = performance.now();
    let best: Peer | undefined;
    let bestScore = -Infinity;
    for (const [id, p] of this.peers) {
      if (now - p.seen > WORKER_TTL_MS) {
        this.peers.delete(id);
        this.log.warn(`worker ${id} of stage ${this.stage.id} left (no load advert for ${WORKER_TTL_MS} ms)`);
        continue;
      }
      if (id === exclude) continue;
      const load = Math.max(p.advert.inflight, p.pending);
      const free = p.advert.capacity - load;
      // Live frames go to the best worker even when all are full: its inbox drops the oldest, bounded latency.
      if (free <= 0 && !droppable) continue;
      // Spare slots first, then the quicker worker; prefer-local adds a large bonus for the sender's own placement.
      let score = free * 1000 - p.advert.latencyMs;
      if (this.stage.route === "prefer-local" && p.advert.placement === this.placement && free > 0) score += 1e9;
      if (score > bestScore) [best, bestScore] = [p, score];
    }
    return best;
  }

  private dispatch(peer: Peer, msg: Message, payload: Uint8Array, mayRetry: boolean): void {
    const id = peer.advert.worker;
    peer.pending++;
    peer.sent++;
    this.pending++;
    this.bus.request(workerSubject(this.pipeline, this.stage.id, id), payload, this.timeoutMs).then(
      (reply) => {
        peer.pending--;
        this.pending--;
        if (reply === "dropped") this.dropped++;
        else if (reply !== "done") this.log.warn(`worker ${id} answered ${reply} for ${msg.stream}#${msg.seq}`);
      },
      async (err: Error) => {
        peer.pending--;
        // The worker is gone or stuck: forget it until it advertises again.
        this.peers.delete(id);
        if (mayRetry) {
          this.retried++;
          this.log.warn(`worker ${id} did not answer (${err.message}); retrying ${msg.stream}#${msg.seq} elsewhere`);
          await this.sendEncoded(msg, payload, id);
        } else this.drop(msg, `worker ${id} did not answer: ${err.message}`);
        this.pending--;
      },
    );
  }

  private drop(msg: Message, why: string): void {
    this.dropped++;
    if (this.dropped <= 5 || this.dropped % 100 === 0) this.log.warn(`dropped ${msg.stream}#${msg.seq} (${this.dropped} so far): ${why}`);
  }
}

/** Tracks which workers of which stages exist and which have finished. */
export class EndOfStream {
  private done = new Map<string, Set<string>>();
  private alive = new Map<string, Map<string, number>>();
  private subs;

  constructor(
    private bus: NatsBus,
    private pipeline: string,
    stages: string[],
  ) {
    const watched = new Set(stages);
    this.subs = [
      bus.subscribeJson(eosSubject(pipeline), (value) => {
        const r = v.safeParse(Eos, value);
        if (!r.success || !watched.has(r.output.stage)) return;
        const set = this.done.get(r.output.stage) ?? new Set();
        set.add(r.output.worker);
        this.done.set(r.output.stage, set);
      }),
      ...stages.map((s) =>
        bus.subscribeJson(loadSubject(pipeline, s), (value) => {
          const r = v.safeParse(Advert, value);
          if (!r.success) return;
          const m = this.alive.get(s) ?? new Map();
          m.set(r.output.worker, performance.now());
          this.alive.set(s, m);
        }),
      ),
    ];
  }

  /** True once `stage` has reported end of stream and none of its live workers is still going. */
  finished(stage: string): boolean {
    const done = this.done.get(stage);
    if (!done?.size) return false;
    const now = performance.now();
    for (const [worker, seen] of this.alive.get(stage) ?? []) {
      if (now - seen < WORKER_TTL_MS && !done.has(worker)) return false;
    }
    return true;
  }

  announce(stage: string, worker: string): void {
    this.bus.publishJson(eosSubject(this.pipeline), { stage, worker });
  }

  close(): void {
    for (const s of this.subs) s.unsubscribe();
  }
}
