/**
 * Seeded generators for the fuzz tests: the same seed gives the same cases on
 * every run, so a failure names a case that can be replayed.
 */

export { rng, type Rng } from "./support/random.ts";
import type { Rng } from "./support/random.ts";

/** A copy of `b` with `count` bytes in [from, to) replaced by random values. */
export function flipBytes(r: Rng, b: Uint8Array, count: number, from = 0, to = b.length): Uint8Array {
  const out = b.slice();
  if (to <= from) return out;
  for (let i = 0; i < count; i++) out[from + r.int(to - from)] = r.int(256);
  return out;
}

/** Rejects with `what` if `p` has not settled within `ms` (a hang, not a speed check). */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  const limit = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`hang: ${what} did not settle within ${ms} ms`)), ms)));
  return Promise.race([p, limit]).finally(() => clearTimeout(timer));
}
