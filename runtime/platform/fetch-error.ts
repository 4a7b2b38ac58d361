/**
 * Why a fetch() failed, in a few words. Bun puts the connection error's code
 * (ECONNREFUSED, ECONNRESET) on the error itself; Deno says "fetch failed"
 * and keeps the reason in `cause`.
 * @example
 * describeFetchError(err, 5); // "ECONNREFUSED" or "no answer within 5 s"
 */
export function describeFetchError(err: unknown, timeoutSeconds: number): string {
  const e = err as Error & { code?: unknown; cause?: { code?: unknown; message?: string } };
  if (e.name === "TimeoutError") return `no answer within ${timeoutSeconds} s`;
  for (const c of [e.code, e.cause?.code]) if (typeof c === "string") return c;
  return e.cause?.message ? `${e.message}: ${e.cause.message}` : e.message;
}
