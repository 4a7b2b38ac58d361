import type { Bus, Subscription } from "../core/bus.ts";
import { Dispatcher, EndOfStream, loadSubject, queueGroup, queueSubject, workerSubject, type Reply } from "../bus/routing.ts";
import { hostname } from "node:os";
import { Inbox } from "../core/inbox.ts";
import { Reorder } from "../core/reorder.ts";
import { stageSubject, type PipelineSpec, type StageSpec } from "../spec/loader.ts";
import { createLogger, type Logger } from "../core/log.ts";
import { MemoryBus } from "../bus/memory.ts";
import { derive, seal, type Frame, type Message } from "../core/message.ts";
import type { NatsBus } from "../bus/nats.ts";
import type { Observable, SinkInstance, SourceInstance, StageContext, TransformInstance } from "../core/operator.ts";
import { StageStats, type PipelineSummary } from "../core/stats.ts";
import { subjectMatches } from "../core/subject.ts";
import { cpuTime } from "../platform/index.ts";

type Instance = SourceInstance | TransformInstance | SinkInstance;

interface RunningStage {
  spec: StageSpec;
  instance: Instance;
  stats: StageStats;
  inbox?: Inbox;
  busy: number;
  send: (msg: Message) => Promise<void>;
}

/** Messages a stage processes at once: its replicas, or a transform's own concurrency (infer-onnx keeps two frames in flight). */
function parallelOf(st: RunningStage): number {
  return Math.max(st.spec.replicas, st.spec.def.kind === "transform" ? ((st.instance as TransformInstance).concurrency ?? 1) : 1);
}

/**
 * host-pid-random: unique even where every process is pid 1 (containers), and
 * one NATS subject token (no dots or wildcards).
 */
function defaultWorkerId(): string {
  const host = hostname().replace(/[^A-Za-z0-9_-]/g, "_").slice(0, 40) || "host";
  const random = Math.floor(Math.random() * 0x1000000).toString(16).padStart(6, "0");
  return `${host}-${globalThis.process?.pid ?? 0}-${random}`;
}

/** After the drain timeout, how long closing may take before a stop gives up on stuck stages. */
const ABANDON_GRACE_MS = 5_000;

/** Finished frames per replica that may wait behind a slower one before it is skipped. */
const REORDER_WINDOW_PER_REPLICA = 4;

export interface RunOptions {
  /** Stop the sources after this many frames in total, then drain. */
  frames?: number;
  /** Run only these stage ids (the rest run in other processes on the same NATS). */
  stages?: string[];
  /** Id of this process among a stage's workers (default: host-pid-random, unique per process). */
  workerId?: string;
  /** This process's placement, for prefer-local routing. */
  placement?: "edge" | "cloud" | "any";
  /** How long a drain may take before stages are closed anyway. */
  drainTimeoutMs?: number;
  /** How long a sender waits for a worker's answer before retrying elsewhere. */
  requestTimeoutMs?: number;
  log?: Logger;
  /** Extra context handed to operators (e.g. the NATS connection for sinks). */
  context?: Partial<StageContext>;
}

/**
 * Runs a validated pipeline: one bounded inbox and `replicas` worker loops
 * per stage, sources pushing with backpressure, a drain on stop. Links
 * between stages in this process are in-memory; links to stages elsewhere go
 * over the NATS bus (queue groups, or load-aware request/reply).
 * @example
 * const run = new Executor(spec, new MemoryBus());
 * await run.start();
 * const summary = await run.done;
 */
export class Executor {
  private stages: RunningStage[] = [];
  private local: Set<string>;
  /** Links inside this process; the given bus itself when that is the memory bus. */
  private memory: Bus;
  private remote?: NatsBus;
  private dispatchers: Dispatcher[] = [];
  /** NATS subscriptions feeding local stages; a worker process closes them when it stops, so senders go elsewhere. */
  private intake: Subscription[] = [];
  /** Stages that take requests from other processes (advertised with their capacity, the rest with 0). */
  private accepting = new Set<string>();
  private eos?: EndOfStream;
  private timers: ReturnType<typeof setInterval>[] = [];
  private abort = new AbortController();
  private log: Logger;
  private emitted = 0;
  private started = 0;
  private lastRemote = 0;
  /** Messages from NATS waiting for space in a full inbox. */
  private arriving = 0;
  private stopReason = "sources finished";
  readonly workerId: string;
  /** Resolves with the summary once the pipeline has drained and closed. */
  done!: Promise<PipelineSummary>;

