import { connect, credsAuthenticator, errors as natsErrors, headers as natsHeaders, type Msg, type MsgHdrs, type NatsConnection, type NodeConnectionOptions } from "@nats-io/transport-node";
import * as v from "valibot";
import type { NatsLink, Handler, SubscribeOptions, Subscription } from "../core/bus.ts";
import { ConfigError, FramewireError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import { isDroppable, type Message } from "../core/message.ts";
import { env, readBytes, readText } from "../platform/index.ts";
import { CONTROL_KEY_ENV, ControlSigner, MAC_HEADER, MAX_CONTROL_SKEW_MS, TS_HEADER } from "./control-auth.ts";
import { DuplicateWindow } from "./dedupe.ts";
import { decodeMessageAsync, encodeMessage, encodeMessageAsync, WireFormatError, WireLimitError, type WireOptions } from "./wire.ts";

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
  /**
   * The pipeline's shared secret for control messages (default: the
   * FRAMEWIRE_CONTROL_KEY environment variable). With a key, load adverts
   * and end-of-stream messages are signed (HMAC-SHA256), and control
   * messages without this key's signature are refused and counted. At
   * least 16 characters; `null` turns signing off whatever the environment says.
   */
  controlKey?: string | null;
  log: Logger;
  /** Aborts the connect retries. */
  signal?: AbortSignal;
}

/**
 * Why a received message was refused, one counter each:
 * - `malformed`: not wire format v2 (bad header, meta, blob lengths, JPEG; a v1 sender's frames);
 * - `oversize`: declares more than the wire limits or than its bytes hold (a decompression bomb, huge dims);
 * - `duplicate`: a frame (stream, seq) this subscription already received;
 * - `control-malformed`: a control message that is not the JSON its subject carries;
 * - `unsigned`, `bad-signature`, `stale`: a control message without this pipeline's
 *   signature, with a wrong one, or signed too long ago (a replay).
 */
export type RejectReason = "malformed" | "oversize" | "duplicate" | "control-malformed" | "unsigned" | "bad-signature" | "stale";
export const REJECT_REASONS: readonly RejectReason[] = ["malformed", "oversize", "duplicate", "control-malformed", "unsigned", "bad-signature", "stale"];

/** Counters a NATS bus keeps for metrics and the summary. */
export interface NatsBusStats {
  published: number;
  received: number;
  /** Every message refused, whatever the reason (the sum of `rejectedBy`). */
  rejected: number;
  /** Refused messages by reason. */
  rejectedBy: Record<RejectReason, number>;
  /** Publishes and subscriptions the server refused (its permissions). */
  deniedByServer: number;
  /** Live frames dropped because the reconnect buffer was full, and messages whose publish the connection closing overtook. */
  droppedOffline: number;
  /** Live frames a plain subscription dropped because its stage fell behind (maxPendingBytes waiting). */
  droppedBehind: number;
  /** Other messages (events, file frames) a plain subscription could not keep for the same reason: lost, logged as errors. */
  refusedBehind: number;
  reconnects: number;
  connected: boolean;
}

/** How a NatsBus subscription treats duplicate frames. */
export interface NatsSubscribeOptions extends SubscribeOptions {
  /** Refuse a frame (stream, seq) this subscription already received (default true). */
  rejectDuplicates?: boolean;
  /**
   * Bytes of received messages waiting for the handler (default 256 MiB):
   * the handler's promise is awaited before the next message is handed
   * over, and past this a live frame is dropped, anything else lost with an
   * error (both counted; core NATS cannot slow a publisher down).
   */
  maxPendingBytes?: number;
}

const DEFAULT_RECONNECT_BUFFER = 64 * 1024 * 1024;
const DEFAULT_MAX_PENDING_BYTES = 256 * 1024 * 1024;
/** Lines logged per reason before the log is rate-limited, then at most one per this many ms. */
const LOG_FIRST = 5;
const LOG_EVERY_MS = 10_000;

const CONTROL_REASONS: ReadonlySet<RejectReason> = new Set(["control-malformed", "unsigned", "bad-signature", "stale"]);

/**
 * Rate limit for log lines of one kind: the first LOG_FIRST, then at most
 * one per LOG_EVERY_MS, each saying how many were left out before it.
 */
