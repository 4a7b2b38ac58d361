import type { Message } from "./message.ts";

/**
 * Receives a message; a returned promise is backpressure: the publisher
 * waits for it before its publish resolves (on the memory bus).
 */
export type Handler = (msg: Message, subject: string) => void | Promise<void>;

export interface SubscribeOptions {
  /** Subscribers sharing a queue name split the messages: each goes to one of them. */
  queue?: string;
}

export interface Subscription {
  unsubscribe(): void;
}

/**
 * What stages talk over. The memory bus passes messages by reference inside
 * one process; the NATS bus implements the same interface across processes.
 */
export interface Bus {
  readonly kind: string;
  /** Delivers to every matching subscriber (one per queue group). */
  publish(subject: string, msg: Message): Promise<void>;
  subscribe(pattern: string, handler: Handler, opts?: SubscribeOptions): Subscription;
  /** Stops accepting publishes and waits for deliveries in flight. */
  drain(): Promise<void>;
  close(): Promise<void>;
}
