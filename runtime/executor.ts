import type { Bus } from "./bus.ts";
import { Inbox } from "./inbox.ts";
import type { StageSpec, PipelineSpec } from "./loader.ts";
import { createLogger, type Logger } from "./log.ts";
import type { Frame, Message } from "./message.ts";
import type { SinkInstance, SourceInstance, StageContext, TransformInstance } from "./operator.ts";
import { StageStats, type PipelineSummary } from "./stats.ts";

type Instance = SourceInstance | TransformInstance | SinkInstance;

interface RunningStage {
  spec: StageSpec;
  instance: Instance;
  stats: StageStats;
  inbox?: Inbox;
  busy: boolean;
}

export interface RunOptions {
  /** Stop the sources after this many frames in total, then drain. */
  frames?: number;
  /** How long a drain may take before stages are closed anyway. */
  drainTimeoutMs?: number;
  log?: Logger;
}

/**
 * Runs a validated pipeline on a bus: one bounded inbox and one worker loop
 * per stage, sources pushing with backpressure, a drain on stop.
 * @example
 * const run = new Executor(spec, new MemoryBus());
 * await run.start();
 * const summary = await run.done;
 */
export class Executor {
  private stages: RunningStage[] = [];
  private abort = new AbortController();
  private log: Logger;
  private emitted = 0;
  private started = 0;
  private stopReason = "sources finished";
  /** Resolves with the summary once the pipeline has drained and closed. */
  done!: Promise<PipelineSummary>;

  constructor(
    readonly spec: PipelineSpec,
    readonly bus: Bus,
    private opts: RunOptions = {},
  ) {
    this.log = opts.log ?? createLogger(spec.name);
  }

  /** Creates every operator instance (loading models, spawning nothing yet), then starts the flow. */
  async start(): Promise<void> {
    const created = await Promise.allSettled(
      this.spec.stages.map(async (spec) => {
        const ctx: StageContext = { stage: spec.id, pipeline: this.spec.name, log: this.log.child(spec.id), signal: this.abort.signal };
        return { spec, instance: await spec.def.create(spec.options as never, ctx), stats: new StageStats(spec.id, spec.def.name, spec.def.kind), busy: false };
      }),
    );
    const failed = created.find((c) => c.status === "rejected") as PromiseRejectedResult | undefined;
    this.stages = created.flatMap((c) => (c.status === "fulfilled" ? [c.value] : []));
    if (failed) {
      await this.closeInstances();
      throw failed.reason;
    }
    this.started = performance.now();
    for (const st of this.stages) if (st.spec.def.kind !== "source") this.attach(st);
    const sources = this.stages.filter((s) => s.spec.def.kind === "source").map((s) => this.runSource(s));
    this.done = Promise.all(sources).then(() => this.drain());
  }

  /** Stops the sources; the pipeline then drains what is in flight. */
  stop(reason = "stopped"): void {
    if (this.abort.signal.aborted) return;
    this.stopReason = reason;
    this.abort.abort(new Error(reason));
  }

  private attach(st: RunningStage): void {
    const inbox = new Inbox(st.spec.inboxSize, () => st.stats.dropped++);
    st.inbox = inbox;
    for (const subject of st.spec.inputs) this.bus.subscribe(subject, (msg) => inbox.push(msg));
    void this.work(st, inbox);
  }

  private async work(st: RunningStage, inbox: Inbox): Promise<void> {
    const inst = st.instance as TransformInstance | SinkInstance;
    const isSink = st.spec.def.kind === "sink";
    for (let msg = await inbox.take(); msg; msg = await inbox.take()) {
      st.busy = true;
      st.stats.received++;
      const t0 = performance.now();
      try {
        const out = await inst.process(msg);
        const ms = performance.now() - t0;
        st.stats.latency.record(ms);
        if (msg.kind === "frame") msg.timings[st.spec.id] = ms;
        if (isSink) {
          if (msg.kind === "frame") st.stats.endToEnd.record(Date.now() - msg.ts);
        } else if (out) {
          for (const m of Array.isArray(out) ? out : [out]) {
            st.stats.sent++;
            await this.bus.publish(st.spec.output, m);
          }
        }
      } catch (err) {
        st.stats.failed++;
        // One line per failure class keeps a broken frame from flooding the log.
        if (st.stats.failed <= 3 || st.stats.failed % 100 === 0) {
          st.stats.lastError = (err as Error).message;
          this.log.child(st.spec.id).error(`${describe(msg)} failed (${st.stats.failed} so far): ${(err as Error).message}`);
        }
      } finally {
        st.busy = false;
      }
    }
  }

  private async runSource(st: RunningStage): Promise<void> {
    const src = st.instance as SourceInstance;
    const limit = this.opts.frames;
    const emit = async (frame: Frame) => {
      if (this.abort.signal.aborted) return;
      this.emitted++;
      st.stats.sent++;
      await this.bus.publish(st.spec.output, frame);
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

  private idle(): boolean {
    return this.stages.every((s) => !s.busy && (!s.inbox || s.inbox.size === 0));
  }

  private async drain(): Promise<PipelineSummary> {
    const deadline = performance.now() + (this.opts.drainTimeoutMs ?? 30_000);
    // Two idle observations in a row: a publish may be between stages for one tick.
    let calm = 0;
    while (calm < 2) {
      if (performance.now() > deadline) {
        this.log.warn("drain timed out; closing stages with messages still in flight");
        break;
      }
      calm = this.idle() ? calm + 1 : 0;
      await new Promise((r) => setTimeout(r, 5));
    }
    for (const st of this.stages) st.inbox?.close();
    await this.closeInstances();
    const seconds = (performance.now() - this.started) / 1000;
    return {
      pipeline: this.spec.name,
      bus: this.bus.kind,
      reason: this.stopReason,
      seconds,
      stages: this.stages.map((s) => s.stats.snapshot()),
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