  constructor(
    readonly spec: PipelineSpec,
    readonly bus: Bus,
    private opts: RunOptions = {},
  ) {
    this.log = opts.log ?? createLogger(spec.name);
    this.local = new Set(opts.stages ?? spec.stages.map((s) => s.id));
    if (bus.kind === "nats") this.remote = bus as NatsBus;
    this.memory = this.remote ? new MemoryBus() : bus;
    this.workerId = opts.workerId ?? defaultWorkerId();
  }

  /** Creates every local operator instance (loading models), then starts the flow. */
  async start(): Promise<void> {
    const specs = this.spec.stages.filter((s) => this.local.has(s.id));
    const created = await Promise.allSettled(
      specs.map(async (spec) => {
        const ctx: StageContext = {
          ...(this.remote ? { nats: this.remote } : {}),
          ...this.opts.context,
          stage: spec.id,
          pipeline: this.spec.name,
          log: this.log.child(spec.id),
          signal: this.abort.signal,
          worker: this.workerId,
          operators: this.spec.registry,
        };
        const instance = await spec.def.create(spec.options as never, ctx);
        return { spec, instance, stats: new StageStats(spec.id, spec.def.name, spec.def.kind), busy: 0, send: async () => {} } as RunningStage;
      }),
    );
    const failed = created.find((c) => c.status === "rejected") as PromiseRejectedResult | undefined;
    this.stages = created.flatMap((c) => (c.status === "fulfilled" ? [c.value] : []));
    if (failed) {
      await this.closeInstances();
      throw failed.reason;
    }
    this.started = performance.now();
    for (const fn of this.startedListeners) fn();
    this.startedListeners.clear();
    for (const st of this.stages) st.send = this.output(st.spec);
    for (const st of this.stages) if (st.spec.def.kind !== "source") this.attach(st);
    if (this.remote) this.startControlPlane(this.remote);
    const sources = this.stages.filter((s) => s.spec.def.kind === "source").map((s) => this.runSource(s));
    const drained = Promise.all(sources).then(() => this.drain());
    // A stop always ends the run: past the drain timeout (and a grace for closing), stuck stages are abandoned.
    const abandoned = new Promise<PipelineSummary>((resolve) => (this.abandon = resolve));
    this.done = Promise.race([drained, abandoned]).finally(() => clearTimeout(this.hardStop));
  }

  /** Resolves `done` with what is known when a stop's drain outlives its deadline. */
  private abandon?: (summary: PipelineSummary) => void;
  /** Late outputs of each stage's reorder window already counted as dropped. */
  private lateSeen = new WeakMap<RunningStage, number>();
  private hardStop?: ReturnType<typeof setTimeout>;

  /** Stops the sources; the pipeline then drains what is in flight (abandoning stuck stages after the drain timeout). */
  stop(reason = "stopped"): void {
    if (this.abort.signal.aborted) return;
    this.stopReason = reason;
    this.abort.abort(new Error(reason));
    const limit = (this.opts.drainTimeoutMs ?? 30_000) + ABANDON_GRACE_MS;
    this.hardStop = setTimeout(() => {
      const stuck = this.stages.filter((st) => st.busy > 0 || (st.inbox?.size ?? 0) > 0 || st.spec.def.kind === "source").map((st) => st.spec.id);
      const why = `${reason}; drain abandoned after ${(limit / 1000).toFixed(0)} s with ${stuck.join(", ") || "no stage"} still busy`;
      this.log.error(`${why}: those stages' work in flight is lost`);
      this.stopReason = why;
      this.abandon?.({ ...this.summary(), abandoned: stuck });
    }, limit);
  }

