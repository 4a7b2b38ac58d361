/** A stream set kept in a NATS KV bucket (the NATS bus's StreamStore): every node and every restart sees the same set. */
import { KvWatchInclude, Kvm, type KV } from "@nats-io/kv";
import type { NatsLink } from "../core/bus.ts";
import type { StreamStore } from "../core/streams.ts";

/** The bucket of a pipeline's stream sets (one key per stage and stream: `<stage>.<id>`). */
export function streamBucket(pipeline: string): string {
  return `fw_streams_${pipeline.replace(/[^A-Za-z0-9_-]/g, "_")}`;
}

/** The key marking that a stage's set has been saved (even if it is empty now). */
const MARK = "_set";

/**
 * @example
 * const store = await kvStreamStore(ctx.nats, "retail", "cams");
 * store.watch?.((c) => console.log(c.id, c.spec ? "put" : "deleted"));
 */
export async function kvStreamStore(link: NatsLink, pipeline: string, stage: string): Promise<StreamStore> {
  const bucket = streamBucket(pipeline);
  const kv: KV = await new Kvm(link.nc).create(bucket, { history: 1 });
  const prefix = `${stage}.`;
  const dec = new TextDecoder();
  const watchers: (() => void)[] = [];
  return {
    where: `NATS KV bucket ${bucket}`,
    async load() {
      if (!(await kv.get(prefix + MARK))?.string()) return undefined;
      const out: Record<string, unknown>[] = [];
      for await (const key of await kv.keys(`${prefix}>`)) {
        if (key === prefix + MARK) continue;
        const e = await kv.get(key);
        if (e && e.operation === "PUT" && e.value.length) out.push(JSON.parse(dec.decode(e.value)) as Record<string, unknown>);
      }
      return out;
    },
    async put(id, spec) {
      await kv.put(prefix + MARK, "1");
      await kv.put(prefix + id, JSON.stringify(spec));
    },
    async delete(id) {
      await kv.put(prefix + MARK, "1");
      await kv.delete(prefix + id);
    },
    watch(on) {
      let stopped = false;
      const started = (async () => {
        const it = await kv.watch({ key: `${prefix}>`, include: KvWatchInclude.UpdatesOnly });
        if (stopped) return it.stop();
        watchers.push(() => it.stop());
        for await (const e of it) {
          const id = e.key.slice(prefix.length);
          if (id === MARK) continue;
          if (e.operation === "PUT" && e.value.length) on({ id, spec: JSON.parse(dec.decode(e.value)) as Record<string, unknown> });
          else on({ id });
        }
      })();
      void started.catch(() => {});
      return () => {
        stopped = true;
        for (const w of watchers.splice(0)) w();
      };
    },
    async close() {
      for (const w of watchers.splice(0)) w();
    },
  };
}
