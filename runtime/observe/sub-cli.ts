/**
 * `bun run sub SUBJECT`: prints what is published on a NATS subject, for
 * machines without the NATS CLI (`nats sub SUBJECT` does the same).
 *   bun run sub SUBJECT [--nats URL] [--count N] [--raw]
 * Each message is a line `[#N] Received on "subject"` followed by its
 * payload: JSON pretty-printed (compact with --raw), other text as is, and
 * binary payloads (framewire's wire format, tensors) as their size.
 */
import { parseArgs } from "node:util";
import { NatsBus } from "../bus/nats.ts";
import { ConfigError } from "../core/errors.ts";
import { createLogger } from "../core/log.ts";
import { env, onShutdownSignal } from "../platform/index.ts";
import { redact } from "../media/camera.ts";

export const SUB_USAGE = `usage:
  bun run sub SUBJECT [--nats URL] [--count N] [--raw]   (SUBJECT may use * and >, e.g. 'retail.>')`;

/**
 * How one payload is shown: pretty JSON (or one line with `raw`), UTF-8 text, or its size when binary.
 * @example
 * formatPayload(new TextEncoder().encode('{"a":1}'), false); // '{\n  "a": 1\n}'
 */
export function formatPayload(payload: Uint8Array, raw: boolean): string {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(payload);
  } catch {
    return `<${payload.length} bytes, binary>`;
  }
  // Control characters other than whitespace: a binary message that happens to be valid UTF-8.
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u0008\u000e-\u001f]/.test(text)) return `<${payload.length} bytes, binary>`;
  try {
    const value: unknown = JSON.parse(text);
    return raw ? JSON.stringify(value) : JSON.stringify(value, null, 2);
  } catch {
    return text;
  }
}

/**
 * Runs `sub SUBJECT ...` until Ctrl-C (or --count messages); returns the exit code.
 * @example
 * await runSub(["retail.>", "--nats", "nats://127.0.0.1:4223", "--count", "10"]);
 */
export async function runSub(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { nats: { type: "string" }, count: { type: "string" }, raw: { type: "boolean" } },
  });
  const subject = positionals[0];
  if (!subject || positionals.length > 1) throw new ConfigError(`${subject ? "one subject only" : "no subject given"}\n${SUB_USAGE}`);
  const count = values.count === undefined ? undefined : Number(values.count);
  if (count !== undefined && !(Number.isInteger(count) && count > 0)) throw new ConfigError(`--count: expected a positive integer, got "${values.count}"`);
  const url = values.nats ?? env("NATS_URL") ?? "nats://127.0.0.1:4222";
  const give = new AbortController();
  const timer = setTimeout(() => give.abort(), 3000);
  const bus = await NatsBus.connect({ url, name: "framewire sub", log: createLogger("sub", 40), controlKey: null, signal: give.signal }).finally(() => clearTimeout(timer));
  let n = 0;
  let stopped!: () => void;
  const done = new Promise<void>((r) => (stopped = r));
  const off = onShutdownSignal(() => stopped());
  try {
    const sub = bus.nc.subscribe(subject, {
      callback: (err, m) => {
        if (err) {
          console.error(`error: ${err.message}`);
          return stopped();
        }
        n++;
        console.log(`[#${n}] Received on "${m.subject}"\n${formatPayload(m.data, values.raw ?? false)}\n`);
        if (count !== undefined && n >= count) stopped();
      },
    });
    // The subscription is registered at the server once the flush returns: say so, so scripts can start publishing.
    await bus.nc.flush();
    console.error(`listening on "${subject}" at ${redact(url)}`);
    await done;
    sub.unsubscribe();
  } finally {
    off();
    await bus.close();
  }
  return 0;
}