  /**
   * Live view of this process's stages for metrics and status pages: the
   * counters and histograms themselves, read at scrape time (no per-frame cost).
   */
  live(): { id: string; operator: string; kind: string; stats: StageStats; queued: number; busy: number; capacity: number; instance: Observable }[] {
    return this.stages.map((s) => ({
      id: s.spec.id,
      operator: s.spec.def.name,
      kind: s.spec.def.kind,
      stats: s.stats,
      instance: s.instance,
      queued: s.inbox?.size ?? 0,
      busy: s.busy,
      capacity: s.spec.inboxSize,
    }));
  }

  private startedListeners = new Set<() => void>();

  /** Calls `fn` once every local stage is created and the flow has started (at once if it has); returns a remover. */
  onStarted(fn: () => void): () => void {
    if (this.started > 0) {
      fn();
      return () => {};
    }
    this.startedListeners.add(fn);
    return () => this.startedListeners.delete(fn);
  }

  /** This process's placement (for service metadata and routing). */
  get placement(): "edge" | "cloud" | "any" {
    return this.opts.placement ?? "any";
  }

  /** Live frames dropped per stream in this process's inboxes (all stages), for /api/streams and the metrics. */
  streamDrops(): Map<string, number> {
    const out = new Map<string, number>();
    for (const s of this.stages) for (const [id, n] of s.inbox?.drops() ?? []) out.set(id, (out.get(id) ?? 0) + n);
    return out;
  }

  /**
   * Watches the messages on `subject` inside this process (the live page's
   * preview). The handler runs in the publisher's path: it must only take a
   * reference, never work or wait.
   * @example
   * const sub = exec.tap("fw.demo.nms", (msg) => (latest = msg));
   * sub.unsubscribe();
   */
  tap(subject: string, handler: (msg: Message) => void): Subscription {
    return this.memory.subscribe(subject, (msg) => void handler(msg));
  }

  /** True once every local stage is created and the flow has started. */
  get running(): boolean {
    return this.started > 0 && !this.abort.signal.aborted;
  }

  /** Messages this process routed to each remote worker, by stage. */
  routing(): Record<string, Record<string, number>> {
    return Object.fromEntries(this.dispatchers.map((d) => [d.stage.id, d.sentBy()]));
  }

  /** Stages reading a stage's output subject. */
  private consumers(spec: StageSpec): StageSpec[] {
    return this.spec.stages.filter((c) => c.inputs.some((i) => subjectMatches(i, spec.output)));
  }

  /** Where a stage's output goes: local consumers in memory, remote ones over NATS. */
  private output(spec: StageSpec): (msg: Message) => Promise<void> {
    if (spec.def.kind === "sink") return async () => {};
    const consumers = this.consumers(spec);
    const anyLocal = consumers.some((c) => this.local.has(c.id));
    const remoteConsumers = consumers.filter((c) => !this.local.has(c.id));
    const remote = this.remote;
    if (!remote) return (msg) => this.memory.publish(spec.output, msg);
    // An explicit `out` subject may be read by other pipelines: always publish it.
    // Stages of this pipeline elsewhere get requests by their route, each answered once processed.
    const publish = spec.output !== stageSubject(this.spec.name, spec.id);
    const directed = remoteConsumers.map(
      (c) => new Dispatcher(remote, this.spec.name, c, this.opts.placement ?? spec.placement, this.log, { timeoutMs: this.opts.requestTimeoutMs, wire: spec.link }),
    );
    this.dispatchers.push(...directed);
    return async (msg) => {
      if (anyLocal) await this.memory.publish(spec.output, msg);
      if (publish) await remote.publish(spec.output, msg, spec.link);
      for (const d of directed) await d.send(msg);
    };
  }

