/**
 * Admission control for `POST /detect` by decoded bytes in flight: every
 * request reserves the size its image will have decoded (width × height × 3,
 * read from the header before anything is decoded) until its response is
 * built. A request that would take the reservations past the budget is
 * refused at once with 503 and a Retry-After; one whose image alone is over
 * the budget can never be served and gets 413. A tiny PNG declaring
 * 6000×6000 (13 KB on the wire, 108 MB decoded) thus costs its decoded size
 * against the budget, not its body size.
 */
import { totalmem } from "node:os";
import { ImageTooLargeError } from "../media/image-decode.ts";
import { HttpError } from "./http.ts";

const MiB = 1 << 20;

/**
 * The default budget on this machine: 1/32 of its memory, between 256 MiB
 * and 1 GiB (a 24 GiB machine gets 753 MiB, an 8 GiB one 256 MiB). The
 * server's peak RSS runs to about its base plus 1.3–1.8 times the budget
 * (a decode's output and its garbage outlive the request until the next
 * collection), so this keeps a burst of image bombs near 1/16 of memory.
 * @example
 * defaultDecodeBudgetMb(); // 753 on a 24 GiB machine
 */
export function defaultDecodeBudgetMb(total = totalmem()): number {
  return Math.round(Math.min(1024, Math.max(256, total / 32 / MiB)));
}

/** A refusal that tells the client when to come back (the `Retry-After` header, in seconds). */
export class RetryLaterError extends HttpError {
  override name = "RetryLaterError";
  constructor(
    message: string,
    readonly retryAfterS: number,
    /** Which limit was reached, as framewire_serve_overloaded_total labels it. */
    readonly reason: "decode-budget" | "decoder-queue",
  ) {
    super(503, message);
  }
}

/** Releases a reservation; calling it again does nothing. */
export type Release = () => void;

/**
 * Counts the decoded bytes of requests in flight against a budget (0: no budget).
 * @example
 * const budget = new DecodeBudget(1024 * 2 ** 20);
 * const release = budget.reserve(6000, 6000); // 103 MiB; throws RetryLaterError when full
 * try { await work(); } finally { release(); }
 */
export class DecodeBudget {
  /** Bytes reserved by requests in flight. */
  inFlight = 0;
  /** Requests holding a reservation. */
  requests = 0;
  /** Mean time a reservation was held, ms (exponentially weighted), for Retry-After. */
  private heldMs = 1000;

  constructor(readonly budgetBytes: number) {}

  /**
   * Reserves the decoded size of a `width`×`height` image (3 bytes a pixel) or refuses.
   * @throws ImageTooLargeError (413) when that alone exceeds the budget; RetryLaterError (503) when the budget is full now.
   */
  reserve(width: number, height: number): Release {
    const bytes = width * height * 3;
    const limit = this.budgetBytes;
    const mib = (n: number) => (n / MiB).toFixed(1);
    if (limit > 0 && bytes > limit) throw new ImageTooLargeError(width, height, `it decodes to ${mib(bytes)} MiB, over the decode budget of ${mib(limit)} MiB (--decode-budget-mb)`);
    if (limit > 0 && this.inFlight + bytes > limit) {
      const retry = this.retryAfterS();
      throw new RetryLaterError(
        `decode budget full: ${mib(this.inFlight)} of ${mib(limit)} MiB held by ${this.requests} request(s), this ${width}x${height} image needs ${mib(bytes)} MiB; retry in ${retry} s`,
        retry,
        "decode-budget",
      );
    }
    this.inFlight += bytes;
    this.requests++;
    const t0 = performance.now();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.inFlight -= bytes;
      this.requests--;
      this.heldMs = 0.8 * this.heldMs + 0.2 * (performance.now() - t0);
    };
  }

  /** Seconds until a reservation is likely free: the mean holding time, 1..60 s. */
  retryAfterS(): number {
    return Math.min(60, Math.max(1, Math.ceil(this.heldMs / 1000)));
  }
}
