/**
 * `bun run streams`: list, add, change and remove the cameras of a running
 * pipeline over NATS.
 *   bun run streams ls  --nats URL --pipeline NAME [--json]
 *   bun run streams add ID URL [key=value ...] --nats URL --pipeline NAME [--stage ID] [--token T]
 *   bun run streams set ID key=value ... --nats URL --pipeline NAME [--token T]
 *   bun run streams rm  ID --nats URL --pipeline NAME [--token T]
 * Changes need the control token (--token or FRAMEWIRE_HTTP_TOKEN).
 */
import * as v from "valibot";
import { parseArgs } from "node:util";
import { NatsBus } from "../bus/nats.ts";
import { ConfigError } from "../core/errors.ts";
import { createLogger } from "../core/log.ts";
import type { StreamInfo } from "../core/streams.ts";
import { env } from "../platform/index.ts";
import { redact } from "../media/camera.ts";
import { streamsSubject, type StreamReply, type StreamRequest } from "./streams.ts";

export const STREAMS_USAGE = `usage:
  bun run streams ls  --nats URL --pipeline NAME [--json]
  bun run streams add ID URL [key=value ...] --nats URL --pipeline NAME [--stage ID] [--token T]
  bun run streams set ID key=value [...] --nats URL --pipeline NAME [--token T]
  bun run streams rm  ID --nats URL --pipeline NAME [--token T]`;

const Reply = v.union([
  v.looseObject({ ok: v.literal(true), streams: v.array(v.looseObject({ id: v.string(), stage: v.string(), url: v.string() })) }),
  v.looseObject({ ok: v.literal(false), status: v.number(), error: v.string() }),
]);

/** `key=value` pairs as options: numbers and booleans as such, the rest as strings. */
function options(pairs: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const p of pairs) {
    const i = p.indexOf("=");
    if (i <= 0) throw new ConfigError(`expected key=value, got "${p}"\n${STREAMS_USAGE}`);
    const raw = p.slice(i + 1);
    out[p.slice(0, i)] = raw === "true" ? true : raw === "false" ? false : raw !== "" && !Number.isNaN(Number(raw)) ? Number(raw) : raw;
  }
  return out;
}

/** One table row per stream. */
export function formatStreams(list: StreamInfo[]): string {
  if (!list.length) return "no streams";
  const rows = [["stream", "stage", "connected", "fps", "frames", "drops", "reconnects", "url", "last error"]];
  for (const s of list) rows.push([s.id, s.stage, s.connected ? "yes" : "no", String(s.fps), String(s.frames), String(s.drops), String(s.reconnects), redact(s.url), s.lastError ?? ""]);
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) => r.map((x, c) => x.padEnd(widths[c])).join("  ").trimEnd()).join("\n");
}

/**
 * Runs `streams <op> ...`; returns the exit code (0 done, 1 refused by the pipeline, 2 usage).
 * @example
 * await runStreams(["add", "door", "rtsp://cam/door", "fps=10", "--nats", "nats://127.0.0.1:4222", "--pipeline", "retail"]);
 */
export async function runStreams(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { nats: { type: "string" }, pipeline: { type: "string" }, stage: { type: "string" }, token: { type: "string" }, json: { type: "boolean" }, wait: { type: "string" } },
  });
  const [op, ...rest] = positionals;
  if (!values.pipeline) throw new ConfigError(`--pipeline: name the pipeline (its name: in the file)\n${STREAMS_USAGE}`);
  const token = values.token ?? env("FRAMEWIRE_HTTP_TOKEN");
  let req: StreamRequest;
  if (op === "ls") req = { op: "ls" };
  else if (op === "add" && rest.length >= 2) req = { op: "add", spec: { id: rest[0], url: rest[1], ...options(rest.slice(2)) }, ...(values.stage ? { stage: values.stage } : {}), token };
  else if (op === "set" && rest.length >= 2) req = { op: "patch", id: rest[0], spec: options(rest.slice(1)), token };
  else if (op === "rm" && rest.length === 1) req = { op: "rm", id: rest[0], token };
  else throw new ConfigError(`${op ? `bad arguments for "${op}"` : "no operation given"}\n${STREAMS_USAGE}`);
  const url = values.nats ?? env("NATS_URL") ?? "nats://127.0.0.1:4222";
  const give = new AbortController();
  const timer = setTimeout(() => give.abort(), 3000);
  const bus = await NatsBus.connect({ url, name: "framewire streams", log: createLogger("streams", 40), signal: give.signal }).finally(() => clearTimeout(timer));
  try {
    let text: string;
    try {
      text = await bus.request(streamsSubject(values.pipeline), new TextEncoder().encode(JSON.stringify(req)), Number(values.wait ?? 5) * 1000);
    } catch (err) {
      throw new ConfigError(`no process of pipeline "${values.pipeline}" answered on ${redact(url)} (${(err as Error).message}): is it running with this NATS server?`);
    }
    const r = v.safeParse(Reply, JSON.parse(text));
    if (!r.success) throw new ConfigError(`unexpected reply: ${text.slice(0, 200)}`);
    const reply = r.output as StreamReply;
    if (!reply.ok) {
      console.error(`error (${reply.status}): ${reply.error}`);
      return 1;
    }
    console.log(values.json ? JSON.stringify(reply.streams) : formatStreams(reply.streams));
    return 0;
  } finally {
    await bus.close();
  }
}
