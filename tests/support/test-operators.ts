/**
 * Operators that exist only for tests (a flaky stage, a slow stage, a
 * collecting sink). They are added to a copy of the registry, never to
 * operators/.
 */
import * as v from "valibot";
import type { Message } from "../../runtime/core/message.ts";
import { defineOperator, type OperatorDefinition } from "../../runtime/core/operator.ts";

/** What `test-collect` sinks received, by their `key` option. */
export const collected = new Map<string, Message[]>();
/** Called by `test-collect` for every message, by key (e.g. to measure lag). */
export const onCollect = new Map<string, (msg: Message) => void>();

export const collectSink = defineOperator({
  name: "test-collect",
  kind: "sink",
  description: "Test sink: keeps every message in memory.",
  options: v.strictObject({ key: v.string() }),
  create({ key }) {
    const got: Message[] = [];
    collected.set(key, got);
    return {
      process(msg) {
        got.push(msg);
        onCollect.get(key)?.(msg);
      },
    };
  },
});

export const flakyTransform = defineOperator({
  name: "test-flaky",
  kind: "transform",
  description: "Test stage: throws on every frame whose seq % every === 1.",
  options: v.strictObject({ every: v.number() }),
  create({ every }) {
    return {
      process(msg) {
        if (msg.seq % every === 1) throw new Error(`bad frame ${msg.seq}`);
        return msg;
      },
    };
  },
});

export const slowTransform = defineOperator({
  name: "test-slow",
  kind: "transform",
  description: "Test stage: takes `ms` per message.",
  options: v.strictObject({ ms: v.number() }),
  create({ ms }) {
    return {
      async process(msg) {
        await new Promise((r) => setTimeout(r, ms));
        return msg;
      },
    };
  },
});

export const testOperators: OperatorDefinition[] = [collectSink, flakyTransform, slowTransform];

/**
 * A stage exactly `every` source frames slow: it finishes a message only once
 * the source has emitted `every` more frames (or all it will emit). Overload
 * measured in frames, not milliseconds.
 */
export class FrameClock {
  emitted = 0;
  private waiters: { at: number; wake: () => void }[] = [];
  constructor(readonly total: number) {}

  tick(): void {
    this.emitted++;
    const ready = this.waiters.filter((w) => this.emitted >= w.at);
    this.waiters = this.waiters.filter((w) => this.emitted < w.at);
    for (const w of ready) w.wake();
  }

  after(frames: number): Promise<void> {
    const at = Math.min(this.emitted + frames, this.total);
    if (this.emitted >= at) return Promise.resolve();
    return new Promise((wake) => this.waiters.push({ at, wake }));
  }
}

export const clocks = new Map<string, FrameClock>();

export const gateTransform = defineOperator({
  name: "test-gate",
  kind: "transform",
  description: "Test stage: takes as long as the source needs to emit `every` frames.",
  options: v.strictObject({ key: v.string(), every: v.number() }),
  create({ key, every }) {
    return {
      async process(msg) {
        const clock = clocks.get(key);
        if (!clock) throw new Error(`no FrameClock ${key}`);
        await clock.after(every);
        return msg;
      },
    };
  },
});

testOperators.push(gateTransform);
