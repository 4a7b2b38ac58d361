/** Writing a file so that neither a crash nor a power cut leaves half of it. */
import { mkdir, open, rename } from "node:fs/promises";
import { dirname } from "node:path";

/**
 * Writes `text` to `path` via a synced temporary file and a rename. Callers
 * serialise their own writes to one path (one temporary name suffices).
 * @example
 * await writeFileAtomic("out/counts.json", JSON.stringify(state));
 */
export async function writeFileAtomic(path: string, text: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.tmp`;
  const fh = await open(tmp, "w");
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}
