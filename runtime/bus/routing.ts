import * as v from "valibot";
import type { StageSpec } from "../spec/loader.ts";
import type { Logger } from "../core/log.ts";
import { isDroppable, type Message } from "../core/message.ts";
import type { NatsBus } from "./nats.ts";
import type { WireOptions } from "./wire.ts";

/**
 * The control plane of a pipeline split across processes, all plain NATS
 * (documented in docs/distributed.md):
 * - `fw.<pipeline>._ctl.load.<stage>`: each worker's load advert (capacity, in flight, latency), every 100 ms;
 * - `fw.<pipeline>._w.<stage>.<worker>`: a worker's own request subject (least-loaded, prefer-local);
 * - `fw.<pipeline>._q.<stage>`: the stage's request subject, served by a queue group (queue);
 * - `fw.<pipeline>._ctl.eos`: a worker finished a stage (its input ended and it drained).
 */
export const loadSubject = (pipeline: string, stage: string) => `fw.${pipeline}._ctl.load.${stage}`;
export const workerSubject = (pipeline: string, stage: string, worker: string) => `fw.${pipeline}._w.${stage}.${worker}`;
export const queueSubject = (pipeline: string, stage: string) => `fw.${pipeline}._q.${stage}`;
export const eosSubject = (pipeline: string) => `fw.${pipeline}._ctl.eos`;
/** Queue group of a stage's workers (the `queue` route, and inputs published from outside the pipeline). */
export const queueGroup = (pipeline: string, stage: string) => `fw.${pipeline}.${stage}`;

/**
 * A worker's answer to a request: processed (and forwarded), evicted from a
 * full inbox, failed in the operator, not a framewire message, a frame it
 * had already received (a retry whose first attempt got through), or
 * shutting down (the sender tries another worker).
 */
export type Reply = "done" | "dropped" | "failed" | "rejected" | "duplicate" | "closing";

export const Advert = v.object({
  worker: v.string(),
  stage: v.string(),
  placement: v.string(),
  /** Messages the worker takes at once (inbox + what it processes at once); 0 while it shuts down. */
  capacity: v.pipe(v.number(), v.minValue(0)),
  /** Messages it processes at the same time. */
  replicas: v.optional(v.pipe(v.number(), v.minValue(1))),
  inflight: v.pipe(v.number(), v.minValue(0)),
  latencyMs: v.number(),
  cpu: v.number(),
  ts: v.number(),
});
export type Advert = v.InferOutput<typeof Advert>;

export const Eos = v.object({ stage: v.string(), worker: v.string() });

/** A worker not heard from for this long is considered gone. */
export const WORKER_TTL_MS = 1500;
/** Attempts per message (the first send and retries after a worker vanished or timed out). */
const MAX_TRIES = 3;

interface Peer {
  advert: Advert;
  seen: number;
  /** Requests this sender has in flight to the peer. */
  pending: number;
  /** `pending` when the last advert came: the rest of the advertised load is other senders'. */
  pendingAtAdvert: number;
  sent: number;
  /** A request to it failed: skipped until its next advert (a dead worker sends none and expires). */
  suspect: boolean;
}

/** One message on its way, over one or more attempts. */
interface Flight {
  msg: Message;
  payload: Uint8Array;
  tries: number;
  /** Worker of the current attempt (undefined on the queue route, where the server picks). */
  worker?: string;
  /** Ends the current attempt; false when it had already ended (a late answer is then ignored). */
  abandon?: () => boolean;
}

export interface DispatcherOptions {
  /** How long a worker may take to answer before the message is tried elsewhere (default 30 s). */
  timeoutMs?: number;
  /** How the link encodes frames (the producing stage's `link`). */
  wire?: WireOptions;
}