class LogLimiter {
  private kinds = new Map<string, { n: number; at: number; skipped: number }>();

  /** Counts one event of `kind`: how many were skipped since the last logged one, or undefined when this one is not logged. */
  next(kind: string): number | undefined {
    const now = performance.now();
    let k = this.kinds.get(kind);
    if (!k) this.kinds.set(kind, (k = { n: 0, at: -Infinity, skipped: 0 }));
    k.n++;
    if (k.n > LOG_FIRST && now - k.at < LOG_EVERY_MS) {
      k.skipped++;
      return undefined;
    }
    const skipped = k.skipped;
    [k.skipped, k.at] = [0, now];
    return skipped;
  }
}

/** A message kept while disconnected; control messages are signed when they are finally sent. */
interface Pending {
  subject: string;
  payload: Uint8Array | string;
  control?: boolean;
}

/**
 * The distributed bus: stages in other processes and machines exchange
 * messages over NATS subjects in wire format v2. NATS is the engine;
 * framewire adds no broker.
 * @example
 * const bus = await NatsBus.connect({ url: "nats://127.0.0.1:4222", log });
 * bus.subscribe("fw.demo.detect", (msg) => console.log(msg.seq), { queue: "fw.demo.nms" });
 */
export class NatsBus implements NatsLink {
  readonly kind = "nats";
  /** The last publish's encoding: each publish waits for the one before it to be encoded. */
  private encodeOrder: Promise<unknown> = Promise.resolve();
  readonly stats: NatsBusStats = {
    published: 0,
    received: 0,
    rejected: 0,
    rejectedBy: Object.fromEntries(REJECT_REASONS.map((r) => [r, 0])) as Record<RejectReason, number>,
    deniedByServer: 0,
    droppedOffline: 0,
    droppedBehind: 0,
    refusedBehind: 0,
    reconnects: 0,
    connected: true,
  };
  /**
   * Messages published while disconnected, sent in order on reconnect
   * (nats.js discards its own buffer when it reconnects), and their bytes.
   */
  private backlog: Pending[] = [];
  private buffered = 0;
  private reconnected: { promise: Promise<void>; resolve: () => void } | undefined;
  /** The log of refusals and errors, rate-limited per kind. */
  private limiter = new LogLimiter();

  private constructor(
    readonly nc: NatsConnection,
    private log: Logger,
    private bufferLimit: number,
    private signer: ControlSigner | undefined,
  ) {
    void this.watchStatus();
  }

  /** True when control messages are signed and checked (a control key is set). */
  get signsControl(): boolean {
    return this.signer !== undefined;
  }

