/**
 * The stream sets of a process's sources, as the control surfaces see them:
 * `GET/POST /api/streams`, `PATCH/DELETE /api/streams/:id`, the NATS control
 * subject `fw.<pipeline>._ctl.streams` and `bun run streams`.
 */
import * as v from "valibot";
import type { Subscription } from "../core/bus.ts";
import type { Logger } from "../core/log.ts";
import { StreamExistsError, StreamNotFoundError, StreamOptionsError, type StreamControl, type StreamInfo } from "../core/streams.ts";
import type { Executor } from "../engine/executor.ts";
import type { NatsBus } from "../bus/nats.ts";

/** The subject a pipeline's processes answer stream control requests on. */
export function streamsSubject(pipeline: string): string {
  return `fw.${pipeline}._ctl.streams`;
}

/** A control request over NATS (the HTTP routes take the same operations). */
export const StreamRequest = v.variant("op", [
  v.strictObject({ op: v.literal("ls"), token: v.optional(v.string()) }),
  v.strictObject({ op: v.literal("add"), token: v.optional(v.string()), stage: v.optional(v.string()), spec: v.record(v.string(), v.unknown()) }),
  v.strictObject({ op: v.literal("patch"), token: v.optional(v.string()), id: v.string(), spec: v.record(v.string(), v.unknown()) }),
  v.strictObject({ op: v.literal("rm"), token: v.optional(v.string()), id: v.string() }),
]);
export type StreamRequest = v.InferOutput<typeof StreamRequest>;

/** What the operations answer: the streams, or an error with its HTTP status. */
export type StreamReply = { ok: true; streams: StreamInfo[] } | { ok: false; status: 400 | 401 | 403 | 404 | 409; error: string; code?: string };

/**
 * The operations on the stream sets of `exec`'s sources.
 * @example
 * const ops = streamOps(exec);
 * await ops.add({ id: "door", url: "rtsp://cam/door" }); // the new stream's info
 */
export function streamOps(exec: Executor) {
  const controls = (): { stage: string; control: StreamControl }[] =>
    exec.live().flatMap((s) => (s.instance.streams ? [{ stage: s.id, control: s.instance.streams }] : []));
  const withDrops = (list: StreamInfo[]): StreamInfo[] => {
    const drops = exec.streamDrops();
    return list.map((s) => ({ ...s, drops: drops.get(s.id) ?? 0 }));
  };
  const owner = (id: string) => controls().find((c) => c.control.list().some((s) => s.id === id));
  return {
    list: (): StreamInfo[] => withDrops(controls().flatMap((c) => c.control.list())),
    async add(spec: unknown, stage?: string): Promise<StreamInfo> {
      const all = controls();
      if (!all.length) throw new StreamNotFoundError("no source in this process takes streams at runtime");
      const id = (spec as { id?: unknown })?.id;
      if (typeof id === "string" && owner(id)) throw new StreamExistsError(`stream "${id}" exists (PATCH /api/streams/${id} to change it)`);
      const target = stage ? all.find((c) => c.stage === stage) : all.length === 1 ? all[0] : undefined;
      if (!target) throw new StreamOptionsError(stage ? `no source stage "${stage}" here (sources: ${all.map((c) => c.stage).join(", ")})` : `several sources take streams (${all.map((c) => c.stage).join(", ")}): say which with "stage"`);
      return withDrops([await target.control.add(spec)])[0];
    },
    async update(id: string, patch: unknown): Promise<StreamInfo> {
      const c = owner(id);
      if (!c) throw new StreamNotFoundError(`no stream "${id}"`);
      return withDrops([await c.control.update(id, patch)])[0];
    },
    async remove(id: string): Promise<void> {
      const c = owner(id);
      if (!c) throw new StreamNotFoundError(`no stream "${id}"`);
      await c.control.remove(id);
    },
  };
}

/** The HTTP status of a stream operation's error. */
export function streamErrorStatus(err: unknown): 400 | 404 | 409 | undefined {
  if (err instanceof StreamExistsError) return 409;
  if (err instanceof StreamNotFoundError) return 404;
  if (err instanceof StreamOptionsError) return 400;
  return undefined;
}

/**
 * Answers stream control requests on NATS (`bun run streams`), with the same
 * rules as HTTP: changes need the control token; listing is open.
 * @example
 * const sub = serveStreamControl(bus, exec, process.env.FRAMEWIRE_HTTP_TOKEN, log);
 */
export function serveStreamControl(bus: NatsBus, exec: Executor, token: string | undefined, log: Logger): Subscription {
  const ops = streamOps(exec);
  // One process answers each request (a queue group); the others learn changes from the KV bucket.
  const sub = bus.nc.subscribe(streamsSubject(exec.spec.name), {
    queue: streamsSubject(exec.spec.name),
    callback: (err, m) => {
      if (err) return;
      void (async (): Promise<StreamReply> => {
        let req: StreamRequest;
        try {
          const parsed = v.safeParse(StreamRequest, JSON.parse(new TextDecoder().decode(m.data)));
          if (!parsed.success) return { ok: false, status: 400, error: `invalid request: ${parsed.issues.map((i) => `${v.getDotPath(i) ?? "request"}: ${i.message}`).join("; ")}` };
          req = parsed.output;
        } catch {
          return { ok: false, status: 400, error: "request is not JSON" };
        }
        if (req.op !== "ls") {
          if (!token) return { ok: false, status: 403, error: "stream control is disabled: set http.token in the pipeline file or FRAMEWIRE_HTTP_TOKEN" };
          if (req.token !== token) return { ok: false, status: 401, error: "invalid or missing token (--token or FRAMEWIRE_HTTP_TOKEN)" };
        }
        try {
          if (req.op === "add") await ops.add(req.spec, req.stage);
          else if (req.op === "patch") await ops.update(req.id, req.spec);
          else if (req.op === "rm") await ops.remove(req.id);
          return { ok: true, streams: ops.list() };
        } catch (e) {
          const status = streamErrorStatus(e);
          if (!status) log.error(`stream control ${req.op}: ${(e as Error).message}`);
          return { ok: false, status: status ?? 400, error: (e as Error).message, code: (e as { code?: string }).code };
        }
      })().then((reply) => m.respond(JSON.stringify(reply)));
    },
  });
  return { unsubscribe: () => sub.unsubscribe() };
}
