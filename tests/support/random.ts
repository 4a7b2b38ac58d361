/** Seeded randomness for tests: the same seed gives the same cases on every run. */

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
