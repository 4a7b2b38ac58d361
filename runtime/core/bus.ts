import type { NatsConnection } from "@nats-io/transport-node";
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

/**
 * A bus over NATS as operators see it (bus/nats.ts implements it): the
 * connection for JetStream and raw result publishes.
 */
export interface NatsLink extends Bus {
  readonly kind: "nats";
  readonly nc: NatsConnection;
  /** Publishes bytes or a string as they are (no framewire envelope). */
  publishRaw(subject: string, payload: Uint8Array | string): void;
  drain(timeoutMs?: number): Promise<void>;
}
