/** A stream set kept in a JSON file (the memory bus's StreamStore), written atomically. */
import { readFile } from "node:fs/promises";
import { writeFileAtomic } from "./atomic-file.ts";
import type { StreamStore } from "../core/streams.ts";
import { existsSync } from "./index.ts";

interface StreamFile {
  version: 1;
  streams: Record<string, unknown>[];
}

/**
 * @example
 * const store = fileStreamStore("out/retail.cams.streams.json");
 * await store.put("door", { id: "door", url: "rtsp://cam/door" });
 */
export function fileStreamStore(path: string): StreamStore {
  let writing: Promise<void> = Promise.resolve();
  let cache: Record<string, unknown>[] | undefined;
  const read = async (): Promise<Record<string, unknown>[] | undefined> => {
    if (cache) return cache;
    if (!existsSync(path)) return undefined;
    const data = JSON.parse(await readFile(path, "utf8")) as StreamFile;
    if (data?.version !== 1 || !Array.isArray(data.streams)) throw new Error(`${path} is not a stream set file (version 1)`);
    return (cache = data.streams as Record<string, unknown>[]);
  };
  const write = (streams: Record<string, unknown>[]) => {
    cache = streams;
    const snapshot: StreamFile = { version: 1, streams: structuredClone(streams) };
    writing = writing.then(() => writeFileAtomic(path, JSON.stringify(snapshot, null, 1), { mode: 0o600 }));
    return writing;
  };
  return {
    where: path,
    load: read,
    async put(id, spec) {
      const all = [...((await read()) ?? [])];
      const i = all.findIndex((s) => s.id === id);
      if (i >= 0) all[i] = spec;
      else all.push(spec);
      await write(all);
    },
    async delete(id) {
      await write(((await read()) ?? []).filter((s) => s.id !== id));
    },
    close: () => writing,
  };
}
