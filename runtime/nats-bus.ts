import { connect, credsAuthenticator, type NatsConnection, type NodeConnectionOptions } from "@nats-io/transport-node";
import type { Bus, Handler, SubscribeOptions, Subscription } from "./bus.ts";
import { ConfigError } from "./errors.ts";
import type { Logger } from "./log.ts";
import type { Message } from "./message.ts";
import { readBytes, readText } from "./platform.ts";
import { decodeMessage, encodeMessage, WireFormatError } from "./wire.ts";

/** A message larger than the server accepts. */
export class PayloadTooLargeError extends Error {
  override name = "PayloadTooLargeError";
  constructor(
    readonly subject: string,
    readonly size: number,
    readonly limit: number,
  ) {
    super(
      `message on ${subject} is ${size} bytes but the NATS server's max_payload is ${limit}: ` +
        "raise max_payload in the server config (pipelines/nats/*.conf set 8MB), scale frames down in ingest (width/height), " +
        "or keep the stages that exchange large tensors in one process",
    );
  }
}

export interface NatsBusOptions {
  /** nats://[user:pass@|token@]host:port, several separated by commas; tls:// requires TLS. */
  url: string;
  /** A NATS .creds file (JWT + nkey seed). */
  creds?: string;
  tls?: { ca?: string; cert?: string; key?: string };
  /** Client name shown by the server's monitoring. */
  name?: string;
  log: Logger;
  /** Aborts the connect retries. */
  signal?: AbortSignal;
}

/** Counters a NATS bus keeps for metrics and the summary. */
export interface NatsBusStats {
  published: number;
  received: number;
  rejected: number;
  reconnects: number;
  connected: boolean;
}

/**
 * The distributed bus: stages in other processes and machines exchange
 * messages over NATS subjects in wire format v1. NATS is the engine;
 * framewire adds no broker.
 * @example
 * const bus = await NatsBus.connect({ url: "nats://127.0.0.1:4222", log });
 * bus.subscribe("fw.demo.detect", (msg) => console.log(msg.seq), { queue: "fw.demo.nms" });
 */
export class NatsBus implements Bus {
  readonly kind = "nats";
  readonly stats: NatsBusStats = { published: 0, received: 0, rejected: 0, reconnects: 0, connected: true };

  private constructor(
    readonly nc: NatsConnection,
    private log: Logger,
  ) {
    void this.watchStatus();
  }

