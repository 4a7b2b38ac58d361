import type { Message } from "./message.ts";

/**
 * Receives a message; a returned promise is backpressure: the publisher
 * waits for it before its publish resolves.
 */
export type Handler = (msg: Message, subject: string) => void | Promise<void>;

export interface Subscription {
  unsubscribe(): void;
}

/**
 * What stages talk over. The memory bus passes messages by reference inside
 * one process; a NATS bus implements the same interface across processes.
 */
export interface Bus {
  readonly kind: string;
  /** Delivers to every matching subscriber; resolves once all have accepted it. */
  publish(subject: string, msg: Message): Promise<void>;
  subscribe(pattern: string, handler: Handler): Subscription;
  /** Stops accepting publishes and waits for deliveries in flight. */
  drain(): Promise<void>;
  close(): Promise<void>;
}
