import * as v from "valibot";
import { describeFetchError } from "../runtime/platform/fetch-error.ts";
import { defineOperator } from "../runtime/core/operator.ts";
import { Precision, toJsonLine } from "../runtime/core/record.ts";
import { resultId } from "../runtime/bus/results.ts";

const seconds = (description: string) => v.pipe(v.number(), v.minValue(0.001), v.description(description));

const Options = v.strictObject({
  url: v.pipe(
    v.string(),
    v.url(),
    v.regex(/^https?:\/\//, "expected an http:// or https:// URL"),
    v.description("Where results are POSTed as JSON (one request per result)."),
  ),
  headers: v.optional(v.pipe(v.record(v.string(), v.string()), v.description("Extra request headers (e.g. Authorization).")), {}),
  frames: v.optional(v.pipe(v.boolean(), v.description("POST every frame's detections too (off: events only).")), false),
  events: v.optional(v.pipe(v.boolean(), v.description("POST events (line crossings, zone enter/exit, counts).")), true),
  precision: Precision,
  timeout: v.optional(seconds("Seconds one request may take."), 5),
  retries: v.optional(
    v.pipe(
      v.number(),
      v.integer(),
      v.minValue(0),
      v.maxValue(1000),
      v.description("Attempts after the first before a result is given up (loudly: a stage failure and an error line)."),
    ),
    5,
  ),
  retryDelay: v.optional(
    seconds("First delay between attempts (seconds), doubled up to maxRetryDelay; a Retry-After answer is honoured up to it."),
    0.5,
  ),
  maxRetryDelay: v.optional(seconds("Longest delay between attempts (seconds)."), 30),
});

/** A status worth another attempt: the server may answer differently later. */
const retryable = (status: number) => status >= 500 || status === 408 || status === 425 || status === 429;

/** The URL without user:password, for logs. */
const redact = (url: string) => url.replace(/\/\/[^/@]*@/, "//***@");

/**
 * POSTs results as JSON to an HTTP endpoint, one at a time and in order.
 * Failures are retried with exponential backoff (later results wait:
 * backpressure); after `retries` the result is given up with an error that
 * the stage counts as failed. Each request carries an `Idempotency-Key`
 * (the same on every retry), so a receiver can drop a repeat whose first
 * answer was lost.
 */
export default defineOperator({
  name: "sink-webhook",
  kind: "sink",
  description:
    "POST events (and optionally frame results) as JSON to an HTTP endpoint: timeout, retries with exponential backoff, idempotency key.",
  options: Options,
  create(o, ctx) {
    const target = redact(o.url);
    const closing = new AbortController();
    let delivered = 0;
    let lost = 0;
    ctx.log.info(`POSTing ${[o.frames && "frames", o.events && "events"].filter(Boolean).join(" and ")} to ${target}`);

    /** Sleeps `ms`, or less when the stage closes. */
    const pause = (ms: number) =>
      new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(t);
          closing.signal.removeEventListener("abort", done);
          resolve();
        };
        const t = setTimeout(done, ms);
        closing.signal.addEventListener("abort", done, { once: true });
      });

    /** One attempt: undefined when delivered, else why not and whether to try again. */
    async function attempt(body: string, key: string): Promise<{ why: string; again: boolean; after?: number } | undefined> {
      let res: Response;
      try {
        res = await fetch(o.url, {
          method: "POST",
          headers: { "content-type": "application/json", "idempotency-key": key, "user-agent": "framewire", ...o.headers },
          body,
          signal: AbortSignal.any([AbortSignal.timeout(o.timeout * 1000), closing.signal]),
        });
      } catch (err) {
        return { why: describeFetchError(err, o.timeout), again: true };
      }
      // Drain the body so the connection can be reused.
      const text = await res.text().catch(() => "");
      if (res.ok) return undefined;
      const why = `HTTP ${res.status}${text ? `: ${text.slice(0, 200)}` : ""}`;
      const retryAfter = Number(res.headers.get("retry-after"));
      return { why, again: retryable(res.status), after: Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter * 1000 : undefined };
    }

    return {
      async process(msg) {
        if (msg.kind === "frame" ? !o.frames : !o.events) return;
        const body = toJsonLine(msg, o.precision);
        const key = resultId(ctx.pipeline, msg, body);
        const what = `${msg.kind} ${msg.stream}#${msg.seq}${msg.kind === "event" ? ` (${msg.type})` : ""}`;
        let delay = o.retryDelay * 1000;
        for (let n = 0; ; n++) {
          const failed = await attempt(body, key);
          if (!failed) {
            delivered++;
            if (n > 0) ctx.log.info(`${what} delivered to ${target} after ${n + 1} attempts`);
            return;
          }
          if (!failed.again || n >= o.retries || closing.signal.aborted) {
            lost++;
            const cause = !failed.again ? "not retryable" : closing.signal.aborted ? "stage closed" : `gave up after ${n + 1} attempts`;
            throw new Error(`${what} NOT delivered to ${target} (${cause}; last: ${failed.why}) — ${lost} lost so far`);
          }
          const wait = Math.min(failed.after ?? delay, o.maxRetryDelay * 1000);
          ctx.log.warn(
            `POST ${what} to ${target} failed (${failed.why}); attempt ${n + 1} of ${o.retries + 1}, retrying in ${(wait / 1000).toFixed(2)} s — later results wait, in order`,
          );
          await pause(wait);
          delay = Math.min(delay * 2, o.maxRetryDelay * 1000);
        }
      },
      async close() {
        closing.abort();
        if (lost) ctx.log.error(`${delivered} results delivered to ${target}; ${lost} NOT delivered (see the errors above)`);
        else ctx.log.info(`${delivered} results delivered to ${target}`);
      },
    };
  },
});
