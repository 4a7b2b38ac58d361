/**
 * A file of whole records (JSON Lines): each batch is written whole or not
 * at all. A write that fails part-way (a full disk) is cut back to the last
 * complete record, so the file never holds a torn line, and the records of
 * the failed batch are counted as lost exactly. Opened for appending, a torn
 * tail left by a crash is cut off first.
 */
import { open, type FileHandle } from "node:fs/promises";
import { mkdir } from "node:fs/promises";
import { dirname } from "node:path";

export interface RecordFile {
  /** Appends the records (each ending in "\n"); resolves with how many were lost (0 or all of them). */
  append(records: readonly string[]): Promise<{ lost: number; error?: Error }>;
  /** Bytes of complete records in the file. */
  readonly size: number;
  close(): Promise<void>;
}

/** Whether the file was found with a torn last line (and how many bytes were cut). */
export interface OpenedRecordFile extends RecordFile {
  repairedBytes: number;
}

const enc = new TextEncoder();

/**
 * @example
 * const f = await openRecordFile("out/run.jsonl", true);
 * const { lost } = await f.append(['{"a":1}\n', '{"a":2}\n']); // 0, or 2 when the disk is full
 * await f.close();
 */
export async function openRecordFile(path: string, append = false): Promise<OpenedRecordFile> {
  await mkdir(dirname(path), { recursive: true });
  const fh: FileHandle = await open(path, append ? "a+" : "w");
  let size = (await fh.stat()).size;
  let repairedBytes = 0;
  if (append && size > 0) {
    // Cut a torn tail (a crash mid-line): everything after the last newline.
    const tailLen = Math.min(size, 1 << 20);
    const tail = Buffer.alloc(tailLen);
    await fh.read(tail, 0, tailLen, size - tailLen);
    const nl = tail.lastIndexOf(10);
    const keep = nl < 0 ? (tailLen === size ? 0 : size) : size - tailLen + nl + 1;
    if (keep < size) {
      repairedBytes = size - keep;
      await fh.truncate(keep);
      size = keep;
    }
  }
  return {
    repairedBytes,
    get size() {
      return size;
    },
    async append(records) {
      if (!records.length) return { lost: 0 };
      const bytes = enc.encode(records.join(""));
      let done = 0;
      try {
        while (done < bytes.length) {
          const { bytesWritten } = await fh.write(bytes, done, bytes.length - done, size + done);
          if (bytesWritten === 0) throw Object.assign(new Error("no space left on device (0 bytes written)"), { code: "ENOSPC" });
          done += bytesWritten;
        }
        size += done;
        return { lost: 0 };
      } catch (err) {
        // Whole or nothing: drop the part of the batch that made it to the file.
        if (done > 0) await fh.truncate(size).catch(() => {});
        return { lost: records.length, error: err as Error };
      }
    },
    async close() {
      await fh.close();
    },
  };
}
