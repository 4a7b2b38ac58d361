import type { Bus, Handler, Subscription } from "./bus.ts";
import type { Message } from "./message.ts";
import { subjectMatches } from "./subject.ts";

/**
 * The embedded default bus: in-process, zero-copy, NATS subject semantics.
 * Subscriber lookups are cached per subject so a publish costs a map hit.
 * @example
 * const bus = new MemoryBus();
 * bus.subscribe("fw.demo.>", (msg) => console.log(msg.seq));
 * await bus.publish("fw.demo.cam", frame);
 */
export class MemoryBus implements Bus {
  readonly kind = "memory";
  private subs = new Set<{ pattern: string; handler: Handler }>();
  private routes = new Map<string, Handler[]>();
  private closed = false;

  async publish(subject: string, msg: Message): Promise<void> {
    if (this.closed) throw new Error(`memory bus is closed (publish to ${subject})`);
    let handlers = this.routes.get(subject);
    if (!handlers) {
      handlers = [...this.subs].filter((s) => subjectMatches(s.pattern, subject)).map((s) => s.handler);
      this.routes.set(subject, handlers);
    }
    if (handlers.length === 1) return handlers[0](msg, subject);
    const pending: Promise<void>[] = [];
    for (const h of handlers) {
      const r = h(msg, subject);
      if (r) pending.push(r);
    }
    if (pending.length) await Promise.all(pending);
  }

  subscribe(pattern: string, handler: Handler): Subscription {
    const sub = { pattern, handler };
    this.subs.add(sub);
    this.routes.clear();
    return {
      unsubscribe: () => {
        this.subs.delete(sub);
        this.routes.clear();
      },
    };
  }

  async drain(): Promise<void> {
    this.closed = true;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.subs.clear();
    this.routes.clear();
  }
}