  private attach(st: RunningStage): void {
    const acks = new WeakMap<Message, (reply: Reply) => void>();
    const behind = st.spec.def.kind === "sink" ? this.behindLog(st) : undefined;
    const inbox = new Inbox(st.spec.inboxSize, (msg) => {
      st.stats.dropped++;
      st.stats.queueDropped++;
      acks.get(msg)?.("dropped");
      behind?.();
    });
    st.inbox = inbox;
    const push = (msg: Message) => {
      this.lastRemote = performance.now();
      const queued = inbox.push(msg);
      if (!queued) return;
      // Waiting for space: not in the inbox yet, but not idle either.
      this.arriving++;
      return queued.finally(() => this.arriving--);
    };
    let served = false;
    for (const subject of st.spec.inputs) {
      const producers = this.spec.stages.filter((p) => p.def.kind !== "sink" && subjectMatches(subject, p.output));
      if (producers.some((p) => this.local.has(p.id)) || !this.remote) this.memory.subscribe(subject, (msg) => inbox.push(msg));
      if (!this.remote) continue;
      const group = { queue: queueGroup(this.spec.name, st.spec.id) };
      // Published from outside the pipeline: plain subscribers, one per stage's queue group.
      if (producers.length === 0) this.intake.push(this.remote.subscribe(subject, push, group));
      else if (producers.some((p) => !this.local.has(p.id)) && !served) {
        served = true;
        // Requests from this pipeline's stages elsewhere, answered once processed (or evicted, or failed).
        const queue = st.spec.route === "queue";
        const endpoint = queue ? queueSubject(this.spec.name, st.spec.id) : workerSubject(this.spec.name, st.spec.id, this.workerId);
        const serve = async (msg: Message): Promise<Reply> => {
          const answered = new Promise<Reply>((resolve) => acks.set(msg, resolve));
          try {
            await push(msg);
          } catch {
            return "closing"; // the inbox closed: the sender tries another worker
          }
          return answered;
        };
        this.intake.push(this.remote.serve(endpoint, serve, queue ? group : {}));
        this.accepting.add(st.spec.id);
      }
    }
    // Replicas (and a transform's own concurrency) finish out of order; their outputs are put back in arrival order (bounded window).
    const workers = parallelOf(st);
    const order = workers > 1 && st.spec.def.kind === "transform" ? new Reorder<Message>(REORDER_WINDOW_PER_REPLICA * workers, (m) =>
            st.send(m).then(() => void st.stats.sent++, (err: Error) => {
              st.stats.failed++;
              st.stats.lastError = err.message;
              if (st.stats.failed <= 3 || st.stats.failed % 100 === 0) this.log.child(st.spec.id).error(`${describe(m)} could not be sent on: ${err.message}`);
            }),
          ) : undefined;
    for (let i = 0; i < workers; i++) void this.work(st, inbox, acks, order);
  }

  private async work(st: RunningStage, inbox: Inbox, acks: WeakMap<Message, (reply: Reply) => void>, order?: Reorder<Message>): Promise<void> {
    const inst = st.instance as TransformInstance | SinkInstance;
    const isSink = st.spec.def.kind === "sink";
    for (let msg = await inbox.take(); msg; msg = await inbox.take()) {
      const ticket = order?.ticket();
      st.busy++;
      st.stats.received++;
      if (msg.kind === "event") st.stats.events++;
      const t0 = performance.now();
      let outputs: Message[] | null = null;
      try {
        const out = await inst.process(msg);
        const ms = performance.now() - t0;
        st.stats.latency.record(ms);
        if (isSink) {
          if (msg.kind === "frame") st.stats.endToEnd.record(Date.now() - msg.ts);
        } else if (out) {
          // Emitted messages are frozen: every subscriber shares them, none may change them.
          outputs = (Array.isArray(out) ? out : [out]).map((o) => seal(o.kind === "frame" ? derive(o, { timings: { ...o.timings, [st.spec.id]: ms } }) : o));
          if (outputs.length > 1) st.stats.extraOutputs += outputs.length - 1;
        }
        // Ended here by design: what a sink handled, or a transform that passed nothing on.
        if (!outputs?.length) st.stats.absorbed++;
        if (order) {
          const before = order.skipped + order.late;
          await order.complete(ticket!, outputs);
          this.noteReorder(st, order, before);
        } else if (outputs) {
          for (const m of outputs) {
            await st.send(m);
            st.stats.sent++;
          }
        }
        acks.get(msg)?.("done");
      } catch (err) {
        if (order && outputs === null) await order.complete(ticket!, null);
        st.stats.failed++;
        acks.get(msg)?.("failed");
        // A few lines, then one per hundred: a broken stream must not flood the log.
        if (st.stats.failed <= 3 || st.stats.failed % 100 === 0) {
          st.stats.lastError = (err as Error).message;
          this.log.child(st.spec.id).error(`${describe(msg)} failed (${st.stats.failed} so far): ${(err as Error).message}`);
        }
      } finally {
        st.busy--;
      }
    }
  }

