import type { Bus, Handler, SubscribeOptions, Subscription } from "../core/bus.ts";
import type { Message } from "../core/message.ts";
import { subjectMatches } from "../core/subject.ts";

interface Sub {
  pattern: string;
  handler: Handler;
  queue?: string;
}

/** Who receives a subject: plain subscribers each, queue groups one member in turn. */
interface Route {
  each: Handler[];
  groups: { members: Handler[]; next: number }[];
}

/**
 * The embedded default bus: in-process, zero-copy, NATS subject semantics
 * (including queue groups). Routes are cached per subject so a publish
 * costs a map lookup.
 * @example
 * const bus = new MemoryBus();
 * bus.subscribe("fw.demo.>", (msg) => console.log(msg.seq));
 * await bus.publish("fw.demo.cam", frame);
 */
export class MemoryBus implements Bus {
  readonly kind = "memory";
  private subs = new Set<Sub>();
  private routes = new Map<string, Route>();
  private closed = false;

  async publish(subject: string, msg: Message): Promise<void> {
    if (this.closed) throw new Error(`memory bus is closed (publish to ${subject})`);
    const route = this.routes.get(subject) ?? this.route(subject);
    const pending: Promise<void>[] = [];
    const deliver = (h: Handler) => {
      const r = h(msg, subject);
      if (r) pending.push(r);
    };
    for (const h of route.each) deliver(h);
    for (const g of route.groups) deliver(g.members[g.next++ % g.members.length]);
    if (pending.length) await Promise.all(pending);
  }

  subscribe(pattern: string, handler: Handler, opts: SubscribeOptions = {}): Subscription {
    const sub: Sub = { pattern, handler, queue: opts.queue };
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

  private route(subject: string): Route {
    const route: Route = { each: [], groups: [] };
    const groups = new Map<string, Handler[]>();
    for (const s of this.subs) {
      if (!subjectMatches(s.pattern, subject)) continue;
      if (!s.queue) route.each.push(s.handler);
      else groups.set(s.queue, [...(groups.get(s.queue) ?? []), s.handler]);
    }
    route.groups = [...groups.values()].map((members) => ({ members, next: 0 }));
    this.routes.set(subject, route);
    return route;
  }
}
