/** Writing a file so that neither a crash nor a power cut leaves half of it. */
import { mkdir, open, rename } from "node:fs/promises";
import { dirname } from "node:path";

/**
 * Writes `text` to `path` via a synced temporary file and a rename. Callers
 * serialise their own writes to one path (one temporary name suffices).
 * `mode` sets the file's permissions (e.g. 0o600 for a file holding
 * credentials), whatever the umask and whatever the file had before.
 * @example
 * await writeFileAtomic("out/counts.json", JSON.stringify(state));
 * await writeFileAtomic("out/shop.cam.streams.json", text, { mode: 0o600 });
 */
export async function writeFileAtomic(path: string, text: string, o: { mode?: number } = {}): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.tmp`;
  const fh = await open(tmp, "w", o.mode ?? 0o666);
  try {
    // open()'s mode applies only to a new file and is masked by the umask; chmod makes it exact.
    if (o.mode !== undefined) await fh.chmod(o.mode);
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}
