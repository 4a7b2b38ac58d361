import { connect, credsAuthenticator, type NatsConnection, type NodeConnectionOptions } from "@nats-io/transport-node";
import type { NatsLink, Handler, SubscribeOptions, Subscription } from "../core/bus.ts";
import { ConfigError, FramewireError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import { isDroppable, type Message } from "../core/message.ts";
import { readBytes, readText } from "../platform/index.ts";
import { decodeMessage, encodeMessage, WireFormatError, type WireOptions } from "./wire.ts";

/** A message larger than the server accepts. */
export class PayloadTooLargeError extends FramewireError {
  override name = "PayloadTooLargeError";
  constructor(
    readonly subject: string,
    readonly size: number,
    readonly limit: number,
  ) {
    super("E_PAYLOAD_TOO_LARGE", 
      `message on ${subject} is ${size} bytes but the NATS server's max_payload is ${limit}: ` +
        "raise max_payload in the server config (pipelines/nats/*.conf set 8MB), scale frames down in ingest (width/height), " +
        "keep the stages that exchange tensors in one process, or send JPEG (link: { encoding: jpeg }) on links before resize",
    );
  }
}

export interface NatsBusOptions {
  /** nats://[user:pass@|token@]host:port, several separated by commas; tls:// requires TLS. */
  url: string;
  /** User and password (instead of putting them in the URL). */
  user?: string;
  password?: string;
  token?: string;
  /** A NATS .creds file (JWT + nkey seed). */
  creds?: string;
  /** PEM files: the CA to trust, and a client certificate and key for mutual TLS. */
  tls?: { ca?: string; cert?: string; key?: string };
  /**
   * Bytes of messages kept while disconnected (default 64 MiB), sent on
   * reconnect. Past it live frames are dropped (counted) and other messages
   * wait for the reconnect.
   */
  reconnectBuffer?: number;
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
  /** Live frames dropped because the reconnect buffer was full. */
  droppedOffline: number;
  reconnects: number;
  connected: boolean;
}

const DEFAULT_RECONNECT_BUFFER = 64 * 1024 * 1024;

/**
 * The distributed bus: stages in other processes and machines exchange
 * messages over NATS subjects in wire format v1. NATS is the engine;
 * framewire adds no broker.
 * @example
 * const bus = await NatsBus.connect({ url: "nats://127.0.0.1:4222", log });
 * bus.subscribe("fw.demo.detect", (msg) => console.log(msg.seq), { queue: "fw.demo.nms" });
 */
export class NatsBus implements NatsLink {
  readonly kind = "nats";
  readonly stats: NatsBusStats = { published: 0, received: 0, rejected: 0, droppedOffline: 0, reconnects: 0, connected: true };
  /**
   * Messages published while disconnected, sent in order on reconnect
   * (nats.js discards its own buffer when it reconnects), and their bytes.
   */
  private backlog: { subject: string; payload: Uint8Array | string }[] = [];
  private buffered = 0;
  private reconnected: { promise: Promise<void>; resolve: () => void } | undefined;

  private constructor(
    readonly nc: NatsConnection,
    private log: Logger,
    private bufferLimit: number,
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
        return new NatsBus(nc, o.log, o.reconnectBuffer ?? DEFAULT_RECONNECT_BUFFER);
      } catch (err) {
        const msg = (err as Error).message;
        // Credentials and certificates do not get better by retrying.
        if (/authorization|authentication|permission|certificate|tls|ssl/i.test(msg)) throw new ConfigError(`NATS ${redact(o.url)}: ${msg}`);
        if (o.signal?.aborted) throw new ConfigError(`NATS ${redact(o.url)} unreachable: ${msg}`);
        o.log.warn(`NATS ${redact(o.url)} unreachable (${msg}); retry #${attempt} in ${(delay / 1000).toFixed(1)} s`);
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 5000);
      }
    }
  }

  /** Publishes in wire format; see {@link admit} for what happens while disconnected. */
  async publish(subject: string, msg: Message, wire?: WireOptions): Promise<void> {
    const payload = this.encode(subject, msg, wire);
    if (await this.admit(payload.length, isDroppable(msg))) this.send(subject, payload);
  }

  /**
   * Publishes raw bytes (results as plain JSON for any client). Synchronous,
   * so it cannot wait: while disconnected it goes to the reconnect buffer,
   * and when that is full it is not sent (counted and logged; results that
   * must survive any outage belong in sink-jetstream).
   * @throws PayloadTooLargeError when it exceeds the server's max_payload.
   */
  publishRaw(subject: string, payload: Uint8Array | string): void {
    const bytes = typeof payload === "string" ? new TextEncoder().encode(payload) : payload;
    this.checkSize(subject, bytes.length);
    if (!this.stats.connected && this.buffered + bytes.length > this.bufferLimit) return this.dropOffline(`a message on ${subject}`);
    this.send(subject, bytes);
  }

  /** Publishes now, or keeps the message for the reconnect. */
  private send(subject: string, payload: Uint8Array | string): void {
    this.stats.published++;
    if (this.stats.connected) return this.nc.publish(subject, payload);
    this.backlog.push({ subject, payload });
    this.buffered += payload.length;
  }

  private dropOffline(what: string): void {
    this.stats.droppedOffline++;
    if (this.stats.droppedOffline <= 5 || this.stats.droppedOffline % 100 === 0) {
      this.log.warn(`NATS disconnected and the reconnect buffer (${this.bufferLimit} bytes) is full: dropped ${what} (${this.stats.droppedOffline} so far)`);
    }
  }

  /**
   * Whether a message of `size` bytes may go out now. Connected: yes.
   * Disconnected: yes while the reconnect buffer has room; past it a
   * droppable message is dropped (false, counted) and any other waits for
   * the reconnect, so buffering never grows without bound.
   */
  async admit(size: number, droppable: boolean): Promise<boolean> {
    while (!this.stats.connected && !this.nc.isClosed() && this.buffered + size > this.bufferLimit) {
      if (droppable) {
        this.dropOffline("a live frame");
        return false;
      }
      await this.reconnected?.promise;
    }
    return true;
  }

  subscribe(pattern: string, handler: Handler, opts: SubscribeOptions = {}): Subscription {
    const sub = this.nc.subscribe(pattern, {
      queue: opts.queue,
      callback: (err, m) => {
        if (err) return this.log.error(`subscription ${pattern}: ${err.message}`);
        const msg = this.decode(m.subject, m.data);
        if (!msg) return;
        const r = handler(msg, m.subject);
        if (r) r.catch((e) => this.log.error(`handler for ${m.subject}: ${(e as Error).message}`));
      },
    });
    return { unsubscribe: () => sub.unsubscribe() };
  }

  /**
   * Encodes a message for `subject`.
   * @throws PayloadTooLargeError when it exceeds the server's max_payload.
   * @example
   * const payload = bus.encode("fw.demo.prep", frame, { encoding: "jpeg", quality: 80 });
   */
  encode(subject: string, msg: Message, wire?: WireOptions): Uint8Array {
    const payload = encodeMessage(msg, wire);
    this.checkSize(subject, payload.length);
    return payload;
  }

  /** The largest message the server accepts (its max_payload). */
  get maxPayload(): number {
    return this.nc.info?.max_payload ?? 1024 * 1024;
  }

  private checkSize(subject: string, size: number): void {
    if (size > this.maxPayload) throw new PayloadTooLargeError(subject, size, this.maxPayload);
  }

  /**
   * Sends an encoded message to one worker and resolves with its reply
   * ("done" after processing, "dropped" when its inbox evicted it).
   * @throws on timeout or when no worker listens on `subject`.
   */
  async request(subject: string, payload: Uint8Array, timeoutMs: number): Promise<string> {
    // A request waits out an outage: its reply could not reach an old connection anyway.
    while (!this.stats.connected && !this.nc.isClosed()) await this.reconnected?.promise;
    this.stats.published++;
    const reply = await this.nc.request(subject, payload, { timeout: timeoutMs });
    return reply.string();
  }

  /**
   * Answers requests on `subject` (as one member of `queue`, if given):
   * replies with what `handler` resolves to. Plain publishes (no reply
   * subject) are handled the same, without an answer.
   */
  serve(subject: string, handler: (msg: Message) => Promise<string>, opts: SubscribeOptions = {}): Subscription {
    const sub = this.nc.subscribe(subject, {
      queue: opts.queue,
      callback: (err, m) => {
        if (err) return this.log.error(`endpoint ${subject}: ${err.message}`);
        const msg = this.decode(m.subject, m.data);
        if (!msg) return void m.respond("rejected");
        handler(msg).then(
          (r) => m.respond(r),
          (e) => m.respond(`failed: ${(e as Error).message}`),
        );
      },
    });
    return { unsubscribe: () => sub.unsubscribe() };
  }

  /** A received message, counted; or undefined when it is not wire format (rejected, counted, logged). */
  private decode(subject: string, data: Uint8Array): Message | undefined {
    try {
      const msg = decodeMessage(data);
      this.stats.received++;
      return msg;
    } catch (e) {
      this.reject(subject, e as Error);
      return undefined;
    }
  }

  private reject(subject: string, err: Error): void {
    this.stats.rejected++;
    // Rate-limited: a foreign publisher must not flood the log.
    if (this.stats.rejected <= 5 || this.stats.rejected % 100 === 0) {
      const what = err instanceof WireFormatError ? err.message : `decoding failed: ${err.message}`;
      this.log.warn(`rejected message on ${subject} (${this.stats.rejected} so far): ${what}`);
    }
  }

  /**
   * Control-plane messages (load adverts, end of stream): small JSON.
   * `volatile` ones (adverts, stale by the next one) are skipped while disconnected.
   */
  publishJson(subject: string, value: unknown, volatile = false): void {
    if (this.nc.isClosed() || (volatile && !this.stats.connected)) return;
    this.send(subject, JSON.stringify(value));
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

  /**
   * Flushes what is buffered and closes. Bounded: a server that stays away
   * must not keep the process from exiting.
   */
  async drain(timeoutMs = 5000): Promise<void> {
    if (this.nc.isClosed()) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<"late">((r) => (timer = setTimeout(() => r("late"), timeoutMs)));
    const r = await Promise.race([this.nc.drain().catch((e: Error) => e), late]);
    clearTimeout(timer);
    if (r === "late" || r instanceof Error) {
      this.log.warn(`NATS drain ${r === "late" ? `did not finish in ${timeoutMs} ms` : `failed: ${r.message}`}; closing`);
      await this.close();
    }
  }

  async close(): Promise<void> {
    if (this.backlog.length) this.log.warn(`closing with ${this.backlog.length} messages published while disconnected, never sent`);
    this.backlog = [];
    if (!this.nc.isClosed()) await this.nc.close();
    this.reconnected?.resolve();
  }

  private async watchStatus(): Promise<void> {
    for await (const s of this.nc.status()) {
      if (s.type === "disconnect") {
        this.stats.connected = false;
        let resolve!: () => void;
        const promise = new Promise<void>((r) => (resolve = r));
        this.reconnected = { promise, resolve };
        this.log.warn(`NATS disconnected from ${s.server}; reconnecting (buffering up to ${this.bufferLimit} bytes)`);
      } else if (s.type === "reconnect") {
        this.log.info(`NATS reconnected to ${s.server}; sending ${this.backlog.length} messages (${this.buffered} bytes) kept meanwhile`);
        for (const m of this.backlog) this.nc.publish(m.subject, m.payload);
        [this.backlog, this.buffered] = [[], 0];
        this.stats.connected = true;
        this.stats.reconnects++;
        this.reconnected?.resolve();
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
    user: o.user ?? user,
    pass: o.password ?? pass,
    token: o.token ?? token,
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