/**
 * Sends one stage's output to the workers of a consumer stage in other
 * processes, by the consumer's route:
 * - `queue`: requests to the stage's queue group (the server picks a member);
 * - `least-loaded`: to the worker with the most spare capacity by its adverts,
 *   weighted by its latency (the one expected to finish the message first);
 * - `prefer-local`: to workers of the sender's placement while they have
 *   room, then the least loaded anywhere (e.g. the cloud, over a leaf link).
 * Every message is a request: the worker answers once it has processed it,
 * so the sender keeps at most the workers' advertised capacity in flight
 * (backpressure for file sources), and a message whose worker vanished or
 * did not answer in time is retried on another worker. A live frame is
 * dropped (counted) when no worker takes it; an event or a file frame never
 * is: it waits and is retried, backing off, as long as the pipeline runs, and
 * one still unsent when the pipeline stops is counted and logged as lost.
 * @example
 * const d = new Dispatcher(bus, "retail", detectStage, "edge", log, { timeoutMs: 5000 });
 * await d.send(frame); // resolves once the frame is on its way
 */
export class Dispatcher {
  private peers = new Map<string, Peer>();
  private flights = new Set<Flight>();
  private sub;
  private sweeper: ReturnType<typeof setInterval>;
  private timeoutMs: number;
  private subject?: string;
  /** Messages in `launch`, waiting for a worker with room. */
  private waiting = 0;
  dropped = 0;
  /** Messages that must not drop (events, file frames) still unsent when the sender closed (also counted in dropped). */
  lost = 0;
  private closed = false;

  constructor(
    private bus: NatsBus,
    private pipeline: string,
    readonly stage: StageSpec,
    private placement: string,
    private log: Logger,
    private opts: DispatcherOptions = {},
  ) {
    // Long enough for a busy worker's queue (the answer comes after processing); a dead one is noticed sooner by its adverts.
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    if (stage.route === "queue") this.subject = queueSubject(pipeline, stage.id);
    // Adverts that are not signed with the pipeline's key (when it has one) or malformed are refused and counted by the bus.
    this.sub = bus.subscribeJson(
      loadSubject(pipeline, stage.id),
      (advert) => {
        const now = performance.now();
        const peer = this.peers.get(advert.worker);
        if (peer) [peer.advert, peer.seen, peer.suspect, peer.pendingAtAdvert] = [advert, now, false, peer.pending];
        else {
          this.peers.set(advert.worker, { advert, seen: now, pending: 0, pendingAtAdvert: 0, sent: 0, suspect: false });
          log.info(`worker ${advert.worker} (${advert.placement}) joined stage ${stage.id}`);
        }
      },
      Advert,
    );
    // Notices a dead worker even while no message is waiting to be sent.
    this.sweeper = setInterval(() => this.live(), WORKER_TTL_MS / 4);
  }

  /** Messages on their way: waiting for a worker, or sent and not yet answered. */
  get pending(): number {
    return this.flights.size + this.waiting;
  }

  /** Messages sent to each worker so far, by worker id (least-loaded and prefer-local). */
  sentBy(): Record<string, number> {
    return Object.fromEntries([...this.peers].map(([id, p]) => [id, p.sent]));
  }

  /**
   * Resolves once the message is on its way (waiting for a free worker when
   * the message must not be dropped); the answer is handled in the background.
   * @throws PayloadTooLargeError when the encoded message exceeds max_payload.
   */
  async send(msg: Message): Promise<void> {
    // Encoded once and size-checked here: too large is the sender's error, not a worker's.
    const payload = await this.bus.encodeAsync(this.subject ?? workerSubject(this.pipeline, this.stage.id, "*"), msg, this.opts.wire);
    await this.launch({ msg, payload, tries: 0 });
  }

  close(): void {
    this.closed = true;
    clearInterval(this.sweeper);
    this.sub.unsubscribe();
  }

  /** Waits for a worker with room (or drops, see below), then sends. */
  private async launch(f: Flight, exclude?: string): Promise<void> {
    this.waiting++;
    try {
      await this.waitAndSend(f, exclude);
    } finally {
      this.waiting--;
    }
  }

