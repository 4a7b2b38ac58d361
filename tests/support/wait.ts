/**
 * Waits for a condition the test needs before it can go on (frames arrived,
 * a log line appeared). The limit only keeps a broken run from hanging; it
 * is not a speed assertion.
 */
export async function until(cond: () => boolean, what: string, limitMs = 30_000, everyMs = 20): Promise<void> {
  const end = performance.now() + limitMs;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`gave up waiting for ${what} after ${limitMs} ms`);
    await sleep(everyMs);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** PIDs of processes whose command line contains `needle` (Linux /proc; empty elsewhere). */
export async function processesMatching(needle: string): Promise<number[]> {
  const { readdir, readFile } = await import("node:fs/promises");
  let entries: string[];
  try {
    entries = await readdir("/proc");
  } catch {
    return [];
  }
  const found: number[] = [];
  for (const e of entries) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      const cmd = (await readFile(`/proc/${e}/cmdline`, "utf8")).replaceAll("\0", " ");
      if (cmd.includes(needle)) found.push(Number(e));
    } catch {
      // Exited while we looked.
    }
  }
  return found;
}