  /** A sink dropping from its own full queue says so, at most every 10 s, with the count since the last line. */
  private behindLog(st: RunningStage): () => void {
    let last = 0;
    let since = 0;
    return () => {
      since++;
      const now = performance.now();
      if (now - last < 10_000) return;
      this.log.child(st.spec.id).warn(`falls behind: ${since} live frame(s) dropped from its own queue (${st.spec.inboxSize} per stream); the other stages and sinks go on`);
      last = now;
      since = 0;
    };
  }

  /**
   * Counts and logs (rate-limited) what the reorder window gave up on. A
   * skipped message is not lost yet (it is still in work); it is dropped
   * when its outputs arrive late, so only `late` counts (counting skips as
   * well counted such a message twice, and a skipped one that then failed
   * or passed nothing on as dropped and failed or dropped for nothing).
   */
  private noteReorder(st: RunningStage, order: Reorder<Message>, before: number): void {
    const lost = order.skipped + order.late - before;
    if (lost <= 0) return;
    st.stats.dropped += order.late - (this.lateSeen.get(st) ?? 0);
    this.lateSeen.set(st, order.late);
    const total = order.skipped + order.late;
    if (total <= 3 || total % 100 === 0) {
      this.log.child(st.spec.id).warn(`reorder window full behind a slow replica: ${total} frame(s) skipped so far, to keep the stream in order`);
    }
  }

  private async runSource(st: RunningStage): Promise<void> {
    const src = st.instance as SourceInstance;
    const limit = this.opts.frames;
    /** Causes of send failures logged so far: one line each, the rest counted. */
    const causes = new Set<string>();
    const emit = async (msg: Message) => {
      if (this.abort.signal.aborted && msg.kind === "frame") return;
      if (msg.kind === "frame") this.emitted++;
      try {
        await st.send(msg);
        st.stats.sent++;
      } catch (err) {
        // A message that cannot be sent on (over max_payload, say) fails alone: the source (its ffmpeg) goes on.
        st.stats.failed++;
        st.stats.lastError = (err as Error).message;
        const cause = (err as { code?: string }).code ?? (err as Error).name;
        if (!causes.has(cause)) {
          causes.add(cause);
          this.log.child(st.spec.id).error(`${describe(msg)} could not be sent on: ${(err as Error).message} (further failures of this kind are counted, not logged)`);
        }
      }
      if (limit !== undefined && this.emitted >= limit) this.stop(`--frames ${limit} reached`);
    };
    try {
      await src.run(emit, this.abort.signal);
    } catch (err) {
      st.stats.failed++;
      st.stats.lastError = (err as Error).message;
      this.log.child(st.spec.id).error(`source failed: ${(err as Error).message}`);
    }
  }

  /** Load adverts for every local stage and end-of-stream tracking of remote upstream stages. */
  private startControlPlane(remote: NatsBus): void {
    const upstream = new Set<string>();
    for (const st of this.stages) {
      for (const subject of st.spec.inputs) {
        for (const p of this.spec.stages) if (!this.local.has(p.id) && p.def.kind !== "sink" && subjectMatches(subject, p.output)) upstream.add(p.id);
      }
    }
    this.eos = new EndOfStream(remote, this.spec.name, [...upstream]);
    let cpuPrev = cpuTime();
    let cpuAt = performance.now();
    const advertise = () => {
      const now = performance.now();
      const spent = cpuTime();
      // Share of one core this process used since the last advert.
      const cpu = (spent - cpuPrev) / Math.max(1, now - cpuAt);
      [cpuPrev, cpuAt] = [spent, now];
      for (const st of this.stages) {
        remote.publishJson(loadSubject(this.spec.name, st.spec.id), {
          worker: this.workerId,
          stage: st.spec.id,
          placement: this.opts.placement ?? st.spec.placement,
          // What it processes at once counts, not only its replicas: a sender keeping fewer in flight leaves infer-onnx's second slot idle.
          capacity: this.accepting.has(st.spec.id) ? st.spec.inboxSize + parallelOf(st) : 0,
          replicas: parallelOf(st),
          inflight: (st.inbox?.size ?? 0) + st.busy,
          latencyMs: st.stats.latency.count ? st.stats.latency.mean : 0,
          cpu,
          ts: Date.now(),
        }, true);
      }
    };
    advertise();
    this.timers.push(setInterval(advertise, 100));
    // Without local sources, this process ends when every remote upstream stage has ended.
    if (!this.stages.some((s) => s.spec.def.kind === "source") && upstream.size) {
      const check = setInterval(() => {
        if ([...upstream].every((s) => this.eos!.finished(s))) {
          clearInterval(check);
          this.stop("upstream stages finished");
        }
      }, 50);
      this.timers.push(check);
    }
  }