  private async waitAndSend(f: Flight, exclude?: string): Promise<void> {
    const droppable = isDroppable(f.msg);
    const since = performance.now();
    let deadline = since + this.timeoutMs;
    for (;;) {
      if (this.closed) return this.lose(f, "the pipeline stopped before a worker took it");
      const target = this.pick(droppable, exclude);
      if (target) return this.dispatch(f, target);
      // A live frame does not wait for a worker: the next one is fresher.
      if (droppable && this.live() === 0) return this.drop(f, `no worker of stage ${this.stage.id}`);
      // An outage is not the workers' fault: wait for the reconnect (the bus logs it).
      if (!this.bus.stats.connected) deadline = performance.now() + this.timeoutMs;
      if (performance.now() > deadline) {
        if (droppable) return this.drop(f, `no worker of stage ${this.stage.id} took it for ${this.timeoutMs / 1000} s`);
        // Events and file frames never drop: they wait for a worker as long as the pipeline runs, said every timeout.
        this.log.warn(`${describe(f.msg)} has waited ${Math.round((performance.now() - since) / 1000)} s for a worker of stage ${this.stage.id}; still waiting (start one, or stop the pipeline)`);
        deadline = performance.now() + this.timeoutMs;
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  /** Live workers, forgetting (and re-sending the messages of) those that went silent. */
  private live(): number {
    const now = performance.now();
    for (const [id, p] of this.peers) {
      if (now - p.seen <= WORKER_TTL_MS || !this.bus.stats.connected) continue;
      this.peers.delete(id);
      this.log.warn(`worker ${id} of stage ${this.stage.id} left (no load advert for ${WORKER_TTL_MS} ms)`);
      for (const f of this.flights) if (f.worker === id && f.abandon?.()) this.retry(f, id, "its worker left");
    }
    return this.peers.size;
  }


  /** The worker subject to send to, or undefined when none has room (for a message that must not be dropped). */
  private pick(droppable: boolean, exclude?: string): { subject: string; peer?: Peer } | undefined {
    this.live();
    if (this.subject) {
      // queue: the server picks the member; the sender keeps the group's total capacity in flight.
      let capacity = 0;
      for (const p of this.peers.values()) capacity += p.advert.capacity;
      if (capacity === 0 || (!droppable && this.flights.size >= capacity)) return undefined;
      return { subject: this.subject };
    }
    const usable = [...this.peers].filter(([, p]) => !p.suspect && p.advert.capacity > 0);
    // A retry goes to another worker when there is one, else to the same again.
    const others = usable.filter(([id]) => id !== exclude);
    const candidates = (others.length ? others : usable).map(([, p]) => p);
    // Once every worker has reported its latency, the cost of a worker is when it would finish the message
    // ((queue + 1) x latency, per replica): a worker 3x slower gets work only while it would still be done first.
    // Before that, the most spare slots.
    const timed = candidates.every((p) => p.advert.latencyMs > 0);
    // This sender's own requests are counted exactly; other senders' load is what the last advert showed beyond ours.
    const load = (p: Peer) => p.pending + Math.max(0, p.advert.inflight - p.pendingAtAdvert);
    const free = (p: Peer) => p.advert.capacity - load(p);
    let best: Peer | undefined;
    let bestCost = Infinity;
    for (const p of candidates) {
      let cost = timed ? Math.ceil((load(p) + 1) / (p.advert.replicas ?? 1)) * p.advert.latencyMs : -free(p);
      // prefer-local: the sender's own placement first while it has room.
      if (this.stage.route === "prefer-local" && p.advert.placement === this.placement && free(p) > 0) cost -= 1e12;
      if (cost < bestCost) [best, bestCost] = [p, cost];
    }
    // A file frame or event waits for the best worker rather than queue behind a worse one; a live frame
    // goes now (the worker's inbox drops its oldest: latency stays bounded).
    if (!best || (!droppable && free(best) <= 0)) return undefined;
    return { subject: workerSubject(this.pipeline, this.stage.id, best.advert.worker), peer: best };
  }

  private dispatch(f: Flight, target: { subject: string; peer?: Peer }): void {
    const peer = target.peer;
    const worker = peer?.advert.worker;
    let open = true;
    const settle = () => {
      if (!open) return false;
      open = false;
      this.flights.delete(f);
      if (peer) peer.pending--;
      return true;
    };
    f.tries++;
    f.worker = worker;
    f.abandon = settle;
    this.flights.add(f);
    if (peer) {
      peer.pending++;
      peer.sent++;
    }
    this.bus.request(target.subject, f.payload, this.timeoutMs).then(
      (reply) => {
        if (!settle()) return;
        if (reply === "closing") return this.retry(f, worker, `worker ${worker ?? "(queue)"} is shutting down`, false);
        if (reply === "dropped") this.dropped++;
        // "duplicate": an earlier attempt reached the worker, which has it.
        else if (reply !== "done" && reply !== "duplicate") this.log.warn(`stage ${this.stage.id}: worker answered ${reply} for ${describe(f.msg)}`);
      },
      (err: Error) => {
        if (!settle()) return;
        // No responders (it vanished or stopped taking work) or no answer in time (stuck): avoid
        // the worker until it advertises again; if it is dead, expiry re-sends its other messages.
        if (peer) peer.suspect = true;
        else this.peers.clear();
        this.retry(f, worker, err.message);
      },
    );
  }

  /** Sends a message again, elsewhere when possible; drops it after MAX_TRIES. */
  private retry(f: Flight, worker: string | undefined, why: string, counts = true): void {
    if (!counts) f.tries--;
    const droppable = isDroppable(f.msg);
    if (droppable && f.tries >= MAX_TRIES) return this.drop(f, `${why}; gave up after ${MAX_TRIES} tries`);
    // Events and file frames are retried as long as the pipeline runs, backing off to 1 s between tries.
    const pause = droppable || f.tries < MAX_TRIES ? 0 : Math.min(1000, 50 * 2 ** (f.tries - MAX_TRIES));
    if (f.tries <= MAX_TRIES || f.tries % 10 === 0) {
      this.log.warn(`${describe(f.msg)} to stage ${this.stage.id}: ${why}; retrying${worker ? " on another worker" : ""}${f.tries >= MAX_TRIES ? ` (try ${f.tries + 1})` : ""}`);
    }
    if (pause === 0) void this.launch(f, worker);
    else setTimeout(() => void this.launch(f, worker), pause);
  }

  /** A message that must not drop, still unsent when the pipeline stops: counted and said, never silent. */
  private lose(f: Flight, why: string): void {
    this.lost++;
    this.dropped++;
    if (this.lost <= 5 || this.lost % 100 === 0) this.log.error(`${describe(f.msg)} for stage ${this.stage.id} was not delivered (${this.lost} so far): ${why}`);
  }

  private drop(f: Flight, why: string): void {
    this.dropped++;
    if (this.dropped <= 5 || this.dropped % 100 === 0) this.log.warn(`dropped ${describe(f.msg)} (${this.dropped} so far): ${why}`);
  }
}

function describe(msg: Message): string {
  return `${msg.kind} ${msg.stream}#${msg.seq}`;
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
    // With a control key, only end-of-stream messages signed with it count (a forged one is refused by the bus).
    this.subs = [
      bus.subscribeJson(
        eosSubject(pipeline),
        (eos) => {
          if (!watched.has(eos.stage)) return;
          const set = this.done.get(eos.stage) ?? new Set();
          set.add(eos.worker);
          this.done.set(eos.stage, set);
        },
        Eos,
      ),
      ...stages.map((s) =>
        bus.subscribeJson(
          loadSubject(pipeline, s),
          (advert) => {
            const m = this.alive.get(s) ?? new Map();
            m.set(advert.worker, performance.now());
            this.alive.set(s, m);
          },
          Advert,
        ),
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