  /**
   * Connects, retrying with backoff (logged) until connected or `signal` aborts.
   * @throws ConfigError for wrong credentials, an untrusted certificate or a control key under 16 characters.
   * @example
   * const bus = await NatsBus.connect({ url: "nats://pipeline:secret@127.0.0.1:4222", log, controlKey: env("FRAMEWIRE_CONTROL_KEY") });
   */
  static async connect(o: NatsBusOptions): Promise<NatsBus> {
    const key = o.controlKey === undefined ? env(CONTROL_KEY_ENV) || undefined : o.controlKey ?? undefined;
    const signer = key === undefined ? undefined : new ControlSigner(key);
    const opts = await connectionOptions(o);
    let delay = 250;
    for (let attempt = 1; ; attempt++) {
      try {
        const nc = await connect(opts);
        o.log.info(`connected to NATS ${nc.getServer()} (max_payload ${nc.info?.max_payload} bytes${signer ? "; control messages signed" : ""})`);
        return new NatsBus(nc, o.log, o.reconnectBuffer ?? DEFAULT_RECONNECT_BUFFER, signer);
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
    // Encoded concurrently (a JPEG in sharp's threads), sent in the order publish was called.
    const encoding = this.encodeAsync(subject, msg, wire);
    const inTurn = this.encodeOrder.then(() => encoding);
    this.encodeOrder = inTurn.catch(() => undefined);
    const payload = await inTurn;
    if (!(await this.admit(payload.length, isDroppable(msg)))) return;
    // close() came while it was being encoded: said, not thrown at a caller that may not be waiting.
    if (this.nc.isClosed()) {
      this.stats.droppedOffline++;
      this.log.warn(`not sent on ${subject}: the connection was closed while the message was being encoded`);
      return;
    }
    this.send(subject, payload);
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

  /** Publishes now, or keeps the message for the reconnect (a control message is signed when it goes out). */
  private send(subject: string, payload: Uint8Array | string, control = false): void {
    this.stats.published++;
    if (this.stats.connected) return this.transmit({ subject, payload, control });
    this.backlog.push({ subject, payload, control });
    this.buffered += payload.length;
  }

  private transmit(m: Pending): void {
    if (!m.control || !this.signer) return this.nc.publish(m.subject, m.payload);
    const { ts, mac } = this.signer.sign(m.subject, m.payload);
    const h = natsHeaders();
    h.set(TS_HEADER, ts);
    h.set(MAC_HEADER, mac);
    this.nc.publish(m.subject, m.payload, { headers: h });
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

  /**
   * Delivers the wire-format messages on `pattern` to `handler`; anything
   * else, and a frame this subscription already received, is refused
   * (counted by reason, logged rate-limited).
   * @example
   * bus.subscribe("fw.demo.nms", (msg) => console.log(msg.seq), { queue: "fw.demo.sink" });
   */
  subscribe(pattern: string, handler: Handler, opts: NatsSubscribeOptions = {}): Subscription {
    const window = opts.rejectDuplicates === false ? undefined : new DuplicateWindow();
    const limit = opts.maxPendingBytes ?? DEFAULT_MAX_PENDING_BYTES;
    // Flow control: a message is handed over once the handler's promise for the one before it settled (the
    // inbox has room); meanwhile messages wait here, up to `limit` bytes. Core NATS cannot slow a publisher
    // down, so past that a live frame is dropped and anything else refused with an error, both counted.
    let pendingBytes = 0;
    let order: Promise<void> = Promise.resolve();
    const sub = this.nc.subscribe(pattern, {
      queue: opts.queue,
      callback: (err, m) => {
        if (err) return this.subscriptionError(pattern, err);
        const size = m.data.length;
        // Decoded concurrently (a JPEG in sharp's threads), handled in arrival order.
        const decoding = this.decodeData(m);
        if (pendingBytes > 0 && pendingBytes + size > limit) {
          void decoding.then((d) => {
            const msg = this.accept(m, d, window);
            if (msg) this.overflow(pattern, msg, limit);
          });
          return;
        }
        pendingBytes += size;
        order = order
          .then(async () => {
            const msg = this.accept(m, await decoding, window);
            if (msg) await handler(msg, m.subject);
          })
          .catch((e) => this.log.error(`handler for ${m.subject}: ${(e as Error).message}`)) // a throw must not stop the messages after it
          .finally(() => {
            pendingBytes -= size;
          });
      },
    });
    return { unsubscribe: () => sub.unsubscribe() };
  }

  /** A message past a subscription's pending bytes: dropped (a live frame) or refused (anything else), counted and said. */
  private overflow(pattern: string, msg: Message, limit: number): void {
    const live = isDroppable(msg);
    if (live) this.stats.droppedBehind++;
    else this.stats.refusedBehind++;
    const n = live ? this.stats.droppedBehind : this.stats.refusedBehind;
    const what = `${msg.kind} ${msg.stream}#${msg.seq}`;
    const text =
      `subscription ${pattern} falls behind (${limit >= 1048576 ? `${Math.round(limit / 1048576)} MiB` : `${Math.round(limit / 1024)} KiB`} waiting for the stage): ` +
      (live ? `dropped live ${what}` : `LOST ${what}, which the publisher sent as not droppable: route it through the pipeline's stages or JetStream (sink-jetstream), or slow the publisher down`) +
      ` (${this.stats.droppedBehind} dropped, ${this.stats.refusedBehind} lost so far)`;
    if (n <= LOG_FIRST || n % 100 === 0) (live ? this.log.warn : this.log.error).call(this.log, text);
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

  /**
   * Encodes a message for `subject`, a JPEG link coded by sharp off the
   * JavaScript thread (what {@link publish} uses; {@link encode} is the
   * synchronous form, JPEG through jpeg-js).
   * @throws PayloadTooLargeError when it exceeds the server's max_payload.
   * @example
   * const payload = await bus.encodeAsync("fw.demo.prep", frame, { encoding: "jpeg", quality: 80 });
   */
  async encodeAsync(subject: string, msg: Message, wire?: WireOptions): Promise<Uint8Array> {
    const payload = await encodeMessageAsync(msg, wire);
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
   * subject) are handled the same, without an answer. A message that is
   * not wire format is answered `rejected`, a frame this endpoint already
   * took `duplicate` (neither reaches the handler).
   * @example
   * bus.serve("fw.demo._w.nms.gpu1", async (msg) => (await process(msg), "done"));
   */
  serve(subject: string, handler: (msg: Message) => Promise<string>, opts: NatsSubscribeOptions = {}): Subscription {
    const window = opts.rejectDuplicates === false ? undefined : new DuplicateWindow();
    const sub = this.nc.subscribe(subject, {
      queue: opts.queue,
      callback: (err, m) => {
        if (err) return this.subscriptionError(subject, err);
        const decoding = this.decodeData(m);
        order = order.then(async () => {
          const msg = this.accept(m, await decoding, window);
          // A duplicate was taken before: the sender need not try it elsewhere.
          if (!msg) return void m.respond(msg === null ? "duplicate" : "rejected");
          handler(msg).then(
            (r) => m.respond(r),
            (e) => m.respond(`failed: ${(e as Error).message}`),
          );
        }).catch((e) => this.log.error(`handler for ${subject}: ${(e as Error).message}`));
      },
    });
    let order: Promise<void> = Promise.resolve();
    return { unsubscribe: () => sub.unsubscribe() };
  }

  /** A received message decoded; undefined when it is not wire format v2 (refused, counted, logged). */
  private async decodeData(m: Msg): Promise<Message | undefined> {
    try {
      return await decodeMessageAsync(m.data);
    } catch (e) {
      const err = e as Error;
      if (err instanceof WireLimitError) this.reject(m.subject, "oversize", err.message);
      else this.reject(m.subject, "malformed", err instanceof WireFormatError ? err.message : `decoding failed: ${err.message}`);
      return undefined;
    }
  }

  /**
   * A decoded message ({@link decodeData}) admitted in arrival order: counted;
   * null for a frame already received on this subscription (refused, counted, logged).
   */
  private accept(m: Msg, msg: Message | undefined, window: DuplicateWindow | undefined): Message | undefined | null {
    if (!msg) return undefined;
    // Per stream and producing stage (the last in `timings`): a sink fed by two stages gets each frame from both.
    if (window && msg.kind === "frame" && !window.admit(`${m.subject}\0${lastKey(msg.timings)}\0${msg.stream}`, msg.seq, msg.ts)) {
      this.reject(m.subject, "duplicate", `duplicate frame ${msg.stream}#${msg.seq} (already received on this subscription)`);
      return null;
    }
    this.stats.received++;
    return msg;
  }

  /** Counts a refused message by reason and logs it: the first few of each reason, then at most one line per 10 s. */
  private reject(subject: string, reason: RejectReason, what: string): void {
    this.stats.rejected++;
    this.stats.rejectedBy[reason]++;
    const skipped = this.limiter.next(reason);
    if (skipped === undefined) return;
    const control = CONTROL_REASONS.has(reason);
    const r = this.stats.rejectedBy;
    const controlTotal = r["control-malformed"] + r.unsigned + r["bad-signature"] + r.stale;
    const n = control ? controlTotal : this.stats.rejected - controlTotal;
    const more = skipped ? `; ${skipped} more ${reason} not logged` : "";
    this.log.warn(`${control ? "refused control message" : "rejected message"} on ${subject} (${n} so far${more}): ${what}`);
  }

  /** A subscription that failed: logged rate-limited (one the server refused is counted and logged by watchStatus). */
  private subscriptionError(pattern: string, err: Error): void {
    if (err instanceof natsErrors.PermissionViolationError) return;
    if (this.limiter.next(`subscription ${pattern}`) !== undefined) this.log.error(`subscription ${pattern}: ${err.message}`);
  }

  /** The server refused a publish or subscription (its permissions): counted, logged rate-limited per subject. */
  private denied(err: InstanceType<typeof natsErrors.PermissionViolationError>): void {
    this.stats.deniedByServer++;
    if (this.limiter.next(`denied ${err.operation} ${err.subject}`) === undefined) return;
    this.log.warn(
      `the NATS server refuses this connection's ${err.operation === "publish" ? "publishes" : "subscriptions"} on ${err.subject} ` +
        `(${this.stats.deniedByServer} refused so far): connect as a user allowed to use the pipeline's subjects (pipelines/nats/*.conf, docs/distributed.md)`,
    );
  }

  /**
   * Control-plane messages (load adverts, end of stream): small JSON, signed
   * with the control key when there is one. `volatile` ones (adverts, stale
   * by the next one) are skipped while disconnected.
   * @example
   * bus.publishJson("fw.demo._ctl.eos", { stage: "cam", worker: "edge-1" });
   */
  publishJson(subject: string, value: unknown, volatile = false): void {
    if (this.nc.isClosed() || (volatile && !this.stats.connected)) return;
    this.send(subject, JSON.stringify(value), true);
  }

  /**
   * Control-plane messages on `subject` (wildcards allowed), as parsed JSON
   * checked by `schema` when given. With a control key, a message without
   * its valid signature is refused first; then one that is not JSON or not
   * what the schema describes. Every refusal is counted by reason and
   * logged rate-limited; the handler sees only the rest.
   * @example
   * bus.subscribeJson("fw.demo._ctl.load.detect", (advert) => console.log(advert.worker), Advert);
   */
  subscribeJson<T = unknown>(subject: string, handler: (value: T, subject: string) => void, schema?: v.GenericSchema<unknown, T>): Subscription {
    const sub = this.nc.subscribe(subject, {
      callback: (err, m) => {
        if (err) return this.subscriptionError(subject, err);
        if (this.signer) {
          const verdict = this.signer.verify(m.subject, m.data, m.headers?.get(TS_HEADER) || undefined, m.headers?.get(MAC_HEADER) || undefined);
          if (verdict !== "ok") return this.reject(m.subject, verdict, refusal(verdict, m.headers));
        }
        let value: unknown;
        try {
          value = m.json();
        } catch {
          return this.reject(m.subject, "control-malformed", `not JSON (${m.data.length} bytes)`);
        }
        if (schema) {
          const r = v.safeParse(schema, value);
          if (!r.success) return this.reject(m.subject, "control-malformed", `not a control message: ${issueText(r.issues[0])}`);
          value = r.output;
        }
        try {
          handler(value as T, m.subject);
        } catch (e) {
          this.reject(m.subject, "control-malformed", `its handler failed: ${(e as Error).message}`);
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
        for (const m of this.backlog) this.transmit(m);
        [this.backlog, this.buffered] = [[], 0];
        this.stats.connected = true;
        this.stats.reconnects++;
        this.reconnected?.resolve();
      } else if (s.type === "error" && s.error instanceof natsErrors.PermissionViolationError) {
        this.denied(s.error);
      } else if (s.type === "error" || s.type === "slowConsumer") {
        if (this.limiter.next(`status ${s.type}`) !== undefined) this.log.warn(`NATS ${s.type}: ${"error" in s ? (s as { error: Error }).error?.message : ""}`);
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

/** Why a control message was refused, for the log. */
function refusal(verdict: "unsigned" | "bad-signature" | "stale", h: MsgHdrs | undefined): string {
  if (verdict === "unsigned") return `not signed, and this process has a control key: every process of the pipeline needs the same ${CONTROL_KEY_ENV}`;
  if (verdict === "bad-signature") return "its signature does not match this pipeline's control key (forged, or another key)";
  const age = Math.round((Date.now() - Number(h?.get(TS_HEADER))) / 1000);
  return `signed ${Math.abs(age)} s ${age >= 0 ? "ago" : "ahead"}, more than the ${MAX_CONTROL_SKEW_MS / 1000} s allowed (a replay, or clocks apart)`;
}

function issueText(issue: v.BaseIssue<unknown>): string {
  const path = (issue.path ?? []).map((p) => String(p.key)).join(".");
  return `${path || "(root)"}: ${issue.message}`;
}

/** The last key of a frame's timings: the stage that produced it ("" from a source). */
function lastKey(timings: Readonly<Record<string, number>>): string {
  let last = "";
  for (const k in timings) last = k;
  return last;
}

function redact(url: string): string {
  return url.replace(/\/\/[^/@]*@/, "//***@");
}
