/**
 * Seeded generators for the fuzz tests: the same seed gives the same cases on
 * every run, so a failure names a case that can be replayed.
 */

/** mulberry32: a small, fast, seedable PRNG (uniform in [0, 1)). */
export function rng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  return {
    next,
    /** Integer in [0, n). */
    int,
    pick: <T>(xs: readonly T[]): T => xs[int(xs.length)],
    bytes(n: number): Uint8Array {
      const b = new Uint8Array(n);
      for (let i = 0; i < n; i++) b[i] = int(256);
      return b;
    },
  };
}
export type Rng = ReturnType<typeof rng>;

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