  private idle(): boolean {
    return (
      this.stages.every((s) => s.busy === 0 && (!s.inbox || s.inbox.size === 0)) &&
      this.dispatchers.every((d) => d.pending === 0) &&
      this.arriving === 0
    );
  }

  private async drain(): Promise<PipelineSummary> {
    if (this.remote && !this.abort.signal.aborted && !this.stages.some((s) => s.spec.def.kind === "source")) {
      // A pure worker process: wait until stopped (signal or upstream end of stream).
      await new Promise((r) => this.abort.signal.addEventListener("abort", r, { once: true }));
    }
    if (this.remote && !this.stages.some((s) => s.spec.def.kind === "source")) {
      // Take no more work (adverts now say capacity 0); what was accepted drains below.
      for (const sub of this.intake.splice(0)) sub.unsubscribe();
      this.accepting.clear();
    }
    const deadline = performance.now() + (this.opts.drainTimeoutMs ?? 30_000);
    // A stage has finished once every stage feeding it has and nothing is in flight here: local ones as
    // announced below (sources once stopped), remote ones by their end of stream. Announcing each as it
    // finishes lets other processes finish theirs, which results from remote stages may be waiting for.
    const announced = new Set<string>();
    const finished = (id: string) => announced.has(id) || (!this.local.has(id) && !!this.eos?.finished(id));
    const ready = (spec: StageSpec) =>
      spec.inputs.every((subject) => this.spec.stages.every((p) => p.def.kind === "sink" || !subjectMatches(subject, p.output) || finished(p.id)));
    const announce = (st: RunningStage) => {
      if (st.spec.def.kind === "sink" || announced.has(st.spec.id)) return;
      announced.add(st.spec.id);
      this.eos?.announce(st.spec.id, this.workerId);
    };
    // Two idle observations in a row: a publish may be between stages for one tick.
    let calm = 0;
    for (;;) {
      if (performance.now() > deadline) {
        this.log.warn("drain timed out; closing stages with messages still in flight");
        break;
      }
      calm = this.idle() ? calm + 1 : 0;
      if (calm >= 2 && !(this.remote && performance.now() - this.lastRemote < 200)) {
        for (const st of this.stages) if (ready(st.spec)) announce(st);
        if (this.stages.every((st) => ready(st.spec))) break;
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    for (const t of this.timers) clearInterval(t);
    for (const st of this.stages) {
      st.inbox?.close();
      announce(st);
    }
    for (const d of this.dispatchers) d.close();
    this.eos?.close();
    await this.closeInstances();
    return this.summary();
  }

  private summary(): PipelineSummary {
    return {
      pipeline: this.spec.name,
      bus: this.bus.kind,
      reason: this.stopReason,
      seconds: (performance.now() - this.started) / 1000,
      stages: this.stages.map((s) => {
        const snap = s.stats.snapshot(s.inbox?.size ?? 0, s.busy);
        const routed = this.dispatchers.filter((d) => this.consumers(s.spec).includes(d.stage));
        for (const d of routed) {
          snap.dropped += d.dropped;
          snap.droppedOnRoute += d.dropped;
        }
        return snap;
      }),
    };
  }

  private async closeInstances(): Promise<void> {
    for (const st of this.stages) {
      try {
        await st.instance.close?.();
      } catch (err) {
        this.log.child(st.spec.id).error(`close failed: ${(err as Error).message}`);
      }
    }
  }
}

function describe(msg: Message): string {
  return `${msg.kind} ${msg.stream}#${msg.seq}`;
}