  /** Connects, retrying with backoff (logged) until connected or `signal` aborts. */
  static async connect(o: NatsBusOptions): Promise<NatsBus> {
    const opts = await connectionOptions(o);
    let delay = 250;
    for (let attempt = 1; ; attempt++) {
      try {
        const nc = await connect(opts);
        o.log.info(`connected to NATS ${nc.getServer()} (max_payload ${nc.info?.max_payload} bytes)`);
        return new NatsBus(nc, o.log);
      } catch (err) {
        const msg = (err as Error).message;
        if (/authorization|authentication|permission/i.test(msg)) throw new ConfigError(`NATS ${redact(o.url)}: ${msg}`);
        if (o.signal?.aborted) throw new ConfigError(`NATS ${redact(o.url)} unreachable: ${msg}`);
        o.log.warn(`NATS ${redact(o.url)} unreachable (${msg}); retry #${attempt} in ${(delay / 1000).toFixed(1)} s`);
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 5000);
      }
    }
  }

  async publish(subject: string, msg: Message): Promise<void> {
    this.nc.publish(subject, this.encode(subject, msg));
    this.stats.published++;
  }

  /** Publishes raw bytes (results as plain JSON for any client). */
  publishRaw(subject: string, payload: Uint8Array | string): void {
    const bytes = typeof payload === "string" ? new TextEncoder().encode(payload) : payload;
    const limit = this.nc.info?.max_payload ?? 1024 * 1024;
    if (bytes.length > limit) throw new PayloadTooLargeError(subject, bytes.length, limit);
    this.nc.publish(subject, bytes);
    this.stats.published++;
  }

  subscribe(pattern: string, handler: Handler, opts: SubscribeOptions = {}): Subscription {
    const sub = this.nc.subscribe(pattern, {
      queue: opts.queue,
      callback: (err, m) => {
        if (err) return this.log.error(`subscription ${pattern}: ${err.message}`);
        let msg: Message;
        try {
          msg = decodeMessage(m.data);
        } catch (e) {
          this.stats.rejected++;
          // Rate-limited: a foreign publisher must not flood the log.
          if (this.stats.rejected <= 5 || this.stats.rejected % 100 === 0) {
            this.log.warn(`rejected message on ${m.subject} (${this.stats.rejected} so far): ${(e as WireFormatError).message}`);
          }
          return;
        }
        this.stats.received++;
        const r = handler(msg, m.subject);
        if (r) r.catch((e) => this.log.error(`handler for ${m.subject}: ${(e as Error).message}`));
      },
    });
    return { unsubscribe: () => sub.unsubscribe() };
  }

  /**
   * Sends a message to one worker and resolves with its reply ("done" after
   * processing, "dropped" when its inbox evicted it).
   * @throws on timeout or when no worker listens on `subject`.
   */
  /**
   * Encodes a message for `subject`.
   * @throws PayloadTooLargeError when it exceeds the server's max_payload.
   */
  encode(subject: string, msg: Message): Uint8Array {
    const payload = encodeMessage(msg);
    const limit = this.nc.info?.max_payload ?? 1024 * 1024;
    if (payload.length > limit) throw new PayloadTooLargeError(subject, payload.length, limit);
    return payload;
  }

  /**
   * Sends an encoded message to one worker and resolves with its reply
   * ("done" after processing, "dropped" when its inbox evicted it).
   * @throws on timeout or when no worker listens on `subject`.
   */
  async request(subject: string, payload: Uint8Array, timeoutMs: number): Promise<string> {
    this.stats.published++;
    const reply = await this.nc.request(subject, payload, { timeout: timeoutMs });
    return reply.string();
  }

  /** Answers requests on `subject`: replies with what `handler` resolves to. */
  serve(subject: string, handler: (msg: Message) => Promise<string>): Subscription {
    const sub = this.nc.subscribe(subject, {
      callback: (err, m) => {
        if (err) return this.log.error(`endpoint ${subject}: ${err.message}`);
        let msg: Message;
        try {
          msg = decodeMessage(m.data);
        } catch (e) {
          this.stats.rejected++;
          this.log.warn(`rejected request on ${m.subject}: ${(e as Error).message}`);
          m.respond("rejected");
          return;
        }
        this.stats.received++;
        handler(msg).then(
          (r) => m.respond(r),
          (e) => m.respond(`failed: ${(e as Error).message}`),
        );
      },
    });
    return { unsubscribe: () => sub.unsubscribe() };
  }

  /** Control-plane messages (load adverts, end of stream): small JSON. */
  publishJson(subject: string, value: unknown): void {
    if (!this.nc.isClosed()) this.nc.publish(subject, JSON.stringify(value));
  }

  subscribeJson(subject: string, handler: (value: unknown, subject: string) => void): Subscription {
    const sub = this.nc.subscribe(subject, {
      callback: (err, m) => {
        if (err) return;
        try {
          handler(m.json(), m.subject);
        } catch (e) {
          this.log.warn(`bad control message on ${m.subject}: ${(e as Error).message}`);
        }
      },
    });
    return { unsubscribe: () => sub.unsubscribe() };
  }

  async drain(): Promise<void> {
    if (!this.nc.isClosed()) await this.nc.drain();
  }

  async close(): Promise<void> {
    if (!this.nc.isClosed()) await this.nc.close();
  }

  private async watchStatus(): Promise<void> {
    for await (const s of this.nc.status()) {
      if (s.type === "disconnect") {
        this.stats.connected = false;
        this.log.warn(`NATS disconnected from ${s.server}; reconnecting`);
      } else if (s.type === "reconnect") {
        this.stats.connected = true;
        this.stats.reconnects++;
        this.log.info(`NATS reconnected to ${s.server}`);
      } else if (s.type === "error" || s.type === "slowConsumer") {
        this.log.warn(`NATS ${s.type}: ${"error" in s ? (s as { error: Error }).error?.message : ""}`);
      }
    }
  }
}

async function connectionOptions(o: NatsBusOptions): Promise<NodeConnectionOptions> {
  const servers: string[] = [];
  let user: string | undefined;
  let pass: string | undefined;
  let token: string | undefined;
  let tlsScheme = false;
  for (const raw of o.url.split(",")) {
    let u: URL;
    try {
      u = new URL(raw.trim());
    } catch {
      throw new ConfigError(`bus: "${redact(raw)}" is not a NATS URL (expected nats://host:port)`);
    }
    if (!["nats:", "tls:"].includes(u.protocol)) throw new ConfigError(`bus: unsupported scheme ${u.protocol} (use nats:// or tls://)`);
    tlsScheme ||= u.protocol === "tls:";
    if (u.username && u.password) [user, pass] = [decodeURIComponent(u.username), decodeURIComponent(u.password)];
    else if (u.username) token = decodeURIComponent(u.username);
    servers.push(`${u.hostname}:${u.port || 4222}`);
  }
  const tls = o.tls || tlsScheme
    ? {
        ...(o.tls?.ca ? { ca: await readText(o.tls.ca) } : {}),
        ...(o.tls?.cert ? { cert: await readText(o.tls.cert) } : {}),
        ...(o.tls?.key ? { key: await readText(o.tls.key) } : {}),
      }
    : undefined;
  return {
    servers,
    name: o.name,
    user,
    pass,
    token,
    tls,
    ...(o.creds ? { authenticator: credsAuthenticator(await readBytes(o.creds)) } : {}),
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
    pingInterval: 10_000,
    timeout: 2000,
  };
}

function redact(url: string): string {
  return url.replace(/\/\/[^/@]*@/, "//***@");
}
