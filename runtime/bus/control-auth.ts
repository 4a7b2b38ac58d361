/**
 * Signed control messages: the processes of one pipeline share a secret
 * (FRAMEWIRE_CONTROL_KEY, or `controlKey` on the bus) and put an
 * HMAC-SHA256 of each control message (load advert, end of stream) in its
 * NATS headers, so a message on `fw.<pipeline>._ctl.>` that none of them
 * sent (a forged end of stream that would stop a worker, a fake worker's
 * advert) is refused and counted. The body stays the plain JSON that
 * docs/distributed.md describes; see docs/wire-format.md for the headers.
 */
import { Buffer } from "node:buffer";
import { createHmac, timingSafeEqual } from "node:crypto";
import { ConfigError } from "../core/errors.ts";

/** The environment variable that holds a pipeline's control key. */
export const CONTROL_KEY_ENV = "FRAMEWIRE_CONTROL_KEY";
/** Header with the signing time, ms since the Unix epoch. */
export const TS_HEADER = "Fw-Ts";
/** Header with `hmac-sha256=<base64url>`. */
export const MAC_HEADER = "Fw-Mac";
/** How far a signed message's time may be from the receiver's clock (replays older than this are refused). */
export const MAX_CONTROL_SKEW_MS = 5 * 60_000;
/** Shortest key accepted (a guessable key would sign anything). */
export const MIN_CONTROL_KEY_LENGTH = 16;

const MAC_PREFIX = "hmac-sha256=";
const enc = new TextEncoder();

/** Why a control message was refused: no signature, a wrong one, or one too old or too new. */
export type Verdict = "ok" | "unsigned" | "bad-signature" | "stale";

/**
 * Signs and checks control messages with one pipeline's shared key. The
 * MAC covers `fw-control-v1`, the subject, the time and the body bytes, so
 * a signed advert cannot be replayed as an end of stream, nor an old
 * message after {@link MAX_CONTROL_SKEW_MS}.
 * @example
 * const signer = new ControlSigner(process.env.FRAMEWIRE_CONTROL_KEY!);
 * const body = new TextEncoder().encode('{"stage":"cam","worker":"w1"}');
 * const { ts, mac } = signer.sign("fw.demo._ctl.eos", body);
 * signer.verify("fw.demo._ctl.eos", body, ts, mac); // "ok"
 * signer.verify("fw.demo._ctl.eos", body, undefined, undefined); // "unsigned"
 */
export class ControlSigner {
  private key: Buffer;

  /** @throws ConfigError when the key is shorter than {@link MIN_CONTROL_KEY_LENGTH} characters. */
  constructor(key: string) {
    if (key.length < MIN_CONTROL_KEY_LENGTH) {
      throw new ConfigError(
        `the control key (${CONTROL_KEY_ENV} or bus controlKey) is ${key.length} characters; use at least ${MIN_CONTROL_KEY_LENGTH} (e.g. openssl rand -base64 32)`,
      );
    }
    this.key = Buffer.from(key, "utf8");
  }

  /** The headers' values for `body` on `subject`, signed now. */
  sign(subject: string, body: string | Uint8Array, now = Date.now()): { ts: string; mac: string } {
    const ts = String(Math.round(now));
    return { ts, mac: MAC_PREFIX + this.mac(subject, ts, typeof body === "string" ? enc.encode(body) : body).toString("base64url") };
  }

  /** Whether `body` on `subject` carries this key's signature, made within the allowed clock skew. */
  verify(subject: string, body: Uint8Array, ts: string | undefined, mac: string | undefined, now = Date.now()): Verdict {
    if (!ts || !mac) return "unsigned";
    if (!mac.startsWith(MAC_PREFIX) || !/^\d{1,16}$/.test(ts)) return "bad-signature";
    const given = Buffer.from(mac.slice(MAC_PREFIX.length), "base64url");
    const want = this.mac(subject, ts, body);
    if (given.length !== want.length || !timingSafeEqual(given, want)) return "bad-signature";
    return Math.abs(now - Number(ts)) > MAX_CONTROL_SKEW_MS ? "stale" : "ok";
  }

  private mac(subject: string, ts: string, body: Uint8Array): Buffer {
    return createHmac("sha256", this.key).update(`fw-control-v1\n${subject}\n${ts}\n`).update(body).digest();
  }
}
