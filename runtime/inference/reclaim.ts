/**
 * Large, short-lived buffers (a YOLO output is 8.6 MB a frame at 640) are
 * freed late by Bun's collector: one that outlived a young collection, or
 * moved in from another thread, waits for a full one, and peak RSS grows by
 * ~100 MB. A reclaimer runs a full collection of the calling thread's heap
 * (bun:jsc's fullGC: unlike Bun.gc it leaves the allocator's pages alone,
 * which would only be faulted in again; docs/performance.md) once that many
 * bytes have been let go. Deno's V8 accounts for such buffers itself: there
 * it does nothing.
 */

// Not a literal specifier: Deno would try to load bun:jsc while building the module graph.
const BUN_JSC = "bun:jsc";
const fullGC = "Bun" in globalThis ? ((await import(BUN_JSC)) as { fullGC(): number }).fullGC : undefined;

/**
 * A function to call with the size of each large buffer let go; every
 * `everyBytes` of them it runs a full collection.
 * @example
 * const letGo = reclaimer(16 * 1024 * 1024);
 * letGo(output.byteLength); // after the last use of output
 */
export function reclaimer(everyBytes: number): (bytes: number) => void {
  let pending = 0;
  return (bytes) => {
    pending += bytes;
    if (pending < everyBytes || !fullGC) return;
    pending = 0;
    fullGC();
  };
}
